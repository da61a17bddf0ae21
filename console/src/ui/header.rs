//! The top line: the view and store in scope, the open alerts (from every view), the broker
//! and the clock.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::app::{App, View};
use crate::ui::format;

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let scope = match app.view {
        View::Store | View::Device => app.current_store().map_or_else(
            || "no store yet".to_owned(),
            |store| format!("store {store}"),
        ),
        _ => format!(
            "{} stores · {} devices",
            app.stores.len(),
            app.device_count()
        ),
    };
    let alerts = match app.alerts.len() {
        0 => Span::styled("no alerts", Style::new().fg(Color::Gray)),
        1 => alert_span(" 1 alert ".to_owned()),
        count => alert_span(format!(" {count} alerts ")),
    };
    let left = Line::from(vec![
        Span::styled(" mujin ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw("· "),
        Span::styled(scope, Style::new().fg(Color::Cyan)),
        Span::raw(" · "),
        alerts,
    ]);
    let right = Line::from(vec![
        Span::styled(app.broker.as_str(), Style::new().fg(Color::Gray)),
        Span::raw(format!(" {} ", format::clock(app.now, app.utc_offset))),
    ]);
    let right_width = u16::try_from(right.width()).unwrap_or(u16::MAX);
    let [left_area, right_area] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(right_width)]).areas(area);
    frame.render_widget(Paragraph::new(left), left_area);
    frame.render_widget(Paragraph::new(right), right_area);
}

fn alert_span(text: String) -> Span<'static> {
    Span::styled(
        text,
        Style::new()
            .fg(Color::White)
            .bg(Color::Red)
            .add_modifier(Modifier::BOLD),
    )
}
