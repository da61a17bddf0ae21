//! Signed messages: commands and desired states carry an Ed25519 signature by management's
//! *command key*, trust lists one by its *root key* (which vouches for the ticket keys a device
//! trusts offline), and operators' requests one by the operator's own key, so that a client
//! holding only broker credentials (the broker has no topic ACL) cannot make a device or
//! management act.
//!
//! The signed bytes are a context string per message type (`mujin-command-v1\0`, …) followed by
//! [`message::encode`] of the message with its `signature` absent. A command also names the
//! device it is for and when it expires, so one captured on the wire cannot be replayed to
//! another device or much later; a desired state names its device, a trust list its store. A
//! request carries when it was sent, and an operator key's id is derived from its public key
//! ([`operator_key_id`]), so the signature says who signed it.

use chrono::{DateTime, TimeDelta, Utc};
use data_encoding::HEXLOWER;
use ring::{digest, signature};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, KeyId, StoreId};
use crate::message::{self, Command, DesiredState, Request};
use crate::ticket::{KeyError, PublicKey, SigningKey};
use crate::trust::TrustList;

const COMMAND_CONTEXT: &[u8] = b"mujin-command-v1\0";
const DESIRED_CONTEXT: &[u8] = b"mujin-desired-v1\0";
const TRUST_CONTEXT: &[u8] = b"mujin-trust-v1\0";
const REQUEST_CONTEXT: &[u8] = b"mujin-request-v1\0";

/// How far a request's `sent_at` may be from management's clock, either way.
pub const REQUEST_MAX_SKEW: TimeDelta = TimeDelta::minutes(5);
/// How an operator key's id begins (the rest is from its public key).
const OPERATOR_KEY_PREFIX: &str = "op";

/// A signature on a message: the signing key's id and the Ed25519 signature in lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Signature {
    pub key_id: KeyId,
    #[schemars(regex(pattern = "^[0-9a-f]{128}$"))]
    pub sig: String,
}

/// Why a signed message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the message is not signed")]
    Unsigned,
    #[error("the message is signed with unknown key {0:?}")]
    UnknownKey(String),
    #[error("the message's signature does not match")]
    BadSignature,
    #[error("the message is for {0}")]
    OtherTarget(String),
    #[error("the message expired at {0}")]
    Expired(DateTime<Utc>),
    #[error("the message does not say when it was sent")]
    Undated,
    #[error("the message was sent at {0}, more than 5 minutes from now")]
    OutOfTime(DateTime<Utc>),
}

impl VerifyError {
    /// How a device says why it refused a command: `bad signature`, `for another device` or
    /// `expired` (after `rejected: ` in its ack).
    pub fn refusal(&self) -> &'static str {
        match self {
            VerifyError::Unsigned | VerifyError::UnknownKey(_) | VerifyError::BadSignature => {
                "bad signature"
            }
            VerifyError::OtherTarget(_) => "for another device",
            VerifyError::Expired(_) | VerifyError::Undated | VerifyError::OutOfTime(_) => "expired",
        }
    }
}

