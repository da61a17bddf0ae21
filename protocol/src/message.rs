//! The JSON payloads carried on the topics of [`crate::topic`], and the one place they are
//! turned into bytes and back ([`encode`], [`decode`]).
//!
//! Times are RFC 3339 in UTC. New fields are added with `#[serde(default)]` so older peers keep
//! parsing newer messages.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::{
    CommandId, DeviceId, OperatorId, RequestId, ScanId, SessionId, StoreId, TicketId,
};
use crate::signed::Signature;
use crate::snapshot::{SnapshotPage, SnapshotPart};

/// Largest payload any mujin part accepts; anything bigger is refused unread.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("payload is not valid: {0}")]
    Malformed(String),
}

/// Encodes a message as its JSON bytes.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing these plain structs to a Vec cannot fail (no maps with non-string keys).
    serde_json::to_vec(message).unwrap_or_default()
}

/// Decodes a message, refusing oversized and malformed payloads with a specific error.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    serde_json::from_slice(payload).map_err(|err| DecodeError::Malformed(err.to_string()))
}

/// A ticket read by a device's scanner. `scan_id` is fresh per reading; a redelivery of the
/// same message keeps it, which is how management answers each reading once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Scan {
    pub scan_id: ScanId,
    /// The text exactly as the scanner produced it.
    pub ticket: String,
    pub read_at: DateTime<Utc>,
    /// Set when the device did not hear from management in time and started a provisional
    /// session on its own check of the ticket (see [`crate::trust`]); management records it,
    /// or refuses it and the device stops the program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline: Option<OfflineStart>,
    /// When the device sent this copy (set again on every resend): management refuses a scan
    /// sent more than [`crate::device_auth::DEVICE_MAX_SKEW`] from its own clock, so a
    /// captured scan replayed later has no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// The device's signature (see [`crate::device_auth`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// A provisional session a device started while management did not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OfflineStart {
    /// Chosen by the device; management adopts it when it accepts the scan.
    pub session_id: SessionId,
    /// The device's clock when the program started.
    pub started_at: DateTime<Utc>,
    /// The ticket's end, which the device enforces.
    pub lease_until: DateTime<Utc>,
}

/// Management's answer to one scan, shown to the customer by the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ScanResult {
    pub scan_id: ScanId,
    #[serde(flatten)]
    pub decision: Decision,
}

/// The outcome of a scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Accepted {
        session_id: SessionId,
        ticket_id: TicketId,
        lease_until: DateTime<Utc>,
    },
    Rejected {
        reason: RejectReason,
        /// Human-readable detail for logs and operators (never secrets).
        #[serde(default)]
        detail: String,
    },
}

/// Why a scan was refused. Each reason has its own message for the customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The scan payload itself could not be read.
    MalformedScan,
    /// The scanned text is not a mujin ticket or is damaged.
    MalformedTicket,
    UnknownKey,
    BadSignature,
    WrongStore,
    WrongDevice,
    TooEarly,
    Expired,
    /// Correctly signed, but management has no such reservation.
    UnknownTicket,
    Cancelled,
    AlreadyUsed,
    UnknownDevice,
    OutOfService,
    DeviceBusy,
    /// The device sent more scans than management takes from one device (a burst of 10, then
    /// one a second); this scan was not looked at.
    TooManyScans,
    /// The scan is not signed with the device's own key (see [`crate::device_auth`]): another
    /// client published it in this device's name.
    Unauthenticated,
    /// The scan was sent more than [`crate::device_auth::DEVICE_MAX_SKEW`] from management's
    /// clock: a replay of a captured scan, or a device whose clock is wrong.
    StaleScan,
    /// The ticket is signed with a ticket key that was revoked.
    RevokedKey,
}

