//! The store's trust list, retained on `mujin/v1/stores/{store}/trust`: what a device needs to
//! check a ticket by itself when management does not answer — the ticket-verification keys,
//! the ids of revoked ticket keys, the tickets it must refuse anyway (cancelled or already used)
//! and whether the store allows offline starts at all — plus [`check_offline`], the rules the
//! device applies. Management signs each list with its root key (see [`crate::signed`]).
//!
//! An offline start is provisional: the device reports it with the scan once management is
//! reachable again, and management has the last word.

use chrono::{DateTime, Utc};
use data_encoding::HEXLOWER;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, KeyId, StoreId, TicketId};
use crate::message::RejectReason;
use crate::signed::Signature;
use crate::ticket::{Keyring, PublicKey, TicketClaims, TicketError};

/// Most refused tickets one trust list carries (the payload stays well under its size limit);
/// the ones ending soonest are kept when there are more.
pub const MAX_REFUSED_TICKETS: usize = 200;

/// One store's trust list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TrustList {
    pub issued_at: DateTime<Utc>,
    /// The store this list is for (absent from older managements).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreId>,
    /// Whether this store's devices may start a provisional session on their own.
    pub offline_start: bool,
    /// The keys tickets may be signed with (never a revoked one).
    pub keys: Vec<TrustedKey>,
    /// Ticket keys that were revoked: their tickets are refused `revoked_key` (absent from
    /// older managements).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_keys: Vec<KeyId>,
    /// Tickets whose window is still open but which must not start a session.
    #[serde(default)]
    pub refused_tickets: Vec<RefusedTicket>,
    /// More tickets were refused than the list carries ([`MAX_REFUSED_TICKETS`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Management's signature (see [`crate::signed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// A ticket-verification key: its id and the Ed25519 public key in lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TrustedKey {
    pub key_id: KeyId,
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub public_key: String,
}

impl From<&PublicKey> for TrustedKey {
    fn from(key: &PublicKey) -> Self {
        Self {
            key_id: key.key_id.clone(),
            public_key: HEXLOWER.encode(&key.bytes),
        }
    }
}

impl TrustedKey {
    /// The key, or `None` when the hex text is not 32 bytes.
    pub fn public_key(&self) -> Option<PublicKey> {
        let bytes = HEXLOWER.decode(self.public_key.as_bytes()).ok()?;
        Some(PublicKey {
            key_id: self.key_id.clone(),
            bytes: bytes.try_into().ok()?,
        })
    }
}

/// A ticket the device must refuse, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RefusedTicket {
    pub ticket_id: TicketId,
    /// `cancelled` or `already_used`.
    pub reason: RejectReason,
}

impl TrustList {
    /// The verification keys (entries that are not valid keys are skipped), refusing the
    /// revoked ones.
    pub fn keyring(&self) -> Keyring {
        let mut keyring = Keyring::new(self.keys.iter().filter_map(TrustedKey::public_key));
        for key_id in &self.revoked_keys {
            keyring.revoke(key_id.clone());
        }
        keyring
    }
}

/// Why a device does not start a session offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineRefusal {
    pub reason: RejectReason,
    pub detail: String,
}

fn refuse(reason: RejectReason, detail: impl Into<String>) -> OfflineRefusal {
    OfflineRefusal {
        reason,
        detail: detail.into(),
    }
}

