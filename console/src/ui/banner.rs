//! The connection banner: shown whenever the broker connection is not up, so that numbers on
//! screen never look live when they are not.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::app::{App, Connection};
use crate::ui::format;

/// Whether the banner takes a line at all.
pub fn is_shown(app: &App) -> bool {
    !matches!(app.connection, Connection::Up { .. })
}

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let (text, style) = match &app.connection {
        Connection::Up { .. } => return,
        Connection::Connecting => (
            format!(" CONNECTING to {}…", app.broker),
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ),
        Connection::Down { since, error } => (
            format!(
                " DISCONNECTED — reconnecting… since {} · {error}",
                format::clock(*since, app.utc_offset)
            ),
            Style::new().fg(Color::White).bg(Color::Red),
        ),
    };
    let line = Line::styled(text, style.add_modifier(Modifier::BOLD));
    frame.render_widget(Paragraph::new(line).style(style), area);
}
