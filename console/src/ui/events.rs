//! The events view: the live tail of store events, newest at the bottom, one line each;
//! filtered by store, device, kind and text, and paused with `p`.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use mujin_protocol::message::{self, Availability, EventKind};

use crate::app::{App, View};
use crate::ui::{filter_note, format, pane_block, placeholder};

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let mut title = format!(" events {}", filter_note(app, View::Events));
    if app.paused_at.is_some() {
        title.push_str(&format!("· PAUSED, {} new (p) ", app.unseen_while_paused()));
    } else {
        title.push_str("· live (p pauses) ");
    }
    let mut block = pane_block(app, title, false);
    if app.paused_at.is_some() {
        block = block.border_style(Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD));
    }
    let height = usize::from(block.inner(area).height);
    // Only the lines on screen are built, however long the history.
    let mut lines: Vec<Line> = app
        .visible_events()
        .skip(app.scroll)
        .take(height)
        .map(|record| event_line(app, &record.event, true))
        .collect();
    if lines.is_empty() {
        placeholder(
            frame,
            area,
            block,
            "no events (yet, or through this filter)",
        );
        return;
    }
    lines.reverse();
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// One event as a line: time, store (when asked), device and what happened.
pub fn event_line<'a>(app: &App, event: &'a message::Event, with_store: bool) -> Line<'a> {
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
    let clock = |at| format::clock(at, app.utc_offset);
    let plain = Style::new();
    let green = Style::new().fg(Color::Green);
    let yellow = Style::new().fg(Color::Yellow);
    let red = Style::new().fg(Color::Red);
    match kind {
        EventKind::ReservationCreated {
            not_before,
            not_after,
            ..
        } => (
            format!(
                "reservation created: {}–{}",
                clock(*not_before),
                clock(*not_after)
            ),
            plain,
        ),
        EventKind::ReservationNoShow {
            not_before,
            not_after,
            ..
        } => (
            format!("no-show: {}–{}", clock(*not_before), clock(*not_after)),
            yellow,
        ),
        EventKind::ScanAccepted { session_id, .. } => (
            format!(
                "scan accepted: session {}",
                format::short_session(*session_id)
            ),
            green,
        ),
        EventKind::ScanRejected { reason, detail, .. } if detail.is_empty() => {
            (format!("scan rejected: {reason}"), yellow)
        }
        EventKind::ScanRejected { reason, detail, .. } => {
            (format!("scan rejected: {reason} ({detail})"), yellow)
        }
        EventKind::CommandFailed { action, detail, .. } => {
            (format!("{action} failed: {detail}"), red)
        }
        EventKind::CommandExpired {
            action, attempts, ..
        } => (
            format!("{action} never acknowledged ({attempts} attempts)"),
            red,
        ),
        _ => describe_session(app, kind),
    }
}

/// Session events.
fn describe_session(app: &App, kind: &EventKind) -> (String, Style) {
    let clock = |at| format::clock(at, app.utc_offset);
    let short = |session_id| format::short_session(session_id);
    match kind {
        EventKind::SessionStarted {
            session_id,
            lease_until,
            ..
        } => (
            format!(
                "session started: {} until {}",
                short(*session_id),
                clock(*lease_until)
            ),
            Style::new().fg(Color::Green),
        ),
        EventKind::SessionWarned {
            session_id,
            lease_until,
        } => (
            format!(
                "session warned: {} ends {}",
                short(*session_id),
                clock(*lease_until)
            ),
            Style::new().fg(Color::Yellow),
        ),
        EventKind::SessionExtended {
            session_id,
            lease_until,
            ..
        } => (
            format!(
                "session extended: {} until {}",
                short(*session_id),
                clock(*lease_until)
            ),
            Style::new().fg(Color::Cyan),
        ),
        EventKind::SessionEnded {
            session_id,
            reason,
            used_ms,
            ..
        } => (
            format!(
                "session ended: {} {} {}",
                short(*session_id),
                reason.as_str(),
                format::duration_ms(*used_ms)
            ),
            Style::new(),
        ),
        EventKind::SessionConflict { session_id, detail } => (
            format!("session conflict: {} {detail}", short(*session_id)),
            Style::new().fg(Color::Red),
        ),
        _ => describe_device(kind),
    }
}

/// Device events.
fn describe_device(kind: &EventKind) -> (String, Style) {
    let short = |session_id| format::short_session(session_id);
    let red = Style::new().fg(Color::Red);
    let yellow = Style::new().fg(Color::Yellow);
    match kind {
        EventKind::DeviceService {
            in_service: true, ..
        } => ("back in service".to_owned(), Style::new().fg(Color::Green)),
        EventKind::DeviceService {
            affected_tickets, ..
        } => (
            format!("out of service ({} bookings ahead)", affected_tickets.len()),
            yellow,
        ),
        EventKind::ClockSkew { skew_ms } => (
            format!("clock skew {:+.1}s (management)", *skew_ms as f64 / 1000.0),
            yellow,
        ),
        EventKind::DeviceAvailability {
            availability: Availability::Online,
            ..
        } => ("device online".to_owned(), Style::new().fg(Color::Green)),
        EventKind::DeviceAvailability {
            session_id: Some(session_id),
            ..
        } => (
            format!("device offline during session {}", short(*session_id)),
            red.add_modifier(Modifier::BOLD),
        ),
        EventKind::DeviceAvailability { .. } => ("device offline".to_owned(), red),
        EventKind::OperatorAction {
            operator,
            action,
            ok: true,
            ..
        } => (
            format!("{operator}: {action}"),
            Style::new().fg(Color::Blue),
        ),
        EventKind::OperatorAction {
            operator,
            action,
            detail,
            ..
        } => {
            let why = detail.strip_prefix("refused: ").unwrap_or(detail);
            (format!("{operator}: {action} refused: {why}"), yellow)
        }
        // Listed by `describe`.
        _ => (String::new(), Style::new()),
    }
}
