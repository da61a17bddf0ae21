//! The ticket vectors: valid tickets issued from fixed Ed25519 seeds, and invalid texts with the
//! error each must produce. Invalid bodies are built here byte by byte, following the layout in
//! the vectors' README, which also checks that the README describes what `SigningKey` issues.

use chrono::{DateTime, Utc};
use data_encoding::{BASE32_NOPAD, HEXLOWER};
use mujin_protocol::ticket::{Keyring, PublicKey, SigningKey, TicketClaims, TicketError, PREFIX};
use mujin_protocol::{DeviceId, KeyId, StoreId, TicketId};
use ring::signature::Ed25519KeyPair;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The whole `tickets.json` file.
#[derive(Debug, Serialize, Deserialize)]
pub struct TicketVectors {
    pub description: String,
    /// Every key of the vectors; the invalid texts are checked against a keyring of all of them.
    pub keys: Vec<KeyVector>,
    pub valid: Vec<ValidTicket>,
    pub invalid: Vec<InvalidTicket>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KeyVector {
    pub key_id: String,
    /// The 32-byte Ed25519 seed (private key), hex.
    pub seed: String,
    /// The 32-byte Ed25519 public key, hex.
    pub public_key: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ValidTicket {
    pub name: String,
    pub key_id: String,
    pub seed: String,
    pub public_key: String,
    pub claims: ClaimsVector,
    /// The signed bytes (without the signing context), hex.
    pub body: String,
    /// The 64-byte Ed25519 signature over the signing context followed by `body`, hex.
    pub signature: String,
    /// `MJ1:` + base32 of `body` followed by `signature`.
    pub text: String,
    /// Other spellings of the same ticket that must verify to the same claims.
    pub also_accepted: Vec<String>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimsVector {
    pub ticket_id: String,
    pub store: String,
    pub device: String,
    pub not_before: String,
    pub not_before_unix: i64,
    pub not_after: String,
    pub not_after_unix: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvalidTicket {
    pub name: String,
    pub text: String,
    /// The `TicketError` variant, in snake_case.
    pub error: String,
    /// The variant's value where it is part of the contract (malformed's reason, the
    /// unsupported version, the unknown key id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<String>,
}

/// The error kind and detail a vector names for `error`.
pub fn error_kind(error: &TicketError) -> (&'static str, Option<String>) {
    match error {
        TicketError::Empty => ("empty", None),
        TicketError::TooLong => ("too_long", None),
        TicketError::NotATicket => ("not_a_ticket", None),
        TicketError::BadEncoding => ("bad_encoding", None),
        TicketError::UnsupportedVersion(version) => {
            ("unsupported_version", Some(version.to_string()))
        }
        TicketError::Malformed(reason) => ("malformed", Some((*reason).to_owned())),
        TicketError::BadField(_) => ("bad_field", None),
        TicketError::BadWindow => ("bad_window", None),
        TicketError::UnknownKey(key_id) => ("unknown_key", Some(key_id.clone())),
        TicketError::BadSignature => ("bad_signature", None),
        TicketError::RevokedKey(key_id) => ("revoked_key", Some(key_id.clone())),
    }
}

const SIGNING_CONTEXT: &[u8] = b"mujin-ticket-v1\0";

/// A key of the vectors, from its seed.
struct Key {
    id: &'static str,
    seed: [u8; 32],
}

impl Key {
    fn signing_key(&self) -> SigningKey {
        SigningKey::from_seed(KeyId::parse(self.id).unwrap(), &self.seed).unwrap()
    }

    fn vector(&self) -> KeyVector {
        KeyVector {
            key_id: self.id.to_owned(),
            seed: HEXLOWER.encode(&self.seed),
            public_key: HEXLOWER.encode(&self.signing_key().public_key().bytes),
        }
    }

    /// Signs raw body bytes the way `SigningKey::issue` does, for bodies it would never issue.
    fn sign(&self, body: &[u8]) -> Vec<u8> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&self.seed).unwrap();
        let mut message = SIGNING_CONTEXT.to_vec();
        message.extend_from_slice(body);
        pair.sign(&message).as_ref().to_vec()
    }
}

/// RFC 8032's first Ed25519 test key, so an implementation can check its key derivation.
const K1: Key = Key {
    id: "k1",
    seed: hex32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
};
const K2: Key = Key {
    id: "k2",
    seed: [0x42; 32],
};
/// Holds the longest key id allowed (16 bytes).
const K_LONG: Key = Key {
    id: "rotation-2027-01",
    seed: counting_seed(),
};
/// Not in the keyring: tickets it signs are refused as `unknown_key`.
const K9: Key = Key {
    id: "k9",
    seed: [0x09; 32],
};
/// Uses the id of `K1` with another seed: a forger who knows the key id but not the key.
const K1_FORGED: Key = Key {
    id: "k1",
    seed: [0xf0; 32],
};

const fn counting_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        seed[i] = i as u8;
        i += 1;
    }
    seed
}

