//! The help overlay (`?`): every key, over whatever view is shown.

use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Clear, Paragraph};
use ratatui::Frame;

/// (keys, what they do), in the order shown.
const KEYS: [(&str, &str); 20] = [
    ("1 2 3 4 5", "stores · devices · sessions · events · alerts"),
    ("Enter", "open the store / the device's detail"),
    ("Esc", "clear the filter, else go back"),
    ("↑↓ j k", "select or scroll"),
    ("PgUp PgDn", "ten rows"),
    ("g G Home End", "first / last row"),
    ("← → h l [ ]", "previous / next store"),
    ("Tab ⇧Tab", "switch pane (devices · device detail)"),
    ("s", "cycle the sort column (devices)"),
    ("/", "filter: words, store: device: kind:"),
    ("  Enter Esc", "  keep / clear the filter being typed"),
    ("p", "pause / resume the event tail"),
    ("x", "force stop the selected device's session"),
    ("e", "extend the selected device's session"),
    ("o", "out of service / back in service"),
    ("w", "walk-in ticket (QR) for the selected device"),
    ("c", "cancel the selected booking (3), else by id"),
    ("?", "this help (any key closes it)"),
    ("q Ctrl-C", "quit"),
    ("", "alerts open and close by themselves"),
];

pub fn view(frame: &mut Frame, area: Rect) {
    let height = u16::try_from(KEYS.len())
        .unwrap_or(u16::MAX)
        .saturating_add(2);
    let [column] = Layout::horizontal([Constraint::Length(62)])
        .flex(Flex::Center)
        .areas(area);
    let [popup] = Layout::vertical([Constraint::Length(height)])
        .flex(Flex::Center)
        .areas(column);
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(keys, what)| {
            Line::from(vec![
                Span::styled(
                    format!(" {keys:<13}"),
                    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
                ),
                Span::raw(*what),
            ])
        })
        .collect();
    let block = Block::bordered()
        .border_type(BorderType::Double)
        .title(" keys ");
    frame.render_widget(Clear, popup);
    frame.render_widget(Paragraph::new(lines).block(block), popup);
}
