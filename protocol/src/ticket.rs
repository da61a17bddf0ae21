//! The electronic ticket: a reservation's claims signed with Ed25519, as a short text that fits
//! a QR code's alphanumeric mode.
//!
//! Text form: `MJ1:` followed by the RFC 4648 base32 (upper case, no padding) of
//!
//! ```text
//! u8      format version (1)
//! [16]    ticket id (UUID bytes)
//! i64 BE  not-before, unix seconds
//! i64 BE  not-after, unix seconds
//! u8+str  key id
//! u8+str  store id
//! u8+str  device id
//! [64]    Ed25519 signature over b"mujin-ticket-v1\0" followed by all bytes above
//! ```
//!
//! Everything a device needs to check a ticket offline is inside it; whether it was cancelled or
//! already used is only known to management.

use std::fmt;

use chrono::{DateTime, Utc};
use data_encoding::BASE32_NOPAD;
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use uuid::Uuid;

use crate::ids::{DeviceId, IdError, KeyId, StoreId, TicketId};

/// The prefix of every ticket text; the digit is the format version.
pub const PREFIX: &str = "MJ1:";
/// Longest ticket text accepted before any decoding is attempted.
pub const MAX_TEXT_LEN: usize = 512;

const VERSION: u8 = 1;
const SIGNATURE_LEN: usize = 64;
const SIGNING_CONTEXT: &[u8] = b"mujin-ticket-v1\0";

/// What a ticket says: who may use which device when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketClaims {
    pub ticket_id: TicketId,
    pub store: StoreId,
    pub device: DeviceId,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub key_id: KeyId,
}

/// Why a ticket text was refused. Each variant is a distinct answer for the customer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("the ticket is empty")]
    Empty,
    #[error("the ticket is longer than {MAX_TEXT_LEN} characters")]
    TooLong,
    #[error("not a mujin ticket (expected it to start with {PREFIX})")]
    NotATicket,
    #[error("the ticket is not valid base32")]
    BadEncoding,
    #[error("unsupported ticket format version {0}")]
    UnsupportedVersion(u8),
    #[error("the ticket is malformed: {0}")]
    Malformed(&'static str),
    #[error("the ticket has an invalid field: {0}")]
    BadField(#[from] IdError),
    #[error("the ticket's validity window is empty or out of range")]
    BadWindow,
    #[error("the ticket is signed with unknown key {0:?}")]
    UnknownKey(String),
    #[error("the ticket's signature does not match")]
    BadSignature,
    #[error("the ticket is signed with key {0:?}, which was revoked")]
    RevokedKey(String),
}

/// Why a signing key could not be created or loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("could not generate a key")]
    Generate,
    #[error("the key file is not a valid Ed25519 PKCS#8 v2 document")]
    BadPkcs8,
    #[error("the key seed is not 32 bytes")]
    BadSeed,
}

/// A ticket-signing key (private). Never logged: its `Debug` shows only the key id.
pub struct SigningKey {
    key_id: KeyId,
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key; returns it with its PKCS#8 document, which is what to store on disk.
    pub fn generate(key_id: KeyId) -> Result<(Self, Vec<u8>), KeyError> {
        let document =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        let pkcs8 = document.as_ref().to_vec();
        Ok((Self::from_pkcs8(key_id, &pkcs8)?, pkcs8))
    }

    pub fn from_pkcs8(key_id: KeyId, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| KeyError::BadPkcs8)?;
        Ok(Self { key_id, pair })
    }

    /// A key from its 32-byte seed; used for reproducible test vectors.
    pub fn from_seed(key_id: KeyId, seed: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| KeyError::BadSeed)?;
        Ok(Self { key_id, pair })
    }

    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    pub fn public_key(&self) -> PublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey {
            key_id: self.key_id.clone(),
            bytes,
        }
    }

    /// The Ed25519 signature of `message` (which the caller prefixes with its own context).
    pub(crate) fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(self.pair.sign(message).as_ref());
        signature
    }

    /// Signs the claims and returns the ticket text. The claims' key id is set to this key's.
    pub fn issue(&self, claims: &TicketClaims) -> String {
        let claims = TicketClaims {
            key_id: self.key_id.clone(),
            ..claims.clone()
        };
        let mut bytes = encode_body(&claims);
        let signature = self.pair.sign(&signed_message(&bytes));
        bytes.extend_from_slice(signature.as_ref());
        format!("{PREFIX}{}", BASE32_NOPAD.encode(&bytes))
    }
}

/// A ticket-verification key (public).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub key_id: KeyId,
    pub bytes: [u8; 32],
}

/// The public keys a verifier trusts, by key id, and the ids of revoked keys (whose tickets are
/// refused as such rather than as signed with an unknown key).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: Vec<PublicKey>,
    revoked: Vec<KeyId>,
}

