//! What devices report: availability (the last will, and heartbeats that stop), clock skew,
//! and each session's end as the device saw it. Reported state that contradicts the database is
//! flagged; a program that exited by itself closes its session.

use crate::db::CachedStatements;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use mujin_protocol::message::{
    self, Availability, EndReason, Event, EventKind, ProgramExit, ProgramStatus, ReportedState,
    StopCause, Telemetry,
};
use mujin_protocol::{DeviceId, SessionId, StoreId};
use tokio::time::Instant;

use crate::audit;
use crate::db::{clean_text, WorkError};
use crate::stop_timer::{end_session, OpenSession};

/// A device is offline when no heartbeat came for this many heartbeat intervals.
const MISSED_INTERVALS: f64 = 1.5;
/// A device clock further than this from management's raises a clock-skew alert.
pub const MAX_CLOCK_SKEW_MS: i64 = 2_000;
/// The heartbeat interval assumed until a device's own rhythm is known.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Bounds on a heartbeat interval, declared or learned.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(300);

type DeviceKey = (StoreId, DeviceId);

/// One device's heartbeat rhythm and what was last concluded from it.
#[derive(Debug, Clone)]
struct Heartbeat {
    last: Instant,
    interval: Duration,
    online: bool,
    skewed: bool,
}

/// Availability and clock-skew tracking from heartbeats (pure: the caller passes the instants).
#[derive(Debug, Default)]
pub struct Liveness {
    devices: HashMap<DeviceKey, Heartbeat>,
    /// (device, session) conflicts already reported, so each is flagged once.
    flagged: HashSet<(DeviceKey, SessionId)>,
    /// The device time of the newest report (state or heartbeat) taken from each device, so a
    /// duplicate or a report overtaken by a newer one changes nothing.
    newest: HashMap<(DeviceKey, bool), DateTime<Utc>>,
    /// The session whose end, as each device told it, is known to be recorded: a device
    /// repeats its last exit in every state until its next session ends, and recording it again
    /// would change nothing but cost a transaction with a lock on the device's open session.
    recorded_exits: HashMap<DeviceKey, SessionId>,
}

/// A change worth recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Availability(Availability),
    ClockSkew(i64),
}

impl Liveness {
    /// A heartbeat (telemetry) arrived at `now`; `skew_ms` is the device clock minus ours.
    pub fn heartbeat(
        &mut self,
        key: &DeviceKey,
        now: Instant,
        beat: &Beat,
        max_skew_ms: i64,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let entry = self.devices.entry(key.clone()).or_insert(Heartbeat {
            last: now,
            interval: DEFAULT_INTERVAL,
            online: false,
            skewed: false,
        });
        let gap = now.saturating_duration_since(entry.last);
        if let Some(declared) = beat.interval {
            // The device says how often it reports: judged by that from its first beat on (a
            // rhythm slower than the default would otherwise go offline between every two).
            entry.interval = declared.clamp(MIN_INTERVAL, MAX_INTERVAL);
        } else if entry.online && gap > Duration::ZERO {
            // Follow the device's own rhythm, smoothed so one late beat does not halve it.
            let gap = gap.clamp(MIN_INTERVAL, Duration::from_secs(60));
            entry.interval = (entry.interval * 3 + gap) / 4;
        }
        let skew_ms = beat.skew_ms;
        entry.last = now;
        if !entry.online {
            entry.online = true;
            changes.push(Change::Availability(Availability::Online));
        }
        let skewed = skew_ms.abs() > max_skew_ms;
        if skewed && !entry.skewed {
            changes.push(Change::ClockSkew(skew_ms));
        }
        entry.skewed = skewed;
        changes
    }

    /// The device said it is online or offline (its state, or its last will).
    pub fn reported(
        &mut self,
        key: &DeviceKey,
        availability: Availability,
        now: Instant,
    ) -> Option<Change> {
        // The first word from a device since this worker started is always passed on (the
        // database decides whether it changes anything): a device that went offline while no
        // worker ran is otherwise never recorded as offline.
        let first = !self.devices.contains_key(key);
        let entry = self.devices.entry(key.clone()).or_insert(Heartbeat {
            last: now,
            interval: DEFAULT_INTERVAL,
            online: false,
            skewed: false,
        });
        let online = availability == Availability::Online;
        if online {
            entry.last = now;
        }
        (first || entry.online != online).then(|| {
            entry.online = online;
            Change::Availability(availability)
        })
    }

