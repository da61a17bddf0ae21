//! The action dialogs: confirm an action, type its minutes or a ticket id, choose a service
//! state. Drawn over the middle of the screen; the walk-in ticket has its own file.

use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Clear, Padding, Paragraph, Wrap};
use ratatui::Frame;

use crate::app::{Action, App, Dialog, MinutesFor};
use crate::ui::ticket;

const WIDTH: u16 = 64;

pub fn view(app: &App, dialog: &Dialog, frame: &mut Frame) {
    let (title, mut lines) = match dialog {
        Dialog::Ticket { detail, ticket } => {
            return ticket::view(detail, ticket, frame);
        }
        Dialog::Confirm(action) => (" confirm ", confirm_lines(action)),
        Dialog::Minutes { purpose, input } => (" confirm ", minutes_lines(purpose, input)),
        Dialog::CancelTicket { input } => (" cancel a booking ", cancel_lines(input)),
        Dialog::ChooseService { store, device } => (
            " service ",
            vec![
                Line::from(format!(
                    "{store}/{device}: its service state is not known here."
                )),
                Line::default(),
                keys_line(&[
                    ("o", "out of service"),
                    ("i", "back in service"),
                    ("n/Esc", "cancel"),
                ]),
            ],
        ),
    };
    if app.is_stale() {
        lines.insert(
            0,
            Line::styled(
                "DISCONNECTED: nothing can be sent now",
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ),
        );
    }
    let height = u16::try_from(lines.len())
        .unwrap_or(u16::MAX)
        .saturating_add(2);
    let area = centered(frame.area(), WIDTH, height);
    let block = Block::bordered()
        .border_type(BorderType::Double)
        .border_style(Style::new().fg(Color::Yellow))
        .padding(Padding::horizontal(1))
        .title(title);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false }),
        area,
    );
}

fn confirm_lines(action: &Action) -> Vec<Line<'static>> {
    let mut lines = vec![Line::styled(
        format!("{}?", capitalized(&action.describe())),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    if let Action::ForceStop { session_id, .. } = action {
        lines.push(Line::styled(
            format!("session {session_id}"),
            Style::new().fg(Color::Gray),
        ));
    }
    lines.push(Line::default());
    lines.push(keys_line(&[("y/Enter", "send"), ("n/Esc", "cancel")]));
    lines
}

fn minutes_lines(purpose: &MinutesFor, input: &str) -> Vec<Line<'static>> {
    let question = match purpose {
        MinutesFor::Extend { store, device, .. } => {
            format!("Extend the session on {store}/{device} by")
        }
        MinutesFor::WalkIn { store, device } => {
            format!("Walk-in ticket: book {store}/{device} from now for")
        }
    };
    let mut lines = vec![
        Line::styled(question, Style::new().add_modifier(Modifier::BOLD)),
        field_line(input, "minutes"),
    ];
    if let MinutesFor::Extend { session_id, .. } = purpose {
        lines.push(Line::styled(
            format!("session {session_id}"),
            Style::new().fg(Color::Gray),
        ));
    }
    lines.push(Line::default());
    lines.push(keys_line(&[
        ("0-9 ⌫", "edit"),
        ("y/Enter", "send"),
        ("n/Esc", "cancel"),
    ]));
    lines
}

fn cancel_lines(input: &str) -> Vec<Line<'static>> {
    vec![
        Line::styled(
            "Cancel the booking with ticket id",
            Style::new().add_modifier(Modifier::BOLD),
        ),
        field_line(input, ""),
        Line::default(),
        keys_line(&[("Enter", "send"), ("Esc", "cancel")]),
    ]
}

/// An editable field with its cursor and unit.
fn field_line(input: &str, unit: &str) -> Line<'static> {
    Line::from(vec![
        Span::raw("  "),
        Span::styled(
            input.to_owned(),
            Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
        ),
        Span::styled("█", Style::new().fg(Color::Cyan)),
        Span::raw(format!(" {unit}")),
    ])
}

/// `key what · key what …`
fn keys_line(keys: &[(&str, &str)]) -> Line<'static> {
    let mut spans = Vec::new();
    for (index, (key, what)) in keys.iter().enumerate() {
        if index > 0 {
            spans.push(Span::styled(" · ", Style::new().fg(Color::Gray)));
        }
        spans.push(Span::styled(
            (*key).to_owned(),
            Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
        ));
        spans.push(Span::raw(format!(" {what}")));
    }
    Line::from(spans)
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// A `width`×`height` rectangle in the middle of `area` (clipped to it).
pub(crate) fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let [column] = Layout::horizontal([Constraint::Length(width.min(area.width))])
        .flex(Flex::Center)
        .areas(area);
    let [popup] = Layout::vertical([Constraint::Length(height.min(area.height))])
        .flex(Flex::Center)
        .areas(column);
    popup
}
