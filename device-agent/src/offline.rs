//! Provisional sessions: whether to start the program on the device's own check of a ticket
//! when management does not answer (the store's trust list and [`check_offline`]), and how
//! management's answer to that scan settles the session. Pure: no IO, the caller passes the
//! clock.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mujin_protocol::message::{Decision, RejectReason, ScanResult};
use mujin_protocol::ticket::parse_unverified;
use mujin_protocol::trust::{check_offline, OfflineRefusal, TrustList};
use mujin_protocol::{DeviceId, ScanId, SessionId, StoreId, TicketId};

use crate::program::lease_duration;

/// How many ticket ids that started a session here are remembered (a ticket starts one
/// session; offline, the device is the only one who can tell).
pub const REMEMBERED_STARTED_TICKETS: usize = 64;

/// The tickets this agent started a session with, offline or online, most recent last.
#[derive(Debug, Clone, Default)]
pub struct StartedTickets {
    recent: VecDeque<TicketId>,
}

impl StartedTickets {
    pub fn remember(&mut self, ticket_id: TicketId) {
        if self.contains(ticket_id) {
            return;
        }
        if self.recent.len() >= REMEMBERED_STARTED_TICKETS {
            self.recent.pop_front();
        }
        self.recent.push_back(ticket_id);
    }

    pub fn contains(&self, ticket_id: TicketId) -> bool {
        self.recent.contains(&ticket_id)
    }
}

/// Whether `incoming` replaces the trust list kept so far: the newest one wins (an equal time
/// too, so that a list republished with a correction is taken).
pub fn is_newer(kept: Option<&TrustList>, incoming: &TrustList) -> bool {
    kept.is_none_or(|kept| incoming.issued_at >= kept.issued_at)
}

/// Why the device does not even check a ticket offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// A program runs already.
    Busy,
    /// No trust list was received (yet).
    NoTrustList,
    /// The store does not allow offline starts.
    NotAllowed,
}

/// What to do with a scan management did not answer in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineDecision {
    /// Keep waiting for management.
    Unavailable(Unavailable),
    /// The ticket does not hold offline: show why, keep waiting for management.
    Refused(OfflineRefusal),
    /// Start the program provisionally for `lease` (until the ticket's end, `lease_until`).
    Start {
        ticket_id: TicketId,
        lease_until: DateTime<Utc>,
        lease: Duration,
    },
}

/// The facts an offline start is decided on.
pub struct OfflineFacts<'a> {
    pub running: bool,
    pub trust: Option<&'a TrustList>,
    pub started: &'a StartedTickets,
    pub store: &'a StoreId,
    pub device: &'a DeviceId,
}

/// Decides whether `ticket`, unanswered by management, starts a provisional session at `now`.
pub fn decide_offline_start(
    facts: &OfflineFacts<'_>,
    ticket: &str,
    now: DateTime<Utc>,
) -> OfflineDecision {
    if facts.running {
        return OfflineDecision::Unavailable(Unavailable::Busy);
    }
    let Some(list) = facts.trust else {
        return OfflineDecision::Unavailable(Unavailable::NoTrustList);
    };
    if !list.offline_start {
        return OfflineDecision::Unavailable(Unavailable::NotAllowed);
    }
    // A ticket that does not even parse is refused by the check below whatever this says.
    let already_started = parse_unverified(ticket)
        .is_ok_and(|parsed| facts.started.contains(parsed.claims.ticket_id));
    match check_offline(
        list,
        ticket,
        facts.store,
        facts.device,
        now,
        already_started,
    ) {
        Err(refusal) => OfflineDecision::Refused(refusal),
        Ok(claims) => match lease_duration(claims.not_after, u64::MAX, now) {
            Some(lease) => OfflineDecision::Start {
                ticket_id: claims.ticket_id,
                lease_until: claims.not_after,
                lease,
            },
            None => OfflineDecision::Refused(OfflineRefusal {
                reason: RejectReason::Expired,
                detail: "the booking is over".into(),
            }),
        },
    }
}

/// A session started offline whose scan management has not answered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provisional {
    pub scan_id: ScanId,
    pub session_id: SessionId,
}

