//! The supervisor of the device's operating program: the pure start/stop decisions, the lease
//! arithmetic, and the process handling (spawn in its own process group, stop with SIGTERM then
//! SIGKILL, reap, describe how it ended).

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mujin_protocol::message::{ProgramExit, ProgramStatus, StopCause};
use mujin_protocol::{DeviceId, SessionId, StoreId};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long to wait for the program to be reaped after SIGKILL before giving up on it.
const REAP_AFTER_KILL: Duration = Duration::from_secs(2);

/// What to do with a start command, decided without any IO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartDecision {
    /// The program already runs for this session (e.g. a redelivered command).
    AlreadyRunning,
    /// The program runs for another session.
    Busy(SessionId),
    /// The lease is over before the program could start.
    LeaseEnded,
    /// Start the program and stop it after `lease`.
    Launch { lease: Duration },
}

/// Decides a start command given the session currently running (if any) and the wall clock.
pub fn decide_start(
    running: Option<SessionId>,
    session_id: SessionId,
    lease_until: DateTime<Utc>,
    remaining_ms: u64,
    wall_now: DateTime<Utc>,
) -> StartDecision {
    match running {
        Some(current) if current == session_id => StartDecision::AlreadyRunning,
        Some(current) => StartDecision::Busy(current),
        None => match lease_duration(lease_until, remaining_ms, wall_now) {
            Some(lease) => StartDecision::Launch { lease },
            None => StartDecision::LeaseEnded,
        },
    }
}

/// The lease left for a start command: the smaller of `remaining_ms` and the time until
/// `lease_until` on the wall clock, so that a command delivered late never extends the lease and
/// a device with a wrong clock is still bounded by `remaining_ms`. `None` when it is over.
pub fn lease_duration(
    lease_until: DateTime<Utc>,
    remaining_ms: u64,
    wall_now: DateTime<Utc>,
) -> Option<Duration> {
    let by_wall_clock = (lease_until - wall_now).to_std().ok()?;
    let lease = by_wall_clock.min(Duration::from_millis(remaining_ms));
    (!lease.is_zero()).then_some(lease)
}

/// The wall-clock time `lease` after `wall_now`, saturating instead of overflowing.
fn wall_clock_after(wall_now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(lease)
        .ok()
        .and_then(|lease| wall_now.checked_add_signed(lease))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The monotonic deadline `lease` from now, bounded so that an absurd lease cannot overflow.
fn deadline_after(lease: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(lease)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// What to do with a stop command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopDecision {
    Stop,
    NotRunning,
}

/// Decides a stop command: only the running session's program is stopped.
pub fn decide_stop(running: Option<SessionId>, session_id: SessionId) -> StopDecision {
    if running == Some(session_id) {
        StopDecision::Stop
    } else {
        StopDecision::NotRunning
    }
}

/// Describes an exit status the way operators read it: `exit code 0`, `signal 15 (SIGTERM)`.
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(number) => match Signal::try_from(number) {
            Ok(signal) => format!("signal {number} ({})", signal.as_str()),
            Err(_) => format!("signal {number}"),
        },
        None => format!("unknown exit ({status})"),
    }
}

/// The program to run and the environment it gets.
#[derive(Debug, Clone)]
pub struct ProgramSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub store: StoreId,
    pub device: DeviceId,
}

/// One running program.
#[derive(Debug)]
struct Run {
    child: Child,
    process_group: Pid,
    session_id: SessionId,
    started_at: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    lease_deadline: Instant,
    /// Started offline; management has not confirmed it yet.
    provisional: bool,
}

/// Why the program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("a program is already running for session {0}")]
    AlreadyRunning(SessionId),
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

/// Owns at most one running program.
#[derive(Debug)]
pub struct Supervisor {
    spec: ProgramSpec,
    stop_grace: Duration,
    run: Option<Run>,
}

impl Supervisor {
    pub fn new(spec: ProgramSpec, stop_grace: Duration) -> Self {
        Self {
            spec,
            stop_grace,
            run: None,
        }
    }

    /// The session whose program is running, if any.
    pub fn running_session(&self) -> Option<SessionId> {
        self.run.as_ref().map(|run| run.session_id)
    }

    /// The program status as reported on the wire.
    pub fn status(&self) -> ProgramStatus {
        match &self.run {
            Some(run) => ProgramStatus::Running {
                session_id: run.session_id,
                started_at: run.started_at,
                lease_until: run.lease_until,
                provisional: run.provisional,
            },
            None => ProgramStatus::Idle,
        }
    }

