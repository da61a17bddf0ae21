//! The catch-up through `update`: snapshot pages followed by cursor and merged with what was
//! seen live (sessions, events without duplicates, bookings), page queries sent again until
//! answered, and cancelling a booking picked from the sessions view.

use super::tests::{event_msg, key, loading_queries, new_app, page, store, t};
use super::*;
use crate::event::{ConnectionChange, Incoming, MqttMessage};
use crossterm::event::KeyCode;
use mujin_protocol::message::{EndReason, EventKind, Reply, RequestAction};
use mujin_protocol::snapshot::{BookingSummary, SessionSummary, SnapshotItems, SnapshotPart};
use mujin_protocol::{SessionId, TicketId};

fn ticket(n: u8) -> TicketId {
    TicketId::parse(&format!("00000000-0000-4000-8000-0000000000{n:02x}")).unwrap()
}

fn session(n: u8) -> SessionId {
    SessionId::parse(&format!("00000000-0000-4000-8000-1000000000{n:02x}")).unwrap()
}

fn booking(n: u8, device: &str, from: &str, until: &str) -> BookingSummary {
    BookingSummary {
        ticket_id: ticket(n),
        store: store("shibuya"),
        device: super::tests::device(device),
        not_before: t(from),
        not_after: t(until),
    }
}

/// Connects; returns the page query of each part.
fn connect(app: &mut App) -> Vec<Request> {
    let effect = update(app, Event::Connection(ConnectionChange::Up));
    let Some(Effect::Send(requests)) = effect else {
        panic!("a connection starts the catch-up, got {effect:?}");
    };
    assert_eq!(requests, loading_queries(app));
    requests
}

fn part_of(request: &Request) -> (SnapshotPart, Option<String>) {
    match &request.action {
        RequestAction::Snapshot { part, store, after } => {
            assert_eq!(*store, None, "every store");
            (*part, after.clone())
        }
        other => panic!("not a snapshot query: {other:?}"),
    }
}

fn query_of(requests: &[Request], part: SnapshotPart) -> Request {
    requests
        .iter()
        .find(|request| part_of(request).0 == part)
        .cloned()
        .unwrap()
}

/// Answers `request` with a page; returns the next page's query, if one was sent.
fn answer(
    app: &mut App,
    request: &Request,
    items: SnapshotItems,
    next: Option<&str>,
) -> Option<Request> {
    match update(app, page(request, items, next)) {
        None => None,
        Some(Effect::Send(mut requests)) if requests.len() == 1 => requests.pop(),
        other => panic!("unexpected {other:?}"),
    }
}

fn state_of(app: &App, part: SnapshotPart) -> PartState {
    let catch_up = app.catch_up.as_ref().unwrap();
    let load = catch_up
        .parts
        .iter()
        .find(|load| load.part == part)
        .unwrap();
    load.state.clone()
}

#[test]
fn every_connection_asks_for_all_three_parts_and_follows_the_cursors() {
    let mut app = new_app();
    let requests = connect(&mut app);
    let parts: Vec<_> = requests.iter().map(part_of).collect();
    assert_eq!(
        parts,
        [
            (SnapshotPart::Bookings, None),
            (SnapshotPart::Sessions, None),
            (SnapshotPart::Events, None)
        ]
    );
    let first = query_of(&requests, SnapshotPart::Bookings);
    let page_one = SnapshotItems::Bookings(vec![booking(
        1,
        "pc-01",
        "2025-06-01T10:30:00Z",
        "2025-06-01T11:00:00Z",
    )]);
    let second = answer(&mut app, &first, page_one, Some("cursor-1")).expect("the next page");
    assert_eq!(
        part_of(&second),
        (SnapshotPart::Bookings, Some("cursor-1".into()))
    );
    assert_ne!(second.request_id, first.request_id);
    // Not shown before the last page: the list is replaced as a whole.
    assert!(app.bookings.is_empty());
    assert!(app.catch_up.as_ref().unwrap().is_loading());
    // A repeated answer to the first page is not merged twice, and asks for nothing.
    let again = SnapshotItems::Bookings(Vec::new());
    assert_eq!(
        update(&mut app, page(&first, again, Some("cursor-1"))),
        None
    );
    let page_two = SnapshotItems::Bookings(vec![booking(
        2,
        "pc-02",
        "2025-06-01T10:10:00Z",
        "2025-06-01T10:40:00Z",
    )]);
    assert_eq!(answer(&mut app, &second, page_two, None), None);
    assert_eq!(state_of(&app, SnapshotPart::Bookings), PartState::Done);
    let listed: Vec<TicketId> = app.bookings.values().map(|b| b.ticket_id).collect();
    assert_eq!(listed, [ticket(2), ticket(1)], "by start");
    for part in [SnapshotPart::Sessions, SnapshotPart::Events] {
        let items = match part {
            SnapshotPart::Sessions => SnapshotItems::Sessions(Vec::new()),
            _ => SnapshotItems::Events(Vec::new()),
        };
        answer(&mut app, &query_of(&requests, part), items, None);
    }
    let catch_up = app.catch_up.as_ref().unwrap();
    assert!(!catch_up.is_loading() && !catch_up.is_incomplete());
    assert_eq!(catch_up.parts[0].pages, 2);
}

