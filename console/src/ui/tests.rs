//! Every view rendered at 80×24 and 120×30 with a fixed "now", compared with insta snapshots.

use super::*;
use crate::app::tests::{event_msg, key, new_app, online, state_msg, t};
use crate::app::update;
use crate::event::{ConnectionChange, Event, Incoming, MqttMessage};
use crossterm::event::KeyCode;
use mujin_protocol::message::{
    Ack, Availability, Command, CommandAction, EndReason, EventKind, ProgramStatus, RejectReason,
    ReportedState, Telemetry,
};
use mujin_protocol::{CommandId, DeviceId, ScanId, SessionId, StoreId, TicketId};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

const SIZES: [(u16, u16); 2] = [(80, 24), (120, 30)];

fn session(n: u8) -> SessionId {
    SessionId::parse(&format!("{n:02x}4e28ba-2fa1-11d2-883f-0016d3cca427")).unwrap()
}

fn ticket() -> TicketId {
    TicketId::parse("00000000-0000-4000-8000-000000000001").unwrap()
}

fn command_id(n: u8) -> CommandId {
    CommandId::parse(&format!("{n:08x}-0000-4000-8000-000000000000")).unwrap()
}

fn running(n: u8, lease_until: &str) -> ProgramStatus {
    ProgramStatus::Running {
        session_id: session(n),
        started_at: t("2025-06-01T09:00:00Z"),
        lease_until: t(lease_until),
        provisional: false,
    }
}

fn mqtt(incoming: Incoming, at: &str) -> Event {
    Event::Mqtt(MqttMessage {
        received_at: t(at),
        incoming,
    })
}

fn ids(store: &str, device: &str) -> (StoreId, DeviceId) {
    (
        StoreId::parse(store).unwrap(),
        DeviceId::parse(device).unwrap(),
    )
}

/// Two stores, devices in every status, events of many kinds, and one alert of each kind.
pub(super) fn busy_app() -> App {
    let mut app = new_app();
    crate::app::tests::connect_caught_up(&mut app);
    let at = "2025-06-01T09:59:50Z";
    let states = [
        (
            "shibuya",
            "pc-01",
            online(running(1, "2025-06-01T10:59:07Z")),
        ),
        ("shibuya", "pc-02", online(ProgramStatus::Idle)),
        (
            "shibuya",
            "vr-booth-1",
            online(running(2, "2025-06-01T10:03:00Z")),
        ),
        ("umeda", "karaoke-3", online(ProgramStatus::Idle)),
    ];
    for (store, device, state) in states {
        update(&mut app, state_msg(store, device, state, at));
    }
    add_events(&mut app);
    update(
        &mut app,
        state_msg("umeda", "karaoke-3", ReportedState::offline(), at),
    );
    add_telemetry(&mut app);
    add_commands(&mut app);
    update(&mut app, Event::Tick(t("2025-06-01T10:00:00Z")));
    app.selected_store = StoreId::parse("shibuya").ok();
    app.selected = DeviceId::parse("pc-01").ok();
    app
}