    /// Devices whose heartbeats stopped: marked offline and returned.
    pub fn overdue(&mut self, now: Instant) -> Vec<DeviceKey> {
        let mut overdue = Vec::new();
        for (key, entry) in &mut self.devices {
            let timeout = entry.interval.mul_f64(MISSED_INTERVALS);
            if entry.online && now.saturating_duration_since(entry.last) > timeout {
                entry.online = false;
                overdue.push(key.clone());
            }
        }
        overdue
    }

    /// Whether a report written at `at` (device clock) is newer than every earlier one of the
    /// same kind (`heartbeat` or state) from the device; remembers it if so.
    pub fn is_newest(&mut self, key: &DeviceKey, heartbeat: bool, at: DateTime<Utc>) -> bool {
        let newest = self
            .newest
            .entry((key.clone(), heartbeat))
            .or_insert(DateTime::<Utc>::MIN_UTC);
        if at <= *newest {
            return false;
        }
        *newest = at;
        true
    }

    /// Whether the device's account of how `session_id` ended is known to be recorded.
    pub fn exit_recorded(&self, key: &DeviceKey, session_id: SessionId) -> bool {
        self.recorded_exits.get(key) == Some(&session_id)
    }

    /// Remembers that the device's account of how `session_id` ended is recorded.
    pub fn note_exit_recorded(&mut self, key: &DeviceKey, session_id: SessionId) {
        self.recorded_exits.insert(key.clone(), session_id);
    }

    /// Whether this conflict is new (and remembers it).
    fn first_flag(&mut self, key: &DeviceKey, session_id: SessionId) -> bool {
        self.flagged.insert((key.clone(), session_id))
    }
}

