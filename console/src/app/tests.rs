//! Transitions of `update`, as plain unit tests; the helpers are shared with the view tests.

use super::*;
use crate::event::{Incoming, MqttMessage};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mujin_protocol::message::{
    self, Availability, EventKind, ProgramStatus, ReportedState, Telemetry,
};
use mujin_protocol::message::{EndReason, RejectReason};
use mujin_protocol::message::{Reply, RequestAction};
use mujin_protocol::snapshot::{SnapshotItems, SnapshotPage, SnapshotPart};
use mujin_protocol::{SessionId, TicketId};

pub(crate) fn t(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

pub(crate) fn store(name: &str) -> StoreId {
    StoreId::parse(name).unwrap()
}

pub(crate) fn device(name: &str) -> DeviceId {
    DeviceId::parse(name).unwrap()
}

pub(crate) fn new_app() -> App {
    App::new(
        "127.0.0.1:1883",
        t("2025-06-01T10:00:00Z"),
        FixedOffset::east_opt(0).unwrap(),
    )
}

pub(crate) fn state_msg(s: &str, d: &str, state: ReportedState, at: &str) -> Event {
    Event::Mqtt(MqttMessage {
        received_at: t(at),
        incoming: Incoming::State {
            store: store(s),
            device: device(d),
            state,
            retained: false,
        },
    })
}

pub(crate) fn online(program: ProgramStatus) -> ReportedState {
    ReportedState {
        signature: None,
        availability: Availability::Online,
        program,
        last_exit: None,
        at: None,
    }
}

pub(crate) fn event_msg(s: &str, d: Option<&str>, kind: EventKind, at: &str) -> Event {
    Event::Mqtt(MqttMessage {
        received_at: t(at),
        incoming: Incoming::StoreEvent(message::Event {
            at: t(at),
            store: store(s),
            device: d.map(device),
            kind,
        }),
    })
}

pub(crate) fn key(code: KeyCode) -> Event {
    Event::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

pub(crate) fn row<'a>(app: &'a App, s: &str, d: &str) -> &'a DeviceRow {
    app.device(&store(s), &device(d)).unwrap()
}

/// The page queries the catch-up is waiting on, by part.
pub(crate) fn loading_queries(app: &App) -> Vec<Request> {
    app.catch_up
        .iter()
        .flat_map(|catch_up| &catch_up.parts)
        .filter_map(|load| match &load.state {
            PartState::Loading { request, .. } => Some(request.clone()),
            _ => None,
        })
        .collect()
}

/// Management's reply to a page query.
pub(crate) fn page(request: &Request, items: SnapshotItems, next: Option<&str>) -> Event {
    Event::Mqtt(MqttMessage {
        received_at: t("2025-06-01T10:00:00Z"),
        incoming: Incoming::Reply(Reply {
            request_id: request.request_id,
            ok: true,
            detail: format!("{} snapshot", items.part()),
            ticket: None,
            snapshot: Some(SnapshotPage {
                items,
                next: next.map(str::to_owned),
            }),
        }),
    })
}

/// Connects and answers the catch-up with empty last pages, as management does when it has
/// nothing to tell.
pub(crate) fn connect_caught_up(app: &mut App) {
    update(app, Event::Connection(ConnectionChange::Up));
    for request in loading_queries(app) {
        let RequestAction::Snapshot { part, .. } = request.action else {
            panic!("not a snapshot query: {request:?}");
        };
        let items = match part {
            SnapshotPart::Bookings => SnapshotItems::Bookings(Vec::new()),
            SnapshotPart::Sessions => SnapshotItems::Sessions(Vec::new()),
            SnapshotPart::Events => SnapshotItems::Events(Vec::new()),
        };
        assert_eq!(update(app, page(&request, items, None)), None);
    }
    let catch_up = app.catch_up.as_ref().unwrap();
    assert!(!catch_up.is_loading() && !catch_up.is_incomplete());
}

#[test]
fn a_state_message_makes_a_device_appear() {
    let mut app = new_app();
    let action = update(
        &mut app,
        state_msg(
            "shibuya",
            "pc-01",
            online(ProgramStatus::Idle),
            "2025-06-01T09:59:58Z",
        ),
    );
    assert_eq!(action, None);
    let row = row(&app, "shibuya", "pc-01");
    assert_eq!(row.status(), DeviceStatus::Idle);
    assert_eq!(row.last_seen, Some(t("2025-06-01T09:59:58Z")));
}

