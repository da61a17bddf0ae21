//! Management's MQTT connection: one task that only polls the rumqttc event loop, resubscribes
//! on every CONNACK, backs off between failed attempts and forwards incoming publishes.
//! Incoming QoS 1 messages are acknowledged by the worker only after its database commit.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where and as whom management connects.
#[derive(Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    /// Stable, so the broker keeps the persistent session (and unacknowledged scans) for us.
    pub client_id: String,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"***")
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
}

impl Outbound {
    /// A message on a mujin topic, with the QoS and retain flag the topic tree prescribes.
    pub fn new(topic: &mujin_protocol::topic::Topic, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.to_string(),
            payload,
            qos: if topic.qos() == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            retain: topic.retained(),
        }
    }
}

/// The running connection.
pub struct Connection {
    pub client: AsyncClient,
    pub incoming: mpsc::UnboundedReceiver<Publish>,
    /// `true` while connected to the broker.
    pub connected: watch::Receiver<bool>,
    pub task: JoinHandle<()>,
}

/// Connects (in the background) and subscribes to `filters` after every CONNACK.
pub fn connect(
    settings: &MqttSettings,
    filters: Vec<(String, QoS)>,
    stop: CancellationToken,
) -> Connection {
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options
        .set_credentials(&settings.username, &settings.password)
        .set_keep_alive(Duration::from_secs(5))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, eventloop) = AsyncClient::new(options, 1024);
    let (forward, incoming) = mpsc::unbounded_channel();
    let (connected_tx, connected) = watch::channel(false);
    let task = tokio::spawn(poll(
        eventloop,
        client.clone(),
        filters,
        forward,
        connected_tx,
        stop,
    ));
    Connection {
        client,
        incoming,
        connected,
        task,
    }
}

async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<(String, QoS)>,
    forward: mpsc::UnboundedSender<Publish>,
    connected: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the broker"
                );
                backoff = Duration::from_millis(200);
                connected.send_replace(true);
                for (filter, qos) in &filters {
                    // try_subscribe never waits, so this task cannot block on its own queue.
                    if let Err(error) = client.try_subscribe(filter, *qos) {
                        tracing::error!(%error, filter, "cannot queue subscription");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                // Once the worker has stopped, a message stays unacknowledged: the broker
                // delivers it again to the next session.
                let _ = forward.send(publish);
            }
            // Everything queued before the disconnect request has been written.
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(error) => {
                if connected.send_replace(false) {
                    tracing::warn!(%error, "lost the broker connection; reconnecting");
                } else {
                    tracing::debug!(%error, "broker still unreachable");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    connected.send_replace(false);
}

/// Publishes messages in order; a failure is logged and the rest are still attempted.
/// Gives up when `stop` is cancelled, so a queue that is full because the broker is gone never
/// holds shutdown (commands are in the outbox and go out again after a restart).
pub async fn publish_all(client: &AsyncClient, messages: Vec<Outbound>, stop: &CancellationToken) {
    for message in messages {
        let topic = message.topic.clone();
        let queued = tokio::select! {
            () = stop.cancelled() => return,
            queued = client.publish(message.topic, message.qos, message.retain, message.payload) => queued,
        };
        if let Err(error) = queued {
            tracing::error!(%error, topic, "cannot queue publish");
        }
    }
}
