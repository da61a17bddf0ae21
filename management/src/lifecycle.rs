//! Timers around the stop timer: the warning before a session ends, and no-shows (bookings
//! nobody scanned in time, given up so the device is free again). Like the stop timers they are
//! rows in PostgreSQL, claimed with `FOR UPDATE SKIP LOCKED`, so they survive restarts and
//! several workers can share them.

use crate::db::CachedStatements;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use mujin_protocol::message::{CommandAction, Event, EventKind};
use mujin_protocol::{CommandId, DeviceId, StoreId, TicketId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::audit;
use crate::db::WorkError;
use crate::outbox;
use crate::stop_timer::OpenSession;

/// The longest the timers sleep before looking at the tables again.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How many due rows of each kind one transaction handles.
const BATCH: i64 = 100;
/// Bookings that ended longer ago than this are history, not no-shows to act on (this bounds
/// the search to recent bookings; a worker down for longer leaves them as they are).
const NO_SHOW_LOOKBACK: &str = "1 day";

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Sessions warned.
    pub warned: usize,
    /// Bookings given up as no-shows.
    pub no_shows: usize,
    /// When the next warning or no-show is due, if any is known.
    pub next_due: Option<DateTime<Utc>>,
}

/// Runs the warning and no-show timers until `stop` is cancelled; wakes the dispatcher after
/// each commit that queued commands or events.
pub async fn run(pool: Pool, wake_dispatcher: Arc<Notify>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let pause = match run_due(&pool, Utc::now()).await {
            Ok(pass) => {
                backoff = Duration::from_millis(200);
                if pass.warned + pass.no_shows > 0 {
                    wake_dispatcher.notify_one();
                }
                if pass.warned as i64 == BATCH || pass.no_shows as i64 == BATCH {
                    continue; // there may be more due than one batch
                }
                pass.next_due
                    .and_then(|due| (due - Utc::now()).to_std().ok())
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_SLEEP)
            }
            Err(error) => {
                tracing::warn!(%error, "lifecycle timers cannot reach the database; retrying");
                backoff = (backoff * 2).min(Duration::from_secs(5));
                backoff
            }
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Warns the sessions and gives up the no-shows due at `now`, in one transaction.
pub async fn run_due(pool: &Pool, now: DateTime<Utc>) -> Result<Pass, WorkError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let warned = warn_due(&tx, now).await?;
    let no_shows = give_up_no_shows(&tx, now).await?;
    let next_due = next_due(&tx, now).await?;
    tx.commit().await?;
    Ok(Pass {
        warned,
        no_shows,
        next_due,
    })
}

/// Open sessions inside their store's warning window and not warned yet: queue the warning
/// (it expires with the session), mark them warned, record the event. A session that started
/// inside the window is not warned: its start already showed the customer how little time is
/// left (and a warning right after the start would only be noise).
async fn warn_due(tx: &impl GenericClient, now: DateTime<Utc>) -> Result<usize, WorkError> {
    let due = tx
        .cached_query(
            "SELECT s.session_id, s.store_id, s.device_id, s.started_at, s.lease_until
             FROM sessions s JOIN stores st ON st.store_id = s.store_id
             WHERE s.ended_at IS NULL AND s.warned_at IS NULL
               AND s.lease_until - make_interval(mins => st.warn_minutes) <= $1
               AND s.lease_until > $1
               AND s.started_at < s.lease_until - make_interval(mins => st.warn_minutes)
             ORDER BY s.lease_until
             LIMIT $2
             FOR UPDATE OF s SKIP LOCKED",
            &[&now, &BATCH],
        )
        .await?;
    for session in due.iter().filter_map(OpenSession::from_row) {
        let remaining_ms = (session.lease_until - now).num_milliseconds().max(0) as u64;
        let warn = CommandAction::Warn {
            session_id: session.session_id,
            lease_until: session.lease_until,
            remaining_ms,
        };
        outbox::enqueue(
            tx,
            &session.store,
            &session.device,
            CommandId::random(),
            warn,
            session.lease_until,
            now,
        )
        .await?;
        tx.cached_execute(
            "UPDATE sessions SET warned_at = $2 WHERE session_id = $1",
            &[&session.session_id.as_uuid(), &now],
        )
        .await?;
        let event = Event {
            at: now,
            store: session.store.clone(),
            device: Some(session.device.clone()),
            kind: EventKind::SessionWarned {
                session_id: session.session_id,
                lease_until: session.lease_until,
            },
        };
        audit::record(tx, &event).await?;
        tracing::info!(store = %session.store, device = %session.device, session_id = %session.session_id, remaining_ms, "session ends soon; customer warned");
    }
    Ok(due.len())
}

