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

/// How often the timers look at the tables: a warning or a no-show goes out at most this late
/// (against minutes of warning and of grace). Working out the exact next moment instead cost a
/// look over every open session and every recent booking, more than the looks it spared.
const PERIOD: Duration = Duration::from_secs(1);
/// How many due rows of each kind one transaction handles.
const BATCH: i64 = 100;
/// Between full looks, a pass looks only at the bookings whose no-show moment came since the
/// last pass, less this margin (for a booking committed while that pass ran).
const MARGIN: Duration = Duration::from_secs(10);
/// How often the no-show timer looks at every booking of the last day, for what the passes
/// between could not see: a booking whose scan held its lock and then failed, a store whose
/// grace was shortened, a worker's clock stepping.
const FULL_LOOK_EVERY: Duration = Duration::from_secs(60);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Sessions warned.
    pub warned: usize,
    /// Bookings given up as no-shows.
    pub no_shows: usize,
}

/// Runs the warning and no-show timers until `stop` is cancelled; wakes the dispatcher after
/// each commit that queued commands or events.
pub async fn run(pool: Pool, wake_dispatcher: Arc<Notify>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    let mut looks = Looks::default();
    loop {
        let now = Utc::now();
        let look = looks.next(now);
        let pause = match run_due(&pool, now, look).await {
            Ok(pass) => {
                backoff = Duration::from_millis(200);
                if pass.warned + pass.no_shows > 0 {
                    wake_dispatcher.notify_one();
                }
                if pass.warned as i64 == BATCH || pass.no_shows as i64 == BATCH {
                    continue; // there may be more due than one batch
                }
                looks.done(look, now);
                PERIOD
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

/// Which look each pass takes: a full one first and every [`FULL_LOOK_EVERY`], otherwise one
/// since the last pass that handled everything it found (less [`MARGIN`]).
#[derive(Debug, Default)]
struct Looks {
    last_full: Option<DateTime<Utc>>,
    last_done: Option<DateTime<Utc>>,
}

impl Looks {
    fn next(&self, now: DateTime<Utc>) -> Look {
        let every = chrono::Duration::from_std(FULL_LOOK_EVERY).unwrap_or_default();
        let margin = chrono::Duration::from_std(MARGIN).unwrap_or_default();
        match (self.last_full, self.last_done) {
            (Some(full), Some(done)) if now - full < every && now >= done => {
                Look::Since(done - margin)
            }
            _ => Look::Full,
        }
    }

    /// `look`, taken at `now`, found fewer than a batch of each kind: all it could see is done.
    fn done(&mut self, look: Look, now: DateTime<Utc>) {
        if look == Look::Full {
            self.last_full = Some(now);
        }
        self.last_done = Some(now);
    }
}

/// Warns the sessions and gives up the no-shows due at `now` (among the bookings `look`
/// names), in one transaction.
pub async fn run_due(pool: &Pool, now: DateTime<Utc>, look: Look) -> Result<Pass, WorkError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let warned = warn_due(&tx, now).await?;
    let no_shows = give_up_no_shows(&tx, now, look).await?;
    tx.commit().await?;
    Ok(Pass { warned, no_shows })
}

/// Open sessions inside their store's warning window and not warned yet (the statement).
/// Only sessions ending within the longest window of any store are looked at, through the stop
/// timers' index, however many sessions are open.
pub const WARN_DUE: &str =
    "SELECT s.session_id, s.store_id, s.device_id, s.started_at, s.lease_until
     FROM sessions s JOIN stores st ON st.store_id = s.store_id
     WHERE s.ended_at IS NULL AND s.warned_at IS NULL
       AND s.lease_until > $1
       AND s.lease_until <= $1 + (SELECT make_interval(mins => max(warn_minutes)) FROM stores)
       AND s.lease_until - make_interval(mins => st.warn_minutes) <= $1
       AND s.started_at < s.lease_until - make_interval(mins => st.warn_minutes)
     ORDER BY s.lease_until
     LIMIT $2
     FOR UPDATE OF s SKIP LOCKED";

/// Open sessions inside their store's warning window and not warned yet: queue the warning
/// (it expires with the session), mark them warned, record the event. A session that started
/// inside the window is not warned: its start already showed the customer how little time is
/// left (and a warning right after the start would only be noise).
async fn warn_due(tx: &impl GenericClient, now: DateTime<Utc>) -> Result<usize, WorkError> {
    let due = tx.cached_query(WARN_DUE, &[&now, &BATCH]).await?;
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

/// Live bookings never scanned whose start plus their store's grace has passed, the earliest
/// first (the statement, with `$range` narrowing which bookings are looked at). Bookings that
/// started more than a day ago are history, not no-shows to act on: a worker down for longer
/// leaves them as they are.
macro_rules! no_shows_due {
    ($range:literal) => {
        concat!(
            "SELECT r.ticket_id FROM reservations r JOIN stores st ON st.store_id = r.store_id
             WHERE r.cancelled_at IS NULL
               AND lower(r.period) > $1::timestamptz - interval '1 day' ",
            $range,
            "
               AND lower(r.period) + make_interval(secs => st.no_show_grace_seconds) <= $1
               AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.ticket_id = r.ticket_id)
             ORDER BY lower(r.period)
             LIMIT $2
             FOR UPDATE OF r SKIP LOCKED"
        )
    };
}

/// The no-shows due among every booking of the last day, as the first look and one every
/// [`FULL_LOOK_EVERY`] take it: O(a day's bookings).
pub const NO_SHOWS_DUE: &str = no_shows_due!("");

/// The no-shows due among the bookings whose moment (start + grace) came after `$3`: through
/// the index of live bookings by start, only those starting within the stores' grace of the
/// window are read, however many were booked that day.
pub const NO_SHOWS_DUE_SINCE: &str = no_shows_due!(
    "AND lower(r.period) > $3::timestamptz
         - (SELECT make_interval(secs => max(no_show_grace_seconds)) FROM stores)
     AND lower(r.period) <= $1
         - (SELECT make_interval(secs => min(no_show_grace_seconds)) FROM stores)"
);

/// Which bookings a pass looks at for no-shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Every booking of the last day.
    Full,
    /// The bookings whose no-show moment came after this instant.
    Since(DateTime<Utc>),
}

/// Live bookings never scanned whose start plus the store's grace has passed (among those
/// `look` names): cancelled as no-shows (which frees the rest of their window, since only live
/// bookings exclude others).
async fn give_up_no_shows(
    tx: &impl GenericClient,
    now: DateTime<Utc>,
    look: Look,
) -> Result<usize, WorkError> {
    let claimed = match look {
        Look::Full => tx.cached_query(NO_SHOWS_DUE, &[&now, &BATCH]).await?,
        Look::Since(since) => {
            tx.cached_query(NO_SHOWS_DUE_SINCE, &[&now, &BATCH, &since])
                .await?
        }
    };
    let claimed: Vec<Uuid> = claimed.iter().map(|row| row.get(0)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn the_first_look_is_full_then_each_looks_since_the_last_pass_until_the_next_full_one() {
        let mut looks = Looks::default();
        assert_eq!(looks.next(at(0)), Look::Full);
        looks.done(Look::Full, at(0));
        assert_eq!(looks.next(at(1)), Look::Since(at(-10)));
        looks.done(Look::Since(at(-10)), at(1));
        assert_eq!(looks.next(at(2)), Look::Since(at(-9)));
        looks.done(Look::Since(at(-9)), at(59));
        assert_eq!(
            looks.next(at(60)),
            Look::Full,
            "a minute after the full one"
        );
    }

    #[test]
    fn a_pass_that_found_a_full_batch_is_looked_at_again_and_a_clock_stepping_back_looks_in_full() {
        let mut looks = Looks::default();
        looks.done(Look::Full, at(0));
        looks.done(Look::Since(at(-10)), at(5));
        // A full batch: `done` is not called, the window stays.
        assert_eq!(looks.next(at(6)), Look::Since(at(-5)));
        assert_eq!(looks.next(at(7)), Look::Since(at(-5)));
        assert_eq!(looks.next(at(4)), Look::Full, "now before the last pass");
    }
}