    /// When the lease of the running program ends on the wall clock, as reported.
    pub fn lease_until(&self) -> Option<DateTime<Utc>> {
        self.run.as_ref().map(|run| run.lease_until)
    }

    /// When the lease of the running program ends (monotonic clock), if one runs.
    pub fn lease_deadline(&self) -> Option<Instant> {
        self.run.as_ref().map(|run| run.lease_deadline)
    }

    /// Starts the program for `session_id`, to be stopped after `lease`.
    pub fn start(&mut self, session_id: SessionId, lease: Duration) -> Result<(), SpawnError> {
        if let Some(run) = &self.run {
            return Err(SpawnError::AlreadyRunning(run.session_id));
        }
        let wall_now = Utc::now();
        let lease_until = wall_clock_after(wall_now, lease);
        let child = self.spawn(session_id, lease_until)?;
        let process_group = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw);
        let Some(process_group) = process_group else {
            // A child without a pid has already been reaped; nothing to supervise.
            return Err(SpawnError::Spawn {
                program: self.spec.program.to_string_lossy().into_owned(),
                source: std::io::Error::other("the program exited at once"),
            });
        };
        self.run = Some(Run {
            child,
            process_group,
            session_id,
            started_at: wall_now,
            lease_until,
            lease_deadline: deadline_after(lease),
            provisional: false,
        });
        Ok(())
    }

    /// When the running program started, on the wall clock.
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        self.run.as_ref().map(|run| run.started_at)
    }

    /// Marks the running program as started offline, until [`Self::confirm`].
    pub fn mark_provisional(&mut self) {
        if let Some(run) = self.run.as_mut() {
            run.provisional = true;
        }
    }

    /// Makes the running program a normal session under `session_id` (management's id for it,
    /// normally the one the device chose); the program keeps running. `false` when none runs.
    pub fn confirm(&mut self, session_id: SessionId) -> bool {
        let Some(run) = self.run.as_mut() else {
            return false;
        };
        run.session_id = session_id;
        run.provisional = false;
        true
    }

    /// Moves the running program's lease to end `lease` from now (sooner or later than before)
    /// and returns its new end on the wall clock; `None` when nothing runs.
    pub fn set_lease(&mut self, lease: Duration) -> Option<DateTime<Utc>> {
        let run = self.run.as_mut()?;
        run.lease_until = wall_clock_after(Utc::now(), lease);
        run.lease_deadline = deadline_after(lease);
        Some(run.lease_until)
    }

    fn spawn(
        &self,
        session_id: SessionId,
        lease_until: DateTime<Utc>,
    ) -> Result<Child, SpawnError> {
        let spawn_error = |source| SpawnError::Spawn {
            program: self.spec.program.to_string_lossy().into_owned(),
            source,
        };
        // The agent's stdout is the customer's screen: the program writes to the agent's stderr.
        let stderr_for = || -> Result<Stdio, SpawnError> {
            let fd = std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map_err(spawn_error)?;
            Ok(Stdio::from(fd))
        };
        let mut command = Command::new(&self.spec.program);
        command
            .args(&self.spec.args)
            .env("MUJIN_SESSION_ID", session_id.to_string())
            .env("MUJIN_LEASE_UNTIL", lease_until.to_rfc3339())
            .env("MUJIN_STORE", self.spec.store.as_str())
            .env("MUJIN_DEVICE", self.spec.device.as_str())
            .stdin(Stdio::null())
            .stdout(stderr_for()?)
            .stderr(stderr_for()?)
            // Its own process group, so that a stop reaches every process it started and a
            // Ctrl-C on the agent's terminal does not reach it.
            .process_group(0)
            .kill_on_drop(false);
        end_with_the_agent(&mut command);
        command.spawn().map_err(spawn_error)
    }

    /// Waits until the running program exits by itself; pending forever when none runs.
    /// Cancel-safe, so it can sit in a `select!`.
    pub async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        match self.run.as_mut() {
            Some(run) => run.child.wait().await,
            None => std::future::pending().await,
        }
    }

    /// Records the end of a program that exited by itself (after [`Self::exited`] returned).
    pub fn record_exit(&mut self, status: std::io::Result<ExitStatus>) -> Option<ProgramExit> {
        let run = self.run.take()?;
        // Leftovers of the program (its children) go with it: the session is over.
        let _ = killpg(run.process_group, Signal::SIGKILL);
        let exit = match status {
            Ok(status) => describe_exit(status),
            Err(err) => format!("unknown exit ({err})"),
        };
        Some(ProgramExit {
            session_id: run.session_id,
            stopped_by: StopCause::ProgramExited,
            exit,
            at: Utc::now(),
        })
    }

    /// Stops the running program: SIGTERM to its group, SIGKILL after the grace, then reaps it.
    /// Returns `None` when nothing ran.
    pub async fn stop(&mut self, cause: StopCause) -> Option<ProgramExit> {
        let mut run = self.run.take()?;
        let group = run.process_group;
        if let Err(err) = killpg(group, Signal::SIGTERM) {
            tracing::warn!(%err, pgid = %group, "SIGTERM to the program's group failed");
        }
        let status = match tokio::time::timeout(self.stop_grace, run.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(grace = ?self.stop_grace, "program ignored SIGTERM, sending SIGKILL");
                if let Err(err) = killpg(group, Signal::SIGKILL) {
                    tracing::warn!(%err, pgid = %group, "SIGKILL to the program's group failed");
                }
                match tokio::time::timeout(REAP_AFTER_KILL, run.child.wait()).await {
                    Ok(status) => status,
                    Err(_) => Err(std::io::Error::other("not reaped after SIGKILL")),
                }
            }
        };
        // Whatever the leader did, nothing of the session may outlive the stop.
        let _ = killpg(group, Signal::SIGKILL);
        let exit = match status {
            Ok(status) => describe_exit(status),
            Err(err) => {
                tracing::error!(%err, "could not reap the program");
                format!("unknown exit ({err})")
            }
        };
        Some(ProgramExit {
            session_id: run.session_id,
            stopped_by: cause,
            exit,
            at: Utc::now(),
        })
    }
}

