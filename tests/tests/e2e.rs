//! End-to-end: reserve → ticket → scan → auto-start → auto-stop, over the real `mujin-broker`
//! process, a real PostgreSQL, management, and real `mujin-agent` processes running real programs.

use std::time::Duration;

use chrono::Utc;
use mujin_protocol::message::{
    self, Availability, Decision, EndReason, EventKind, ProgramStatus, RejectReason, ReportedState,
    Scan, ScanResult, StopCause,
};
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::{DeviceId, KeyId, ScanId, StoreId};
use mujin_tests::agent::Agent;
use mujin_tests::stack::Stack;
use mujin_tests::{process_alive, wait_for};

const SHORT: Duration = Duration::from_secs(10);

/// Waits until the agent of `device` reported itself online.
async fn online(stack: &Stack, (store, device): &(StoreId, DeviceId)) {
    let wanted = Topic::device(store, device, DeviceChannel::State);
    stack
        .observer
        .wait_for("the agent to come online", SHORT, |topic, payload| {
            let state: ReportedState = message::decode(payload).ok()?;
            (topic == &wanted && state.availability == Availability::Online).then_some(())
        })
        .await;
}

/// Waits for the store event refusing a scan for `reason`, and for the device to show it.
async fn refused(stack: &Stack, agent: &Agent, reason: RejectReason) {
    agent
        .wait_screen(&format!("REFUSED ({reason})"), SHORT)
        .await;
    stack
        .observer
        .wait_event(
            &format!("a {reason} rejection event"),
            SHORT,
            |event| match &event.kind {
                EventKind::ScanRejected { reason: got, .. } if *got == reason => Some(()),
                _ => None,
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booked_ticket_starts_the_program_which_stops_at_the_end_of_the_booking() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let mut agent = stack.agent(&device);
    online(&stack, &device).await;

    let booking = stack.book_now(&device, 4).await;
    agent.scan(&booking.ticket).await;
    agent.wait_screen("ACCEPTED", SHORT).await;
    let pid = agent.program_pid(SHORT).await;
    assert!(process_alive(pid), "the operating program runs");
    let session_id = stack
        .observer
        .wait_event("session started", SHORT, |event| match event.kind {
            EventKind::SessionStarted {
                session_id,
                ticket_id,
                ..
            } if ticket_id == booking.claims.ticket_id => Some(session_id),
            _ => None,
        })
        .await;

    let (ended_at, reason) = stack
        .observer
        .wait_event(
            "session ended",
            Duration::from_secs(15),
            |event| match event.kind {
                EventKind::SessionEnded {
                    session_id: id,
                    ended_at,
                    reason,
                    ..
                } if id == session_id => Some((ended_at, reason)),
                _ => None,
            },
        )
        .await;
    assert_eq!(reason, EndReason::BookingEnded);
    let lateness = ended_at - booking.claims.not_after;
    assert!(
        lateness >= chrono::Duration::zero() && lateness < chrono::Duration::seconds(2),
        "stopped {lateness} after the end of the booking"
    );
    wait_for("the program to be stopped", SHORT, || async {
        (!process_alive(pid)).then_some(())
    })
    .await;

    // The usage record, and the device's own account of how the program ended.
    let row = stack.session_row(&booking).await.expect("a session row");
    assert_eq!(row.end_reason.as_deref(), Some("booking_ended"));
    assert_eq!(row.lease_until, booking.claims.not_after);
    assert!(row.ended_at.expect("ended") >= row.started_at);
    let (store, dev) = &device;
    let state_topic = Topic::device(store, dev, DeviceChannel::State);
    stack
        .observer
        .wait_for(
            "the device to report idle after the session",
            SHORT,
            |topic, payload| {
                let state: ReportedState = message::decode(payload).ok()?;
                let exit = state
                    .last_exit
                    .filter(|exit| exit.session_id == session_id)?;
                // The stop command and the device's own lease aim at the same instant; either may win.
                let on_time = matches!(
                    exit.stopped_by,
                    StopCause::Command | StopCause::LeaseExpired
                );
                (topic == &state_topic && state.program == ProgramStatus::Idle && on_time)
                    .then_some(())
            },
        )
        .await;
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_ticket_is_refused_with_its_own_reason() {
    let stack = Stack::start().await;
    let pc1 = stack.add_device("shibuya", "pc-01").await;
    let pc2 = stack.add_device("shibuya", "pc-02").await;
    let mut agent1 = stack.agent(&pc1);
    let mut agent2 = stack.agent(&pc2);
    online(&stack, &pc1).await;
    online(&stack, &pc2).await;
    let secs = chrono::Duration::seconds;

    // Used once, then refused as already used.
    let first = stack.book_now(&pc1, 60).await;
    agent1.scan(&first.ticket).await;
    agent1.wait_screen("ACCEPTED", SHORT).await;
    agent1.scan(&first.ticket).await;
    refused(&stack, &agent1, RejectReason::AlreadyUsed).await;

    // pc-02: a booking that will have ended, one for later, one for now.
    let untouched = written_for(&stack, &pc2).await;
    let ended = stack.book(&pc2, secs(0), secs(1)).await.expect("booking");
    let later = stack
        .book(&pc2, chrono::Duration::minutes(10), secs(60))
        .await
        .expect("booking");
    let current = stack.book(&pc2, secs(2), secs(60)).await.expect("booking");

    agent1.scan(&current.ticket).await;
    refused(&stack, &agent1, RejectReason::WrongDevice).await;

    let forger = SigningKey::from_seed(KeyId::parse("k1").unwrap(), &[42; 32]).unwrap();
    agent2.scan(&forger.issue(&current.claims)).await;
    refused(&stack, &agent2, RejectReason::BadSignature).await;

    let stranger = SigningKey::from_seed(KeyId::parse("k9").unwrap(), &[42; 32]).unwrap();
    agent2.scan(&stranger.issue(&current.claims)).await;
    refused(&stack, &agent2, RejectReason::UnknownKey).await;

    agent2.scan("HELLO-I-AM-NOT-A-TICKET").await;
    refused(&stack, &agent2, RejectReason::MalformedTicket).await;

    agent2.scan(&later.ticket).await;
    refused(&stack, &agent2, RejectReason::TooEarly).await;

    wait_for("the short booking to end", SHORT, || async {
        (Utc::now() > ended.claims.not_after).then_some(())
    })
    .await;
    agent2.scan(&ended.ticket).await;
    refused(&stack, &agent2, RejectReason::Expired).await;

    // A payload that is not a scan at all: refused, and the worker carries on.
    let (store, device) = &pc2;
    let scan_topic = topic::device(store, device, DeviceChannel::Scan);
    stack
        .observer
        .publish_raw(&scan_topic, b"{not json".to_vec())
        .await;
    stack
        .observer
        .wait_event("a malformed scan event", SHORT, |event| match &event.kind {
            EventKind::ScanRejected {
                reason: RejectReason::MalformedScan,
                scan_id: None,
                ..
            } => Some(()),
            _ => None,
        })
        .await;
    let salvaged = ScanId::random();
    stack
        .observer
        .publish_raw(
            &scan_topic,
            format!(r#"{{"scan_id":"{salvaged}","ticket":7}}"#).into_bytes(),
        )
        .await;
    refused(&stack, &agent2, RejectReason::MalformedScan).await;

    wait_for("the current booking to start", SHORT, || async {
        (Utc::now() >= current.claims.not_before).then_some(())
    })
    .await;
    // The refusals wrote their scans and nothing else: no session, no command, the same epoch
    // (the malformed payloads are no scans: they are only in the events).
    let refusals = [
        "bad_signature",
        "unknown_key",
        "malformed_ticket",
        "too_early",
        "expired",
    ];
    let after_refusals = written_for(&stack, &pc2).await;
    assert_eq!(
        (
            after_refusals.epoch,
            after_refusals.sessions,
            after_refusals.commands
        ),
        (untouched.epoch, 0, 0),
        "{after_refusals:?}"
    );
    assert_eq!(after_refusals.refused, refusals, "{after_refusals:?}");

    agent2.scan(&current.ticket).await;
    agent2.wait_screen("ACCEPTED", SHORT).await;
    assert_eq!(stack.session_count(&first).await, 1);
    assert_eq!(stack.session_count(&current).await, 1);
    // The accepted scan wrote its session, its start at the next epoch and its scan, which
    // names the session.
    let accepted = written_for(&stack, &pc2).await;
    assert_eq!(
        (accepted.epoch, accepted.sessions, accepted.commands),
        (untouched.epoch + 1, 1, 1),
        "{accepted:?}"
    );
    assert!(accepted.accepted_scan_names_the_session, "{accepted:?}");
    assert_eq!(accepted.refused, refusals, "{accepted:?}");

    agent1.stop().await;
    agent2.stop().await;
    stack.shutdown().await;
}

/// What scans wrote for one device, read from the database.
#[derive(Debug)]
struct Written {
    epoch: i64,
    sessions: i64,
    commands: i64,
    /// The reasons of its refused scans, in the order they were decided.
    refused: Vec<String>,
    /// Its one accepted scan refers to its one session (and that session to the scan).
    accepted_scan_names_the_session: bool,
}

async fn written_for(stack: &Stack, (store, device): &(StoreId, DeviceId)) -> Written {
    let client = stack.pool.get().await.expect("db connection");
    let row = client
        .query_one(
            "SELECT d.epoch,
                    (SELECT count(*) FROM sessions s WHERE s.store_id = d.store_id AND s.device_id = d.device_id),
                    (SELECT count(*) FROM commands c WHERE c.store_id = d.store_id AND c.device_id = d.device_id),
                    (SELECT coalesce(array_agg(sc.reason ORDER BY sc.decided_at), '{}') FROM scans sc
                     WHERE sc.store_id = d.store_id AND sc.device_id = d.device_id AND NOT sc.accepted),
                    EXISTS (SELECT 1 FROM scans sc JOIN sessions s ON s.session_id = sc.session_id
                                                               AND s.scan_id = sc.scan_id
                            WHERE sc.store_id = d.store_id AND sc.device_id = d.device_id AND sc.accepted)
             FROM devices d WHERE d.store_id = $1 AND d.device_id = $2",
            &[&store.as_str(), &device.as_str()],
        )
        .await
        .expect("what the scans wrote");
    Written {
        epoch: row.get(0),
        sessions: row.get(1),
        commands: row.get(2),
        refused: row.get(3),
        accepted_scan_names_the_session: row.get(4),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_scan_delivered_twice_gives_one_session_and_the_same_answer() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-09").await;
    let booking = stack.book_now(&device, 30).await;
    let mut scan = Scan {
        sent_at: None,
        signature: None,
        scan_id: ScanId::random(),
        ticket: booking.ticket.clone(),
        read_at: Utc::now(),
        offline: None,
    };
    stack.sign_scan_as(&device, &mut scan);
    let (store, dev) = &device;
    let scan_topic = topic::device(store, dev, DeviceChannel::Scan);
    let payload = message::encode(&scan);
    stack
        .observer
        .publish_raw(&scan_topic, payload.clone())
        .await;
    stack.observer.publish_raw(&scan_topic, payload).await;

    let result_topic = Topic::device(store, dev, DeviceChannel::ScanResult);
    let answers = wait_for("two answers", SHORT, || {
        let answers: Vec<ScanResult> = stack
            .observer
            .recorded()
            .into_iter()
            .filter(|recorded| recorded.topic == result_topic)
            .filter_map(|recorded| message::decode(&recorded.payload).ok())
            .collect();
        async move { (answers.len() == 2).then_some(answers) }
    })
    .await;
    assert_eq!(
        answers[0], answers[1],
        "a redelivered scan gets its first answer"
    );
    assert!(matches!(answers[0].decision, Decision::Accepted { .. }));
    assert_eq!(stack.session_count(&booking).await, 1);
    stack
        .observer
        .wait_event("the session started event", SHORT, |event| {
            matches!(event.kind, EventKind::SessionStarted { .. }).then_some(())
        })
        .await;
    // Events come from the audit log: a second one would follow within the same dispatch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = stack
        .observer
        .events()
        .into_iter()
        .filter(|event| matches!(event.kind, EventKind::SessionStarted { .. }))
        .count();
    assert_eq!(started, 1, "one session started event");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_bookings_are_refused_by_the_database() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let other = stack.add_device("shibuya", "pc-02").await;
    let hours = chrono::Duration::hours;
    stack
        .book(&device, hours(1), hours(1))
        .await
        .expect("first booking");
    let overlap = stack
        .book(&device, chrono::Duration::minutes(90), hours(1))
        .await;
    assert!(
        matches!(
            overlap,
            Err(mujin_management::booking::BookingError::Overlap { .. })
        ),
        "{overlap:?}"
    );
    stack
        .book(&device, hours(2), hours(1))
        .await
        .expect("a back-to-back booking is fine");
    stack
        .book(&other, hours(1), hours(1))
        .await
        .expect("another device is free");

    // Not just the application: the table itself refuses an overlapping row.
    let client = stack.pool.get().await.unwrap();
    let error = client
        .execute(
            "INSERT INTO reservations (ticket_id, store_id, device_id, period, key_id)
             VALUES (gen_random_uuid(), 'shibuya', 'pc-01', tstzrange(now() + interval '70 minutes', now() + interval '80 minutes', '[)'), 'k1')",
            &[],
        )
        .await
        .expect_err("the exclusion constraint refuses the row");
    assert_eq!(
        error.as_db_error().map(|db| db.constraint()),
        Some(Some("reservations_no_overlap"))
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_stops_the_program_at_the_lease_end_when_the_broker_is_gone() {
    let mut stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let mut agent = stack.agent(&device);
    online(&stack, &device).await;
    let booking = stack.book_now(&device, 4).await;
    agent.scan(&booking.ticket).await;
    agent.wait_screen("ACCEPTED", SHORT).await;
    let pid = agent.program_pid(SHORT).await;

    stack.kill_broker().await;
    assert!(
        process_alive(pid),
        "the program keeps running without the broker"
    );
    wait_for(
        "the agent to stop the program by itself",
        Duration::from_secs(15),
        || async { (!process_alive(pid)).then_some(()) },
    )
    .await;
    let stopped_at = Utc::now();
    assert!(
        stopped_at - booking.claims.not_after < chrono::Duration::seconds(3),
        "stopped {} after the lease end",
        stopped_at - booking.claims.not_after
    );
    agent.wait_screen("LEASE ENDED", SHORT).await;
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_shuts_down_promptly_with_the_broker_gone() {
    let mut stack = Stack::start().await;
    stack.kill_broker().await;
    tokio::time::timeout(Duration::from_secs(10), stack.stop_management())
        .await
        .expect("management stopped within 10 s");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_customer_of_a_back_to_back_booking_is_not_refused_while_the_stop_timer_lags() {
    use mujin_management::scans::{handle_scan, ScanRules};

    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-07").await;
    let (store, dev) = &device;
    let secs = chrono::Duration::seconds;
    let first = stack
        .book(&device, secs(60), secs(60))
        .await
        .expect("booking");
    let second = stack
        .book(&device, secs(120), secs(60))
        .await
        .expect("booking");
    let rules = ScanRules {
        command_key: None,
        keyring: stack.keys.keyring.clone(),
        early_grace: Duration::from_secs(5),
    };
    let scan = |ticket: &str| {
        message::encode(&Scan {
            sent_at: None,
            signature: None,
            scan_id: ScanId::random(),
            ticket: ticket.to_owned(),
            read_at: Utc::now(),
            offline: None,
        })
    };
    // Decided "in the future", at the very second the second booking starts: the first
    // session is still open because no stop timer ran at that (simulated) time.
    let at_start = first.claims.not_before;
    handle_scan(
        &stack.pool,
        &rules,
        store,
        dev,
        &scan(&first.ticket),
        at_start,
    )
    .await
    .expect("first scan");
    let at_boundary = second.claims.not_before;
    let outcome = handle_scan(
        &stack.pool,
        &rules,
        store,
        dev,
        &scan(&second.ticket),
        at_boundary,
    )
    .await
    .expect("second scan");
    let result: ScanResult = message::decode(&outcome.publish[0].payload).expect("a scan result");
    assert!(
        matches!(result.decision, Decision::Accepted { .. }),
        "{result:?}"
    );
    let row = stack.session_row(&first).await.expect("first session");
    assert_eq!(row.end_reason.as_deref(), Some("booking_ended"));
    assert_eq!(row.ended_at, Some(at_boundary));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_postgresql_cannot_store_is_refused_and_the_worker_carries_on() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let (store, dev) = &device;
    let scan_topic = topic::device(store, dev, DeviceChannel::Scan);
    // A NUL character: PostgreSQL text refuses it.
    let mut poisoned = Scan {
        sent_at: None,
        signature: None,
        scan_id: ScanId::random(),
        ticket: "MJ1:\u{0}ABC".into(),
        read_at: Utc::now(),
        offline: None,
    };
    stack.sign_scan_as(&device, &mut poisoned);
    stack
        .observer
        .publish_raw(&scan_topic, message::encode(&poisoned))
        .await;
    stack
        .observer
        .wait_event("the reading refused", SHORT, |event| match &event.kind {
            EventKind::ScanRejected {
                scan_id: Some(id),
                reason: RejectReason::MalformedTicket,
                ..
            } if *id == poisoned.scan_id => Some(()),
            _ => None,
        })
        .await;
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 30).await;
    agent.scan(&booking.ticket).await;
    agent.wait_screen("ACCEPTED", SHORT).await;
    agent.stop().await;
    stack.shutdown().await;
}
