//! Booking over MQTT for integrators (booking sites, payment kiosks, Node-RED flows): the signed
//! envelope an integrator publishes on its `bookings` topic, the request inside it, the reply
//! management sends back, and the rules that need no database.
//!
//! The broker has no topic ACL, so a request is signed with the integrator's own Ed25519 key
//! ([`IntegratorKey`], key id `in-…`). The signature covers `mujin-booking-v1\0` followed by the
//! request's text *exactly as sent* (the envelope carries it as a string), so any language can
//! sign without reproducing mujin's JSON encoding:
//!
//! ```text
//! {"request": "{\"request_id\":\"…\",\"sent_at\":\"…\",\"action\":\"reserve\",…}",
//!  "key_id": "in-…", "sig": "<128 hex digits>"}
//! ```
//!
//! The reply goes to the MQTT 5 response topic of the request (with its correlation data), else
//! to the request's `reply_to`, else to the integrator's default `replies` topic; whichever it
//! is must lie under the integrator's own subtree ([`crate::topic::reply_topic_allowed`]).

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use data_encoding::HEXLOWER;
use ring::digest;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::identity::{random_bytes, IdentityError};
use crate::ids::{DeviceId, KeyId, RequestId, StoreId, TicketId};
use crate::message::{self, DecodeError};
use crate::signed::{self, Signature, VerifyError};
use crate::ticket::{PublicKey, SigningKey};

/// What the signature covers before the request's text (17 bytes, the last a NUL).
pub const BOOKING_CONTEXT: &[u8] = b"mujin-booking-v1\0";
/// How far a request's `sent_at` may be from management's clock, either way.
pub const BOOKING_MAX_SKEW: TimeDelta = signed::REQUEST_MAX_SKEW;
/// The most minutes one reservation or extension may last (a day).
pub const MAX_MINUTES: u32 = 24 * 60;
/// The widest `from`–`to` span of a `free_slots` or `bookings` question.
pub const MAX_SPAN: TimeDelta = TimeDelta::days(7);
/// How far in the past a reservation's `from` may be (a customer booking "now" with a clock a
/// little behind).
pub const PAST_GRACE: TimeDelta = TimeDelta::minutes(5);
/// How an integrator key's id begins (the rest is from its public key).
const INTEGRATOR_KEY_PREFIX: &str = "in-";

/// The key id of an integrator's public key: `in-` and the first 13 hex digits of its SHA-256.
/// Derived, so a request's `key_id` names the integrator's current key.
pub fn integrator_key_id(public_key: &[u8; 32]) -> KeyId {
    let hash = HEXLOWER.encode(digest::digest(&digest::SHA256, public_key).as_ref());
    let text = format!("{INTEGRATOR_KEY_PREFIX}{}", &hash[..13]);
    KeyId::parse(&text).expect("in- and 13 hex digits make a valid key id")
}

/// Why an integrator key text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntegratorKeyError {
    #[error("an integrator key is 64 hex digits (a 32-byte Ed25519 seed)")]
    BadText,
    #[error("cannot generate an integrator key: {0}")]
    Generate(#[from] IdentityError),
}

/// An integrator's private key: the 32-byte Ed25519 seed (`MUJIN_INTEGRATOR_KEY`, 64 hex
/// digits), given to the integrator once at enrolment. Its `Debug` never shows the seed.
pub struct IntegratorKey {
    seed: [u8; 32],
    key: SigningKey,
}

impl fmt::Debug for IntegratorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntegratorKey")
            .field("key_id", self.key.key_id())
            .finish_non_exhaustive()
    }
}

impl IntegratorKey {
    /// A new random key.
    pub fn generate() -> Result<Self, IntegratorKeyError> {
        Self::from_seed(random_bytes()?)
    }

    /// The key from its seed in hex.
    pub fn from_hex(text: &str) -> Result<Self, IntegratorKeyError> {
        let bytes = HEXLOWER
            .decode(text.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| IntegratorKeyError::BadText)?;
        Self::from_seed(bytes.try_into().map_err(|_| IntegratorKeyError::BadText)?)
    }

