//! The pure decisions behind commands and the retained desired state: the epoch fence that keeps
//! a late command or an outdated desired state from undoing a newer one, the memory of sessions
//! that already ended here, and what to do to match a desired state.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mujin_protocol::message::DesiredProgram;
use mujin_protocol::SessionId;

use crate::program::lease_duration;

/// How many sessions that ended on this device are remembered, so that a desired state not yet
/// updated by management cannot bring them back.
pub const REMEMBERED_ENDED_SESSIONS: usize = 64;

/// A command or desired state older than the newest epoch seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stale: epoch {epoch} is older than {seen}")]
pub struct Stale {
    pub epoch: u64,
    pub seen: u64,
}

/// The highest command epoch seen in commands and desired states (0 at start: anything goes
/// until management has spoken).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochFence {
    seen: u64,
}

impl EpochFence {
    /// The highest epoch admitted so far.
    pub fn seen(self) -> u64 {
        self.seen
    }

    /// Admits a message of `epoch` unless it is older than the newest seen; an admitted epoch
    /// becomes the newest. An equal epoch is admitted: management publishes the desired state
    /// with the epoch of the command that changed it, and both may arrive in either order.
    pub fn admit(&mut self, epoch: u64) -> Result<(), Stale> {
        if epoch < self.seen {
            return Err(Stale {
                epoch,
                seen: self.seen,
            });
        }
        self.seen = epoch;
        Ok(())
    }
}

/// The last [`REMEMBERED_ENDED_SESSIONS`] sessions whose program ended on this device, however
/// it ended (lease, stop command, exit, desired state).
#[derive(Debug, Clone, Default)]
pub struct EndedSessions {
    recent: VecDeque<SessionId>,
}

impl EndedSessions {
    pub fn remember(&mut self, session_id: SessionId) {
        if self.contains(session_id) {
            return;
        }
        if self.recent.len() >= REMEMBERED_ENDED_SESSIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(session_id);
    }

    pub fn contains(&self, session_id: SessionId) -> bool {
        self.recent.contains(&session_id)
    }
}

/// Why a desired running session is not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStarted {
    /// Its program already ended here (the desired state is older than that end).
    AlreadyEnded,
    /// Its lease is over.
    LeaseEnded,
}

/// What to do to match a desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convergence {
    /// The device already does what is desired.
    InPlace,
    /// Idle and staying idle: the desired session must not be started.
    Skip(NotStarted),
    /// Stop the running program (nothing, or a session that may not start, is desired).
    Stop,
    /// The desired session runs: move its lease deadline to `lease` from now (zero: it is over).
    SetLease { lease: Duration },
    /// Start the desired session's program for `lease`.
    Start {
        session_id: SessionId,
        lease: Duration,
    },
    /// Stop the running program, then start the desired session's for `lease`.
    Replace {
        session_id: SessionId,
        lease: Duration,
    },
}

