//! Writing a decided scan: the scan, its events and, when it starts a session, the session, the
//! device's new epoch and the start command — all in one statement.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use mujin_protocol::message::{Command, Decision, Event, Scan};
use mujin_protocol::{DeviceId, SessionId, StoreId, TicketId};

use crate::audit::EventColumns;
use crate::db::{clean_text, CachedStatements};
use crate::outbox::FirstAttempt;

/// The longest ticket text stored with a scan; longer readings are cut (they are refused anyway).
const STORED_TEXT_LIMIT: usize = 1024;

/// Everything a decided scan writes, in one statement: its session, the device's new epoch and
/// the start command (only when `$1`, the session id, is set), the scan and its events. One
/// statement instead of five spares PostgreSQL four portals, plans and executor set-ups per
/// scan; the foreign keys between the rows are checked at the statement's end, as for any
/// statement. The new epoch is known: the decision holds the device's row lock since it read
/// the old one.
const RECORD: &str = "WITH session AS (
         INSERT INTO sessions (session_id, ticket_id, scan_id, store_id, device_id, started_at,
                               lease_until, start_command_id)
         SELECT $1::uuid, $2::uuid, $3::uuid, $4::text, $5::text, $6::timestamptz,
                $7::timestamptz, $8::uuid
         WHERE $1::uuid IS NOT NULL
     ), epoch AS (
         UPDATE devices SET epoch = $9::bigint
         WHERE $1::uuid IS NOT NULL AND store_id = $4::text AND device_id = $5::text
     ), command AS (
         INSERT INTO commands (command_id, store_id, device_id, session_id, epoch, action,
                               payload, next_attempt_at, expires_at, created_at, status,
                               attempts, sent_at)
         SELECT $8::uuid, $4::text, $5::text, $1::uuid, $9::bigint, $10::text, $11::jsonb,
                $12::timestamptz, $7::timestamptz, $13::timestamptz, $14::text, $15::integer,
                $16::timestamptz
         WHERE $1::uuid IS NOT NULL
     ), scan AS (
         INSERT INTO scans (scan_id, store_id, device_id, ticket_text, ticket_id, read_at,
                            accepted, reason, detail, session_id)
         VALUES ($3::uuid, $4::text, $5::text, $17::text, $18::uuid, $19::timestamptz,
                 $20::boolean, $21::text, $22::text, $1::uuid)
     )
     INSERT INTO events (at, store_id, device_id, kind, body, published_at)
     SELECT at, store_id, device_id, kind, body, $28::timestamptz
     FROM unnest($23::timestamptz[], $24::text[], $25::text[], $26::text[], $27::jsonb[])
          WITH ORDINALITY AS e(at, store_id, device_id, kind, body, n)
     ORDER BY n";

/// The session an accepted scan starts. A session the device already started offline keeps the
/// device's session id and start time.
pub(super) struct Start {
    pub session_id: SessionId,
    pub ticket_id: TicketId,
    pub started_at: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
    /// Its start command, at the device's next epoch.
    pub command: Command,
}

/// Everything a decided scan writes.
pub(super) struct Decided<'a> {
    pub target: (&'a StoreId, &'a DeviceId),
    pub scan: &'a Scan,
    pub ticket_id: Option<TicketId>,
    pub decision: &'a Decision,
    pub start: Option<&'a Start>,
    /// The start command goes out with the scan's answer (recorded as its first attempt).
    pub start_sent_now: bool,
    pub events: &'a [Event],
    /// The events go out with the scan's answer (recorded as published), not through the
    /// dispatcher.
    pub events_published_now: bool,
    pub now: DateTime<Utc>,
}

/// Prepares the statement of [`write`] (once per connection).
pub(super) async fn prepare(tx: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    tx.prepare_cached(RECORD).await?;
    Ok(())
}

/// Writes `decided` inside the caller's transaction. The statement must be prepared first
/// ([`prepare`]) so that it is sent before a COMMIT polled after it, without waiting for a
/// round trip of its own.
pub(super) async fn write(
    tx: &impl GenericClient,
    decided: &Decided<'_>,
) -> Result<(), tokio_postgres::Error> {
    let (store, device) = decided.target;
    let start = decided.start;
    let command = start.map(|start| &start.command);
    let payload = command.map(|command| serde_json::to_value(command).unwrap_or_default());
    let first = FirstAttempt::new(decided.now, decided.start_sent_now);
    let (accepted, reason, detail) = match decided.decision {
        Decision::Accepted { .. } => (true, None, ""),
        Decision::Rejected { reason, detail } => (false, Some(reason.as_str()), detail.as_str()),
    };
    let text = clean_text(&decided.scan.ticket, STORED_TEXT_LIMIT);
    let events = EventColumns::new(decided.events);
    let [at, stores, devices, kinds, bodies] = events.params();
    let published_at = decided.events_published_now.then_some(decided.now);
    tx.cached_execute(
        RECORD,
        &[
            &start.map(|start| start.session_id.as_uuid()),
            &start.map(|start| start.ticket_id.as_uuid()),
            &decided.scan.scan_id.as_uuid(),
            &store.as_str(),
            &device.as_str(),
            &start.map(|start| start.started_at),
            &start.map(|start| start.lease_until),
            &command.map(|command| command.command_id.as_uuid()),
            &command.map(|command| command.epoch as i64),
            &command.map(|command| command.action.name()),
            &payload,
            &first.next_attempt_at,
            &decided.now,
            &first.status,
            &first.attempts,
            &first.sent_at,
            &text,
            &decided.ticket_id.map(|id| id.as_uuid()),
            &decided.scan.read_at,
            &accepted,
            &reason,
            &detail,
            at,
            stores,
            devices,
            kinds,
            bodies,
            &published_at,
        ],
    )
    .await?;
    Ok(())
}
