//! Writing a decided scan: the scan, its events and, when it starts a session, the session, the
//! device's new epoch and the start command — all sent in one round trip to PostgreSQL.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use mujin_protocol::message::{Command, Decision, Event, Scan};
use mujin_protocol::{DeviceId, SessionId, StoreId, TicketId};

use crate::audit;
use crate::db::{clean_text, CachedStatements};
use crate::outbox;

/// The longest ticket text stored with a scan; longer readings are cut (they are refused anyway).
const STORED_TEXT_LIMIT: usize = 1024;

const INSERT_SESSION: &str = "INSERT INTO sessions (session_id, ticket_id, scan_id, store_id, device_id, started_at, lease_until, start_command_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
/// The new epoch is known: the decision holds the device's row lock since it read the old one.
const SET_EPOCH: &str = "UPDATE devices SET epoch = $3 WHERE store_id = $1 AND device_id = $2";
const INSERT_SCAN: &str = "INSERT INTO scans (scan_id, store_id, device_id, ticket_text, ticket_id, read_at, accepted, reason, detail, session_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

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

/// Prepares the statements of [`write`] (once per connection).
pub(super) async fn prepare(tx: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    tokio::try_join!(
        biased;
        tx.prepare_cached(INSERT_SESSION),
        tx.prepare_cached(SET_EPOCH),
        tx.prepare_cached(outbox::INSERT_COMMANDS),
        tx.prepare_cached(INSERT_SCAN),
        tx.prepare_cached(audit::RECORD_EVENTS),
    )?;
    Ok(())
}

/// Writes `decided` inside the caller's transaction. The statements must be prepared first
/// ([`prepare`]) so that the writes, polled together, are sent in order without waiting for
/// one another (the session before the command and the scan that refer to it), and before a
/// COMMIT polled after them.
pub(super) async fn write(
    tx: &impl GenericClient,
    decided: &Decided<'_>,
) -> Result<(), tokio_postgres::Error> {
    let start = async {
        match decided.start {
            Some(start) => start_session(tx, decided, start).await,
            None => Ok(()),
        }
    };
    let events = async {
        if decided.events_published_now {
            audit::record_published(tx, decided.events, decided.now).await
        } else {
            audit::record_all(tx, decided.events).await
        }
    };
    tokio::try_join!(biased; start, insert_scan(tx, decided), events)?;
    Ok(())
}

async fn start_session(
    tx: &impl GenericClient,
    decided: &Decided<'_>,
    start: &Start,
) -> Result<(), tokio_postgres::Error> {
    tokio::try_join!(
        biased;
        insert_session(tx, decided, start),
        set_epoch(tx, decided.target, start.command.epoch),
        outbox::insert_command(
            tx,
            &start.command,
            start.lease_until,
            decided.now,
            decided.start_sent_now,
        ),
    )?;
    Ok(())
}

async fn insert_session(
    tx: &impl GenericClient,
    decided: &Decided<'_>,
    start: &Start,
) -> Result<u64, tokio_postgres::Error> {
    let (store, device) = decided.target;
    tx.cached_execute(
        INSERT_SESSION,
        &[
            &start.session_id.as_uuid(),
            &start.ticket_id.as_uuid(),
            &decided.scan.scan_id.as_uuid(),
            &store.as_str(),
            &device.as_str(),
            &start.started_at,
            &start.lease_until,
            &start.command.command_id.as_uuid(),
        ],
    )
    .await
}

async fn set_epoch(
    tx: &impl GenericClient,
    (store, device): (&StoreId, &DeviceId),
    epoch: u64,
) -> Result<u64, tokio_postgres::Error> {
    tx.cached_execute(
        SET_EPOCH,
        &[&store.as_str(), &device.as_str(), &(epoch as i64)],
    )
    .await
}

async fn insert_scan(
    tx: &impl GenericClient,
    decided: &Decided<'_>,
) -> Result<u64, tokio_postgres::Error> {
    let (store, device) = decided.target;
    let (accepted, reason, detail, session_id) = match decided.decision {
        Decision::Accepted { session_id, .. } => (true, None, "", Some(session_id.as_uuid())),
        Decision::Rejected { reason, detail } => {
            (false, Some(reason.as_str()), detail.as_str(), None)
        }
    };
    let text = clean_text(&decided.scan.ticket, STORED_TEXT_LIMIT);
    tx.cached_execute(
        INSERT_SCAN,
        &[
            &decided.scan.scan_id.as_uuid(),
            &store.as_str(),
            &device.as_str(),
            &text,
            &decided.ticket_id.map(|id| id.as_uuid()),
            &decided.scan.read_at,
            &accepted,
            &reason,
            &detail,
            &session_id,
        ],
    )
    .await
}
