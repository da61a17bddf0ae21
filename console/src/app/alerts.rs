//! Alerts the console derives from what it sees. Each is a condition on one device that is
//! re-checked whenever that device changes (and on every tick for the time-based ones): an
//! alert opens when its condition starts to hold and closes when it stops holding.

use chrono::{DateTime, TimeDelta, Utc};
use mujin_protocol::message::Availability;

use super::model::{DeviceKey, DeviceRow};
use super::App;

/// A stop without an ack after this long is an alert.
pub const STOP_ACK_TIMEOUT: TimeDelta = TimeDelta::seconds(5);
/// A device clock further off than this is an alert.
pub const MAX_SKEW: TimeDelta = TimeDelta::seconds(2);
/// This many rejected scans on one device within `REJECTION_WINDOW` is an alert.
pub const REJECTION_BURST: usize = 3;
pub const REJECTION_WINDOW: TimeDelta = TimeDelta::seconds(60);

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertKind {
    /// The device is offline while a session (from the events) runs on it.
    OfflineInSession,
    /// The device's latest start command was answered with a failure.
    FailedStart,
    /// A stop command has had no ack for longer than `STOP_ACK_TIMEOUT`.
    StopNotAcked,
    /// The device's clock is off by more than `MAX_SKEW`.
    ClockSkew,
    /// At least `REJECTION_BURST` rejected scans within `REJECTION_WINDOW`.
    RejectionBurst,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::OfflineInSession => "offline in session",
            AlertKind::FailedStart => "start failed",
            AlertKind::StopNotAcked => "stop not acked",
            AlertKind::ClockSkew => "clock skew",
            AlertKind::RejectionBurst => "rejected scans",
        }
    }
}

/// An open alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// When the console first saw the condition hold.
    pub since: DateTime<Utc>,
    pub detail: String,
}

/// Key of an open alert: the device and what is wrong with it.
pub type AlertKey = (DeviceKey, AlertKind);

/// The conditions that hold for one device at `now`, with a short detail each.
pub fn conditions(row: &DeviceRow, now: DateTime<Utc>) -> Vec<(AlertKind, String)> {
    let mut found = Vec::new();
    if row.availability == Some(Availability::Offline) && row.event_session.is_some() {
        found.push((
            AlertKind::OfflineInSession,
            "device offline while its session runs".to_owned(),
        ));
    }
    let last_start = row.commands.iter().rev().find(|record| record.is_start());
    if let Some(ack) = last_start.and_then(|record| record.ack.as_ref()) {
        if !ack.ok {
            found.push((AlertKind::FailedStart, ack.detail.clone()));
        }
    }
    let unacked_stop = row
        .commands
        .iter()
        .find(|record| record.is_stop() && record.ack.is_none());
    if let Some(record) = unacked_stop {
        let waiting = now - record.seen_at;
        if waiting > STOP_ACK_TIMEOUT {
            found.push((
                AlertKind::StopNotAcked,
                format!("no ack for {}s", waiting.num_seconds()),
            ));
        }
    }
    if let Some(skew) = row.skew().filter(|skew| skew.abs() > MAX_SKEW) {
        found.push((
            AlertKind::ClockSkew,
            format!("device clock {}", skew_text(skew)),
        ));
    }
    let recent = row
        .rejections
        .iter()
        .filter(|at| now - **at <= REJECTION_WINDOW)
        .count();
    if recent >= REJECTION_BURST {
        found.push((
            AlertKind::RejectionBurst,
            format!("{recent} rejections within 60s"),
        ));
    }
    found
}

/// `+3.2s` / `-12.0s`: how far the device clock is ahead or behind.
pub fn skew_text(skew: TimeDelta) -> String {
    let seconds = skew.num_milliseconds() as f64 / 1000.0;
    format!("{seconds:+.1}s")
}

/// Whether a device needs re-checking as time passes even when nothing arrives.
pub fn is_time_sensitive(row: &DeviceRow) -> bool {
    !row.rejections.is_empty()
        || row
            .commands
            .iter()
            .any(|record| record.is_stop() && record.ack.is_none())
}

/// Re-checks one device's alerts at `now`: opens new ones, closes those that no longer hold.
pub fn refresh(app: &mut App, key: &DeviceKey, now: DateTime<Utc>) {
    let Some(row) = app
        .stores
        .get_mut(&key.0)
        .and_then(|store| store.devices.get_mut(&key.1))
    else {
        return;
    };
    // Rejections older than the window can never count again.
    while row
        .rejections
        .front()
        .is_some_and(|at| now - *at > REJECTION_WINDOW)
    {
        row.rejections.pop_front();
    }
    let holding = conditions(row, now);
    for kind in ALL_KINDS {
        let alert_key = (key.clone(), kind);
        match holding.iter().find(|(held, _)| *held == kind) {
            Some((_, detail)) => {
                let alert = app.alerts.entry(alert_key).or_insert_with(|| Alert {
                    since: now,
                    detail: String::new(),
                });
                alert.detail.clone_from(detail);
            }
            None => {
                app.alerts.remove(&alert_key);
            }
        }
    }
}

const ALL_KINDS: [AlertKind; 5] = [
    AlertKind::OfflineInSession,
    AlertKind::FailedStart,
    AlertKind::StopNotAcked,
    AlertKind::ClockSkew,
    AlertKind::RejectionBurst,
];

/// Re-checks the devices whose alerts depend on the passing of time.
pub fn refresh_timed(app: &mut App, now: DateTime<Utc>) {
    let due: Vec<DeviceKey> = app
        .stores
        .iter()
        .flat_map(|(store, entry)| {
            entry
                .devices
                .iter()
                .filter(|(_, row)| is_time_sensitive(row))
                .map(move |(device, _)| (store.clone(), device.clone()))
        })
        .collect();
    for key in due {
        refresh(app, &key, now);
    }
}