#[test]
fn a_retained_state_does_not_pretend_the_device_was_just_seen() {
    let mut app = new_app();
    let mut state = online(ProgramStatus::Idle);
    state.at = Some(t("2025-06-01T08:00:00Z"));
    update(
        &mut app,
        Event::Mqtt(MqttMessage {
            received_at: t("2025-06-01T10:00:00Z"),
            incoming: Incoming::State {
                store: store("shibuya"),
                device: device("pc-01"),
                state,
                retained: true,
            },
        }),
    );
    assert_eq!(
        row(&app, "shibuya", "pc-01").last_seen,
        Some(t("2025-06-01T08:00:00Z"))
    );
}

#[test]
fn session_started_makes_the_device_run_with_time_left() {
    let mut app = new_app();
    let session_id = SessionId::random();
    update(
        &mut app,
        event_msg(
            "shibuya",
            Some("pc-01"),
            EventKind::SessionStarted {
                session_id,
                ticket_id: TicketId::random(),
                lease_until: t("2025-06-01T11:00:00Z"),
                offline: false,
            },
            "2025-06-01T10:00:00Z",
        ),
    );
    let (running, lease_until) = row(&app, "shibuya", "pc-01").session().unwrap();
    assert_eq!(running, session_id);
    assert_eq!(
        row(&app, "shibuya", "pc-01").status(),
        DeviceStatus::Running
    );
    update(&mut app, Event::Tick(t("2025-06-01T10:00:01Z")));
    assert_eq!(app.time_left(lease_until), TimeDelta::seconds(3599));
    assert_eq!(app.events.len(), 1);
}

#[test]
fn session_ended_frees_the_device_only_for_its_own_session() {
    let mut app = new_app();
    let session_id = SessionId::random();
    let started = EventKind::SessionStarted {
        session_id,
        ticket_id: TicketId::random(),
        lease_until: t("2025-06-01T11:00:00Z"),
        offline: false,
    };
    update(
        &mut app,
        event_msg("s", Some("d"), started, "2025-06-01T10:00:00Z"),
    );
    let ended = |session_id| EventKind::SessionEnded {
        session_id,
        started_at: t("2025-06-01T10:00:00Z"),
        ended_at: t("2025-06-01T11:00:00Z"),
        reason: EndReason::BookingEnded,
        used_ms: 3_600_000,
    };
    update(
        &mut app,
        event_msg(
            "s",
            Some("d"),
            ended(SessionId::random()),
            "2025-06-01T11:00:00Z",
        ),
    );
    assert_eq!(row(&app, "s", "d").status(), DeviceStatus::Running);
    update(
        &mut app,
        event_msg("s", Some("d"), ended(session_id), "2025-06-01T11:00:00Z"),
    );
    assert_eq!(row(&app, "s", "d").session(), None);
}

#[test]
fn the_last_will_marks_the_device_offline_and_keeps_what_was_known() {
    let mut app = new_app();
    let running = ProgramStatus::Running {
        session_id: SessionId::random(),
        started_at: t("2025-06-01T09:00:00Z"),
        lease_until: t("2025-06-01T11:00:00Z"),
        provisional: false,
    };
    update(
        &mut app,
        state_msg("s", "d", online(running.clone()), "2025-06-01T09:59:00Z"),
    );
    update(
        &mut app,
        state_msg("s", "d", ReportedState::offline(), "2025-06-01T10:00:00Z"),
    );
    let row = row(&app, "s", "d");
    assert_eq!(row.status(), DeviceStatus::Offline);
    assert_eq!(row.program, running);
    assert_eq!(row.last_seen, Some(t("2025-06-01T09:59:00Z")));
}

#[test]
fn telemetry_brings_a_device_back_online() {
    let mut app = new_app();
    update(
        &mut app,
        state_msg("s", "d", ReportedState::offline(), "2025-06-01T10:00:00Z"),
    );
    update(
        &mut app,
        Event::Mqtt(MqttMessage {
            received_at: t("2025-06-01T10:00:05Z"),
            incoming: Incoming::Telemetry {
                store: store("s"),
                device: device("d"),
                telemetry: Telemetry {
                    interval_ms: None,
                    signature: None,
                    at: t("1970-01-01T00:00:00Z"),
                    uptime_ms: 5,
                    load: None,
                    program: ProgramStatus::Idle,
                },
            },
        }),
    );
    let row = row(&app, "s", "d");
    assert_eq!(row.status(), DeviceStatus::Idle);
    // The device's wrong clock does not matter: seen is the operator's clock.
    assert_eq!(row.last_seen, Some(t("2025-06-01T10:00:05Z")));
}

