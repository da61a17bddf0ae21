//! The agent's MQTT connection: options (stable client id, last will), and the task that only
//! polls the rumqttc event loop, resubscribes on every ConnAck, backs off between reconnects and
//! forwards what matters to the agent's main loop.

use std::time::Duration;

use mujin_protocol::message::{encode, ReportedState};
use mujin_protocol::topic::{self, DeviceChannel};
use mujin_protocol::{DeviceId, StoreId};
use rumqttc::{
    AsyncClient, ClientError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// First pause after a failed connection; doubled on each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Room for publishes queued while the broker is away; beyond it they are dropped, not awaited.
const REQUEST_CAPACITY: usize = 256;

/// What the connection task tells the main loop.
#[derive(Debug)]
pub enum LinkEvent {
    /// A (re)connection was accepted and the subscriptions were requested.
    Connected,
    /// The connection was lost; the task is retrying.
    Disconnected,
    /// A message on one of the subscribed topics.
    Message { topic: String, payload: Vec<u8> },
}

/// Where and as whom to connect.
#[derive(Clone)]
pub struct LinkSettings {
    pub store: StoreId,
    pub device: DeviceId,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    /// The offline state the broker publishes when the connection drops (signed by the caller).
    pub last_will: ReportedState,
    /// Plain TCP, or TLS checking the broker's certificate (`mujin_transport::transport`).
    pub transport: rumqttc::Transport,
}

/// The client side of the connection, used by the main loop; never blocks.
pub struct Link {
    client: AsyncClient,
    task: JoinHandle<()>,
}

/// The stable client id of one device's agent, `mujin-agent.{store}.{device}`: the only one the
/// broker accepts for the device's identity (ids cannot hold a `.`, so it is unambiguous).
pub fn client_id(store: &StoreId, device: &DeviceId) -> String {
    mujin_protocol::identity::device_client_id(store, device)
}

fn qos(channel: DeviceChannel) -> QoS {
    if channel.qos() == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn options(settings: &LinkSettings) -> MqttOptions {
    let mut options = MqttOptions::new(
        client_id(&settings.store, &settings.device),
        settings.host.clone(),
        settings.port,
    );
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_clean_session(true)
        .set_credentials(settings.username.clone(), settings.password.clone())
        .set_transport(settings.transport.clone())
        .set_last_will(LastWill::new(
            topic::device(&settings.store, &settings.device, DeviceChannel::State),
            encode(&settings.last_will),
            QoS::AtLeastOnce,
            true,
        ));
    options
}

impl Link {
    /// Starts the connection task; events arrive on the returned receiver.
    pub fn start(settings: &LinkSettings) -> (Link, mpsc::UnboundedReceiver<LinkEvent>) {
        let (client, mut event_loop) = AsyncClient::new(options(settings), REQUEST_CAPACITY);
        mujin_transport::low_latency(&mut event_loop);
        // Unbounded so the polling task never waits on the main loop (which may be busy stopping
        // a program); the agent subscribes to four low-traffic topics only.
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut subscriptions: Vec<String> = [
            DeviceChannel::Command,
            DeviceChannel::ScanResult,
            DeviceChannel::Desired,
        ]
        .map(|channel| topic::device(&settings.store, &settings.device, channel))
        .to_vec();
        subscriptions.push(topic::trust(&settings.store));
        let task = tokio::spawn(poll(event_loop, client.clone(), subscriptions, events_tx));
        (Link { client, task }, events_rx)
    }

    /// Queues a publish without waiting; fails when the queue is full.
    pub fn publish(
        &self,
        topic: String,
        channel: DeviceChannel,
        payload: Vec<u8>,
    ) -> Result<(), ClientError> {
        if payload.is_empty() {
            // An empty payload would clear a retained message on the broker.
            return Ok(());
        }
        self.client
            .try_publish(topic, qos(channel), channel.retained(), payload)
    }

    /// Queues a clean disconnect (after what was queued before) and waits for the connection
    /// task to end, at most `deadline`.
    pub async fn close(self, deadline: Duration) {
        if let Err(err) = self.client.try_disconnect() {
            tracing::debug!(%err, "could not queue the disconnect");
        }
        let abort = self.task.abort_handle();
        if tokio::time::timeout(deadline, self.task).await.is_err() {
            tracing::warn!("the broker did not take the disconnect in time; dropping the link");
            abort.abort();
        }
    }
}

/// The polling task: polls, resubscribes on ConnAck, backs off on errors, forwards messages.
async fn poll(
    mut event_loop: EventLoop,
    client: AsyncClient,
    subscriptions: Vec<String>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut connected = false;
    loop {
        match event_loop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("connected to the broker");
                connected = true;
                backoff = MIN_BACKOFF;
                // A clean session forgets subscriptions: ask again on every connection.
                let filters = subscriptions
                    .iter()
                    .map(|filter| rumqttc::SubscribeFilter::new(filter.clone(), QoS::AtLeastOnce));
                if let Err(err) = client.try_subscribe_many(filters) {
                    tracing::error!(%err, "could not queue the subscriptions");
                }
                let _ = events.send(LinkEvent::Connected);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let _ = events.send(LinkEvent::Message {
                    topic: publish.topic,
                    payload: publish.payload.to_vec(),
                });
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                tracing::info!("disconnected from the broker");
                return;
            }
            Ok(_) => {}
            Err(err) => {
                if connected {
                    tracing::warn!(%err, "lost the broker; reconnecting");
                    connected = false;
                    let _ = events.send(LinkEvent::Disconnected);
                } else if backoff == MIN_BACKOFF {
                    tracing::warn!(%err, "broker unreachable; retrying");
                } else {
                    tracing::debug!(%err, ?backoff, "broker still unreachable; retrying");
                }
                if events.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_is_stable_per_device() {
        let store = StoreId::parse("shibuya").unwrap();
        let device = DeviceId::parse("pc-01").unwrap();
        assert_eq!(client_id(&store, &device), "mujin-agent.shibuya.pc-01");
    }

    #[test]
    fn telemetry_is_qos0_and_the_rest_qos1() {
        assert_eq!(qos(DeviceChannel::Telemetry), QoS::AtMostOnce);
        assert_eq!(qos(DeviceChannel::State), QoS::AtLeastOnce);
    }
}
