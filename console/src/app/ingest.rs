//! How each decoded MQTT message changes the state: device rows, sessions, the event tail,
//! and then the alerts of the device it concerns.

use chrono::{DateTime, Utc};
use mujin_protocol::message::{
    self, Ack, Availability, Command, DesiredProgram, DesiredState, EventKind, ProgramStatus,
    ReportedState, Telemetry,
};
use mujin_protocol::{DeviceId, SessionId, StoreId};

use super::model::{
    push_bounded, CommandRecord, DeviceRow, EventRecord, ScanOutcome, ScanRecord, SessionEnd,
    SessionRecord, TelemetrySample, DEVICE_HISTORY, TELEMETRY_HISTORY,
};
use super::{alerts, App, EVENT_HISTORY, SESSION_HISTORY};
use crate::event::{Incoming, MqttMessage};

pub fn on_message(app: &mut App, message: MqttMessage) {
    let received_at = message.received_at;
    let (store, device) = match message.incoming {
        Incoming::State {
            store,
            device,
            state,
            retained,
        } => {
            on_state(
                app.device_mut(&store, &device),
                state,
                retained,
                received_at,
            );
            (store, device)
        }
        Incoming::Telemetry {
            store,
            device,
            telemetry,
        } => {
            on_telemetry(app.device_mut(&store, &device), telemetry, received_at);
            (store, device)
        }
        Incoming::Command {
            store,
            device,
            command,
        } => {
            on_command(app.device_mut(&store, &device), command, received_at);
            (store, device)
        }
        Incoming::Ack { store, device, ack } => {
            on_ack(app.device_mut(&store, &device), ack);
            (store, device)
        }
        Incoming::Desired {
            store,
            device,
            desired,
        } => {
            on_desired(app.device_mut(&store, &device), &desired);
            (store, device)
        }
        Incoming::StoreEvent(event) => {
            let Some(key) = on_store_event(app, event, received_at) else {
                return;
            };
            key
        }
        // Handled by `update` before it gets here.
        Incoming::Reply(_) => return,
        Incoming::Malformed { .. } => {
            app.malformed += 1;
            return;
        }
    };
    alerts::refresh(app, &(store, device), received_at.max(app.now));
}

fn on_state(row: &mut DeviceRow, state: ReportedState, retained: bool, received_at: DateTime<Utc>) {
    row.availability = Some(state.availability);
    if state.availability == Availability::Offline {
        // The last will knows nothing about the program: keep the session we knew of (the
        // device's own lease still ends it) and do not count the broker's words as a sighting.
        return;
    }
    row.program = state.program;
    // A retained copy replayed on subscribe may be old: trust only the time it was written.
    row.last_seen = if retained {
        state.at.or(row.last_seen)
    } else {
        Some(received_at)
    };
}

/// Management's current view of the device: the session it runs, or none.
fn on_desired(row: &mut DeviceRow, desired: &DesiredState) {
    row.event_session = match desired.program {
        DesiredProgram::Running { session_id, .. } => Some(session_id),
        DesiredProgram::Idle => None,
    };
}

fn on_telemetry(row: &mut DeviceRow, telemetry: Telemetry, received_at: DateTime<Utc>) {
    // Telemetry only flows from a connected agent.
    row.availability = Some(Availability::Online);
    row.program = telemetry.program;
    row.last_seen = Some(received_at);
    let sample = TelemetrySample {
        received_at,
        device_at: telemetry.at,
        load: telemetry.load,
    };
    push_bounded(&mut row.telemetry, sample, TELEMETRY_HISTORY);
}

fn on_command(row: &mut DeviceRow, command: Command, received_at: DateTime<Utc>) {
    // QoS 1 may deliver the same command twice.
    if row
        .commands
        .iter()
        .any(|record| record.command.command_id == command.command_id)
    {
        return;
    }
    let record = CommandRecord {
        command,
        seen_at: received_at,
        ack: None,
    };
    push_bounded(&mut row.commands, record, DEVICE_HISTORY);
}

fn on_ack(row: &mut DeviceRow, ack: Ack) {
    // An ack for a command sent before the console started has nothing to attach to.
    if let Some(record) = row
        .commands
        .iter_mut()
        .rev()
        .find(|record| record.command.command_id == ack.command_id)
    {
        record.ack = Some(ack);
    }
}

