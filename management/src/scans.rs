//! Scan handling: decide each scan once, record the decision (and the new session) in one
//! transaction keyed by the scan id, and say what to publish after the commit.

use crate::db::CachedStatements;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use mujin_protocol::message::{
    self, Command, CommandAction, Decision, EndReason, Event, EventKind, RejectReason, Scan,
    ScanResult,
};
use mujin_protocol::ticket::{Keyring, SigningKey, TicketClaims, TicketError};
use mujin_protocol::topic::{DeviceChannel, Topic};
use mujin_protocol::{CommandId, DeviceId, ScanId, SessionId, StoreId, TicketId};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::audit;
use crate::authorize::{authorize_scan, DeviceFacts, Refusal, ReservationFacts, ScanFacts};
use crate::db::{sql_state, PipelinedTx, WorkError};
use crate::metrics::{ScanStages, ScanVerdict};
use crate::mqtt::Outbound;
use crate::outbox;
use crate::stop_timer::{end_session, OpenSession};

mod record;

/// What the scan rules need besides the scan.
#[derive(Debug, Clone)]
pub struct ScanRules {
    pub keyring: Keyring,
    pub early_grace: Duration,
    /// With the command key, an accepted scan's start command goes out with the scan's answer
    /// (see [`outbox::sent_now`]); without it, the dispatcher sends it.
    pub command_key: Option<Arc<SigningKey>>,
}

/// What a handled scan leads to.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    /// Messages to publish, in order, after the commit.
    pub publish: Vec<Outbound>,
    /// A session was started, ending then (the stop timer should know).
    pub session_ends: Option<DateTime<Utc>>,
    /// Its start command is in `publish` (sent with the answer, not by the dispatcher).
    pub start_sent: bool,
    /// Something was recorded for the dispatcher to publish (it should look again).
    pub for_dispatcher: bool,
    /// Events in `publish` (recorded as published).
    pub events_sent: usize,
    /// The decision made now, for the metrics; `None` when the scan was answered with an
    /// earlier decision.
    pub decided: Option<ScanVerdict>,
    /// How long its stages in here took (those from verifying the ticket to signing; the
    /// caller times the others).
    pub stages: ScanStages,
}

/// Handles one scan published by `device` of `store`.
pub async fn handle_scan(
    pool: &Pool,
    rules: &ScanRules,
    store: &StoreId,
    device: &DeviceId,
    payload: &[u8],
    now: DateTime<Utc>,
) -> Result<ScanOutcome, WorkError> {
    let verifying = Instant::now();
    let scan: Scan = match message::decode(payload) {
        Ok(scan) => scan,
        Err(error) => {
            return refuse_malformed(pool, store, device, payload, &error.to_string(), now).await
        }
    };
    let ticket = rules.keyring.verify(&scan.ticket);
    let verify_ticket = verifying.elapsed();
    // Two deciders racing on the same scan or ticket: the loser's insert hits a unique
    // constraint, and deciding again finds the winner's result.
    let mut attempts = 0;
    loop {
        let target = (store, device);
        let decided =
            decide_and_record(pool, rules, target, (&scan, &ticket), now, verify_ticket).await;
        attempts += 1;
        match decided {
            Err(WorkError::Postgres(error)) if is_conflict(&error) && attempts < 4 => continue,
            other => return other,
        }
    }
}

fn is_conflict(error: &tokio_postgres::Error) -> bool {
    matches!(sql_state(error), Some(state) if *state == SqlState::UNIQUE_VIOLATION
        || *state == SqlState::T_R_SERIALIZATION_FAILURE
        || *state == SqlState::T_R_DEADLOCK_DETECTED)
}