impl RejectReason {
    pub const ALL: [RejectReason; 18] = [
        RejectReason::MalformedScan,
        RejectReason::MalformedTicket,
        RejectReason::UnknownKey,
        RejectReason::BadSignature,
        RejectReason::WrongStore,
        RejectReason::WrongDevice,
        RejectReason::TooEarly,
        RejectReason::Expired,
        RejectReason::UnknownTicket,
        RejectReason::Cancelled,
        RejectReason::AlreadyUsed,
        RejectReason::UnknownDevice,
        RejectReason::OutOfService,
        RejectReason::DeviceBusy,
        RejectReason::TooManyScans,
        RejectReason::Unauthenticated,
        RejectReason::StaleScan,
        RejectReason::RevokedKey,
    ];

    /// The wire name, e.g. `too_early`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedScan => "malformed_scan",
            RejectReason::MalformedTicket => "malformed_ticket",
            RejectReason::UnknownKey => "unknown_key",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::WrongStore => "wrong_store",
            RejectReason::WrongDevice => "wrong_device",
            RejectReason::TooEarly => "too_early",
            RejectReason::Expired => "expired",
            RejectReason::UnknownTicket => "unknown_ticket",
            RejectReason::Cancelled => "cancelled",
            RejectReason::AlreadyUsed => "already_used",
            RejectReason::UnknownDevice => "unknown_device",
            RejectReason::OutOfService => "out_of_service",
            RejectReason::DeviceBusy => "device_busy",
            RejectReason::TooManyScans => "too_many_scans",
            RejectReason::Unauthenticated => "unauthenticated",
            RejectReason::StaleScan => "stale_scan",
            RejectReason::RevokedKey => "revoked_key",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == text)
    }

    /// What the device tells the customer.
    pub fn customer_message(self) -> &'static str {
        match self {
            RejectReason::MalformedScan | RejectReason::MalformedTicket => {
                "This code could not be read as a ticket. Please scan it again."
            }
            RejectReason::UnknownKey | RejectReason::BadSignature => "This ticket is not genuine.",
            RejectReason::WrongStore => "This ticket is for another store.",
            RejectReason::WrongDevice => "This ticket is for another device.",
            RejectReason::TooEarly => "Too early: your booking has not started yet.",
            RejectReason::Expired => "This ticket has expired.",
            RejectReason::UnknownTicket => "This ticket has no booking.",
            RejectReason::Cancelled => "This booking was cancelled.",
            RejectReason::AlreadyUsed => "This ticket has already been used.",
            RejectReason::UnknownDevice => "This device is not registered.",
            RejectReason::OutOfService => "This device is out of service.",
            RejectReason::DeviceBusy => "This device is in use.",
            RejectReason::TooManyScans => "Too many scans: please wait a moment and scan again.",
            RejectReason::Unauthenticated | RejectReason::StaleScan => {
                "This device could not be verified. Please ask for help."
            }
            RejectReason::RevokedKey => "This ticket is no longer valid.",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the device's operating program is doing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ProgramStatus {
    #[default]
    Idle,
    Running {
        session_id: SessionId,
        started_at: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        /// Started offline and not yet confirmed by management (its scan is still unanswered).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        provisional: bool,
    },
}

/// How the last program run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProgramExit {
    pub session_id: SessionId,
    pub stopped_by: StopCause,
    /// e.g. `exit code 0`, `signal 15 (SIGTERM)`.
    pub exit: String,
    pub at: DateTime<Utc>,
}

/// Who ended a program run, from the device's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    /// A stop command from management.
    Command,
    /// The device's own lease ran out before any stop command arrived.
    LeaseExpired,
    /// The program ended by itself.
    ProgramExited,
    /// The agent was shut down.
    AgentShutdown,
    /// Management's desired state says the device should not run this session.
    DesiredState,
    /// Management refused the scan of a session the device had started offline.
    Refused,
}

/// Whether the agent is connected. The retained state's last will says `offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    Online,
    Offline,
}

/// The device's reported state, retained on its `state` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReportedState {
    pub availability: Availability,
    #[serde(default)]
    pub program: ProgramStatus,
    #[serde(default)]
    pub last_exit: Option<ProgramExit>,
    /// When the agent wrote this state; absent in the last will (written at connect time).
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    /// The device's signature (see [`crate::device_auth`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

