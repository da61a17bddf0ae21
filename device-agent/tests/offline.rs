//! Scans without an answer, with the real `mujin-agent` binary against a real broker and the
//! test playing management (or playing dead): readings sent again until answered, provisional
//! starts from the store's trust list, and management's answer confirming or stopping them.

// Helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use mujin_protocol::message::{
    CommandAction, Decision, DesiredProgram, ProgramStatus, RejectReason, ReportedState, Scan,
    StopCause,
};
use mujin_protocol::ticket::{SigningKey, TicketClaims};
use mujin_protocol::trust::{RefusedTicket, TrustList, TrustedKey};
use mujin_protocol::{KeyId, SessionId, TicketId};

use support::{alive, Harness, OFFLINE_AFTER_MS, SLEEPER};

const CHECKING: &str = "CHECKING your ticket...";
const NOT_ANSWERING: &str =
    "NOT ANSWERING: the store's system does not answer yet; still trying, please wait.";

/// The store's ticket key, the trust list that carries it and tickets signed with it.
struct Store {
    key: SigningKey,
}

impl Store {
    fn new() -> Store {
        let key = SigningKey::from_seed(KeyId::parse("k1").unwrap(), &[7; 32]).unwrap();
        Store { key }
    }

    fn trust_list(&self, offline_start: bool, refused: &[TicketId]) -> TrustList {
        TrustList {
            issued_at: Utc::now(),
            store: None,
            offline_start,
            keys: vec![TrustedKey::from(&self.key.public_key())],
            revoked_keys: Vec::new(),
            refused_tickets: refused
                .iter()
                .map(|ticket_id| RefusedTicket {
                    ticket_id: *ticket_id,
                    reason: RejectReason::Cancelled,
                })
                .collect(),
            truncated: false,
            signature: None,
        }
    }

    /// A ticket for the harness's device, valid from a minute ago until `not_after`.
    fn ticket(&self, harness: &Harness, not_after: DateTime<Utc>) -> (String, TicketClaims) {
        let claims = TicketClaims {
            ticket_id: TicketId::random(),
            store: harness.store.clone(),
            device: harness.device.clone(),
            not_before: Utc::now().trunc_subsecs(0) - chrono::Duration::minutes(1),
            not_after: not_after.trunc_subsecs(0),
            key_id: self.key.key_id().clone(),
        };
        (self.key.issue(&claims), claims)
    }
}

fn in_seconds(seconds: i64) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::seconds(seconds)
}

fn provisional_session(state: &ReportedState) -> Option<SessionId> {
    match state.program {
        ProgramStatus::Running {
            session_id,
            provisional: true,
            ..
        } => Some(session_id),
        _ => None,
    }
}

/// Scans `ticket` with the store allowing offline starts and nobody answering; returns the scan
/// and the provisional session the agent started for it.
async fn start_offline(harness: &mut Harness, store: &Store, ticket: &str) -> (Scan, SessionId) {
    harness.publish_trust(&store.trust_list(true, &[])).await;
    harness.scan(ticket).await;
    let scanned = Instant::now();
    let scan = harness.wait_scan(|_| true).await;
    assert_eq!(scan.offline, None);
    let state = harness
        .wait_state(|state| provisional_session(state).is_some())
        .await;
    assert!(scanned.elapsed() >= Duration::from_millis(OFFLINE_AFTER_MS - 100));
    let session_id = provisional_session(&state).unwrap();
    harness
        .wait_screen(|line| {
            line.starts_with(&format!("STARTED OFFLINE: enjoy! session {session_id}"))
        })
        .await;
    (scan, session_id)
}

#[tokio::test]
async fn an_unanswered_scan_is_sent_again_until_answered() {
    let mut harness = Harness::start(SLEEPER).await;
    harness.scan("MJ1:TEST-TICKET").await;
    let first = harness.wait_scan(|_| true).await;
    let first_seen = Instant::now();
    harness.wait_screen(|line| line == CHECKING).await;

    let again = harness
        .wait_scan(|scan| scan.scan_id == first.scan_id)
        .await;
    let resent = Instant::now();
    // The same reading, stamped with the time of this sending (scans are refused outside a
    // window around their sending, so a resend is stamped afresh).
    assert_eq!(
        (&again.scan_id, &again.ticket, again.read_at),
        (&first.scan_id, &first.ticket, first.read_at),
        "the resend is the same reading"
    );
    assert!(
        again.sent_at > first.sent_at,
        "the resend is stamped afresh"
    );
    assert!(resent - first_seen >= Duration::from_millis(1_500));
    // No trust list: nothing starts offline, the customer is told it takes longer.
    harness.wait_screen(|line| line == NOT_ANSWERING).await;

    harness
        .answer(
            first.scan_id,
            Decision::Rejected {
                reason: RejectReason::UnknownTicket,
                detail: String::new(),
            },
        )
        .await;
    harness
        .wait_screen(|line| line.starts_with("REFUSED (unknown_ticket)"))
        .await;
    // The next resend would have come 4 s after the first one.
    let later = harness
        .scans_until(resent + Duration::from_millis(4_800))
        .await;
    assert!(
        later.iter().all(|scan| scan.scan_id != first.scan_id),
        "an answered scan was sent again"
    );
    assert!(!harness.pidfile().exists());
    harness.shutdown().await;
}

