//! The ticket keys' lifecycle, kept in PostgreSQL (`ticket_keys`, public halves only; the
//! private halves stay in the key directory as `{key_id}.pk8`): exactly one key is *current*
//! and signs new tickets; [`rotate`] makes a new one current and *retires* the previous one,
//! whose tickets stay valid until they expire; [`revoke`] makes a retired key's tickets invalid
//! at once. Every worker reloads the keys every few seconds ([`reload_every`] into [`LiveKeys`]),
//! so a rotation or revocation applies without a restart.
//!
//! An empty table is seeded from the key files already there ([`open`]), so an installation
//! from before the table keeps its keys and tickets.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use mujin_protocol::ticket::{Keyring, PublicKey, SigningKey};
use mujin_protocol::KeyId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::db::WorkError;
use crate::keys::{self, KeyFileError};

/// Where a ticket key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Signs new tickets.
    Current,
    /// Signs nothing new; its tickets stay valid until they expire.
    Retired,
    /// Its tickets are refused (`revoked_key`).
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Current => "current",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
        }
    }
}

/// One row of `ticket_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketKey {
    pub public_key: PublicKey,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TicketKey {
    pub fn key_id(&self) -> &KeyId {
        &self.public_key.key_id
    }

    pub fn state(&self) -> KeyState {
        match (self.retired_at, self.revoked_at) {
            (_, Some(_)) => KeyState::Revoked,
            (Some(_), None) => KeyState::Retired,
            (None, None) => KeyState::Current,
        }
    }
}

/// Why the ticket keys could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    #[error("ticket key {0} does not exist; `mujin-management ticket-key list` shows the keys")]
    Unknown(KeyId),
    #[error(
        "ticket key {0} is the current key (new tickets are signed with it) and cannot be \
         revoked; run `mujin-management ticket-key rotate` first, then revoke it"
    )]
    Current(KeyId),
    #[error("ticket key {0} already exists; choose another id or leave --key-id out")]
    Exists(KeyId),
    #[error("{0} cannot be a ticket key id: ids starting with command- or root- are management's command and root keys")]
    ReservedId(KeyId),
    #[error("the database has no current ticket key; run `mujin-management ticket-key rotate`")]
    NoCurrent,
    #[error("the database holds a ticket key {0} that is not a valid Ed25519 public key")]
    BadRow(String),
    #[error(
        "ticket key {key_id}: the key file {path} does not match the public key the database \
         holds for it (is this the key directory of this installation?)"
    )]
    Mismatch { key_id: KeyId, path: PathBuf },
    #[error("ticket key {key_id}: {source}")]
    File {
        key_id: KeyId,
        #[source]
        source: KeyFileError,
    },
    #[error(transparent)]
    Db(#[from] WorkError),
}

impl From<tokio_postgres::Error> for TicketKeyError {
    fn from(error: tokio_postgres::Error) -> Self {
        TicketKeyError::Db(error.into())
    }
}

impl From<deadpool_postgres::PoolError> for TicketKeyError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        TicketKeyError::Db(error.into())
    }
}

fn file_error(key_id: &KeyId) -> impl FnOnce(KeyFileError) -> TicketKeyError + '_ {
    move |source| TicketKeyError::File {
        key_id: key_id.clone(),
        source,
    }
}

/// What a worker signs and verifies tickets with right now.
#[derive(Debug)]
pub struct KeySet {
    /// The current key.
    pub signing: Arc<SigningKey>,
    /// Every key that is not revoked, and the revoked ones' ids.
    pub keyring: Keyring,
}

impl KeySet {
    /// The key ids, for telling whether a reload changed anything.
    fn summary(&self) -> (KeyId, Vec<KeyId>, Vec<KeyId>) {
        let valid = self.keyring.keys().iter().map(|key| key.key_id.clone());
        (
            self.signing.key_id().clone(),
            valid.collect(),
            self.keyring.revoked().to_vec(),
        )
    }
}

/// The worker's current [`KeySet`], replaced whole on every change.
#[derive(Debug, Clone)]
pub struct LiveKeys(Arc<watch::Sender<Arc<KeySet>>>);

impl LiveKeys {
    pub fn new(keys: KeySet) -> Self {
        Self(Arc::new(watch::Sender::new(Arc::new(keys))))
    }

    /// The keys as of now.
    pub fn current(&self) -> Arc<KeySet> {
        self.0.borrow().clone()
    }

    fn replace(&self, keys: KeySet) {
        self.0.send_replace(Arc::new(keys));
    }
}

/// Seeds an empty table from the key files in `dir` (`seed_id` current, created if missing, the
/// others retired), then loads the keys.
pub async fn open(
    pool: &Pool,
    dir: &Path,
    seed_id: &KeyId,
    now: DateTime<Utc>,
) -> Result<KeySet, TicketKeyError> {
    seed_if_empty(pool, dir, seed_id, now).await?;
    load(pool, dir).await
}

