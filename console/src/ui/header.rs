//! The top line: which stores are shown, device count, broker and the clock.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::app::App;
use crate::ui::format;

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let scope = match &app.store_filter {
        Some(store) => format!("store {store}"),
        None => "all stores".to_owned(),
    };
    let left = Line::from(vec![
        Span::styled(" mujin ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw("· "),
        Span::styled(scope, Style::new().fg(Color::Cyan)),
        Span::styled(" (Tab) ", Style::new().fg(Color::Gray)),
        Span::raw(format!("· {} devices", app.visible_devices().len())),
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
