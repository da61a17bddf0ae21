//! Identities from PostgreSQL (the `identities` table management enrols into): the set the
//! broker checks each CONNECT against in memory, how it is loaded, and the pepper file that
//! keys the token hashes.
//!
//! The set is reloaded every [`REFRESH`] (and at once on the table's `mujin_identities`
//! notification), never per CONNECT; when the database is unreachable the last loaded set stays
//! in force.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use mujin_protocol::identity::{Identity, Pepper, TokenHash};

use crate::BrokerError;

/// How often the identities are reloaded when nothing signals a change.
pub const REFRESH: Duration = Duration::from_secs(2);
/// The channel the `identities` table notifies on every change.
pub(crate) const NOTIFY_CHANNEL: &str = "mujin_identities";

/// Where the identities come from and the key of their token hashes.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// libpq-style connection string or `postgres://` URL of management's database.
    pub database_url: String,
    /// The pepper management hashes tokens with (`keys/identity-pepper`).
    pub pepper: Pepper,
    /// How often to reload ([`REFRESH`] unless a test wants otherwise).
    pub refresh: Duration,
}

impl IdentitySettings {
    pub fn new(database_url: impl Into<String>, pepper: Pepper) -> Self {
        Self {
            database_url: database_url.into(),
            pepper,
            refresh: REFRESH,
        }
    }
}

/// Reads the pepper file (32 bytes, readable by its owner only).
pub fn read_pepper(path: &Path) -> Result<Pepper, BrokerError> {
    let wrap = |reason: String| BrokerError::Pepper {
        path: path.to_path_buf(),
        reason,
    };
    let metadata = std::fs::metadata(path).map_err(|error| wrap(error.to_string()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(wrap(format!(
            "it is readable by others (mode {mode:o}); run `chmod 600 {}`",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|error| wrap(error.to_string()))?;
    Pepper::from_bytes(&bytes).map_err(|error| wrap(error.to_string()))
}

/// Why a CONNECT with an identity username was refused (logged with the username, never the
/// token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such identity (or not a valid identity username).
    Unknown,
    /// The password is not the identity's current token.
    BadToken,
    /// The identity was revoked.
    Revoked,
    /// The client id is not one this identity may use.
    WrongClientId,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Unknown => "unknown",
            Refusal::BadToken => "bad token",
            Refusal::Revoked => "revoked",
            Refusal::WrongClientId => "wrong client id",
        })
    }
}

struct Entry {
    identity: Identity,
    hash: TokenHash,
    revoked: bool,
}

/// The identities as last loaded, by username.
#[derive(Default)]
pub struct IdentitySet {
    entries: HashMap<String, Entry>,
}

impl IdentitySet {
    /// Adds (or replaces) one identity.
    pub fn insert(&mut self, identity: Identity, hash: TokenHash, revoked: bool) {
        self.entries.insert(
            identity.username(),
            Entry {
                identity,
                hash,
                revoked,
            },
        );
    }

    /// How many identities are known (revoked ones included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no identity is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks one CONNECT; on success returns the hash the client was let in with, so that a
    /// later change of token or a revocation can be noticed ([`IdentitySet::still_valid`]).
    pub fn check(
        &self,
        pepper: &Pepper,
        client_id: &str,
        username: &str,
        token: &str,
    ) -> Result<TokenHash, Refusal> {
        let entry = self.entries.get(username).ok_or(Refusal::Unknown)?;
        if !pepper.verify(token, &entry.hash) {
            return Err(Refusal::BadToken);
        }
        if entry.revoked {
            return Err(Refusal::Revoked);
        }
        if !entry.identity.allows_client_id(client_id) {
            return Err(Refusal::WrongClientId);
        }
        Ok(entry.hash)
    }

    /// Whether a client let in as `username` with the token hashing to `hash` may stay.
    pub fn still_valid(&self, username: &str, hash: &TokenHash) -> bool {
        self.entries
            .get(username)
            .is_some_and(|entry| !entry.revoked && entry.hash == *hash)
    }
}