/// Decides how to match `desired`, given the session running now (if any), the sessions that
/// already ended here and the wall clock. The lease is computed like a start command's.
pub fn converge(
    current: Option<SessionId>,
    ended_recently: &EndedSessions,
    desired: &DesiredProgram,
    wall_now: DateTime<Utc>,
) -> Convergence {
    let (session_id, lease_until, remaining_ms) = match desired {
        DesiredProgram::Idle => {
            return match current {
                Some(_) => Convergence::Stop,
                None => Convergence::InPlace,
            }
        }
        DesiredProgram::Running {
            session_id,
            lease_until,
            remaining_ms,
        } => (*session_id, *lease_until, *remaining_ms),
    };
    let lease = lease_duration(lease_until, remaining_ms, wall_now);
    if current == Some(session_id) {
        return Convergence::SetLease {
            lease: lease.unwrap_or(Duration::ZERO),
        };
    }
    let startable = if ended_recently.contains(session_id) {
        Err(NotStarted::AlreadyEnded)
    } else {
        lease.ok_or(NotStarted::LeaseEnded)
    };
    match (current, startable) {
        (None, Ok(lease)) => Convergence::Start { session_id, lease },
        (None, Err(why)) => Convergence::Skip(why),
        (Some(_), Ok(lease)) => Convergence::Replace { session_id, lease },
        (Some(_), Err(_)) => Convergence::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn running(session_id: SessionId, until: i64, remaining_ms: u64) -> DesiredProgram {
        DesiredProgram::Running {
            session_id,
            lease_until: at(until),
            remaining_ms,
        }
    }

    #[test]
    fn the_fence_admits_newer_and_equal_epochs_and_refuses_older_ones() {
        let mut fence = EpochFence::default();
        assert_eq!(fence.admit(0), Ok(()));
        assert_eq!(fence.admit(5), Ok(()));
        assert_eq!(fence.admit(5), Ok(()));
        assert_eq!(fence.admit(6), Ok(()));
        let stale = fence.admit(5).unwrap_err();
        assert_eq!(stale, Stale { epoch: 5, seen: 6 });
        assert_eq!(stale.to_string(), "stale: epoch 5 is older than 6");
        assert!(stale
            .to_string()
            .starts_with(mujin_protocol::message::STALE_ACK_PREFIX));
        // A refused epoch does not lower the fence.
        assert_eq!(fence.seen(), 6);
        assert_eq!(fence.admit(9), Ok(()));
        assert_eq!(fence.seen(), 9);
    }

    #[test]
    fn ended_sessions_keep_the_most_recent_ones() {
        let mut ended = EndedSessions::default();
        let first = SessionId::random();
        ended.remember(first);
        ended.remember(first);
        assert!(ended.contains(first));
        for _ in 1..REMEMBERED_ENDED_SESSIONS {
            ended.remember(SessionId::random());
        }
        assert!(ended.contains(first));
        let last = SessionId::random();
        ended.remember(last);
        assert!(!ended.contains(first));
        assert!(ended.contains(last));
    }

    #[test]
    fn desired_idle_stops_whatever_runs() {
        let ended = EndedSessions::default();
        let idle = DesiredProgram::Idle;
        assert_eq!(
            converge(Some(SessionId::random()), &ended, &idle, at(0)),
            Convergence::Stop
        );
        assert_eq!(converge(None, &ended, &idle, at(0)), Convergence::InPlace);
    }

    #[test]
    fn the_desired_session_running_gets_its_lease_matched() {
        let ended = EndedSessions::default();
        let session = SessionId::random();
        assert_eq!(
            converge(Some(session), &ended, &running(session, 60, 90_000), at(0)),
            Convergence::SetLease {
                lease: Duration::from_secs(60)
            }
        );
        // Shortened below now: the lease is over.
        assert_eq!(
            converge(Some(session), &ended, &running(session, 60, 90_000), at(70)),
            Convergence::SetLease {
                lease: Duration::ZERO
            }
        );
    }

    #[test]
    fn an_idle_device_starts_the_desired_session_unless_it_ended() {
        let mut ended = EndedSessions::default();
        let session = SessionId::random();
        let desired = running(session, 60, 30_000);
        assert_eq!(
            converge(None, &ended, &desired, at(0)),
            Convergence::Start {
                session_id: session,
                lease: Duration::from_secs(30)
            }
        );
        assert_eq!(
            converge(None, &ended, &desired, at(60)),
            Convergence::Skip(NotStarted::LeaseEnded)
        );
        ended.remember(session);
        assert_eq!(
            converge(None, &ended, &desired, at(0)),
            Convergence::Skip(NotStarted::AlreadyEnded)
        );
    }

    #[test]
    fn another_session_running_is_replaced_or_just_stopped() {
        let mut ended = EndedSessions::default();
        let other = SessionId::random();
        let session = SessionId::random();
        let desired = running(session, 60, 30_000);
        assert_eq!(
            converge(Some(other), &ended, &desired, at(0)),
            Convergence::Replace {
                session_id: session,
                lease: Duration::from_secs(30)
            }
        );
        assert_eq!(
            converge(Some(other), &ended, &desired, at(61)),
            Convergence::Stop
        );
        ended.remember(session);
        assert_eq!(
            converge(Some(other), &ended, &desired, at(0)),
            Convergence::Stop
        );
    }
}
