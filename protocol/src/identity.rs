//! Who may connect to the broker: identities (a device, an operator, a service), their MQTT
//! usernames, the client ids each may use, and the keyed hash under which their secret tokens
//! are stored.
//!
//! - usernames: `device:{store}:{device}`, `operator:{operator}`, `integrator:{integrator}`,
//!   `service:{name}`;
//! - client ids: a device exactly `mujin-agent.{store}.{device}`; an operator
//!   `mujin-console.{operator}` or `mujin-console.{operator}.{anything}`; an integrator
//!   `mujin-integrator.{integrator}` or `mujin-integrator.{integrator}.{anything}`; a service its
//!   name or `{name}-{anything}` (e.g. `mujin-management-2`), never one of the prefixes above;
//! - tokens: 32 random bytes as 64 lower-case hex characters, kept only as
//!   HMAC-SHA256(pepper, token) so a copy of the database alone cannot be used to connect.
//!
//! Ids are slugs (`a-z`, `0-9`, `-`), so `:` and `.` separate their parts unambiguously.

use std::fmt;

use data_encoding::HEXLOWER;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::ids::{DeviceId, IdError, IntegratorId, OperatorId, StoreId, WorkerId};

/// Bytes of a pepper and of a token's randomness.
pub const SECRET_LEN: usize = 32;
/// Client ids of device agents start with this (then `{store}.{device}`).
pub const AGENT_CLIENT_PREFIX: &str = "mujin-agent.";
/// Client ids of operator consoles start with this (then `{operator}`).
pub const CONSOLE_CLIENT_PREFIX: &str = "mujin-console.";
/// Client ids of integrators start with this (then `{integrator}`).
pub const INTEGRATOR_CLIENT_PREFIX: &str = "mujin-integrator.";

/// Why a username, token, hash or pepper was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{0:?} is not an identity username (device:STORE:DEVICE, operator:OPERATOR, integrator:INTEGRATOR or service:NAME)")]
    NotAnIdentity(String),
    #[error(transparent)]
    BadId(#[from] IdError),
    #[error(
        "a service may not be named {0:?}: its client ids would be those of devices or consoles"
    )]
    ReservedService(String),
    #[error("a pepper must be exactly {SECRET_LEN} bytes, got {0}")]
    PepperLength(usize),
    #[error("a token hash must be exactly 32 bytes, got {0}")]
    HashLength(usize),
    #[error("the system's random number generator failed")]
    Random,
}

/// One party that connects to the broker with its own token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// One device's agent.
    Device { store: StoreId, device: DeviceId },
    /// An operator at a console.
    Operator(OperatorId),
    /// A booking integrator (see [`crate::booking`]).
    Integrator(IntegratorId),
    /// A server-side part, e.g. `mujin-management` (its workers share its token).
    Service(ServiceName),
}

/// A service's name: a slug (like a management worker id) that is not one of the reserved
/// client-id prefixes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(String);

