//! The stores overview: one row per store with its devices by status, the sessions and minutes
//! counted since the console started, and its open alerts.

use std::collections::BTreeMap;

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Cell, Row, TableState};
use ratatui::Frame;

use mujin_protocol::StoreId;

use crate::app::{App, DeviceStatus, Store};
use crate::ui::{format, pane_block, placeholder, selectable_table, window};

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let title = format!(
        " stores ({}) · today & minutes counted since {} ",
        app.stores.len(),
        format::clock(app.started_at, app.utc_offset)
    );
    let block = pane_block(app, title, false);
    if app.stores.is_empty() {
        placeholder(frame, area, block, "waiting for stores to report…");
        return;
    }
    let stores: Vec<(&StoreId, &Store)> = app.stores.iter().collect();
    let selected = app
        .selected_store
        .as_ref()
        .and_then(|chosen| stores.iter().position(|(store, _)| *store == chosen));
    // Borders and the header line.
    let height = usize::from(area.height.saturating_sub(3));
    let shown = window(stores.len(), selected, height);
    let alert_counts = app.alert_counts();
    let today = app.now.with_timezone(&app.utc_offset).date_naive();
    let rows = stores[shown.clone()].iter().map(|(id, store)| {
        let alerts = alert_counts.get(id).copied().unwrap_or(0);
        let sessions = store.sessions_by_day.get(&today).copied().unwrap_or(0);
        store_row(id, store, sessions, alerts)
    });
    let header = [
        "STORE", "IDLE", "RUNNING", "OFFLINE", "OUT-SVC", "TODAY", "MIN USED", "ALERTS",
    ];
    let widths = [
        Constraint::Min(10),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(6),
    ];
    let table = selectable_table(app, header, rows, widths, block);
    let relative = selected.map(|index| index - shown.start);
    let mut state = TableState::default().with_selected(relative);
    frame.render_stateful_widget(table, area, &mut state);
}

fn store_row<'a>(id: &'a StoreId, store: &Store, sessions: u32, alerts: usize) -> Row<'a> {
    let mut counts: BTreeMap<DeviceStatus, usize> = BTreeMap::new();
    for row in store.devices.values() {
        *counts.entry(row.status()).or_default() += 1;
    }
    let count = |status| counts.get(&status).copied().unwrap_or(0);
    let offline = count(DeviceStatus::Offline);
    let offline_style = if offline > 0 {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    };
    let alert_style = if alerts > 0 {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    };
    Row::new([
        Cell::from(id.as_str()),
        Cell::from(count(DeviceStatus::Idle).to_string()),
        Cell::from(count(DeviceStatus::Running).to_string()).style(Style::new().fg(Color::Green)),
        Cell::from(offline.to_string()).style(offline_style),
        Cell::from(count(DeviceStatus::OutOfService).to_string()),
        Cell::from(sessions.to_string()),
        Cell::from((store.used_ms / 60_000).to_string()),
        Cell::from(alerts.to_string()).style(alert_style),
    ])
}
