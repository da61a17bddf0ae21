//! Operator actions through `update`: key → dialog → confirmation → request effect, replies
//! matched by request id, and nothing pretended while disconnected.

use super::tests::{device, event_msg, key, new_app, online, row, state_msg, store, t};
use super::*;
use crate::event::{ConnectionChange, Incoming, MqttMessage};
use crossterm::event::KeyCode;
use mujin_protocol::message::{EventKind, ProgramStatus, Reply, RequestAction};
use mujin_protocol::{RequestId, SessionId, TicketId};

fn session() -> SessionId {
    SessionId::parse("6a2f41a3-c54c-4c8b-9f2d-8e1a7b3c5d4e").unwrap()
}

/// Connected, pc-01 running a session and pc-02 idle, the devices view on pc-01.
fn app_on_running_device() -> App {
    let mut app = new_app();
    crate::app::tests::connect_caught_up(&mut app);
    let running = ProgramStatus::Running {
        session_id: session(),
        started_at: t("2025-06-01T09:30:00Z"),
        lease_until: t("2025-06-01T10:30:00Z"),
        provisional: false,
    };
    let at = "2025-06-01T09:59:59Z";
    update(&mut app, state_msg("shibuya", "pc-01", online(running), at));
    update(
        &mut app,
        state_msg("shibuya", "pc-02", online(ProgramStatus::Idle), at),
    );
    update(&mut app, key(KeyCode::Char('2')));
    assert_eq!(app.selected, Some(device("pc-01")));
    app
}

fn press(app: &mut App, code: KeyCode) -> Option<Effect> {
    update(app, key(code))
}

fn typed(app: &mut App, text: &str) {
    for typed in text.chars() {
        assert_eq!(press(app, KeyCode::Char(typed)), None);
    }
}

/// The request of a `Send` effect.
fn sent(effect: Option<Effect>) -> Request {
    match effect {
        Some(Effect::Send(requests)) if requests.len() == 1 => requests[0].clone(),
        other => panic!("expected a request, got {other:?}"),
    }
}

fn reply(request_id: RequestId, ok: bool, detail: &str, ticket: Option<&str>) -> Event {
    Event::Mqtt(MqttMessage {
        received_at: t("2025-06-01T10:00:01Z"),
        incoming: Incoming::Reply(Reply {
            request_id,
            ok,
            detail: detail.to_owned(),
            ticket: ticket.map(str::to_owned),
            snapshot: None,
        }),
    })
}

fn status(app: &App) -> String {
    app.last_request().unwrap().status(app.now)
}

#[test]
fn force_stop_is_confirmed_sent_and_settled_by_its_reply() {
    let mut app = app_on_running_device();
    assert_eq!(press(&mut app, KeyCode::Char('x')), None);
    let expected = Action::ForceStop {
        store: store("shibuya"),
        device: device("pc-01"),
        session_id: session(),
    };
    assert_eq!(app.dialog, Some(Dialog::Confirm(expected)));
    let request = sent(press(&mut app, KeyCode::Char('y')));
    assert_eq!(
        request.action,
        RequestAction::ForceStop {
            session_id: session()
        }
    );
    assert_eq!(app.dialog, None);
    assert_eq!(
        status(&app),
        "force stop shibuya/pc-01: sent, waiting for the reply…"
    );

    // A reply to someone else's request changes nothing.
    update(&mut app, reply(RequestId::random(), false, "other", None));
    assert_eq!(app.last_request().unwrap().outcome, Outcome::Pending);
    update(
        &mut app,
        reply(request.request_id, true, "session stopped", None),
    );
    assert_eq!(
        status(&app),
        "force stop shibuya/pc-01: done: session stopped"
    );
    // A repeated delivery of the settled reply is ignored.
    update(&mut app, reply(request.request_id, false, "late", None));
    assert!(status(&app).ends_with("done: session stopped"));
}

#[test]
fn enter_confirms_and_n_or_esc_cancel() {
    let mut app = app_on_running_device();
    for cancel in [KeyCode::Char('n'), KeyCode::Esc] {
        press(&mut app, KeyCode::Char('x'));
        assert_eq!(press(&mut app, cancel), None);
        assert_eq!(app.dialog, None);
        assert!(app.requests.is_empty());
    }
    press(&mut app, KeyCode::Char('x'));
    // `q` inside a dialog neither quits nor confirms.
    assert_eq!(press(&mut app, KeyCode::Char('q')), None);
    assert!(app.dialog.is_some());
    sent(press(&mut app, KeyCode::Enter));
}