impl ServiceName {
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        // Same rules as a worker id, which is what most services name themselves after.
        let name = WorkerId::parse(text)?;
        let reserved = RESERVED_CLIENT_PREFIXES
            .iter()
            .any(|prefix| prefix.trim_end_matches('.') == name.as_str());
        if reserved {
            return Err(IdentityError::ReservedService(text.to_owned()));
        }
        Ok(Self(name.as_str().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Client-id prefixes that belong to one kind of identity; no service may use them.
const RESERVED_CLIENT_PREFIXES: [&str; 3] = [
    AGENT_CLIENT_PREFIX,
    CONSOLE_CLIENT_PREFIX,
    INTEGRATOR_CLIENT_PREFIX,
];

/// The client id a device's agent must use.
pub fn device_client_id(store: &StoreId, device: &DeviceId) -> String {
    format!("{AGENT_CLIENT_PREFIX}{store}.{device}")
}

/// The plain client id of an operator's console (`…{operator}.{suffix}` is allowed too, for
/// several consoles at once).
pub fn operator_client_id(operator: &OperatorId) -> String {
    format!("{CONSOLE_CLIENT_PREFIX}{operator}")
}

/// The plain client id of an integrator (`…{integrator}.{suffix}` is allowed too, for several
/// connections at once).
pub fn integrator_client_id(integrator: &IntegratorId) -> String {
    format!("{INTEGRATOR_CLIENT_PREFIX}{integrator}")
}

/// Whether `client_id` is `plain` or `plain.{suffix}` (a non-empty suffix).
fn plain_or_dotted(client_id: &str, plain: &str) -> bool {
    client_id == plain
        || client_id
            .strip_prefix(plain)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
}

impl Identity {
    /// `device`, `operator`, `integrator` or `service`.
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Device { .. } => "device",
            Identity::Operator(_) => "operator",
            Identity::Integrator(_) => "integrator",
            Identity::Service(_) => "service",
        }
    }

    /// The MQTT username of this identity.
    pub fn username(&self) -> String {
        self.to_string()
    }

    /// Parses an MQTT username of the form this identity's [`Identity::username`] gives.
    pub fn from_username(username: &str) -> Result<Self, IdentityError> {
        let not_one = || IdentityError::NotAnIdentity(username.chars().take(64).collect());
        let (kind, rest) = username.split_once(':').ok_or_else(not_one)?;
        match kind {
            "device" => {
                let (store, device) = rest.split_once(':').ok_or_else(not_one)?;
                Ok(Identity::Device {
                    store: StoreId::parse(store)?,
                    device: DeviceId::parse(device)?,
                })
            }
            "operator" => Ok(Identity::Operator(OperatorId::parse(rest)?)),
            "integrator" => Ok(Identity::Integrator(IntegratorId::parse(rest)?)),
            "service" => Ok(Identity::Service(ServiceName::parse(rest)?)),
            _ => Err(not_one()),
        }
    }

    /// True when `username` is meant as an identity (`device:`, `operator:`, `integrator:` or
    /// `service:`), valid or not.
    pub fn is_identity_username(username: &str) -> bool {
        ["device:", "operator:", "integrator:", "service:"]
            .iter()
            .any(|prefix| username.starts_with(prefix))
    }

    /// Whether this identity may connect with `client_id` (the binding the broker enforces, so a
    /// copied token cannot take over another party's connection).
    pub fn allows_client_id(&self, client_id: &str) -> bool {
        match self {
            Identity::Device { store, device } => client_id == device_client_id(store, device),
            Identity::Operator(operator) => {
                plain_or_dotted(client_id, &operator_client_id(operator))
            }
            Identity::Integrator(integrator) => {
                plain_or_dotted(client_id, &integrator_client_id(integrator))
            }
            Identity::Service(name) => {
                let reserved = RESERVED_CLIENT_PREFIXES
                    .iter()
                    .any(|prefix| client_id.starts_with(prefix));
                let own = client_id == name.as_str()
                    || client_id
                        .strip_prefix(name.as_str())
                        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('-'));
                own && !reserved
            }
        }
    }

    /// The client-id rule in words, for enrolment output and refusals.
    pub fn client_id_rule(&self) -> String {
        match self {
            Identity::Device { store, device } => device_client_id(store, device),
            Identity::Operator(operator) => {
                let plain = operator_client_id(operator);
                format!("{plain} or {plain}.<suffix>")
            }
            Identity::Integrator(integrator) => {
                let plain = integrator_client_id(integrator);
                format!("{plain} or {plain}.<suffix>")
            }
            Identity::Service(name) => format!("{name} or {name}-<suffix>"),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Device { store, device } => write!(f, "device:{store}:{device}"),
            Identity::Operator(operator) => write!(f, "operator:{operator}"),
            Identity::Integrator(integrator) => write!(f, "integrator:{integrator}"),
            Identity::Service(name) => write!(f, "service:{name}"),
        }
    }
}

