//! What the console remembers about stores, devices, sessions and events: plain data, filled
//! by `ingest` and read by the views.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use mujin_protocol::message::{
    self, Ack, Availability, Command, CommandAction, EndReason, ProgramStatus, RejectReason,
};
use mujin_protocol::{DeviceId, SessionId, StoreId};

/// Telemetry samples kept per device (for the sparklines).
pub const TELEMETRY_HISTORY: usize = 60;
/// Scans and commands kept per device.
pub const DEVICE_HISTORY: usize = 12;

/// A device's key within the console: (store, device).
pub type DeviceKey = (StoreId, DeviceId);

/// One store: its devices and the counters the overview shows.
#[derive(Debug, Clone, Default)]
pub struct Store {
    pub devices: BTreeMap<DeviceId, DeviceRow>,
    /// Sessions started per day (operator's time zone), from the events seen.
    pub sessions_by_day: BTreeMap<NaiveDate, u32>,
    /// Sum of `used_ms` of the `session_ended` events seen since the console started.
    pub used_ms: u64,
}

/// One telemetry report as received.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySample {
    /// The operator's clock when it arrived.
    pub received_at: DateTime<Utc>,
    /// The device's wall clock when it was sent.
    pub device_at: DateTime<Utc>,
    pub load: Option<f64>,
}

impl TelemetrySample {
    /// How far the device's clock is ahead (positive) or behind (negative) the console's,
    /// network delay included.
    pub fn skew(&self) -> TimeDelta {
        self.device_at - self.received_at
    }
}

/// A scan's outcome, from the store events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanOutcome {
    Accepted {
        session_id: SessionId,
    },
    Rejected {
        reason: RejectReason,
        detail: String,
    },
}

/// One scan of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRecord {
    pub at: DateTime<Utc>,
    pub outcome: ScanOutcome,
}

/// A command seen on a device's `command` topic and its ack, once seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    pub command: Command,
    /// The operator's clock when the command was seen.
    pub seen_at: DateTime<Utc>,
    pub ack: Option<Ack>,
}

impl CommandRecord {
    pub fn is_stop(&self) -> bool {
        matches!(self.command.action, CommandAction::Stop { .. })
    }

    pub fn is_start(&self) -> bool {
        matches!(self.command.action, CommandAction::Start { .. })
    }
}

/// What the console knows about one device.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceRow {
    /// `None` until the device's state (or an availability event) says it.
    pub availability: Option<Availability>,
    pub program: ProgramStatus,
    /// The operator's clock when the device itself was last heard from.
    pub last_seen: Option<DateTime<Utc>>,
    /// Taken out of service (from `device_service` events).
    pub out_of_service: bool,
    /// A `device_service` event was seen, so `out_of_service` is known rather than assumed.
    pub service_known: bool,
    /// The session management says is running here (from `session_started`/`ended` events).
    pub event_session: Option<SessionId>,
    /// Newest last.
    pub telemetry: VecDeque<TelemetrySample>,
    /// Newest last.
    pub scans: VecDeque<ScanRecord>,
    /// Newest last.
    pub commands: VecDeque<CommandRecord>,
    /// When rejections were received (operator's clock), only those of the last minute.
    pub rejections: VecDeque<DateTime<Utc>>,
}

/// The one-word status of a device row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceStatus {
    Offline,
    Running,
    /// Idle and taken out of service by management.
    OutOfService,
    Idle,
    /// Known only from events; its agent has not reported yet.
    Unknown,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Unknown => "unknown",
            DeviceStatus::Idle => "idle",
            DeviceStatus::Running => "running",
            DeviceStatus::Offline => "offline",
            DeviceStatus::OutOfService => "out-svc",
        }
    }
}

impl DeviceRow {
    pub fn status(&self) -> DeviceStatus {
        match (self.availability, &self.program) {
            (Some(Availability::Offline), _) => DeviceStatus::Offline,
            (_, ProgramStatus::Running { .. }) => DeviceStatus::Running,
            _ if self.out_of_service => DeviceStatus::OutOfService,
            (Some(Availability::Online), ProgramStatus::Idle) => DeviceStatus::Idle,
            (None, ProgramStatus::Idle) => DeviceStatus::Unknown,
        }
    }

    /// The running session and its lease end, if any.
    pub fn session(&self) -> Option<(SessionId, DateTime<Utc>)> {
        match &self.program {
            ProgramStatus::Running {
                session_id,
                lease_until,
                ..
            } => Some((*session_id, *lease_until)),
            ProgramStatus::Idle => None,
        }
    }

    /// The clock skew of the latest telemetry.
    pub fn skew(&self) -> Option<TimeDelta> {
        self.telemetry.back().map(TelemetrySample::skew)
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    pub ended_at: DateTime<Utc>,
    pub reason: EndReason,
    pub used_ms: u64,
}

/// A session seen in the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub session_id: SessionId,
    pub store: StoreId,
    pub device: Option<DeviceId>,
    pub started_at: DateTime<Utc>,
    /// Unknown when only the end was seen.
    pub lease_until: Option<DateTime<Utc>>,
    pub ended: Option<SessionEnd>,
}

/// A store event with what the filters search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Arrival number, so a paused tail can hide what came later.
    pub seq: u64,
    pub event: message::Event,
    /// Lower-case kind name and essentials, computed once on arrival.
    pub search_text: String,
}

/// Pushes onto a bounded history, dropping the oldest.
pub fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, bound: usize) {
    while queue.len() >= bound {
        queue.pop_front();
    }
    queue.push_back(item);
}
