//! The store view: every device of one store with its status, current session and a time-left
//! bar, the start of its next booking, heartbeat age and clock skew, sorted and filtered; below
//! it, the store's events.

use chrono::TimeDelta;
use std::collections::HashMap;

use mujin_protocol::message::ProgramStatus;
use mujin_protocol::snapshot::BookingSummary;
use mujin_protocol::DeviceId;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, TableState};
use ratatui::Frame;

use crate::app::alerts::{skew_text, MAX_SKEW};
use crate::app::{App, DeviceRow, DeviceStatus, Pane, View};
use crate::ui::{events, filter_note, format, pane_block, placeholder, selectable_table, window};

/// Less time left than this is shown in yellow: the customer is about to be stopped.
const ENDING_SOON: TimeDelta = TimeDelta::minutes(5);
/// Cells of the time-left bar.
const BAR_WIDTH: usize = 6;

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let rows = app.store_rows();
    // The table takes what its rows need (borders and header included); events get the rest,
    // at least a few lines when there is room.
    let table_height = u16::try_from(rows.len().max(1))
        .unwrap_or(u16::MAX)
        .saturating_add(3);
    let [table_area, events_area] =
        Layout::vertical([Constraint::Max(table_height), Constraint::Min(4)]).areas(area);
    devices_table(app, &rows, frame, table_area);
    store_events(app, frame, events_area);
}

fn devices_table(app: &App, rows: &[(&DeviceId, &DeviceRow)], frame: &mut Frame, area: Rect) {
    let store = app.current_store().map_or("—", |store| store.as_str());
    let title = format!(
        " {store} · devices ({}) · sort {} (s) {}",
        rows.len(),
        app.sort.as_str(),
        filter_note(app, View::Store)
    );
    let block = pane_block(app, title, app.pane == Pane::Main);
    if rows.is_empty() {
        placeholder(
            frame,
            area,
            block,
            "no devices (yet, or through this filter)",
        );
        return;
    }
    let selected = app.selected_index();
    let shown = window(
        rows.len(),
        selected,
        usize::from(area.height.saturating_sub(3)),
    );
    let next_bookings = app
        .current_store()
        .map(|store| app.next_bookings(store))
        .unwrap_or_default();
    let table_rows = rows[shown.clone()]
        .iter()
        .map(|(device, row)| device_row(app, device, row, &next_bookings));
    let header = [
        "DEVICE",
        "STATUS",
        "SESSION",
        "TIME LEFT",
        "NEXT",
        "SEEN",
        "SKEW",
    ];
    let widths = [
        Constraint::Min(8),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(15),
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Length(7),
    ];
    let table = selectable_table(app, header, table_rows, widths, block);
    let mut state = TableState::default().with_selected(selected.map(|i| i - shown.start));
    frame.render_stateful_widget(table, area, &mut state);
}

fn device_row<'a>(
    app: &App,
    device: &'a DeviceId,
    row: &DeviceRow,
    next_bookings: &HashMap<&DeviceId, &BookingSummary>,
) -> Row<'a> {
    let status = row.status();
    let mut cells = vec![
        Cell::from(device.as_str()),
        Cell::from(status.as_str()).style(status_style(status)),
    ];
    match &row.program {
        ProgramStatus::Running {
            session_id,
            started_at,
            lease_until,
            ..
        } => {
            let left = app.time_left(*lease_until);
            let fraction = format::fraction_left(*started_at, *lease_until, app.now);
            let text = format!(
                "{} {}",
                format::bar(fraction, BAR_WIDTH),
                format::countdown(left)
            );
            cells.push(Cell::from(format::short_session(*session_id)));
            cells.push(Cell::from(text).style(left_style(left)));
        }
        ProgramStatus::Idle => cells.extend([Cell::from("—"), Cell::from("—")]),
    }
    let next = next_bookings.get(device).map_or_else(
        || "—".to_owned(),
        |booking| format::hour_minute(booking.not_before, app.utc_offset),
    );
    cells.push(Cell::from(next));
    let seen = row
        .last_seen
        .map_or_else(|| "—".to_owned(), |at| format::age(app.now - at));
    cells.push(Cell::from(seen));
    cells.push(skew_cell(row));
    Row::new(cells)
}

fn skew_cell(row: &DeviceRow) -> Cell<'static> {
    match row.skew() {
        None => Cell::from("—"),
        Some(skew) if skew.abs() > MAX_SKEW => {
            Cell::from(format!("{}!", skew_text(skew))).style(Style::new().fg(Color::Yellow))
        }
        Some(skew) => Cell::from(skew_text(skew)),
    }
}

/// The store's events, newest at the bottom; scrolled back when the pane has the keys.
fn store_events(app: &App, frame: &mut Frame, area: Rect) {
    let focused = app.pane == Pane::Side;
    let block = pane_block(app, " store events (Tab) ".to_owned(), focused);
    let height = usize::from(block.inner(area).height);
    let Some(store) = app.current_store() else {
        placeholder(frame, area, block, "no events yet");
        return;
    };
    let skip = if focused { app.scroll } else { 0 };
    let mut lines: Vec<Line> = app
        .events
        .iter()
        .rev()
        .filter(|record| &record.event.store == store)
        .skip(skip)
        .take(height)
        .map(|record| events::event_line(app, &record.event, false))
        .collect();
    if lines.is_empty() {
        placeholder(frame, area, block, "no events yet");
        return;
    }
    lines.reverse();
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

pub fn status_style(status: DeviceStatus) -> Style {
    match status {
        DeviceStatus::Running => Style::new().fg(Color::Green),
        DeviceStatus::Idle => Style::new(),
        DeviceStatus::Offline => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        DeviceStatus::Unknown => Style::new().fg(Color::Gray),
        DeviceStatus::OutOfService => Style::new().fg(Color::Magenta),
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