impl ReportedState {
    /// The last-will payload: offline, nothing else known.
    pub fn offline() -> Self {
        Self {
            availability: Availability::Offline,
            program: ProgramStatus::Idle,
            last_exit: None,
            at: None,
            signature: None,
        }
    }
}

/// Periodic health report (QoS 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Telemetry {
    /// The device's wall clock when it sent this.
    pub at: DateTime<Utc>,
    pub uptime_ms: u64,
    /// One-minute load average, where the platform has one.
    #[serde(default)]
    pub load: Option<f64>,
    #[serde(default)]
    pub program: ProgramStatus,
    /// How often the device sends telemetry, in milliseconds: management takes the device
    /// offline when one and a half of these pass without any. Absent (older agents), management
    /// learns the rhythm from the reports themselves, starting from 2 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// The device's signature (see [`crate::device_auth`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// A command from management to one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Command {
    pub command_id: CommandId,
    pub issued_at: DateTime<Utc>,
    /// The device's command epoch when issued. Management raises it with every command for the
    /// device; an agent ignores a command older than the newest epoch it has seen, so a late
    /// start can never revive a stopped session.
    #[serde(default)]
    pub epoch: u64,
    /// The store of the device the command is for (absent from older managements).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreId>,
    /// The device the command is for: a device that verifies commands refuses one for another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// After this a device that verifies commands refuses it, so a captured command cannot be
    /// replayed much later. Each resend carries a fresh one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub action: CommandAction,
    /// Management's signature (see [`crate::signed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// What a command asks the device to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum CommandAction {
    /// Start the operating program for a session and stop it by itself at `lease_until`.
    Start {
        session_id: SessionId,
        lease_until: DateTime<Utc>,
        /// Time left when issued, for devices whose wall clock cannot be trusted.
        remaining_ms: u64,
    },
    /// Stop the program of this session now.
    Stop {
        session_id: SessionId,
        reason: EndReason,
    },
    /// Tell the customer the session ends soon (shown on the device).
    Warn {
        session_id: SessionId,
        lease_until: DateTime<Utc>,
        remaining_ms: u64,
    },
    /// The session was extended: keep running until the new `lease_until`.
    Extend {
        session_id: SessionId,
        lease_until: DateTime<Utc>,
        remaining_ms: u64,
    },
}

impl CommandAction {
    /// The wire name, e.g. `start`.
    pub fn name(&self) -> &'static str {
        match self {
            CommandAction::Start { .. } => "start",
            CommandAction::Stop { .. } => "stop",
            CommandAction::Warn { .. } => "warn",
            CommandAction::Extend { .. } => "extend",
        }
    }

    /// The session the command is about.
    pub fn session_id(&self) -> SessionId {
        match self {
            CommandAction::Start { session_id, .. }
            | CommandAction::Stop { session_id, .. }
            | CommandAction::Warn { session_id, .. }
            | CommandAction::Extend { session_id, .. } => *session_id,
        }
    }
}

/// What management wants a device to be doing, retained on its `desired` topic so an agent that
/// (re)connects converges to it. PostgreSQL is the source of truth; management republishes every
/// device's desired state when it starts and whenever it reconnects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DesiredState {
    /// The device's command epoch this state belongs to (see [`Command::epoch`]).
    pub epoch: u64,
    pub issued_at: DateTime<Utc>,
    /// The store of the device this state is for (absent from older managements).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreId>,
    /// The device this state is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    pub program: DesiredProgram,
    /// Management's signature (see [`crate::signed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// The program state management wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DesiredProgram {
    Idle,
    Running {
        session_id: SessionId,
        lease_until: DateTime<Utc>,
        /// Time left when issued.
        remaining_ms: u64,
    },
}

/// How an [`Ack::detail`] begins when the agent refused a command because it had already seen
/// a newer epoch: the command was superseded, not failed.
pub const STALE_ACK_PREFIX: &str = "stale:";