    fn from_seed(seed: [u8; 32]) -> Result<Self, IntegratorKeyError> {
        let placeholder = KeyId::parse("in").expect("a valid key id");
        let public = SigningKey::from_seed(placeholder, &seed)
            .map_err(|_| IntegratorKeyError::BadText)?
            .public_key();
        let key = SigningKey::from_seed(integrator_key_id(&public.bytes), &seed)
            .map_err(|_| IntegratorKeyError::BadText)?;
        Ok(Self { seed, key })
    }

    /// The seed in lower-case hex: the secret given to the integrator, once.
    pub fn expose_hex(&self) -> String {
        HEXLOWER.encode(&self.seed)
    }

    pub fn key_id(&self) -> &KeyId {
        self.key.key_id()
    }

    /// The public half, which management stores.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The envelope of a request text, signed as it is.
    pub fn sign_text(&self, request: &str) -> BookingEnvelope {
        let signature = signed::sign_bytes(&self.key, &signed_bytes(request));
        BookingEnvelope {
            request: request.to_owned(),
            key_id: signature.key_id,
            sig: signature.sig,
        }
    }

    /// The envelope of `request` (encoded by [`message::encode`]).
    pub fn sign(&self, request: &BookingRequest) -> BookingEnvelope {
        let text = String::from_utf8(message::encode(request)).expect("serde_json writes UTF-8");
        self.sign_text(&text)
    }
}

fn signed_bytes(request: &str) -> Vec<u8> {
    let mut bytes = BOOKING_CONTEXT.to_vec();
    bytes.extend_from_slice(request.as_bytes());
    bytes
}

/// What an integrator publishes on its `bookings` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BookingEnvelope {
    /// The request (a [`BookingRequest`] JSON object) as a string: exactly the text signed.
    pub request: String,
    /// The integrator key that signed it (`MUJIN_INTEGRATOR_KEY_ID`).
    pub key_id: KeyId,
    /// The Ed25519 signature of `mujin-booking-v1\0` + `request`, in lower-case hex.
    #[schemars(regex(pattern = "^[0-9a-f]{128}$"))]
    pub sig: String,
}

impl BookingEnvelope {
    /// Checks that the envelope is signed by `key` (whose owner management decides).
    pub fn verify(&self, key: &PublicKey) -> Result<(), VerifyError> {
        let signature = Signature {
            key_id: self.key_id.clone(),
            sig: self.sig.to_ascii_lowercase(),
        };
        signed::verify_bytes(key, Some(&signature), &signed_bytes(&self.request))
    }

    /// The request inside, decoded (not yet verified: see [`BookingEnvelope::verify`]).
    pub fn decode_request(&self) -> Result<BookingRequest, DecodeError> {
        message::decode(self.request.as_bytes())
    }
}

/// One booking request, inside a [`BookingEnvelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BookingRequest {
    /// Fresh per request; the same id sent again gets the same reply, without a second effect.
    pub request_id: RequestId,
    /// When it was signed; refused more than [`BOOKING_MAX_SKEW`] from management's clock.
    pub sent_at: DateTime<Utc>,
    /// Where to reply, for MQTT 3.1.1 clients (an MQTT 5 response topic takes precedence); must
    /// lie under the integrator's own subtree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(flatten)]
    pub action: BookingAction,
}

/// What an integrator asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum BookingAction {
    /// Book `device` of `store` from `from` for `minutes` (1–1440); the reply carries the ticket.
    Reserve {
        store: StoreId,
        device: DeviceId,
        from: DateTime<Utc>,
        minutes: u32,
    },
    /// Cancel an own booking that was not used yet.
    Cancel { ticket_id: TicketId },
    /// Move an own booking's end `minutes` (1–1440) later; a running session follows.
    Extend { ticket_id: TicketId, minutes: u32 },
    /// The free intervals of a device in [`from`, `to`) (at most 7 days).
    FreeSlots {
        store: StoreId,
        device: DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// The bookings of a device overlapping [`from`, `to`) (at most 7 days).
    Bookings {
        store: StoreId,
        device: DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// Where an own booking stands.
    TicketStatus { ticket_id: TicketId },
}

impl BookingAction {
    pub fn name(&self) -> ActionName {
        match self {
            BookingAction::Reserve { .. } => ActionName::Reserve,
            BookingAction::Cancel { .. } => ActionName::Cancel,
            BookingAction::Extend { .. } => ActionName::Extend,
            BookingAction::FreeSlots { .. } => ActionName::FreeSlots,
            BookingAction::Bookings { .. } => ActionName::Bookings,
            BookingAction::TicketStatus { .. } => ActionName::TicketStatus,
        }
    }
}

/// The name of a [`BookingAction`], as replies repeat it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionName {
    Reserve,
    Cancel,
    Extend,
    FreeSlots,
    Bookings,
    TicketStatus,
}

