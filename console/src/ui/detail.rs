//! The device detail (Enter on a device): status, current session with a time-left gauge,
//! sparklines of load and heartbeat interval, recent scans with their decisions and recent
//! commands with their acks.

use mujin_protocol::message::ProgramStatus;
use mujin_protocol::{DeviceId, StoreId};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, LineGauge, Paragraph, Sparkline};
use ratatui::Frame;

use crate::app::alerts::{skew_text, MAX_SKEW, STOP_ACK_TIMEOUT};
use crate::app::{App, CommandRecord, DeviceRow, Pane, ScanOutcome, ScanRecord};
use crate::ui::store::status_style;
use crate::ui::{format, pane_block, placeholder};

pub fn view(app: &App, frame: &mut Frame, area: Rect) {
    let Some((store, device, row)) = app.selected_device() else {
        let block = pane_block(app, " device ".to_owned(), false);
        placeholder(
            frame,
            area,
            block,
            "no device selected: pick one in the store view (2)",
        );
        return;
    };
    let [info_area, sparks_area, lists_area] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Min(3),
    ])
    .areas(area);
    info(app, (store, device, row), frame, info_area);
    let [load_area, beat_area] =
        Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).areas(sparks_area);
    load_sparkline(row, frame, load_area);
    heartbeat_sparkline(row, frame, beat_area);
    let [scans_area, commands_area] =
        Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).areas(lists_area);
    scans(app, row, frame, scans_area);
    commands(app, row, frame, commands_area);
}

