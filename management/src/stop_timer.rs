//! Durable stop timers: every open session's `lease_until` in PostgreSQL is a timer. When it is
//! due, the session is closed with its usage record and its stop command written to the outbox,
//! then sent right after the commit (by the dispatcher while management is not connected).
//! While connected, the sessions ending at the next instant are closed [`LEAD`] ahead of it in a
//! transaction that is committed at that instant, their stops signed meanwhile (see
//! [`close_ahead`]): at the end itself only the `COMMIT` and the publishing are left.
//! Timers survive restarts because they are rows, and several workers can share them: due rows
//! are claimed with `FOR UPDATE SKIP LOCKED` inside a transaction, so a worker that dies holding
//! them releases them with its connection and another takes over.

use crate::db::CachedStatements;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use mujin_protocol::message::{Command, CommandAction, EndReason, Event, EventKind};
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::{CommandId, DeviceId, SessionId, StoreId};
use rumqttc::AsyncClient;
use tokio::sync::{mpsc, watch, Notify};
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::audit;
use crate::db::{PipelinedTx, WorkError};
use crate::metrics::Metrics;
use crate::mqtt::{publish_all, Outbound};
use crate::outbox;

/// The longest the timer sleeps before looking at the table again (new sessions also wake it).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How many due sessions one transaction closes: small enough that the first stops of many
/// ending together go out while the next are closed (see [`StopSender`]).
const BATCH: i64 = 25;
/// How long before the next booked end the timer closes the sessions ending then (while
/// connected): enough to claim, write and sign a few hundred under load, short enough that
/// holding their rows meanwhile (an extension or a force stop of one of them waits for the
/// end, then finds the session ended) goes unnoticed.
pub const LEAD: Duration = Duration::from_millis(200);
/// How many sessions ending at one instant are closed ahead in one transaction; any more are
/// closed after it, [`BATCH`] at a time.
const AHEAD_BATCH: i64 = 500;

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

/// A pass for the [`StopSender`], with its messages when they were signed already (in the
/// order of [`DuePass::signed_messages`]).
type ToSend = (DuePass, Option<Vec<Outbound>>);

impl StopSender {
    /// Sends the passes it is given, in order, until the timer is gone: signing and publishing
    /// one pass while the timer closes the next.
    async fn run(self, mut passes: mpsc::Receiver<ToSend>, stop: CancellationToken) {
        while let Some((pass, signed)) = passes.recv().await {
            self.send(pass, signed, &stop).await;
        }
    }

    /// Hands to the MQTT client one stop (and its desired state) at a time, signing each as it
    /// goes unless `signed` already, so the first are on their way while the last are signed;
    /// then the events.
    async fn send(&self, pass: DuePass, signed: Option<Vec<Outbound>>, stop: &CancellationToken) {
        let events_sent = pass.events.len();
        let booked_ends: Vec<DateTime<Utc>> =
            pass.stops.iter().map(|(s, _)| s.lease_until).collect();
        match signed {
            Some(signed) => publish_all(&self.client, signed, stop).await,
            None => {
                for messages in pass.messages(&self.key) {
                    publish_all(&self.client, messages, stop).await;
                }
            }
        }
        // Published means handed to the MQTT client, as the dispatcher counts it.
        let sent_at = Utc::now();
        let ms = |at: DateTime<Utc>| (at - pass.now).num_microseconds().unwrap_or(0) as f64 / 1e3;
        tracing::debug!(
            stops = booked_ends.len(),
            committed_ms = ms(pass.committed_at),
            sent_ms = ms(sent_at),
            "sent stops (times from their look)"
        );
        for booked_end in booked_ends {
            self.metrics.stop_published(sent_at - booked_end);
        }
        self.metrics.events_published(events_sent);
    }
}

