//! The versioned MQTT topic tree. Every topic string in mujin is built or parsed here.
//!
//! ```text
//! mujin/v1/stores/{store}/devices/{device}/scan         agent → management   QoS 1
//! mujin/v1/stores/{store}/devices/{device}/scan-result  management → agent   QoS 1
//! mujin/v1/stores/{store}/devices/{device}/telemetry    agent → all          QoS 0
//! mujin/v1/stores/{store}/devices/{device}/state        agent → all          QoS 1 retained, LWT offline
//! mujin/v1/stores/{store}/devices/{device}/command      management → agent   QoS 1
//! mujin/v1/stores/{store}/devices/{device}/desired      management → agent   QoS 1 retained
//! mujin/v1/stores/{store}/devices/{device}/ack          agent → management   QoS 1
//! mujin/v1/stores/{store}/events                        management → all     QoS 1
//! mujin/v1/stores/{store}/trust                         management → agents  QoS 1 retained
//! mujin/v1/management/{worker}/status                   management → all     QoS 1 retained, LWT offline
//! mujin/v1/operators/{operator}/requests                operator → management QoS 1
//! mujin/v1/operators/{operator}/replies                 management → operator QoS 1
//! mujin/v1/integrators/{integrator}/bookings            integrator → management QoS 1
//! mujin/v1/integrators/{integrator}/replies             management → integrator QoS 1 (default)
//! ```
//!
//! An integrator may name its own reply topic, anywhere under `mujin/v1/integrators/{integrator}/`
//! ([`reply_topic_allowed`]).

use std::fmt;

use crate::ids::{DeviceId, IdError, IntegratorId, OperatorId, StoreId, WorkerId};

/// The root every mujin topic lives under; the version changes only with incompatible payloads.
pub const ROOT: &str = "mujin/v1";

/// The per-device topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceChannel {
    /// A ticket reading, agent → management.
    Scan,
    /// Management's answer to one scan, shown to the customer on the device.
    ScanResult,
    /// Periodic health and program state, agent → anyone.
    Telemetry,
    /// The agent's reported state (retained; the last will marks it offline).
    State,
    /// Start / stop commands, management → agent.
    Command,
    /// Command results, agent → management.
    Ack,
    /// What management wants the device to run (retained).
    Desired,
}

impl DeviceChannel {
    pub const ALL: [DeviceChannel; 7] = [
        DeviceChannel::Scan,
        DeviceChannel::ScanResult,
        DeviceChannel::Telemetry,
        DeviceChannel::State,
        DeviceChannel::Command,
        DeviceChannel::Ack,
        DeviceChannel::Desired,
    ];

    /// The last topic level.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeviceChannel::Scan => "scan",
            DeviceChannel::ScanResult => "scan-result",
            DeviceChannel::Telemetry => "telemetry",
            DeviceChannel::State => "state",
            DeviceChannel::Command => "command",
            DeviceChannel::Ack => "ack",
            DeviceChannel::Desired => "desired",
        }
    }

    /// Whether messages on this channel are published with the retain flag.
    pub const fn retained(self) -> bool {
        matches!(self, DeviceChannel::State | DeviceChannel::Desired)
    }

    /// The MQTT QoS level (0 or 1) messages on this channel use.
    pub const fn qos(self) -> u8 {
        match self {
            DeviceChannel::Telemetry => 0,
            _ => 1,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|channel| channel.as_str() == text)
    }
}

impl fmt::Display for DeviceChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed mujin topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Device {
        store: StoreId,
        device: DeviceId,
        channel: DeviceChannel,
    },
    Events {
        store: StoreId,
    },
    /// The store's retained trust list: ticket keys, refused tickets, offline-start policy.
    Trust {
        store: StoreId,
    },
    /// Whether one management worker is connected (retained; its last will says offline).
    Worker {
        worker: WorkerId,
    },
    /// An operator's (or integrator's) requests to management.
    Requests {
        operator: OperatorId,
    },
    /// Management's replies to one operator.
    Replies {
        operator: OperatorId,
    },
    /// An integrator's signed booking requests (see [`crate::booking`]).
    IntegratorBookings {
        integrator: IntegratorId,
    },
    /// Management's replies to an integrator's booking requests, when the request names no
    /// reply topic of its own.
    IntegratorReplies {
        integrator: IntegratorId,
    },
}

/// Why a topic string is not a mujin topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is not under {ROOT}/")]
    ForeignRoot,
    #[error("topic has an unknown shape: {0:?}")]
    UnknownShape(String),
    #[error("topic has an invalid id: {0}")]
    BadId(#[from] IdError),
}