/// Asks the kernel to send the program SIGTERM if the agent dies without stopping it (a crash,
/// `kill -9`): nobody would enforce its lease any more, and a restarted agent resumes the
/// session from the desired state with a program of its own. The signal follows the thread
/// that spawned the program; the agent spawns from its runtime's worker threads, which live as
/// long as the agent.
fn end_with_the_agent(command: &mut Command) {
    let agent = nix::unistd::getpid();
    #[allow(unsafe_code)]
    // SAFETY: the hook runs in the forked child before exec and only calls prctl(2) and
    // getppid(2), which are async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            // The agent may have died before the prctl: then no signal would ever come.
            if nix::unistd::getppid() != agent {
                return Err(std::io::Error::from(nix::errno::Errno::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn lease_is_the_smaller_of_wall_clock_and_remaining() {
        assert_eq!(
            lease_duration(at(60), 30_000, at(0)),
            Some(Duration::from_secs(30))
        );
        // A command delivered late: the wall clock bounds it.
        assert_eq!(
            lease_duration(at(60), 120_000, at(50)),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn lease_over_when_either_bound_is_reached() {
        assert_eq!(lease_duration(at(60), 30_000, at(60)), None);
        assert_eq!(lease_duration(at(60), 30_000, at(61)), None);
        assert_eq!(lease_duration(at(60), 0, at(0)), None);
    }

    #[test]
    fn start_decisions() {
        let session = SessionId::random();
        let other = SessionId::random();
        assert_eq!(
            decide_start(Some(session), session, at(60), 1_000, at(0)),
            StartDecision::AlreadyRunning
        );
        assert_eq!(
            decide_start(Some(other), session, at(60), 1_000, at(0)),
            StartDecision::Busy(other)
        );
        assert_eq!(
            decide_start(None, session, at(60), 0, at(0)),
            StartDecision::LeaseEnded
        );
        assert_eq!(
            decide_start(None, session, at(60), 1_000, at(0)),
            StartDecision::Launch {
                lease: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn stop_decisions() {
        let session = SessionId::random();
        assert_eq!(decide_stop(Some(session), session), StopDecision::Stop);
        assert_eq!(decide_stop(None, session), StopDecision::NotRunning);
        assert_eq!(
            decide_stop(Some(SessionId::random()), session),
            StopDecision::NotRunning
        );
    }

    #[test]
    fn exits_are_described_by_code_or_signal() {
        // Raw wait statuses: exit code in the high byte, signal number in the low bits.
        assert_eq!(describe_exit(ExitStatus::from_raw(0)), "exit code 0");
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert_eq!(
            describe_exit(ExitStatus::from_raw(15)),
            "signal 15 (SIGTERM)"
        );
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "signal 9 (SIGKILL)");
    }
}
