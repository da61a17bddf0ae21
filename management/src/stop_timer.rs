//! Durable stop timers: every open session's `lease_until` in PostgreSQL is a timer. When it is
//! due, the session is closed with its usage record and its stop command written to the outbox,
//! then sent right after the commit (by the dispatcher while management is not connected).
//! Timers survive restarts because they are rows, and several workers can share them: due rows
//! are claimed with `FOR UPDATE SKIP LOCKED` inside a transaction, so a worker that dies holding
//! them releases them with its connection and another takes over.

use crate::db::CachedStatements;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use mujin_protocol::message::{Command, CommandAction, EndReason, Event, EventKind};
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::{CommandId, DeviceId, SessionId, StoreId};
use rumqttc::AsyncClient;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::audit;
use crate::db::WorkError;
use crate::metrics::Metrics;
use crate::mqtt::{publish_all, Outbound};
use crate::outbox;

/// The longest the timer sleeps before looking at the table again (new sessions also wake it).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How many due sessions one transaction closes.
const BATCH: i64 = 100;

/// Wakes the stop timer: with a new session's end, which it notes without reading the table,
/// or to read the table again (an end moved or removed).
#[derive(Debug, Default)]
pub struct TimerWake {
    notify: Notify,
    pending: std::sync::Mutex<Pending>,
}

/// What the wakes since the timer last looked asked for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Pending {
    earliest_new_end: Option<DateTime<Utc>>,
    rescan: bool,
}

impl TimerWake {
    /// A session ending at `lease_until` was started (and committed).
    pub fn session_started(&self, lease_until: DateTime<Utc>) {
        self.update(|pending| {
            pending.earliest_new_end = earliest(pending.earliest_new_end, Some(lease_until));
        });
    }

    /// Sessions' ends changed in ways only the table knows (stopped, extended, cancelled).
    pub fn rescan(&self) {
        self.update(|pending| pending.rescan = true);
    }

