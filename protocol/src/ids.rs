//! Identifiers as newtypes that validate on parse, so an invalid id cannot exist.
//!
//! Store, device and key ids are short lowercase slugs chosen by people (they appear in topics,
//! tickets and on screens). Ticket, session, scan and command ids are random UUIDs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why a text is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error(
        "{kind} may only hold a-z, 0-9 and '-' and must start with a letter or digit, got {text:?}"
    )]
    BadCharacters { kind: &'static str, text: String },
    #[error("{kind} must be a UUID, got {text:?}")]
    NotUuid { kind: &'static str, text: String },
}

/// What [`check_slug`] accepts, as a JSON Schema pattern (the length is checked apart).
const SLUG_PATTERN: &str = "^[a-z0-9][a-z0-9-]*$";
/// The hyphenated UUID form the uuid ids are written in (parsing also takes other forms).
const UUID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

fn check_slug(kind: &'static str, text: &str, max: usize) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if text.len() > max {
        return Err(IdError::TooLong { kind, max });
    }
    let ok_chars = text
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || text.starts_with('-') {
        return Err(IdError::BadCharacters {
            kind,
            text: text.chars().take(64).collect(),
        });
    }
    Ok(())
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Longest accepted id, in bytes.
            pub const MAX_LEN: usize = $max;

            pub fn parse(text: &str) -> Result<Self, IdError> {
                check_slug($kind, text, $max)?;
                Ok(Self(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }

        // On the wire: the slug itself, as `parse` accepts it.
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "description": concat!("A ", $kind, ": a-z, 0-9 and '-', not starting with '-'."),
                    "type": "string",
                    "minLength": 1,
                    "maxLength": $max,
                    "pattern": SLUG_PATTERN,
                })
            }
        }
    };
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }

            pub fn parse(text: &str) -> Result<Self, IdError> {
                Uuid::parse_str(text).map(Self).map_err(|_| IdError::NotUuid {
                    kind: $kind,
                    text: text.chars().take(64).collect(),
                })
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0.hyphenated())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }

        // On the wire: the hyphenated lower-case form `Display` writes.
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "description": concat!("A ", $kind, ": a UUID, hyphenated."),
                    "type": "string",
                    "format": "uuid",
                    "pattern": UUID_PATTERN,
                })
            }
        }
    };
}

slug_id!(
    /// A store, e.g. `shibuya`.
    StoreId, "store id", 32
);
slug_id!(
    /// A device within a store, e.g. `pc-01`.
    DeviceId, "device id", 32
);
slug_id!(
    /// The id of a ticket-signing key, e.g. `k1`; carried inside every ticket.
    KeyId, "key id", 16
);
slug_id!(
    /// An operator (a person at a console, or an integrator), e.g. `alice`; requests and their
    /// replies travel on topics of the operator's own.
    OperatorId, "operator id", 32
);
slug_id!(
    /// A booking integrator (a booking site, a payment kiosk), e.g. `acme-web`; it books over
    /// MQTT on topics of its own (see [`crate::booking`]).
    IntegratorId, "integrator id", 32
);
slug_id!(
    /// One management worker, e.g. `mujin-management-2` (its MQTT client id).
    WorkerId, "worker id", 64
);
uuid_id!(
    /// One request to management; a request sent again with the same id is answered again
    /// without being carried out twice.
    RequestId, "request id"
);
uuid_id!(
    /// One reservation's electronic ticket.
    TicketId, "ticket id"
);
uuid_id!(
    /// One use of a device, started by an accepted scan.
    SessionId, "session id"
);
uuid_id!(
    /// One reading of a ticket by a device agent; management answers each scan id once.
    ScanId, "scan id"
);
uuid_id!(
    /// One command from management to a device.
    CommandId, "command id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_accept_lowercase_digits_and_dashes() {
        assert_eq!(StoreId::parse("shibuya-2").unwrap().as_str(), "shibuya-2");
        assert_eq!(DeviceId::parse("pc01").unwrap().to_string(), "pc01");
    }

    #[test]
    fn slugs_reject_what_would_break_topics() {
        for bad in ["", "a/b", "+", "#", "Upper", "-lead", "a b", "é"] {
            assert!(DeviceId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            StoreId::parse(&"a".repeat(33)),
            Err(IdError::TooLong {
                kind: "store id",
                max: 32
            })
        );
    }

    #[test]
    fn uuid_ids_round_trip_through_json() {
        let id = SessionId::random();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<ScanId>("\"nope\"").is_err());
    }

    #[test]
    fn slug_ids_are_validated_when_deserialized() {
        assert!(serde_json::from_str::<StoreId>("\"a/b\"").is_err());
    }
}