#[test]
fn bookings_gone_while_away_leave_and_live_ones_stay() {
    let mut app = new_app();
    let requests = connect(&mut app);
    let old = booking(1, "pc-01", "2025-06-01T10:30:00Z", "2025-06-01T11:00:00Z");
    let query = query_of(&requests, SnapshotPart::Bookings);
    answer(&mut app, &query, SnapshotItems::Bookings(vec![old]), None);
    assert_eq!(app.bookings.len(), 1);
    // Reconnected: meanwhile booking 1 was cancelled elsewhere; booking 3 is made while loading.
    update(
        &mut app,
        Event::Connection(ConnectionChange::Down {
            error: "gone".into(),
        }),
    );
    let requests = connect(&mut app);
    let created = EventKind::ReservationCreated {
        ticket_id: ticket(3),
        not_before: t("2025-06-01T12:00:00Z"),
        not_after: t("2025-06-01T13:00:00Z"),
    };
    update(
        &mut app,
        event_msg("shibuya", Some("pc-03"), created, "2025-06-01T10:00:01Z"),
    );
    let kept = booking(2, "pc-02", "2025-06-01T10:10:00Z", "2025-06-01T10:40:00Z");
    let query = query_of(&requests, SnapshotPart::Bookings);
    answer(&mut app, &query, SnapshotItems::Bookings(vec![kept]), None);
    let listed: Vec<TicketId> = app.bookings.values().map(|b| b.ticket_id).collect();
    assert_eq!(listed, [ticket(2), ticket(3)]);
}

#[test]
fn bookings_follow_the_live_events_and_the_clock() {
    let mut app = new_app();
    let created = |n: u8, from: &str, until: &str| EventKind::ReservationCreated {
        ticket_id: ticket(n),
        not_before: t(from),
        not_after: t(until),
    };
    let at = "2025-06-01T10:00:00Z";
    let first = created(1, "2025-06-01T10:00:00Z", "2025-06-01T10:30:00Z");
    update(&mut app, event_msg("shibuya", Some("pc-01"), first, at));
    let second = created(2, "2025-06-01T10:00:00Z", "2025-06-01T10:10:00Z");
    update(&mut app, event_msg("shibuya", Some("pc-02"), second, at));
    let third = created(3, "2025-06-01T11:00:00Z", "2025-06-01T11:10:00Z");
    update(&mut app, event_msg("shibuya", Some("pc-02"), third, at));
    let next = app.next_bookings(&store("shibuya"));
    assert_eq!(next[&super::tests::device("pc-02")].ticket_id, ticket(2));
    assert_eq!(app.bookings.len(), 3);
    let started = EventKind::SessionStarted {
        session_id: session(1),
        ticket_id: ticket(1),
        lease_until: t("2025-06-01T10:30:00Z"),
        offline: false,
    };
    update(&mut app, event_msg("shibuya", Some("pc-01"), started, at));
    // The window of booking 2 ends unused.
    update(&mut app, Event::Tick(t("2025-06-01T10:10:00Z")));
    let listed: Vec<TicketId> = app.bookings.values().map(|b| b.ticket_id).collect();
    assert_eq!(listed, [ticket(3)]);
    let next = app.next_bookings(&store("shibuya"));
    assert_eq!(next[&super::tests::device("pc-02")].ticket_id, ticket(3));
    assert!(!next.contains_key(&super::tests::device("pc-01")));
}