/// Decides `scan` and records the decision, timing its stages from connecting to signing
/// (after `verify_ticket`, timed by the caller).
async fn decide_and_record(
    pool: &Pool,
    rules: &ScanRules,
    (store, device): (&StoreId, &DeviceId),
    (scan, ticket): (&Scan, &Result<TicketClaims, TicketError>),
    now: DateTime<Utc>,
    verify_ticket: Duration,
) -> Result<ScanOutcome, WorkError> {
    let mut stages = ScanStages {
        verify_ticket,
        ..ScanStages::default()
    };
    let mut stage = Instant::now();
    let mut lap = || {
        let elapsed = stage.elapsed();
        stage = Instant::now();
        elapsed
    };
    let tx = PipelinedTx::new(pool.get().await?);
    stages.connect = lap();
    let client = tx.client();
    let ticket_id = ticket.as_ref().ok().map(|claims| claims.ticket_id);
    // BEGIN and the three reads go out together, one round trip (tokio-postgres pipelines
    // the queries polled together on one connection); the device row first, as every path
    // locks it first.
    let ((), earlier, device_row, reservation) = tokio::try_join!(
        biased;
        tx.begin(),
        earlier_decision(client, store, device, scan.scan_id),
        device_row(client, store, device),
        reservation_facts(client, ticket_id),
    )?;
    if let Some(outcome) = earlier {
        tx.commit().await?;
        tx.committed();
        return Ok(outcome);
    }
    // A session the device started offline is judged as of when it started (the device's
    // clock, never later than now): the customer used the ticket then.
    let at = scan
        .offline
        .as_ref()
        .map_or(now, |offline| offline.started_at.min(now));
    // A session whose booking is over but whose stop timer has not fired yet (the next
    // customer scanning in the first instant of a back-to-back booking) is ended here, so the
    // device is not refused as busy. Its stop command moved the device's epoch.
    let mut ended_overdue = false;
    let device_row = match device_row {
        Some(row) if row.facts.busy && end_overdue_session(client, store, device, at).await? => {
            ended_overdue = true;
            let epoch = current_epoch(client, store, device).await?;
            Some(DeviceRow {
                facts: DeviceFacts {
                    busy: false,
                    ..row.facts
                },
                epoch,
            })
        }
        other => other,
    };
    let epoch = device_row.as_ref().map_or(0, |row| row.epoch);
    let facts = ScanFacts {
        store,
        device,
        device_facts: device_row.map(|row| row.facts),
        ticket,
        reservation,
        now: at,
        early_grace: rules.early_grace,
    };
    let (decision, kinds, start) = decide(&facts, (store, device), scan, ticket_id, epoch, now);
    let events: Vec<Event> = kinds
        .into_iter()
        .map(|kind| Event {
            at: now,
            store: store.clone(),
            device: Some(device.clone()),
            kind,
        })
        .collect();
    let send_start = rules.command_key.is_some();
    // The scan's events go out with its answer, except after an overdue session was ended here:
    // that session's stop and events go through the dispatcher, and these must not overtake
    // them.
    let events_published_now = !ended_overdue;
    let written = record::Decided {
        target: (store, device),
        scan,
        ticket_id,
        decision: &decision,
        start: start.as_ref(),
        start_sent_now: send_start,
        events: &events,
        events_published_now,
        now,
    };
    stages.read = lap();
    // The writes and COMMIT go out together, one round trip (see PipelinedTx).
    record::prepare(client).await?;
    tokio::try_join!(biased; record::write(client, &written), tx.commit())?;
    tx.committed();
    stages.write = lap();

    let decided = match &decision {
        Decision::Accepted { .. } => ScanVerdict::Accepted,
        Decision::Rejected { reason, .. } => ScanVerdict::Rejected(*reason),
    };
    let session_ends = start.as_ref().map(|start| start.lease_until);
    let mut publish = vec![scan_result(store, device, scan.scan_id, decision)];
    // The start command is in the outbox, committed with the session: sent now with the answer,
    // or by the dispatcher.
    let mut start_sent = false;
    if let (Some(start), Some(key)) = (start, &rules.command_key) {
        let running = (start.session_id, start.lease_until);
        publish.extend(outbox::sent_now(
            start.command,
            (store, device),
            start.lease_until,
            Some(running),
            key,
            now,
        ));
        start_sent = true;
    }
    let events_sent = if events_published_now {
        publish.extend(events.iter().map(audit::event_message));
        events.len()
    } else {
        0
    };
    stages.sign = lap();
    Ok(ScanOutcome {
        publish,
        // The overdue session's stop and events, or a start the dispatcher has to send.
        for_dispatcher: ended_overdue || (session_ends.is_some() && !start_sent),
        session_ends,
        start_sent,
        events_sent,
        decided: Some(decided),
        stages,
    })
}