fn add_events(app: &mut App) {
    let rejected = |reason, detail: &str| EventKind::ScanRejected {
        scan_id: Some(ScanId::random()),
        reason,
        detail: detail.into(),
    };
    let events = [
        (
            "umeda",
            Some("karaoke-3"),
            EventKind::SessionStarted {
                session_id: session(4),
                ticket_id: ticket(),
                lease_until: t("2025-06-01T10:30:00Z"),
                offline: false,
            },
        ),
        (
            "shibuya",
            Some("pc-02"),
            rejected(RejectReason::TooEarly, ""),
        ),
        (
            "shibuya",
            Some("pc-02"),
            rejected(RejectReason::WrongDevice, "booked on pc-01"),
        ),
        (
            "shibuya",
            Some("pc-02"),
            rejected(RejectReason::AlreadyUsed, ""),
        ),
        (
            "shibuya",
            Some("pc-01"),
            EventKind::ScanAccepted {
                scan_id: ScanId::random(),
                ticket_id: ticket(),
                session_id: session(1),
            },
        ),
        (
            "shibuya",
            Some("pc-01"),
            EventKind::SessionStarted {
                session_id: session(1),
                ticket_id: ticket(),
                lease_until: t("2025-06-01T10:59:07Z"),
                offline: false,
            },
        ),
        (
            "umeda",
            Some("massage-1"),
            EventKind::SessionEnded {
                session_id: session(3),
                started_at: t("2025-06-01T09:00:00Z"),
                ended_at: t("2025-06-01T09:59:00Z"),
                reason: EndReason::BookingEnded,
                used_ms: 3_540_000,
            },
        ),
        (
            "shibuya",
            None,
            EventKind::ReservationCreated {
                ticket_id: ticket(),
                not_before: t("2025-06-01T11:00:00Z"),
                not_after: t("2025-06-01T12:00:00Z"),
            },
        ),
        (
            "umeda",
            Some("karaoke-3"),
            EventKind::DeviceAvailability {
                availability: Availability::Offline,
                session_id: Some(session(4)),
            },
        ),
    ];
    for (store, device, kind) in events {
        update(app, event_msg(store, device, kind, "2025-06-01T09:59:55Z"));
    }
}

fn add_telemetry(app: &mut App) {
    let (store, device) = ids("shibuya", "pc-01");
    for (n, load) in [0.2, 0.4, 0.9, 1.6, 1.1, 0.7].into_iter().enumerate() {
        let seconds = 40 + 2 * n as u32 + u32::from(n == 4);
        let received = format!("2025-06-01T09:59:{seconds:02}Z");
        let incoming = Incoming::Telemetry {
            store: store.clone(),
            device: device.clone(),
            telemetry: Telemetry {
                interval_ms: None,
                signature: None,
                at: t(&received) + chrono::TimeDelta::milliseconds(300),
                uptime_ms: 1000,
                load: Some(load),
                program: running(1, "2025-06-01T10:59:07Z"),
            },
        };
        update(app, mqtt(incoming, &received));
    }
    // A device whose clock runs 4.2 s late.
    let (store, device) = ids("shibuya", "pc-02");
    let incoming = Incoming::Telemetry {
        store,
        device,
        telemetry: Telemetry {
            interval_ms: None,
            signature: None,
            at: t("2025-06-01T09:59:53.800Z"),
            uptime_ms: 1000,
            load: None,
            program: ProgramStatus::Idle,
        },
    };
    update(app, mqtt(incoming, "2025-06-01T09:59:58Z"));
}

fn add_commands(app: &mut App) {
    let command = |store: &str, device: &str, n: u8, action: CommandAction, at: &str| {
        let (store, device) = ids(store, device);
        let command = Command {
            command_id: command_id(n),
            issued_at: t(at),
            epoch: u64::from(n),
            action,
            store: None,
            device: None,
            expires_at: None,
            signature: None,
        };
        mqtt(
            Incoming::Command {
                store,
                device,
                command,
            },
            at,
        )
    };
    let ack = |store: &str, device: &str, n: u8, ok: bool, detail: &str, at: &str| {
        let (store, device) = ids(store, device);
        let ack = Ack {
            signature: None,
            command_id: command_id(n),
            ok,
            detail: detail.into(),
            at: t(at),
        };
        mqtt(Incoming::Ack { store, device, ack }, at)
    };
    let start = |n| CommandAction::Start {
        session_id: session(n),
        lease_until: t("2025-06-01T10:59:07Z"),
        remaining_ms: 3_600_000,
    };
    let stop = |n| CommandAction::Stop {
        session_id: session(n),
        reason: EndReason::BookingEnded,
    };
    update(
        app,
        command("shibuya", "pc-01", 1, start(1), "2025-06-01T09:59:55Z"),
    );
    update(
        app,
        ack("shibuya", "pc-01", 1, true, "", "2025-06-01T09:59:56Z"),
    );
    update(
        app,
        command(
            "shibuya",
            "pc-01",
            2,
            CommandAction::Warn {
                session_id: session(1),
                lease_until: t("2025-06-01T10:59:07Z"),
                remaining_ms: 300_000,
            },
            "2025-06-01T09:59:58Z",
        ),
    );
    update(
        app,
        command("shibuya", "vr-booth-1", 3, stop(2), "2025-06-01T09:59:50Z"),
    );
    update(
        app,
        command("umeda", "massage-1", 4, start(5), "2025-06-01T09:59:51Z"),
    );
    update(
        app,
        ack(
            "umeda",
            "massage-1",
            4,
            false,
            "program not found",
            "2025-06-01T09:59:52Z",
        ),
    );
}