/// Records a store event; returns the device it concerns, if any.
fn on_store_event(
    app: &mut App,
    event: message::Event,
    received_at: DateTime<Utc>,
) -> Option<(StoreId, DeviceId)> {
    record_session(app, &event);
    super::bookings::on_event(app, &event);
    let key = event
        .device
        .clone()
        .map(|device| (event.store.clone(), device));
    if let Some((store, device)) = &key {
        on_device_event(app.device_mut(store, device), &event, received_at);
    } else {
        app.stores.entry(event.store.clone()).or_default();
    }
    let seq = app.next_event_seq;
    app.next_event_seq += 1;
    let search_text = search_text(&event);
    let record = EventRecord {
        seq,
        event,
        search_text,
    };
    push_bounded(&mut app.events, record, EVENT_HISTORY);
    key
}

fn on_device_event(row: &mut DeviceRow, event: &message::Event, received_at: DateTime<Utc>) {
    match &event.kind {
        EventKind::SessionStarted {
            session_id,
            lease_until,
            ..
        } => {
            row.program = ProgramStatus::Running {
                session_id: *session_id,
                started_at: event.at,
                lease_until: *lease_until,
                provisional: false,
            };
            row.event_session = Some(*session_id);
        }
        EventKind::SessionEnded { session_id, .. } => {
            if row
                .session()
                .is_some_and(|(current, _)| current == *session_id)
            {
                row.program = ProgramStatus::Idle;
            }
            if row.event_session == Some(*session_id) {
                row.event_session = None;
            }
        }
        EventKind::SessionExtended {
            session_id,
            lease_until,
            ..
        } => extend_lease(row, *session_id, *lease_until),
        EventKind::DeviceAvailability { availability, .. } => {
            row.availability = Some(*availability);
        }
        EventKind::DeviceService { in_service, .. } => {
            row.out_of_service = !in_service;
            row.service_known = true;
        }
        EventKind::ScanAccepted { session_id, .. } => {
            let outcome = ScanOutcome::Accepted {
                session_id: *session_id,
            };
            push_scan(row, event.at, outcome);
        }
        EventKind::ScanRejected { reason, detail, .. } => {
            let outcome = ScanOutcome::Rejected {
                reason: *reason,
                detail: detail.clone(),
            };
            push_scan(row, event.at, outcome);
            row.rejections.push_back(received_at);
        }
        EventKind::ReservationCreated { .. }
        | EventKind::ReservationNoShow { .. }
        | EventKind::SessionWarned { .. }
        | EventKind::SessionConflict { .. }
        | EventKind::ClockSkew { .. }
        | EventKind::CommandFailed { .. }
        | EventKind::CommandExpired { .. }
        | EventKind::OperatorAction { .. }
        | EventKind::DeviceMessageRefused { .. } => {}
    }
}

fn extend_lease(row: &mut DeviceRow, session_id: SessionId, new_end: DateTime<Utc>) {
    if let ProgramStatus::Running {
        session_id: current,
        lease_until,
        ..
    } = &mut row.program
    {
        if *current == session_id {
            *lease_until = new_end;
        }
    }
}

fn push_scan(row: &mut DeviceRow, at: DateTime<Utc>, outcome: ScanOutcome) {
    push_bounded(&mut row.scans, ScanRecord { at, outcome }, DEVICE_HISTORY);
}

/// Keeps the session list and the store counters of the overview.
fn record_session(app: &mut App, event: &message::Event) {
    match &event.kind {
        EventKind::SessionStarted {
            session_id,
            lease_until,
            ..
        } => session_started(app, event, *session_id, *lease_until),
        EventKind::SessionEnded {
            session_id,
            started_at,
            ended_at,
            reason,
            used_ms,
        } => {
            let end = SessionEnd {
                ended_at: *ended_at,
                reason: *reason,
                used_ms: *used_ms,
            };
            session_ended(app, event, *session_id, *started_at, end);
        }
        EventKind::SessionExtended {
            session_id,
            lease_until,
            ..
        } => {
            if let Some(session) = find_session(app, *session_id) {
                session.lease_until = Some(*lease_until);
            }
        }
        _ => {}
    }
}

fn find_session(app: &mut App, session_id: SessionId) -> Option<&mut SessionRecord> {
    app.sessions
        .iter_mut()
        .rev()
        .find(|session| session.session_id == session_id)
}

