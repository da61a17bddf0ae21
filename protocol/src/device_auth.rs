//! Per-device message authentication: every device has its own Ed25519 *device key*, created
//! when it is enrolled (management keeps only the public half), and signs what it publishes —
//! scans, states, telemetry and acks. Broker credentials only say who may connect; the broker
//! has no topic ACL, so a client holding device A's credentials can publish on device B's
//! topics. Management accepts a device message only when it verifies with *that* device's key.
//!
//! The signed bytes are `mujin-device-v1\0`, the channel (`scan`, `state`, …), the store and the
//! device, each followed by `\0`, then [`message::encode`] of the message with its `signature`
//! absent: a signature made for one device or one channel does not verify on another.
//!
//! Replays: a scan carries when it was sent ([`Scan::sent_at`], signed) and is refused outside
//! [`DEVICE_MAX_SKEW`]; within it, its scan id gets its first answer again. States and telemetry
//! carry their own time and management keeps only the newest.

use chrono::{DateTime, TimeDelta, Utc};
use data_encoding::HEXLOWER;
use ring::digest;
use serde::Serialize;

use crate::identity::{random_bytes, IdentityError};
use crate::ids::{DeviceId, KeyId, StoreId};
use crate::message::{self, Ack, ReportedState, Scan, Telemetry};
use crate::signed::{self, Signature, VerifyError};
use crate::ticket::{PublicKey, SigningKey};
use crate::topic::DeviceChannel;

const DEVICE_CONTEXT: &[u8] = b"mujin-device-v1\0";
/// How a device key's id begins (the rest is from its public key).
const DEVICE_KEY_PREFIX: &str = "dv";
/// How far a scan's `sent_at` may be from management's clock, either way.
pub const DEVICE_MAX_SKEW: TimeDelta = TimeDelta::minutes(5);

/// A message a device signs with its device key.
pub trait DeviceMessage: Serialize + Clone {
    /// The channel it is published on (part of what is signed).
    const CHANNEL: DeviceChannel;
    fn signature(&self) -> Option<&Signature>;
    fn signature_mut(&mut self) -> &mut Option<Signature>;
}

macro_rules! device_message {
    ($type:ty, $channel:expr) => {
        impl DeviceMessage for $type {
            const CHANNEL: DeviceChannel = $channel;
            fn signature(&self) -> Option<&Signature> {
                self.signature.as_ref()
            }
            fn signature_mut(&mut self) -> &mut Option<Signature> {
                &mut self.signature
            }
        }
    };
}

device_message!(Scan, DeviceChannel::Scan);
device_message!(ReportedState, DeviceChannel::State);
device_message!(Telemetry, DeviceChannel::Telemetry);
device_message!(Ack, DeviceChannel::Ack);

/// The key id of a device's public key: `dv` and the first 7 bytes of its SHA-256 in hex.
/// Derived, so the agent's configuration needs only the secret seed.
pub fn device_key_id(public_key: &[u8; 32]) -> KeyId {
    let hash = digest::digest(&digest::SHA256, public_key);
    let text = format!(
        "{DEVICE_KEY_PREFIX}{}",
        HEXLOWER.encode(&hash.as_ref()[..7])
    );
    KeyId::parse(&text).expect("dv and 14 hex digits make a valid key id")
}

/// Why a device key text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceKeyError {
    #[error("a device key is 64 hex digits (a 32-byte Ed25519 seed)")]
    BadText,
    #[error("cannot generate a device key: {0}")]
    Generate(#[from] IdentityError),
}

/// A device's private key: the 32-byte Ed25519 seed, which is what the agent's configuration
/// holds (`MUJIN_AGENT_DEVICE_KEY`, 64 hex digits). Its `Debug` never shows the seed.
pub struct DeviceKey {
    seed: [u8; 32],
    key: SigningKey,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKey")
            .field("key_id", self.key.key_id())
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// A new random device key.
    pub fn generate() -> Result<Self, DeviceKeyError> {
        Self::from_seed(random_bytes()?)
    }

    /// The key from its seed in hex (as the agent's configuration holds it).
    pub fn from_hex(text: &str) -> Result<Self, DeviceKeyError> {
        let bytes = HEXLOWER
            .decode(text.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| DeviceKeyError::BadText)?;
        Self::from_seed(bytes.try_into().map_err(|_| DeviceKeyError::BadText)?)
    }

    fn from_seed(seed: [u8; 32]) -> Result<Self, DeviceKeyError> {
        let placeholder = KeyId::parse(DEVICE_KEY_PREFIX).expect("a valid key id");
        let public = SigningKey::from_seed(placeholder, &seed)
            .map_err(|_| DeviceKeyError::BadText)?
            .public_key();
        let key = SigningKey::from_seed(device_key_id(&public.bytes), &seed)
            .map_err(|_| DeviceKeyError::BadText)?;
        Ok(Self { seed, key })
    }

    /// The seed in lower-case hex: the secret to put in the agent's configuration, once.
    pub fn expose_hex(&self) -> String {
        HEXLOWER.encode(&self.seed)
    }

    /// The public half, which management stores.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Signs `message` as published by `device` of `store` (replacing any signature it had).
    pub fn sign<M: DeviceMessage>(&self, store: &StoreId, device: &DeviceId, message: &mut M) {
        *message.signature_mut() = None;
        let signature = signed::sign_bytes(&self.key, &signed_bytes(store, device, message));
        *message.signature_mut() = Some(signature);
    }
}

