//! The fixed MQTT accounts of the credentials file: usernames with **plain** passwords, for
//! development, bootstrapping and tests. Devices, operators and services in production use
//! identities from management's database instead (see `identities`), whose tokens are stored
//! only as keyed hashes and bound to client ids.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::BrokerError;

/// Why a credentials file could not be used (wrapped in [`BrokerError::Credentials`]).
#[derive(Debug, thiserror::Error)]
pub enum CredentialsFileError {
    #[error("cannot read it: {0}")]
    Read(#[from] std::io::Error),
    #[error(
        "it is not valid TOML of the form [[client]] username = \"..\" password = \"..\": {0}"
    )]
    Parse(#[from] toml::de::Error),
    #[error("it lists no [[client]] entry, so nobody could connect")]
    Empty,
    #[error("client #{index} has an empty username")]
    EmptyUsername { index: usize },
    #[error("client {username:?} has an empty password")]
    EmptyPassword { username: String },
    #[error("username {username:?} is listed twice")]
    Duplicate { username: String },
}

/// Username → password pairs that may connect.
///
/// `Debug` prints the usernames only: passwords never reach a log.
#[derive(Clone, Default)]
pub struct Credentials {
    passwords: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    #[serde(default)]
    client: Vec<ClientEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    username: String,
    password: String,
}

impl Credentials {
    /// An empty set: a broker started with it refuses every client.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) one client.
    pub fn insert(&mut self, username: impl Into<String>, password: impl Into<String>) {
        self.passwords.insert(username.into(), password.into());
    }

    /// Reads a TOML file of `[[client]]` tables, each with `username` and `password`.
    pub fn load(path: &Path) -> Result<Self, BrokerError> {
        let wrap = |source| BrokerError::Credentials {
            path: path.to_path_buf(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(|e| wrap(e.into()))?;
        Self::parse(&text).map_err(wrap)
    }

    /// Parses the text of a credentials file (see [`Credentials::load`]).
    pub fn parse(text: &str) -> Result<Self, CredentialsFileError> {
        let file: CredentialsFile = toml::from_str(text)?;
        if file.client.is_empty() {
            return Err(CredentialsFileError::Empty);
        }
        let mut credentials = Self::new();
        for (index, entry) in file.client.into_iter().enumerate() {
            if entry.username.is_empty() {
                return Err(CredentialsFileError::EmptyUsername { index: index + 1 });
            }
            if entry.password.is_empty() {
                return Err(CredentialsFileError::EmptyPassword {
                    username: entry.username,
                });
            }
            if credentials.passwords.contains_key(&entry.username) {
                return Err(CredentialsFileError::Duplicate {
                    username: entry.username,
                });
            }
            credentials.insert(entry.username, entry.password);
        }
        Ok(credentials)
    }

    /// True when `username` is listed.
    pub fn contains(&self, username: &str) -> bool {
        self.passwords.contains_key(username)
    }

    /// True when `username` is known and `password` is its password.
    pub fn check(&self, username: &str, password: &str) -> bool {
        match self.passwords.get(username) {
            Some(expected) => constant_time_eq(expected.as_bytes(), password.as_bytes()),
            None => false,
        }
    }

    /// How many clients are known.
    pub fn len(&self) -> usize {
        self.passwords.len()
    }

    /// True when no client is known.
    pub fn is_empty(&self) -> bool {
        self.passwords.is_empty()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut usernames: Vec<&str> = self.passwords.keys().map(String::as_str).collect();
        usernames.sort_unstable();
        f.debug_struct("Credentials")
            .field("usernames", &usernames)
            .finish_non_exhaustive()
    }
}

/// Compares without an early exit so the time taken does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_accepts_only_the_right_password() {
        let mut credentials = Credentials::new();
        credentials.insert("management", "s3cret");
        assert!(credentials.check("management", "s3cret"));
        assert!(!credentials.check("management", "s3cre"));
        assert!(!credentials.check("management", "s3cret!"));
        assert!(!credentials.check("device", "s3cret"));
        assert!(!Credentials::new().check("", ""));
    }

    #[test]
    fn debug_never_shows_passwords() {
        let mut credentials = Credentials::new();
        credentials.insert("console", "hunter2-very-secret");
        let printed = format!("{credentials:?}");
        assert!(printed.contains("console"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn parses_client_tables() {
        let credentials = Credentials::parse(
            r#"
            [[client]]
            username = "management"
            password = "a"

            [[client]]
            username = "store-1-device-1"
            password = "b"
            "#,
        )
        .unwrap();
        assert_eq!(credentials.len(), 2);
        assert!(credentials.check("management", "a"));
        assert!(credentials.check("store-1-device-1", "b"));
    }

    #[test]
    fn refuses_bad_files() {
        assert!(matches!(
            Credentials::parse(""),
            Err(CredentialsFileError::Empty)
        ));
        assert!(matches!(
            Credentials::parse("[[client]]\nusername = \"a\"\n"),
            Err(CredentialsFileError::Parse(_))
        ));
        assert!(matches!(
            Credentials::parse("[[client]]\nusername = \"\"\npassword = \"x\"\n"),
            Err(CredentialsFileError::EmptyUsername { index: 1 })
        ));
        assert!(matches!(
            Credentials::parse("[[client]]\nusername = \"a\"\npassword = \"\"\n"),
            Err(CredentialsFileError::EmptyPassword { .. })
        ));
        let twice = "[[client]]\nusername = \"a\"\npassword = \"x\"\n\
                     [[client]]\nusername = \"a\"\npassword = \"y\"\n";
        assert!(matches!(
            Credentials::parse(twice),
            Err(CredentialsFileError::Duplicate { .. })
        ));
    }

    #[test]
    fn load_names_the_file_when_it_is_missing() {
        let error = Credentials::load(Path::new("/nonexistent/mujin-credentials.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("/nonexistent/mujin-credentials.toml"),
            "{error}"
        );
    }
}