const fn hex32(text: &str) -> [u8; 32] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not lower-case hex"),
        }
    }
    let bytes = text.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(bytes[2 * i]) << 4) | nibble(bytes[2 * i + 1]);
        i += 1;
    }
    out
}

fn at(unix: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix, 0).unwrap()
}

/// The claims of the first valid ticket; the message vectors use this booking too.
pub fn booking_claims() -> TicketClaims {
    TicketClaims {
        ticket_id: TicketId::parse("5f0c6b1e-3a7d-4c2e-9b8a-1d2e3f405162").unwrap(),
        store: StoreId::parse("shibuya").unwrap(),
        device: DeviceId::parse("pc-01").unwrap(),
        not_before: at(1_800_000_000),
        not_after: at(1_800_003_600),
        key_id: KeyId::parse(K1.id).unwrap(),
    }
}

/// The public key of the key that signed [`booking_ticket`].
pub fn booking_key() -> mujin_protocol::ticket::PublicKey {
    K1.signing_key().public_key()
}

/// The text of the first valid ticket, as scanned in the message vectors.
pub fn booking_ticket() -> String {
    K1.signing_key().issue(&booking_claims())
}

fn valid_cases() -> Vec<(&'static str, &'static Key, TicketClaims)> {
    let other = TicketClaims {
        ticket_id: TicketId::parse("c3d4e5f6-0718-4293-a4b5-c6d7e8f90a1b").unwrap(),
        store: StoreId::parse("osaka-namba").unwrap(),
        device: DeviceId::parse("vr-booth-12").unwrap(),
        not_before: at(1_800_036_000),
        not_after: at(1_800_037_800),
        key_id: KeyId::parse(K2.id).unwrap(),
    };
    let longest = TicketClaims {
        ticket_id: TicketId::parse("ffffffff-ffff-4fff-bfff-ffffffffffff").unwrap(),
        store: StoreId::parse(&"s".repeat(StoreId::MAX_LEN)).unwrap(),
        device: DeviceId::parse(&format!("{}9", "d".repeat(DeviceId::MAX_LEN - 1))).unwrap(),
        not_before: at(1_798_761_600),
        not_after: at(1_830_297_600),
        key_id: KeyId::parse(K_LONG.id).unwrap(),
    };
    vec![
        ("one_hour_booking", &K1, booking_claims()),
        ("thirty_minutes_other_store", &K2, other),
        ("longest_ids_one_year", &K_LONG, longest),
    ]
}

fn claims_vector(claims: &TicketClaims) -> ClaimsVector {
    ClaimsVector {
        ticket_id: claims.ticket_id.to_string(),
        store: claims.store.to_string(),
        device: claims.device.to_string(),
        not_before: claims
            .not_before
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        not_before_unix: claims.not_before.timestamp(),
        not_after: claims
            .not_after
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        not_after_unix: claims.not_after.timestamp(),
    }
}

/// A ticket body following the documented layout, with every field free.
struct Body<'a> {
    version: u8,
    ticket_id: Uuid,
    not_before: i64,
    not_after: i64,
    texts: [&'a [u8]; 3],
}

impl Body<'_> {
    fn of(claims: &TicketClaims) -> Body<'_> {
        Body {
            version: 1,
            ticket_id: claims.ticket_id.as_uuid(),
            not_before: claims.not_before.timestamp(),
            not_after: claims.not_after.timestamp(),
            texts: [
                claims.key_id.as_str().as_bytes(),
                claims.store.as_str().as_bytes(),
                claims.device.as_str().as_bytes(),
            ],
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut bytes = vec![self.version];
        bytes.extend_from_slice(self.ticket_id.as_bytes());
        bytes.extend_from_slice(&self.not_before.to_be_bytes());
        bytes.extend_from_slice(&self.not_after.to_be_bytes());
        for text in self.texts {
            bytes.push(u8::try_from(text.len()).unwrap());
            bytes.extend_from_slice(text);
        }
        bytes
    }
}