fn render(app: &App, width: u16, height: u16) -> TestBackend {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| view(app, frame)).unwrap();
    terminal.backend().clone()
}

/// Snapshots `app` at both sizes as `{name}_at_{w}x{h}`.
pub(super) fn snapshot_both(name: &str, app: &App) {
    for (width, height) in SIZES {
        insta::assert_snapshot!(
            format!("{name}_at_{width}x{height}"),
            render(app, width, height)
        );
    }
}

fn busy_in(view: View) -> App {
    let mut app = busy_app();
    app.view = view;
    app
}

#[test]
fn overview() {
    snapshot_both("overview", &busy_in(View::Overview));
}

#[test]
fn store_view_sorted_by_status() {
    let mut app = busy_in(View::Store);
    update(&mut app, key(KeyCode::Char('s')));
    snapshot_both("store_by_status", &app);
}

#[test]
fn device_detail() {
    snapshot_both("device_detail", &busy_in(View::Device));
}

#[test]
fn sessions() {
    snapshot_both("sessions", &busy_in(View::Sessions));
}

#[test]
fn events_filtered_and_paused() {
    let mut app = busy_in(View::Events);
    app.filters[View::Events.index()] = "store:shibuya".into();
    update(&mut app, key(KeyCode::Char('p')));
    let late = EventKind::SessionWarned {
        session_id: session(1),
        lease_until: t("2025-06-01T10:59:07Z"),
    };
    update(
        &mut app,
        event_msg("shibuya", Some("pc-01"), late, "2025-06-01T10:00:00Z"),
    );
    snapshot_both("events_filtered_paused", &app);
}

#[test]
fn alerts() {
    let app = busy_in(View::Alerts);
    assert_eq!(app.alerts.len(), 5, "{:?}", app.alerts.keys());
    snapshot_both("alerts", &app);
}

#[test]
fn help_over_the_store_view() {
    let mut app = busy_in(View::Store);
    app.show_help = true;
    snapshot_both("help", &app);
}

#[test]
fn typing_a_filter_in_the_store_view() {
    let mut app = busy_in(View::Store);
    for typed in ['/', 'p', 'c'] {
        update(&mut app, key(KeyCode::Char(typed)));
    }
    snapshot_both("store_filter_typing", &app);
}

#[test]
fn disconnected_store_view() {
    let mut app = busy_in(View::Store);
    update(
        &mut app,
        Event::Connection(ConnectionChange::Down {
            error: "I/O: Connection refused (os error 111)".into(),
        }),
    );
    update(
        &mut app,
        mqtt(
            Incoming::Malformed {
                topic: "mujin/v1/stores/shibuya/events".into(),
                error: "bad".into(),
            },
            "2025-06-01T10:00:00Z",
        ),
    );
    // Twelve minutes without the broker: ages grow and the overdue lease shows as such.
    update(&mut app, Event::Tick(t("2025-06-01T10:12:00Z")));
    snapshot_both("disconnected_store", &app);
}

#[test]
fn connecting_and_empty() {
    for view in View::ALL {
        let mut app = new_app();
        app.view = view;
        // Every view copes with nothing at all, at the smallest size too.
        render(&app, 20, 5);
        if view == View::Overview {
            snapshot_both("connecting_empty_overview", &app);
        }
    }
}

#[test]
fn windows_keep_the_selection_on_screen() {
    assert_eq!(window(100, None, 10), 0..10);
    assert_eq!(window(100, Some(9), 10), 0..10);
    assert_eq!(window(100, Some(10), 10), 1..11);
    assert_eq!(window(3, Some(2), 10), 0..3);
    assert_eq!(window(0, None, 0), 0..0);
}
