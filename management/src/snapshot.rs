//! Snapshot queries: one page of upcoming bookings, recent sessions or recent events for a
//! console catching up after a (re)connection. Read-only: nothing is recorded, and a query sent
//! again is simply answered again.
//!
//! Pages are cut by keyset: the cursor names the last row sent (`{start in µs}:{id}` for
//! bookings and sessions, the audit log's `event_id` for events), so rows added or removed
//! between two pages never shift the others.

use crate::db::CachedStatements;
use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::Pool;
use mujin_protocol::message::{EndReason, Event, Reply};
use mujin_protocol::snapshot::{self, BookingSummary, SessionSummary, SnapshotPart};
use mujin_protocol::{DeviceId, RequestId, SessionId, StoreId, TicketId};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::db::WorkError;

/// Rows read per page; more than ever fit in one reply, so a page is cut by size, not count.
const FETCH: i64 = 200;
/// How many of the most recent events the events part starts from.
pub const RECENT_EVENTS: i64 = 200;
/// Ended sessions are listed this long after their end.
pub fn ended_sessions_window() -> Duration {
    Duration::hours(24)
}

/// Why a snapshot query cannot be answered with a page.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("invalid cursor {0:?}: pass the `next` of the previous page unchanged")]
    BadCursor(String),
    #[error(transparent)]
    Db(#[from] WorkError),
}

/// Answers one snapshot query with one page.
pub async fn answer(
    pool: &Pool,
    request_id: RequestId,
    part: SnapshotPart,
    store: Option<&StoreId>,
    after: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Reply, SnapshotError> {
    match part {
        SnapshotPart::Bookings => {
            let after = after.map(keyset).transpose()?;
            let (rows, more) = bookings(pool, store, after, now).await?;
            Ok(snapshot::page_reply(request_id, rows, more))
        }
        SnapshotPart::Sessions => {
            let after = after.map(keyset).transpose()?;
            let (rows, more) = sessions(pool, store, after, now).await?;
            Ok(snapshot::page_reply(request_id, rows, more))
        }
        SnapshotPart::Events => {
            let after = after.map(event_cursor).transpose()?;
            let (rows, more) = events(pool, store, after).await?;
            Ok(snapshot::page_reply(request_id, rows, more))
        }
    }
}

/// A bookings or sessions cursor: the start and id of the last row sent.
fn keyset(cursor: &str) -> Result<(DateTime<Utc>, Uuid), SnapshotError> {
    let bad = || SnapshotError::BadCursor(cursor.chars().take(80).collect());
    let (micros, id) = cursor.split_once(':').ok_or_else(bad)?;
    let at = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok((at, id))
}

fn keyset_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}:{id}", at.timestamp_micros())
}

fn event_cursor(cursor: &str) -> Result<i64, SnapshotError> {
    cursor
        .parse::<i64>()
        .map_err(|_| SnapshotError::BadCursor(cursor.chars().take(80).collect()))
}

/// Live bookings nobody used yet whose window has not ended, by start.
async fn bookings(
    pool: &Pool,
    store: Option<&StoreId>,
    after: Option<(DateTime<Utc>, Uuid)>,
    now: DateTime<Utc>,
) -> Result<(Vec<(BookingSummary, String)>, bool), WorkError> {
    let client = pool.get().await?;
    let (after_at, after_id) = after.unzip();
    let rows = client
        .cached_query(
            "SELECT r.ticket_id, r.store_id, r.device_id, lower(r.period), upper(r.period)
             FROM reservations r
             WHERE r.cancelled_at IS NULL AND upper(r.period) > $1
               AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.ticket_id = r.ticket_id)
               AND ($2::text IS NULL OR r.store_id = $2)
               AND ($3::timestamptz IS NULL OR (lower(r.period), r.ticket_id) > ($3, $4))
             ORDER BY lower(r.period), r.ticket_id
             LIMIT $5",
            &[
                &now,
                &store.map(StoreId::as_str),
                &after_at,
                &after_id,
                &FETCH,
            ],
        )
        .await?;
    let more = rows.len() as i64 == FETCH;
    let items = rows.iter().filter_map(booking_row).collect();
    Ok((items, more))
}

fn booking_row(row: &Row) -> Option<(BookingSummary, String)> {
    let ticket: Uuid = row.get(0);
    let not_before: DateTime<Utc> = row.get(3);
    let (store, device) = ids(row, 1)?;
    let booking = BookingSummary {
        ticket_id: TicketId::from_uuid(ticket),
        store,
        device,
        not_before,
        not_after: row.get(4),
    };
    Some((booking, keyset_cursor(not_before, ticket)))
}