#[test]
fn extend_asks_for_minutes_with_a_default() {
    let mut app = app_on_running_device();
    press(&mut app, KeyCode::Char('e'));
    let Some(Dialog::Minutes { input, .. }) = &app.dialog else {
        panic!("{:?}", app.dialog);
    };
    assert_eq!(input, "15");
    press(&mut app, KeyCode::Backspace);
    press(&mut app, KeyCode::Backspace);
    // Nothing to send yet: Enter keeps the dialog open.
    assert_eq!(press(&mut app, KeyCode::Enter), None);
    assert!(app.dialog.is_some());
    typed(&mut app, "3a0");
    let request = sent(press(&mut app, KeyCode::Enter));
    assert_eq!(
        request.action,
        RequestAction::Extend {
            session_id: session(),
            minutes: 30
        }
    );
    update(
        &mut app,
        reply(
            request.request_id,
            false,
            "the device is booked from 10:40",
            None,
        ),
    );
    assert_eq!(
        status(&app),
        "extend shibuya/pc-01 by 30 min: refused: the device is booked from 10:40"
    );
}

#[test]
fn stop_and_extend_need_a_running_session() {
    let mut app = app_on_running_device();
    press(&mut app, KeyCode::Char('j'));
    assert_eq!(app.selected, Some(device("pc-02")));
    for code in [KeyCode::Char('x'), KeyCode::Char('e')] {
        press(&mut app, code);
        assert_eq!(app.dialog, None);
        assert_eq!(
            app.note.as_deref(),
            Some("no running session on shibuya/pc-02")
        );
    }
    // Nor is there a device to act on in the stores overview.
    press(&mut app, KeyCode::Char('1'));
    press(&mut app, KeyCode::Char('w'));
    assert_eq!(app.dialog, None);
}

#[test]
fn service_toggles_by_the_known_state_and_asks_otherwise() {
    let mut app = app_on_running_device();
    press(&mut app, KeyCode::Char('o'));
    assert!(matches!(app.dialog, Some(Dialog::ChooseService { .. })));
    // Other keys wait for a choice.
    press(&mut app, KeyCode::Char('y'));
    let request = sent(press(&mut app, KeyCode::Char('o')));
    assert_eq!(
        request.action,
        RequestAction::SetService {
            store: store("shibuya"),
            device: device("pc-01"),
            in_service: false
        }
    );
    update(
        &mut app,
        event_msg(
            "shibuya",
            Some("pc-01"),
            EventKind::DeviceService {
                in_service: false,
                affected_tickets: Vec::new(),
            },
            "2025-06-01T10:00:01Z",
        ),
    );
    press(&mut app, KeyCode::Char('o'));
    let expected = Action::SetService {
        store: store("shibuya"),
        device: device("pc-01"),
        in_service: true,
    };
    assert_eq!(app.dialog, Some(Dialog::Confirm(expected)));
}

#[test]
fn a_walk_in_ticket_is_shown_until_a_key_is_pressed() {
    let mut app = app_on_running_device();
    press(&mut app, KeyCode::Char('j'));
    press(&mut app, KeyCode::Char('w'));
    let request = sent(press(&mut app, KeyCode::Char('y')));
    assert_eq!(
        request.action,
        RequestAction::IssueTicket {
            store: store("shibuya"),
            device: device("pc-02"),
            minutes: 60
        }
    );
    update(
        &mut app,
        reply(request.request_id, true, "booked", Some("MJ1:ABC")),
    );
    assert_eq!(
        app.dialog,
        Some(Dialog::Ticket {
            detail: "booked".into(),
            ticket: "MJ1:ABC".into()
        })
    );
    // Any key closes it and does nothing else.
    assert_eq!(press(&mut app, KeyCode::Char('q')), None);
    assert_eq!(app.dialog, None);
    assert_eq!(app.view, View::Store);
}

#[test]
fn a_booking_is_cancelled_by_its_ticket_id() {
    let mut app = app_on_running_device();
    press(&mut app, KeyCode::Char('c'));
    let ticket_id = TicketId::random();
    // Letters outside a UUID (like the y of "yes") are not typed.
    typed(&mut app, "xyz");
    typed(&mut app, &ticket_id.to_string());
    let request = sent(press(&mut app, KeyCode::Enter));
    assert_eq!(request.action, RequestAction::Cancel { ticket_id });
}

#[test]
fn nothing_is_sent_while_disconnected() {
    let mut app = app_on_running_device();
    update(
        &mut app,
        Event::Connection(ConnectionChange::Down {
            error: "refused".into(),
        }),
    );
    press(&mut app, KeyCode::Char('x'));
    assert_eq!(press(&mut app, KeyCode::Char('y')), None);
    assert_eq!(
        status(&app),
        "force stop shibuya/pc-01: not sent: disconnected"
    );
}