impl Keyring {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        Self {
            keys: keys.into_iter().collect(),
            revoked: Vec::new(),
        }
    }

    /// Refuses tickets of `key_id` from now on, as [`TicketError::RevokedKey`].
    pub fn revoke(&mut self, key_id: KeyId) {
        self.keys.retain(|known| known.key_id != key_id);
        if !self.revoked.contains(&key_id) {
            self.revoked.push(key_id);
        }
    }

    /// The ids of the revoked keys.
    pub fn revoked(&self) -> &[KeyId] {
        &self.revoked
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    pub fn add(&mut self, key: PublicKey) {
        self.keys.retain(|known| known.key_id != key.key_id);
        self.keys.push(key);
    }

    /// Parses the text and checks its signature. It does not look at the clock: the window is
    /// the caller's decision (see management's scan rules).
    pub fn verify(&self, text: &str) -> Result<TicketClaims, TicketError> {
        let parsed = parse_unverified(text)?;
        if self.revoked.contains(&parsed.claims.key_id) {
            return Err(TicketError::RevokedKey(parsed.claims.key_id.to_string()));
        }
        let key = self
            .keys
            .iter()
            .find(|key| key.key_id == parsed.claims.key_id)
            .ok_or_else(|| TicketError::UnknownKey(parsed.claims.key_id.to_string()))?;
        signature::UnparsedPublicKey::new(&signature::ED25519, &key.bytes)
            .verify(&signed_message(&parsed.body), &parsed.signature)
            .map_err(|_| TicketError::BadSignature)?;
        Ok(parsed.claims)
    }
}

/// A ticket decoded without checking its signature (for display and diagnostics only).
#[derive(Debug, Clone)]
pub struct UnverifiedTicket {
    pub claims: TicketClaims,
    body: Vec<u8>,
    signature: Vec<u8>,
}

/// Decodes a ticket text without checking its signature. Never panics on any input.
pub fn parse_unverified(text: &str) -> Result<UnverifiedTicket, TicketError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(TicketError::Empty);
    }
    if text.len() > MAX_TEXT_LEN {
        return Err(TicketError::TooLong);
    }
    // Scanners and phones may change the case; base32 does not care.
    let upper = text.to_ascii_uppercase();
    let encoded = upper.strip_prefix(PREFIX).ok_or(TicketError::NotATicket)?;
    let bytes = BASE32_NOPAD
        .decode(encoded.as_bytes())
        .map_err(|_| TicketError::BadEncoding)?;
    if bytes.len() < SIGNATURE_LEN + 1 {
        return Err(TicketError::Malformed("too short"));
    }
    let (body, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
    let claims = decode_body(body)?;
    Ok(UnverifiedTicket {
        claims,
        body: body.to_vec(),
        signature: signature.to_vec(),
    })
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    message.extend_from_slice(SIGNING_CONTEXT);
    message.extend_from_slice(body);
    message
}

fn encode_body(claims: &TicketClaims) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(96);
    bytes.push(VERSION);
    bytes.extend_from_slice(claims.ticket_id.as_uuid().as_bytes());
    bytes.extend_from_slice(&claims.not_before.timestamp().to_be_bytes());
    bytes.extend_from_slice(&claims.not_after.timestamp().to_be_bytes());
    for text in [
        claims.key_id.as_str(),
        claims.store.as_str(),
        claims.device.as_str(),
    ] {
        // Ids are validated to at most 32 bytes, so the length always fits a u8.
        bytes.push(text.len() as u8);
        bytes.extend_from_slice(text.as_bytes());
    }
    bytes
}

/// A cursor over the body bytes that reports truncation instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], TicketError> {
        if self.0.len() < len {
            return Err(TicketError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn i64(&mut self) -> Result<i64, TicketError> {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(self.take(8)?);
        Ok(i64::from_be_bytes(buf))
    }

    fn text(&mut self) -> Result<&'a str, TicketError> {
        let len = self.take(1)?[0] as usize;
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| TicketError::Malformed("text is not UTF-8"))
    }
}

