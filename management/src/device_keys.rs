//! Device message authentication: every scan, state, telemetry report and ack on a device's topic
//! must be signed with *that* device's key (see [`mujin_protocol::device_auth`]), since broker
//! credentials alone do not stop device A from publishing on device B's topics.
//!
//! - [`DeviceKeyCache`]: the `device_keys` table in memory, reloaded every [`REFRESH`] by a task
//!   of its own; a message naming a key it does not hold (a device enrolled or re-enrolled a
//!   moment ago) reads its device's row (at most every [`MISS_LOOKUP`] per device), so
//!   enrolments apply at once, without a restart;
//! - [`Received`] and [`check`]: the pure decision for one message;
//! - [`RefusalThrottle`]: at most one `device_message_refused` event a minute per device and
//!   channel, so a forger cannot fill the audit log;
//! - [`DeviceAuth`]: the above for the inbox, and [`refuse`]: what a refused message leads to.

use crate::db::CachedStatements;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::Pool;
use mujin_protocol::device_auth::{self, DeviceMessage, DEVICE_MAX_SKEW};
use mujin_protocol::message::{self, Ack, RejectReason, ReportedState, Scan, Telemetry};
use mujin_protocol::signed::VerifyError;
use mujin_protocol::ticket::PublicKey;
use mujin_protocol::topic::DeviceChannel;
use mujin_protocol::{DeviceId, KeyId, ScanId, StoreId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::WorkError;
use crate::mqtt::Outbound;
use crate::ratelimit::{ScanLimiter, Verdict};
use crate::{audit, scans};

/// How old the cached keys may get: [`DeviceKeyCache::refresh_every`] reloads them this often.
pub const REFRESH: Duration = Duration::from_secs(3);
/// How often at most one device's messages read its key from the table when the cache lacks
/// it: a flood of messages naming keys nobody has costs a read per device twice a second, not
/// one per message.
pub const MISS_LOOKUP: Duration = Duration::from_millis(500);
/// Devices whose last read is remembered before the older reads are forgotten.
const REMEMBERED_LOOKUPS: usize = 4096;
/// How often at most a refused state, telemetry report or ack of one device and channel is
/// recorded as an event.
pub const REFUSAL_EVENT_INTERVAL: Duration = Duration::from_secs(60);

type DeviceKeyMap = HashMap<(StoreId, DeviceId), PublicKey>;

/// The current public key of every enrolled device, loaded from the `device_keys` table. The
/// whole table (every enrolled device) is read every [`REFRESH`] by a task of its own, off the
/// inbox's path; a message whose device key the cache lacks, or not the one the message names
/// (a device enrolled or re-enrolled a moment ago, or a forgery), reads that device's row — at
/// most every [`MISS_LOOKUP`] per device.
pub struct DeviceKeyCache {
    pool: Pool,
    keys: Mutex<DeviceKeyMap>,
    /// When each device's row was last read for a message the cache could not answer.
    lookups: Mutex<HashMap<(StoreId, DeviceId), Instant>>,
}

impl DeviceKeyCache {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            keys: Mutex::new(HashMap::new()),
            lookups: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `id`'s row may be read now (not in the last [`MISS_LOOKUP`]); notes the read.
    fn may_look_up(&self, id: &(StoreId, DeviceId), now: Instant) -> bool {
        let mut lookups = self
            .lookups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if lookups
            .get(id)
            .is_some_and(|at| now.saturating_duration_since(*at) < MISS_LOOKUP)
        {
            return false;
        }
        if lookups.len() >= REMEMBERED_LOOKUPS {
            lookups.retain(|_, at| now.saturating_duration_since(*at) < MISS_LOOKUP);
        }
        lookups.insert(id.clone(), now);
        true
    }

    /// Puts the keys read from the table since `started` in place, except where a device's own
    /// row was read since (an enrolment or a revocation the table read may have missed).
    fn replace(&self, mut loaded: DeviceKeyMap, started: Instant) {
        let lookups = self
            .lookups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut keys = self.keys();
        for (id, _) in lookups.iter().filter(|(_, at)| **at >= started) {
            match keys.get(id) {
                Some(key) => loaded.insert(id.clone(), key.clone()),
                None => loaded.remove(id),
            };
        }
        *keys = loaded;
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, DeviceKeyMap> {
        // A panic while holding it cannot leave the map half-replaced.
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key of `device`: from the cache when it holds the one `signed_with` names (or the
    /// message names none), else from the device's row (unless read in the last
    /// [`MISS_LOOKUP`]). A failed read keeps what the cache has (logged): a database outage
    /// must not make every device unauthenticated.
    pub async fn key_of(
        &self,
        store: &StoreId,
        device: &DeviceId,
        signed_with: Option<&KeyId>,
    ) -> Option<PublicKey> {
        let id = (store.clone(), device.clone());
        let cached = self.keys().get(&id).cloned();
        let hit = |key: &PublicKey| signed_with.is_none_or(|named| key.key_id == *named);
        if let Some(key) = cached.as_ref().filter(|key| hit(key)) {
            return Some(key.clone());
        }
        if !self.may_look_up(&id, Instant::now()) {
            return cached;
        }
        match load_one(&self.pool, &id).await {
            Ok(Some(key)) => {
                self.keys().insert(id, key.clone());
                Some(key)
            }
            Ok(None) => {
                self.keys().remove(&id);
                None
            }
            Err(error) => {
                tracing::warn!(%error, %store, %device, "cannot read the device's key; keeping the cached one");
                cached
            }
        }
    }

    /// Loads every key now, then every `period` until `stop` (a revoked or replaced key stops
    /// working within one period).
    pub async fn refresh_every(&self, period: Duration, stop: CancellationToken) {
        loop {
            let started = Instant::now();
            match load(&self.pool).await {
                Ok(keys) => self.replace(keys, started),
                Err(error) => {
                    tracing::warn!(%error, "cannot reload the device keys; keeping the last ones")
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
        }
    }
}

/// Every device key in the table (rows that do not parse are left out, logged).
async fn load(pool: &Pool) -> Result<DeviceKeyMap, WorkError> {
    let client = pool.get().await?;
    let rows = client
        .cached_query(
            "SELECT store_id, device_id, key_id, public_key FROM device_keys",
            &[],
        )
        .await?;
    Ok(rows.iter().filter_map(parse_key_row).collect())
}

/// One device's key, if it has one.
async fn load_one(
    pool: &Pool,
    (store, device): &(StoreId, DeviceId),
) -> Result<Option<PublicKey>, WorkError> {
    let client = pool.get().await?;
    let row = client
        .cached_query_opt(
            "SELECT store_id, device_id, key_id, public_key FROM device_keys
             WHERE store_id = $1 AND device_id = $2",
            &[&store.as_str(), &device.as_str()],
        )
        .await?;
    Ok(row.as_ref().and_then(parse_key_row).map(|(_, key)| key))
}

/// A row of `device_keys` (store, device, key id, public key); `None`, logged, when it does not
/// parse.
fn parse_key_row(row: &tokio_postgres::Row) -> Option<((StoreId, DeviceId), PublicKey)> {
    let (store, device, key_id): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let bytes: Vec<u8> = row.get(3);
    let parsed = (
        StoreId::parse(&store),
        DeviceId::parse(&device),
        KeyId::parse(&key_id),
        <[u8; 32]>::try_from(bytes.as_slice()),
    );
    match parsed {
        (Ok(store), Ok(device), Ok(key_id), Ok(bytes)) => {
            Some(((store, device), PublicKey { key_id, bytes }))
        }
        _ => {
            tracing::error!(store, device, key_id, "unreadable device key row; ignored");
            None
        }
    }
}

/// The inbox's check of device messages: the key cache and how often refusals are recorded.
pub struct DeviceAuth {
    keys: Arc<DeviceKeyCache>,
    /// Unauthenticated scans recorded as events, per device (each one is answered).
    refused_scans: Mutex<ScanLimiter<(StoreId, DeviceId)>>,
    /// Other unauthenticated device messages recorded as events.
    refusals: Mutex<RefusalThrottle>,
}

impl DeviceAuth {
    pub fn new(pool: Pool) -> Self {
        Self {
            keys: Arc::new(DeviceKeyCache::new(pool)),
            refused_scans: Mutex::new(ScanLimiter::default()),
            refusals: Mutex::new(RefusalThrottle::default()),
        }
    }

    /// The key cache, for the task that refreshes it ([`DeviceKeyCache::refresh_every`]).
    pub fn keys(&self) -> Arc<DeviceKeyCache> {
        self.keys.clone()
    }

    /// For a message on `device`'s `channel` not signed with that device's key (or a scan sent
    /// outside the time window): why, and whether to record an event about it this time.
    /// Payloads that do not parse pass: they keep the handling of malformed messages.
    pub async fn authenticate(
        &self,
        store: &StoreId,
        device: &DeviceId,
        channel: DeviceChannel,
        payload: &[u8],
    ) -> Option<(Refusal, bool)> {
        let received = Received::decode(channel, payload)?;
        let key = self
            .keys
            .key_of(store, device, received.signed_with())
            .await;
        let refusal = check(key.as_ref(), store, device, &received, Utc::now()).err()?;
        let now = Instant::now();
        let record = if channel == DeviceChannel::Scan {
            let id = (store.clone(), device.clone());
            let mut limiter = self
                .refused_scans
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            limiter.check(&id, now) == Verdict::Allowed
        } else {
            self.refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .should_record(store, device, channel, now)
        };
        if record {
            tracing::warn!(%store, %device, %channel, reason = %refusal.reason, detail = refusal.detail, "device message refused");
        } else {
            tracing::debug!(%store, %device, %channel, reason = %refusal.reason, "device message refused again");
        }
        Some((refusal, record))
    }
}

/// Answers an unauthenticated scan (never deciding it, nor storing its id) or drops another
/// device message; `record` writes an event about it. Returns what to publish.
pub async fn refuse(
    pool: &Pool,
    (store, device, channel): (&StoreId, &DeviceId, DeviceChannel),
    refusal: &Refusal,
    record: bool,
    now: DateTime<Utc>,
) -> Result<Vec<Outbound>, WorkError> {
    if let (DeviceChannel::Scan, Some(scan_id)) = (channel, refusal.scan_id) {
        let outcome = scans::refuse_undecided(
            pool,
            (store, device),
            Some(scan_id),
            (refusal.reason, &refusal.detail),
            record,
            now,
        )
        .await?;
        return Ok(outcome.publish);
    }
    if record {
        let event = message::Event {
            at: now,
            store: store.clone(),
            device: Some(device.clone()),
            kind: message::EventKind::DeviceMessageRefused {
                channel: channel.as_str().to_owned(),
                detail: refusal.detail.clone(),
            },
        };
        let client = pool.get().await?;
        audit::record(&client, &event).await?;
    }
    Ok(Vec::new())
}

/// A device message decoded far enough to authenticate it.
#[derive(Debug, Clone)]
pub enum Received {
    Scan(Scan),
    State(ReportedState),
    Telemetry(Telemetry),
    Ack(Ack),
}

impl Received {
    /// The message of `channel` in `payload`; `None` when it does not parse (it keeps the
    /// handling of malformed payloads) or the channel is not one devices publish on.
    pub fn decode(channel: DeviceChannel, payload: &[u8]) -> Option<Received> {
        match channel {
            DeviceChannel::Scan => message::decode(payload).ok().map(Received::Scan),
            DeviceChannel::State => message::decode(payload).ok().map(Received::State),
            DeviceChannel::Telemetry => message::decode(payload).ok().map(Received::Telemetry),
            DeviceChannel::Ack => message::decode(payload).ok().map(Received::Ack),
            _ => None,
        }
    }

    /// The key id the message says it is signed with.
    pub fn signed_with(&self) -> Option<&KeyId> {
        let signature = match self {
            Received::Scan(message) => message.signature(),
            Received::State(message) => message.signature(),
            Received::Telemetry(message) => message.signature(),
            Received::Ack(message) => message.signature(),
        };
        signature.map(|signature| &signature.key_id)
    }
}

/// Why a device message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `Unauthenticated` or `StaleScan` (a scan's answer and event carry it).
    pub reason: RejectReason,
    pub detail: String,
    /// The scan's id, for its answer.
    pub scan_id: Option<ScanId>,
}

/// Checks a message received on `device`'s topic of `store` against that device's key `key`
/// (`None`: no key enrolled) and, for a scan, its sending time against `now`.
pub fn check(
    key: Option<&PublicKey>,
    store: &StoreId,
    device: &DeviceId,
    received: &Received,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    let scan_id = match received {
        Received::Scan(scan) => Some(scan.scan_id),
        _ => None,
    };
    let refusal = |reason, detail| Refusal {
        reason,
        detail,
        scan_id,
    };
    let Some(key) = key else {
        return Err(refusal(
            RejectReason::Unauthenticated,
            "no device key is enrolled for this device".to_owned(),
        ));
    };
    let verified = match received {
        Received::Scan(message) => device_auth::verify(key, store, device, message),
        Received::State(message) => device_auth::verify(key, store, device, message),
        Received::Telemetry(message) => device_auth::verify(key, store, device, message),
        Received::Ack(message) => device_auth::verify(key, store, device, message),
    };
    if let Err(error) = verified {
        return Err(refusal(
            RejectReason::Unauthenticated,
            signature_detail(&error, &key.key_id),
        ));
    }
    if let Received::Scan(scan) = received {
        if let Err(error) = device_auth::check_sent_at(scan, now) {
            return Err(refusal(RejectReason::StaleScan, time_detail(&error, now)));
        }
    }
    Ok(())
}

fn signature_detail(error: &VerifyError, device_key: &KeyId) -> String {
    match error {
        VerifyError::Unsigned => "unsigned: not signed with this device's key".to_owned(),
        VerifyError::UnknownKey(other) => {
            format!("signed with another key ({other}), not this device's key ({device_key})")
        }
        _ => format!("the signature does not verify with this device's key ({device_key})"),
    }
}

fn time_detail(error: &VerifyError, now: DateTime<Utc>) -> String {
    let window = DEVICE_MAX_SKEW.num_minutes();
    match error {
        VerifyError::OutOfTime(sent_at) => format!(
            "sent at {}, outside the {window}-minute window around management's clock ({}): a replay or a wrong device clock",
            clock(*sent_at),
            clock(now)
        ),
        _ => format!("the scan does not say when it was sent (it must be within {window} minutes)"),
    }
}

fn clock(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Remembers when a refusal of each (store, device, channel) was last recorded. Pure: the
/// caller passes the clock. In memory, per worker.
#[derive(Debug, Default)]
pub struct RefusalThrottle {
    last: HashMap<(StoreId, DeviceId, DeviceChannel), Instant>,
}

impl RefusalThrottle {
    /// Whether a refusal at `now` should be recorded (and if so, remembers it).
    pub fn should_record(
        &mut self,
        store: &StoreId,
        device: &DeviceId,
        channel: DeviceChannel,
        now: Instant,
    ) -> bool {
        // Entries past the interval say nothing any more; dropping them bounds the map.
        if self.last.len() > 1_000 {
            self.last
                .retain(|_, at| now.saturating_duration_since(*at) < REFUSAL_EVENT_INTERVAL);
        }
        let key = (store.clone(), device.clone(), channel);
        match self.last.get(&key) {
            Some(at) if now.saturating_duration_since(*at) < REFUSAL_EVENT_INTERVAL => false,
            _ => {
                self.last.insert(key, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use mujin_protocol::device_auth::DeviceKey;
    use mujin_protocol::message::ProgramStatus;

    use super::*;

    fn ids() -> (StoreId, DeviceId, DeviceId) {
        (
            StoreId::parse("shibuya").unwrap(),
            DeviceId::parse("pc-01").unwrap(),
            DeviceId::parse("pc-02").unwrap(),
        )
    }

    fn scan(sent_at: DateTime<Utc>) -> Scan {
        Scan {
            scan_id: ScanId::random(),
            ticket: "MJ1:ABC".into(),
            read_at: sent_at,
            offline: None,
            sent_at: Some(sent_at),
            signature: None,
        }
    }

    #[test]
    fn only_the_devices_own_key_passes() {
        let (store, a, b) = ids();
        let key_a = DeviceKey::generate().unwrap();
        let key_b = DeviceKey::generate().unwrap();
        let now = Utc::now();
        let mut signed_by_b = scan(now);
        key_b.sign(&store, &b, &mut signed_by_b);
        let public_b = key_b.public_key();
        let on_b = |message: &Scan, key: Option<&PublicKey>| {
            check(key, &store, &b, &Received::Scan(message.clone()), now)
        };
        assert_eq!(on_b(&signed_by_b, Some(&public_b)), Ok(()));

        let mut signed_by_a = scan(now);
        key_a.sign(&store, &a, &mut signed_by_a);
        let refused = on_b(&signed_by_a, Some(&public_b)).unwrap_err();
        assert_eq!(refused.reason, RejectReason::Unauthenticated);
        assert!(refused.detail.contains("another key"), "{}", refused.detail);
        assert_eq!(refused.scan_id, Some(signed_by_a.scan_id));

        // A's key signing for B's topic: the key id is B's only if it is B's key.
        let mut forged = scan(now);
        key_a.sign(&store, &b, &mut forged);
        forged.signature.as_mut().unwrap().key_id = public_b.key_id.clone();
        let refused = on_b(&forged, Some(&public_b)).unwrap_err();
        assert!(
            refused.detail.contains("does not verify"),
            "{}",
            refused.detail
        );

        let refused = on_b(&scan(now), Some(&public_b)).unwrap_err();
        assert!(refused.detail.starts_with("unsigned"), "{}", refused.detail);
        let refused = on_b(&signed_by_b, None).unwrap_err();
        assert!(
            refused.detail.contains("no device key"),
            "{}",
            refused.detail
        );
    }

    #[test]
    fn a_scan_sent_outside_the_window_is_stale() {
        let (store, _, b) = ids();
        let key = DeviceKey::generate().unwrap();
        let now = Utc::now();
        let mut old = scan(now - TimeDelta::minutes(6));
        key.sign(&store, &b, &mut old);
        let refused = check(
            Some(&key.public_key()),
            &store,
            &b,
            &Received::Scan(old),
            now,
        )
        .unwrap_err();
        assert_eq!(refused.reason, RejectReason::StaleScan);
        assert!(
            refused.detail.contains("5-minute window"),
            "{}",
            refused.detail
        );
    }

    #[test]
    fn states_telemetry_and_acks_are_checked_too() {
        let (store, a, b) = ids();
        let key_a = DeviceKey::generate().unwrap();
        let key_b = DeviceKey::generate().unwrap();
        let mut state = ReportedState::offline();
        key_a.sign(&store, &a, &mut state);
        let received = Received::decode(DeviceChannel::State, &message::encode(&state)).unwrap();
        assert_eq!(received.signed_with(), Some(&key_a.public_key().key_id));
        let now = Utc::now();
        assert!(check(Some(&key_b.public_key()), &store, &b, &received, now).is_err());
        assert_eq!(
            check(Some(&key_a.public_key()), &store, &a, &received, now),
            Ok(())
        );
        let telemetry = Telemetry {
            at: now,
            uptime_ms: 1,
            load: None,
            program: ProgramStatus::Idle,
            interval_ms: None,
            signature: None,
        };
        let received =
            Received::decode(DeviceChannel::Telemetry, &message::encode(&telemetry)).unwrap();
        assert!(check(Some(&key_b.public_key()), &store, &b, &received, now).is_err());
        assert!(Received::decode(DeviceChannel::Ack, b"{").is_none());
        assert!(Received::decode(DeviceChannel::Command, b"{}").is_none());
    }

    #[test]
    fn refusals_are_recorded_once_a_minute_per_device_and_channel() {
        let (store, a, b) = ids();
        let mut throttle = RefusalThrottle::default();
        let start = Instant::now();
        assert!(throttle.should_record(&store, &a, DeviceChannel::State, start));
        assert!(!throttle.should_record(&store, &a, DeviceChannel::State, start));
        assert!(throttle.should_record(&store, &a, DeviceChannel::Telemetry, start));
        assert!(throttle.should_record(&store, &b, DeviceChannel::State, start));
        let later = start + REFUSAL_EVENT_INTERVAL - Duration::from_millis(1);
        assert!(!throttle.should_record(&store, &a, DeviceChannel::State, later));
        let after = start + REFUSAL_EVENT_INTERVAL;
        assert!(throttle.should_record(&store, &a, DeviceChannel::State, after));
    }

    #[tokio::test]
    async fn a_device_s_row_is_read_at_most_twice_a_second_and_old_reads_are_forgotten() {
        let pool = crate::db::pool("host=/nonexistent user=mujin dbname=mujin", 1).unwrap();
        let cache = DeviceKeyCache::new(pool);
        let start = Instant::now();
        let id = |n: usize| {
            let device = DeviceId::parse(&format!("d{n}")).unwrap();
            (StoreId::parse("s").unwrap(), device)
        };
        assert!(cache.may_look_up(&id(0), start));
        assert!(!cache.may_look_up(&id(0), start + Duration::from_millis(100)));
        assert!(cache.may_look_up(&id(1), start), "another device's");
        assert!(cache.may_look_up(&id(0), start + MISS_LOOKUP));
        for n in 2..REMEMBERED_LOOKUPS + 10 {
            cache.may_look_up(&id(n), start);
        }
        let later = start + MISS_LOOKUP * 3;
        assert!(cache.may_look_up(&id(99_999), later));
        let remembered = cache.lookups.lock().unwrap().len();
        assert!(remembered <= REMEMBERED_LOOKUPS, "{remembered}");
    }

    #[tokio::test]
    async fn a_reload_keeps_what_a_device_s_own_row_said_since_it_began() {
        let pool = crate::db::pool("host=/nonexistent user=mujin dbname=mujin", 1).unwrap();
        let cache = DeviceKeyCache::new(pool);
        let id = |name: &str| (StoreId::parse("s").unwrap(), DeviceId::parse(name).unwrap());
        let key = |n: u8| PublicKey {
            key_id: KeyId::parse(&format!("k{n}")).unwrap(),
            bytes: [n; 32],
        };
        let started = Instant::now();
        // Read from their own rows while the table was being read: enrolled, and revoked.
        assert!(cache.may_look_up(&id("enrolled"), started));
        cache.keys().insert(id("enrolled"), key(1));
        assert!(cache.may_look_up(&id("revoked"), started));
        let loaded: DeviceKeyMap = [(id("revoked"), key(2)), (id("other"), key(3))].into();
        cache.replace(loaded, started);
        let keys = cache.keys().clone();
        assert_eq!(
            keys.get(&id("enrolled")),
            Some(&key(1)),
            "not lost to the older read"
        );
        assert_eq!(
            keys.get(&id("revoked")),
            None,
            "not brought back by the older read"
        );
        assert_eq!(keys.get(&id("other")), Some(&key(3)));
    }
}