/// A secret token, shown once at enrolment and then only held by its owner. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A fresh random token.
    pub fn generate() -> Result<Self, IdentityError> {
        Ok(Self(HEXLOWER.encode(&random_bytes()?)))
    }

    /// The token's text (the MQTT password).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// `SECRET_LEN` bytes from the system's random number generator (for a pepper or a token).
pub fn random_bytes() -> Result<[u8; SECRET_LEN], IdentityError> {
    let mut bytes = [0u8; SECRET_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IdentityError::Random)?;
    Ok(bytes)
}

/// HMAC-SHA256 of a token under the pepper: what the database keeps instead of the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdentityError> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| IdentityError::HashLength(bytes.len()))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to tell two apart in a log, and says little about the token.
        write!(f, "TokenHash({}…)", HEXLOWER.encode(&self.0[..4]))
    }
}

/// The secret key of token hashes, shared by management (which hashes new tokens) and the
/// broker (which checks them). `Debug` hides it.
#[derive(Clone)]
pub struct Pepper(hmac::Key);

impl Pepper {
    /// A pepper from its `SECRET_LEN` bytes (the pepper file's content).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        if bytes.len() != SECRET_LEN {
            return Err(IdentityError::PepperLength(bytes.len()));
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// The hash under which `token` is stored.
    pub fn hash(&self, token: &str) -> TokenHash {
        let tag = hmac::sign(&self.0, token.as_bytes());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(tag.as_ref());
        TokenHash(hash)
    }

