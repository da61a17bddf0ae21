//! The status line above the footer: what became of the operator's latest request (sent,
//! done, refused, not sent, no answer yet, no answer at all) or why an action key did nothing.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::app::actions::NO_ANSWER_AFTER;
use crate::app::{App, Outcome};

/// Whether the status line takes a line at all.
pub fn is_shown(app: &App) -> bool {
    app.note.is_some() || app.last_request().is_some()
}

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let (text, style) = match (&app.note, app.last_request()) {
        (Some(note), _) => (note.clone(), Style::new().fg(Color::Yellow)),
        (None, Some(record)) => {
            let style = match &record.outcome {
                Outcome::Pending if record.waiting(app.now) >= NO_ANSWER_AFTER => {
                    Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
                }
                Outcome::Pending => Style::new().fg(Color::Cyan),
                Outcome::Done(_) => Style::new().fg(Color::Green),
                Outcome::Refused(_) | Outcome::NotSent(_) | Outcome::NoAnswer => {
                    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
                }
            };
            (record.status(app.now), style)
        }
        (None, None) => return,
    };
    frame.render_widget(
        Paragraph::new(Line::styled(format!(" {text}"), style)),
        area,
    );
}