#[tokio::test]
async fn an_offline_start_holds_until_management_confirms_it_and_ends_with_the_ticket() {
    let mut harness = Harness::start(SLEEPER).await;
    let store = Store::new();
    let (ticket, claims) = store.ticket(&harness, in_seconds(8));
    let (scan, session_id) = start_offline(&mut harness, &store, &ticket).await;
    let pid = harness.program_pid().await;

    let resent = harness
        .wait_scan(|resent| resent.scan_id == scan.scan_id && resent.offline.is_some())
        .await;
    let offline = resent.offline.unwrap();
    assert_eq!(offline.session_id, session_id);
    assert_eq!(offline.lease_until, claims.not_after);

    // Management comes back and republishes "idle" before it has read the scan.
    harness.desire(DesiredProgram::Idle).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        alive(pid),
        "a desired state stopped the provisional session"
    );

    // Management accepts the scan under an id of its own: adopted, no restart.
    let managements_id = SessionId::random();
    harness
        .answer(
            scan.scan_id,
            Decision::Accepted {
                session_id: managements_id,
                ticket_id: claims.ticket_id,
                lease_until: claims.not_after,
            },
        )
        .await;
    let state = harness
        .wait_state(|state| {
            assert_ne!(state.program, ProgramStatus::Idle, "stopped: {state:?}");
            matches!(
                state.program,
                ProgramStatus::Running {
                    provisional: false,
                    ..
                }
            )
        })
        .await;
    assert!(
        matches!(state.program, ProgramStatus::Running { session_id, .. } if session_id == managements_id)
    );
    let ack = harness
        .command(CommandAction::Start {
            session_id: managements_id,
            lease_until: claims.not_after,
            remaining_ms: 60_000,
        })
        .await;
    assert!(ack.ok && ack.detail == "already running", "{ack:?}");
    assert!(alive(pid));

    // The lease holds as for any session: the program stops at the ticket's end.
    let state = harness.wait_state(|state| state.last_exit.is_some()).await;
    let exit = state.last_exit.unwrap();
    assert_eq!(
        (exit.session_id, exit.stopped_by),
        (managements_id, StopCause::LeaseExpired)
    );
    assert!(Utc::now() >= claims.not_after - chrono::Duration::milliseconds(200));
    assert!(!alive(pid));
    harness.shutdown().await;
}

#[tokio::test]
async fn an_offline_start_refused_by_management_is_stopped() {
    let mut harness = Harness::start(SLEEPER).await;
    let store = Store::new();
    let (ticket, _) = store.ticket(&harness, in_seconds(60));
    let (scan, session_id) = start_offline(&mut harness, &store, &ticket).await;
    let pid = harness.program_pid().await;

    harness
        .answer(
            scan.scan_id,
            Decision::Rejected {
                reason: RejectReason::Cancelled,
                detail: String::new(),
            },
        )
        .await;
    let state = harness.wait_state(|state| state.last_exit.is_some()).await;
    assert_eq!(state.program, ProgramStatus::Idle);
    let exit = state.last_exit.unwrap();
    assert_eq!(
        (exit.session_id, exit.stopped_by),
        (session_id, StopCause::Refused)
    );
    assert!(!alive(pid));
    harness
        .wait_screen(|line| line == "REFUSED (cancelled): This booking was cancelled.")
        .await;
    harness.shutdown().await;
}