/// Fills an empty `ticket_keys` from the key files in `dir`: `seed_id` (created when missing)
/// becomes current, every other ticket key file a retired key. A table with rows is left alone.
pub async fn seed_if_empty(
    pool: &Pool,
    dir: &Path,
    seed_id: &KeyId,
    now: DateTime<Utc>,
) -> Result<(), TicketKeyError> {
    let mut client = pool.get().await?;
    if !is_empty(&client).await? {
        return Ok(());
    }
    if !keys::is_ticket_key_id(seed_id) {
        return Err(TicketKeyError::ReservedId(seed_id.clone()));
    }
    keys::load_or_create_ticket_key(dir, seed_id).map_err(file_error(seed_id))?;
    let files = keys::ticket_key_files(dir).map_err(file_error(seed_id))?;
    let tx = client.transaction().await?;
    // Workers starting together: one seeds, the others then find rows.
    tx.execute("LOCK TABLE ticket_keys IN SHARE ROW EXCLUSIVE MODE", &[])
        .await?;
    if !is_empty(&tx).await? {
        return Ok(());
    }
    for key in &files {
        let retired_at = (key.key_id() != seed_id).then_some(now);
        insert(&tx, &key.public_key(), now, retired_at).await?;
    }
    tx.commit().await?;
    tracing::info!(current = %seed_id, keys = files.len(), "ticket keys recorded from the key directory");
    Ok(())
}

async fn is_empty(client: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT NOT EXISTS (SELECT 1 FROM ticket_keys)", &[])
        .await?;
    Ok(row.get(0))
}

async fn insert(
    client: &impl GenericClient,
    key: &PublicKey,
    created_at: DateTime<Utc>,
    retired_at: Option<DateTime<Utc>>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO ticket_keys (key_id, public_key, created_at, retired_at)
             VALUES ($1, $2, $3, $4)",
            &[
                &key.key_id.as_str(),
                &key.bytes.as_slice(),
                &created_at,
                &retired_at,
            ],
        )
        .await?;
    Ok(())
}

/// Every ticket key, oldest first.
pub async fn list(pool: &Pool) -> Result<Vec<TicketKey>, TicketKeyError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT key_id, public_key, created_at, retired_at, revoked_at
             FROM ticket_keys ORDER BY created_at, key_id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let key_id: String = row.get(0);
            let bytes: Vec<u8> = row.get(1);
            let public_key = KeyId::parse(&key_id)
                .ok()
                .zip(<[u8; 32]>::try_from(bytes).ok())
                .map(|(key_id, bytes)| PublicKey { key_id, bytes })
                .ok_or(TicketKeyError::BadRow(key_id))?;
            Ok(TicketKey {
                public_key,
                created_at: row.get(2),
                retired_at: row.get(3),
                revoked_at: row.get(4),
            })
        })
        .collect()
}

/// Loads the keys from the table, and the current key's private half from `dir`.
pub async fn load(pool: &Pool, dir: &Path) -> Result<KeySet, TicketKeyError> {
    let keys = list(pool).await?;
    let current = keys
        .iter()
        .find(|key| key.state() == KeyState::Current)
        .ok_or(TicketKeyError::NoCurrent)?;
    let key_id = current.key_id();
    let signing = keys::load_ticket_key(dir, key_id).map_err(file_error(key_id))?;
    if signing.public_key() != current.public_key {
        return Err(TicketKeyError::Mismatch {
            key_id: key_id.clone(),
            path: dir.join(format!("{key_id}.pk8")),
        });
    }
    let mut keyring = Keyring::default();
    for key in &keys {
        match key.state() {
            KeyState::Revoked => keyring.revoke(key.key_id().clone()),
            _ => keyring.add(key.public_key.clone()),
        }
    }
    Ok(KeySet {
        signing: Arc::new(signing),
        keyring,
    })
}

/// The outcome of [`rotate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new current key.
    pub current: KeyId,
    /// The key it replaced (now retired).
    pub retired: Option<KeyId>,
}

/// Creates ticket key `new_id` (default: the next free `kN`) in `dir`, records it as current and
/// retires the previous current key.
pub async fn rotate(
    pool: &Pool,
    dir: &Path,
    new_id: Option<KeyId>,
    now: DateTime<Utc>,
) -> Result<Rotation, TicketKeyError> {
    let known = list(pool).await?;
    let new_id = match new_id {
        Some(id) => id,
        None => next_free_id(
            known
                .iter()
                .map(|key| key.key_id().clone())
                .chain(existing_files(dir)),
        ),
    };
    if !keys::is_ticket_key_id(&new_id) {
        return Err(TicketKeyError::ReservedId(new_id));
    }
    if known.iter().any(|key| key.key_id() == &new_id) {
        return Err(TicketKeyError::Exists(new_id));
    }
    // A file without a row is left from an interrupted rotation: it is this installation's own
    // owner-only key, so it is taken as is.
    let key = keys::load_or_create_ticket_key(dir, &new_id).map_err(file_error(&new_id))?;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("LOCK TABLE ticket_keys IN SHARE ROW EXCLUSIVE MODE", &[])
        .await?;
    let taken = tx
        .query_opt(
            "SELECT 1 FROM ticket_keys WHERE key_id = $1",
            &[&new_id.as_str()],
        )
        .await?;
    if taken.is_some() {
        return Err(TicketKeyError::Exists(new_id));
    }
    let retired = tx
        .query_opt(
            "UPDATE ticket_keys SET retired_at = $1
             WHERE retired_at IS NULL AND revoked_at IS NULL RETURNING key_id",
            &[&now],
        )
        .await?
        .and_then(|row| KeyId::parse(row.get(0)).ok());
    insert(&tx, &key.public_key(), now, None).await?;
    tx.commit().await?;
    tracing::info!(current = %new_id, retired = ?retired.as_ref().map(KeyId::as_str), "ticket key rotated");
    Ok(Rotation {
        current: new_id,
        retired,
    })
}