impl Topic {
    pub fn device(store: &StoreId, device: &DeviceId, channel: DeviceChannel) -> Self {
        Topic::Device {
            store: store.clone(),
            device: device.clone(),
            channel,
        }
    }

    pub fn parse(text: &str) -> Result<Self, TopicError> {
        let rest = text
            .strip_prefix(ROOT)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or(TopicError::ForeignRoot)?;
        let levels: Vec<&str> = rest.split('/').collect();
        let shape = || TopicError::UnknownShape(text.chars().take(200).collect());
        match levels.as_slice() {
            ["stores", store, "events"] => Ok(Topic::Events {
                store: StoreId::parse(store)?,
            }),
            ["stores", store, "trust"] => Ok(Topic::Trust {
                store: StoreId::parse(store)?,
            }),
            ["management", worker, "status"] => Ok(Topic::Worker {
                worker: WorkerId::parse(worker)?,
            }),
            ["operators", operator, "requests"] => Ok(Topic::Requests {
                operator: OperatorId::parse(operator)?,
            }),
            ["operators", operator, "replies"] => Ok(Topic::Replies {
                operator: OperatorId::parse(operator)?,
            }),
            ["integrators", integrator, "bookings"] => Ok(Topic::IntegratorBookings {
                integrator: IntegratorId::parse(integrator)?,
            }),
            ["integrators", integrator, "replies"] => Ok(Topic::IntegratorReplies {
                integrator: IntegratorId::parse(integrator)?,
            }),
            ["stores", store, "devices", device, channel] => Ok(Topic::Device {
                store: StoreId::parse(store)?,
                device: DeviceId::parse(device)?,
                channel: DeviceChannel::parse(channel).ok_or_else(shape)?,
            }),
            _ => Err(shape()),
        }
    }

    /// Whether messages on this topic are published with the retain flag.
    pub fn retained(&self) -> bool {
        match self {
            Topic::Device { channel, .. } => channel.retained(),
            Topic::Trust { .. } | Topic::Worker { .. } => true,
            Topic::Events { .. }
            | Topic::Requests { .. }
            | Topic::Replies { .. }
            | Topic::IntegratorBookings { .. }
            | Topic::IntegratorReplies { .. } => false,
        }
    }

    /// The MQTT QoS level (0 or 1) messages on this topic use.
    pub fn qos(&self) -> u8 {
        match self {
            Topic::Device { channel, .. } => channel.qos(),
            Topic::Events { .. }
            | Topic::Trust { .. }
            | Topic::Worker { .. }
            | Topic::Requests { .. }
            | Topic::Replies { .. }
            | Topic::IntegratorBookings { .. }
            | Topic::IntegratorReplies { .. } => 1,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Device {
                store,
                device,
                channel,
            } => write!(f, "{ROOT}/stores/{store}/devices/{device}/{channel}"),
            Topic::Events { store } => write!(f, "{ROOT}/stores/{store}/events"),
            Topic::Trust { store } => write!(f, "{ROOT}/stores/{store}/trust"),
            Topic::Worker { worker } => write!(f, "{ROOT}/management/{worker}/status"),
            Topic::Requests { operator } => write!(f, "{ROOT}/operators/{operator}/requests"),
            Topic::Replies { operator } => write!(f, "{ROOT}/operators/{operator}/replies"),
            Topic::IntegratorBookings { integrator } => {
                write!(f, "{ROOT}/integrators/{integrator}/bookings")
            }
            Topic::IntegratorReplies { integrator } => {
                write!(f, "{ROOT}/integrators/{integrator}/replies")
            }
        }
    }
}

/// The topic of one device's channel.
pub fn device(store: &StoreId, device: &DeviceId, channel: DeviceChannel) -> String {
    Topic::device(store, device, channel).to_string()
}

/// The event topic of one store.
pub fn events(store: &StoreId) -> String {
    Topic::Events {
        store: store.clone(),
    }
    .to_string()
}

/// The retained trust-list topic of one store.
pub fn trust(store: &StoreId) -> String {
    Topic::Trust {
        store: store.clone(),
    }
    .to_string()
}

/// The retained status topic of one management worker.
pub fn worker_status(worker: &WorkerId) -> String {
    Topic::Worker {
        worker: worker.clone(),
    }
    .to_string()
}

/// Subscription filter: the status of every management worker.
pub fn every_worker_status() -> String {
    format!("{ROOT}/management/+/status")
}

/// The prefix of the groups management workers share their subscriptions in: each scan, ack
/// and request goes to one connected worker.
pub const MANAGEMENT_GROUP: &str = "mujin-management";

