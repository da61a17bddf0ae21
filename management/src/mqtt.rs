//! Management's MQTT connection: one task that only polls the rumqttc event loop, resubscribes
//! on every CONNACK, backs off between failed attempts and forwards incoming publishes.
//! Incoming QoS 1 messages are acknowledged by the worker only after its database commit.
//!
//! The session is clean: scans, acks and requests come through shared subscriptions (one worker
//! of the group gets each), and rumqttd 0.20's router panics when a persistent session holds a
//! shared subscription. What a worker misses while it is away is sent again by its senders —
//! agents resend unanswered scans, consoles unanswered requests, the dispatcher unacknowledged
//! commands (and agents ack them again) — and states are retained.
//! Once its subscriptions are acknowledged the worker says it is online on its retained status
//! topic; its last will says offline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mujin_protocol::message::{self, Availability};
use mujin_protocol::presence::WorkerStatus;
use mujin_protocol::topic;
use mujin_protocol::WorkerId;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Where and as whom management connects.
#[derive(Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    /// Stable and unique per worker (one connection each; also the worker's name on its status
    /// topic, so it must be a valid id: lower-case letters, digits and `-`).
    pub client_id: String,
    /// TLS to the broker (its certificate checked against a CA, for `host`); plain MQTT
    /// without it.
    pub tls: Option<mujin_transport::TlsSettings>,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"***")
            .field("client_id", &self.client_id)
            .field("tls", &self.tls)
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

/// A message from the broker, with the connection it came on. Its acknowledgement belongs to
/// that connection only: after a reconnection the broker numbers its messages afresh, so
/// acknowledging an old packet id would acknowledge (or refuse, out of order) a new message.
#[derive(Debug)]
pub struct Received {
    pub publish: Publish,
    /// Counts CONNACKs: 1 for the first connection, 2 after the first reconnection, …
    pub connection: u64,
    /// When the event loop took it from the connection (the start of the worker's part of its
    /// latency).
    pub at: std::time::Instant,
}
/// The running connection.
pub struct Connection {
    pub client: AsyncClient,
    pub incoming: mpsc::UnboundedReceiver<Received>,
    /// Which connection to the broker is the current one (see [`Received::connection`]).
    pub generation: Arc<AtomicU64>,
    /// `true` while connected to the broker.
    pub connected: watch::Receiver<bool>,
    pub task: JoinHandle<()>,
    /// This worker's retained status topic.
    pub status_topic: String,
}

/// Says the worker is offline on `status_topic` (a clean disconnect does not send the last
/// will) and disconnects, waiting at most `timeout` for a broker that may be gone.
pub async fn close(client: &AsyncClient, status_topic: &str, timeout: Duration) {
    let offline = WorkerStatus {
        availability: Availability::Offline,
        at: Some(Utc::now()),
    };
    let payload = message::encode(&offline);
    let close = async {
        let _ = client
            .publish(status_topic, QoS::AtLeastOnce, true, payload)
            .await;
        let _ = client.disconnect().await;
    };
    let _ = tokio::time::timeout(timeout, close).await;
}

/// How many of the worker's own QoS 1 publishes may await the broker's acknowledgement.
const OUTGOING_INFLIGHT: u16 = 4096;

/// Why management cannot connect as configured.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the MQTT client id {0:?} cannot name a worker: {1}")]
    BadClientId(String, mujin_protocol::IdError),
    #[error("TLS to the broker: {0}")]
    Tls(#[from] mujin_transport::TlsError),
}