#[test]
fn a_request_without_answer_is_sent_again_with_its_id_until_given_up() {
    let mut app = app_on_running_device();
    press(&mut app, KeyCode::Char('x'));
    let request = sent(press(&mut app, KeyCode::Char('y')));
    assert_eq!(
        update(&mut app, Event::Tick(t("2025-06-01T10:00:01Z"))),
        None
    );
    assert!(status(&app).ends_with("sent, waiting for the reply…"));
    // Every 2 s, the same request (same id) again.
    let again = update(&mut app, Event::Tick(t("2025-06-01T10:00:02Z")));
    assert_eq!(again, Some(Effect::Send(vec![request.clone()])));
    assert_eq!(
        update(&mut app, Event::Tick(t("2025-06-01T10:00:03Z"))),
        None
    );
    update(&mut app, Event::Tick(t("2025-06-01T10:00:05Z")));
    update(&mut app, Event::Tick(t("2025-06-01T10:00:07Z")));
    assert_eq!(
        status(&app),
        "force stop shibuya/pc-01: no answer yet (7 s), sending again"
    );
    // Not while disconnected (it would only pile up in the client's queue)...
    let down = ConnectionChange::Down {
        error: "gone".into(),
    };
    update(&mut app, Event::Connection(down));
    assert_eq!(
        update(&mut app, Event::Tick(t("2025-06-01T10:00:10Z"))),
        None
    );
    // ...but at once when the connection is back (with the catch-up's queries).
    let Some(Effect::Send(requests)) = update(&mut app, Event::Connection(ConnectionChange::Up))
    else {
        panic!("the catch-up starts");
    };
    assert!(!requests.contains(&request));
    let resent = update(&mut app, Event::Tick(t("2025-06-01T10:00:11Z")));
    let Some(Effect::Send(requests)) = resent else {
        panic!("expected the resend");
    };
    assert!(requests.contains(&request), "{requests:?}");
    assert_eq!(app.last_request().unwrap().delivery.attempts, 5);
    // After 30 s it is given up, and says so.
    update(&mut app, Event::Tick(t("2025-06-01T10:00:30Z")));
    assert_eq!(
        status(&app),
        "force stop shibuya/pc-01: no answer from management (gave up after 30 s)"
    );
    assert_eq!(app.last_request().unwrap().outcome, Outcome::NoAnswer);
    let after = update(&mut app, Event::Tick(t("2025-06-01T10:00:40Z")));
    let resent_after =
        matches!(&after, Some(Effect::Send(requests)) if requests.contains(&request));
    assert!(!resent_after, "nothing sent once given up: {after:?}");
    // A reply that comes after all still tells what happened.
    update(&mut app, reply(request.request_id, true, "stopped", None));
    assert!(status(&app).ends_with("done: stopped"));
}

#[test]
fn a_request_the_connection_refused_is_not_sent() {
    let mut app = app_on_running_device();
    press(&mut app, KeyCode::Char('x'));
    let request = sent(press(&mut app, KeyCode::Char('y')));
    update(
        &mut app,
        Event::NotSent {
            request_id: request.request_id,
            error: "queue full".into(),
        },
    );
    assert_eq!(
        status(&app),
        "force stop shibuya/pc-01: not sent: queue full"
    );
}

/// Like [`app_on_running_device`], for a console started without an operator key.
fn read_only_app_on_running_device() -> App {
    let mut app = new_app();
    app.read_only = true;
    assert_eq!(
        update(&mut app, Event::Connection(ConnectionChange::Up)),
        None,
        "no key, no catch-up queries"
    );
    assert_eq!(app.catch_up, None);
    let running = ProgramStatus::Running {
        session_id: session(),
        started_at: t("2025-06-01T09:30:00Z"),
        lease_until: t("2025-06-01T10:30:00Z"),
        provisional: false,
    };
    update(
        &mut app,
        state_msg("shibuya", "pc-01", online(running), "2025-06-01T09:59:59Z"),
    );
    update(&mut app, key(KeyCode::Char('2')));
    app
}

#[test]
fn without_an_operator_key_actions_say_read_only_instead_of_sending() {
    let mut app = read_only_app_on_running_device();
    // Everything is still shown: the device runs its session.
    assert!(row(&app, "shibuya", "pc-01").session().is_some());
    for code in ['x', 'e', 'o', 'w', 'c'] {
        assert_eq!(press(&mut app, KeyCode::Char(code)), None, "{code}");
        assert_eq!(app.dialog, None, "{code}");
        assert_eq!(app.note.as_deref(), Some(actions::READ_ONLY), "{code}");
        assert!(app.requests.is_empty(), "{code}");
    }
    // Nothing is due either: no request was ever made.
    assert_eq!(
        update(&mut app, Event::Tick(t("2025-06-01T10:00:10Z"))),
        None
    );
}

#[test]
fn a_dialog_opened_before_going_read_only_sends_nothing() {
    let mut app = app_on_running_device();
    assert_eq!(press(&mut app, KeyCode::Char('x')), None);
    app.read_only = true;
    assert_eq!(press(&mut app, KeyCode::Char('y')), None);
    assert_eq!(app.note.as_deref(), Some(actions::READ_ONLY));
    assert!(app.requests.is_empty());
}

#[test]
fn other_keys_still_work_read_only() {
    let mut app = read_only_app_on_running_device();
    assert_eq!(press(&mut app, KeyCode::Char('4')), None);
    assert_eq!(app.view, View::Events);
    assert_eq!(app.note, None);
}