#[test]
fn snapshot_sessions_join_the_live_ones_in_start_order() {
    let mut app = new_app();
    let requests = connect(&mut app);
    // Seen live: session 1 started (its end is not seen).
    let started = EventKind::SessionStarted {
        session_id: session(1),
        ticket_id: ticket(1),
        lease_until: t("2025-06-01T10:30:00Z"),
        offline: false,
    };
    update(
        &mut app,
        event_msg("shibuya", Some("pc-01"), started, "2025-06-01T09:30:00Z"),
    );
    let summary = |n: u8, device: &str, started: &str, ended: Option<&str>| SessionSummary {
        session_id: session(n),
        ticket_id: ticket(n),
        store: store("shibuya"),
        device: super::tests::device(device),
        started_at: t(started),
        lease_until: t("2025-06-01T10:30:00Z"),
        ended_at: ended.map(t),
        end_reason: ended.map(|_| EndReason::Forced),
    };
    let items = SnapshotItems::Sessions(vec![
        summary(
            2,
            "pc-02",
            "2025-06-01T08:00:00Z",
            Some("2025-06-01T08:20:00Z"),
        ),
        summary(
            1,
            "pc-01",
            "2025-06-01T09:30:00Z",
            Some("2025-06-01T09:45:00Z"),
        ),
        summary(3, "pc-03", "2025-06-01T09:50:00Z", None),
    ]);
    answer(
        &mut app,
        &query_of(&requests, SnapshotPart::Sessions),
        items,
        None,
    );
    let order: Vec<SessionId> = app.sessions.iter().map(|s| s.session_id).collect();
    assert_eq!(order, [session(2), session(1), session(3)]);
    let one = &app.sessions[1];
    let end = one.ended.as_ref().expect("management's end of session 1");
    assert_eq!(
        (end.reason, end.used_ms),
        (EndReason::Forced, 15 * 60 * 1000)
    );
    assert!(app.sessions[2].ended.is_none());
    // The overview's counters count what was seen live only.
    let day = t("2025-06-01T09:30:00Z").date_naive();
    assert_eq!(app.stores[&store("shibuya")].sessions_by_day[&day], 1);
}

#[test]
fn events_are_back_filled_in_time_order_without_duplicates() {
    let mut app = new_app();
    let requests = connect(&mut app);
    let kind = |n: u8| EventKind::ClockSkew {
        skew_ms: i64::from(n),
    };
    // Arrived live: skew 2 at 09:58.
    update(
        &mut app,
        event_msg("shibuya", Some("pc-01"), kind(2), "2025-06-01T09:58:00Z"),
    );
    let event = |n: u8, at: &str| match event_msg("shibuya", Some("pc-01"), kind(n), at) {
        Event::Mqtt(MqttMessage {
            incoming: Incoming::StoreEvent(event),
            ..
        }) => event,
        _ => unreachable!(),
    };
    let items = SnapshotItems::Events(vec![
        event(1, "2025-06-01T09:50:00Z"),
        event(2, "2025-06-01T09:58:00Z"),
        event(3, "2025-06-01T09:59:00Z"),
    ]);
    let query = query_of(&requests, SnapshotPart::Events);
    answer(&mut app, &query, items.clone(), None);
    let skews = |app: &App| -> Vec<String> {
        app.events
            .iter()
            .map(|record| record.search_text.clone())
            .collect()
    };
    assert_eq!(
        skews(&app),
        [
            "shibuya pc-01 clock_skew skew 1",
            "shibuya pc-01 clock_skew skew 2",
            "shibuya pc-01 clock_skew skew 3"
        ]
    );
    // The next connection's catch-up brings the same events again: still one copy each.
    let requests = connect(&mut app);
    answer(
        &mut app,
        &query_of(&requests, SnapshotPart::Events),
        items,
        None,
    );
    assert_eq!(app.events.len(), 3);
    // Back-filled events never touch the device rows (newer sources tell their state).
    assert!(app
        .device(&store("shibuya"), &super::tests::device("pc-01"))
        .is_some());
}