/// Why a `KEYID:HEX` public key text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected KEYID:HEX with a 32-byte Ed25519 public key in hex: {0}")]
pub struct PublicKeyTextError(&'static str);

/// The `KEYID:HEX` text of a public key, as `mujin-management command-key` prints it.
pub fn public_key_text(key: &PublicKey) -> String {
    format!("{}:{}", key.key_id, HEXLOWER.encode(&key.bytes))
}

/// Parses a `KEYID:HEX` public key text.
pub fn parse_public_key(text: &str) -> Result<PublicKey, PublicKeyTextError> {
    let (id, hex) = text
        .trim()
        .split_once(':')
        .ok_or(PublicKeyTextError("no ':'"))?;
    let key_id = KeyId::parse(id).map_err(|_| PublicKeyTextError("invalid key id"))?;
    let bytes = HEXLOWER
        .decode(hex.to_ascii_lowercase().as_bytes())
        .map_err(|_| PublicKeyTextError("invalid hex"))?;
    let bytes = bytes
        .try_into()
        .map_err(|_| PublicKeyTextError("not 32 bytes"))?;
    Ok(PublicKey { key_id, bytes })
}

fn signed_bytes<T: Serialize>(context: &[u8], unsigned: &T) -> Vec<u8> {
    let mut bytes = context.to_vec();
    bytes.extend_from_slice(&message::encode(unsigned));
    bytes
}

pub(crate) fn sign_bytes(key: &SigningKey, bytes: &[u8]) -> Signature {
    Signature {
        key_id: key.key_id().clone(),
        sig: HEXLOWER.encode(&key.sign_bytes(bytes)),
    }
}

pub(crate) fn verify_bytes(
    key: &PublicKey,
    signature: Option<&Signature>,
    bytes: &[u8],
) -> Result<(), VerifyError> {
    let signature = signature.ok_or(VerifyError::Unsigned)?;
    if signature.key_id != key.key_id {
        return Err(VerifyError::UnknownKey(signature.key_id.to_string()));
    }
    let sig = HEXLOWER
        .decode(signature.sig.as_bytes())
        .map_err(|_| VerifyError::BadSignature)?;
    signature::UnparsedPublicKey::new(&signature::ED25519, &key.bytes)
        .verify(bytes, &sig)
        .map_err(|_| VerifyError::BadSignature)
}

fn check_device(
    store: Option<&StoreId>,
    device: Option<&DeviceId>,
    expected: (&StoreId, &DeviceId),
) -> Result<(), VerifyError> {
    match (store, device) {
        (Some(store), Some(device)) if (store, device) == expected => Ok(()),
        (Some(store), Some(device)) => Err(VerifyError::OtherTarget(format!("{store}/{device}"))),
        _ => Err(VerifyError::OtherTarget("no device".into())),
    }
}

/// Signs `command` (replacing any signature it had).
pub fn sign_command(key: &SigningKey, command: &mut Command) {
    command.signature = None;
    command.signature = Some(sign_bytes(key, &signed_bytes(COMMAND_CONTEXT, command)));
}

/// Checks that `command` is signed by `key`, is for `device` of `store` and has not expired at
/// `now` (a command without an expiry is refused as expired).
pub fn verify_command(
    key: &PublicKey,
    command: &Command,
    store: &StoreId,
    device: &DeviceId,
    now: DateTime<Utc>,
) -> Result<(), VerifyError> {
    let unsigned = Command {
        signature: None,
        ..command.clone()
    };
    let bytes = signed_bytes(COMMAND_CONTEXT, &unsigned);
    verify_bytes(key, command.signature.as_ref(), &bytes)?;
    check_device(
        command.store.as_ref(),
        command.device.as_ref(),
        (store, device),
    )?;
    match command.expires_at {
        Some(expires_at) if now < expires_at => Ok(()),
        Some(expires_at) => Err(VerifyError::Expired(expires_at)),
        None => Err(VerifyError::Expired(DateTime::<Utc>::MIN_UTC)),
    }
}

/// Signs a desired state (replacing any signature it had).
pub fn sign_desired(key: &SigningKey, desired: &mut DesiredState) {
    desired.signature = None;
    desired.signature = Some(sign_bytes(key, &signed_bytes(DESIRED_CONTEXT, desired)));
}

/// Checks that `desired` is signed by `key` and is for `device` of `store`.
pub fn verify_desired(
    key: &PublicKey,
    desired: &DesiredState,
    store: &StoreId,
    device: &DeviceId,
) -> Result<(), VerifyError> {
    let unsigned = DesiredState {
        signature: None,
        ..desired.clone()
    };
    verify_bytes(
        key,
        desired.signature.as_ref(),
        &signed_bytes(DESIRED_CONTEXT, &unsigned),
    )?;
    check_device(
        desired.store.as_ref(),
        desired.device.as_ref(),
        (store, device),
    )
}

/// Signs a trust list (replacing any signature it had).
pub fn sign_trust_list(key: &SigningKey, list: &mut TrustList) {
    list.signature = None;
    list.signature = Some(sign_bytes(key, &signed_bytes(TRUST_CONTEXT, list)));
}

/// Checks that `list` is signed by `key` and is the list of `store`.
pub fn verify_trust_list(
    key: &PublicKey,
    list: &TrustList,
    store: &StoreId,
) -> Result<(), VerifyError> {
    let unsigned = TrustList {
        signature: None,
        ..list.clone()
    };
    verify_bytes(
        key,
        list.signature.as_ref(),
        &signed_bytes(TRUST_CONTEXT, &unsigned),
    )?;
    match &list.store {
        Some(listed) if listed == store => Ok(()),
        Some(listed) => Err(VerifyError::OtherTarget(listed.to_string())),
        None => Err(VerifyError::OtherTarget("no store".into())),
    }
}

/// The key id of an operator's public key: `op` and the first 7 bytes of its SHA-256 in hex.
/// Derived rather than chosen, so a console needs only the private key file and management
/// finds the operator from a request's signature alone.
pub fn operator_key_id(public_key: &[u8; 32]) -> KeyId {
    let hash = digest::digest(&digest::SHA256, public_key);
    let text = format!(
        "{OPERATOR_KEY_PREFIX}{}",
        HEXLOWER.encode(&hash.as_ref()[..7])
    );
    KeyId::parse(&text).expect("op and 14 hex digits make a valid key id")
}

/// An operator's signing key from its PKCS#8 file, with its derived key id.
pub fn operator_key(pkcs8: &[u8]) -> Result<SigningKey, KeyError> {
    let placeholder = KeyId::parse(OPERATOR_KEY_PREFIX).expect("a valid key id");
    let public = SigningKey::from_pkcs8(placeholder, pkcs8)?.public_key();
    SigningKey::from_pkcs8(operator_key_id(&public.bytes), pkcs8)
}

/// Signs `request` as it is (replacing any signature it had); set its `sent_at` first.
pub fn sign_request(key: &SigningKey, request: &mut Request) {
    request.signature = None;
    request.signature = Some(sign_bytes(key, &signed_bytes(REQUEST_CONTEXT, request)));
}

/// Stamps `request` with `now` and signs it: what an operator does before each send.
pub fn sign_request_at(key: &SigningKey, request: &mut Request, now: DateTime<Utc>) {
    request.sent_at = Some(now);
    sign_request(key, request);
}

/// Checks that `request` is signed by `key` and was sent within [`REQUEST_MAX_SKEW`] of `now`.
/// (Which operator the key belongs to, and whether it may do what it asks, is management's.)
pub fn verify_request(
    key: &PublicKey,
    request: &Request,
    now: DateTime<Utc>,
) -> Result<(), VerifyError> {
    let unsigned = Request {
        signature: None,
        ..request.clone()
    };
    verify_bytes(
        key,
        request.signature.as_ref(),
        &signed_bytes(REQUEST_CONTEXT, &unsigned),
    )?;
    let sent_at = request.sent_at.ok_or(VerifyError::Undated)?;
    if (now - sent_at).abs() > REQUEST_MAX_SKEW {
        return Err(VerifyError::OutOfTime(sent_at));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::message::{CommandAction, DesiredProgram};
    use crate::{CommandId, SessionId};

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 1, 10, minute, 0).unwrap()
    }

    fn key(id: &str, seed: u8) -> SigningKey {
        SigningKey::from_seed(KeyId::parse(id).unwrap(), &[seed; 32]).unwrap()
    }

    fn store() -> StoreId {
        StoreId::parse("shibuya").unwrap()
    }

    fn device() -> DeviceId {
        DeviceId::parse("pc-01").unwrap()
    }

    fn start() -> Command {
        Command {
            command_id: CommandId::random(),
            issued_at: at(0),
            epoch: 3,
            store: Some(store()),
            device: Some(device()),
            expires_at: Some(at(5)),
            action: CommandAction::Start {
                session_id: SessionId::random(),
                lease_until: at(30),
                remaining_ms: 1_800_000,
            },
            signature: None,
        }
    }

    fn signed(command: Command) -> Command {
        let mut command = command;
        sign_command(&key("c1", 1), &mut command);
        command
    }

    fn verify(command: &Command, device_id: &str, minute: u32) -> Result<(), VerifyError> {
        let public = key("c1", 1).public_key();
        let device = DeviceId::parse(device_id).unwrap();
        verify_command(&public, command, &store(), &device, at(minute))
    }

    #[test]
    fn a_signed_command_verifies_after_a_trip_over_the_wire() {
        let command = signed(start());
        let received: Command = message::decode(&message::encode(&command)).unwrap();
        assert_eq!(verify(&received, "pc-01", 1), Ok(()));
    }

    #[test]
    fn each_refusal_has_its_error() {
        let command = signed(start());
        assert_eq!(verify(&start(), "pc-01", 1), Err(VerifyError::Unsigned));
        let mut changed = command.clone();
        changed.epoch = 4;
        assert_eq!(verify(&changed, "pc-01", 1), Err(VerifyError::BadSignature));
        let mut forged = start();
        sign_command(&key("c1", 2), &mut forged);
        assert_eq!(verify(&forged, "pc-01", 1), Err(VerifyError::BadSignature));
        let mut other_id = start();
        sign_command(&key("c9", 1), &mut other_id);
        assert_eq!(
            verify(&other_id, "pc-01", 1),
            Err(VerifyError::UnknownKey("c9".into()))
        );
        assert_eq!(
            verify(&command, "pc-02", 1),
            Err(VerifyError::OtherTarget("shibuya/pc-01".into()))
        );
        assert_eq!(
            verify(&command, "pc-01", 5),
            Err(VerifyError::Expired(at(5)))
        );
        let untargeted = signed(Command {
            device: None,
            ..start()
        });
        assert!(matches!(
            verify(&untargeted, "pc-01", 1),
            Err(VerifyError::OtherTarget(_))
        ));
        let timeless = signed(Command {
            expires_at: None,
            ..start()
        });
        assert!(matches!(
            verify(&timeless, "pc-01", 1),
            Err(VerifyError::Expired(_))
        ));
    }

    #[test]
    fn refusals_say_why_in_the_ack_words() {
        assert_eq!(VerifyError::Unsigned.refusal(), "bad signature");
        assert_eq!(
            VerifyError::OtherTarget("x".into()).refusal(),
            "for another device"
        );
        assert_eq!(VerifyError::Expired(at(0)).refusal(), "expired");
    }

    #[test]
    fn desired_states_are_signed_for_one_device() {
        let mut desired = DesiredState {
            epoch: 3,
            issued_at: at(0),
            store: Some(store()),
            device: Some(device()),
            program: DesiredProgram::Idle,
            signature: None,
        };
        let signer = key("c1", 1);
        sign_desired(&signer, &mut desired);
        let public = signer.public_key();
        assert_eq!(
            verify_desired(&public, &desired, &store(), &device()),
            Ok(())
        );
        let other = DeviceId::parse("pc-02").unwrap();
        assert!(matches!(
            verify_desired(&public, &desired, &store(), &other),
            Err(VerifyError::OtherTarget(_))
        ));
        desired.epoch = 9;
        assert_eq!(
            verify_desired(&public, &desired, &store(), &device()),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn trust_lists_are_signed_for_one_store() {
        let mut list = TrustList {
            issued_at: at(0),
            store: Some(store()),
            offline_start: false,
            keys: Vec::new(),
            revoked_keys: Vec::new(),
            refused_tickets: Vec::new(),
            truncated: false,
            signature: None,
        };
        let signer = key("c1", 1);
        sign_trust_list(&signer, &mut list);
        let public = signer.public_key();
        assert_eq!(verify_trust_list(&public, &list, &store()), Ok(()));
        let ginza = StoreId::parse("ginza").unwrap();
        assert_eq!(
            verify_trust_list(&public, &list, &ginza),
            Err(VerifyError::OtherTarget("shibuya".into()))
        );
        list.offline_start = true;
        assert_eq!(
            verify_trust_list(&public, &list, &store()),
            Err(VerifyError::BadSignature)
        );
    }

    fn force_stop() -> Request {
        Request::new(
            crate::RequestId::parse("7d2e4f60-8a1b-4c3d-9e5f-0a1b2c3d4e5f").unwrap(),
            crate::message::RequestAction::ForceStop {
                session_id: SessionId::parse("6a2f41a3-c54c-4c8b-9f2d-8e1a7b3c5d4e").unwrap(),
            },
        )
    }

    fn operator(seed: u8) -> SigningKey {
        let placeholder = key("x", seed);
        let id = operator_key_id(&placeholder.public_key().bytes);
        SigningKey::from_seed(id, &[seed; 32]).unwrap()
    }

    #[test]
    fn a_signed_request_verifies_after_a_trip_over_the_wire() {
        let alice = operator(7);
        let mut request = force_stop();
        sign_request_at(&alice, &mut request, at(0));
        let received: Request = message::decode(&message::encode(&request)).unwrap();
        assert_eq!(received.sent_at, Some(at(0)));
        let public = alice.public_key();
        assert_eq!(verify_request(&public, &received, at(4)), Ok(()));
        assert_eq!(verify_request(&public, &received, at(0)), Ok(()));
    }

    #[test]
    fn each_request_refusal_has_its_error() {
        let alice = operator(7);
        let public = alice.public_key();
        assert_eq!(
            verify_request(&public, &force_stop(), at(0)),
            Err(VerifyError::Unsigned)
        );
        let mut signed = force_stop();
        sign_request_at(&alice, &mut signed, at(10));
        let mut changed = signed.clone();
        changed.action = crate::message::RequestAction::Cancel {
            ticket_id: crate::TicketId::random(),
        };
        assert_eq!(
            verify_request(&public, &changed, at(10)),
            Err(VerifyError::BadSignature)
        );
        let mut later = signed.clone();
        later.sent_at = Some(at(11));
        assert_eq!(
            verify_request(&public, &later, at(11)),
            Err(VerifyError::BadSignature)
        );
        let mut by_bob = force_stop();
        sign_request_at(&operator(8), &mut by_bob, at(10));
        let bob_id = operator(8).key_id().to_string();
        assert_eq!(
            verify_request(&public, &by_bob, at(10)),
            Err(VerifyError::UnknownKey(bob_id))
        );
        assert_eq!(
            verify_request(&public, &signed, at(16)),
            Err(VerifyError::OutOfTime(at(10)))
        );
        assert_eq!(
            verify_request(&public, &signed, at(4)),
            Err(VerifyError::OutOfTime(at(10)))
        );
        let mut undated = force_stop();
        sign_request(&alice, &mut undated);
        assert_eq!(
            verify_request(&public, &undated, at(10)),
            Err(VerifyError::Undated)
        );
    }

    #[test]
    fn operator_key_ids_come_from_the_public_key() {
        let (generated, pkcs8) = SigningKey::generate(KeyId::parse("x").unwrap()).unwrap();
        let loaded = operator_key(&pkcs8).unwrap();
        let id = loaded.key_id().as_str();
        assert!(id.starts_with("op") && id.len() == 16, "{id}");
        assert_eq!(loaded.public_key().bytes, generated.public_key().bytes);
        assert_eq!(
            *loaded.key_id(),
            operator_key_id(&generated.public_key().bytes)
        );
        assert_ne!(operator(7).key_id(), operator(8).key_id());
        assert!(operator_key(b"not a key").is_err());
    }

    #[test]
    fn public_keys_round_trip_as_text() {
        let public = key("c1", 1).public_key();
        let text = public_key_text(&public);
        assert!(text.starts_with("c1:") && text.len() == 3 + 64, "{text}");
        assert_eq!(parse_public_key(&text), Ok(public));
        assert!(parse_public_key("c1").is_err());
        assert!(parse_public_key("c1:abcd").is_err());
        assert!(parse_public_key("C 1:00").is_err());
    }
}