    fn update(&self, change: impl FnOnce(&mut Pending)) {
        // Nothing panics while holding it; a poisoned lock still holds consistent data.
        change(&mut self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        self.notify.notify_one();
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// How the stop timer sends the stops it decides: itself right after its commit while
/// management is connected (no dispatcher pass between the booked end and the device), through
/// the dispatcher otherwise.
pub struct StopSender {
    pub client: AsyncClient,
    pub connected: watch::Receiver<bool>,
    pub key: Arc<SigningKey>,
    pub metrics: Arc<Metrics>,
}

impl StopSender {
    async fn send(&self, pass: DuePass, stop: &CancellationToken) {
        publish_all(&self.client, pass.publish, stop).await;
        // Published means handed to the MQTT client, as the dispatcher counts it.
        let sent_at = Utc::now();
        for booked_end in pass.booked_ends {
            self.metrics.stop_published(sent_at - booked_end);
        }
        self.metrics.events_published(pass.events_sent);
    }
}

/// Runs the stop timers until `stop` is cancelled; `dispatch` wakes the dispatcher when stop
/// commands and events were queued for it.
///
/// The table is read when the earliest end known is due, at least every [`MAX_SLEEP`] (for
/// sessions other workers started) and on [`TimerWake::rescan`]; a session started here only
/// moves the earliest end in memory (reading the table for each was four statements per
/// session started).
pub async fn run(
    pool: Pool,
    wake: Arc<TimerWake>,
    dispatch: Arc<Notify>,
    sender: StopSender,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let mut next_due: Option<DateTime<Utc>> = None;
    let mut look = true;
    loop {
        let mut failed = false;
        if look {
            let key = (*sender.connected.borrow()).then_some(&*sender.key);
            match stop_due_sessions(&pool, key, Utc::now()).await {
                Ok(pass) => {
                    backoff = Duration::from_millis(200);
                    let (closed, due) = (pass.closed, pass.next_due);
                    if key.is_some() {
                        sender.send(pass, &stop).await;
                    } else if closed > 0 {
                        dispatch.notify_one();
                    }
                    if closed as i64 == BATCH {
                        continue; // there may be more due than one batch
                    }
                    next_due = due;
                }
                Err(error) => {
                    tracing::warn!(%error, "stop timers cannot reach the database; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    failed = true;
                }
            }
        }
        let (pause, known) = plan(next_due, failed.then_some(backoff), Utc::now());
        next_due = known;
        tokio::select! {
            () = stop.cancelled() => break,
            () = wake.notify.notified() => {
                let pending = wake.take();
                next_due = earliest(next_due, pending.earliest_new_end);
                look = pending.rescan || next_due.is_some_and(|due| due <= Utc::now());
            }
            () = tokio::time::sleep(pause) => look = true,
        }
    }
}

/// How long the timer sleeps, and the earliest end it still counts on: until that end, at most
/// [`MAX_SLEEP`]; after a failed look, its backoff, whatever the end (an end already past would
/// otherwise make it retry a database that is down in a tight loop), and no end until it has
/// looked again.
fn plan(
    next_due: Option<DateTime<Utc>>,
    failed_backoff: Option<Duration>,
    now: DateTime<Utc>,
) -> (Duration, Option<DateTime<Utc>>) {
    if let Some(backoff) = failed_backoff {
        return (backoff, None);
    }
    let until_due = next_due.map_or(MAX_SLEEP, |due| {
        (due - now).to_std().unwrap_or(Duration::ZERO)
    });
    (until_due.min(MAX_SLEEP), next_due)
}

/// The earlier of two optional instants.
fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// An open session, as the stop timer and operator actions see it.
#[derive(Debug, Clone)]
pub struct OpenSession {
    pub session_id: SessionId,
    pub store: StoreId,
    pub device: DeviceId,
    pub started_at: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
}

impl OpenSession {
    /// Reads a row of `session_id, store_id, device_id, started_at, lease_until`.
    pub fn from_row(row: &tokio_postgres::Row) -> Option<Self> {
        Some(Self {
            session_id: SessionId::from_uuid(row.get(0)),
            store: StoreId::parse(row.get(1)).ok()?,
            device: DeviceId::parse(row.get(2)).ok()?,
            started_at: row.get(3),
            lease_until: row.get(4),
        })
    }
}

/// Closes `session` with its usage record (end, reason), records the event and queues the stop
/// command for the dispatcher — all in the caller's transaction.
pub async fn end_session(
    tx: &impl GenericClient,
    session: &OpenSession,
    reason: EndReason,
    now: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    end_sessions(tx, std::slice::from_ref(session), reason, now, false).await?;
    Ok(())
}

/// The stop commands and events of sessions ended together, in the sessions' order.
struct Ended {
    stops: Vec<Command>,
    events: Vec<Event>,
}

/// [`end_session`] for many sessions (of different devices) at once: four statements whatever
/// their number, three of them sent together. With `sent_now`, the stops are recorded as their
/// first attempt and the events as published: the caller publishes them after its commit.
async fn end_sessions(
    tx: &impl GenericClient,
    sessions: &[OpenSession],
    reason: EndReason,
    now: DateTime<Utc>,
    sent_now: bool,
) -> Result<Ended, tokio_postgres::Error> {
    if sessions.is_empty() {
        return Ok(Ended {
            stops: Vec::new(),
            events: Vec::new(),
        });
    }
    let command_ids: Vec<CommandId> = sessions.iter().map(|_| CommandId::random()).collect();
    let events: Vec<Event> = sessions
        .iter()
        .map(|session| Event {
            at: now,
            store: session.store.clone(),
            device: Some(session.device.clone()),
            kind: EventKind::SessionEnded {
                session_id: session.session_id,
                started_at: session.started_at,
                ended_at: now,
                reason,
                used_ms: (now - session.started_at).num_milliseconds().max(0) as u64,
            },
        })
        .collect();
    tokio::try_join!(
        tx.prepare_cached(CLOSE_SESSIONS),
        tx.prepare_cached(BUMP_EPOCHS),
        tx.prepare_cached(audit::RECORD_EVENTS),
    )?;
    let record_events = async {
        if sent_now {
            audit::record_published(tx, &events, now).await
        } else {
            audit::record_all(tx, &events).await
        }
    };
    // Sent in this order without waiting for one another (see scans::record for why the
    // statements are prepared first).
    let (_, epochs, ()) = tokio::try_join!(
        biased;
        close_sessions(tx, sessions, &command_ids, reason, now),
        bump_epochs(tx, sessions),
        record_events,
    )?;
    let expires_at = now + outbox::STOP_EXPIRY;
    let stops: Vec<Command> = sessions
        .iter()
        .zip(command_ids)
        .map(|(session, command_id)| {
            let key = (session.store.to_string(), session.device.to_string());
            let epoch = epochs.get(&key).copied().unwrap_or_default();
            let stop = CommandAction::Stop {
                session_id: session.session_id,
                reason,
            };
            outbox::new_command(
                (&session.store, &session.device),
                command_id,
                stop,
                epoch,
                now,
            )
        })
        .collect();
    let queued: Vec<(&Command, DateTime<Utc>)> =
        stops.iter().map(|command| (command, expires_at)).collect();
    outbox::insert_commands(tx, &queued, now, sent_now).await?;
    Ok(Ended { stops, events })
}

const CLOSE_SESSIONS: &str =
    "UPDATE sessions s SET ended_at = $2, end_reason = $3, stop_command_id = u.command_id
     FROM unnest($1::uuid[], $4::uuid[]) AS u(session_id, command_id)
     WHERE s.session_id = u.session_id";

const BUMP_EPOCHS: &str = "UPDATE devices d SET epoch = d.epoch + 1
     FROM unnest($1::text[], $2::text[]) AS u(store_id, device_id)
     WHERE d.store_id = u.store_id AND d.device_id = u.device_id
     RETURNING d.store_id, d.device_id, d.epoch";

async fn close_sessions(
    tx: &impl GenericClient,
    sessions: &[OpenSession],
    command_ids: &[CommandId],
    reason: EndReason,
    now: DateTime<Utc>,
) -> Result<u64, tokio_postgres::Error> {
    let ids: Vec<Uuid> = sessions.iter().map(|s| s.session_id.as_uuid()).collect();
    let commands: Vec<Uuid> = command_ids.iter().map(|id| id.as_uuid()).collect();
    tx.cached_execute(CLOSE_SESSIONS, &[&ids, &now, &reason.as_str(), &commands])
        .await
}

/// Each device's new epoch, by (store, device).
async fn bump_epochs(
    tx: &impl GenericClient,
    sessions: &[OpenSession],
) -> Result<HashMap<(String, String), i64>, tokio_postgres::Error> {
    let stores: Vec<&str> = sessions.iter().map(|s| s.store.as_str()).collect();
    let devices: Vec<&str> = sessions.iter().map(|s| s.device.as_str()).collect();
    let rows = tx.cached_query(BUMP_EPOCHS, &[&stores, &devices]).await?;
    Ok(rows
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect())
}

/// One look at the due sessions: what to publish now that they are closed, and when the next
/// open session is due.
#[derive(Debug)]
pub struct DuePass {
    /// How many sessions were closed (at most one batch).
    pub closed: usize,
    /// With a key: each stop and its device's desired state (idle), then the events; empty
    /// without (the dispatcher sends them).
    pub publish: Vec<Outbound>,
    /// The booked end of each stop in `publish`, to time its lateness.
    pub booked_ends: Vec<DateTime<Utc>>,
    /// How many events `publish` carries.
    pub events_sent: usize,
    pub next_due: Option<DateTime<Utc>>,
}

/// Closes the sessions due at `now` (one batch at most). With `key`, their stops are recorded
/// as sent and their events as published, and come back signed for the caller to publish
/// right after (see [`outbox::sent_now`]); without, they are queued for the dispatcher.
pub async fn stop_due_sessions(
    pool: &Pool,
    key: Option<&SigningKey>,
    now: DateTime<Utc>,
) -> Result<DuePass, WorkError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let due = tx
        .cached_query(
            "SELECT session_id, store_id, device_id, started_at, lease_until FROM sessions
             WHERE ended_at IS NULL AND lease_until <= $1
             ORDER BY lease_until
             LIMIT $2
             FOR UPDATE SKIP LOCKED",
            &[&now, &BATCH],
        )
        .await?;
    let sessions: Vec<OpenSession> = due.iter().filter_map(OpenSession::from_row).collect();
    for session in &sessions {
        let lateness_ms = (now - session.lease_until).num_milliseconds();
        tracing::info!(store = %session.store, device = %session.device, session_id = %session.session_id, lateness_ms, "booking ended, stopping the session");
    }
    let ended = end_sessions(&tx, &sessions, EndReason::BookingEnded, now, key.is_some()).await?;
    let next_due: Option<DateTime<Utc>> = tx
        .cached_query_one(
            "SELECT min(lease_until) FROM sessions WHERE ended_at IS NULL AND lease_until > $1",
            &[&now],
        )
        .await?
        .get(0);
    tx.commit().await?;
    let mut pass = DuePass {
        closed: due.len(),
        publish: Vec::new(),
        booked_ends: Vec::new(),
        events_sent: 0,
        next_due,
    };
    if let Some(key) = key {
        let expires_at = now + outbox::STOP_EXPIRY;
        for (session, stop) in sessions.iter().zip(ended.stops) {
            let device = (&session.store, &session.device);
            pass.publish
                .extend(outbox::sent_now(stop, device, expires_at, None, key, now));
            pass.booked_ends.push(session.lease_until);
        }
        pass.events_sent = ended.events.len();
        pass.publish
            .extend(ended.events.iter().map(audit::event_message));
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_keep_the_earliest_new_end_and_any_rescan_until_taken() {
        let wake = TimerWake::default();
        let at = |secs| DateTime::from_timestamp(secs, 0).unwrap();
        wake.session_started(at(20));
        wake.session_started(at(10));
        wake.session_started(at(30));
        assert_eq!(
            wake.take(),
            Pending {
                earliest_new_end: Some(at(10)),
                rescan: false
            }
        );
        assert_eq!(wake.take(), Pending::default(), "taken once");
        wake.rescan();
        assert!(wake.take().rescan);
    }

    #[test]
    fn the_timer_sleeps_until_the_earliest_end_but_backs_off_after_a_failure() {
        let now = DateTime::from_timestamp(100, 0).unwrap();
        let at = |secs| Some(DateTime::from_timestamp(secs, 0).unwrap());
        let ms = Duration::from_millis;
        assert_eq!(
            plan(at(100), None, now + chrono::Duration::milliseconds(-300)),
            (ms(300), at(100))
        );
        assert_eq!(plan(at(200), None, now), (MAX_SLEEP, at(200)));
        assert_eq!(plan(None, None, now), (MAX_SLEEP, None));
        assert_eq!(
            plan(at(90), None, now),
            (Duration::ZERO, at(90)),
            "past due: at once"
        );
        assert_eq!(
            plan(at(90), Some(ms(800)), now),
            (ms(800), None),
            "after a failure: the backoff, even with an end past due"
        );
    }

    #[test]
    fn the_earliest_of_two_optional_instants() {
        let at = |secs| Some(DateTime::from_timestamp(secs, 0).unwrap());
        assert_eq!(earliest(at(5), at(3)), at(3));
        assert_eq!(earliest(None, at(3)), at(3));
        assert_eq!(earliest(at(5), None), at(5));
        assert_eq!(earliest(None, None), None);
    }
}