impl ActionName {
    pub const ALL: [ActionName; 6] = [
        ActionName::Reserve,
        ActionName::Cancel,
        ActionName::Extend,
        ActionName::FreeSlots,
        ActionName::Bookings,
        ActionName::TicketStatus,
    ];

    /// The wire name, e.g. `free_slots`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionName::Reserve => "reserve",
            ActionName::Cancel => "cancel",
            ActionName::Extend => "extend",
            ActionName::FreeSlots => "free_slots",
            ActionName::Bookings => "bookings",
            ActionName::TicketStatus => "ticket_status",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|name| name.as_str() == text)
    }
}

impl fmt::Display for ActionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a booking request was refused. Stable snake_case codes, for programs to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload or the request does not decode (detail: the parser's message).
    Malformed,
    /// The payload exceeds 16 KiB.
    TooLarge,
    /// The key id is not the integrator's current key.
    UnknownKey,
    BadSignature,
    /// `sent_at` is more than 5 minutes from management's clock.
    StaleRequest,
    /// The reply topic lies outside the integrator's subtree (answered on the default topic).
    ReplyTopicNotAllowed,
    UnknownStore,
    UnknownDevice,
    OutOfService,
    /// The device is booked during part of the window.
    Overlap,
    /// The window is over, or starts more than 5 minutes in the past.
    WindowInPast,
    /// Minutes out of range, `to` not after `from`, or a span over 7 days.
    BadWindow,
    /// No such booking of this integrator's.
    UnknownTicket,
    /// The booking's ticket already started a session.
    AlreadyUsed,
    Cancelled,
    /// The booking's window (or its session) is over.
    Ended,
    /// The request id was used before for another request.
    RequestIdReused,
    /// The database is unreachable: send the same request (same request id) again later.
    Unavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::Malformed,
        ErrorCode::TooLarge,
        ErrorCode::UnknownKey,
        ErrorCode::BadSignature,
        ErrorCode::StaleRequest,
        ErrorCode::ReplyTopicNotAllowed,
        ErrorCode::UnknownStore,
        ErrorCode::UnknownDevice,
        ErrorCode::OutOfService,
        ErrorCode::Overlap,
        ErrorCode::WindowInPast,
        ErrorCode::BadWindow,
        ErrorCode::UnknownTicket,
        ErrorCode::AlreadyUsed,
        ErrorCode::Cancelled,
        ErrorCode::Ended,
        ErrorCode::RequestIdReused,
        ErrorCode::Unavailable,
    ];

    /// The wire name, e.g. `window_in_past`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnknownKey => "unknown_key",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::StaleRequest => "stale_request",
            ErrorCode::ReplyTopicNotAllowed => "reply_topic_not_allowed",
            ErrorCode::UnknownStore => "unknown_store",
            ErrorCode::UnknownDevice => "unknown_device",
            ErrorCode::OutOfService => "out_of_service",
            ErrorCode::Overlap => "overlap",
            ErrorCode::WindowInPast => "window_in_past",
            ErrorCode::BadWindow => "bad_window",
            ErrorCode::UnknownTicket => "unknown_ticket",
            ErrorCode::AlreadyUsed => "already_used",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Ended => "ended",
            ErrorCode::RequestIdReused => "request_id_reused",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == text)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: its code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub detail: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// Where a booking stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    /// Not used yet, window not over.
    Booked,
    /// A session runs.
    InUse,
    /// Its session ended.
    Used,
    Cancelled,
    /// The window is over (or its no-show grace passed) and it was never used.
    NoShow,
}