/// The device's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Ack {
    pub command_id: CommandId,
    pub ok: bool,
    #[serde(default)]
    pub detail: String,
    pub at: DateTime<Utc>,
    /// The device's signature (see [`crate::device_auth`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// Why a session ended, as recorded in its usage record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The booked window ended.
    BookingEnded,
    /// An operator stopped it.
    Forced,
    /// The program ended by itself before the end of the booking.
    ProgramExited,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::BookingEnded => "booking_ended",
            EndReason::Forced => "forced",
            EndReason::ProgramExited => "program_exited",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            EndReason::BookingEnded,
            EndReason::Forced,
            EndReason::ProgramExited,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == text)
    }
}

/// A request from an operator (or an integrator) to management, on the operator's `requests`
/// topic; the reply comes on the operator's `replies` topic with the same `request_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Request {
    pub request_id: RequestId,
    #[serde(flatten)]
    pub action: RequestAction,
    /// When the operator signed it: management refuses a request sent more than
    /// [`crate::signed::REQUEST_MAX_SKEW`] from its own clock. Each resend carries a fresh one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// The operator's signature (see [`crate::signed::sign_request`]); management refuses an
    /// unsigned request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

impl Request {
    /// An unsigned request (sign it with [`crate::signed::sign_request`] before sending).
    pub fn new(request_id: RequestId, action: RequestAction) -> Self {
        Self {
            request_id,
            action,
            sent_at: None,
            signature: None,
        }
    }
}

/// What an operator asks management to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RequestAction {
    /// Stop a running session now.
    ForceStop { session_id: SessionId },
    /// Move a running session's end by `minutes` (if the device is free until then).
    Extend { session_id: SessionId, minutes: u32 },
    /// Take a device out of service or put it back.
    SetService {
        store: StoreId,
        device: DeviceId,
        in_service: bool,
    },
    /// Cancel a booking that has not been used.
    Cancel { ticket_id: TicketId },
    /// Book a device from now for `minutes` (a walk-in customer); the reply carries the ticket.
    IssueTicket {
        store: StoreId,
        device: DeviceId,
        minutes: u32,
    },
    /// One page of management's view (read-only, answered every time it is asked; see
    /// [`crate::snapshot`]): the first page without `after`, the next ones with the previous
    /// page's `next`.
    Snapshot {
        part: SnapshotPart,
        /// Only this store; all stores when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        store: Option<StoreId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
}

impl RequestAction {
    /// The wire name, e.g. `force_stop`.
    pub fn name(&self) -> &'static str {
        match self {
            RequestAction::ForceStop { .. } => "force_stop",
            RequestAction::Extend { .. } => "extend",
            RequestAction::SetService { .. } => "set_service",
            RequestAction::Cancel { .. } => "cancel",
            RequestAction::IssueTicket { .. } => "issue_ticket",
            RequestAction::Snapshot { .. } => "snapshot",
        }
    }
}

/// Management's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Reply {
    pub request_id: RequestId,
    /// Whether the request was carried out.
    pub ok: bool,
    /// What was done, or exactly why not (e.g. "the device is booked from 10:30").
    pub detail: String,
    /// The ticket text, for `issue_ticket`.
    #[serde(default)]
    pub ticket: Option<String>,
    /// The page, for `snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotPage>,
}