/// A shared-subscription filter (MQTT 5 `$share`, also understood by rumqttd and Mosquitto for
/// 3.1.1 clients) for the management workers, in the group `mujin-management-{part}`. Each
/// filter needs a group of its own: rumqttd 0.20 keys a group by its name alone, so two filters
/// in one group share one delivery cursor and lose messages.
pub fn shared(part: &str, filter: &str) -> String {
    format!("$share/{MANAGEMENT_GROUP}-{part}/{filter}")
}

/// Subscription filter: one channel of every device of every store.
pub fn every_device(channel: DeviceChannel) -> String {
    format!("{ROOT}/stores/+/devices/+/{channel}")
}

/// Subscription filter: one channel of every device of one store.
pub fn every_device_of(store: &StoreId, channel: DeviceChannel) -> String {
    format!("{ROOT}/stores/{store}/devices/+/{channel}")
}

/// Subscription filter: the requests of every operator (management's side).
pub fn every_operator_requests() -> String {
    format!("{ROOT}/operators/+/requests")
}

/// Subscription filter: the events of every store.
pub fn every_store_events() -> String {
    format!("{ROOT}/stores/+/events")
}

/// ACL filter: the trust list of every store (management publishes them).
pub fn every_store_trust() -> String {
    format!("{ROOT}/stores/+/trust")
}

/// ACL filter: the replies to every operator (management publishes them).
pub fn every_operator_replies() -> String {
    format!("{ROOT}/operators/+/replies")
}

/// The booking-request topic of one integrator.
pub fn integrator_bookings(integrator: &IntegratorId) -> String {
    Topic::IntegratorBookings {
        integrator: integrator.clone(),
    }
    .to_string()
}

/// The default reply topic of one integrator.
pub fn integrator_replies(integrator: &IntegratorId) -> String {
    Topic::IntegratorReplies {
        integrator: integrator.clone(),
    }
    .to_string()
}

/// The prefix of every topic of one integrator, ending in `/`: its own reply topics live here.
pub fn integrator_subtree(integrator: &IntegratorId) -> String {
    format!("{ROOT}/integrators/{integrator}/")
}

/// ACL filter: everything under one integrator's subtree.
pub fn integrator_all(integrator: &IntegratorId) -> String {
    format!("{ROOT}/integrators/{integrator}/#")
}

/// Subscription filter: the booking requests of every integrator (management's side).
pub fn every_integrator_bookings() -> String {
    format!("{ROOT}/integrators/+/bookings")
}

/// ACL filter: every integrator's subtree (management publishes replies anywhere in it).
pub fn every_integrator_topic() -> String {
    format!("{ROOT}/integrators/+/#")
}

/// The longest reply topic an integrator may name.
pub const MAX_REPLY_TOPIC_LEN: usize = 256;