/// Records an availability change: the device row, and an event naming the session that was
/// running (an alert when it went offline).
pub async fn record_availability(
    pool: &Pool,
    (store, device): &DeviceKey,
    availability: Availability,
    now: DateTime<Utc>,
) -> Result<(), WorkError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let online = availability == Availability::Online;
    let updated = tx
        .cached_execute(
            "UPDATE devices SET online = $3, availability_changed_at = $4
             WHERE store_id = $1 AND device_id = $2 AND online IS DISTINCT FROM $3",
            &[&store.as_str(), &device.as_str(), &online, &now],
        )
        .await?;
    if updated == 0 {
        // Not a registered device, or another worker already recorded this change.
        return Ok(());
    }
    let session_id = open_session(&tx, store, device, false)
        .await?
        .map(|session| session.session_id);
    if !online {
        tracing::warn!(%store, %device, ?session_id, "device offline");
    }
    record(
        &tx,
        store,
        device,
        EventKind::DeviceAvailability {
            availability,
            session_id,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Records a clock skew alert.
pub async fn record_skew(
    pool: &Pool,
    (store, device): &DeviceKey,
    skew_ms: i64,
    now: DateTime<Utc>,
) -> Result<(), WorkError> {
    tracing::warn!(%store, %device, skew_ms, "device clock skew");
    let client = pool.get().await?;
    record(
        &client,
        store,
        device,
        EventKind::ClockSkew { skew_ms },
        now,
    )
    .await?;
    Ok(())
}

/// Compares a reported state with the database: keeps the device's account of how each session
/// ended, closes a session whose program exited by itself, and flags a device running a session
/// the database does not have open. Returns whether something may have been recorded for the
/// dispatcher to publish (events, commands).
pub async fn reconcile(
    pool: &Pool,
    liveness: &tokio::sync::Mutex<Liveness>,
    key: &DeviceKey,
    state: &ReportedState,
    now: DateTime<Utc>,
) -> Result<bool, WorkError> {
    let (store, device) = key;
    let running = match &state.program {
        ProgramStatus::Running {
            session_id,
            provisional: false,
            ..
        } => Some(*session_id),
        _ => None,
    };
    // Most states (idle, or running what the database expects, repeating an exit already
    // recorded) change nothing: no transaction, and at most one read. The liveness lock is held
    // only for its map, never across a query, so the devices' states do not wait on one another.
    let exit = match &state.last_exit {
        Some(exit) if !liveness.lock().await.exit_recorded(key, exit.session_id) => Some(exit),
        _ => None,
    };
    let Some(exit) = exit else {
        let Some(session_id) = running else {
            return Ok(false);
        };
        let client = pool.get().await?;
        let open = open_session(&client, store, device, false).await?;
        let flagged =
            flag_unexpected(&client, liveness, key, session_id, open.as_ref(), now).await?;
        return Ok(flagged);
    };
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let open = open_session(&tx, store, device, true).await?;
    let exit_recorded = record_device_stop(&tx, store, device, exit).await?;
    let exited = open.as_ref().filter(|session| {
        session.session_id == exit.session_id && exit.stopped_by == StopCause::ProgramExited
    });
    if let Some(session) = exited {
        tracing::info!(%store, %device, session_id = %session.session_id, exit = exit.exit, "program exited by itself; closing its session");
        end_session(&tx, session, EndReason::ProgramExited, now).await?;
    }
    // A provisional session (started offline) is settled by its scan, which the device sends
    // until it is answered: it is not a conflict before that.
    let flagged = match running {
        Some(session_id) => {
            flag_unexpected(&tx, liveness, key, session_id, open.as_ref(), now).await?
        }
        None => false,
    };
    tx.commit().await?;
    if exit_recorded {
        liveness
            .lock()
            .await
            .note_exit_recorded(key, exit.session_id);
    }
    // The device's account of a stop is kept on the session row only: nothing to publish
    // unless a session was closed here or a conflict flagged.
    Ok(exited.is_some() || flagged)
}

/// Records a conflict (once per device and session) when the device runs a session that is not
/// the one open on it; returns whether it did.
async fn flag_unexpected(
    client: &impl GenericClient,
    liveness: &tokio::sync::Mutex<Liveness>,
    (store, device): &DeviceKey,
    session_id: SessionId,
    open: Option<&OpenSession>,
    now: DateTime<Utc>,
) -> Result<bool, tokio_postgres::Error> {
    let expected = open.is_some_and(|session| session.session_id == session_id);
    if expected
        || !liveness
            .lock()
            .await
            .first_flag(&(store.clone(), device.clone()), session_id)
    {
        return Ok(false);
    }
    let detail = format!(
        "device runs session {session_id}, which is not open on it; its desired state says {}",
        open.map_or("idle".to_owned(), |s| format!("session {}", s.session_id))
    );
    tracing::warn!(%store, %device, detail, "session conflict");
    record(
        client,
        store,
        device,
        EventKind::SessionConflict { session_id, detail },
        now,
    )
    .await?;
    Ok(true)
}

/// Keeps the device's account of how a session ended on the session's row (once); returns
/// whether it is recorded, now or before.
async fn record_device_stop(
    tx: &impl GenericClient,
    store: &StoreId,
    device: &DeviceId,
    exit: &ProgramExit,
) -> Result<bool, tokio_postgres::Error> {
    let cause = serde_json::to_value(exit.stopped_by)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default();
    // The outer EXISTS reads the row as it was before the update (one snapshot for the whole
    // statement): recorded now, or recorded before. A session not there (yet, for one started
    // offline) is neither.
    let row = tx
        .cached_query_one(
            "WITH recorded_now AS (
                 UPDATE sessions SET device_stopped_at = $4, device_stop_cause = $5, device_exit = $6
                 WHERE session_id = $1 AND store_id = $2 AND device_id = $3 AND device_stopped_at IS NULL
                 RETURNING 1)
             SELECT EXISTS (SELECT 1 FROM recorded_now)
                 OR EXISTS (SELECT 1 FROM sessions
                            WHERE session_id = $1 AND store_id = $2 AND device_id = $3
                              AND device_stopped_at IS NOT NULL)",
            &[
                &exit.session_id.as_uuid(),
                &store.as_str(),
                &device.as_str(),
                &exit.at,
                &cause,
                &clean_text(&exit.exit, 200),
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// A device's open session, by key (the `sessions_one_open_per_device` index: see migration
/// V14).
pub const OPEN_SESSION: &str =
    "SELECT session_id, store_id, device_id, started_at, lease_until FROM sessions
     WHERE store_id = $1 AND device_id = $2 AND ended_at IS NULL";

/// [`OPEN_SESSION`], locked for the rest of the transaction.
pub const OPEN_SESSION_FOR_UPDATE: &str =
    "SELECT session_id, store_id, device_id, started_at, lease_until FROM sessions
     WHERE store_id = $1 AND device_id = $2 AND ended_at IS NULL
     FOR UPDATE";

/// The device's open session; `lock`ed for the rest of the transaction when it may be ended.
async fn open_session(
    client: &impl GenericClient,
    store: &StoreId,
    device: &DeviceId,
    lock: bool,
) -> Result<Option<OpenSession>, tokio_postgres::Error> {
    let sql = if lock {
        OPEN_SESSION_FOR_UPDATE
    } else {
        OPEN_SESSION
    };
    let row = client
        .cached_query_opt(sql, &[&store.as_str(), &device.as_str()])
        .await?;
    Ok(row.as_ref().and_then(OpenSession::from_row))
}

async fn record(
    client: &impl GenericClient,
    store: &StoreId,
    device: &DeviceId,
    kind: EventKind,
    now: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    let event = Event {
        at: now,
        store: store.clone(),
        device: Some(device.clone()),
        kind,
    };
    audit::record(client, &event).await
}

/// What a heartbeat tells about its device's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// When the device wrote it.
    pub at: DateTime<Utc>,
    /// Its skew against when it was received, in milliseconds.
    pub skew_ms: i64,
    /// How often the device says it reports, if it says so.
    pub interval: Option<Duration>,
}

impl Beat {
    /// Decodes a telemetry payload received at `received_at`.
    pub fn decode(payload: &[u8], received_at: DateTime<Utc>) -> Option<Beat> {
        let telemetry: Telemetry = message::decode(payload).ok()?;
        Some(Beat {
            at: telemetry.at,
            skew_ms: (telemetry.at - received_at).num_milliseconds(),
            interval: telemetry.interval_ms.map(Duration::from_millis),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DeviceKey {
        ("s".parse().unwrap(), "d".parse().unwrap())
    }

    /// A beat without a declared interval, `skew_ms` off.
    fn beat(skew_ms: i64) -> Beat {
        Beat {
            at: DateTime::from_timestamp(0, 0).unwrap(),
            skew_ms,
            interval: None,
        }
    }

    #[test]
    fn a_recorded_exit_is_remembered_per_device_until_the_next_one() {
        let mut liveness = Liveness::default();
        let (first, second) = (SessionId::random(), SessionId::random());
        let other: DeviceKey = ("s".parse().unwrap(), "e".parse().unwrap());
        assert!(
            !liveness.exit_recorded(&key(), first),
            "nothing known at first"
        );
        liveness.note_exit_recorded(&key(), first);
        assert!(liveness.exit_recorded(&key(), first));
        assert!(!liveness.exit_recorded(&other, first), "another device's");
        liveness.note_exit_recorded(&key(), second);
        assert!(liveness.exit_recorded(&key(), second));
        assert!(
            !liveness.exit_recorded(&key(), first),
            "one per device: the latest"
        );
    }

    #[test]
    fn a_declared_rhythm_slower_than_the_default_keeps_the_device_online_between_beats() {
        let mut liveness = Liveness::default();
        let start = Instant::now();
        let every_10_s = Beat {
            interval: Some(Duration::from_secs(10)),
            ..beat(0)
        };
        let secs = Duration::from_secs;
        for n in 0..3 {
            liveness.heartbeat(&key(), start + secs(10 * n), &every_10_s, 2000);
            assert!(
                liveness.overdue(start + secs(10 * n + 9)).is_empty(),
                "beat {n}: still online just before the next"
            );
        }
        let last = start + secs(20);
        assert!(liveness.overdue(last + secs(14)).is_empty());
        assert_eq!(liveness.overdue(last + secs(16)), vec![key()]);
    }

    #[test]
    fn telemetry_says_its_rhythm() {
        let received_at = DateTime::from_timestamp(100, 0).unwrap();
        let telemetry = Telemetry {
            at: DateTime::from_timestamp(99, 0).unwrap(),
            uptime_ms: 5,
            load: None,
            program: mujin_protocol::message::ProgramStatus::Idle,
            interval_ms: Some(10_000),
            signature: None,
        };
        let beat = Beat::decode(&message::encode(&telemetry), received_at).unwrap();
        assert_eq!(beat.skew_ms, -1000);
        assert_eq!(beat.interval, Some(Duration::from_secs(10)));
    }

    #[test]
    fn heartbeats_bring_a_device_online_and_their_absence_takes_it_offline() {
        let mut liveness = Liveness::default();
        let start = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(
            liveness.heartbeat(&key(), start, &beat(0), 2000),
            vec![Change::Availability(Availability::Online)]
        );
        // A steady 500 ms rhythm is learned...
        for n in 1..=20 {
            assert!(liveness
                .heartbeat(&key(), start + ms(500 * n), &beat(0), 2000)
                .is_empty());
        }
        let last = start + ms(500 * 20);
        // ...so 700 ms of silence is fine and 800 ms (> 1.5 × 500) is not.
        assert!(liveness.overdue(last + ms(700)).is_empty());
        assert_eq!(liveness.overdue(last + ms(800)), vec![key()]);
        assert!(liveness.overdue(last + ms(900)).is_empty(), "reported once");
        assert_eq!(
            liveness.heartbeat(&key(), last + ms(1000), &beat(0), 2000),
            vec![Change::Availability(Availability::Online)]
        );
    }

    #[test]
    fn duplicate_and_overtaken_reports_are_not_newest() {
        let mut liveness = Liveness::default();
        let at = |s| DateTime::from_timestamp(s, 0).unwrap();
        assert!(liveness.is_newest(&key(), true, at(10)));
        assert!(!liveness.is_newest(&key(), true, at(10)), "duplicate");
        assert!(!liveness.is_newest(&key(), true, at(9)), "overtaken");
        assert!(
            liveness.is_newest(&key(), false, at(9)),
            "states are ordered on their own"
        );
        assert!(liveness.is_newest(&key(), true, at(11)));
    }

    #[test]
    fn the_first_report_of_a_device_is_always_passed_on() {
        let mut liveness = Liveness::default();
        let now = Instant::now();
        assert_eq!(
            liveness.reported(&key(), Availability::Offline, now),
            Some(Change::Availability(Availability::Offline))
        );
        assert_eq!(liveness.reported(&key(), Availability::Offline, now), None);
    }

    #[test]
    fn the_last_will_is_a_change_once() {
        let mut liveness = Liveness::default();
        let now = Instant::now();
        liveness.heartbeat(&key(), now, &beat(0), 2000);
        assert_eq!(
            liveness.reported(&key(), Availability::Offline, now),
            Some(Change::Availability(Availability::Offline))
        );
        assert_eq!(liveness.reported(&key(), Availability::Offline, now), None);
        assert!(liveness.overdue(now + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn clock_skew_is_reported_when_it_appears_not_on_every_beat() {
        let mut liveness = Liveness::default();
        let now = Instant::now();
        liveness.heartbeat(&key(), now, &beat(0), 2000);
        let later = |ms| now + Duration::from_millis(ms);
        assert_eq!(
            liveness.heartbeat(&key(), later(500), &beat(4200), 2000),
            vec![Change::ClockSkew(4200)]
        );
        assert!(liveness
            .heartbeat(&key(), later(1000), &beat(4300), 2000)
            .is_empty());
        assert!(liveness
            .heartbeat(&key(), later(1500), &beat(100), 2000)
            .is_empty());
        assert_eq!(
            liveness.heartbeat(&key(), later(2000), &beat(-3000), 2000),
            vec![Change::ClockSkew(-3000)]
        );
    }
}
