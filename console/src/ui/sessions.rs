//! The sessions view: running sessions, upcoming bookings with their window, and ended
//! sessions, filtered; the selected row is highlighted (`c` cancels a selected booking).

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::widgets::{Cell, Row, TableState};
use ratatui::Frame;

use crate::app::{App, SessionRecord, SessionsRow, View};
use crate::ui::{filter_note, format, pane_block, placeholder, selectable_table, window};

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let title = format!(
        " sessions (running, ended) and upcoming bookings {}",
        filter_note(app, View::Sessions)
    );
    let block = pane_block(app, title, false);
    let len = app.visible_sessions().count();
    if len == 0 {
        placeholder(
            frame,
            area,
            block,
            "no sessions or bookings (yet, or through this filter)",
        );
        return;
    }
    let selected = app.scroll.min(len - 1);
    let shown = window(
        len,
        Some(selected),
        usize::from(area.height.saturating_sub(3)),
    );
    let rows: Vec<Row> = app
        .visible_sessions()
        .skip(shown.start)
        .take(shown.len())
        .map(|row| match row {
            SessionsRow::Session(session) => session_row(app, session),
            SessionsRow::Booking(booking) => booking_row(app, booking),
        })
        .collect();
    let header = ["STORE", "DEVICE", "ID", "WHEN", "STATE", "TIME"];
    let widths = [
        Constraint::Min(8),
        Constraint::Min(8),
        Constraint::Length(8),
        Constraint::Length(11),
        Constraint::Length(14),
        Constraint::Length(9),
    ];
    let table = selectable_table(app, header, rows, widths, block);
    let mut state = TableState::default().with_selected(Some(selected - shown.start));
    frame.render_stateful_widget(table, area, &mut state);
}

fn session_row<'a>(app: &App, session: &'a SessionRecord) -> Row<'a> {
    let device = session
        .device
        .as_ref()
        .map_or("—", |device| device.as_str());
    let (state, amount) = match (&session.ended, session.lease_until) {
        (Some(end), _) => (
            Cell::from(end.reason.as_str()),
            Cell::from(format::duration_ms(end.used_ms)),
        ),
        (None, Some(lease_until)) => (
            Cell::from("running").style(Style::new().fg(Color::Green)),
            Cell::from(format::countdown(app.time_left(lease_until))),
        ),
        (None, None) => (Cell::from("running"), Cell::from("—")),
    };
    Row::new([
        Cell::from(session.store.as_str()),
        Cell::from(device),
        Cell::from(format::short_session(session.session_id)),
        Cell::from(format::clock(session.started_at, app.utc_offset)),
        state,
        amount,
    ])
}

/// A booking: its window, and how long until it starts (or that it is open and unused).
fn booking_row<'a>(app: &App, booking: &'a mujin_protocol::snapshot::BookingSummary) -> Row<'a> {
    let window = format!(
        "{}–{}",
        format::hour_minute(booking.not_before, app.utc_offset),
        format::hour_minute(booking.not_after, app.utc_offset)
    );
    let until_start = booking.not_before - app.now;
    let amount = if until_start > chrono::TimeDelta::zero() {
        format!("in {}", format::age(until_start))
    } else {
        "not used".to_owned()
    };
    Row::new([
        Cell::from(booking.store.as_str()),
        Cell::from(booking.device.as_str()),
        Cell::from(format::short_ticket(booking.ticket_id)),
        Cell::from(window),
        Cell::from("booked").style(Style::new().fg(Color::Cyan)),
        Cell::from(amount),
    ])
}