/// Runs the stop timers until `stop` is cancelled; `dispatch` wakes the dispatcher when stop
/// commands and events were queued for it.
///
/// The table is read when the earliest end known is due ([`LEAD`] before it while connected),
/// at least every [`MAX_SLEEP`] (for sessions other workers started) and on
/// [`TimerWake::rescan`]; a session started here only moves the earliest end in memory (reading
/// the table for each was four statements per session started).
pub async fn run(
    pool: Pool,
    wake: Arc<TimerWake>,
    dispatch: Arc<Notify>,
    sender: StopSender,
    stop: CancellationToken,
) {
    let connected = sender.connected.clone();
    let key = sender.key.clone();
    let (to_sender, passes) = mpsc::channel(16);
    let sending = tokio::spawn(sender.run(passes, stop.clone()));
    let mut backoff = Duration::from_millis(200);
    let mut next_due: Option<DateTime<Utc>> = None;
    let mut look = true;
    loop {
        let mut failed = false;
        if look {
            let sent_now = *connected.borrow();
            let now = Utc::now();
            let ahead = next_due.filter(|due| *due > now && *due <= now + lead(sent_now));
            let looked = match ahead {
                Some(end) => close_ahead(&pool, end, &key, &stop).await,
                None => stop_due_sessions(&pool, sent_now, now)
                    .await
                    .map(|pass| Some((pass, None))),
            };
            match looked {
                Ok(None) => break, // stopped while waiting for the end: rolled back
                Ok(Some((pass, signed))) => {
                    backoff = Duration::from_millis(200);
                    let (closed, full, due) = (pass.closed, pass.full, pass.next_due);
                    if sent_now && !pass.stops.is_empty() {
                        // Gone only when the sender stopped at shutdown; the dispatcher resends.
                        let _ = to_sender.send((pass, signed)).await;
                    } else if closed > 0 {
                        dispatch.notify_one();
                    }
                    if full {
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
        let lead = lead(*connected.borrow());
        let (pause, known) = plan(next_due, failed.then_some(backoff), Utc::now(), lead);
        next_due = known;
        tokio::select! {
            () = stop.cancelled() => break,
            () = wake.notify.notified() => {
                let pending = wake.take();
                next_due = earliest(next_due, pending.earliest_new_end);
                look = pending.rescan || next_due.is_some_and(|due| due <= Utc::now() + lead);
            }
            () = tokio::time::sleep(pause) => look = true,
        }
    }
    drop(to_sender);
    let _ = sending.await;
}

/// How long before an end the timer looks: [`LEAD`] while the stops can be sent right after
/// the commit, none while they are left to the dispatcher.
fn lead(connected: bool) -> chrono::Duration {
    if connected {
        chrono::Duration::from_std(LEAD).unwrap_or_default()
    } else {
        chrono::Duration::zero()
    }
}

/// How long the timer sleeps, and the earliest end it still counts on: until `lead` before that
/// end, at most [`MAX_SLEEP`]; after a failed look, its backoff, whatever the end (an end
/// already past would otherwise make it retry a database that is down in a tight loop), and no
/// end until it has looked again.
fn plan(
    next_due: Option<DateTime<Utc>>,
    failed_backoff: Option<Duration>,
    now: DateTime<Utc>,
    lead: chrono::Duration,
) -> (Duration, Option<DateTime<Utc>>) {
    if let Some(backoff) = failed_backoff {
        return (backoff, None);
    }
    let until_due = next_due.map_or(MAX_SLEEP, |due| {
        (due - lead - now).to_std().unwrap_or(Duration::ZERO)
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
    let command_id = CommandId::random();
    let events = [session_ended(session, reason, now)];
    let stop = CommandAction::Stop {
        session_id: session.session_id,
        reason,
    };
    tokio::try_join!(
        tx.prepare_cached(CLOSE_SESSION),
        tx.prepare_cached(audit::RECORD_EVENTS),
    )?;
    // Sent without waiting for one another (see scans::record for why the statements are
    // prepared first); the stop is queued after its device's epoch is raised.
    let expires_at = now + outbox::STOP_EXPIRY;
    let (_, (), _) = tokio::try_join!(
        biased;
        close_session(tx, session, command_id, reason, now),
        audit::record_all(tx, &events),
        outbox::enqueue(tx, &session.store, &session.device, command_id, stop, expires_at, now),
    )?;
    Ok(())
}

/// The event of `session` ending at `now`.
fn session_ended(session: &OpenSession, reason: EndReason, now: DateTime<Utc>) -> Event {
    Event {
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
    }
}

/// The command stopping `session` at its device's new `epoch`.
fn stop_command(
    session: &OpenSession,
    command_id: CommandId,
    epoch: i64,
    reason: EndReason,
    now: DateTime<Utc>,
) -> Command {
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
}

const CLOSE_SESSION: &str =
    "UPDATE sessions SET ended_at = $2, end_reason = $3, stop_command_id = $4 WHERE session_id = $1";

async fn close_session(
    tx: &impl GenericClient,
    session: &OpenSession,
    command_id: CommandId,
    reason: EndReason,
    now: DateTime<Utc>,
) -> Result<u64, tokio_postgres::Error> {
    tx.cached_execute(
        CLOSE_SESSION,
        &[
            &session.session_id.as_uuid(),
            &now,
            &reason.as_str(),
            &command_id.as_uuid(),
        ],
    )
    .await
}

/// Claims the due sessions (one batch, skipping those another worker holds), closes them, and
/// raises their devices' epochs, in one statement: each row is a session closed (as
/// [`OpenSession::from_row`] reads it), its stop's command id and its device's new epoch.
pub const CLOSE_DUE_SESSIONS: &str = "WITH due AS (
         SELECT session_id FROM sessions
         WHERE ended_at IS NULL AND lease_until <= $1
         ORDER BY lease_until LIMIT $2
         FOR UPDATE SKIP LOCKED),
     closed AS (
         UPDATE sessions s SET ended_at = $1, end_reason = $3, stop_command_id = gen_random_uuid()
         FROM due WHERE s.session_id = due.session_id
         RETURNING s.session_id, s.store_id, s.device_id, s.started_at, s.lease_until,
                   s.stop_command_id),
     bumped AS (
         UPDATE devices d SET epoch = d.epoch + 1
         FROM closed c WHERE d.store_id = c.store_id AND d.device_id = c.device_id
         RETURNING d.store_id, d.device_id, d.epoch)
     SELECT c.session_id, c.store_id, c.device_id, c.started_at, c.lease_until,
            c.stop_command_id, coalesce(b.epoch, 0)
     FROM closed c LEFT JOIN bumped b USING (store_id, device_id)
     ORDER BY c.lease_until";

/// The next booked end after `$1` (through the `sessions_stop_timers` index).
pub const NEXT_DUE: &str =
    "SELECT min(lease_until) FROM sessions WHERE ended_at IS NULL AND lease_until > $1";

/// One look at the due sessions: the sessions closed with their stops, the events, and when
/// the next open session is due.
#[derive(Debug)]
pub struct DuePass {
    /// How many sessions were closed: at most one batch.
    pub closed: usize,
    /// Whether they were a whole batch: more may be due.
    pub full: bool,
    /// The stops of those closed, in the order of their ends.
    pub stops: Vec<(OpenSession, Command)>,
    pub events: Vec<Event>,
    pub next_due: Option<DateTime<Utc>>,
    /// When they were closed.
    pub now: DateTime<Utc>,
    /// When the closing was committed.
    pub committed_at: DateTime<Utc>,
}

impl DuePass {
    /// What goes out when the pass's stops are sent right after its commit: each stop and its
    /// device's desired state (idle), signed as they are taken, then the events.
    pub fn messages<'a>(&'a self, key: &'a SigningKey) -> impl Iterator<Item = Vec<Outbound>> + 'a {
        let stops = self
            .stops
            .iter()
            .map(move |stop| self.stop_messages(stop, key));
        stops.chain(std::iter::once(
            self.events.iter().map(audit::event_message).collect(),
        ))
    }

    /// The same, all signed now and in the order they go out: every stop first, then the
    /// devices' desired states, then the events, so that the last stop of an instant is not
    /// queued behind the desired states of the others (each device still gets its stop before
    /// its desired state).
    pub fn signed_messages(&self, key: &SigningKey) -> Vec<Outbound> {
        let mut stops = Vec::with_capacity(self.stops.len());
        let mut desired = Vec::with_capacity(self.stops.len());
        for stop in &self.stops {
            let mut messages = self.stop_messages(stop, key).into_iter();
            stops.extend(messages.next());
            desired.extend(messages);
        }
        let events = self.events.iter().map(audit::event_message);
        stops.into_iter().chain(desired).chain(events).collect()
    }

    /// One stop and its device's desired state (idle), signed.
    fn stop_messages(
        &self,
        (session, stop): &(OpenSession, Command),
        key: &SigningKey,
    ) -> Vec<Outbound> {
        let device = (&session.store, &session.device);
        let expires_at = self.now + outbox::STOP_EXPIRY;
        outbox::sent_now(stop.clone(), device, expires_at, None, key, self.now)
    }
}

/// Closes the sessions due at `now` (one batch at most) in two round trips (see
/// [`PipelinedTx`]): begin, close them and raise their devices' epochs; write their events and
/// stops, read the next end and commit. With `sent_now`, the stops are recorded as their first
/// attempt and the events as published, for the caller to send right after (see
/// [`DuePass::messages`]); without, they are queued for the dispatcher.
pub async fn stop_due_sessions(
    pool: &Pool,
    sent_now: bool,
    now: DateTime<Utc>,
) -> Result<DuePass, WorkError> {
    let tx = PipelinedTx::new(pool.get().await?);
    let mut pass = close_due(&tx, sent_now, now, BATCH, true).await?;
    tx.committed();
    pass.committed_at = Utc::now();
    Ok(pass)
}

/// Closes the sessions ending at `at` or before (one batch of [`AHEAD_BATCH`] at most) ahead
/// of it, for a caller that sends their stops right after the commit: claims them, writes
/// their records and signs their messages, then waits until `at` to commit (rows claimed
/// meanwhile stay locked: an extension or a force stop waits, then finds the session ended).
/// Nothing claimed is committed at once. `None` when `stop` came first: rolled back, as if
/// never looked at.
pub async fn close_ahead(
    pool: &Pool,
    at: DateTime<Utc>,
    key: &SigningKey,
    stop: &CancellationToken,
) -> Result<Option<(DuePass, Option<Vec<Outbound>>)>, WorkError> {
    let tx = PipelinedTx::new(pool.get().await?);
    let mut pass = close_due(&tx, true, at, AHEAD_BATCH, false).await?;
    let signed = pass.signed_messages(key);
    if pass.closed > 0 {
        let until_end = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(until_end) => {}
        }
    }
    tx.commit().await?;
    tx.committed();
    pass.committed_at = Utc::now();
    Ok(Some((pass, Some(signed))))
}

/// Claims and closes the sessions due at `now` in `tx` (at most `limit`), writes their events
/// and stops and reads the next end; with `commit`, commits together with the writes.
async fn close_due(
    tx: &PipelinedTx,
    sent_now: bool,
    now: DateTime<Utc>,
    limit: i64,
    commit: bool,
) -> Result<DuePass, tokio_postgres::Error> {
    let client = tx.client();
    // Prepared first (once per connection): see PipelinedTx.
    tokio::try_join!(
        client.prepare_cached(CLOSE_DUE_SESSIONS),
        client.prepare_cached(audit::RECORD_EVENTS),
        client.prepare_cached(outbox::INSERT_COMMANDS),
        client.prepare_cached(NEXT_DUE),
    )?;
    let reason = EndReason::BookingEnded;
    let claim: [&(dyn ToSql + Sync); 3] = [&now, &limit, &reason.as_str()];
    let ((), closed) = tokio::try_join!(
        biased;
        tx.begin(),
        client.cached_query(CLOSE_DUE_SESSIONS, &claim),
    )?;
    let mut stops = Vec::with_capacity(closed.len());
    for row in &closed {
        let Some(session) = OpenSession::from_row(row) else {
            tracing::error!(session_id = %row.get::<_, Uuid>(0), "closed a session of an unreadable device");
            continue;
        };
        let lateness_ms = (now - session.lease_until).num_milliseconds();
        tracing::info!(store = %session.store, device = %session.device, session_id = %session.session_id, lateness_ms, "booking ended, stopping the session");
        let stop = stop_command(
            &session,
            CommandId::from_uuid(row.get(5)),
            row.get(6),
            reason,
            now,
        );
        stops.push((session, stop));
    }
    let events: Vec<Event> = stops
        .iter()
        .map(|(session, _)| session_ended(session, reason, now))
        .collect();
    let queued: Vec<(&Command, DateTime<Utc>)> = stops
        .iter()
        .map(|(_, stop)| (stop, now + outbox::STOP_EXPIRY))
        .collect();
    let record_events = async {
        if sent_now {
            audit::record_published(client, &events, now).await
        } else {
            audit::record_all(client, &events).await
        }
    };
    let write_stops = async {
        if queued.is_empty() {
            return Ok(());
        }
        outbox::insert_commands(client, &queued, now, sent_now).await
    };
    let commit_now = async {
        if commit {
            tx.commit().await?;
        }
        Ok(())
    };
    let after_now: [&(dyn ToSql + Sync); 1] = [&now];
    let ((), (), next_due, ()) = tokio::try_join!(
        biased;
        record_events,
        write_stops,
        client.cached_query_one(NEXT_DUE, &after_now),
        commit_now,
    )?;
    Ok(DuePass {
        closed: closed.len(),
        full: closed.len() as i64 == limit,
        stops,
        events,
        next_due: next_due.get(0),
        now,
        committed_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mujin_protocol::topic::{self, DeviceChannel};

    #[test]
    fn a_signed_pass_sends_every_stop_before_the_desired_states_and_the_events() {
        let now = DateTime::from_timestamp(1_000, 0).unwrap();
        let key = SigningKey::from_seed("c1".parse().unwrap(), &[3; 32]).unwrap();
        let store: StoreId = "s".parse().unwrap();
        let stop_of = |device: &str| {
            let session = OpenSession {
                session_id: SessionId::random(),
                store: store.clone(),
                device: device.parse().unwrap(),
                started_at: now,
                lease_until: now,
            };
            let action = CommandAction::Stop {
                session_id: session.session_id,
                reason: EndReason::BookingEnded,
            };
            let target = (&session.store, &session.device);
            let command = outbox::new_command(target, CommandId::random(), action, 2, now);
            (session, command)
        };
        let pass = DuePass {
            closed: 2,
            full: false,
            stops: vec![stop_of("d1"), stop_of("d2")],
            events: vec![Event {
                at: now,
                store: store.clone(),
                device: Some("d1".parse().unwrap()),
                kind: EventKind::SessionEnded {
                    session_id: SessionId::random(),
                    started_at: now,
                    ended_at: now,
                    reason: EndReason::BookingEnded,
                    used_ms: 0,
                },
            }],
            next_due: None,
            now,
            committed_at: now,
        };
        let topics: Vec<String> = pass
            .signed_messages(&key)
            .into_iter()
            .map(|message| message.topic)
            .collect();
        let device = |d: &str, channel| topic::device(&store, &d.parse().unwrap(), channel);
        assert_eq!(
            topics,
            [
                device("d1", DeviceChannel::Command),
                device("d2", DeviceChannel::Command),
                device("d1", DeviceChannel::Desired),
                device("d2", DeviceChannel::Desired),
                topic::events(&store),
            ]
        );
        let lazily: Vec<String> = pass
            .messages(&key)
            .flatten()
            .map(|message| message.topic)
            .collect();
        assert_eq!(
            lazily.len(),
            topics.len(),
            "the same messages, one stop at a time"
        );
    }

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
        let none = chrono::Duration::zero();
        assert_eq!(
            plan(
                at(100),
                None,
                now + chrono::Duration::milliseconds(-300),
                none
            ),
            (ms(300), at(100))
        );
        assert_eq!(
            plan(
                at(100),
                None,
                now + chrono::Duration::milliseconds(-300),
                lead(true)
            ),
            (ms(300) - LEAD, at(100)),
            "connected: the lead before the end"
        );
        assert_eq!(lead(false), none, "not connected: no lead");
        assert_eq!(plan(at(200), None, now, lead(true)), (MAX_SLEEP, at(200)));
        assert_eq!(plan(None, None, now, none), (MAX_SLEEP, None));
        assert_eq!(
            plan(at(90), None, now, none),
            (Duration::ZERO, at(90)),
            "past due: at once"
        );
        assert_eq!(
            plan(at(90), Some(ms(800)), now, lead(true)),
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