impl TicketStatus {
    /// The status from what the database knows: how it was cancelled (`cancelled` or
    /// `no_show`), whether a session started and has ended, and the window's end.
    pub fn of(
        cancel_reason: Option<&str>,
        session: Option<bool>,
        ends_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Self {
        match (session, cancel_reason) {
            (Some(false), _) => TicketStatus::InUse,
            (Some(true), _) => TicketStatus::Used,
            (None, Some("no_show")) => TicketStatus::NoShow,
            (None, Some(_)) => TicketStatus::Cancelled,
            (None, None) if ends_at <= now => TicketStatus::NoShow,
            (None, None) => TicketStatus::Booked,
        }
    }
}

/// A free interval of a device, `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Slot {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// One booking of a device, as `bookings` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BookingEntry {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub status: TicketStatus,
    /// Only for the asking integrator's own bookings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<TicketId>,
}

/// Management's answer to one booking request. The fields after `action` are those of the
/// action (see docs/protocol.md); `error` and `detail` only when `ok` is false.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BookingReply {
    /// The request's id; null when it could not be read.
    pub request_id: Option<RequestId>,
    pub ok: bool,
    /// The request's action; null when it could not be read.
    pub action: Option<ActionName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<TicketId>,
    /// The ticket text (for a QR code), for `reserve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TicketStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<Vec<Slot>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bookings: Option<Vec<BookingEntry>>,
}

impl BookingReply {
    /// A success, to be filled with the action's fields.
    pub fn done(request_id: RequestId, action: ActionName) -> Self {
        Self {
            request_id: Some(request_id),
            ok: true,
            action: Some(action),
            ..Self::default()
        }
    }

    /// A refusal.
    pub fn refused(
        request_id: Option<RequestId>,
        action: Option<ActionName>,
        refusal: Refusal,
    ) -> Self {
        Self {
            request_id,
            ok: false,
            action,
            error: Some(refusal.code),
            detail: Some(refusal.detail),
            ..Self::default()
        }
    }
}

/// Decodes an envelope: `too_large` or `malformed` (with the parser's message).
pub fn decode_envelope(payload: &[u8]) -> Result<BookingEnvelope, Refusal> {
    message::decode(payload).map_err(|error| match error {
        DecodeError::TooLarge(_) => Refusal::new(ErrorCode::TooLarge, error.to_string()),
        DecodeError::Malformed(_) => Refusal::new(ErrorCode::Malformed, error.to_string()),
    })
}

/// The request id and action of a request text that does not decode as a whole, so that its
/// refusal can still name them.
pub fn salvage(request: &str) -> (Option<RequestId>, Option<ActionName>) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(request) else {
        return (None, None);
    };
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
    (
        field("request_id").and_then(|id| RequestId::parse(id).ok()),
        field("action").and_then(ActionName::parse),
    )
}

/// `stale_request` unless `sent_at` is within [`BOOKING_MAX_SKEW`] of `now`.
pub fn check_fresh(sent_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), Refusal> {
    if (now - sent_at).abs() > BOOKING_MAX_SKEW {
        return Err(Refusal::new(
            ErrorCode::StaleRequest,
            format!(
                "sent_at {} is more than 5 minutes from management's clock ({})",
                time(sent_at),
                time(now)
            ),
        ));
    }
    Ok(())
}

/// `bad_window` unless `minutes` is 1 to [`MAX_MINUTES`].
pub fn check_minutes(minutes: u32) -> Result<TimeDelta, Refusal> {
    if (1..=MAX_MINUTES).contains(&minutes) {
        Ok(TimeDelta::minutes(i64::from(minutes)))
    } else {
        Err(Refusal::new(
            ErrorCode::BadWindow,
            format!("minutes must be between 1 and {MAX_MINUTES}, got {minutes}"),
        ))
    }
}

/// The window of a reservation, in whole seconds (as tickets carry it): `bad_window` for
/// minutes out of range, `window_in_past` for a window already over or starting more than
/// [`PAST_GRACE`] ago.
pub fn reserve_window(
    from: DateTime<Utc>,
    minutes: u32,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), Refusal> {
    let length = check_minutes(minutes)?;
    let from = DateTime::from_timestamp(from.timestamp(), 0).unwrap_or(from);
    let to = from + length;
    if to <= now {
        return Err(Refusal::new(
            ErrorCode::WindowInPast,
            format!("the window ended at {}", time(to)),
        ));
    }
    if from < now - PAST_GRACE {
        return Err(Refusal::new(
            ErrorCode::WindowInPast,
            format!(
                "the window starts at {}, more than 5 minutes ago",
                time(from)
            ),
        ));
    }
    Ok((from, to))
}