fn info(app: &App, ids: (&StoreId, &DeviceId, &DeviceRow), frame: &mut Frame, area: Rect) {
    let (store, device, row) = ids;
    let block = pane_block(app, format!(" {store} / {device} · Esc back "), false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [status_line, session_line, gauge_line] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(inner);
    let status = row.status();
    let seen = row.last_seen.map_or_else(
        || "never heard from".to_owned(),
        |at| format!("last heartbeat {} ago", format::age(app.now - at)),
    );
    let skew = match row.skew() {
        None => Span::raw("clock skew —"),
        Some(skew) if skew.abs() > MAX_SKEW => Span::styled(
            format!("clock skew {} (> 2 s)", skew_text(skew)),
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        ),
        Some(skew) => Span::raw(format!("clock skew {}", skew_text(skew))),
    };
    let line = Line::from(vec![
        Span::styled(status.as_str(), status_style(status)),
        Span::raw(format!(" · {seen} · ")),
        skew,
    ]);
    frame.render_widget(Paragraph::new(line), status_line);
    let ProgramStatus::Running {
        session_id,
        started_at,
        lease_until,
        ..
    } = &row.program
    else {
        frame.render_widget(Paragraph::new("no session"), session_line);
        return;
    };
    let text = format!(
        "session {} · started {} · ends {} · {} left",
        format::short_session(*session_id),
        format::clock(*started_at, app.utc_offset),
        format::clock(*lease_until, app.utc_offset),
        format::countdown(app.time_left(*lease_until))
    );
    frame.render_widget(Paragraph::new(text), session_line);
    let gauge = LineGauge::default()
        .ratio(format::fraction_left(*started_at, *lease_until, app.now))
        .label("time left ")
        .filled_symbol(symbols::line::THICK_HORIZONTAL)
        .filled_style(Style::new().fg(Color::Green))
        .unfilled_style(Style::new().fg(Color::DarkGray));
    frame.render_widget(gauge, gauge_line);
}

fn load_sparkline(row: &DeviceRow, frame: &mut Frame, area: Rect) {
    // Hundredths, so that loads below 1 still draw.
    let data: Vec<u64> = row
        .telemetry
        .iter()
        .map(|sample| sample.load.map_or(0, |load| (load.max(0.0) * 100.0) as u64))
        .collect();
    let latest = row
        .telemetry
        .back()
        .and_then(|sample| sample.load)
        .map_or_else(|| "—".to_owned(), |load| format!("{load:.2}"));
    let block = Block::bordered().title(format!(" load {latest} "));
    let sparkline = Sparkline::default()
        .data(&data)
        .style(Style::new().fg(Color::Cyan))
        .block(block);
    frame.render_widget(sparkline, area);
}

fn heartbeat_sparkline(row: &DeviceRow, frame: &mut Frame, area: Rect) {
    let received: Vec<_> = row.telemetry.iter().map(|s| s.received_at).collect();
    let data: Vec<u64> = received
        .windows(2)
        .map(|pair| u64::try_from((pair[1] - pair[0]).num_milliseconds()).unwrap_or(0))
        .collect();
    let latest = data.last().map_or_else(
        || "—".to_owned(),
        |ms| format!("{:.1}s", *ms as f64 / 1000.0),
    );
    let block = Block::bordered().title(format!(" heartbeat every {latest} "));
    let sparkline = Sparkline::default()
        .data(&data)
        .style(Style::new().fg(Color::Magenta))
        .block(block);
    frame.render_widget(sparkline, area);
}

fn scans(app: &App, row: &DeviceRow, frame: &mut Frame, area: Rect) {
    let focused = app.pane == Pane::Main;
    let block = pane_block(app, " recent scans (Tab) ".to_owned(), focused);
    let skip = if focused { app.scroll } else { 0 };
    let lines: Vec<Line> = row
        .scans
        .iter()
        .rev()
        .skip(skip)
        .map(|scan| scan_line(app, scan))
        .collect();
    if lines.is_empty() {
        placeholder(frame, area, block, "no scans seen");
        return;
    }
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn scan_line(app: &App, scan: &ScanRecord) -> Line<'static> {
    let at = Span::styled(
        format!("{} ", format::clock(scan.at, app.utc_offset)),
        Style::new().fg(Color::Gray),
    );
    let outcome = match &scan.outcome {
        ScanOutcome::Accepted { session_id } => Span::styled(
            format!("accepted {}", format::short_session(*session_id)),
            Style::new().fg(Color::Green),
        ),
        ScanOutcome::Rejected { reason, detail } if detail.is_empty() => {
            Span::styled(format!("rejected {reason}"), Style::new().fg(Color::Yellow))
        }
        ScanOutcome::Rejected { reason, detail } => Span::styled(
            format!("rejected {reason}: {detail}"),
            Style::new().fg(Color::Yellow),
        ),
    };
    Line::from(vec![at, outcome])
}

fn commands(app: &App, row: &DeviceRow, frame: &mut Frame, area: Rect) {
    let focused = app.pane == Pane::Side;
    let block = pane_block(app, " recent commands ".to_owned(), focused);
    let skip = if focused { app.scroll } else { 0 };
    let lines: Vec<Line> = row
        .commands
        .iter()
        .rev()
        .skip(skip)
        .map(|record| command_line(app, record))
        .collect();
    if lines.is_empty() {
        placeholder(frame, area, block, "no commands seen");
        return;
    }
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn command_line(app: &App, record: &CommandRecord) -> Line<'static> {
    let at = Span::styled(
        format!("{} ", format::clock(record.seen_at, app.utc_offset)),
        Style::new().fg(Color::Gray),
    );
    let action = Span::raw(format!("{:<6} ", record.command.action.name()));
    let answer = match &record.ack {
        Some(ack) if ack.ok => Span::styled("ok", Style::new().fg(Color::Green)),
        Some(ack) => Span::styled(
            format!("failed: {}", ack.detail),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
        None => {
            let waiting = app.now - record.seen_at;
            let style = if record.is_stop() && waiting > STOP_ACK_TIMEOUT {
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
            } else {
                Style::new().fg(Color::Yellow)
            };
            Span::styled(format!("no ack yet {}", format::age(waiting)), style)
        }
    };
    Line::from(vec![at, action, answer])
}
