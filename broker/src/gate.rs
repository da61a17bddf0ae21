//! The broker's one auth decision, called by rumqttd for every CONNECT: the broker's own
//! internal client, identities (when a database is configured), then the fixed accounts of the
//! credentials file. It also remembers which client ids were let in as which identity, so that
//! a revoked (or re-enrolled) identity can be disconnected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use mujin_protocol::identity::{Identity, Pepper, Token, TokenHash};
use tracing::warn;

use crate::identities::{IdentitySet, Refusal};
use crate::Credentials;

/// The username of the broker's own client, which disconnects revoked identities by connecting
/// with their client id. Not a valid identity username, and checked before the credentials file.
pub(crate) const INTERNAL_USERNAME: &str = "mujin-broker:internal";

/// Identities and who was let in as one.
struct Live {
    pepper: Pepper,
    set: RwLock<Arc<IdentitySet>>,
    /// client id → (username, token hash) it was let in with. Entries stay after a client leaves
    /// (rumqttd does not tell the auth hook); a stale one costs one needless internal connect.
    admitted: Mutex<HashMap<String, (String, TokenHash)>>,
}

/// Decides who may connect.
pub(crate) struct Gate {
    internal_secret: String,
    credentials: Credentials,
    identities: Option<Live>,
}

impl Gate {
    /// A gate over the credentials file's accounts and, given a pepper, identities (none until
    /// [`Gate::replace_identities`] is first called).
    pub(crate) fn new(credentials: Credentials, pepper: Option<Pepper>) -> Result<Self, String> {
        // A fresh random secret per process: nobody outside this process can use the internal
        // username.
        let internal_secret = Token::generate()
            .map_err(|error| error.to_string())?
            .expose()
            .to_owned();
        Ok(Self {
            internal_secret,
            credentials,
            identities: pepper.map(|pepper| Live {
                pepper,
                set: RwLock::new(Arc::new(IdentitySet::default())),
                admitted: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub(crate) fn internal_secret(&self) -> &str {
        &self.internal_secret
    }

    /// Whether this CONNECT may go on; refusals are logged with the username and the reason.
    pub(crate) fn admit(&self, client_id: &str, username: &str, password: &str) -> bool {
        let outcome = self.decide(client_id, username, password);
        if let Err(reason) = outcome {
            let username: String = username.chars().take(100).collect();
            warn!(%client_id, %username, %reason, "refused a client");
        }
        outcome.is_ok()
    }

    fn decide(&self, client_id: &str, username: &str, password: &str) -> Result<(), Refusal> {
        if username == INTERNAL_USERNAME {
            return if constant_time_eq(password, &self.internal_secret) {
                Ok(())
            } else {
                Err(Refusal::BadToken)
            };
        }
        match &self.identities {
            Some(live) if Identity::is_identity_username(username) => {
                let set = live
                    .set
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let hash = set.check(&live.pepper, client_id, username, password)?;
                live.admitted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(client_id.to_owned(), (username.to_owned(), hash));
                Ok(())
            }
            _ if self.credentials.contains(username) => {
                if self.credentials.check(username, password) {
                    Ok(())
                } else {
                    Err(Refusal::BadToken)
                }
            }
            _ => Err(Refusal::Unknown),
        }
    }

    /// Puts a newly loaded set in force; returns the (client id, username) pairs let in with a
    /// token that is no longer valid (revoked, replaced or gone), to be disconnected.
    pub(crate) fn replace_identities(&self, set: IdentitySet) -> Vec<(String, String)> {
        let Some(live) = &self.identities else {
            return Vec::new();
        };
        let set = Arc::new(set);
        *live.set.write().unwrap_or_else(PoisonError::into_inner) = set.clone();
        let mut admitted = live.admitted.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stale = Vec::new();
        admitted.retain(|client_id, (username, hash)| {
            let valid = set.still_valid(username, hash);
            if !valid {
                stale.push((client_id.clone(), username.clone()));
            }
            valid
        });
        stale
    }

    /// How many identities are in force.
    pub(crate) fn identity_count(&self) -> usize {
        self.identities.as_ref().map_or(0, |live| {
            live.set
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
        })
    }
}

/// Compares without an early exit so the time taken does not tell how much of a guess was right.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use mujin_protocol::{DeviceId, StoreId};

    const PC1: &str = "device:shibuya:pc-01";
    const PC1_ID: &str = "mujin-agent.shibuya.pc-01";

    fn gate() -> (Gate, Pepper) {
        let pepper = Pepper::from_bytes(&[5u8; 32]).unwrap();
        let mut credentials = Credentials::new();
        credentials.insert("management", "m-secret");
        credentials.insert(PC1, "file-password");
        let gate = Gate::new(credentials, Some(pepper.clone())).unwrap();
        let mut set = IdentitySet::default();
        let pc1 = Identity::from_username(PC1).unwrap();
        set.insert(pc1, pepper.hash("token-1"), false);
        assert!(gate.replace_identities(set).is_empty());
        (gate, pepper)
    }

    #[test]
    fn each_source_decides_its_own_usernames() {
        let (gate, _) = gate();
        assert!(gate.admit(PC1_ID, PC1, "token-1"));
        // An identity username is never checked against the file, even if listed there.
        assert!(!gate.admit(PC1_ID, PC1, "file-password"));
        assert!(gate.admit("anything", "management", "m-secret"));
        assert!(!gate.admit("anything", "management", "token-1"));
        assert!(!gate.admit("anything", "nobody", "x"));
        let secret = gate.internal_secret().to_owned();
        assert!(gate.admit(PC1_ID, INTERNAL_USERNAME, &secret));
        assert!(!gate.admit(PC1_ID, INTERNAL_USERNAME, "guess"));
        assert_eq!(gate.identity_count(), 1);
    }

    #[test]
    fn without_a_database_identity_usernames_fall_back_to_the_file() {
        let mut credentials = Credentials::new();
        credentials.insert(PC1, "file-password");
        let gate = Gate::new(credentials, None).unwrap();
        assert!(gate.admit("any-id", PC1, "file-password"));
        assert!(gate.replace_identities(IdentitySet::default()).is_empty());
    }

    #[test]
    fn clients_let_in_with_a_token_no_longer_valid_are_named_once() {
        let (gate, pepper) = gate();
        assert!(gate.admit(PC1_ID, PC1, "token-1"));
        let pc1 = Identity::Device {
            store: StoreId::parse("shibuya").unwrap(),
            device: DeviceId::parse("pc-01").unwrap(),
        };
        let mut same = IdentitySet::default();
        same.insert(pc1.clone(), pepper.hash("token-1"), false);
        assert!(gate.replace_identities(same).is_empty());

        let mut revoked = IdentitySet::default();
        revoked.insert(pc1.clone(), pepper.hash("token-1"), true);
        assert_eq!(
            gate.replace_identities(revoked),
            vec![(PC1_ID.to_owned(), PC1.to_owned())]
        );
        assert!(!gate.admit(PC1_ID, PC1, "token-1"));

        let mut renewed = IdentitySet::default();
        renewed.insert(pc1, pepper.hash("token-2"), false);
        assert!(gate.replace_identities(renewed).is_empty(), "named twice");
        assert!(gate.admit(PC1_ID, PC1, "token-2"));
        assert!(!gate.admit(PC1_ID, PC1, "token-1"));
    }
}