/// Connects (in the background) and subscribes to `filters` after every CONNACK; the
/// connection's ups and downs go to `metrics`.
pub fn connect(
    settings: &MqttSettings,
    filters: Vec<(String, QoS)>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<Connection, ConnectError> {
    let worker = WorkerId::parse(&settings.client_id)
        .map_err(|error| ConnectError::BadClientId(settings.client_id.clone(), error))?;
    let transport = mujin_transport::transport(settings.tls.as_ref())?;
    let status_topic = topic::worker_status(&worker);
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options
        .set_credentials(&settings.username, &settings.password)
        .set_keep_alive(Duration::from_secs(5))
        .set_clean_session(true)
        .set_manual_acks(true)
        .set_max_packet_size(64 * 1024, 64 * 1024)
        // Answers, commands and desired states are QoS 1: with rumqttc's default of 100
        // unacknowledged publishes, a burst of scans filled the window, which also held back
        // the worker's acknowledgements of incoming messages (same request queue) while the
        // broker held back its own acknowledgements behind the worker's full window, until the
        // keep-alive ping timed out and the connection dropped.
        .set_inflight(OUTGOING_INFLIGHT)
        .set_transport(transport)
        .set_last_will(LastWill::new(
            &status_topic,
            message::encode(&WorkerStatus::offline()),
            QoS::AtLeastOnce,
            true,
        ));
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    mujin_transport::low_latency(&mut eventloop);
    let (forward, incoming) = mpsc::unbounded_channel();
    let generation = Arc::new(AtomicU64::new(0));
    let (connected_tx, connected) = watch::channel(false);
    let task = tokio::spawn(poll(
        eventloop,
        Subscriber {
            client: client.clone(),
            filters,
            status_topic: status_topic.clone(),
            acked: 0,
        },
        (forward, generation.clone()),
        (connected_tx, metrics),
        stop,
    ));
    Ok(Connection {
        client,
        incoming,
        generation,
        connected,
        task,
        status_topic,
    })
}

/// Subscribes after every CONNACK and announces the worker once every SUBACK is in.
struct Subscriber {
    client: AsyncClient,
    filters: Vec<(String, QoS)>,
    status_topic: String,
    acked: usize,
}

impl Subscriber {
    fn on_connack(&mut self) {
        self.acked = 0;
        for (filter, qos) in &self.filters {
            // try_subscribe never waits, so this task cannot block on its own queue.
            if let Err(error) = self.client.try_subscribe(filter, *qos) {
                tracing::error!(%error, filter, "cannot queue subscription");
            }
        }
    }

    fn on_suback(&mut self) {
        self.acked += 1;
        if self.acked != self.filters.len() {
            return;
        }
        tracing::info!("subscribed; deciding scans");
        let online = WorkerStatus {
            availability: Availability::Online,
            at: Some(Utc::now()),
        };
        let payload = message::encode(&online);
        if let Err(error) =
            self.client
                .try_publish(&self.status_topic, QoS::AtLeastOnce, true, payload)
        {
            tracing::error!(%error, "cannot queue the worker's status");
        }
    }
}

async fn poll(
    mut eventloop: EventLoop,
    mut subscriber: Subscriber,
    (forward, generation): (mpsc::UnboundedSender<Received>, Arc<AtomicU64>),
    (connected, metrics): (watch::Sender<bool>, Arc<Metrics>),
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let mut connected_before = false;
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
                generation.fetch_add(1, Ordering::SeqCst);
                connected.send_replace(true);
                metrics.broker_connected(true);
                if connected_before {
                    metrics.broker_reconnected();
                }
                connected_before = true;
                subscriber.on_connack();
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => subscriber.on_suback(),
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                // Once the worker has stopped, a message stays unacknowledged; its sender sends
                // it again.
                let connection = generation.load(Ordering::SeqCst);
                let _ = forward.send(Received {
                    publish,
                    connection,
                    at: std::time::Instant::now(),
                });
            }
            // Everything queued before the disconnect request has been written.
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(error) => {
                metrics.broker_connected(false);
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
    metrics.broker_connected(false);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_that_cannot_name_a_worker_is_refused_before_connecting() {
        let settings = MqttSettings {
            host: "127.0.0.1".into(),
            port: 1,
            username: "management".into(),
            password: "secret".into(),
            client_id: "Management #1".into(),
            tls: None,
        };
        let error = connect(
            &settings,
            Vec::new(),
            CancellationToken::new(),
            Arc::default(),
        )
        .err()
        .expect("refused");
        assert!(error.to_string().contains("Management #1"), "{error}");
    }

    #[test]
    fn a_missing_ca_file_is_refused_before_connecting() {
        let settings = MqttSettings {
            host: "127.0.0.1".into(),
            port: 1,
            username: "management".into(),
            password: "secret".into(),
            client_id: "mujin-management".into(),
            tls: Some(mujin_transport::TlsSettings {
                ca_file: "/nonexistent/ca.pem".into(),
                client_cert: None,
                client_key: None,
            }),
        };
        let error = connect(
            &settings,
            Vec::new(),
            CancellationToken::new(),
            Arc::default(),
        )
        .err()
        .expect("refused");
        assert_eq!(
            error.to_string(),
            "TLS to the broker: /nonexistent/ca.pem: no such file"
        );
    }
}
