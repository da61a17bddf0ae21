//! The device table: status, current session, its time left and how long ago each device was
//! last heard from.

use chrono::TimeDelta;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, HighlightSpacing, Paragraph, Row, Table, TableState};
use ratatui::Frame;

use crate::app::{App, Connection, DeviceKey, DeviceRow, DeviceStatus};
use crate::ui::format;

/// Less time left than this is shown in yellow: the customer is about to be stopped.
const ENDING_SOON: TimeDelta = TimeDelta::minutes(5);

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let rows = app.visible_devices();
    let stale = !matches!(app.connection, Connection::Up { .. });
    let title = if stale {
        format!(" devices ({}) — not live ", rows.len())
    } else {
        format!(" devices ({}) ", rows.len())
    };
    let block = Block::bordered().title(title);
    if rows.is_empty() {
        let waiting = Paragraph::new(Line::styled(
            " waiting for devices to report…",
            Style::new().fg(Color::Gray),
        ))
        .block(block);
        frame.render_widget(waiting, area);
        return;
    }

    let with_store = app.store_filter.is_none();
    let mut widths = Vec::with_capacity(6);
    let mut header = Vec::with_capacity(6);
    if with_store {
        widths.push(Constraint::Length(12));
        header.push("STORE");
    }
    widths.extend([
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(5),
    ]);
    header.extend(["DEVICE", "STATUS", "SESSION", "LEFT", "SEEN"]);

    let table_rows = rows
        .iter()
        .map(|(key, row)| device_row(app, key, row, with_store));
    let mut table = Table::new(table_rows, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶ ")
        // Keep the columns still whether or not a row is selected.
        .highlight_spacing(HighlightSpacing::Always)
        .block(block);
    if stale {
        // Everything below was true when the connection dropped; grey it out.
        table = table.style(Style::new().fg(Color::Gray));
    }
    let mut state = TableState::default().with_selected(app.selected_index());
    frame.render_stateful_widget(table, area, &mut state);
}

fn device_row<'a>(app: &App, key: &'a DeviceKey, row: &DeviceRow, with_store: bool) -> Row<'a> {
    let (store, device) = key;
    let status = row.status();
    let mut cells = Vec::with_capacity(6);
    if with_store {
        cells.push(Cell::from(store.as_str()));
    }
    cells.push(Cell::from(device.as_str()));
    cells.push(Cell::from(status.as_str()).style(status_style(status)));
    match row.session() {
        Some((session_id, lease_until)) => {
            let left = app.time_left(lease_until);
            cells.push(Cell::from(format::short_session(session_id)));
            cells.push(Cell::from(format::countdown(left)).style(left_style(left)));
        }
        None => cells.extend([Cell::from("—"), Cell::from("—")]),
    }
    let seen = row
        .last_seen
        .map_or_else(|| "—".to_owned(), |at| format::age(app.now - at));
    cells.push(Cell::from(seen));
    Row::new(cells)
}

fn status_style(status: DeviceStatus) -> Style {
    match status {
        DeviceStatus::Running => Style::new().fg(Color::Green),
        DeviceStatus::Idle => Style::new(),
        DeviceStatus::Offline => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        DeviceStatus::Unknown => Style::new().fg(Color::Gray),
    }
}

fn left_style(left: TimeDelta) -> Style {
    if left < TimeDelta::zero() {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else if left < ENDING_SOON {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new()
    }
}