fn signed_bytes<M: DeviceMessage>(store: &StoreId, device: &DeviceId, unsigned: &M) -> Vec<u8> {
    let mut bytes = DEVICE_CONTEXT.to_vec();
    for part in [M::CHANNEL.as_str(), store.as_str(), device.as_str()] {
        bytes.extend_from_slice(part.as_bytes());
        bytes.push(0);
    }
    bytes.extend_from_slice(&message::encode(unsigned));
    bytes
}

/// Checks that `message`, received on `device`'s topic of `store`, is signed with `key` (that
/// device's key).
pub fn verify<M: DeviceMessage>(
    key: &PublicKey,
    store: &StoreId,
    device: &DeviceId,
    message: &M,
) -> Result<(), VerifyError> {
    let mut unsigned = message.clone();
    *unsigned.signature_mut() = None;
    signed::verify_bytes(
        key,
        message.signature(),
        &signed_bytes(store, device, &unsigned),
    )
}

/// Checks that a scan was sent within [`DEVICE_MAX_SKEW`] of `now`.
pub fn check_sent_at(scan: &Scan, now: DateTime<Utc>) -> Result<(), VerifyError> {
    let sent_at = scan.sent_at.ok_or(VerifyError::Undated)?;
    if (now - sent_at).abs() > DEVICE_MAX_SKEW {
        return Err(VerifyError::OutOfTime(sent_at));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::message::{Availability, ProgramStatus};
    use crate::{CommandId, ScanId};

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 1, 10, minute, 0).unwrap()
    }

    fn ids(device: &str) -> (StoreId, DeviceId) {
        (
            StoreId::parse("shibuya").unwrap(),
            DeviceId::parse(device).unwrap(),
        )
    }

    fn scan() -> Scan {
        Scan {
            scan_id: ScanId::random(),
            ticket: "MJ1:ABC".into(),
            read_at: at(0),
            offline: None,
            sent_at: Some(at(0)),
            signature: None,
        }
    }

    fn over_the_wire<M: DeviceMessage + serde::de::DeserializeOwned>(message: &M) -> M {
        message::decode(&message::encode(message)).unwrap()
    }

    #[test]
    fn each_device_message_verifies_only_as_its_device_and_channel() {
        let key = DeviceKey::generate().unwrap();
        let (store, pc1) = ids("pc-01");
        let (_, pc2) = ids("pc-02");
        let mut signed = scan();
        key.sign(&store, &pc1, &mut signed);
        let public = key.public_key();
        assert_eq!(
            verify(&public, &store, &pc1, &over_the_wire(&signed)),
            Ok(())
        );
        assert_eq!(
            verify(&public, &store, &pc2, &signed),
            Err(VerifyError::BadSignature),
            "another device's topic"
        );
        let mut changed = signed.clone();
        changed.ticket = "MJ1:XYZ".into();
        assert_eq!(
            verify(&public, &store, &pc1, &changed),
            Err(VerifyError::BadSignature)
        );
        let other = DeviceKey::generate().unwrap().public_key();
        assert!(matches!(
            verify(&other, &store, &pc1, &signed),
            Err(VerifyError::UnknownKey(_))
        ));
        assert_eq!(
            verify(&public, &store, &pc1, &scan()),
            Err(VerifyError::Unsigned)
        );

        let mut state = ReportedState {
            availability: Availability::Online,
            program: ProgramStatus::Idle,
            last_exit: None,
            at: Some(at(1)),
            signature: None,
        };
        key.sign(&store, &pc1, &mut state);
        assert_eq!(
            verify(&public, &store, &pc1, &over_the_wire(&state)),
            Ok(())
        );
        let mut telemetry = Telemetry {
            at: at(1),
            uptime_ms: 5,
            load: Some(0.25),
            program: ProgramStatus::Idle,
            interval_ms: None,
            signature: None,
        };
        key.sign(&store, &pc1, &mut telemetry);
        assert_eq!(
            verify(&public, &store, &pc1, &over_the_wire(&telemetry)),
            Ok(())
        );
        let mut ack = Ack {
            command_id: CommandId::random(),
            ok: true,
            detail: String::new(),
            at: at(1),
            signature: None,
        };
        key.sign(&store, &pc1, &mut ack);
        assert_eq!(verify(&public, &store, &pc1, &over_the_wire(&ack)), Ok(()));
        // The same signature on another channel's message does not verify: the channel is signed.
        let mut moved = scan();
        moved.signature = ack.signature.clone();
        assert!(verify(&public, &store, &pc1, &moved).is_err());
    }

    #[test]
    fn device_keys_round_trip_as_hex_and_never_print_the_seed() {
        let key = DeviceKey::generate().unwrap();
        let again = DeviceKey::from_hex(&key.expose_hex()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert!(key.public_key().key_id.as_str().starts_with("dv"));
        assert!(!format!("{key:?}").contains(&key.expose_hex()));
        assert_eq!(
            DeviceKey::from_hex("abc").unwrap_err(),
            DeviceKeyError::BadText
        );
        assert_eq!(
            DeviceKey::from_hex(&"zz".repeat(32)).unwrap_err(),
            DeviceKeyError::BadText
        );
    }

    #[test]
    fn scans_are_taken_within_five_minutes_of_their_sending() {
        let scan = scan();
        assert_eq!(check_sent_at(&scan, at(4)), Ok(()));
        assert_eq!(
            check_sent_at(&scan, at(6)),
            Err(VerifyError::OutOfTime(at(0)))
        );
        let undated = Scan {
            sent_at: None,
            ..scan
        };
        assert_eq!(check_sent_at(&undated, at(0)), Err(VerifyError::Undated));
    }
}