fn session_started(
    app: &mut App,
    event: &message::Event,
    session_id: SessionId,
    lease_until: DateTime<Utc>,
) {
    // QoS 1 may deliver an event twice; count it once.
    if find_session(app, session_id).is_some() {
        return;
    }
    let day = event.at.with_timezone(&app.utc_offset).date_naive();
    let store = app.stores.entry(event.store.clone()).or_default();
    *store.sessions_by_day.entry(day).or_default() += 1;
    let record = SessionRecord {
        session_id,
        store: event.store.clone(),
        device: event.device.clone(),
        started_at: event.at,
        lease_until: Some(lease_until),
        ended: None,
    };
    push_bounded(&mut app.sessions, record, SESSION_HISTORY);
}

fn session_ended(
    app: &mut App,
    event: &message::Event,
    session_id: SessionId,
    started_at: DateTime<Utc>,
    end: SessionEnd,
) {
    let used_ms = end.used_ms;
    match find_session(app, session_id) {
        Some(session) if session.ended.is_some() => return,
        Some(session) => session.ended = Some(end),
        // Started before the console did.
        None => {
            let record = SessionRecord {
                session_id,
                store: event.store.clone(),
                device: event.device.clone(),
                started_at,
                lease_until: None,
                ended: Some(end),
            };
            push_bounded(&mut app.sessions, record, SESSION_HISTORY);
        }
    }
    let store = app.stores.entry(event.store.clone()).or_default();
    store.used_ms = store.used_ms.saturating_add(used_ms);
}

/// The kind's wire name, e.g. `scan_rejected`.
pub fn kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::ReservationCreated { .. } => "reservation_created",
        EventKind::ScanAccepted { .. } => "scan_accepted",
        EventKind::ScanRejected { .. } => "scan_rejected",
        EventKind::SessionStarted { .. } => "session_started",
        EventKind::SessionEnded { .. } => "session_ended",
        EventKind::CommandFailed { .. } => "command_failed",
        EventKind::CommandExpired { .. } => "command_expired",
        EventKind::DeviceAvailability { .. } => "device_availability",
        EventKind::SessionWarned { .. } => "session_warned",
        EventKind::SessionExtended { .. } => "session_extended",
        EventKind::SessionConflict { .. } => "session_conflict",
        EventKind::ReservationNoShow { .. } => "reservation_no_show",
        EventKind::DeviceService { .. } => "device_service",
        EventKind::ClockSkew { .. } => "clock_skew",
        EventKind::OperatorAction { .. } => "operator_action",
        EventKind::DeviceMessageRefused { .. } => "device_message_refused",
    }
}

/// What the text filter searches: kind, reason, detail and ids, lower case.
pub(super) fn search_text(event: &message::Event) -> String {
    let device = event.device.as_ref().map_or("", |device| device.as_str());
    let details = match &event.kind {
        EventKind::ScanRejected { reason, detail, .. } => format!("{reason} {detail}"),
        EventKind::ScanAccepted { session_id, .. }
        | EventKind::SessionStarted { session_id, .. }
        | EventKind::SessionWarned { session_id, .. }
        | EventKind::SessionExtended { session_id, .. } => session_id.to_string(),
        EventKind::SessionConflict { session_id, detail } => format!("{session_id} {detail}"),
        EventKind::ReservationNoShow { ticket_id, .. } => ticket_id.to_string(),
        EventKind::DeviceService { in_service, .. } => match in_service {
            true => "in service".to_owned(),
            false => "out of service".to_owned(),
        },
        EventKind::ClockSkew { skew_ms } => format!("skew {skew_ms}"),
        EventKind::SessionEnded {
            session_id, reason, ..
        } => format!("{session_id} {}", reason.as_str()),
        EventKind::CommandFailed {
            session_id,
            action,
            detail,
            ..
        } => format!("{session_id} {action} {detail}"),
        EventKind::CommandExpired {
            session_id, action, ..
        } => format!("{session_id} {action}"),
        EventKind::DeviceAvailability { availability, .. } => match availability {
            Availability::Online => "online".to_owned(),
            Availability::Offline => "offline".to_owned(),
        },
        EventKind::ReservationCreated { ticket_id, .. } => ticket_id.to_string(),
        EventKind::OperatorAction {
            operator,
            action,
            detail,
            ..
        } => format!("{operator} {action} {detail}"),
        EventKind::DeviceMessageRefused { channel, detail } => format!("{channel} {detail}"),
    };
    format!(
        "{} {device} {} {details}",
        event.store,
        kind_name(&event.kind)
    )
    .to_lowercase()
}
