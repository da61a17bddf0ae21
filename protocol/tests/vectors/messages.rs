//! The message vectors: one booking's life on the wire (a scan refused as too early, the scan
//! that starts the session, its command, ack, state and telemetry, the stop at the end), built
//! from fixed values, with the topic, QoS and retain flag each message travels with.

use chrono::{DateTime, Utc};
use mujin_protocol::message::{
    decode, encode, Ack, Availability, Command, CommandAction, Decision, DesiredProgram,
    DesiredState, EndReason, Event, EventKind, OfflineStart, ProgramExit, ProgramStatus,
    RejectReason, Reply, ReportedState, Request, RequestAction, Scan, ScanResult, StopCause,
    Telemetry,
};
use mujin_protocol::presence::WorkerStatus;
use mujin_protocol::signed::{
    operator_key_id, public_key_text, sign_command, sign_desired, sign_request_at, sign_trust_list,
};
use mujin_protocol::snapshot::{
    BookingSummary, SessionSummary, SnapshotItems, SnapshotPage, SnapshotPart,
};
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::topic::{DeviceChannel, Topic};
use mujin_protocol::trust::{RefusedTicket, TrustList, TrustedKey};
use mujin_protocol::{
    CommandId, DeviceId, KeyId, OperatorId, RequestId, ScanId, SessionId, StoreId, TicketId,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tickets;

/// One `messages/*.json` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageVector {
    pub description: String,
    /// The Rust type in `mujin_protocol::message`.
    pub message: String,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    /// The payload as JSON (on the wire it is the compact UTF-8 encoding of this value).
    pub payload: Value,
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

/// Management's command key of the vectors: Ed25519 seed `0x5c` × 32, key id `c1`. Its
/// public key (what agents are given) is `mujin_protocol::signed::public_key_text` of it.
pub fn command_key() -> SigningKey {
    SigningKey::from_seed(KeyId::parse("c1").unwrap(), &[0x5c; 32]).unwrap()
}

/// Operator alice's key of the vectors: Ed25519 seed `0xa1` × 32, key id derived from its
/// public key (`mujin_protocol::signed::operator_key_id`).
pub fn operator_key() -> SigningKey {
    let seed = [0xa1; 32];
    let public = SigningKey::from_seed(KeyId::parse("x").unwrap(), &seed)
        .unwrap()
        .public_key();
    SigningKey::from_seed(operator_key_id(&public.bytes), &seed).unwrap()
}

/// A request signed by alice, sent at 08:30.
fn signed_request(id: &str, action: RequestAction) -> Request {
    let mut request = Request::new(RequestId::parse(id).unwrap(), action);
    sign_request_at(&operator_key(), &mut request, time("2027-01-15T08:30:00Z"));
    request
}

fn store() -> StoreId {
    StoreId::parse("shibuya").unwrap()
}

fn device() -> DeviceId {
    DeviceId::parse("pc-01").unwrap()
}

fn device_topic(channel: DeviceChannel) -> Topic {
    Topic::device(&store(), &device(), channel)
}

fn ticket_id() -> TicketId {
    tickets::booking_claims().ticket_id
}

fn session_id() -> SessionId {
    SessionId::parse("6a2f41a3-c54c-4c8b-9f2d-8e1a7b3c5d4e").unwrap()
}

fn scan_id() -> ScanId {
    ScanId::parse("1b4e28ba-2fa1-4d2e-883f-0016d3cca427").unwrap()
}

fn early_scan_id() -> ScanId {
    ScanId::parse("7d444840-9dc0-41f2-9d5e-3c2b1a0f9e8d").unwrap()
}

fn start_command_id() -> CommandId {
    CommandId::parse("9e107d9d-3721-4c1b-8a5c-2c7f3e4b5a61").unwrap()
}

fn stop_command_id() -> CommandId {
    CommandId::parse("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d").unwrap()
}

/// When the booking ends; the session's lease.
fn lease_until() -> DateTime<Utc> {
    tickets::booking_claims().not_after
}

/// When management accepted the scan and started the session.
fn session_start() -> DateTime<Utc> {
    time("2027-01-15T08:00:05.400Z")
}

/// When the stop timer ended the session.
fn session_end() -> DateTime<Utc> {
    time("2027-01-15T09:00:00.120Z")
}

fn running() -> ProgramStatus {
    ProgramStatus::Running {
        session_id: session_id(),
        started_at: time("2027-01-15T08:00:05.505Z"),
        lease_until: lease_until(),
        provisional: false,
    }
}

fn vector<T: Serialize>(
    file: &str,
    description: &str,
    message: &str,
    topic: Topic,
    value: &T,
) -> (String, MessageVector) {
    let vector = MessageVector {
        description: description.to_owned(),
        message: message.to_owned(),
        topic: topic.to_string(),
        qos: topic.qos(),
        retain: topic.retained(),
        payload: serde_json::from_slice(&encode(value)).unwrap(),
    };
    (format!("{file}.json"), vector)
}

fn event(
    file: &str,
    description: &str,
    at: DateTime<Utc>,
    kind: EventKind,
) -> (String, MessageVector) {
    let event = Event {
        at,
        store: store(),
        device: Some(device()),
        kind,
    };
    let topic = Topic::Events { store: store() };
    vector(file, description, "Event", topic, &event)
}

fn scans() -> Vec<(String, MessageVector)> {
    let scan = Scan {
        sent_at: None,
        signature: None,
        scan_id: scan_id(),
        ticket: tickets::booking_ticket(),
        read_at: time("2027-01-15T08:00:05.250Z"),
        offline: None,
    };
    let offline = Scan {
        offline: Some(OfflineStart {
            session_id: session_id(),
            started_at: time("2027-01-15T08:00:08.300Z"),
            lease_until: lease_until(),
        }),
        ..scan.clone()
    };
    let accepted = ScanResult {
        scan_id: scan_id(),
        decision: Decision::Accepted {
            session_id: session_id(),
            ticket_id: ticket_id(),
            lease_until: lease_until(),
        },
    };
    let rejected = ScanResult {
        scan_id: early_scan_id(),
        decision: Decision::Rejected {
            reason: RejectReason::TooEarly,
            detail: "the booking starts at 2027-01-15T08:00:00+00:00".into(),
        },
    };
    vec![
        vector("scan", "A reading of the ticket of tickets.json's one_hour_booking; the agent draws a fresh scan_id per reading.",
            "Scan", device_topic(DeviceChannel::Scan), &scan),
        vector("scan-offline", "The same reading sent again after management did not answer within the agent's offline-after time: the store allows offline starts, the ticket checked out against the trust list, and the device started a provisional session under the ticket's window.",
            "Scan", device_topic(DeviceChannel::Scan), &offline),
        vector("scan-result-accepted", "Management's answer to that scan: a session until the end of the booking.",
            "ScanResult", device_topic(DeviceChannel::ScanResult), &accepted),
        vector("scan-result-rejected", "The answer to an earlier reading of the same ticket, five minutes before the booking (the early grace is one minute).",
            "ScanResult", device_topic(DeviceChannel::ScanResult), &rejected),
    ]
}

fn device_reports() -> Vec<(String, MessageVector)> {
    let telemetry_running = Telemetry {
        interval_ms: None,
        signature: None,
        at: time("2027-01-15T08:30:00Z"),
        uptime_ms: 5_400_000,
        load: Some(0.52),
        program: running(),
    };
    let telemetry_idle = Telemetry {
        interval_ms: None,
        signature: None,
        at: time("2027-01-15T07:50:00Z"),
        uptime_ms: 3_000_000,
        load: None,
        program: ProgramStatus::Idle,
    };
    let online_running = ReportedState {
        signature: None,
        availability: Availability::Online,
        program: running(),
        last_exit: None,
        at: Some(time("2027-01-15T08:00:05.510Z")),
    };
    let online_provisional = ReportedState {
        signature: None,
        availability: Availability::Online,
        program: ProgramStatus::Running {
            session_id: session_id(),
            started_at: time("2027-01-15T08:00:08.300Z"),
            lease_until: lease_until(),
            provisional: true,
        },
        last_exit: None,
        at: Some(time("2027-01-15T08:00:08.310Z")),
    };
    let online_idle = ReportedState {
        signature: None,
        availability: Availability::Online,
        program: ProgramStatus::Idle,
        last_exit: Some(ProgramExit {
            session_id: session_id(),
            stopped_by: StopCause::Command,
            exit: "signal 15 (SIGTERM)".into(),
            at: time("2027-01-15T09:00:00.350Z"),
        }),
        at: Some(time("2027-01-15T09:00:00.351Z")),
    };
    let state = || device_topic(DeviceChannel::State);
    let telemetry = || device_topic(DeviceChannel::Telemetry);
    vec![
        vector("telemetry-running", "Periodic telemetry while the session's program runs.",
            "Telemetry", telemetry(), &telemetry_running),
        vector("telemetry-idle", "Periodic telemetry of an idle device on a platform without a load average.",
            "Telemetry", telemetry(), &telemetry_idle),
        vector("state-online-running", "The reported state right after the program started.",
            "ReportedState", state(), &online_running),
        vector("state-online-provisional", "The reported state of a session started offline (scan-offline.json) while its scan is still unanswered.",
            "ReportedState", state(), &online_provisional),
        vector("state-online-idle", "The reported state after the stop command ended the program.",
            "ReportedState", state(), &online_idle),
        vector("state-offline-last-will", "The last will the agent registers when it connects; also what it publishes when it shuts down cleanly (then with `at`).",
            "ReportedState", state(), &ReportedState::offline()),
    ]
}

fn commands() -> Vec<(String, MessageVector)> {
    let mut start = Command {
        command_id: start_command_id(),
        issued_at: session_start(),
        epoch: 7,
        store: Some(store()),
        device: Some(device()),
        expires_at: Some(session_start() + chrono::Duration::minutes(5)),
        action: CommandAction::Start {
            session_id: session_id(),
            lease_until: lease_until(),
            remaining_ms: u64::try_from((lease_until() - session_start()).num_milliseconds())
                .unwrap(),
        },
        signature: None,
    };
    let mut stop = Command {
        command_id: stop_command_id(),
        issued_at: session_end(),
        epoch: 10,
        store: Some(store()),
        device: Some(device()),
        expires_at: Some(session_end() + chrono::Duration::minutes(5)),
        action: CommandAction::Stop {
            session_id: session_id(),
            reason: EndReason::BookingEnded,
        },
        signature: None,
    };
    let warn_at = lease_until() - chrono::Duration::minutes(5);
    let mut warn = Command {
        command_id: CommandId::parse("5b0f8d0e-6a3c-4d7e-9b1a-2f4c6e8a0b1d").unwrap(),
        issued_at: warn_at,
        epoch: 8,
        store: Some(store()),
        device: Some(device()),
        expires_at: Some(warn_at + chrono::Duration::minutes(5)),
        action: CommandAction::Warn {
            session_id: session_id(),
            lease_until: lease_until(),
            remaining_ms: 300_000,
        },
        signature: None,
    };
    let extended_until = lease_until() + chrono::Duration::minutes(30);
    let mut extend = Command {
        command_id: CommandId::parse("6c1a9e1f-7b4d-4e8f-8c2b-3a5d7f9b1c2e").unwrap(),
        issued_at: warn_at,
        epoch: 9,
        store: Some(store()),
        device: Some(device()),
        expires_at: Some(warn_at + chrono::Duration::minutes(5)),
        action: CommandAction::Extend {
            session_id: session_id(),
            lease_until: extended_until,
            remaining_ms: u64::try_from((extended_until - warn_at).num_milliseconds()).unwrap(),
        },
        signature: None,
    };
    let mut desired_running = DesiredState {
        epoch: 7,
        issued_at: session_start(),
        store: Some(store()),
        device: Some(device()),
        program: DesiredProgram::Running {
            session_id: session_id(),
            lease_until: lease_until(),
            remaining_ms: u64::try_from((lease_until() - session_start()).num_milliseconds())
                .unwrap(),
        },
        signature: None,
    };
    let mut desired_idle = DesiredState {
        epoch: 10,
        issued_at: session_end(),
        store: Some(store()),
        device: Some(device()),
        program: DesiredProgram::Idle,
        signature: None,
    };
    let key = command_key();
    for command in [&mut start, &mut stop, &mut warn, &mut extend] {
        sign_command(&key, command);
    }
    sign_desired(&key, &mut desired_running);
    sign_desired(&key, &mut desired_idle);
    let desired = || device_topic(DeviceChannel::Desired);
    let started = Ack {
        signature: None,
        command_id: start_command_id(),
        ok: true,
        detail: "started".into(),
        at: time("2027-01-15T08:00:05.512Z"),
    };
    let refused = Ack {
        signature: None,
        command_id: start_command_id(),
        ok: false,
        detail: "busy with session 2c5ea4c0-4067-41b4-b2c0-8e7d6f5e4d3c".into(),
        at: time("2027-01-15T08:00:05.512Z"),
    };
    let command = || device_topic(DeviceChannel::Command);
    let ack = || device_topic(DeviceChannel::Ack);
    vec![
        vector(
            "command-start",
            &format!(
                "Start the program for the session; remaining_ms is counted from issued_at. \
                 Signed by management's command key {} (Ed25519 seed 0x5c x 32) over \
                 b\"mujin-command-v1\\0\" followed by this payload without its signature.",
                public_key_text(&key.public_key())
            ),
            "Command",
            command(),
            &start,
        ),
        vector(
            "command-stop",
            "Stop sent by the stop timer when the booking ended.",
            "Command",
            command(),
            &stop,
        ),
        vector(
            "command-warn",
            "Warning shown on the device five minutes before the end of the session.",
            "Command",
            command(),
            &warn,
        ),
        vector(
            "command-extend",
            "The session was extended by 30 minutes: a new lease for the device.",
            "Command",
            command(),
            &extend,
        ),
        vector(
            "desired-running",
            "Retained desired state while the session runs.",
            "DesiredState",
            desired(),
            &desired_running,
        ),
        vector(
            "desired-idle",
            "Retained desired state after the session ended.",
            "DesiredState",
            desired(),
            &desired_idle,
        ),
        vector(
            "ack-ok",
            "The agent's answer to the start command.",
            "Ack",
            ack(),
            &started,
        ),
        vector(
            "ack-refused",
            "The answer had another session still been running on the device.",
            "Ack",
            ack(),
            &refused,
        ),
    ]
}

fn events() -> Vec<(String, MessageVector)> {
    let booking = tickets::booking_claims();
    vec![
        event(
            "event-reservation-created",
            "The booking was made (by the command line or a request); recorded in the audit log and published.",
            time("2027-01-14T12:00:00Z"),
            EventKind::ReservationCreated {
                ticket_id: ticket_id(),
                not_before: booking.not_before,
                not_after: booking.not_after,
            },
        ),
        event(
            "event-scan-rejected",
            "The early reading was refused.",
            time("2027-01-15T07:55:00.300Z"),
            EventKind::ScanRejected {
                scan_id: Some(early_scan_id()),
                reason: RejectReason::TooEarly,
                detail: "the booking starts at 2027-01-15T08:00:00+00:00".into(),
            },
        ),
        event(
            "event-scan-accepted",
            "The reading was accepted.",
            session_start(),
            EventKind::ScanAccepted {
                scan_id: scan_id(),
                ticket_id: ticket_id(),
                session_id: session_id(),
            },
        ),
        event(
            "event-session-started",
            "The session it started.",
            session_start(),
            EventKind::SessionStarted {
                session_id: session_id(),
                ticket_id: ticket_id(),
                lease_until: lease_until(),
                offline: false,
            },
        ),
        event(
            "event-session-started-offline",
            "A session the device started offline (scan-offline.json), recorded by management when the scan reached it: the device's session id is kept.",
            session_start(),
            EventKind::SessionStarted {
                session_id: session_id(),
                ticket_id: ticket_id(),
                lease_until: lease_until(),
                offline: true,
            },
        ),
        event(
            "event-session-ended",
            "The usage record when the booking ended.",
            session_end(),
            EventKind::SessionEnded {
                session_id: session_id(),
                started_at: session_start(),
                ended_at: session_end(),
                reason: EndReason::BookingEnded,
                used_ms: u64::try_from((session_end() - session_start()).num_milliseconds())
                    .unwrap(),
            },
        ),
        event(
            "event-command-failed",
            "The device answered a start with a failure.",
            time("2027-01-15T08:00:05.600Z"),
            EventKind::CommandFailed {
                command_id: start_command_id(),
                session_id: session_id(),
                action: "start".into(),
                detail: "busy with session 2c5ea4c0-4067-41b4-b2c0-8e7d6f5e4d3c".into(),
            },
        ),
        event(
            "event-command-expired",
            "A stop was never acknowledged: the device was unreachable until the command expired.",
            time("2027-01-15T09:10:00Z"),
            EventKind::CommandExpired {
                command_id: stop_command_id(),
                session_id: session_id(),
                action: "stop".into(),
                attempts: 63,
            },
        ),
        event(
            "event-device-availability",
            "A device went offline while no session ran on it.",
            time("2027-01-15T09:30:00Z"),
            EventKind::DeviceAvailability {
                availability: Availability::Offline,
                session_id: None,
            },
        ),
        event(
            "event-device-offline-during-session",
            "A device went offline during a session: an alert for operators.",
            time("2027-01-15T08:30:00Z"),
            EventKind::DeviceAvailability {
                availability: Availability::Offline,
                session_id: Some(session_id()),
            },
        ),
        event(
            "event-session-warned",
            "The customer was warned five minutes before the end.",
            lease_until() - chrono::Duration::minutes(5),
            EventKind::SessionWarned {
                session_id: session_id(),
                lease_until: lease_until(),
            },
        ),
        event(
            "event-session-extended",
            "The session was extended by 30 minutes.",
            lease_until() - chrono::Duration::minutes(5),
            EventKind::SessionExtended {
                session_id: session_id(),
                previous_lease_until: lease_until(),
                lease_until: lease_until() + chrono::Duration::minutes(30),
            },
        ),
        event(
            "event-session-conflict",
            "The device reported a state the database did not expect for the session.",
            time("2027-01-15T08:40:00Z"),
            EventKind::SessionConflict {
                session_id: session_id(),
                detail: "device reports idle (program exited with exit code 1); session closed as program_exited".into(),
            },
        ),
        event(
            "event-reservation-no-show",
            "Nobody scanned the ticket within the grace period: the device is free again.",
            time("2027-01-15T08:15:00Z"),
            EventKind::ReservationNoShow {
                ticket_id: ticket_id(),
                not_before: booking.not_before,
                not_after: booking.not_after,
            },
        ),
        event(
            "event-device-service",
            "The device was taken out of service; one booking ahead on it needs attention.",
            time("2027-01-15T07:00:00Z"),
            EventKind::DeviceService {
                in_service: false,
                affected_tickets: vec![ticket_id()],
            },
        ),
        event(
            "event-operator-action",
            "Operator alice force-stopped the session (the request of request-force-stop.json).",
            time("2027-01-15T08:30:00.250Z"),
            EventKind::OperatorAction {
                operator: OperatorId::parse("alice").unwrap(),
                request_id: RequestId::parse("7d2e4f60-8a1b-4c3d-9e5f-0a1b2c3d4e5f").unwrap(),
                action: "force_stop".into(),
                ok: true,
                detail: "session 6a2f41a3-c54c-4c8b-9f2d-8e1a7b3c5d4e on shibuya/pc-01 stopped"
                    .into(),
            },
        ),
        event(
            "event-operator-action-refused",
            "A force stop refused for the role of the operator who signed it.",
            time("2027-01-15T08:31:00Z"),
            EventKind::OperatorAction {
                operator: OperatorId::parse("victor").unwrap(),
                request_id: RequestId::parse("e4a5b637-f182-4304-a5c6-718293a4b526").unwrap(),
                action: "force_stop".into(),
                ok: false,
                detail: "refused: force_stop needs the operator role; victor is a viewer".into(),
            },
        ),
        event(
            "event-clock-skew",
            "The device's clock runs 4.2 s ahead of management's.",
            time("2027-01-15T08:10:00Z"),
            EventKind::ClockSkew { skew_ms: 4200 },
        ),
    ]
}

fn requests() -> Vec<(String, MessageVector)> {
    let operator = || OperatorId::parse("alice").unwrap();
    let request_topic = || Topic::Requests {
        operator: operator(),
    };
    let request = signed_request;
    let walk_in = "3f0b6c1e-2a4d-4e8f-9b7c-5d1e3f5a7b9c";
    vec![
        vector(
            "request-force-stop",
            "An operator stops a running session.",
            "Request",
            request_topic(),
            &request(
                "7d2e4f60-8a1b-4c3d-9e5f-0a1b2c3d4e5f",
                RequestAction::ForceStop {
                    session_id: session_id(),
                },
            ),
        ),
        vector(
            "request-extend",
            "An operator extends a running session by 30 minutes.",
            "Request",
            request_topic(),
            &request(
                "8e3f5071-9b2c-4d4e-8f60-1b2c3d4e5f60",
                RequestAction::Extend {
                    session_id: session_id(),
                    minutes: 30,
                },
            ),
        ),
        vector(
            "request-set-service",
            "An operator takes a device out of service.",
            "Request",
            request_topic(),
            &request(
                "9f406182-ac3d-4e5f-9071-2c3d4e5f6071",
                RequestAction::SetService {
                    store: store(),
                    device: device(),
                    in_service: false,
                },
            ),
        ),
        vector(
            "request-cancel",
            "An operator cancels a booking that was not used.",
            "Request",
            request_topic(),
            &request(
                "a0517293-bd4e-4f60-8182-3d4e5f607182",
                RequestAction::Cancel {
                    ticket_id: ticket_id(),
                },
            ),
        ),
        vector(
            "request-issue-ticket",
            "An operator books a device from now for a walk-in customer.",
            "Request",
            request_topic(),
            &request(
                walk_in,
                RequestAction::IssueTicket {
                    store: store(),
                    device: device(),
                    minutes: 60,
                },
            ),
        ),
        vector(
            "reply-ticket",
            "The reply to the walk-in booking, with its ticket.",
            "Reply",
            Topic::Replies {
                operator: operator(),
            },
            &Reply {
                request_id: RequestId::parse(walk_in).unwrap(),
                ok: true,
                detail: "booked shibuya/pc-01 until 2027-01-15T09:00:00Z".into(),
                ticket: Some(tickets::booking_ticket()),
                snapshot: None,
            },
        ),
        vector(
            "reply-refused",
            "A refused extension, with the reason.",
            "Reply",
            Topic::Replies {
                operator: operator(),
            },
            &Reply {
                request_id: RequestId::parse("8e3f5071-9b2c-4d4e-8f60-1b2c3d4e5f60").unwrap(),
                ok: false,
                detail: "the device is booked from 2027-01-15T09:00:00Z".into(),
                ticket: None,
                snapshot: None,
            },
        ),
    ]
}

/// A console catching up: the first page of upcoming bookings and the reply that carries it.
fn snapshots() -> Vec<(String, MessageVector)> {
    let operator = || OperatorId::parse("alice").unwrap();
    let request_id = "b1628304-ce5f-4071-9293-4e5f60718293";
    let booking = |ticket: TicketId, from: &str, until: &str| BookingSummary {
        ticket_id: ticket,
        store: store(),
        device: device(),
        not_before: time(from),
        not_after: time(until),
    };
    let later = TicketId::parse("c2739415-df60-4182-a3a4-5f6071829304").unwrap();
    vec![
        vector(
            "request-snapshot",
            "A console asks for the next page of upcoming bookings of one store.",
            "Request",
            Topic::Requests {
                operator: operator(),
            },
            &signed_request(
                request_id,
                RequestAction::Snapshot {
                    part: SnapshotPart::Bookings,
                    store: Some(store()),
                    after: Some("1799996400000000:0b7e9a52-6c1d-4f3e-8a2b-9c8d7e6f5a4b".into()),
                },
            ),
        ),
        vector(
            "reply-snapshot-bookings",
            "A page of upcoming bookings, ordered by start, with the cursor of the next page.",
            "Reply",
            Topic::Replies {
                operator: operator(),
            },
            &Reply {
                request_id: RequestId::parse(request_id).unwrap(),
                ok: true,
                detail: "bookings snapshot".into(),
                ticket: None,
                snapshot: Some(SnapshotPage {
                    items: SnapshotItems::Bookings(vec![
                        booking(ticket_id(), "2027-01-15T08:00:00Z", "2027-01-15T09:00:00Z"),
                        booking(later, "2027-01-15T09:00:00Z", "2027-01-15T09:30:00Z"),
                    ]),
                    next: Some("1800003600000000:c2739415-df60-4182-a3a4-5f6071829304".into()),
                }),
            },
        ),
        vector(
            "reply-snapshot-sessions",
            "The last page of recent sessions: one that ended when its booking did.",
            "Reply",
            Topic::Replies {
                operator: operator(),
            },
            &Reply {
                request_id: RequestId::parse("d384a526-e071-4293-b4b5-60718293a415").unwrap(),
                ok: true,
                detail: "sessions snapshot".into(),
                ticket: None,
                snapshot: Some(SnapshotPage {
                    items: SnapshotItems::Sessions(vec![SessionSummary {
                        session_id: session_id(),
                        ticket_id: ticket_id(),
                        store: store(),
                        device: device(),
                        started_at: session_start(),
                        lease_until: lease_until(),
                        ended_at: Some(session_end()),
                        end_reason: Some(EndReason::BookingEnded),
                    }]),
                    next: None,
                }),
            },
        ),
    ]
}

/// Every message vector by file name, generated from the Rust types.
fn trust() -> Vec<(String, MessageVector)> {
    let mut list = TrustList {
        issued_at: time("2027-01-15T07:00:00Z"),
        store: Some(store()),
        offline_start: true,
        keys: vec![TrustedKey::from(&tickets::booking_key())],
        revoked_keys: Vec::new(),
        refused_tickets: vec![RefusedTicket {
            ticket_id: TicketId::parse("0b7e9a52-6c1d-4f3e-8a2b-9c8d7e6f5a4b").unwrap(),
            reason: RejectReason::Cancelled,
        }],
        truncated: false,
        signature: None,
    };
    sign_trust_list(&command_key(), &mut list);
    let topic = Topic::Trust { store: store() };
    let worker = || Topic::Worker {
        worker: mujin_protocol::WorkerId::parse("mujin-management").unwrap(),
    };
    let online = WorkerStatus {
        availability: Availability::Online,
        at: Some(time("2027-01-15T07:00:00.120Z")),
    };
    vec![
        vector(
            "trust-list",
            "The store's retained trust list: offline starts allowed, the key of tickets.json's k1, one cancelled booking whose window is still open.",
            "TrustList",
            topic,
            &list,
        ),
        vector(
            "worker-online",
            "A management worker's retained status, published once its subscriptions are in place.",
            "WorkerStatus",
            worker(),
            &online,
        ),
        vector(
            "worker-offline-last-will",
            "The last will a management worker registers when it connects.",
            "WorkerStatus",
            worker(),
            &WorkerStatus::offline(),
        ),
    ]
}

pub fn generate() -> Vec<(String, MessageVector)> {
    [
        scans(),
        device_reports(),
        commands(),
        events(),
        requests(),
        snapshots(),
        trust(),
    ]
    .concat()
}

/// Decodes `payload` as `T` with the one decoder and encodes it again.
fn re_encode<T: Serialize + DeserializeOwned>(payload: &Value) -> Result<Value, String> {
    let bytes = serde_json::to_vec(payload).map_err(|err| err.to_string())?;
    let message: T = decode(&bytes).map_err(|err| err.to_string())?;
    serde_json::from_slice(&encode(&message)).map_err(|err| err.to_string())
}

/// The topic a message type travels on, and its payload decoded and encoded again.
fn decode_as(message: &str, payload: &Value) -> Result<(Option<DeviceChannel>, Value), String> {
    Ok(match message {
        "Scan" => (Some(DeviceChannel::Scan), re_encode::<Scan>(payload)?),
        "ScanResult" => (
            Some(DeviceChannel::ScanResult),
            re_encode::<ScanResult>(payload)?,
        ),
        "Telemetry" => (
            Some(DeviceChannel::Telemetry),
            re_encode::<Telemetry>(payload)?,
        ),
        "ReportedState" => (
            Some(DeviceChannel::State),
            re_encode::<ReportedState>(payload)?,
        ),
        "Command" => (Some(DeviceChannel::Command), re_encode::<Command>(payload)?),
        "Ack" => (Some(DeviceChannel::Ack), re_encode::<Ack>(payload)?),
        "DesiredState" => (
            Some(DeviceChannel::Desired),
            re_encode::<DesiredState>(payload)?,
        ),
        "Event" => (None, re_encode::<Event>(payload)?),
        "Request" => (None, re_encode::<Request>(payload)?),
        "Reply" => (None, re_encode::<Reply>(payload)?),
        "TrustList" => (None, re_encode::<TrustList>(payload)?),
        "WorkerStatus" => (None, re_encode::<WorkerStatus>(payload)?),
        other => return Err(format!("unknown message type {other:?}")),
    })
}

/// Checks one checked-in vector as a consumer would: its topic parses to the channel of its
/// type with the stated QoS and retain flag, and its payload decodes and re-encodes unchanged,
/// also when it carries a field this version does not know.
pub fn check(file: &str, vector: &MessageVector) {
    let (channel, again) = match decode_as(&vector.message, &vector.payload) {
        Ok(decoded) => decoded,
        Err(error) => panic!(
            "{file}: cannot decode the payload as {}: {error}",
            vector.message
        ),
    };
    assert_eq!(
        again, vector.payload,
        "{file}: re-encoding changed the payload"
    );
    // Newer peers may add fields: they are ignored, not refused.
    let mut extended = vector.payload.clone();
    extended
        .as_object_mut()
        .unwrap_or_else(|| panic!("{file}: the payload is not a JSON object"))
        .insert("field_from_the_future".into(), Value::from(1));
    match decode_as(&vector.message, &extended) {
        Ok((_, again)) => assert_eq!(again, vector.payload, "{file}: with an unknown field"),
        Err(error) => panic!("{file}: an unknown field is refused: {error}"),
    }
    let topic = Topic::parse(&vector.topic).unwrap_or_else(|err| panic!("{file}: {err}"));
    match (&topic, channel) {
        (Topic::Device { channel: found, .. }, Some(expected)) => {
            assert_eq!(
                *found, expected,
                "{file}: {} on the wrong channel",
                vector.message
            )
        }
        (Topic::Events { .. }, None) if vector.message == "Event" => {}
        (Topic::Requests { .. }, None) if vector.message == "Request" => {}
        (Topic::Replies { .. }, None) if vector.message == "Reply" => {}
        (Topic::Trust { .. }, None) if vector.message == "TrustList" => {}
        (Topic::Worker { .. }, None) if vector.message == "WorkerStatus" => {}
        _ => panic!("{file}: {} on topic {}", vector.message, vector.topic),
    }
    assert_eq!(vector.qos, topic.qos(), "{file}: QoS");
    assert_eq!(vector.retain, topic.retained(), "{file}: retain flag");
}
