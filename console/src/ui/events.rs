//! The tail of store events, newest at the bottom, one line each.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use ratatui::Frame;

use mujin_protocol::message::{self, Availability, EventKind};

use crate::app::App;
use crate::ui::format;

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let block = Block::bordered().title(" events ");
    let height = usize::from(block.inner(area).height);
    let with_store = app.store_filter.is_none();
    let mut lines: Vec<Line> = app
        .visible_events()
        .rev()
        .take(height)
        .map(|event| event_line(app, event, with_store))
        .collect();
    lines.reverse();
    if lines.is_empty() {
        lines.push(Line::styled(" no events yet", Style::new().fg(Color::Gray)));
    }
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn event_line<'a>(app: &App, event: &'a message::Event, with_store: bool) -> Line<'a> {
    let mut spans = vec![Span::styled(
        format::clock(event.at, app.utc_offset),
        Style::new().fg(Color::Gray),
    )];
    if with_store {
        spans.push(Span::raw(format!(" {:<10}", event.store.as_str())));
    }
    let device = event.device.as_ref().map_or("—", |device| device.as_str());
    spans.push(Span::raw(format!(" {device:<10} ")));
    let (text, style) = describe(app, &event.kind);
    spans.push(Span::styled(text, style));
    Line::from(spans)
}

/// The kind of an event and its essentials, in a few words, with a colour for its gravity.
pub fn describe(app: &App, kind: &EventKind) -> (String, Style) {
    let plain = Style::new();
    match kind {
        EventKind::ReservationCreated {
            not_before,
            not_after,
            ..
        } => (
            format!(
                "reservation created: {}–{}",
                format::clock(*not_before, app.utc_offset),
                format::clock(*not_after, app.utc_offset)
            ),
            plain,
        ),
        EventKind::ScanAccepted { session_id, .. } => (
            format!(
                "scan accepted: session {}",
                format::short_session(*session_id)
            ),
            Style::new().fg(Color::Green),
        ),
        EventKind::ScanRejected { reason, detail, .. } if detail.is_empty() => (
            format!("scan rejected: {reason}"),
            Style::new().fg(Color::Yellow),
        ),
        EventKind::ScanRejected { reason, detail, .. } => (
            format!("scan rejected: {reason} ({detail})"),
            Style::new().fg(Color::Yellow),
        ),
        EventKind::SessionStarted {
            session_id,
            lease_until,
            ..
        } => (
            format!(
                "session started: {} until {}",
                format::short_session(*session_id),
                format::clock(*lease_until, app.utc_offset)
            ),
            Style::new().fg(Color::Green),
        ),
        EventKind::SessionEnded {
            session_id,
            reason,
            used_ms,
            ..
        } => (
            format!(
                "session ended: {} {} {}",
                format::short_session(*session_id),
                reason.as_str(),
                format::duration_ms(*used_ms)
            ),
            plain,
        ),
        EventKind::DeviceAvailability {
            availability: Availability::Online,
        } => ("device online".to_owned(), Style::new().fg(Color::Green)),
        EventKind::DeviceAvailability {
            availability: Availability::Offline,
        } => ("device offline".to_owned(), Style::new().fg(Color::Red)),
        EventKind::CommandFailed { action, detail, .. } => (
            format!("{action} failed: {detail}"),
            Style::new().fg(Color::Red),
        ),
        EventKind::CommandExpired {
            action, attempts, ..
        } => (
            format!("{action} never acknowledged ({attempts} attempts)"),
            Style::new().fg(Color::Red),
        ),
    }
}
