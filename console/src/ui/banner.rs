//! The connection banner: shown whenever the broker connection is not up, so that numbers on
//! screen never look live when they are not; and, once connected, while the console catches up
//! with management, or when that catch-up could not complete.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::app::{App, CatchUp, Connection, PartLoad, PartState};
use crate::ui::format;

/// Whether the banner takes a line at all.
pub fn is_shown(app: &App) -> bool {
    !matches!(app.connection, Connection::Up { .. }) || catch_up_line(app).is_some()
}

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let (text, style) = match &app.connection {
        Connection::Up { .. } => match catch_up_line(app) {
            Some(line) => line,
            None => return,
        },
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

/// The catch-up's line: while it loads, or when a part of it was given up; or, for a console
/// without an operator key, that it neither catches up nor acts.
fn catch_up_line(app: &App) -> Option<(String, Style)> {
    if app.read_only {
        return Some((
            " READ-ONLY: no operator key (--operator-key): live view only, no catch-up, no actions"
                .to_owned(),
            Style::new().fg(Color::Black).bg(Color::Gray),
        ));
    }
    let catch_up = app.catch_up.as_ref()?;
    if catch_up.is_loading() {
        Some((
            format!(" CATCHING UP with management: {}", parts_text(catch_up)),
            Style::new().fg(Color::Black).bg(Color::Cyan),
        ))
    } else if catch_up.is_incomplete() {
        Some((
            format!(
                " INCOMPLETE CATCH-UP: {} (lists may lack what happened while away; reconnect to retry)",
                problems_text(catch_up)
            ),
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ))
    } else {
        None
    }
}

/// What went wrong, unanswered parts together: the first words must say it at 80 columns.
fn problems_text(catch_up: &CatchUp) -> String {
    let unanswered: Vec<&str> = catch_up
        .parts
        .iter()
        .filter(|load| load.state == PartState::NoAnswer)
        .map(|load| load.part.as_str())
        .collect();
    let mut problems = Vec::new();
    if !unanswered.is_empty() {
        problems.push(format!(
            "no answer from management for {}",
            unanswered.join(", ")
        ));
    }
    for load in &catch_up.parts {
        if let PartState::Refused(detail) = &load.state {
            problems.push(format!("{} refused: {detail}", load.part));
        }
    }
    problems.join(" · ")
}

fn parts_text(catch_up: &CatchUp) -> String {
    let parts: Vec<String> = catch_up.parts.iter().map(part_text).collect();
    parts.join(" · ")
}

fn part_text(load: &PartLoad) -> String {
    let part = load.part;
    match &load.state {
        PartState::Loading { .. } if load.pages == 0 => format!("{part}…"),
        PartState::Loading { .. } if load.pages == 1 => format!("{part}: 1 page…"),
        PartState::Loading { .. } => format!("{part}: {} pages…", load.pages),
        PartState::Done => format!("{part} ✓"),
        PartState::NoAnswer => format!("{part}: no answer from management"),
        PartState::Refused(detail) => format!("{part} refused: {detail}"),
    }
}