/// The ids of the ticket key files in `dir` (none when it cannot be read).
fn existing_files(dir: &Path) -> Vec<KeyId> {
    keys::ticket_key_files(dir)
        .map(|keys| keys.iter().map(|key| key.key_id().clone()).collect())
        .unwrap_or_default()
}

/// `k` and one more than the highest number of the `kN` ids taken.
fn next_free_id(taken: impl Iterator<Item = KeyId>) -> KeyId {
    let highest = taken
        .filter_map(|id| id.as_str().strip_prefix('k')?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    KeyId::parse(&format!("k{}", highest.saturating_add(1))).expect("kN is a valid key id")
}

/// The outcome of [`revoke`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Revoked now; `open_bookings` tickets it signed were still usable.
    Now { open_bookings: i64 },
    /// It was already revoked then.
    Already(DateTime<Utc>),
}

/// Revokes retired ticket key `key_id`: its tickets are refused from the next reload on (a few
/// seconds). The current key is refused: rotate first.
pub async fn revoke(
    pool: &Pool,
    key_id: &KeyId,
    now: DateTime<Utc>,
) -> Result<Revocation, TicketKeyError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT retired_at, revoked_at FROM ticket_keys WHERE key_id = $1 FOR UPDATE",
            &[&key_id.as_str()],
        )
        .await?
        .ok_or_else(|| TicketKeyError::Unknown(key_id.clone()))?;
    let (retired_at, revoked_at): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        (row.get(0), row.get(1));
    if let Some(at) = revoked_at {
        return Ok(Revocation::Already(at));
    }
    if retired_at.is_none() {
        return Err(TicketKeyError::Current(key_id.clone()));
    }
    tx.execute(
        "UPDATE ticket_keys SET revoked_at = $2 WHERE key_id = $1",
        &[&key_id.as_str(), &now],
    )
    .await?;
    // Bookings whose ticket could still start a session: they need a new ticket.
    let open_bookings: i64 = tx
        .query_one(
            "SELECT count(*) FROM reservations r
             WHERE r.key_id = $1 AND upper(r.period) > $2 AND r.cancelled_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.ticket_id = r.ticket_id)",
            &[&key_id.as_str(), &now],
        )
        .await?
        .get(0);
    tx.commit().await?;
    tracing::warn!(key_id = %key_id, open_bookings, "ticket key revoked");
    Ok(Revocation::Now { open_bookings })
}

/// Reloads the keys into `live` every `period` until `stop`; a failed reload keeps the keys
/// in use and is retried.
pub async fn reload_every(
    pool: Pool,
    dir: PathBuf,
    live: LiveKeys,
    period: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(period) => {}
        }
        match load(&pool, &dir).await {
            Ok(keys) => {
                let before = live.current().summary();
                let after = keys.summary();
                if before != after {
                    tracing::info!(
                        current = %after.0,
                        revoked = ?after.2.iter().map(KeyId::as_str).collect::<Vec<_>>(),
                        "ticket keys changed"
                    );
                    live.replace(keys);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot reload the ticket keys; keeping the ones in use")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> KeyId {
        KeyId::parse(text).unwrap()
    }

    #[test]
    fn the_next_free_id_follows_the_highest_number() {
        assert_eq!(next_free_id(std::iter::empty()), id("k1"));
        assert_eq!(
            next_free_id([id("k1"), id("k9"), id("k2"), id("spare"), id("kx")].into_iter()),
            id("k10")
        );
    }

    #[test]
    fn a_key_state_follows_its_dates() {
        let key = SigningKey::from_seed(id("k1"), &[1; 32]).unwrap();
        let now = Utc::now();
        let mut row = TicketKey {
            public_key: key.public_key(),
            created_at: now,
            retired_at: None,
            revoked_at: None,
        };
        assert_eq!(row.state(), KeyState::Current);
        row.retired_at = Some(now);
        assert_eq!(row.state(), KeyState::Retired);
        row.revoked_at = Some(now);
        assert_eq!(row.state().as_str(), "revoked");
    }
}
