//! Management's keys on disk: one PKCS#8 file per key id in a directory only the owner can
//! read — the ticket-signing keys (`{key_id}.pk8`, their lifecycle is in [`crate::ticket_keys`]),
//! the command key that signs what devices act on (`command-{key_id}.pk8`) and the root key that
//! signs the stores' trust lists (`root-{key_id}.pk8`) — and the pepper that keys the hashes of identity tokens
//! (`identity-pepper`, 32 random bytes, shared with the broker). A key is created on first use;
//! its bytes are never logged.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mujin_protocol::identity::{self, IdentityError, Pepper};
use mujin_protocol::ticket::{KeyError, Keyring, SigningKey};
use mujin_protocol::KeyId;

/// Why the key directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot use key directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("key file {path} is not a valid key: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    #[error("pepper file {path} is not valid: {source}")]
    InvalidPepper {
        path: PathBuf,
        #[source]
        source: IdentityError,
    },
}

/// The file name of the identity pepper in the key directory.
pub const PEPPER_FILE: &str = "identity-pepper";

/// The id of management's command key (its file is `command-c1.pk8`).
pub const COMMAND_KEY_ID: &str = "c1";
/// How command key files are named: this prefix, the key id, `.pk8`.
const COMMAND_FILE_PREFIX: &str = "command-";
/// The id of management's root key (its file is `root-r1.pk8`).
pub const ROOT_KEY_ID: &str = "r1";
/// How root key files are named: this prefix, the key id, `.pk8`.
const ROOT_FILE_PREFIX: &str = "root-";

/// The key that signs new tickets, every public key that verifies them, the command key that
/// signs commands and desired states, and the root key that signs trust lists.
#[derive(Debug)]
pub struct TicketKeys {
    pub signing: SigningKey,
    pub keyring: Keyring,
    pub command: Arc<SigningKey>,
    pub root: Arc<SigningKey>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Loads the signing key `key_id` from `dir` (creating it, the command and the root key with
/// owner-only permissions when missing) and every ticket key there for verification. (The
/// worker takes its ticket keys from the database instead, see [`crate::ticket_keys`].)
pub fn load_or_create(dir: &Path, key_id: &KeyId) -> Result<TicketKeys, KeyFileError> {
    let signing = load_or_create_ticket_key(dir, key_id)?;
    let command = Arc::new(load_or_create_command_key(dir)?);
    let root = Arc::new(load_or_create_root_key(dir)?);
    let keyring = Keyring::new(ticket_key_files(dir)?.iter().map(SigningKey::public_key));
    Ok(TicketKeys {
        signing,
        keyring,
        command,
        root,
    })
}

/// Every ticket-signing key in `dir` (the files `{key_id}.pk8`; not the command or root key).
pub fn ticket_key_files(dir: &Path) -> Result<Vec<SigningKey>, KeyFileError> {
    let mut keys = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let file = entry.path();
        let Some(id) = file
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".pk8"))
            .and_then(|stem| KeyId::parse(stem).ok())
            .filter(is_ticket_key_id)
        else {
            continue;
        };
        keys.push(read_key(&file, &id)?);
    }
    keys.sort_by(|a, b| a.key_id().as_str().cmp(b.key_id().as_str()));
    Ok(keys)
}

/// Whether `key_id` may name a ticket key: the command and root keys' file names are taken.
pub fn is_ticket_key_id(key_id: &KeyId) -> bool {
    let id = key_id.as_str();
    !id.starts_with(COMMAND_FILE_PREFIX) && !id.starts_with(ROOT_FILE_PREFIX)
}

/// Loads the ticket-signing key `key_id` from `dir`, creating it (and `dir`) when missing.
pub fn load_or_create_ticket_key(dir: &Path, key_id: &KeyId) -> Result<SigningKey, KeyFileError> {
    load_or_create_file(dir, &key_path(dir, key_id), key_id, "ticket-signing")
}

/// Loads the ticket-signing key `key_id` from `dir`; a missing file is an error.
pub fn load_ticket_key(dir: &Path, key_id: &KeyId) -> Result<SigningKey, KeyFileError> {
    read_key(&key_path(dir, key_id), key_id)
}

/// Loads management's command key from `dir`, creating it (and `dir`) when missing.
pub fn load_or_create_command_key(dir: &Path) -> Result<SigningKey, KeyFileError> {
    let key_id = KeyId::parse(COMMAND_KEY_ID).expect("the command key id is a valid id");
    let path = dir.join(format!("{COMMAND_FILE_PREFIX}{key_id}.pk8"));
    load_or_create_file(dir, &path, &key_id, "command")
}

/// Loads management's root key (which signs the trust lists) from `dir`, creating it (and
/// `dir`) when missing.
pub fn load_or_create_root_key(dir: &Path) -> Result<SigningKey, KeyFileError> {
    let key_id = KeyId::parse(ROOT_KEY_ID).expect("the root key id is a valid id");
    let path = dir.join(format!("{ROOT_FILE_PREFIX}{key_id}.pk8"));
    load_or_create_file(dir, &path, &key_id, "root")
}

/// Loads the identity pepper from `dir` (`identity-pepper`), creating it (and `dir`) with
/// owner-only permissions when missing. The broker is given the same file
/// (`mujin-broker --identity-pepper`).
pub fn load_or_create_pepper(dir: &Path) -> Result<Pepper, KeyFileError> {
    let path = dir.join(PEPPER_FILE);
    create_dir(dir)?;
    if !path.exists() {
        let invalid = |source| KeyFileError::InvalidPepper {
            path: path.clone(),
            source,
        };
        let bytes = identity::random_bytes().map_err(invalid)?;
        write_new_secret(&path, &bytes)?;
        tracing::info!(path = %path.display(), "created the identity pepper");
    }
    let bytes = read_secret(&path)?;
    Pepper::from_bytes(&bytes).map_err(|source| KeyFileError::InvalidPepper { path, source })
}