impl Provisional {
    /// Whether the session running now is this provisional one: then a desired state (which
    /// management may have written before it saw the scan) must not stop or replace it.
    pub fn protects(&self, running: Option<SessionId>) -> bool {
        running == Some(self.session_id)
    }
}

/// What a scan result does to the session running now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// It is not about a provisional session still running: only shown.
    Nothing,
    /// Management accepted it: a normal session from now on, with management's id and lease.
    Confirm {
        session_id: SessionId,
        lease: Duration,
    },
    /// Management refused it: stop the program.
    Refuse { reason: RejectReason },
}

/// Settles the provisional session (if any) with management's answer to a scan.
pub fn merge(
    provisional: Option<&Provisional>,
    running: Option<SessionId>,
    result: &ScanResult,
    wall_now: DateTime<Utc>,
) -> Merge {
    let Some(provisional) = provisional else {
        return Merge::Nothing;
    };
    if provisional.scan_id != result.scan_id || !provisional.protects(running) {
        return Merge::Nothing;
    }
    match &result.decision {
        Decision::Accepted {
            session_id,
            lease_until,
            ..
        } => Merge::Confirm {
            session_id: *session_id,
            lease: lease_duration(*lease_until, u64::MAX, wall_now).unwrap_or(Duration::ZERO),
        },
        Decision::Rejected { reason, .. } => Merge::Refuse { reason: *reason },
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use mujin_protocol::ticket::{SigningKey, TicketClaims};
    use mujin_protocol::trust::{RefusedTicket, TrustedKey};
    use mujin_protocol::KeyId;

    use super::*;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 1, 10, minute, 0).unwrap()
    }

    struct Setup {
        list: TrustList,
        text: String,
        claims: TicketClaims,
        started: StartedTickets,
    }

    fn setup() -> Setup {
        let key_id = KeyId::parse("k1").unwrap();
        let key = SigningKey::from_seed(key_id.clone(), &[7; 32]).unwrap();
        let claims = TicketClaims {
            ticket_id: TicketId::random(),
            store: StoreId::parse("shibuya").unwrap(),
            device: DeviceId::parse("pc-01").unwrap(),
            not_before: at(10),
            not_after: at(40),
            key_id,
        };
        Setup {
            list: TrustList {
                issued_at: at(0),
                store: None,
                offline_start: true,
                keys: vec![TrustedKey::from(&key.public_key())],
                revoked_keys: Vec::new(),
                refused_tickets: Vec::new(),
                truncated: false,
                signature: None,
            },
            text: key.issue(&claims),
            claims,
            started: StartedTickets::default(),
        }
    }

    fn decide(setup: &Setup, running: bool, trust: Option<&TrustList>) -> OfflineDecision {
        let facts = OfflineFacts {
            running,
            trust,
            started: &setup.started,
            store: &setup.claims.store,
            device: &setup.claims.device,
        };
        decide_offline_start(&facts, &setup.text, at(30))
    }

    fn refused(decision: OfflineDecision) -> RejectReason {
        match decision {
            OfflineDecision::Refused(refusal) => refusal.reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_valid_ticket_starts_until_its_end() {
        let setup = setup();
        assert_eq!(
            decide(&setup, false, Some(&setup.list)),
            OfflineDecision::Start {
                ticket_id: setup.claims.ticket_id,
                lease_until: at(40),
                lease: Duration::from_secs(600),
            }
        );
    }

    #[test]
    fn nothing_starts_busy_without_a_list_or_when_the_store_forbids_it() {
        let mut setup = setup();
        assert_eq!(
            decide(&setup, true, Some(&setup.list)),
            OfflineDecision::Unavailable(Unavailable::Busy)
        );
        assert_eq!(
            decide(&setup, false, None),
            OfflineDecision::Unavailable(Unavailable::NoTrustList)
        );
        setup.list.offline_start = false;
        assert_eq!(
            decide(&setup, false, Some(&setup.list)),
            OfflineDecision::Unavailable(Unavailable::NotAllowed)
        );
    }

    #[test]
    fn refused_and_already_started_tickets_do_not_start() {
        let mut setup = setup();
        setup.started.remember(setup.claims.ticket_id);
        assert_eq!(
            refused(decide(&setup, false, Some(&setup.list))),
            RejectReason::AlreadyUsed
        );
        setup.started = StartedTickets::default();
        setup.list.refused_tickets.push(RefusedTicket {
            ticket_id: setup.claims.ticket_id,
            reason: RejectReason::Cancelled,
        });
        assert_eq!(
            refused(decide(&setup, false, Some(&setup.list))),
            RejectReason::Cancelled
        );
    }

    #[test]
    fn started_tickets_keep_the_most_recent() {
        let mut started = StartedTickets::default();
        let first = TicketId::random();
        started.remember(first);
        for _ in 0..REMEMBERED_STARTED_TICKETS {
            started.remember(TicketId::random());
        }
        assert!(!started.contains(first));
    }

    #[test]
    fn the_newest_trust_list_wins() {
        let setup = setup();
        let older = TrustList {
            issued_at: at(0) - chrono::Duration::minutes(5),
            ..setup.list.clone()
        };
        assert!(is_newer(None, &older));
        assert!(!is_newer(Some(&setup.list), &older));
        assert!(is_newer(Some(&older), &setup.list));
        assert!(is_newer(Some(&setup.list), &setup.list));
    }

    fn accepted(scan_id: ScanId, session_id: SessionId, minute: u32) -> ScanResult {
        ScanResult {
            scan_id,
            decision: Decision::Accepted {
                session_id,
                ticket_id: TicketId::random(),
                lease_until: at(minute),
            },
        }
    }

    #[test]
    fn an_acceptance_confirms_the_provisional_session_with_managements_id_and_lease() {
        let provisional = Provisional {
            scan_id: ScanId::random(),
            session_id: SessionId::random(),
        };
        let running = Some(provisional.session_id);
        let own = accepted(provisional.scan_id, provisional.session_id, 40);
        assert_eq!(
            merge(Some(&provisional), running, &own, at(30)),
            Merge::Confirm {
                session_id: provisional.session_id,
                lease: Duration::from_secs(600)
            }
        );
        let other_id = SessionId::random();
        let other = accepted(provisional.scan_id, other_id, 35);
        assert_eq!(
            merge(Some(&provisional), running, &other, at(30)),
            Merge::Confirm {
                session_id: other_id,
                lease: Duration::from_secs(300)
            }
        );
        // Already over by management's clock: the lease ends at once.
        assert_eq!(
            merge(Some(&provisional), running, &own, at(45)),
            Merge::Confirm {
                session_id: provisional.session_id,
                lease: Duration::ZERO
            }
        );
    }

    #[test]
    fn a_refusal_stops_the_provisional_session() {
        let provisional = Provisional {
            scan_id: ScanId::random(),
            session_id: SessionId::random(),
        };
        let result = ScanResult {
            scan_id: provisional.scan_id,
            decision: Decision::Rejected {
                reason: RejectReason::Cancelled,
                detail: String::new(),
            },
        };
        assert_eq!(
            merge(
                Some(&provisional),
                Some(provisional.session_id),
                &result,
                at(30)
            ),
            Merge::Refuse {
                reason: RejectReason::Cancelled
            }
        );
        // The session already ended here (lease, exit): nothing left to stop.
        assert_eq!(
            merge(Some(&provisional), None, &result, at(30)),
            Merge::Nothing
        );
    }

    #[test]
    fn other_answers_leave_the_running_session_alone() {
        let provisional = Provisional {
            scan_id: ScanId::random(),
            session_id: SessionId::random(),
        };
        let running = Some(provisional.session_id);
        let unrelated = accepted(ScanId::random(), SessionId::random(), 40);
        assert_eq!(
            merge(Some(&provisional), running, &unrelated, at(30)),
            Merge::Nothing
        );
        assert_eq!(merge(None, running, &unrelated, at(30)), Merge::Nothing);
        assert!(provisional.protects(running));
        assert!(!provisional.protects(Some(SessionId::random())));
        assert!(!provisional.protects(None));
    }
}
