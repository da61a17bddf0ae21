//! The views: `view(&App, &mut Frame)` lays out the screen and each widget lives in its own
//! file. Views only read the state; time comes from `App::now`, never from the clock.

mod banner;
mod devices;
mod events;
mod footer;
pub mod format;
mod header;

use ratatui::layout::{Constraint, Layout};
use ratatui::Frame;

use crate::app::App;

/// Draws the whole screen.
pub fn view(app: &App, frame: &mut Frame) {
    let banner_height = u16::from(banner::is_shown(app));
    // The table takes what its rows need (borders and header included); events get the rest.
    let table_height = u16::try_from(app.visible_devices().len().max(1))
        .unwrap_or(u16::MAX)
        .saturating_add(3);
    let [header_area, banner_area, devices_area, events_area, footer_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(banner_height),
        Constraint::Max(table_height),
        Constraint::Min(5),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    header::view(app, frame, header_area);
    banner::view(app, frame, banner_area);
    devices::view(app, frame, devices_area);
    events::view(app, frame, events_area);
    footer::view(app, frame, footer_area);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::tests::{event_msg, new_app, online, state_msg, t};
    use crate::app::update;
    use crate::event::{ConnectionChange, Event, Incoming, MqttMessage};
    use mujin_protocol::message::{
        Availability, EndReason, EventKind, ProgramStatus, RejectReason, ReportedState,
    };
    use mujin_protocol::{ScanId, SessionId, TicketId};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn session(n: u8) -> SessionId {
        SessionId::parse(&format!("{n:02x}4e28ba-2fa1-11d2-883f-0016d3cca427")).unwrap()
    }

    fn ticket() -> TicketId {
        TicketId::parse("00000000-0000-4000-8000-000000000001").unwrap()
    }

    fn running(n: u8, lease_until: &str) -> ProgramStatus {
        ProgramStatus::Running {
            session_id: session(n),
            started_at: t("2025-06-01T09:00:00Z"),
            lease_until: t(lease_until),
        }
    }

    /// Two stores, devices in every status, and a few events of every kind.
    fn busy_app() -> App {
        let mut app = new_app();
        update(&mut app, Event::Connection(ConnectionChange::Up));
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
        update(
            &mut app,
            state_msg("umeda", "karaoke-3", ReportedState::offline(), at),
        );
        let events = [
            (
                "umeda",
                Some("karaoke-3"),
                EventKind::DeviceAvailability {
                    availability: Availability::Offline,
                },
            ),
            (
                "shibuya",
                Some("pc-02"),
                EventKind::ScanRejected {
                    scan_id: Some(ScanId::random()),
                    reason: RejectReason::TooEarly,
                    detail: String::new(),
                },
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
        ];
        for (store, device, kind) in events {
            update(
                &mut app,
                event_msg(store, device, kind, "2025-06-01T09:59:55Z"),
            );
        }
        update(&mut app, Event::Tick(t("2025-06-01T10:00:00Z")));
        app.selected = Some((
            mujin_protocol::StoreId::parse("shibuya").unwrap(),
            mujin_protocol::DeviceId::parse("pc-02").unwrap(),
        ));
        app
    }

    fn render(app: &App, width: u16, height: u16) -> TestBackend {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| view(app, frame)).unwrap();
        terminal.backend().clone()
    }

    #[test]
    fn busy_stores_at_80x24() {
        insta::assert_snapshot!(render(&busy_app(), 80, 24));
    }

    #[test]
    fn busy_stores_at_120x30() {
        insta::assert_snapshot!(render(&busy_app(), 120, 30));
    }

    #[test]
    fn disconnected_one_store_with_help_at_80x24() {
        let mut app = busy_app();
        update(
            &mut app,
            Event::Connection(ConnectionChange::Down {
                error: "I/O: Connection refused (os error 111)".into(),
            }),
        );
        update(
            &mut app,
            Event::Mqtt(MqttMessage {
                received_at: t("2025-06-01T10:00:00Z"),
                incoming: Incoming::Malformed {
                    topic: "mujin/v1/stores/shibuya/events".into(),
                    error: "bad".into(),
                },
            }),
        );
        app.store_filter = mujin_protocol::StoreId::parse("shibuya").ok();
        app.show_help = true;
        // Twelve minutes without the broker: ages grow and the overdue lease shows as such.
        update(&mut app, Event::Tick(t("2025-06-01T10:12:00Z")));
        insta::assert_snapshot!(render(&app, 80, 24));
    }

    #[test]
    fn connecting_and_empty_at_80x24() {
        insta::assert_snapshot!(render(&new_app(), 80, 24));
    }
}