impl fmt::Debug for IdentitySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentitySet")
            .field("identities", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// Reads every identity. Rows that do not parse (which management never writes) are skipped
/// with a warning rather than failing the whole reload.
pub(crate) async fn load(
    client: &tokio_postgres::Client,
) -> Result<IdentitySet, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT username, token_hash, revoked_at IS NOT NULL FROM identities",
            &[],
        )
        .await?;
    let mut set = IdentitySet::default();
    for row in rows {
        let username: String = row.get(0);
        let hash: Vec<u8> = row.get(1);
        let parsed = Identity::from_username(&username)
            .and_then(|identity| Ok((identity, TokenHash::from_slice(&hash)?)));
        match parsed {
            Ok((identity, hash)) => set.insert(identity, hash, row.get(2)),
            Err(error) => tracing::warn!(%username, %error, "skipping an invalid identity row"),
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mujin_protocol::identity::ServiceName;
    use mujin_protocol::{DeviceId, StoreId};

    fn pc(device: &str) -> Identity {
        Identity::Device {
            store: StoreId::parse("shibuya").unwrap(),
            device: DeviceId::parse(device).unwrap(),
        }
    }

    fn set(pepper: &Pepper) -> IdentitySet {
        let mut set = IdentitySet::default();
        set.insert(pc("pc-01"), pepper.hash("token-1"), false);
        set.insert(pc("pc-02"), pepper.hash("token-2"), true);
        let service = Identity::Service(ServiceName::parse("mujin-management").unwrap());
        set.insert(service, pepper.hash("token-m"), false);
        set
    }

    #[test]
    fn the_binding_check_names_each_refusal() {
        let pepper = Pepper::from_bytes(&[1u8; 32]).unwrap();
        let set = set(&pepper);
        let pc1 = "device:shibuya:pc-01";
        let id1 = "mujin-agent.shibuya.pc-01";
        let hash = set.check(&pepper, id1, pc1, "token-1").unwrap();
        assert_eq!(hash, pepper.hash("token-1"));
        assert_eq!(
            set.check(&pepper, id1, pc1, "token-2"),
            Err(Refusal::BadToken)
        );
        assert_eq!(
            set.check(&pepper, "mujin-agent.shibuya.pc-02", pc1, "token-1"),
            Err(Refusal::WrongClientId)
        );
        assert_eq!(
            set.check(
                &pepper,
                "mujin-agent.shibuya.pc-02",
                "device:shibuya:pc-02",
                "token-2"
            ),
            Err(Refusal::Revoked)
        );
        assert_eq!(
            set.check(&pepper, id1, "device:shibuya:pc-09", "token-1"),
            Err(Refusal::Unknown)
        );
        assert!(set
            .check(
                &pepper,
                "mujin-management-2",
                "service:mujin-management",
                "token-m"
            )
            .is_ok());
        let other_pepper = Pepper::from_bytes(&[2u8; 32]).unwrap();
        assert_eq!(
            set.check(&other_pepper, id1, pc1, "token-1"),
            Err(Refusal::BadToken)
        );
        assert_eq!(Refusal::WrongClientId.to_string(), "wrong client id");
    }

    #[test]
    fn a_new_token_or_a_revocation_ends_validity() {
        let pepper = Pepper::from_bytes(&[1u8; 32]).unwrap();
        let mut set = set(&pepper);
        let pc1 = "device:shibuya:pc-01";
        let old = pepper.hash("token-1");
        assert!(set.still_valid(pc1, &old));
        set.insert(pc("pc-01"), pepper.hash("token-1b"), false);
        assert!(!set.still_valid(pc1, &old));
        set.insert(pc("pc-01"), old, true);
        assert!(!set.still_valid(pc1, &old));
        assert!(!IdentitySet::default().still_valid(pc1, &old));
    }

    #[test]
    fn the_pepper_file_must_be_private_and_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity-pepper");
        std::fs::write(&path, [3u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_pepper(&path).unwrap_err().to_string();
        assert!(error.contains("readable by others"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pepper = read_pepper(&path).unwrap();
        assert_eq!(
            pepper.hash("x"),
            Pepper::from_bytes(&[3u8; 32]).unwrap().hash("x")
        );
        std::fs::write(&path, b"short").unwrap();
        assert!(read_pepper(&path).is_err());
        assert!(read_pepper(&dir.path().join("missing")).is_err());
    }
}
