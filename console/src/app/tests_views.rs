//! Transitions of `update` driven by keys and time: views, selection, sort, filter, pause,
//! and the derivation of alerts.

use super::tests::{event_msg, key, new_app, online, row, state_msg, t};
use super::*;
use crate::event::{Incoming, MqttMessage};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mujin_protocol::message::{
    Ack, Command, CommandAction, EndReason, EventKind, ProgramStatus, RejectReason, ReportedState,
    Telemetry,
};
use mujin_protocol::{CommandId, SessionId, TicketId};

fn idle(app: &mut App, s: &str, d: &str) {
    update(
        app,
        state_msg(s, d, online(ProgramStatus::Idle), "2025-06-01T10:00:00Z"),
    );
}

fn press(app: &mut App, codes: &[KeyCode]) {
    for code in codes {
        update(app, key(*code));
    }
}

fn type_text(app: &mut App, text: &str) {
    for typed in text.chars() {
        update(app, key(KeyCode::Char(typed)));
    }
}

fn running(session_id: SessionId, lease_until: &str) -> ProgramStatus {
    ProgramStatus::Running {
        session_id,
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

fn command(s: &str, d: &str, action: CommandAction, at: &str) -> (CommandId, Event) {
    let command_id = CommandId::random();
    let incoming = Incoming::Command {
        store: super::tests::store(s),
        device: super::tests::device(d),
        command: Command {
            command_id,
            issued_at: t(at),
            epoch: 1,
            action,
            store: None,
            device: None,
            expires_at: None,
            signature: None,
        },
    };
    (command_id, mqtt(incoming, at))
}

fn ack(s: &str, d: &str, command_id: CommandId, ok: bool, at: &str) -> Event {
    let incoming = Incoming::Ack {
        store: super::tests::store(s),
        device: super::tests::device(d),
        ack: Ack {
            signature: None,
            command_id,
            ok,
            detail: if ok {
                String::new()
            } else {
                "spawn failed".into()
            },
            at: t(at),
        },
    };
    mqtt(incoming, at)
}

fn alert_kinds(app: &App) -> Vec<AlertKind> {
    app.alerts.keys().map(|(_, kind)| *kind).collect()
}

#[test]
fn number_keys_switch_views_and_enter_goes_down_to_a_device() {
    let mut app = new_app();
    idle(&mut app, "b", "x");
    idle(&mut app, "a", "y");
    assert_eq!(app.view, View::Overview);
    press(&mut app, &[KeyCode::Char('1'), KeyCode::Char('j')]);
    assert_eq!(app.selected_store, Some(super::tests::store("b")));
    press(&mut app, &[KeyCode::Enter]);
    assert_eq!(app.view, View::Store);
    assert_eq!(app.current_store(), Some(&super::tests::store("b")));
    assert_eq!(app.selected, Some(super::tests::device("x")));
    press(&mut app, &[KeyCode::Enter]);
    assert_eq!(app.view, View::Device);
    press(&mut app, &[KeyCode::Esc]);
    assert_eq!(app.view, View::Store);
    press(&mut app, &[KeyCode::Char(']')]);
    assert_eq!(app.current_store(), Some(&super::tests::store("a")));
    for (typed, view) in [
        ('3', View::Sessions),
        ('4', View::Events),
        ('5', View::Alerts),
        ('2', View::Store),
    ] {
        press(&mut app, &[KeyCode::Char(typed)]);
        assert_eq!(app.view, view);
    }
    press(&mut app, &[KeyCode::Esc]);
    assert_eq!(app.view, View::Overview);
}

#[test]
fn selection_moves_within_the_rows_and_stays_on_its_device() {
    let mut app = new_app();
    for d in ["a", "b", "c"] {
        idle(&mut app, "s", d);
    }
    press(&mut app, &[KeyCode::Char('2')]);
    assert_eq!(app.selected_index(), Some(0));
    press(
        &mut app,
        &[KeyCode::Char('j'), KeyCode::Down, KeyCode::Down],
    );
    assert_eq!(app.selected, Some(super::tests::device("c")));
    press(&mut app, &[KeyCode::Char('k')]);
    assert_eq!(app.selected, Some(super::tests::device("b")));
    // A new device sorting before the selection does not move it to another device.
    idle(&mut app, "s", "0");
    assert_eq!(app.selected, Some(super::tests::device("b")));
    press(&mut app, &[KeyCode::Char('g')]);
    assert_eq!(app.selected_index(), Some(0));
    press(&mut app, &[KeyCode::End]);
    assert_eq!(app.selected, Some(super::tests::device("c")));
}

#[test]
fn s_cycles_the_sort_column_and_sorts_only_the_store_shown() {
    let mut app = new_app();
    idle(&mut app, "s", "a");
    let session_id = SessionId::random();
    update(
        &mut app,
        state_msg(
            "s",
            "b",
            online(running(session_id, "2025-06-01T10:30:00Z")),
            "2025-06-01T10:00:00Z",
        ),
    );
    update(
        &mut app,
        state_msg("s", "c", ReportedState::offline(), "2025-06-01T10:00:00Z"),
    );
    press(&mut app, &[KeyCode::Char('2')]);
    let order = |app: &App| -> Vec<String> {
        app.store_rows()
            .iter()
            .map(|(device, _)| device.to_string())
            .collect()
    };
    assert_eq!(order(&app), ["a", "b", "c"]);
    press(&mut app, &[KeyCode::Char('s')]);
    assert_eq!(app.sort, SortColumn::Status);
    assert_eq!(order(&app), ["c", "b", "a"]);
    press(&mut app, &[KeyCode::Char('s')]);
    assert_eq!(app.sort, SortColumn::TimeLeft);
    assert_eq!(order(&app)[0], "b");
    press(
        &mut app,
        &[KeyCode::Char('s'), KeyCode::Char('s'), KeyCode::Char('s')],
    );
    assert_eq!(app.sort, SortColumn::Device);
}

#[test]
fn slash_opens_a_filter_that_esc_clears() {
    let mut app = new_app();
    for d in ["pc-01", "pc-02", "vr-1"] {
        idle(&mut app, "s", d);
    }
    press(&mut app, &[KeyCode::Char('2'), KeyCode::Char('/')]);
    assert!(app.editing_filter);
    // While typing, letters are text, not commands.
    type_text(&mut app, "pc-0q");
    assert_eq!(app.filter_text(View::Store), "pc-0q");
    press(&mut app, &[KeyCode::Backspace, KeyCode::Enter]);
    assert!(!app.editing_filter);
    assert_eq!(app.store_rows().len(), 2);
    press(&mut app, &[KeyCode::Esc]);
    assert_eq!(app.store_rows().len(), 3);
    assert_eq!(
        app.view,
        View::Store,
        "the first Esc only clears the filter"
    );
    press(&mut app, &[KeyCode::Char('/')]);
    type_text(&mut app, "vr");
    press(&mut app, &[KeyCode::Esc]);
    assert!(!app.editing_filter);
    assert_eq!(app.filter_text(View::Store), "");
}

#[test]
fn the_event_filter_knows_store_device_kind_and_text() {
    let mut app = new_app();
    let rejected = EventKind::ScanRejected {
        scan_id: None,
        reason: RejectReason::TooEarly,
        detail: "starts at 11:00".into(),
    };
    let offline = EventKind::DeviceAvailability {
        availability: mujin_protocol::message::Availability::Offline,
        session_id: None,
    };
    let at = "2025-06-01T10:00:00Z";
    update(
        &mut app,
        event_msg("shibuya", Some("pc-01"), rejected.clone(), at),
    );
    update(&mut app, event_msg("umeda", Some("pc-01"), rejected, at));
    update(&mut app, event_msg("shibuya", Some("vr-1"), offline, at));
    let count = |app: &mut App, filter: &str| {
        app.filters[View::Events.index()] = filter.to_owned();
        app.visible_events().count()
    };
    assert_eq!(count(&mut app, ""), 3);
    assert_eq!(count(&mut app, "store:shibuya"), 2);
    assert_eq!(count(&mut app, "device:pc-01"), 2);
    assert_eq!(count(&mut app, "kind:scan_rejected store:umeda"), 1);
    assert_eq!(count(&mut app, "too_early 11:00"), 2);
    assert_eq!(count(&mut app, "OFFLINE"), 1);
}

#[test]
fn p_pauses_the_tail_and_counts_what_arrives_meanwhile() {
    let mut app = new_app();
    let offline = EventKind::DeviceAvailability {
        availability: mujin_protocol::message::Availability::Offline,
        session_id: None,
    };
    let at = "2025-06-01T10:00:00Z";
    update(&mut app, event_msg("s", Some("d"), offline.clone(), at));
    press(&mut app, &[KeyCode::Char('4'), KeyCode::Char('p')]);
    update(&mut app, event_msg("s", Some("d"), offline.clone(), at));
    update(&mut app, event_msg("s", Some("d"), offline, at));
    assert_eq!(app.visible_events().count(), 1);
    assert_eq!(app.unseen_while_paused(), 2);
    press(&mut app, &[KeyCode::Char('p')]);
    assert_eq!(app.visible_events().count(), 3);
    assert_eq!(app.unseen_while_paused(), 0);
}

#[test]
fn q_and_ctrl_c_quit_esc_does_not_and_help_closes_on_any_key() {
    let mut app = new_app();
    assert_eq!(
        update(&mut app, key(KeyCode::Char('q'))),
        Some(Effect::Quit)
    );
    let ctrl_c = Event::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert_eq!(update(&mut app, ctrl_c), Some(Effect::Quit));
    assert_eq!(update(&mut app, key(KeyCode::Esc)), None);
    press(&mut app, &[KeyCode::Char('?')]);
    assert!(app.show_help);
    press(&mut app, &[KeyCode::Char('4')]);
    assert!(!app.show_help);
    assert_eq!(app.view, View::Overview, "the key only closed the help");
}

#[test]
fn tab_switches_panes_only_where_there_are_two() {
    let mut app = new_app();
    idle(&mut app, "s", "d");
    press(&mut app, &[KeyCode::Char('2'), KeyCode::Tab]);
    assert_eq!(app.pane, Pane::Side);
    press(&mut app, &[KeyCode::BackTab]);
    assert_eq!(app.pane, Pane::Main);
    press(&mut app, &[KeyCode::Char('4'), KeyCode::Tab]);
    assert_eq!(app.pane, Pane::Main);
}

#[test]
fn offline_during_a_session_opens_an_alert_that_closes_when_the_session_ends() {
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
    assert!(app.alerts.is_empty());
    update(
        &mut app,
        state_msg("s", "d", ReportedState::offline(), "2025-06-01T10:00:05Z"),
    );
    assert_eq!(alert_kinds(&app), [AlertKind::OfflineInSession]);
    let ended = EventKind::SessionEnded {
        session_id,
        started_at: t("2025-06-01T10:00:00Z"),
        ended_at: t("2025-06-01T11:00:00Z"),
        reason: EndReason::BookingEnded,
        used_ms: 3_600_000,
    };
    update(
        &mut app,
        event_msg("s", Some("d"), ended, "2025-06-01T11:00:00Z"),
    );
    assert!(app.alerts.is_empty());
    // Minutes used count from the end events.
    assert_eq!(app.stores[&super::tests::store("s")].used_ms, 3_600_000);
}

#[test]
fn a_failed_start_is_an_alert_until_a_later_start_succeeds() {
    let mut app = new_app();
    let start = || CommandAction::Start {
        session_id: SessionId::random(),
        lease_until: t("2025-06-01T11:00:00Z"),
        remaining_ms: 3_600_000,
    };
    let (first, sent) = command("s", "d", start(), "2025-06-01T10:00:00Z");
    update(&mut app, sent);
    update(
        &mut app,
        ack("s", "d", first, false, "2025-06-01T10:00:01Z"),
    );
    assert_eq!(alert_kinds(&app), [AlertKind::FailedStart]);
    let (second, sent) = command("s", "d", start(), "2025-06-01T10:01:00Z");
    update(&mut app, sent);
    update(
        &mut app,
        ack("s", "d", second, true, "2025-06-01T10:01:01Z"),
    );
    assert!(app.alerts.is_empty());
    let commands = &row(&app, "s", "d").commands;
    assert_eq!(commands.len(), 2);
    assert!(commands.iter().all(|record| record.ack.is_some()));
}

#[test]
fn a_stop_without_ack_after_five_seconds_is_an_alert_until_acked() {
    let mut app = new_app();
    let stop = CommandAction::Stop {
        session_id: SessionId::random(),
        reason: EndReason::BookingEnded,
    };
    let (command_id, sent) = command("s", "d", stop, "2025-06-01T10:00:00Z");
    update(&mut app, sent.clone());
    // The same command redelivered is one command.
    update(&mut app, sent);
    update(&mut app, Event::Tick(t("2025-06-01T10:00:05Z")));
    assert!(app.alerts.is_empty());
    update(&mut app, Event::Tick(t("2025-06-01T10:00:06Z")));
    assert_eq!(alert_kinds(&app), [AlertKind::StopNotAcked]);
    let since = app.alerts.values().next().unwrap().since;
    assert_eq!(since, t("2025-06-01T10:00:06Z"));
    update(
        &mut app,
        ack("s", "d", command_id, true, "2025-06-01T10:00:09Z"),
    );
    assert!(app.alerts.is_empty());
}

#[test]
fn clock_skew_beyond_two_seconds_is_flagged() {
    let mut app = new_app();
    let telemetry = |device_at: &str, at: &str| {
        mqtt(
            Incoming::Telemetry {
                store: super::tests::store("s"),
                device: super::tests::device("d"),
                telemetry: Telemetry {
                    interval_ms: None,
                    signature: None,
                    at: t(device_at),
                    uptime_ms: 1,
                    load: Some(0.5),
                    program: ProgramStatus::Idle,
                },
            },
            at,
        )
    };
    update(
        &mut app,
        telemetry("2025-06-01T10:00:01.500Z", "2025-06-01T10:00:00Z"),
    );
    assert_eq!(
        row(&app, "s", "d").skew(),
        Some(TimeDelta::milliseconds(1500))
    );
    assert!(app.alerts.is_empty());
    update(
        &mut app,
        telemetry("2025-06-01T09:59:59Z", "2025-06-01T10:00:02.500Z"),
    );
    assert_eq!(alert_kinds(&app), [AlertKind::ClockSkew]);
    assert_eq!(
        app.alerts.values().next().unwrap().detail,
        "device clock -3.5s"
    );
}

#[test]
fn three_rejections_within_a_minute_are_a_burst_that_fades() {
    let mut app = new_app();
    let rejected = EventKind::ScanRejected {
        scan_id: None,
        reason: RejectReason::BadSignature,
        detail: String::new(),
    };
    for at in ["2025-06-01T10:00:00Z", "2025-06-01T10:00:30Z"] {
        update(&mut app, event_msg("s", Some("d"), rejected.clone(), at));
    }
    assert!(app.alerts.is_empty());
    // The third one, but the first is more than a minute old by now.
    update(
        &mut app,
        event_msg("s", Some("d"), rejected.clone(), "2025-06-01T10:01:01Z"),
    );
    assert!(app.alerts.is_empty());
    update(
        &mut app,
        event_msg("s", Some("d"), rejected, "2025-06-01T10:01:02Z"),
    );
    assert_eq!(alert_kinds(&app), [AlertKind::RejectionBurst]);
    assert_eq!(row(&app, "s", "d").scans.len(), 4);
    update(&mut app, Event::Tick(t("2025-06-01T10:01:31Z")));
    assert!(app.alerts.is_empty(), "only two within the last minute");
}

#[test]
fn sessions_are_listed_newest_first_and_counted_per_day() {
    let mut app = new_app();
    for (device, at) in [("a", "2025-06-01T09:00:00Z"), ("b", "2025-06-01T10:00:00Z")] {
        let started = EventKind::SessionStarted {
            session_id: SessionId::random(),
            ticket_id: TicketId::random(),
            lease_until: t("2025-06-01T12:00:00Z"),
            offline: false,
        };
        update(&mut app, event_msg("s", Some(device), started, at));
    }
    let devices: Vec<_> = app
        .visible_sessions()
        .map(|row| match row {
            SessionsRow::Session(session) => session.device.clone().unwrap().to_string(),
            SessionsRow::Booking(booking) => panic!("no bookings here: {booking:?}"),
        })
        .collect();
    assert_eq!(devices, ["b", "a"]);
    let day = t("2025-06-01T10:00:00Z").date_naive();
    assert_eq!(
        app.stores[&super::tests::store("s")].sessions_by_day[&day],
        2
    );
    app.filters[View::Sessions.index()] = "device:a running".into();
    assert_eq!(app.visible_sessions().count(), 1);
}

#[test]
fn j_and_k_scroll_back_through_the_events_and_stop_at_the_ends() {
    let mut app = new_app();
    let offline = EventKind::DeviceAvailability {
        availability: mujin_protocol::message::Availability::Offline,
        session_id: None,
    };
    for _ in 0..3 {
        update(
            &mut app,
            event_msg("s", Some("d"), offline.clone(), "2025-06-01T10:00:00Z"),
        );
    }
    press(
        &mut app,
        &[KeyCode::Char('4'), KeyCode::Char('j'), KeyCode::Char('j')],
    );
    assert_eq!(app.scroll, 2);
    press(&mut app, &[KeyCode::Char('j')]);
    assert_eq!(app.scroll, 2, "never past the oldest");
    press(
        &mut app,
        &[KeyCode::Char('k'), KeyCode::Char('k'), KeyCode::Char('k')],
    );
    assert_eq!(app.scroll, 0);
    // The store view's event pane scrolls once it has the keys; the selection stays.
    press(
        &mut app,
        &[KeyCode::Char('2'), KeyCode::Tab, KeyCode::Char('j')],
    );
    assert_eq!((app.pane, app.scroll), (Pane::Side, 1));
    assert_eq!(app.selected, Some(super::tests::device("d")));
}