fn create_dir(dir: &Path) -> Result<(), KeyFileError> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_error(dir))?;
    }
    Ok(())
}

fn load_or_create_file(
    dir: &Path,
    path: &Path,
    key_id: &KeyId,
    purpose: &str,
) -> Result<SigningKey, KeyFileError> {
    create_dir(dir)?;
    if !path.exists() {
        create_key(path, key_id, purpose)?;
    }
    read_key(path, key_id)
}

fn key_path(dir: &Path, key_id: &KeyId) -> PathBuf {
    dir.join(format!("{key_id}.pk8"))
}

fn create_key(path: &Path, key_id: &KeyId, purpose: &str) -> Result<(), KeyFileError> {
    let (_, pkcs8) =
        SigningKey::generate(key_id.clone()).map_err(|source| KeyFileError::Invalid {
            path: path.to_owned(),
            source,
        })?;
    write_new_secret(path, &pkcs8)?;
    tracing::info!(key_id = %key_id, path = %path.display(), purpose, "created a signing key");
    Ok(())
}

/// Writes a new owner-only file (never overwrites one).
fn write_new_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// Reads a file only its owner may read.
fn read_secret(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let mode = fs::metadata(path)
        .map_err(io_error(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    fs::read(path).map_err(io_error(path))
}

fn read_key(path: &Path, key_id: &KeyId) -> Result<SigningKey, KeyFileError> {
    let pkcs8 = read_secret(path)?;
    SigningKey::from_pkcs8(key_id.clone(), &pkcs8).map_err(|source| KeyFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_an_owner_only_key_and_reloads_the_same_one() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let id = KeyId::parse("k1").unwrap();
        let first = load_or_create(&keys_dir, &id).unwrap();
        let mode = fs::metadata(keys_dir.join("k1.pk8"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(&keys_dir, &id).unwrap();
        assert_eq!(first.signing.public_key(), again.signing.public_key());
    }

    #[test]
    fn the_command_key_is_created_once_and_never_verifies_tickets() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), &KeyId::parse("k1").unwrap()).unwrap();
        let path = dir.path().join("command-c1.pk8");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(dir.path(), &KeyId::parse("k1").unwrap()).unwrap();
        assert_eq!(first.command.public_key(), again.command.public_key());
        assert_ne!(
            first.command.public_key().bytes,
            first.signing.public_key().bytes
        );
        assert_eq!(again.keyring.keys().len(), 1);
        assert_eq!(
            load_or_create_command_key(dir.path()).unwrap().public_key(),
            first.command.public_key()
        );
    }

    #[test]
    fn the_root_key_is_created_once_apart_from_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), &KeyId::parse("k1").unwrap()).unwrap();
        let path = dir.path().join("root-r1.pk8");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(first.root.key_id().as_str(), "r1");
        assert_ne!(
            first.root.public_key().bytes,
            first.command.public_key().bytes
        );
        assert_ne!(
            first.root.public_key().bytes,
            first.signing.public_key().bytes
        );
        assert_eq!(
            load_or_create_root_key(dir.path()).unwrap().public_key(),
            first.root.public_key()
        );
        let ticket_keys: Vec<String> = ticket_key_files(dir.path())
            .unwrap()
            .iter()
            .map(|key| key.key_id().to_string())
            .collect();
        assert_eq!(ticket_keys, ["k1"]);
        assert!(!is_ticket_key_id(&KeyId::parse("root-r2").unwrap()));
        assert!(!is_ticket_key_id(&KeyId::parse("command-c2").unwrap()));
        assert!(is_ticket_key_id(&KeyId::parse("k7").unwrap()));
    }

    #[test]
    fn the_pepper_is_created_once_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let first = load_or_create_pepper(&keys_dir).unwrap();
        let path = keys_dir.join(PEPPER_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read(&path).unwrap().len(), 32);
        let again = load_or_create_pepper(&keys_dir).unwrap();
        assert_eq!(first.hash("t"), again.hash("t"));

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_or_create_pepper(&keys_dir).unwrap_err();
        assert!(matches!(err, KeyFileError::TooOpen { .. }), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, b"short").unwrap();
        let err = load_or_create_pepper(&keys_dir).unwrap_err();
        assert!(matches!(err, KeyFileError::InvalidPepper { .. }), "{err}");
    }

    #[test]
    fn refuses_a_key_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let id = KeyId::parse("k1").unwrap();
        load_or_create(dir.path(), &id).unwrap();
        let path = dir.path().join("k1.pk8");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path(), &id).unwrap_err();
        assert!(
            matches!(err, KeyFileError::TooOpen { mode: 0o644, .. }),
            "{err}"
        );
    }

    #[test]
    fn verifies_tickets_of_every_key_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let old = load_or_create(dir.path(), &KeyId::parse("k1").unwrap()).unwrap();
        let new = load_or_create(dir.path(), &KeyId::parse("k2").unwrap()).unwrap();
        assert_eq!(new.signing.key_id().as_str(), "k2");
        let claims = mujin_protocol::ticket::TicketClaims {
            ticket_id: mujin_protocol::TicketId::random(),
            store: "s".parse().unwrap(),
            device: "d".parse().unwrap(),
            not_before: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            not_after: chrono::DateTime::from_timestamp(60, 0).unwrap(),
            key_id: KeyId::parse("k1").unwrap(),
        };
        assert!(new.keyring.verify(&old.signing.issue(&claims)).is_ok());
    }
}