fn ticket_text(body: &[u8], signature: &[u8]) -> String {
    format!(
        "{PREFIX}{}",
        BASE32_NOPAD.encode(&[body, signature].concat())
    )
}

fn valid_ticket(name: &str, key: &Key, claims: &TicketClaims) -> ValidTicket {
    let text = key.signing_key().issue(claims);
    let body = Body::of(claims).bytes();
    let signature = key.sign(&body);
    assert_eq!(
        ticket_text(&body, &signature),
        text,
        "the documented layout no longer matches what SigningKey::issue produces"
    );
    let key_vector = key.vector();
    let also_accepted = if name == "one_hour_booking" {
        vec![text.to_lowercase(), format!("  {text}\r\n")]
    } else {
        Vec::new()
    };
    ValidTicket {
        name: name.to_owned(),
        key_id: key_vector.key_id,
        seed: key_vector.seed,
        public_key: key_vector.public_key,
        claims: claims_vector(claims),
        body: HEXLOWER.encode(&body),
        signature: HEXLOWER.encode(&signature),
        text,
        also_accepted,
    }
}

fn invalid(name: &str, text: String, error: &str, detail: Option<&str>) -> InvalidTicket {
    InvalidTicket {
        name: name.to_owned(),
        text,
        error: error.to_owned(),
        error_detail: detail.map(str::to_owned),
    }
}

/// Sets the lowest bit of the last base32 character. The genuine tickets' bytes leave 3 unused
/// bits in that character, which must be zero.
fn flip_last_bit(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (head, last) = text.split_at(text.len() - 1);
    let value = ALPHABET
        .iter()
        .position(|c| *c == last.as_bytes()[0])
        .unwrap();
    format!("{head}{}", char::from(ALPHABET[value ^ 1]))
}

/// Texts refused before the body is read.
fn invalid_texts() -> Vec<InvalidTicket> {
    let genuine = booking_ticket();
    let encoded = genuine.strip_prefix(PREFIX).unwrap();
    vec![
        invalid("empty", String::new(), "empty", None),
        invalid("only_whitespace", " \r\n\t".into(), "empty", None),
        invalid(
            "longer_than_512",
            format!("{PREFIX}{}", "A".repeat(600)),
            "too_long",
            None,
        ),
        invalid("plain_text", "hello".into(), "not_a_ticket", None),
        invalid(
            "url_instead_of_ticket",
            "https://example.com/t/123".into(),
            "not_a_ticket",
            None,
        ),
        invalid(
            "future_version_prefix",
            format!("MJ2:{encoded}"),
            "not_a_ticket",
            None,
        ),
        invalid("symbols", format!("{PREFIX}!!!"), "bad_encoding", None),
        invalid(
            "digits_outside_base32",
            format!("{PREFIX}0189"),
            "bad_encoding",
            None,
        ),
        invalid(
            "base32_padding",
            format!("{genuine}="),
            "bad_encoding",
            None,
        ),
        invalid(
            "nonzero_trailing_bits",
            flip_last_bit(&genuine),
            "bad_encoding",
            None,
        ),
        invalid(
            "last_character_missing",
            genuine[..genuine.len() - 1].to_owned(),
            "bad_encoding",
            None,
        ),
        invalid(
            "shorter_than_a_signature",
            format!("{PREFIX}AAAA"),
            "malformed",
            Some("too short"),
        ),
    ]
}

