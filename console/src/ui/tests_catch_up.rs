//! The catch-up on screen: upcoming bookings in the sessions view (one selected) and in the
//! store view's next-booking column, and the banner while loading or when incomplete.

use super::tests::{busy_app, snapshot_both};
use crate::app::tests::{loading_queries, page, t};
use crate::app::{update, App, View};
use crate::event::{ConnectionChange, Event};
use crossterm::event::KeyCode;
use mujin_protocol::message::RequestAction;
use mujin_protocol::snapshot::{BookingSummary, SnapshotItems, SnapshotPart};
use mujin_protocol::{DeviceId, StoreId, TicketId};

fn booking(n: u8, store: &str, device: &str, from: &str, until: &str) -> BookingSummary {
    BookingSummary {
        ticket_id: TicketId::parse(&format!("{n:02x}000000-0000-4000-8000-000000000000")).unwrap(),
        store: StoreId::parse(store).unwrap(),
        device: DeviceId::parse(device).unwrap(),
        not_before: t(from),
        not_after: t(until),
    }
}

/// The busy console after a reconnection whose catch-up listed three upcoming bookings.
fn with_bookings() -> App {
    let mut app = busy_app();
    update(&mut app, Event::Connection(ConnectionChange::Up));
    let bookings = SnapshotItems::Bookings(vec![
        booking(
            1,
            "shibuya",
            "pc-02",
            "2025-06-01T09:55:00Z",
            "2025-06-01T10:25:00Z",
        ),
        booking(
            2,
            "shibuya",
            "pc-01",
            "2025-06-01T11:00:00Z",
            "2025-06-01T12:00:00Z",
        ),
        booking(
            3,
            "umeda",
            "karaoke-3",
            "2025-06-01T10:45:00Z",
            "2025-06-01T11:15:00Z",
        ),
        booking(
            4,
            "shibuya",
            "pc-02",
            "2025-06-01T13:00:00Z",
            "2025-06-01T13:30:00Z",
        ),
    ]);
    for request in loading_queries(&app) {
        let RequestAction::Snapshot { part, .. } = request.action else {
            panic!("not a snapshot query");
        };
        let items = match part {
            SnapshotPart::Bookings => bookings.clone(),
            SnapshotPart::Sessions => SnapshotItems::Sessions(Vec::new()),
            SnapshotPart::Events => SnapshotItems::Events(Vec::new()),
        };
        update(&mut app, page(&request, items, None));
    }
    app
}

#[test]
fn sessions_with_upcoming_bookings_one_selected() {
    let mut app = with_bookings();
    update(&mut app, crate::app::tests::key(KeyCode::Char('3')));
    for _ in 0..3 {
        update(&mut app, crate::app::tests::key(KeyCode::Char('j')));
    }
    assert_eq!(app.view, View::Sessions);
    snapshot_both("sessions_with_bookings", &app);
}

#[test]
fn store_view_with_next_bookings() {
    let mut app = with_bookings();
    app.view = View::Store;
    snapshot_both("store_next_bookings", &app);
}

#[test]
fn catching_up_then_incomplete() {
    let mut app = busy_app();
    update(&mut app, Event::Connection(ConnectionChange::Up));
    let bookings = loading_queries(&app).remove(0);
    let first = SnapshotItems::Bookings(vec![booking(
        1,
        "shibuya",
        "pc-02",
        "2025-06-01T10:30:00Z",
        "2025-06-01T11:00:00Z",
    )]);
    update(&mut app, page(&bookings, first, Some("next")));
    snapshot_both("catching_up", &app);
    update(&mut app, Event::Tick(t("2025-06-01T10:00:30Z")));
    snapshot_both("catch_up_incomplete", &app);
}