#[tokio::test]
async fn nothing_starts_offline_when_the_store_forbids_it_or_refuses_the_ticket() {
    let mut harness = Harness::start(SLEEPER).await;
    let store = Store::new();

    harness.publish_trust(&store.trust_list(false, &[])).await;
    let (forbidden, _) = store.ticket(&harness, in_seconds(60));
    harness.scan(&forbidden).await;
    let first = harness.wait_scan(|_| true).await;
    harness.wait_screen(|line| line == NOT_ANSWERING).await;
    let again = harness
        .wait_scan(|scan| scan.scan_id == first.scan_id)
        .await;
    assert_eq!(again.offline, None);

    let (cancelled, claims) = store.ticket(&harness, in_seconds(60));
    harness
        .publish_trust(&store.trust_list(true, &[claims.ticket_id]))
        .await;
    harness.scan(&cancelled).await;
    let second = harness.wait_scan(|scan| scan.ticket == cancelled).await;
    harness
        .wait_screen(|line| {
            line == "REFUSED (checked offline, cancelled): This booking was cancelled."
        })
        .await;
    harness.wait_screen(|line| line == NOT_ANSWERING).await;
    let again = harness
        .wait_scan(|scan| scan.scan_id == second.scan_id)
        .await;
    assert_eq!(again.offline, None);

    // Each scan told the customer it waits for management, so none started offline.
    assert!(!harness.pidfile().exists(), "a program was started");
    harness.shutdown().await;
}

#[tokio::test]
async fn a_ticket_of_a_revoked_key_never_starts_offline() {
    let mut harness = Harness::start(SLEEPER).await;
    let store = Store::new();
    let (ticket, _) = store.ticket(&harness, in_seconds(60));
    let mut list = store.trust_list(true, &[]);
    // Rotated and revoked: the key is gone from the list, its id listed as revoked.
    let new_key = SigningKey::from_seed(KeyId::parse("k2").unwrap(), &[8; 32]).unwrap();
    list.keys = vec![TrustedKey::from(&new_key.public_key())];
    list.revoked_keys = vec![store.key.key_id().clone()];
    harness.publish_trust(&list).await;
    harness.scan(&ticket).await;
    let scan = harness.wait_scan(|scan| scan.ticket == ticket).await;
    harness
        .wait_screen(|line| {
            line == "REFUSED (checked offline, revoked_key): This ticket is no longer valid."
        })
        .await;
    let again = harness
        .wait_scan(|resent| resent.scan_id == scan.scan_id)
        .await;
    assert_eq!(again.offline, None);
    assert!(!harness.pidfile().exists(), "a program was started");
    harness.shutdown().await;
}

#[tokio::test]
async fn a_trust_list_not_signed_with_the_root_key_is_ignored() {
    let mut harness = Harness::start(SLEEPER).await;
    // An attacker with broker credentials publishes a list trusting their own ticket key,
    // signed with a key of their own, then with management's command key (not the root key).
    let attacker = Store {
        key: SigningKey::from_seed(KeyId::parse("k1").unwrap(), &[66; 32]).unwrap(),
    };
    let mut forged = attacker.trust_list(true, &[]);
    forged.store = Some(harness.store.clone());
    for signer in [
        SigningKey::from_seed(KeyId::parse("r1").unwrap(), &[67; 32]).unwrap(),
        support::command_key(),
    ] {
        let mut list = forged.clone();
        mujin_protocol::signed::sign_trust_list(&signer, &mut list);
        harness.publish_raw_trust(&list).await;
        let (ticket, _) = attacker.ticket(&harness, in_seconds(60));
        harness.scan(&ticket).await;
        let scan = harness.wait_scan(|scan| scan.ticket == ticket).await;
        harness.wait_screen(|line| line == NOT_ANSWERING).await;
        let again = harness
            .wait_scan(|resent| resent.scan_id == scan.scan_id)
            .await;
        assert_eq!(again.offline, None);
    }
    assert!(!harness.pidfile().exists(), "a program was started");
    harness.shutdown().await;
}

#[tokio::test]
async fn a_scanner_repeating_one_code_sends_one_scan() {
    let mut harness = Harness::start(SLEEPER).await;
    for _ in 0..20 {
        harness.scan("MJ1:STUCK").await;
    }
    harness.scan("MJ1:OTHER").await;
    // Every scan published up to the other code's.
    let mut scans = Vec::new();
    loop {
        let scan = harness.wait_scan(|_| true).await;
        let other = scan.ticket == "MJ1:OTHER";
        scans.push(scan);
        if other {
            break;
        }
    }
    // Resends of the first scan (2 s later at the earliest) may come in between under load.
    scans.dedup_by_key(|scan| scan.scan_id);
    let tickets: Vec<&str> = scans.iter().map(|scan| scan.ticket.as_str()).collect();
    assert_eq!(tickets, ["MJ1:STUCK", "MJ1:OTHER"], "one scan per code");
    harness.shutdown().await;
}
