//! The bottom line: the keys (in full after `?`) and how many messages were ignored.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::app::App;

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let keys = if app.show_help {
        " q/Esc quit · ↑↓ j k select · Tab ⇧Tab store · ? close help"
    } else {
        " q quit · ? help"
    };
    let ignored = if app.malformed > 0 {
        Line::from(Span::styled(
            format!("{} malformed ignored ", app.malformed),
            Style::new().fg(Color::Yellow),
        ))
    } else {
        Line::default()
    };
    let ignored_width = u16::try_from(ignored.width()).unwrap_or(u16::MAX);
    let [keys_area, ignored_area] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(ignored_width)]).areas(area);
    frame.render_widget(
        Paragraph::new(Line::styled(keys, Style::new().fg(Color::Gray))),
        keys_area,
    );
    frame.render_widget(Paragraph::new(ignored), ignored_area);
}
