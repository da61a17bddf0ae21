//! The alerts view: every open alert the console derived, by store and device.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Cell, Row, Table};
use ratatui::Frame;

use crate::app::App;
use crate::ui::{format, pane_block, placeholder, stale_style};

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let title = format!(" open alerts ({}) ", app.alerts.len());
    let block = pane_block(app, title, false);
    if app.alerts.is_empty() {
        placeholder(frame, area, block, "no open alerts");
        return;
    }
    let height = usize::from(area.height.saturating_sub(3));
    let rows =
        app.alerts
            .iter()
            .skip(app.scroll)
            .take(height)
            .map(|(((store, device), kind), alert)| {
                Row::new([
                    Cell::from(format::clock(alert.since, app.utc_offset)),
                    Cell::from(store.as_str()),
                    Cell::from(device.as_str()),
                    Cell::from(kind.as_str()).style(Style::new().fg(Color::Red)),
                    Cell::from(alert.detail.as_str()),
                ])
            });
    let header = Row::new(["SINCE", "STORE", "DEVICE", "ALERT", "DETAIL"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let widths = [
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(18),
        Constraint::Min(10),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .style(stale_style(app))
        .block(block);
    frame.render_widget(table, area);
}