/// Live bookings never scanned whose start plus the store's grace has passed: cancelled as
/// no-shows (which frees the rest of their window, since only live bookings exclude others).
async fn give_up_no_shows(tx: &impl GenericClient, now: DateTime<Utc>) -> Result<usize, WorkError> {
    let claimed: Vec<Uuid> = tx
        .query(
            &format!(
                "SELECT r.ticket_id FROM reservations r JOIN stores st ON st.store_id = r.store_id
                 WHERE r.cancelled_at IS NULL
                   AND upper(r.period) > $1::timestamptz - interval '{NO_SHOW_LOOKBACK}'
                   AND lower(r.period) + make_interval(secs => st.no_show_grace_seconds) <= $1
                   AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.ticket_id = r.ticket_id)
                 ORDER BY lower(r.period)
                 LIMIT $2
                 FOR UPDATE OF r SKIP LOCKED"
            ),
            &[&now, &BATCH],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if claimed.is_empty() {
        return Ok(0);
    }
    // Checked again in a new statement: a scan that committed its session between the claim's
    // snapshot and its lock must win (scans lock the reservation before starting a session).
    let cancelled = tx
        .cached_query(
            "UPDATE reservations r SET cancelled_at = $2, cancel_reason = 'no_show'
             WHERE r.ticket_id = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.ticket_id = r.ticket_id)
             RETURNING r.ticket_id, r.store_id, r.device_id, lower(r.period), upper(r.period)",
            &[&claimed, &now],
        )
        .await?;
    for row in &cancelled {
        let (Ok(store), Ok(device)) = (StoreId::parse(row.get(1)), DeviceId::parse(row.get(2)))
        else {
            continue;
        };
        let ticket_id = TicketId::from_uuid(row.get(0));
        let event = Event {
            at: now,
            store: store.clone(),
            device: Some(device.clone()),
            kind: EventKind::ReservationNoShow {
                ticket_id,
                not_before: row.get(3),
                not_after: row.get(4),
            },
        };
        audit::record(tx, &event).await?;
        tracing::info!(%store, %device, %ticket_id, "booking not scanned in time: no-show, device freed");
    }
    Ok(cancelled.len())
}

/// The next moment a warning or a no-show falls due after `now` (rows already due but locked by
/// another worker are not counted: they are looked at again after [`MAX_SLEEP`]).
async fn next_due(
    tx: &impl GenericClient,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, WorkError> {
    let row = tx
        .query_one(
            &format!(
                "SELECT least(
                    (SELECT min(s.lease_until - make_interval(mins => st.warn_minutes))
                     FROM sessions s JOIN stores st ON st.store_id = s.store_id
                     WHERE s.ended_at IS NULL AND s.warned_at IS NULL
                       AND s.lease_until - make_interval(mins => st.warn_minutes) > $1
                       AND s.started_at < s.lease_until - make_interval(mins => st.warn_minutes)),
                    (SELECT min(lower(r.period) + make_interval(secs => st.no_show_grace_seconds))
                     FROM reservations r JOIN stores st ON st.store_id = r.store_id
                     WHERE r.cancelled_at IS NULL
                       AND upper(r.period) > $1::timestamptz - interval '{NO_SHOW_LOOKBACK}'
                       AND lower(r.period) + make_interval(secs => st.no_show_grace_seconds) > $1
                       AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.ticket_id = r.ticket_id)))"
            ),
            &[&now],
        )
        .await?;
    Ok(row.get(0))
}