#[test]
fn availability_events_and_rejections_create_rows_and_lines() {
    let mut app = new_app();
    let rejected = EventKind::ScanRejected {
        scan_id: None,
        reason: RejectReason::TooEarly,
        detail: String::new(),
    };
    update(
        &mut app,
        event_msg("s", Some("a"), rejected, "2025-06-01T10:00:00Z"),
    );
    let offline = EventKind::DeviceAvailability {
        availability: Availability::Offline,
        session_id: None,
    };
    update(
        &mut app,
        event_msg("s", Some("b"), offline, "2025-06-01T10:00:00Z"),
    );
    assert_eq!(row(&app, "s", "a").status(), DeviceStatus::Unknown);
    assert_eq!(row(&app, "s", "b").status(), DeviceStatus::Offline);
    assert_eq!(app.events.len(), 2);
}

#[test]
fn malformed_messages_are_counted_and_change_nothing_else() {
    let mut app = new_app();
    update(
        &mut app,
        Event::Mqtt(MqttMessage {
            received_at: t("2025-06-01T10:00:00Z"),
            incoming: Incoming::Malformed {
                topic: "mujin/v1/stores/s/events".into(),
                error: "bad".into(),
            },
        }),
    );
    assert_eq!(app.malformed, 1);
    assert!(app.stores.is_empty() && app.events.is_empty());
}

#[test]
fn the_event_tail_is_bounded() {
    let mut app = new_app();
    let offline = EventKind::DeviceAvailability {
        availability: Availability::Offline,
        session_id: None,
    };
    for _ in 0..EVENT_HISTORY + 10 {
        update(
            &mut app,
            event_msg("s", None, offline.clone(), "2025-06-01T10:00:00Z"),
        );
    }
    assert_eq!(app.events.len(), EVENT_HISTORY);
}

#[test]
fn a_disconnect_is_remembered_from_its_first_failure() {
    let mut app = new_app();
    update(&mut app, Event::Connection(ConnectionChange::Up));
    assert!(matches!(app.connection, Connection::Up { .. }));
    update(&mut app, Event::Tick(t("2025-06-01T10:00:10Z")));
    let down = |error: &str| {
        Event::Connection(ConnectionChange::Down {
            error: error.into(),
        })
    };
    update(&mut app, down("connection refused"));
    update(&mut app, Event::Tick(t("2025-06-01T10:00:20Z")));
    update(&mut app, down("still refused"));
    assert_eq!(
        app.connection,
        Connection::Down {
            since: t("2025-06-01T10:00:10Z"),
            error: "still refused".into()
        }
    );
    update(&mut app, Event::Connection(ConnectionChange::Up));
    assert_eq!(
        app.connection,
        Connection::Up {
            since: t("2025-06-01T10:00:20Z")
        }
    );
}

#[test]
fn the_retained_desired_state_tells_a_reconnected_console_which_session_runs_where() {
    use mujin_protocol::message::{DesiredProgram, DesiredState};

    let mut app = new_app();
    let session_id = SessionId::random();
    let desired = |program| {
        Event::Mqtt(MqttMessage {
            received_at: t("2025-06-01T10:00:01Z"),
            incoming: Incoming::Desired {
                store: store("s"),
                device: device("d"),
                desired: DesiredState {
                    epoch: 4,
                    issued_at: t("2025-06-01T09:59:00Z"),
                    program,
                    store: None,
                    device: None,
                    signature: None,
                },
            },
        })
    };
    update(
        &mut app,
        desired(DesiredProgram::Running {
            session_id,
            lease_until: t("2025-06-01T10:30:00Z"),
            remaining_ms: 1_800_000,
        }),
    );
    assert_eq!(row(&app, "s", "d").event_session, Some(session_id));
    // Its device is offline: with management's session known, that is an alert at once.
    update(
        &mut app,
        state_msg("s", "d", ReportedState::offline(), "2025-06-01T10:00:02Z"),
    );
    assert_eq!(
        app.alert_counts().get(&store("s")),
        Some(&1),
        "offline during a session"
    );
    update(&mut app, desired(DesiredProgram::Idle));
    assert_eq!(row(&app, "s", "d").event_session, None);
}
