//! An MQTT client that records every mujin message, so tests assert on what the parts
//! really published. It can also publish raw payloads (bad input, duplicates).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mujin_protocol::message::{self, Event};
use mujin_protocol::topic::{Topic, ROOT};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

/// One recorded message.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub topic: Topic,
    pub payload: Vec<u8>,
}

/// A connected recorder.
pub struct Observer {
    client: AsyncClient,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl Observer {
    /// Connects to the broker at `port` and subscribes to everything under the mujin root.
    /// Returns once the subscription is acknowledged.
    pub async fn connect(port: u16, username: &str, password: &str) -> Observer {
        let id = format!("test-observer-{}", uuid::Uuid::new_v4().simple());
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_credentials(username, password)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(64 * 1024, 64 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let sink = recorded.clone();
        let subscriber = client.clone();
        let task = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        let _ = subscriber.try_subscribe(format!("{ROOT}/#"), QoS::AtLeastOnce);
                    }
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(publish))) => {
                        if let Ok(topic) = Topic::parse(&publish.topic) {
                            let mut sink = sink.lock().expect("recorder lock");
                            sink.push(Recorded {
                                topic,
                                payload: publish.payload.to_vec(),
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("observer subscribed within 10 s")
            .expect("observer task alive");
        Observer {
            client,
            recorded,
            task,
        }
    }

    /// Everything recorded so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().expect("recorder lock").clone()
    }

    /// Every store event recorded so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.recorded()
            .into_iter()
            .filter(|recorded| matches!(recorded.topic, Topic::Events { .. }))
            .filter_map(|recorded| message::decode(&recorded.payload).ok())
            .collect()
    }

    /// Waits for a decoded message on topics matching `topic` that satisfies `check`.
    pub async fn wait_for<T, F>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut(&Topic, &[u8]) -> Option<T>,
    {
        crate::wait_for(what, timeout, || {
            let found = self
                .recorded()
                .iter()
                .find_map(|recorded| check(&recorded.topic, &recorded.payload));
            async move { found }
        })
        .await
    }

    /// Waits for an event satisfying `check`.
    pub async fn wait_event<T, F>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut(&Event) -> Option<T>,
    {
        self.wait_for(what, timeout, |topic, payload| match topic {
            Topic::Events { .. } => message::decode::<Event>(payload)
                .ok()
                .and_then(|event| check(&event)),
            _ => None,
        })
        .await
    }

    /// Publishes a raw payload (QoS 1).
    pub async fn publish_raw(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue a publish");
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
