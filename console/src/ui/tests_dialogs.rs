//! The action dialogs and the status line at 80×24, with a fixed "now" and a fixed ticket.

use super::ticket::qr_lines;
use super::view;
use crate::app::tests::{key, new_app, online, state_msg, t};
use crate::app::{update, App, Effect};
use crate::event::{Event, Incoming, MqttMessage};
use crossterm::event::KeyCode;
use mujin_protocol::message::{ProgramStatus, Reply};
use mujin_protocol::SessionId;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

/// The ticket of the protocol's `reply-ticket` vector: a real one's length.
const TICKET: &str = "MJ1:AFPQY2Y6HJ6UYLU3RIOS4P2AKFRAAAAAABVUTUQAAAAAAADLJHQBAATLGEDXG2DJMJ2XSYIFOBRS2MBR4LCIPK4OFG3H3A3CDNSG62FECFFKIE6Q5BNZY2GJANLD4YPWMHCBOEFN2HHN7LGWTBJNHBZPVZKZBROCTM4WETLDP72TBGZP6KGDMAY";

fn render(app: &App) -> TestBackend {
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    terminal.draw(|frame| view(app, frame)).unwrap();
    terminal.backend().clone()
}

/// Connected, the devices view on pc-01 which runs a session.
fn app_on_running_device() -> App {
    let mut app = new_app();
    crate::app::tests::connect_caught_up(&mut app);
    let running = ProgramStatus::Running {
        session_id: SessionId::parse("6a2f41a3-c54c-4c8b-9f2d-8e1a7b3c5d4e").unwrap(),
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
    app
}

fn reply(app: &mut App, effect: Option<Effect>, detail: &str, ticket: Option<&str>) {
    let request = match effect {
        Some(Effect::Send(requests)) if requests.len() == 1 => requests[0].clone(),
        other => panic!("expected a request, got {other:?}"),
    };
    update(
        app,
        Event::Mqtt(MqttMessage {
            received_at: t("2025-06-01T10:00:01Z"),
            incoming: Incoming::Reply(Reply {
                request_id: request.request_id,
                ok: true,
                detail: detail.to_owned(),
                ticket: ticket.map(str::to_owned),
                snapshot: None,
            }),
        }),
    );
}

#[test]
fn confirm_force_stop() {
    let mut app = app_on_running_device();
    update(&mut app, key(KeyCode::Char('x')));
    insta::assert_snapshot!("confirm_force_stop_at_80x24", render(&app));
}

#[test]
fn extend_minutes_then_the_reply_in_the_status_line() {
    let mut app = app_on_running_device();
    update(&mut app, key(KeyCode::Char('e')));
    insta::assert_snapshot!("extend_minutes_at_80x24", render(&app));
    let effect = update(&mut app, key(KeyCode::Enter));
    reply(
        &mut app,
        effect,
        "the session on pc-01 now ends at 10:45",
        None,
    );
    insta::assert_snapshot!("extend_done_at_80x24", render(&app));
}

#[test]
fn walk_in_ticket_as_a_qr_code() {
    let mut app = app_on_running_device();
    update(&mut app, key(KeyCode::Char('j')));
    update(&mut app, key(KeyCode::Char('w')));
    let effect = update(&mut app, key(KeyCode::Char('y')));
    reply(
        &mut app,
        effect,
        "booked shibuya/pc-02 until 11:00",
        Some(TICKET),
    );
    insta::assert_snapshot!("walk_in_ticket_at_80x24", render(&app));
}

#[test]
fn a_real_ticket_fits_an_80_by_24_terminal() {
    let lines = qr_lines(TICKET).unwrap();
    // 41 modules and the side margins; two module rows per line.
    assert_eq!(lines.len(), 21);
    assert!(lines.iter().all(|line| line.chars().count() == 45));
}

/// The text of every line of a rendered screen.
fn screen_text(backend: &TestBackend) -> String {
    let buffer = backend.buffer();
    let mut text = String::new();
    for y in 0..buffer.area.height {
        for x in 0..buffer.area.width {
            text.push_str(buffer[(x, y)].symbol());
        }
        text.push('\n');
    }
    text
}

#[test]
fn a_console_without_an_operator_key_says_it_is_read_only() {
    let mut app = app_on_running_device();
    app.read_only = true;
    update(&mut app, key(KeyCode::Char('x')));
    let text = screen_text(&render(&app));
    assert!(text.contains("READ-ONLY: no operator key"), "{text}");
    assert!(text.contains("no operator key: read-only"), "{text}");
    assert!(text.contains("pc-01"), "{text}");
}

#[test]
fn operator_actions_show_in_the_event_tail() {
    use crate::app::tests::event_msg;
    use mujin_protocol::message::EventKind;
    use mujin_protocol::{OperatorId, RequestId};
    let mut app = app_on_running_device();
    let action = |operator: &str, ok: bool, detail: &str| EventKind::OperatorAction {
        operator: OperatorId::parse(operator).unwrap(),
        request_id: RequestId::random(),
        action: "force_stop".into(),
        ok,
        detail: detail.into(),
    };
    let at = "2025-06-01T09:59:58Z";
    let refused = action(
        "victor",
        false,
        "refused: force_stop needs the operator role",
    );
    update(&mut app, event_msg("shibuya", Some("pc-01"), refused, at));
    let done = action("alice", true, "session stopped");
    update(&mut app, event_msg("shibuya", Some("pc-01"), done, at));
    update(&mut app, key(KeyCode::Char('4')));
    let text = screen_text(&render(&app));
    assert!(
        text.contains("victor: force_stop refused: force_stop needs th"),
        "{text}"
    );
    assert!(text.contains("alice: force_stop"), "{text}");
}