/// Something that happened in a store, for consoles, integrators and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub store: StoreId,
    #[serde(default)]
    pub device: Option<DeviceId>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The kinds of [`Event`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    ReservationCreated {
        ticket_id: TicketId,
        not_before: DateTime<Utc>,
        not_after: DateTime<Utc>,
    },
    ScanAccepted {
        scan_id: ScanId,
        ticket_id: TicketId,
        session_id: SessionId,
    },
    ScanRejected {
        #[serde(default)]
        scan_id: Option<ScanId>,
        reason: RejectReason,
        #[serde(default)]
        detail: String,
    },
    SessionStarted {
        session_id: SessionId,
        ticket_id: TicketId,
        lease_until: DateTime<Utc>,
        /// The device started it offline and management recorded it afterwards.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        offline: bool,
    },
    SessionEnded {
        session_id: SessionId,
        started_at: DateTime<Utc>,
        ended_at: DateTime<Utc>,
        reason: EndReason,
        used_ms: u64,
    },
    /// A device answered a command with a failure.
    CommandFailed {
        command_id: CommandId,
        session_id: SessionId,
        action: String,
        #[serde(default)]
        detail: String,
    },
    /// A command was never acknowledged before it expired (the device was unreachable).
    CommandExpired {
        command_id: CommandId,
        session_id: SessionId,
        action: String,
        attempts: u32,
    },
    /// The customer was warned that the session ends soon.
    SessionWarned {
        session_id: SessionId,
        lease_until: DateTime<Utc>,
    },
    /// The session was extended (or shortened) to a new end.
    SessionExtended {
        session_id: SessionId,
        previous_lease_until: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    },
    /// The device reported something the database does not expect for a session (e.g. running
    /// a session that ended, or idle during one); `detail` says what and what was done.
    SessionConflict {
        session_id: SessionId,
        detail: String,
    },
    /// A booking's ticket was not scanned within the grace period after its start: the device
    /// is free again.
    ReservationNoShow {
        ticket_id: TicketId,
        not_before: DateTime<Utc>,
        not_after: DateTime<Utc>,
    },
    /// The device was taken out of service or put back; `affected_tickets` are the bookings
    /// still ahead on it, which need attention.
    DeviceService {
        in_service: bool,
        #[serde(default)]
        affected_tickets: Vec<TicketId>,
    },
    /// The device's clock differs from management's by more than the allowed skew.
    ClockSkew {
        /// Device clock minus management clock, in milliseconds.
        skew_ms: i64,
    },
    /// A device's agent reported (or its last will announced, or its heartbeats stopped) a
    /// change of availability. `session_id` is set when a session was running: an alert.
    DeviceAvailability {
        availability: Availability,
        #[serde(default)]
        session_id: Option<SessionId>,
    },
    /// An operator's request about this store was carried out (`ok`) or refused: `detail` is
    /// the reply management sent (for a refusal, why — e.g. the role it needs). A request that
    /// fails authentication names the operator of the topic it came on.
    OperatorAction {
        operator: OperatorId,
        request_id: RequestId,
        /// The request's action, e.g. `force_stop`.
        action: String,
        ok: bool,
        #[serde(default)]
        detail: String,
    },
    /// A message on this device's topic was dropped because it is not authenticated as the
    /// device's (unsigned, signed with another key, or sent too far from management's clock):
    /// someone else publishing in its name, or a replay. Recorded at most once a minute per
    /// device and channel.
    DeviceMessageRefused {
        /// The topic's last level, e.g. `state`.
        channel: String,
        detail: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_payloads_are_refused_unread() {
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            decode::<Scan>(&big),
            Err(DecodeError::TooLarge(MAX_PAYLOAD_BYTES + 1))
        );
    }

    #[test]
    fn malformed_payloads_get_the_parser_message() {
        let err = decode::<Scan>(b"{\"scan_id\": 3}").unwrap_err();
        assert!(
            matches!(err, DecodeError::Malformed(ref msg) if msg.contains("expected a string")),
            "{err}"
        );
    }

    #[test]
    fn the_last_will_parses_as_reported_state() {
        let state: ReportedState = decode(br#"{"availability":"offline"}"#).unwrap();
        assert_eq!(state, ReportedState::offline());
    }

    #[test]
    fn requests_from_older_operators_parse_unsigned() {
        let id = RequestId::random();
        let text = format!(r#"{{"request_id":"{id}","action":"cancel","ticket_id":"{id}"}}"#);
        let request: Request = decode(text.as_bytes()).unwrap();
        assert_eq!(request.sent_at, None);
        assert_eq!(request.signature, None);
        assert_eq!(request.action.name(), "cancel");
        let again: Request = decode(&encode(&request)).unwrap();
        assert_eq!(again, request);
    }

    #[test]
    fn reasons_round_trip_by_name() {
        for reason in RejectReason::ALL {
            assert_eq!(RejectReason::parse(reason.as_str()), Some(reason));
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
    }
}
