//! The sessions view: running and ended sessions seen in the events, newest first, filtered.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Cell, Row, Table};
use ratatui::Frame;

use crate::app::{App, SessionRecord, View};
use crate::ui::{filter_note, format, pane_block, placeholder, stale_style};

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let title = format!(
        " sessions seen since {} {}",
        format::clock(app.started_at, app.utc_offset),
        filter_note(app, View::Sessions)
    );
    let block = pane_block(app, title, false);
    let height = usize::from(area.height.saturating_sub(3));
    let rows: Vec<Row> = app
        .visible_sessions()
        .skip(app.scroll)
        .take(height)
        .map(|session| session_row(app, session))
        .collect();
    if rows.is_empty() {
        placeholder(
            frame,
            area,
            block,
            "no sessions (yet, or through this filter)",
        );
        return;
    }
    let header = Row::new([
        "STORE",
        "DEVICE",
        "SESSION",
        "STARTED",
        "STATE",
        "LEFT/USED",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let widths = [
        Constraint::Min(8),
        Constraint::Min(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(14),
        Constraint::Length(9),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .style(stale_style(app))
        .block(block);
    frame.render_widget(table, area);
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