/// Running sessions and those that ended within the window, by start.
async fn sessions(
    pool: &Pool,
    store: Option<&StoreId>,
    after: Option<(DateTime<Utc>, Uuid)>,
    now: DateTime<Utc>,
) -> Result<(Vec<(SessionSummary, String)>, bool), WorkError> {
    let client = pool.get().await?;
    let (after_at, after_id) = after.unzip();
    let since = now - ended_sessions_window();
    let rows = client
        .cached_query(
            "SELECT session_id, ticket_id, store_id, device_id, started_at, lease_until,
                    ended_at, end_reason
             FROM sessions
             WHERE (ended_at IS NULL OR ended_at > $1)
               AND ($2::text IS NULL OR store_id = $2)
               AND ($3::timestamptz IS NULL OR (started_at, session_id) > ($3, $4))
             ORDER BY started_at, session_id
             LIMIT $5",
            &[
                &since,
                &store.map(StoreId::as_str),
                &after_at,
                &after_id,
                &FETCH,
            ],
        )
        .await?;
    let more = rows.len() as i64 == FETCH;
    let items = rows.iter().filter_map(session_row).collect();
    Ok((items, more))
}

fn session_row(row: &Row) -> Option<(SessionSummary, String)> {
    let session: Uuid = row.get(0);
    let started_at: DateTime<Utc> = row.get(4);
    let (store, device) = ids(row, 2)?;
    let end_reason: Option<String> = row.get(7);
    let summary = SessionSummary {
        session_id: SessionId::from_uuid(session),
        ticket_id: TicketId::from_uuid(row.get(1)),
        store,
        device,
        started_at,
        lease_until: row.get(5),
        ended_at: row.get(6),
        end_reason: end_reason.as_deref().and_then(EndReason::parse),
    };
    Some((summary, keyset_cursor(started_at, session)))
}

/// The store and device ids in columns `at` and `at + 1`; a row with ids that no longer parse
/// is left out rather than failing the whole page.
fn ids(row: &Row, at: usize) -> Option<(StoreId, DeviceId)> {
    let store = StoreId::parse(row.get(at)).ok();
    let device = DeviceId::parse(row.get(at + 1)).ok();
    if store.is_none() || device.is_none() {
        tracing::warn!(
            store = row.get::<_, &str>(at),
            device = row.get::<_, &str>(at + 1),
            "invalid ids in the database; left out of a snapshot"
        );
    }
    store.zip(device)
}

/// The first page: the most recent events; the next ones: the events after the cursor.
async fn events(
    pool: &Pool,
    store: Option<&StoreId>,
    after: Option<i64>,
) -> Result<(Vec<(Event, String)>, bool), WorkError> {
    let client = pool.get().await?;
    let store = store.map(StoreId::as_str);
    let (rows, more) = match after {
        None => {
            let rows = client
                .cached_query(
                    "SELECT event_id, body FROM (
                         SELECT event_id, body FROM events
                         WHERE ($1::text IS NULL OR store_id = $1)
                         ORDER BY event_id DESC LIMIT $2
                     ) recent ORDER BY event_id",
                    &[&store, &RECENT_EVENTS],
                )
                .await?;
            // Nothing is newer than the most recent events.
            (rows, false)
        }
        Some(after) => {
            let rows = client
                .cached_query(
                    "SELECT event_id, body FROM events
                     WHERE event_id > $1 AND ($2::text IS NULL OR store_id = $2)
                     ORDER BY event_id LIMIT $3",
                    &[&after, &store, &FETCH],
                )
                .await?;
            let more = rows.len() as i64 == FETCH;
            (rows, more)
        }
    };
    let items = rows.iter().filter_map(event_row).collect();
    Ok((items, more))
}

fn event_row(row: &Row) -> Option<(Event, String)> {
    let event_id: i64 = row.get(0);
    match serde_json::from_value::<Event>(row.get(1)) {
        Ok(event) => Some((event, event_id.to_string())),
        Err(error) => {
            tracing::error!(event_id, %error, "unreadable event in the audit log; left out of a snapshot");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_cursors_round_trip_and_refuse_anything_else() {
        let at = DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap();
        let id = Uuid::new_v4();
        let cursor = keyset_cursor(at, id);
        assert_eq!(cursor, format!("1800000000123456:{id}"));
        assert!(cursor.len() <= snapshot::MAX_CURSOR_LEN);
        assert_eq!(keyset(&cursor).unwrap(), (at, id));
        for bad in ["", "12", "x:y", "12:not-a-uuid", &format!("1.5:{id}")] {
            assert!(
                matches!(keyset(bad), Err(SnapshotError::BadCursor(_))),
                "{bad}"
            );
        }
        assert_eq!(event_cursor("42").unwrap(), 42);
        assert!(event_cursor("4x").is_err());
    }
}