/// Well-encoded texts whose body is refused, or whose signature does not hold.
fn invalid_bodies() -> Vec<InvalidTicket> {
    let claims = booking_claims();
    let signed = |key: &Key, body: Vec<u8>| ticket_text(&body, &key.sign(&body));
    let with = |change: &dyn Fn(&mut Body<'_>)| {
        let mut body = Body::of(&claims);
        change(&mut body);
        body.bytes()
    };
    let mut cut = Body::of(&claims).bytes();
    cut.truncate(cut.len() - 3);
    let mut trailing = Body::of(&claims).bytes();
    trailing.push(0);
    let genuine_body = Body::of(&claims).bytes();
    let genuine_signature = K1.sign(&genuine_body);
    let mut other_device = claims.clone();
    other_device.device = DeviceId::parse("pc-02").unwrap();
    let mut longer = claims.clone();
    longer.not_after = at(1_800_007_200);
    vec![
        invalid(
            "body_cut_short",
            signed(&K1, cut),
            "malformed",
            Some("truncated"),
        ),
        invalid(
            "trailing_bytes",
            signed(&K1, trailing),
            "malformed",
            Some("trailing bytes"),
        ),
        invalid(
            "store_not_utf8",
            signed(&K1, with(&|body| body.texts[1] = b"\xff\xfe")),
            "malformed",
            Some("text is not UTF-8"),
        ),
        invalid(
            "store_id_upper_case",
            signed(&K1, with(&|body| body.texts[1] = b"Shibuya")),
            "bad_field",
            None,
        ),
        invalid(
            "window_ends_when_it_starts",
            signed(&K1, with(&|body| body.not_after = body.not_before)),
            "bad_window",
            None,
        ),
        invalid(
            "version_2",
            signed(&K1, with(&|body| body.version = 2)),
            "unsupported_version",
            Some("2"),
        ),
        invalid(
            "key_not_in_keyring",
            K9.signing_key().issue(&claims),
            "unknown_key",
            Some("k9"),
        ),
        invalid(
            "same_key_id_other_seed",
            K1_FORGED.signing_key().issue(&claims),
            "bad_signature",
            None,
        ),
        invalid(
            "device_changed_after_signing",
            ticket_text(&Body::of(&other_device).bytes(), &genuine_signature),
            "bad_signature",
            None,
        ),
        invalid(
            "window_extended_after_signing",
            ticket_text(&Body::of(&longer).bytes(), &genuine_signature),
            "bad_signature",
            None,
        ),
        invalid(
            "signature_zeroed",
            ticket_text(&genuine_body, &[0; 64]),
            "bad_signature",
            None,
        ),
    ]
}

/// Every ticket vector, generated from the Rust implementation.
pub fn generate() -> TicketVectors {
    TicketVectors {
        description: "mujin ticket vectors: see README.md. Valid tickets verify with a keyring \
                      holding only their own public key; invalid texts are verified against a \
                      keyring holding every key of `keys` and must fail with `error`."
            .to_owned(),
        keys: [&K1, &K2, &K_LONG].map(Key::vector).into(),
        valid: valid_cases()
            .into_iter()
            .map(|(name, key, claims)| valid_ticket(name, key, &claims))
            .collect(),
        invalid: [invalid_texts(), invalid_bodies()].concat(),
    }
}

fn public_key(key_id: &str, hex: &str) -> PublicKey {
    let bytes = HEXLOWER.decode(hex.as_bytes()).unwrap();
    PublicKey {
        key_id: KeyId::parse(key_id).unwrap(),
        bytes: bytes.try_into().unwrap(),
    }
}

fn claims_from_vector(key_id: &str, claims: &ClaimsVector) -> TicketClaims {
    let time = |text: &str, unix: i64| {
        let parsed = DateTime::parse_from_rfc3339(text).unwrap().to_utc();
        assert_eq!(parsed.timestamp(), unix, "{text} is not unix {unix}");
        parsed
    };
    TicketClaims {
        ticket_id: TicketId::parse(&claims.ticket_id).unwrap(),
        store: StoreId::parse(&claims.store).unwrap(),
        device: DeviceId::parse(&claims.device).unwrap(),
        not_before: time(&claims.not_before, claims.not_before_unix),
        not_after: time(&claims.not_after, claims.not_after_unix),
        key_id: KeyId::parse(key_id).unwrap(),
    }
}

/// Checks the vectors as another implementation would: with public keys and texts only.
pub fn check(vectors: &TicketVectors) {
    for case in &vectors.valid {
        let keyring = Keyring::new([public_key(&case.key_id, &case.public_key)]);
        let expected = claims_from_vector(&case.key_id, &case.claims);
        for text in std::iter::once(&case.text).chain(&case.also_accepted) {
            match keyring.verify(text) {
                Ok(claims) => assert_eq!(claims, expected, "ticket {:?}", case.name),
                Err(error) => panic!("valid ticket {:?} refused: {error}", case.name),
            }
        }
    }
    let keyring = Keyring::new(
        vectors
            .keys
            .iter()
            .map(|key| public_key(&key.key_id, &key.public_key)),
    );
    for case in &vectors.invalid {
        let error = match keyring.verify(&case.text) {
            Ok(claims) => panic!("invalid ticket {:?} verified: {claims:?}", case.name),
            Err(error) => error,
        };
        let (kind, detail) = error_kind(&error);
        assert_eq!(kind, case.error, "ticket {:?}: {error}", case.name);
        if case.error_detail.is_some() {
            assert_eq!(detail, case.error_detail, "ticket {:?}: {error}", case.name);
        }
    }
}
