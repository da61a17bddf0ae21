//! Snapshot queries end to end: an operator pages through upcoming bookings, recent sessions
//! and recent events over MQTT (real broker process, PostgreSQL, management), every page under
//! the payload limit, nothing lost or repeated across pages, and nothing recorded. The operator is
//! a viewer: reading is all its role allows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mujin_management::operators::Role;
use mujin_protocol::message::{self, EndReason, Event, Reply, Request, RequestAction};
use mujin_protocol::snapshot::{BookingSummary, SessionSummary, SnapshotItems, SnapshotPart};
use mujin_protocol::topic::Topic;
use mujin_protocol::{DeviceId, OperatorId, RequestId, SessionId, StoreId, TicketId};
use mujin_tests::operator::{publish, Operator};
use mujin_tests::stack::Stack;
use mujin_tests::wait_for;

const SHORT: Duration = Duration::from_secs(10);

fn alice() -> OperatorId {
    OperatorId::parse("alice").expect("operator id")
}

/// Every reply to `request_id` recorded so far, with its payload size.
fn replies_to(stack: &Stack, request_id: RequestId) -> Vec<(Reply, usize)> {
    stack
        .observer
        .recorded()
        .into_iter()
        .filter(|recorded| matches!(&recorded.topic, Topic::Replies { operator } if *operator == alice()))
        .filter_map(|recorded| {
            let size = recorded.payload.len();
            message::decode::<Reply>(&recorded.payload)
                .ok()
                .map(|reply| (reply, size))
        })
        .filter(|(reply, _)| reply.request_id == request_id)
        .collect()
}

/// Publishes a (signed) request as alice and waits for `count` replies to it.
async fn send(stack: &Stack, request: &Request, count: usize) -> Vec<(Reply, usize)> {
    publish(stack, &alice(), request).await;
    let request_id = request.request_id;
    wait_for(&format!("reply to {request_id}"), SHORT, || {
        let found = replies_to(stack, request_id);
        async move { (found.len() >= count).then_some(found) }
    })
    .await
}

/// Pages through one part to the end; returns every page's items and payload size.
async fn fetch_all(
    stack: &Stack,
    alice: &Operator,
    part: SnapshotPart,
    store: Option<StoreId>,
) -> Vec<(SnapshotItems, usize)> {
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let request = alice.request(RequestAction::Snapshot {
            part,
            store: store.clone(),
            after: after.take(),
        });
        let (reply, size) = send(stack, &request, 1).await.remove(0);
        assert!(reply.ok, "{reply:?}");
        let page = reply.snapshot.expect("a snapshot page");
        assert_eq!(page.items.part(), part);
        assert!(size <= message::MAX_PAYLOAD_BYTES, "a page of {size} bytes");
        pages.push((page.items, size));
        match page.next {
            Some(next) => after = Some(next),
            None => return pages,
        }
        assert!(pages.len() < 100, "paging does not end");
    }
}

fn bookings_of(pages: &[(SnapshotItems, usize)]) -> Vec<BookingSummary> {
    pages
        .iter()
        .flat_map(|(items, _)| match items {
            SnapshotItems::Bookings(items) => items.clone(),
            other => panic!("not bookings: {other:?}"),
        })
        .collect()
}

fn sessions_of(pages: &[(SnapshotItems, usize)]) -> Vec<SessionSummary> {
    pages
        .iter()
        .flat_map(|(items, _)| match items {
            SnapshotItems::Sessions(items) => items.clone(),
            other => panic!("not sessions: {other:?}"),
        })
        .collect()
}

fn events_of(pages: &[(SnapshotItems, usize)]) -> Vec<Event> {
    pages
        .iter()
        .flat_map(|(items, _)| match items {
            SnapshotItems::Events(items) => items.clone(),
            other => panic!("not events: {other:?}"),
        })
        .collect()
}