/// `bad_window` unless `from < to` and the span is at most [`MAX_SPAN`].
pub fn check_span(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<(), Refusal> {
    if to <= from {
        return Err(Refusal::new(
            ErrorCode::BadWindow,
            format!("to ({}) must be after from ({})", time(to), time(from)),
        ));
    }
    if to - from > MAX_SPAN {
        return Err(Refusal::new(
            ErrorCode::BadWindow,
            "from and to may be at most 7 days apart",
        ));
    }
    Ok(())
}

/// The free intervals of [`from`, `to`) around `busy` intervals (in any order, possibly
/// overlapping each other or reaching outside the range).
pub fn free_slots(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    busy: impl IntoIterator<Item = (DateTime<Utc>, DateTime<Utc>)>,
) -> Vec<Slot> {
    let mut busy: Vec<_> = busy
        .into_iter()
        .filter(|(start, end)| start < end)
        .collect();
    busy.sort();
    let mut slots = Vec::new();
    let mut cursor = from;
    for (start, end) in busy {
        if start > cursor {
            slots.push(Slot {
                from: cursor,
                to: start.min(to),
            });
        }
        cursor = cursor.max(end);
        if cursor >= to {
            break;
        }
    }
    if cursor < to {
        slots.push(Slot { from: cursor, to });
    }
    slots.retain(|slot| slot.from < slot.to);
    slots
}

/// Times in details: whole seconds, UTC.
fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 1, hour, minute, 0).unwrap()
    }

    fn key() -> IntegratorKey {
        IntegratorKey::from_hex(&"07".repeat(32)).unwrap()
    }

    fn reserve() -> BookingRequest {
        BookingRequest {
            request_id: RequestId::random(),
            sent_at: at(10, 0),
            reply_to: None,
            action: BookingAction::Reserve {
                store: StoreId::parse("shibuya").unwrap(),
                device: DeviceId::parse("pc-01").unwrap(),
                from: at(10, 30),
                minutes: 60,
            },
        }
    }

    #[test]
    fn a_signed_envelope_verifies_over_the_exact_text() {
        let key = key();
        let envelope = key.sign(&reserve());
        let received = decode_envelope(&message::encode(&envelope)).unwrap();
        assert_eq!(received.verify(&key.public_key()), Ok(()));
        assert_eq!(
            received.decode_request().unwrap().action.name(),
            ActionName::Reserve
        );
        // The same request with other whitespace is other bytes: not what was signed.
        let mut respaced = received.clone();
        respaced.request = respaced.request.replace(',', ", ");
        assert_eq!(
            respaced.verify(&key.public_key()),
            Err(VerifyError::BadSignature)
        );
        let other = IntegratorKey::generate().unwrap();
        assert!(matches!(
            received.verify(&other.public_key()),
            Err(VerifyError::UnknownKey(_))
        ));
        let forged = BookingEnvelope {
            key_id: key.key_id().clone(),
            ..other.sign(&reserve())
        };
        assert_eq!(
            forged.verify(&key.public_key()),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn the_signature_is_plain_ed25519_over_context_and_text() {
        // What a Python or OpenSSL client computes: Ed25519(seed, b"mujin-booking-v1\0" + text).
        let key = key();
        let text = r#"{"request_id":"00000000-0000-4000-8000-000000000000"}"#;
        let envelope = key.sign_text(text);
        let mut message = b"mujin-booking-v1\0".to_vec();
        message.extend_from_slice(text.as_bytes());
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap();
        assert_eq!(envelope.sig, HEXLOWER.encode(pair.sign(&message).as_ref()));
        assert_eq!(BOOKING_CONTEXT.len(), 17);
        // Upper-case hex is accepted too.
        let upper = BookingEnvelope {
            sig: envelope.sig.to_ascii_uppercase(),
            ..envelope
        };
        assert_eq!(upper.verify(&key.public_key()), Ok(()));
    }

    #[test]
    fn the_documented_example_verifies() {
        // docs/protocol.md's example, computed with Python's `cryptography` from the seed 07…07.
        let key = key();
        assert_eq!(key.key_id().as_str(), "in-fe812c12f3ab4");
        let payload = r#"{"request": "{\"request_id\":\"8f5e2d4c-1b7a-4c3e-9d2f-0a6b5c4d3e2f\",\"sent_at\":\"2027-01-15T08:55:00Z\",\"action\":\"reserve\",\"store\":\"shibuya\",\"device\":\"pc-01\",\"from\":\"2027-01-15T09:00:00Z\",\"minutes\":60}", "key_id": "in-fe812c12f3ab4", "sig": "15506e1320f2eb77d4c0243efeae16d4538cdb11453a24616711639f5151149a90aef3fe4f0b0cb60e5cff890ddec0d00e6fda0efd0cab4dd34553557150ed06"}"#;
        let envelope = decode_envelope(payload.as_bytes()).unwrap();
        assert_eq!(envelope.verify(&key.public_key()), Ok(()));
        assert_eq!(key.sign_text(&envelope.request), envelope);
        let request = envelope.decode_request().unwrap();
        assert_eq!(request.action.name(), ActionName::Reserve);
    }

    #[test]
    fn integrator_keys_have_derived_ids_and_hidden_seeds() {
        let key = key();
        let id = key.key_id().as_str();
        assert!(id.starts_with("in-") && id.len() == 16, "{id}");
        assert_eq!(key.key_id(), &integrator_key_id(&key.public_key().bytes));
        assert_eq!(key.expose_hex(), "07".repeat(32));
        assert!(!format!("{key:?}").contains(&key.expose_hex()));
        assert_eq!(
            IntegratorKey::from_hex("abc").unwrap_err(),
            IntegratorKeyError::BadText
        );
        assert_ne!(
            IntegratorKey::generate().unwrap().key_id(),
            IntegratorKey::generate().unwrap().key_id()
        );
    }

    #[test]
    fn requests_and_replies_have_the_documented_shape() {
        let id = RequestId::random();
        let text = format!(
            r#"{{"request_id":"{id}","sent_at":"2026-05-01T10:00:00Z","reply_to":"mujin/v1/integrators/acme/r","action":"free_slots","store":"shibuya","device":"pc-01","from":"2026-05-01T10:00:00Z","to":"2026-05-01T12:00:00+09:00"}}"#
        );
        let request: BookingRequest = message::decode(text.as_bytes()).unwrap();
        assert_eq!(request.action.name(), ActionName::FreeSlots);
        assert_eq!(
            request.reply_to.as_deref(),
            Some("mujin/v1/integrators/acme/r")
        );
        let mut reply = BookingReply::done(id, ActionName::Reserve);
        reply.ticket = Some("MJ1X".into());
        let json: serde_json::Value = serde_json::from_slice(&message::encode(&reply)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"request_id": id.to_string(), "ok": true, "action": "reserve", "ticket": "MJ1X"})
        );
        let refused = BookingReply::refused(
            None,
            None,
            Refusal::new(ErrorCode::Malformed, "expected value"),
        );
        let json: serde_json::Value = serde_json::from_slice(&message::encode(&refused)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"request_id": null, "ok": false, "action": null, "error": "malformed", "detail": "expected value"})
        );
        let entry = BookingEntry {
            from: at(10, 0),
            to: at(11, 0),
            status: TicketStatus::NoShow,
            ticket_id: None,
        };
        assert_eq!(
            serde_json::to_value(entry).unwrap(),
            serde_json::json!({"from": "2026-05-01T10:00:00Z", "to": "2026-05-01T11:00:00Z", "status": "no_show"})
        );
    }

    #[test]
    fn codes_and_names_round_trip() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{code}\""));
        }
        for name in ActionName::ALL {
            assert_eq!(ActionName::parse(name.as_str()), Some(name));
            assert_eq!(serde_json::to_string(&name).unwrap(), format!("\"{name}\""));
        }
    }

    #[test]
    fn broken_payloads_are_named_and_their_ids_salvaged() {
        let big = vec![b' '; message::MAX_PAYLOAD_BYTES + 1];
        assert_eq!(decode_envelope(&big).unwrap_err().code, ErrorCode::TooLarge);
        let broken = decode_envelope(b"{\"request\": 3}").unwrap_err();
        assert_eq!(broken.code, ErrorCode::Malformed);
        assert!(
            broken.detail.contains("expected a string"),
            "{}",
            broken.detail
        );
        let id = RequestId::random();
        let text = format!(r#"{{"request_id":"{id}","action":"cancel","ticket_id":"nope"}}"#);
        assert_eq!(salvage(&text), (Some(id), Some(ActionName::Cancel)));
        assert_eq!(salvage("not json"), (None, None));
        assert_eq!(salvage(r#"{"action":"reboot"}"#), (None, None));
    }

    #[test]
    fn freshness_minutes_and_windows() {
        let now = at(10, 0);
        assert!(check_fresh(at(10, 4), now).is_ok());
        assert!(check_fresh(at(9, 55), now).is_ok());
        assert_eq!(
            check_fresh(at(9, 54), now).unwrap_err().code,
            ErrorCode::StaleRequest
        );
        assert_eq!(
            check_fresh(at(10, 6), now).unwrap_err().code,
            ErrorCode::StaleRequest
        );
        assert!(check_minutes(1).is_ok() && check_minutes(1440).is_ok());
        for minutes in [0, 1441] {
            assert_eq!(
                check_minutes(minutes).unwrap_err().code,
                ErrorCode::BadWindow
            );
        }
        let from = at(10, 30) + TimeDelta::milliseconds(700);
        assert_eq!(reserve_window(from, 60, now), Ok((at(10, 30), at(11, 30))));
        assert_eq!(
            reserve_window(at(9, 57), 10, now),
            Ok((at(9, 57), at(10, 7)))
        );
        let past = |from, minutes| reserve_window(from, minutes, now).unwrap_err().code;
        assert_eq!(past(at(9, 0), 60), ErrorCode::WindowInPast);
        assert_eq!(past(at(9, 50), 60), ErrorCode::WindowInPast);
        assert_eq!(past(at(10, 30), 0), ErrorCode::BadWindow);
        assert!(check_span(at(10, 0), at(11, 0)).is_ok());
        assert!(check_span(now, now + MAX_SPAN).is_ok());
        assert_eq!(
            check_span(at(11, 0), at(11, 0)).unwrap_err().code,
            ErrorCode::BadWindow
        );
        let too_long = now + MAX_SPAN + TimeDelta::seconds(1);
        assert_eq!(
            check_span(now, too_long).unwrap_err().code,
            ErrorCode::BadWindow
        );
    }

    #[test]
    fn free_slots_are_the_gaps_between_bookings() {
        let slot = |from, to| Slot { from, to };
        assert_eq!(
            free_slots(at(10, 0), at(12, 0), []),
            vec![slot(at(10, 0), at(12, 0))]
        );
        let busy = [
            (at(11, 30), at(13, 0)),
            (at(9, 0), at(10, 15)),
            (at(10, 45), at(11, 0)),
            (at(10, 50), at(11, 10)),
        ];
        assert_eq!(
            free_slots(at(10, 0), at(12, 0), busy),
            vec![slot(at(10, 15), at(10, 45)), slot(at(11, 10), at(11, 30))]
        );
        assert_eq!(
            free_slots(at(10, 0), at(11, 0), [(at(9, 0), at(12, 0))]),
            vec![]
        );
        assert_eq!(
            free_slots(at(10, 0), at(11, 0), [(at(10, 0), at(10, 30))]),
            vec![slot(at(10, 30), at(11, 0))]
        );
    }

    #[test]
    fn status_follows_session_cancellation_and_window() {
        let now = at(10, 0);
        let status = |reason, session, ends| TicketStatus::of(reason, session, ends, now);
        assert_eq!(status(None, None, at(11, 0)), TicketStatus::Booked);
        assert_eq!(status(None, None, at(9, 0)), TicketStatus::NoShow);
        assert_eq!(
            status(Some("no_show"), None, at(11, 0)),
            TicketStatus::NoShow
        );
        assert_eq!(
            status(Some("cancelled"), None, at(11, 0)),
            TicketStatus::Cancelled
        );
        assert_eq!(status(None, Some(false), at(11, 0)), TicketStatus::InUse);
        assert_eq!(status(None, Some(true), at(9, 0)), TicketStatus::Used);
    }
}
