//! The views: `view(&App, &mut Frame)` lays out the screen and each view or widget lives in its
//! own file. Views only read the state; time comes from `App::now`, never from the clock.
//!
//! Per-frame work stays proportional to what is visible: tables build rows only for the
//! window on screen, and only the rows of one store are ever sorted.

mod alerts;
mod banner;
mod detail;
mod dialog;
pub mod events;
mod footer;
pub mod format;
mod header;
mod help;
mod overview;
mod sessions;
mod status;
mod store;
pub mod ticket;

use std::ops::Range;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, BorderType, Paragraph};
use ratatui::Frame;

use crate::app::{App, View};

/// Draws the whole screen.
pub fn view(app: &App, frame: &mut Frame) {
    let banner_height = u16::from(banner::is_shown(app));
    let status_height = u16::from(status::is_shown(app));
    let [header_area, banner_area, body, status_area, footer_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(banner_height),
        Constraint::Min(0),
        Constraint::Length(status_height),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    header::view(app, frame, header_area);
    banner::view(app, frame, banner_area);
    match app.view {
        View::Overview => overview::view(app, frame, body),
        View::Store => store::view(app, frame, body),
        View::Device => detail::view(app, frame, body),
        View::Sessions => sessions::view(app, frame, body),
        View::Events => events::view(app, frame, body),
        View::Alerts => alerts::view(app, frame, body),
    }
    status::view(app, frame, status_area);
    footer::view(app, frame, footer_area);
    if app.show_help {
        help::view(frame, body);
    }
    if let Some(dialog) = &app.dialog {
        dialog::view(app, dialog, frame);
    }
}

/// A pane's frame: the title, "not live" while disconnected, and a thick border when it has
/// the keys in a two-pane view.
pub(crate) fn pane_block(app: &App, title: String, focused: bool) -> Block<'static> {
    let mut block = Block::bordered().title(title);
    if app.is_stale() {
        block = block.title(Line::styled(
            " not live ",
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    if focused {
        block = block
            .border_type(BorderType::Thick)
            .border_style(Style::new().fg(Color::Cyan));
    }
    block
}

/// The text shown in a view's title for its filter, if any.
pub(crate) fn filter_note(app: &App, view: View) -> String {
    let text = app.filter_text(view);
    if text.is_empty() {
        String::new()
    } else {
        format!("· filter: {text} ")
    }
}

/// Grey for everything that was true when the connection dropped.
pub(crate) fn stale_style(app: &App) -> Style {
    if app.is_stale() {
        Style::new().fg(Color::Gray)
    } else {
        Style::new()
    }
}

/// A table whose selected row is marked, with a bold header, greyed while stale. The highlight
/// column is always reserved so the columns stay still whether or not a row is selected.
pub(crate) fn selectable_table<'a, const N: usize>(
    app: &App,
    header: [&'a str; N],
    rows: impl IntoIterator<Item = ratatui::widgets::Row<'a>>,
    widths: [ratatui::layout::Constraint; N],
    block: Block<'a>,
) -> ratatui::widgets::Table<'a> {
    use ratatui::style::Modifier;
    use ratatui::widgets::{HighlightSpacing, Row, Table};
    Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶ ")
        .highlight_spacing(HighlightSpacing::Always)
        .style(stale_style(app))
        .block(block)
}

/// An empty pane with a grey hint.
pub(crate) fn placeholder(frame: &mut Frame, area: Rect, block: Block, text: &str) {
    let hint = Line::styled(format!(" {text}"), Style::new().fg(Color::Gray));
    frame.render_widget(Paragraph::new(hint).block(block), area);
}

/// The rows of a list of `len` to build so that `selected` is on screen in `height` lines.
pub(crate) fn window(len: usize, selected: Option<usize>, height: usize) -> Range<usize> {
    let height = height.max(1);
    let start = selected.map_or(0, |index| (index + 1).saturating_sub(height));
    start..(start + height).min(len)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_catch_up;
#[cfg(test)]
mod tests_dialogs;