fn decode_body(body: &[u8]) -> Result<TicketClaims, TicketError> {
    let mut reader = Reader(body);
    let version = reader.take(1)?[0];
    if version != VERSION {
        return Err(TicketError::UnsupportedVersion(version));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(reader.take(16)?);
    let not_before = reader.i64()?;
    let not_after = reader.i64()?;
    let key_id = KeyId::parse(reader.text()?)?;
    let store = StoreId::parse(reader.text()?)?;
    let device = DeviceId::parse(reader.text()?)?;
    if !reader.0.is_empty() {
        return Err(TicketError::Malformed("trailing bytes"));
    }
    let not_before = DateTime::from_timestamp(not_before, 0).ok_or(TicketError::BadWindow)?;
    let not_after = DateTime::from_timestamp(not_after, 0).ok_or(TicketError::BadWindow)?;
    if not_after <= not_before {
        return Err(TicketError::BadWindow);
    }
    Ok(TicketClaims {
        ticket_id: TicketId::from_uuid(Uuid::from_bytes(uuid)),
        store,
        device,
        not_before,
        not_after,
        key_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, seed: u8) -> SigningKey {
        SigningKey::from_seed(KeyId::parse(id).unwrap(), &[seed; 32]).unwrap()
    }

    fn claims() -> TicketClaims {
        TicketClaims {
            ticket_id: TicketId::from_uuid(Uuid::from_u128(
                0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
            )),
            store: StoreId::parse("shibuya").unwrap(),
            device: DeviceId::parse("pc-01").unwrap(),
            not_before: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            not_after: DateTime::from_timestamp(1_800_003_600, 0).unwrap(),
            key_id: KeyId::parse("k1").unwrap(),
        }
    }

    #[test]
    fn a_revoked_key_refuses_its_tickets_by_name() {
        let old = key("k1", 7);
        let new = key("k2", 8);
        let mut ring = Keyring::new([old.public_key(), new.public_key()]);
        let text = old.issue(&claims());
        assert!(ring.verify(&text).is_ok());
        ring.revoke(KeyId::parse("k1").unwrap());
        assert_eq!(
            ring.verify(&text),
            Err(TicketError::RevokedKey("k1".into()))
        );
        assert_eq!(ring.revoked(), [KeyId::parse("k1").unwrap()]);
        assert_eq!(ring.keys(), [new.public_key()]);
        assert!(ring.verify(&new.issue(&claims())).is_ok());
    }

    #[test]
    fn issued_ticket_verifies_and_round_trips() {
        let key = key("k1", 7);
        let text = key.issue(&claims());
        let ring = Keyring::new([key.public_key()]);
        assert_eq!(ring.verify(&text).unwrap(), claims());
        // Scanners may lower-case and add whitespace.
        assert_eq!(
            ring.verify(&format!("  {}\n", text.to_lowercase()))
                .unwrap(),
            claims()
        );
    }

    #[test]
    fn text_fits_qr_alphanumeric_mode() {
        let text = key("k1", 7).issue(&claims());
        let alphanumeric = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";
        assert!(text.chars().all(|c| alphanumeric.contains(c)), "{text}");
        assert!(text.len() < 220, "ticket is {} chars", text.len());
    }

    #[test]
    fn a_ticket_signed_by_another_key_with_the_same_id_is_refused() {
        let genuine = key("k1", 7);
        let forger = key("k1", 8);
        let ring = Keyring::new([genuine.public_key()]);
        assert_eq!(
            ring.verify(&forger.issue(&claims())),
            Err(TicketError::BadSignature)
        );
    }

    #[test]
    fn an_unknown_key_id_is_refused() {
        let ring = Keyring::new([key("k1", 7).public_key()]);
        assert_eq!(
            ring.verify(&key("k9", 7).issue(&claims())),
            Err(TicketError::UnknownKey("k9".into()))
        );
    }

    #[test]
    fn a_changed_claim_breaks_the_signature() {
        let key = key("k1", 7);
        let text = key.issue(&claims());
        let mut bytes = BASE32_NOPAD
            .decode(text.strip_prefix(PREFIX).unwrap().as_bytes())
            .unwrap();
        bytes[24] ^= 1; // lowest byte of not-before
        let tampered = format!("{PREFIX}{}", BASE32_NOPAD.encode(&bytes));
        let ring = Keyring::new([key.public_key()]);
        assert_eq!(ring.verify(&tampered), Err(TicketError::BadSignature));
    }

    #[test]
    fn garbage_gets_specific_errors_and_never_panics() {
        let ring = Keyring::new([key("k1", 7).public_key()]);
        assert_eq!(ring.verify(""), Err(TicketError::Empty));
        assert_eq!(ring.verify("hello"), Err(TicketError::NotATicket));
        assert_eq!(ring.verify("MJ1:!!!"), Err(TicketError::BadEncoding));
        assert_eq!(ring.verify(&"A".repeat(600)), Err(TicketError::TooLong));
        assert_eq!(
            ring.verify("MJ1:AAAA"),
            Err(TicketError::Malformed("too short"))
        );
        let text = key("k1", 7).issue(&claims());
        // Every prefix of a valid ticket fails cleanly.
        for end in 0..text.len() {
            assert!(ring.verify(&text[..end]).is_err());
        }
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let shown = format!("{:?}", key("k1", 7));
        assert_eq!(shown, "SigningKey { key_id: KeyId(\"k1\"), .. }");
    }

    #[test]
    fn pkcs8_round_trip() {
        let (key, pkcs8) = SigningKey::generate(KeyId::parse("k2").unwrap()).unwrap();
        let again = SigningKey::from_pkcs8(KeyId::parse("k2").unwrap(), &pkcs8).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        assert_eq!(
            SigningKey::from_pkcs8(KeyId::parse("k2").unwrap(), b"junk").unwrap_err(),
            KeyError::BadPkcs8
        );
    }
}