/// Decides whether `device` of `store` may start a provisional session for `ticket` at `now`:
/// the ticket must verify against the list's keys, be for this device, be inside its window
/// (not before its start: offline there is no early grace) and not be refused by the list.
/// `already_started` says whether this device already started a session with the ticket.
/// The caller checks [`TrustList::offline_start`] and that the device is idle.
pub fn check_offline(
    list: &TrustList,
    ticket: &str,
    store: &StoreId,
    device: &DeviceId,
    now: DateTime<Utc>,
    already_started: bool,
) -> Result<TicketClaims, OfflineRefusal> {
    let claims = list.keyring().verify(ticket).map_err(|error| {
        let reason = match error {
            TicketError::UnknownKey(_) => RejectReason::UnknownKey,
            TicketError::BadSignature => RejectReason::BadSignature,
            TicketError::RevokedKey(_) => RejectReason::RevokedKey,
            _ => RejectReason::MalformedTicket,
        };
        refuse(reason, error.to_string())
    })?;
    if &claims.store != store {
        return Err(refuse(
            RejectReason::WrongStore,
            format!("ticket is for store {}", claims.store),
        ));
    }
    if &claims.device != device {
        return Err(refuse(
            RejectReason::WrongDevice,
            format!("ticket is for device {}", claims.device),
        ));
    }
    if let Some(refused) = list
        .refused_tickets
        .iter()
        .find(|refused| refused.ticket_id == claims.ticket_id)
    {
        return Err(refuse(refused.reason, "refused by the store's trust list"));
    }
    if already_started {
        return Err(refuse(
            RejectReason::AlreadyUsed,
            "this device already started a session with this ticket",
        ));
    }
    if now < claims.not_before {
        return Err(refuse(
            RejectReason::TooEarly,
            format!("the booking starts at {}", claims.not_before.to_rfc3339()),
        ));
    }
    if now >= claims.not_after {
        return Err(refuse(
            RejectReason::Expired,
            format!("the booking ended at {}", claims.not_after.to_rfc3339()),
        ));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::ticket::SigningKey;
    use crate::TicketId;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 1, 10, minute, 0).unwrap()
    }

    fn setup() -> (TrustList, SigningKey, TicketClaims) {
        let key_id = KeyId::parse("k1").unwrap();
        let key = SigningKey::from_seed(key_id.clone(), &[7; 32]).unwrap();
        let list = TrustList {
            issued_at: at(0),
            store: None,
            offline_start: true,
            keys: vec![TrustedKey::from(&key.public_key())],
            revoked_keys: Vec::new(),
            refused_tickets: Vec::new(),
            truncated: false,
            signature: None,
        };
        let claims = TicketClaims {
            ticket_id: TicketId::random(),
            store: StoreId::parse("shibuya").unwrap(),
            device: DeviceId::parse("pc-01").unwrap(),
            not_before: at(10),
            not_after: at(40),
            key_id,
        };
        (list, key, claims)
    }

    fn check(list: &TrustList, text: &str, claims: &TicketClaims, minute: u32) -> RejectReason {
        check_offline(list, text, &claims.store, &claims.device, at(minute), false)
            .unwrap_err()
            .reason
    }

    #[test]
    fn a_valid_ticket_inside_its_window_starts() {
        let (list, key, claims) = setup();
        let text = key.issue(&claims);
        let checked = check_offline(&list, &text, &claims.store, &claims.device, at(10), false);
        assert_eq!(checked.unwrap(), claims);
    }

    #[test]
    fn keys_round_trip_through_hex() {
        let (list, key, _) = setup();
        assert_eq!(list.keys[0].public_key(), Some(key.public_key()));
        let bad = TrustedKey {
            key_id: KeyId::parse("k2").unwrap(),
            public_key: "abcd".into(),
        };
        assert_eq!(bad.public_key(), None);
    }

    #[test]
    fn every_rule_has_its_reason() {
        let (mut list, key, claims) = setup();
        let text = key.issue(&claims);
        assert_eq!(check(&list, &text, &claims, 9), RejectReason::TooEarly);
        assert_eq!(check(&list, &text, &claims, 40), RejectReason::Expired);
        assert_eq!(
            check(&list, "MJ1:AAAA", &claims, 20),
            RejectReason::MalformedTicket
        );

        let other = SigningKey::from_seed(KeyId::parse("k9").unwrap(), &[8; 32]).unwrap();
        let unknown = other.issue(&TicketClaims {
            key_id: KeyId::parse("k9").unwrap(),
            ..claims.clone()
        });
        assert_eq!(
            check(&list, &unknown, &claims, 20),
            RejectReason::UnknownKey
        );
        let forged = SigningKey::from_seed(claims.key_id.clone(), &[9; 32]).unwrap();
        let forged = forged.issue(&claims);
        assert_eq!(
            check(&list, &forged, &claims, 20),
            RejectReason::BadSignature
        );

        let elsewhere = |store: &str, device: &str| {
            check_offline(
                &list,
                &text,
                &StoreId::parse(store).unwrap(),
                &DeviceId::parse(device).unwrap(),
                at(20),
                false,
            )
            .unwrap_err()
            .reason
        };
        assert_eq!(elsewhere("ginza", "pc-01"), RejectReason::WrongStore);
        assert_eq!(elsewhere("shibuya", "pc-02"), RejectReason::WrongDevice);

        let again = check_offline(&list, &text, &claims.store, &claims.device, at(20), true);
        assert_eq!(again.unwrap_err().reason, RejectReason::AlreadyUsed);

        list.refused_tickets.push(RefusedTicket {
            ticket_id: claims.ticket_id,
            reason: RejectReason::Cancelled,
        });
        assert_eq!(check(&list, &text, &claims, 20), RejectReason::Cancelled);
    }

    #[test]
    fn a_ticket_of_a_revoked_key_is_refused_as_such() {
        let (mut list, key, claims) = setup();
        let text = key.issue(&claims);
        list.keys.clear();
        list.revoked_keys.push(claims.key_id.clone());
        let refusal =
            check_offline(&list, &text, &claims.store, &claims.device, at(20), false).unwrap_err();
        assert_eq!(refusal.reason, RejectReason::RevokedKey);
        assert!(refusal.detail.contains("\"k1\""), "{}", refusal.detail);
        // Even if a list still carried the key, the revocation wins.
        list.keys.push(TrustedKey::from(&key.public_key()));
        assert_eq!(check(&list, &text, &claims, 20), RejectReason::RevokedKey);
    }

    #[test]
    fn lists_of_older_managements_have_no_revoked_keys() {
        let (list, _, _) = setup();
        let mut json: serde_json::Value = serde_json::to_value(&list).unwrap();
        assert!(json.get("revoked_keys").is_none());
        json.as_object_mut().unwrap().remove("revoked_keys");
        let parsed: TrustList = serde_json::from_value(json).unwrap();
        assert!(parsed.revoked_keys.is_empty());
    }
}