/// The pure part: the decision, its events and, when accepted, the session to start with its
/// start command (at the device's next epoch).
fn decide(
    facts: &ScanFacts<'_>,
    (store, device): (&StoreId, &DeviceId),
    scan: &Scan,
    ticket_id: Option<TicketId>,
    epoch: i64,
    now: DateTime<Utc>,
) -> (Decision, Vec<EventKind>, Option<record::Start>) {
    let approval = match authorize_scan(facts) {
        Ok(approval) => approval,
        Err(refusal) => {
            let (decision, events) = refused(store, device, scan, ticket_id, refusal);
            return (decision, events, None);
        }
    };
    let Some(ticket_id) = ticket_id else {
        unreachable!("an approved scan has a verified ticket")
    };
    let scan_id = scan.scan_id;
    let lease_until = approval.lease_until;
    let (session_id, started_at) = match &scan.offline {
        Some(offline) => (offline.session_id, offline.started_at.min(now)),
        None => (SessionId::random(), now),
    };
    let action = CommandAction::Start {
        session_id,
        lease_until,
        remaining_ms: (lease_until - now).num_milliseconds().max(0) as u64,
    };
    let command = outbox::new_command((store, device), CommandId::random(), action, epoch + 1, now);
    let offline = scan.offline.is_some();
    tracing::info!(%store, %device, %scan_id, %session_id, %lease_until, offline, "scan accepted, session started");
    let decision = Decision::Accepted {
        session_id,
        ticket_id,
        lease_until,
    };
    let events = vec![
        EventKind::ScanAccepted {
            scan_id,
            ticket_id,
            session_id,
        },
        EventKind::SessionStarted {
            session_id,
            ticket_id,
            lease_until,
            offline,
        },
    ];
    let start = record::Start {
        session_id,
        ticket_id,
        started_at,
        lease_until,
        command,
    };
    (decision, events, Some(start))
}

/// A refused scan's answer and events (a session the device started offline on it is a
/// conflict: the device stops it).
fn refused(
    store: &StoreId,
    device: &DeviceId,
    scan: &Scan,
    ticket_id: Option<TicketId>,
    refusal: Refusal,
) -> (Decision, Vec<EventKind>) {
    tracing::info!(%store, %device, scan_id = %scan.scan_id, reason = %refusal.reason, detail = refusal.detail, "scan refused");
    let mut events = vec![EventKind::ScanRejected {
        scan_id: Some(scan.scan_id),
        reason: refusal.reason,
        detail: refusal.detail.clone(),
    }];
    if let Some(offline) = &scan.offline {
        let detail = format!(
            "the device started this session offline at {} on ticket {}, which management refuses ({}: {}); the device stops it",
            offline.started_at.to_rfc3339(),
            ticket_id.map_or("(unreadable)".to_owned(), |id| id.to_string()),
            refusal.reason,
            refusal.detail,
        );
        tracing::warn!(%store, %device, session_id = %offline.session_id, detail, "offline session refused");
        events.push(EventKind::SessionConflict {
            session_id: offline.session_id,
            detail,
        });
    }
    let decision = Decision::Rejected {
        reason: refusal.reason,
        detail: refusal.detail,
    };
    (decision, events)
}