/// Whether management may publish a reply for `integrator` on `topic`: a concrete topic (no
/// wildcard, no empty level, no NUL) under the integrator's own subtree, other than its bookings
/// topic (a reply there would come back to management as a request). Management never
/// publishes into someone else's topics.
pub fn reply_topic_allowed(integrator: &IntegratorId, topic: &str) -> bool {
    let Some(rest) = topic.strip_prefix(&integrator_subtree(integrator)) else {
        return false;
    };
    topic.len() <= MAX_REPLY_TOPIC_LEN
        && rest != "bookings"
        && !rest.split('/').any(str::is_empty)
        && !rest.contains(['+', '#', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (StoreId, DeviceId) {
        (
            StoreId::parse("shibuya").unwrap(),
            DeviceId::parse("pc-01").unwrap(),
        )
    }

    #[test]
    fn builds_the_documented_topics() {
        let (store, dev) = ids();
        assert_eq!(
            device(&store, &dev, DeviceChannel::Scan),
            "mujin/v1/stores/shibuya/devices/pc-01/scan"
        );
        assert_eq!(
            device(&store, &dev, DeviceChannel::ScanResult),
            "mujin/v1/stores/shibuya/devices/pc-01/scan-result"
        );
        assert_eq!(events(&store), "mujin/v1/stores/shibuya/events");
        assert_eq!(
            every_device(DeviceChannel::Ack),
            "mujin/v1/stores/+/devices/+/ack"
        );
        assert_eq!(every_store_events(), "mujin/v1/stores/+/events");
        assert_eq!(every_store_trust(), "mujin/v1/stores/+/trust");
        assert_eq!(every_operator_replies(), "mujin/v1/operators/+/replies");
    }

    #[test]
    fn parses_what_it_builds() {
        let (store, dev) = ids();
        for channel in DeviceChannel::ALL {
            let topic = Topic::device(&store, &dev, channel);
            assert_eq!(Topic::parse(&topic.to_string()).unwrap(), topic);
        }
        let events = Topic::Events {
            store: store.clone(),
        };
        assert_eq!(Topic::parse(&events.to_string()).unwrap(), events);
        let trust = Topic::Trust {
            store: store.clone(),
        };
        assert_eq!(trust.to_string(), "mujin/v1/stores/shibuya/trust");
        assert_eq!(Topic::parse(&trust.to_string()).unwrap(), trust);
        assert!(trust.retained());
        let worker = Topic::Worker {
            worker: WorkerId::parse("mujin-management-2").unwrap(),
        };
        assert_eq!(
            worker.to_string(),
            "mujin/v1/management/mujin-management-2/status"
        );
        assert_eq!(Topic::parse(&worker.to_string()).unwrap(), worker);
        assert!(worker.retained());
        assert_eq!(
            shared("requests", &every_operator_requests()),
            "$share/mujin-management-requests/mujin/v1/operators/+/requests"
        );
        let operator = OperatorId::parse("alice").unwrap();
        for topic in [
            Topic::Requests {
                operator: operator.clone(),
            },
            Topic::Replies { operator },
        ] {
            assert_eq!(Topic::parse(&topic.to_string()).unwrap(), topic);
        }
        assert_eq!(every_operator_requests(), "mujin/v1/operators/+/requests");
    }

    #[test]
    fn integrator_topics_parse_and_replies_stay_in_their_subtree() {
        let acme = IntegratorId::parse("acme").unwrap();
        assert_eq!(
            integrator_bookings(&acme),
            "mujin/v1/integrators/acme/bookings"
        );
        assert_eq!(
            integrator_replies(&acme),
            "mujin/v1/integrators/acme/replies"
        );
        for topic in [
            Topic::IntegratorBookings {
                integrator: acme.clone(),
            },
            Topic::IntegratorReplies {
                integrator: acme.clone(),
            },
        ] {
            assert_eq!(Topic::parse(&topic.to_string()).unwrap(), topic);
            assert_eq!(topic.qos(), 1);
            assert!(!topic.retained());
        }
        assert_eq!(
            shared("bookings", &every_integrator_bookings()),
            "$share/mujin-management-bookings/mujin/v1/integrators/+/bookings"
        );
        assert_eq!(integrator_all(&acme), "mujin/v1/integrators/acme/#");
        assert_eq!(every_integrator_topic(), "mujin/v1/integrators/+/#");
        for allowed in [
            "mujin/v1/integrators/acme/replies",
            "mujin/v1/integrators/acme/replies/kiosk-7",
            "mujin/v1/integrators/acme/x",
        ] {
            assert!(reply_topic_allowed(&acme, allowed), "{allowed} refused");
        }
        let long = format!("mujin/v1/integrators/acme/{}", "a".repeat(300));
        for refused in [
            "mujin/v1/integrators/acme/bookings",
            "mujin/v1/integrators/acme/",
            "mujin/v1/integrators/acme",
            "mujin/v1/integrators/acmex/replies",
            "mujin/v1/integrators/other/replies",
            "mujin/v1/operators/acme/replies",
            "mujin/v1/integrators/acme/replies/+",
            "mujin/v1/integrators/acme/#",
            "mujin/v1/integrators/acme//x",
            "mujin/v1/integrators/acme/x/",
            long.as_str(),
        ] {
            assert!(!reply_topic_allowed(&acme, refused), "{refused} allowed");
        }
    }

    #[test]
    fn refuses_foreign_and_malformed_topics() {
        assert_eq!(
            Topic::parse("other/v1/stores/a/events"),
            Err(TopicError::ForeignRoot)
        );
        assert_eq!(
            Topic::parse("mujin/v2/stores/a/events"),
            Err(TopicError::ForeignRoot)
        );
        assert!(matches!(
            Topic::parse("mujin/v1/stores/a/devices/b/reboot"),
            Err(TopicError::UnknownShape(_))
        ));
        assert!(matches!(
            Topic::parse("mujin/v1/stores/A/events"),
            Err(TopicError::BadId(_))
        ));
        assert!(matches!(
            Topic::parse("mujin/v1/stores/a/devices/b/scan/extra"),
            Err(TopicError::UnknownShape(_))
        ));
    }

    #[test]
    fn only_state_and_desired_are_retained_and_only_telemetry_is_qos0() {
        for channel in DeviceChannel::ALL {
            let retained = matches!(channel, DeviceChannel::State | DeviceChannel::Desired);
            assert_eq!(channel.retained(), retained);
            assert_eq!(channel.qos() == 0, channel == DeviceChannel::Telemetry);
        }
    }
}
