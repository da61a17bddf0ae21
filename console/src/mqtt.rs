//! The broker connection: one task that polls the rumqttc event loop, renews the subscriptions
//! on every ConnAck, backs off between reconnects, and forwards decoded messages and connection
//! changes to the console as `Event`s. It never waits on anything but the event loop and the
//! console's channel. The operator's requests go out through [`MqttTask::send`], which never
//! waits either.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mujin_protocol::message::{
    self, Ack, Command, DesiredState, Reply, ReportedState, Request, Telemetry,
};
use mujin_protocol::signed::sign_request_at;
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::{DeviceId, OperatorId, StoreId};
use rumqttc::{AsyncClient, EventLoop, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::event::{ConnectionChange, Event, Incoming, MqttMessage};
use crate::Settings;

/// Short keep-alive so a dead connection shows as DISCONNECTED within seconds.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// First and longest pause between reconnect attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Larger than any valid mujin payload so that an oversized message is refused by `decode`
/// (and counted) instead of making rumqttc drop the connection over and over.
const MAX_INCOMING_PACKET: usize = 256 * 1024;
/// How long a clean disconnect may take when the console quits.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Why the broker address cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("broker address {0:?} is not host:port")]
    NotHostPort(String),
    #[error("broker address {0:?} has an invalid port")]
    BadPort(String),
}

/// Splits `host:port` (IPv6 hosts in brackets: `[::1]:1883`).
pub fn broker_address(text: &str) -> Result<(String, u16), AddressError> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| AddressError::NotHostPort(text.to_owned()))?;
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(AddressError::NotHostPort(text.to_owned()));
    }
    let port = port
        .parse()
        .map_err(|_| AddressError::BadPort(text.to_owned()))?;
    Ok((host.to_owned(), port))
}