#[test]
fn page_queries_are_sent_again_until_answered_then_given_up() {
    let mut app = new_app();
    let requests = connect(&mut app);
    assert_eq!(
        update(&mut app, Event::Tick(t("2025-06-01T10:00:01Z"))),
        None
    );
    let resent = update(&mut app, Event::Tick(t("2025-06-01T10:00:02Z")));
    assert_eq!(resent, Some(Effect::Send(requests.clone())), "same ids");
    // Sessions answered; the other two keep trying.
    let sessions = query_of(&requests, SnapshotPart::Sessions);
    answer(
        &mut app,
        &sessions,
        SnapshotItems::Sessions(Vec::new()),
        None,
    );
    let Some(Effect::Send(resent)) = update(&mut app, Event::Tick(t("2025-06-01T10:00:04Z")))
    else {
        panic!("expected resends");
    };
    assert_eq!(resent.len(), 2);
    assert!(!resent.contains(&sessions));
    update(&mut app, Event::Tick(t("2025-06-01T10:00:30Z")));
    assert_eq!(state_of(&app, SnapshotPart::Bookings), PartState::NoAnswer);
    assert_eq!(state_of(&app, SnapshotPart::Sessions), PartState::Done);
    let catch_up = app.catch_up.as_ref().unwrap();
    assert!(!catch_up.is_loading() && catch_up.is_incomplete());
    assert_eq!(
        update(&mut app, Event::Tick(t("2025-06-01T10:00:40Z"))),
        None
    );
}

#[test]
fn a_refused_page_is_reported_not_retried() {
    let mut app = new_app();
    let requests = connect(&mut app);
    let events = query_of(&requests, SnapshotPart::Events);
    let refusal = Event::Mqtt(MqttMessage {
        received_at: t("2025-06-01T10:00:01Z"),
        incoming: Incoming::Reply(Reply {
            request_id: events.request_id,
            ok: false,
            detail: "invalid cursor".into(),
            ticket: None,
            snapshot: None,
        }),
    });
    assert_eq!(update(&mut app, refusal), None);
    assert_eq!(
        state_of(&app, SnapshotPart::Events),
        PartState::Refused("invalid cursor".into())
    );
}

#[test]
fn c_on_a_listed_booking_cancels_that_ticket() {
    let mut app = new_app();
    let requests = connect(&mut app);
    let items = SnapshotItems::Bookings(vec![
        booking(1, "pc-01", "2025-06-01T10:30:00Z", "2025-06-01T11:00:00Z"),
        booking(2, "pc-02", "2025-06-01T11:30:00Z", "2025-06-01T12:00:00Z"),
    ]);
    answer(
        &mut app,
        &query_of(&requests, SnapshotPart::Bookings),
        items,
        None,
    );
    update(&mut app, key(KeyCode::Char('3')));
    assert!(
        matches!(app.selected_sessions_row(), Some(SessionsRow::Booking(b)) if b.ticket_id == ticket(1))
    );
    update(&mut app, key(KeyCode::Char('j')));
    assert_eq!(update(&mut app, key(KeyCode::Char('c'))), None);
    assert_eq!(
        app.dialog,
        Some(Dialog::Confirm(Action::Cancel {
            ticket_id: ticket(2)
        }))
    );
    let Some(Effect::Send(sent)) = update(&mut app, key(KeyCode::Char('y'))) else {
        panic!("the cancel request");
    };
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].action,
        RequestAction::Cancel {
            ticket_id: ticket(2)
        }
    );
    let done = Event::Mqtt(MqttMessage {
        received_at: t("2025-06-01T10:00:01Z"),
        incoming: Incoming::Reply(Reply {
            request_id: sent[0].request_id,
            ok: true,
            detail: "booking cancelled".into(),
            ticket: None,
            snapshot: None,
        }),
    });
    update(&mut app, done);
    let listed: Vec<TicketId> = app.bookings.values().map(|b| b.ticket_id).collect();
    assert_eq!(listed, [ticket(1)], "the cancelled booking left the list");
    // On a session row (or nothing), `c` still asks for a ticket id.
    let started = EventKind::SessionStarted {
        session_id: session(9),
        ticket_id: ticket(9),
        lease_until: t("2025-06-01T10:30:00Z"),
        offline: false,
    };
    update(
        &mut app,
        event_msg("shibuya", Some("pc-09"), started, "2025-06-01T10:00:01Z"),
    );
    update(&mut app, key(KeyCode::Char('g')));
    assert!(matches!(
        app.selected_sessions_row(),
        Some(SessionsRow::Session(_))
    ));
    update(&mut app, key(KeyCode::Char('c')));
    assert_eq!(
        app.dialog,
        Some(Dialog::CancelTicket {
            input: String::new()
        })
    );
}