    /// Whether `token` hashes to `expected` (compared in constant time).
    pub fn verify(&self, token: &str, expected: &TokenHash) -> bool {
        hmac::verify(&self.0, token.as_bytes(), expected.as_bytes()).is_ok()
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(store: &str, device: &str) -> Identity {
        Identity::Device {
            store: StoreId::parse(store).unwrap(),
            device: DeviceId::parse(device).unwrap(),
        }
    }

    #[test]
    fn usernames_round_trip() {
        for identity in [
            device("shibuya", "pc-01"),
            Identity::Operator(OperatorId::parse("alice").unwrap()),
            Identity::Integrator(IntegratorId::parse("acme").unwrap()),
            Identity::Service(ServiceName::parse("mujin-management").unwrap()),
        ] {
            let username = identity.username();
            assert!(Identity::is_identity_username(&username));
            assert_eq!(Identity::from_username(&username).unwrap(), identity);
        }
        assert_eq!(device("s", "d").username(), "device:s:d");
        assert_eq!(device("s", "d").kind(), "device");
    }

    #[test]
    fn bad_usernames_are_refused() {
        for username in [
            "management",
            "device:shibuya",
            "device:shibuya:PC",
            "device:a:b:c",
            "operator:",
            "operator:a.b",
            "service:mujin-agent",
            "service:mujin-console",
            "service:mujin-integrator",
            "integrator:",
            "integrator:a:b",
            "robot:x",
        ] {
            assert!(
                Identity::from_username(username).is_err(),
                "{username} accepted"
            );
        }
        assert!(!Identity::is_identity_username("management"));
    }

    #[test]
    fn a_device_has_exactly_one_client_id() {
        let pc = device("shibuya", "pc-01");
        assert!(pc.allows_client_id("mujin-agent.shibuya.pc-01"));
        for other in [
            "mujin-agent.shibuya.pc-02",
            "mujin-agent.shibuya.pc-01.x",
            "mujin-agent-shibuya-pc-01",
            "mujin-agent.shibuya-pc.01",
            "",
        ] {
            assert!(!pc.allows_client_id(other), "{other} allowed");
        }
        assert_eq!(
            device_client_id(
                &StoreId::parse("a").unwrap(),
                &DeviceId::parse("b").unwrap()
            ),
            "mujin-agent.a.b"
        );
    }

    #[test]
    fn an_operator_may_run_several_consoles() {
        let alice = Identity::Operator(OperatorId::parse("alice").unwrap());
        assert!(alice.allows_client_id("mujin-console.alice"));
        assert!(alice.allows_client_id("mujin-console.alice.laptop"));
        for other in [
            "mujin-console.alice.",
            "mujin-console.alicex",
            "mujin-console.bob",
            "mujin-console.ali",
            "mujin-agent.alice.x",
        ] {
            assert!(!alice.allows_client_id(other), "{other} allowed");
        }
    }

    #[test]
    fn an_integrator_may_connect_several_times_under_its_own_prefix() {
        let acme = Identity::Integrator(IntegratorId::parse("acme").unwrap());
        assert_eq!(acme.username(), "integrator:acme");
        assert_eq!(acme.kind(), "integrator");
        assert!(acme.allows_client_id("mujin-integrator.acme"));
        assert!(acme.allows_client_id("mujin-integrator.acme.kiosk-7"));
        for other in [
            "mujin-integrator.acme.",
            "mujin-integrator.acmex",
            "mujin-integrator.other",
            "mujin-console.acme",
            "acme",
        ] {
            assert!(!acme.allows_client_id(other), "{other} allowed");
        }
        assert_eq!(
            acme.client_id_rule(),
            "mujin-integrator.acme or mujin-integrator.acme.<suffix>"
        );
        let broad = Identity::Service(ServiceName::parse("mujin").unwrap());
        assert!(!broad.allows_client_id("mujin-integrator.acme"));
    }

    #[test]
    fn a_service_uses_its_name_and_never_a_device_or_console_id() {
        let management = Identity::Service(ServiceName::parse("mujin-management").unwrap());
        assert!(management.allows_client_id("mujin-management"));
        assert!(management.allows_client_id("mujin-management-2"));
        assert!(!management.allows_client_id("mujin-management-"));
        assert!(!management.allows_client_id("mujin-managementx"));
        assert!(!management.allows_client_id("mujin-observer"));
        let broad = Identity::Service(ServiceName::parse("mujin").unwrap());
        assert!(broad.allows_client_id("mujin-demo"));
        assert!(!broad.allows_client_id("mujin-agent.shibuya.pc-01"));
        assert!(!broad.allows_client_id("mujin-console.alice"));
    }

    #[test]
    fn tokens_are_fresh_hidden_and_verified_only_under_their_pepper() {
        let token = Token::generate().unwrap();
        assert_eq!(token.expose().len(), 64);
        assert_ne!(token, Token::generate().unwrap());
        assert!(!format!("{token:?}").contains(token.expose()));

        let pepper = Pepper::from_bytes(&[7u8; 32]).unwrap();
        let hash = pepper.hash(token.expose());
        assert!(pepper.verify(token.expose(), &hash));
        assert!(!pepper.verify("wrong", &hash));
        let other = Pepper::from_bytes(&[8u8; 32]).unwrap();
        assert!(!other.verify(token.expose(), &hash));
        assert_eq!(TokenHash::from_slice(hash.as_bytes()).unwrap(), hash);
        assert!(format!("{pepper:?}").contains("redacted"));
    }

    #[test]
    fn the_hash_is_hmac_sha256_of_the_token() {
        // Pinned (computed with Python's hmac module) so that a change of algorithm, which
        // would lock every enrolled party out, cannot happen by accident.
        let pepper = Pepper::from_bytes(&[0u8; 32]).unwrap();
        assert_eq!(
            HEXLOWER.encode(pepper.hash("token").as_bytes()),
            "3a6a70b57f919d9218bd35c24f98c3e7ae733e60b2e8c81c3be8fcf3de23e065"
        );
        assert_eq!(
            Pepper::from_bytes(&[0u8; 16]).unwrap_err(),
            IdentityError::PepperLength(16)
        );
        assert_eq!(
            TokenHash::from_slice(&[0u8; 3]).unwrap_err(),
            IdentityError::HashLength(3)
        );
    }
}