/// A scan id seen before gets its first answer again (the start it led to is in the outbox,
/// which resends it until the device answers), so a crash between the commit and the publish
/// loses nothing.
async fn earlier_decision(
    tx: &impl GenericClient,
    store: &StoreId,
    device: &DeviceId,
    scan_id: ScanId,
) -> Result<Option<ScanOutcome>, tokio_postgres::Error> {
    let row = tx
        .cached_query_opt(
            "SELECT sc.accepted, sc.reason, sc.detail, sc.ticket_id, se.session_id, se.lease_until
             FROM scans sc LEFT JOIN sessions se ON se.session_id = sc.session_id
             WHERE sc.scan_id = $1",
            &[&scan_id.as_uuid()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    tracing::info!(%store, %device, %scan_id, "scan delivered again; answering with its first decision");
    let accepted: bool = row.get(0);
    let decision = match (accepted, row.get::<_, Option<Uuid>>(4)) {
        (true, Some(session_id)) => {
            let session_id = SessionId::from_uuid(session_id);
            let lease_until: DateTime<Utc> = row.get(5);
            let ticket_id = TicketId::from_uuid(row.get::<_, Option<Uuid>>(3).unwrap_or_default());
            Decision::Accepted {
                session_id,
                ticket_id,
                lease_until,
            }
        }
        _ => Decision::Rejected {
            reason: row
                .get::<_, Option<&str>>(1)
                .and_then(RejectReason::parse)
                .unwrap_or(RejectReason::MalformedScan),
            detail: row.get(2),
        },
    };
    Ok(Some(ScanOutcome {
        publish: vec![scan_result(store, device, scan_id, decision)],
        session_ends: None,
        start_sent: false,
        for_dispatcher: false,
        events_sent: 0,
        decided: None,
        stages: ScanStages::default(),
    }))
}

/// A scanning device's row, locked, and whether it runs a session (looked up by key: see
/// migration V14).
pub const DEVICE_ROW: &str = "SELECT d.in_service,
            EXISTS (SELECT 1 FROM sessions s
                    WHERE s.store_id = d.store_id AND s.device_id = d.device_id AND s.ended_at IS NULL),
            d.epoch
     FROM devices d WHERE d.store_id = $1 AND d.device_id = $2
     FOR UPDATE OF d";

/// The device's facts and its epoch, its row locked for the rest of the transaction.
struct DeviceRow {
    facts: DeviceFacts,
    epoch: i64,
}

async fn device_row(
    tx: &impl GenericClient,
    store: &StoreId,
    device: &DeviceId,
) -> Result<Option<DeviceRow>, tokio_postgres::Error> {
    // The row lock serializes decisions for one device across workers; holding it, this
    // transaction knows the device's epoch until it commits.
    let row = tx
        .cached_query_opt(DEVICE_ROW, &[&store.as_str(), &device.as_str()])
        .await?;
    Ok(row.map(|row| DeviceRow {
        facts: DeviceFacts {
            in_service: row.get(0),
            busy: row.get(1),
        },
        epoch: row.get(2),
    }))
}

async fn current_epoch(
    tx: &impl GenericClient,
    store: &StoreId,
    device: &DeviceId,
) -> Result<i64, tokio_postgres::Error> {
    let row = tx
        .cached_query_one(
            "SELECT epoch FROM devices WHERE store_id = $1 AND device_id = $2",
            &[&store.as_str(), &device.as_str()],
        )
        .await?;
    Ok(row.get(0))
}

/// Ends the device's open session if its lease is over; returns whether it did.
async fn end_overdue_session(
    tx: &impl GenericClient,
    store: &StoreId,
    device: &DeviceId,
    now: DateTime<Utc>,
) -> Result<bool, WorkError> {
    let row = tx
        .cached_query_opt(
            "SELECT session_id, store_id, device_id, started_at, lease_until FROM sessions
             WHERE store_id = $1 AND device_id = $2 AND ended_at IS NULL AND lease_until <= $3
             FOR UPDATE",
            &[&store.as_str(), &device.as_str(), &now],
        )
        .await?;
    let Some(session) = row.as_ref().and_then(OpenSession::from_row) else {
        return Ok(false);
    };
    tracing::info!(%store, %device, session_id = %session.session_id, "ending an overdue session for the next customer");
    end_session(tx, &session, EndReason::BookingEnded, now).await?;
    Ok(true)
}

async fn reservation_facts(
    tx: &impl GenericClient,
    ticket_id: Option<TicketId>,
) -> Result<Option<ReservationFacts>, tokio_postgres::Error> {
    let Some(ticket_id) = ticket_id else {
        return Ok(None);
    };
    let row = tx
        .cached_query_opt(
            "SELECT lower(r.period), upper(r.period), r.cancelled_at IS NOT NULL,
                    EXISTS (SELECT 1 FROM sessions s WHERE s.ticket_id = r.ticket_id)
             FROM reservations r WHERE r.ticket_id = $1
             FOR UPDATE OF r",
            &[&ticket_id.as_uuid()],
        )
        .await?;
    Ok(row.map(|row| ReservationFacts {
        starts_at: row.get(0),
        ends_at: row.get(1),
        cancelled: row.get(2),
        used: row.get(3),
    }))
}

/// A payload that is not a scan: refused with an event and, when its scan id can still be read,
/// an answer to the device.
async fn refuse_malformed(
    pool: &Pool,
    store: &StoreId,
    device: &DeviceId,
    payload: &[u8],
    error: &str,
    now: DateTime<Utc>,
) -> Result<ScanOutcome, WorkError> {
    tracing::warn!(%store, %device, bytes = payload.len(), error, "malformed scan refused");
    let scan_id = salvage_scan_id(payload);
    let detail: String = error.chars().take(200).collect();
    let event = Event {
        at: now,
        store: store.clone(),
        device: Some(device.clone()),
        kind: EventKind::ScanRejected {
            scan_id,
            reason: RejectReason::MalformedScan,
            detail: detail.clone(),
        },
    };
    let client = pool.get().await?;
    audit::record(&client, &event).await?;
    let mut publish = Vec::new();
    if let Some(scan_id) = scan_id {
        let decision = Decision::Rejected {
            reason: RejectReason::MalformedScan,
            detail,
        };
        publish.push(scan_result(store, device, scan_id, decision));
    }
    Ok(ScanOutcome {
        publish,
        session_ends: None,
        start_sent: false,
        for_dispatcher: true,
        events_sent: 0,
        decided: Some(ScanVerdict::Rejected(RejectReason::MalformedScan)),
        stages: ScanStages::default(),
    })
}

/// Answers a scan over its device's rate limit without deciding it (nothing is stored, so the
/// same scan id sent again later is decided then). `record` adds one `scan_rejected` event to
/// the audit log: done for the first refused scan of a flood only, so a flood cannot fill it.
pub async fn refuse_flood(
    pool: &Pool,
    store: &StoreId,
    device: &DeviceId,
    payload: &[u8],
    record: bool,
    now: DateTime<Utc>,
) -> Result<ScanOutcome, WorkError> {
    let scan_id = salvage_scan_id(payload);
    let detail = format!(
        "more than {} scans in a burst from this device (then one every {} s); scans refused until it slows down",
        crate::ratelimit::BURST,
        crate::ratelimit::REFILL.as_secs()
    );
    if record {
        tracing::warn!(%store, %device, "scan flood: refusing this device's scans for now");
    }
    let refusal = (RejectReason::TooManyScans, detail.as_str());
    refuse_undecided(pool, (store, device), scan_id, refusal, record, now).await
}

/// Answers a scan without deciding it (a flood, a forgery, a scan sent outside the time window):
/// its scan id is not stored, so the same id sent again later is decided then, and a forgery
/// cannot take the id of a real scan. `record` adds a `scan_rejected` event (the caller limits
/// how often); without a scan id to answer, only that event remains.
pub async fn refuse_undecided(
    pool: &Pool,
    (store, device): (&StoreId, &DeviceId),
    scan_id: Option<ScanId>,
    (reason, detail): (RejectReason, &str),
    record: bool,
    now: DateTime<Utc>,
) -> Result<ScanOutcome, WorkError> {
    if record {
        let event = Event {
            at: now,
            store: store.clone(),
            device: Some(device.clone()),
            kind: EventKind::ScanRejected {
                scan_id,
                reason,
                detail: detail.to_owned(),
            },
        };
        let client = pool.get().await?;
        audit::record(&client, &event).await?;
    }
    let publish = scan_id
        .map(|scan_id| {
            let detail = detail.to_owned();
            scan_result(
                store,
                device,
                scan_id,
                Decision::Rejected { reason, detail },
            )
        })
        .into_iter()
        .collect();
    Ok(ScanOutcome {
        publish,
        session_ends: None,
        start_sent: false,
        for_dispatcher: true,
        events_sent: 0,
        decided: Some(ScanVerdict::Rejected(reason)),
        stages: ScanStages::default(),
    })
}

fn salvage_scan_id(payload: &[u8]) -> Option<ScanId> {
    if payload.len() > message::MAX_PAYLOAD_BYTES {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    ScanId::parse(value.get("scan_id")?.as_str()?).ok()
}

fn scan_result(
    store: &StoreId,
    device: &DeviceId,
    scan_id: ScanId,
    decision: Decision,
) -> Outbound {
    let topic = Topic::device(store, device, DeviceChannel::ScanResult);
    Outbound::new(&topic, message::encode(&ScanResult { scan_id, decision }))
}

/// The command message for a device.
pub fn command_message(store: &StoreId, device: &DeviceId, command: &Command) -> Outbound {
    let topic = Topic::device(store, device, DeviceChannel::Command);
    Outbound::new(&topic, message::encode(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_ids_are_salvaged_from_otherwise_broken_scans() {
        let id = ScanId::random();
        let payload = format!(r#"{{"scan_id":"{id}","ticket":42}}"#);
        assert_eq!(salvage_scan_id(payload.as_bytes()), Some(id));
        assert_eq!(salvage_scan_id(b"not json"), None);
        assert_eq!(salvage_scan_id(br#"{"scan_id":"nope"}"#), None);
    }
}