/// Why the connection cannot be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("invalid --broker: {0}")]
    Address(#[from] AddressError),
    #[error("TLS: {0}")]
    Tls(#[from] mujin_transport::TlsError),
}

/// Why a request could not be handed to the connection.
#[derive(Debug, thiserror::Error)]
#[error("the connection's queue refused the request: {0}")]
pub struct SendError(#[from] rumqttc::ClientError);

/// The running connection task.
#[derive(Debug)]
pub struct MqttTask {
    client: AsyncClient,
    operator: OperatorId,
    operator_key: Option<Arc<SigningKey>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl MqttTask {
    /// Queues a request on the operator's requests topic (QoS 1) without waiting: the console's
    /// loop must never block on the connection. With an operator key it is stamped with the
    /// current time and signed, afresh at every resend (management refuses one sent more than
    /// 5 minutes ago).
    pub fn send(&self, request: &Request) -> Result<(), SendError> {
        let topic = Topic::Requests {
            operator: self.operator.clone(),
        };
        let mut request = request.clone();
        if let Some(key) = &self.operator_key {
            sign_request_at(key, &mut request, Utc::now());
        }
        self.client.try_publish(
            topic.to_string(),
            QoS::AtLeastOnce,
            topic.retained(),
            message::encode(&request),
        )?;
        Ok(())
    }

    /// Disconnects cleanly (bounded in time) and waits for the task to end.
    pub async fn stop(self) {
        // The task may already have ended because the console dropped its receiver.
        let _ = self.stop.send(());
        let abort = self.task.abort_handle();
        if tokio::time::timeout(STOP_GRACE + Duration::from_secs(1), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// Connects (in the background) and starts forwarding to `events`.
pub fn spawn(settings: &Settings, events: mpsc::Sender<Event>) -> Result<MqttTask, SpawnError> {
    let (host, port) = broker_address(&settings.broker)?;
    let transport = mujin_transport::transport(settings.tls.as_ref())?;
    let mut options = MqttOptions::new(settings.client_id.clone(), host, port);
    options
        .set_credentials(settings.username.clone(), settings.password.clone())
        .set_transport(transport)
        .set_keep_alive(KEEP_ALIVE)
        // The broker never expires sessions; a clean session keeps nothing behind for us.
        .set_clean_session(true)
        .set_max_packet_size(MAX_INCOMING_PACKET, 16 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    mujin_transport::low_latency(&mut eventloop);
    let (stop, stopped) = oneshot::channel();
    let filters = subscriptions(&settings.operator);
    let task = tokio::spawn(drive(client.clone(), eventloop, events, filters, stopped));
    Ok(MqttTask {
        client,
        operator: settings.operator.clone(),
        operator_key: settings.operator_key.clone(),
        stop,
        task,
    })
}

/// The filters the console listens to, `operator`'s replies among them.
pub fn subscriptions(operator: &OperatorId) -> Vec<SubscribeFilter> {
    let replies = Topic::Replies {
        operator: operator.clone(),
    };
    vec![
        SubscribeFilter::new(replies.to_string(), QoS::AtLeastOnce),
        SubscribeFilter::new(topic::every_device(DeviceChannel::State), QoS::AtLeastOnce),
        SubscribeFilter::new(
            topic::every_device(DeviceChannel::Telemetry),
            QoS::AtMostOnce,
        ),
        SubscribeFilter::new(topic::every_store_events(), QoS::AtLeastOnce),
        // Commands and their acks, to show each command with its answer and to notice
        // stops nobody acknowledged.
        SubscribeFilter::new(
            topic::every_device(DeviceChannel::Command),
            QoS::AtLeastOnce,
        ),
        SubscribeFilter::new(topic::every_device(DeviceChannel::Ack), QoS::AtLeastOnce),
        // Retained: after every (re)connection, management's view of every device (which
        // session runs where) arrives at once, not only what happens next.
        SubscribeFilter::new(
            topic::every_device(DeviceChannel::Desired),
            QoS::AtLeastOnce,
        ),
    ]
}

async fn drive(
    client: AsyncClient,
    mut eventloop: EventLoop,
    events: mpsc::Sender<Event>,
    filters: Vec<SubscribeFilter>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let polled = tokio::select! {
            _ = &mut stop => break,
            polled = eventloop.poll() => polled,
        };
        let event = match polled {
            Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                backoff = BACKOFF_MIN;
                // Clean session: the broker forgot our subscriptions, so renew them each time.
                // `try_` because awaiting the request channel from this task could deadlock.
                if let Err(err) = client.try_subscribe_many(filters.clone()) {
                    tracing::error!(%err, "could not subscribe");
                }
                Event::Connection(ConnectionChange::Up)
            }
            Ok(rumqttc::Event::Incoming(Packet::Publish(publish))) => Event::Mqtt(MqttMessage {
                received_at: Utc::now(),
                incoming: decode_publish(&publish.topic, &publish.payload, publish.retain),
            }),
            Ok(_) => continue,
            Err(err) => {
                tracing::debug!(%err, ?backoff, "broker connection failed");
                let down = Event::Connection(ConnectionChange::Down {
                    error: err.to_string(),
                });
                if events.send(down).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = &mut stop => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if events.send(event).await.is_err() {
            // The console is gone; nobody to forward to.
            return;
        }
    }
    disconnect(&client, &mut eventloop).await;
}

/// Sends DISCONNECT so the broker drops the session at once, if the connection is up.
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let flushed = async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(STOP_GRACE, flushed).await;
}

/// Turns one publish into what the console understands; anything unexpected is `Malformed`.
pub fn decode_publish(topic: &str, payload: &[u8], retained: bool) -> Incoming {
    let decoded = match Topic::parse(topic) {
        Ok(Topic::Device {
            store,
            device,
            channel,
        }) => decode_device(store, device, channel, payload, retained),
        Ok(Topic::Events { store }) => match message::decode::<message::Event>(payload) {
            Ok(event) if event.store == store => Ok(Incoming::StoreEvent(event)),
            Ok(event) => Err(format!(
                "event of store {} published on the topic of store {store}",
                event.store
            )),
            Err(err) => Err(err.to_string()),
        },
        // Only this operator's replies topic is subscribed to.
        Ok(Topic::Replies { .. }) => message::decode::<Reply>(payload)
            .map(Incoming::Reply)
            .map_err(|err| err.to_string()),
        Ok(Topic::Requests { .. }) => Err("requests are not followed here".to_owned()),
        Ok(Topic::IntegratorBookings { .. } | Topic::IntegratorReplies { .. }) => {
            Err("integrators' bookings are not followed here".to_owned())
        }
        Ok(Topic::Trust { .. } | Topic::Worker { .. }) => {
            Err("trust lists and worker status are not followed here".to_owned())
        }
        Err(err) => Err(err.to_string()),
    };
    decoded.unwrap_or_else(|error| Incoming::Malformed {
        topic: topic.chars().take(200).collect(),
        error,
    })
}

fn decode_device(
    store: StoreId,
    device: DeviceId,
    channel: DeviceChannel,
    payload: &[u8],
    retained: bool,
) -> Result<Incoming, String> {
    let incoming = match channel {
        DeviceChannel::State => Incoming::State {
            store,
            device,
            state: decode::<ReportedState>(payload)?,
            retained,
        },
        DeviceChannel::Telemetry => Incoming::Telemetry {
            store,
            device,
            telemetry: decode::<Telemetry>(payload)?,
        },
        DeviceChannel::Command => Incoming::Command {
            store,
            device,
            command: decode::<Command>(payload)?,
        },
        DeviceChannel::Ack => Incoming::Ack {
            store,
            device,
            ack: decode::<Ack>(payload)?,
        },
        DeviceChannel::Desired => Incoming::Desired {
            store,
            device,
            desired: decode::<DesiredState>(payload)?,
        },
        other => return Err(format!("unexpected channel {other}")),
    };
    Ok(incoming)
}

fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    message::decode(payload).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mujin_protocol::message::{Availability, EventKind, RejectReason};

    fn ids() -> (StoreId, DeviceId) {
        (
            StoreId::parse("shibuya").unwrap(),
            DeviceId::parse("pc-01").unwrap(),
        )
    }

    #[test]
    fn broker_addresses_are_host_and_port() {
        assert_eq!(
            broker_address("127.0.0.1:1883"),
            Ok(("127.0.0.1".into(), 1883))
        );
        assert_eq!(broker_address("[::1]:8883"), Ok(("::1".into(), 8883)));
        assert!(matches!(
            broker_address("localhost"),
            Err(AddressError::NotHostPort(_))
        ));
        assert!(matches!(
            broker_address(":1883"),
            Err(AddressError::NotHostPort(_))
        ));
        assert!(matches!(
            broker_address("host:99999"),
            Err(AddressError::BadPort(_))
        ));
    }

    #[test]
    fn state_telemetry_and_events_are_decoded_by_topic() {
        let (store, device) = ids();
        let state_topic = topic::device(&store, &device, DeviceChannel::State);
        let state = message::encode(&ReportedState::offline());
        assert_eq!(
            decode_publish(&state_topic, &state, true),
            Incoming::State {
                store: store.clone(),
                device: device.clone(),
                state: ReportedState::offline(),
                retained: true
            }
        );
        let telemetry_topic = topic::device(&store, &device, DeviceChannel::Telemetry);
        let telemetry = br#"{"at":"2025-06-01T10:00:00Z","uptime_ms":3}"#;
        assert!(matches!(
            decode_publish(&telemetry_topic, telemetry, false),
            Incoming::Telemetry { .. }
        ));
        let event = message::Event {
            at: Utc::now(),
            store: store.clone(),
            device: Some(device),
            kind: EventKind::ScanRejected {
                scan_id: None,
                reason: RejectReason::Expired,
                detail: String::new(),
            },
        };
        let decoded = decode_publish(&topic::events(&store), &message::encode(&event), false);
        assert_eq!(decoded, Incoming::StoreEvent(event));
    }

    #[test]
    fn commands_and_acks_are_decoded_by_topic() {
        let (store, device) = ids();
        let command = Command {
            command_id: mujin_protocol::CommandId::random(),
            issued_at: Utc::now(),
            epoch: 3,
            action: message::CommandAction::Stop {
                session_id: mujin_protocol::SessionId::random(),
                reason: message::EndReason::Forced,
            },
            store: None,
            device: None,
            expires_at: None,
            signature: None,
        };
        let command_topic = topic::device(&store, &device, DeviceChannel::Command);
        assert_eq!(
            decode_publish(&command_topic, &message::encode(&command), false),
            Incoming::Command {
                store: store.clone(),
                device: device.clone(),
                command: command.clone()
            }
        );
        let ack = Ack {
            signature: None,
            command_id: command.command_id,
            ok: false,
            detail: "no such session".into(),
            at: Utc::now(),
        };
        let ack_topic = topic::device(&store, &device, DeviceChannel::Ack);
        assert_eq!(
            decode_publish(&ack_topic, &message::encode(&ack), false),
            Incoming::Ack { store, device, ack }
        );
    }

    #[test]
    fn anything_unexpected_is_malformed() {
        let (store, device) = ids();
        let other = StoreId::parse("other").unwrap();
        let event = message::Event {
            at: Utc::now(),
            store: other,
            device: None,
            kind: EventKind::DeviceAvailability {
                availability: Availability::Online,
                session_id: None,
            },
        };
        let cases: Vec<(String, Vec<u8>)> = vec![
            (
                topic::device(&store, &device, DeviceChannel::State),
                b"{".to_vec(),
            ),
            (
                topic::device(&store, &device, DeviceChannel::State),
                Vec::new(),
            ),
            (
                topic::device(&store, &device, DeviceChannel::Command),
                b"{}".to_vec(),
            ),
            (
                topic::device(&store, &device, DeviceChannel::Scan),
                b"{}".to_vec(),
            ),
            ("mujin/v1/stores/UPPER/events".into(), b"{}".to_vec()),
            (topic::events(&store), message::encode(&event)),
            (
                topic::events(&store),
                vec![b' '; message::MAX_PAYLOAD_BYTES + 1],
            ),
        ];
        for (topic, payload) in cases {
            assert!(
                matches!(
                    decode_publish(&topic, &payload, false),
                    Incoming::Malformed { .. }
                ),
                "{topic} should be malformed"
            );
        }
    }
}
