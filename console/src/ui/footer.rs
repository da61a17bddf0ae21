//! The bottom line: the view keys (the current one highlighted), or the filter being typed;
//! and how many messages were ignored.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::app::{App, View};

/// The views on the number keys, in order.
const VIEW_KEYS: [(char, View); 5] = [
    ('1', View::Overview),
    ('2', View::Store),
    ('3', View::Sessions),
    ('4', View::Events),
    ('5', View::Alerts),
];

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let keys = if app.editing_filter {
        filter_line(app)
    } else {
        view_keys(app, area.width)
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
    frame.render_widget(Paragraph::new(keys), keys_area);
    frame.render_widget(Paragraph::new(ignored), ignored_area);
}

/// From this width on the footer names the action keys.
const WIDE: u16 = 110;

fn view_keys(app: &App, width: u16) -> Line<'static> {
    let grey = Style::new().fg(Color::Gray);
    let mut spans = vec![Span::raw(" ")];
    for (key, view) in VIEW_KEYS {
        // The device detail belongs to the store view's key.
        let current = app.view == view || (view == View::Store && app.view == View::Device);
        let style = if current {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            grey
        };
        spans.push(Span::styled(format!("{key} {}", view.title()), style));
        spans.push(Span::raw(" "));
    }
    if matches!(app.view, View::Store | View::Device) {
        // The action keys only where a device is selected; named when there is room.
        let actions = if width >= WIDE {
            "│ x stop · e extend · o service · w walk-in "
        } else {
            "│ x e o w "
        };
        spans.push(Span::styled(actions, grey));
    }
    if app.view == View::Sessions {
        let cancel = if width >= WIDE {
            "│ c cancel the selected booking "
        } else {
            "│ c cancel "
        };
        spans.push(Span::styled(cancel, grey));
    }
    spans.push(Span::styled("│ ? help · q quit", grey));
    Line::from(spans)
}

fn filter_line(app: &App) -> Line<'static> {
    Line::from(vec![
        Span::styled(" / ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(app.filter_text(app.view).to_owned()),
        Span::styled("█", Style::new().fg(Color::Cyan)),
        Span::styled("  Enter keep · Esc clear", Style::new().fg(Color::Gray)),
    ])
}