/// Writes a used booking and its session straight into the database (as management would
/// have after a scan), ended with `reason` at `ended_at` or still running.
async fn insert_session(
    stack: &Stack,
    (store, device): &(StoreId, DeviceId),
    window: (DateTime<Utc>, DateTime<Utc>),
    ended: Option<(DateTime<Utc>, EndReason)>,
) -> SessionId {
    let ticket = TicketId::random();
    let session = SessionId::random();
    let client = stack.pool.get().await.expect("db connection");
    client
        .execute(
            "INSERT INTO reservations (ticket_id, store_id, device_id, period, key_id)
             VALUES ($1, $2, $3, tstzrange($4, $5, '[)'), 'k1')",
            &[
                &ticket.as_uuid(),
                &store.as_str(),
                &device.as_str(),
                &window.0,
                &window.1,
            ],
        )
        .await
        .expect("insert a reservation");
    let (ended_at, reason) = ended.unzip();
    client
        .execute(
            "INSERT INTO sessions (session_id, ticket_id, scan_id, store_id, device_id, started_at,
                                   lease_until, start_command_id, ended_at, end_reason)
             VALUES ($1, $2, gen_random_uuid(), $3, $4, $5, $6, gen_random_uuid(), $7, $8)",
            &[
                &session.as_uuid(),
                &ticket.as_uuid(),
                &store.as_str(),
                &device.as_str(),
                &window.0,
                &window.1,
                &ended_at,
                &reason.map(EndReason::as_str),
            ],
        )
        .await
        .expect("insert a session");
    session
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookings_sessions_and_events_come_back_complete_over_many_pages() {
    let stack = Stack::start().await;
    let alice = Operator::add(&stack, "alice", Role::Viewer).await;
    let pc = stack.add_device("shibuya", "pc-01").await;
    let vr = stack.add_device("shibuya", "vr-01").await;
    let karaoke = stack.add_device("umeda", "karaoke-1").await;

    // 300 upcoming bookings on one device, 10 minutes each, and some that must not be listed.
    let mut booked = Vec::new();
    for n in 0..300 {
        let start = chrono::Duration::minutes(60 + 10 * n);
        let booking = stack
            .book(&pc, start, chrono::Duration::minutes(10))
            .await
            .expect("booking");
        booked.push(booking.claims.ticket_id);
    }
    let umeda = stack
        .book(
            &karaoke,
            chrono::Duration::minutes(180),
            chrono::Duration::minutes(30),
        )
        .await
        .expect("booking in umeda");
    let cancelled = stack
        .book(
            &vr,
            chrono::Duration::minutes(30),
            chrono::Duration::minutes(30),
        )
        .await
        .expect("booking to cancel");
    mujin_management::actions::cancel(&stack.pool, cancelled.claims.ticket_id, "test", Utc::now())
        .await
        .expect("cancel");

    // 120 sessions that ended within the day, one running, one ended too long ago.
    let now = Utc::now();
    let mut recent = Vec::new();
    for n in 0..120 {
        let start = now - chrono::Duration::minutes(10 * (n + 2));
        let end = start + chrono::Duration::minutes(10);
        let ended = Some((end, EndReason::BookingEnded));
        recent.push(insert_session(&stack, &vr, (start, end), ended).await);
    }
    let running_window = (
        now - chrono::Duration::minutes(5),
        now + chrono::Duration::hours(2),
    );
    let running = insert_session(&stack, &karaoke, running_window, None).await;
    let old = now - chrono::Duration::hours(30);
    let old_end = Some((old + chrono::Duration::minutes(10), EndReason::Forced));
    let too_old = insert_session(
        &stack,
        &vr,
        (old, old + chrono::Duration::minutes(10)),
        old_end,
    )
    .await;

    let pages = fetch_all(&stack, &alice, SnapshotPart::Bookings, None).await;
    let bookings = bookings_of(&pages);
    let sizes: Vec<usize> = pages.iter().map(|(_, size)| *size).collect();
    println!(
        "checked: 301 bookings in {} pages of {sizes:?} bytes",
        pages.len()
    );
    assert!(pages.len() >= 3, "{} pages", pages.len());
    let mut expected = booked.clone();
    expected.push(umeda.claims.ticket_id);
    let mut listed: Vec<TicketId> = bookings.iter().map(|booking| booking.ticket_id).collect();
    assert!(
        bookings
            .windows(2)
            .all(|pair| pair[0].not_before <= pair[1].not_before),
        "ordered by start"
    );
    listed.sort();
    expected.sort();
    assert_eq!(
        listed, expected,
        "every live booking once, no cancelled one"
    );

    let umeda_only = bookings_of(
        &fetch_all(
            &stack,
            &alice,
            SnapshotPart::Bookings,
            StoreId::parse("umeda").ok(),
        )
        .await,
    );
    assert_eq!(umeda_only.len(), 1);
    assert_eq!(umeda_only[0].ticket_id, umeda.claims.ticket_id);
    assert_eq!(umeda_only[0].device, karaoke.1);

    let pages = fetch_all(&stack, &alice, SnapshotPart::Sessions, None).await;
    let sessions = sessions_of(&pages);
    println!(
        "checked: {} sessions in {} pages",
        sessions.len(),
        pages.len()
    );
    assert!(pages.len() >= 2, "{} pages", pages.len());
    let mut listed: Vec<SessionId> = sessions.iter().map(|s| s.session_id).collect();
    let mut expected = recent.clone();
    expected.push(running);
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected, "running and recent sessions once each");
    assert!(!listed.contains(&too_old));
    let live = sessions
        .iter()
        .find(|s| s.session_id == running)
        .expect("running");
    assert_eq!((live.ended_at, live.end_reason), (None, None));
    let ended = sessions
        .iter()
        .find(|s| s.session_id == recent[0])
        .expect("ended");
    assert_eq!(ended.end_reason, Some(EndReason::BookingEnded));
    assert!(ended.ended_at.is_some());

    let client = stack.pool.get().await.expect("db connection");
    let rows = client
        .query(
            "SELECT body FROM events ORDER BY event_id DESC LIMIT 200",
            &[],
        )
        .await
        .expect("recent events");
    let mut expected: Vec<Event> = rows
        .iter()
        .map(|row| serde_json::from_value(row.get(0)).expect("an event"))
        .collect();
    expected.reverse();
    let pages = fetch_all(&stack, &alice, SnapshotPart::Events, None).await;
    let events = events_of(&pages);
    println!("checked: {} events in {} pages", events.len(), pages.len());
    assert!(pages.len() >= 2, "{} pages", pages.len());
    // Events written while paging (the probes of the harness) may follow; the 200 come first.
    assert!(events.len() >= 200, "{} events", events.len());
    assert_eq!(
        events[..200],
        expected[..],
        "the 200 most recent events, oldest first"
    );

    // Read-only: nothing recorded, and the same query asked again is answered again.
    let recorded: i64 = client
        .query_one("SELECT count(*) FROM requests", &[])
        .await
        .expect("count requests")
        .get(0);
    assert_eq!(recorded, 0, "snapshot queries are not recorded");
    let request = alice.request(RequestAction::Snapshot {
        part: SnapshotPart::Sessions,
        store: StoreId::parse("umeda").ok(),
        after: None,
    });
    send(&stack, &request, 1).await;
    let twice = send(&stack, &request, 2).await;
    assert_eq!(twice[0].0, twice[1].0, "asked twice, answered twice alike");

    let bad = alice.request(RequestAction::Snapshot {
        part: SnapshotPart::Bookings,
        store: None,
        after: Some("yesterday".into()),
    });
    let (refused, _) = send(&stack, &bad, 1).await.remove(0);
    assert!(
        !refused.ok && refused.detail.contains("invalid cursor"),
        "{refused:?}"
    );
    stack.shutdown().await;
}
