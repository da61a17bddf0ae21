//! The floor a scan → start can never beat, measured in the same run on the same broker and
//! database: an MQTT round trip between two plain clients (publish, receive, publish back,
//! receive, all QoS 1 like scans and commands) and one durable single-row INSERT; what the
//! protocol's signatures cost; and ([`throughput`], [`per_authorization`]) the least CPU an
//! authorization can cost here. Also the plain client used to wait for management's worker to
//! come online.

pub mod per_authorization;
pub mod throughput;

use std::time::Duration;

use anyhow::{bail, Context};
use deadpool_postgres::Pool;
use mujin_protocol::device_auth::{self, DeviceKey};
use mujin_protocol::message::{self, Availability, Scan};
use mujin_protocol::presence::WorkerStatus;
use mujin_protocol::topic;
use mujin_protocol::{DeviceId, ScanId, StoreId};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::device::BrokerAddress;
use crate::stack::{ECHO, PING};
use crate::stats::{Percentiles, Samples};
use throughput::ThroughputFloor;

/// Not mujin topics: nothing of mujin subscribes to them.
const PING_TOPIC: &str = "bench/floor/ping";
const PONG_TOPIC: &str = "bench/floor/pong";
const ROUND_TRIP_DEADLINE: Duration = Duration::from_secs(5);

/// The floor's two parts, what the protocol's signatures cost, and the throughput floor.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Floor {
    pub mqtt_round_trip: Percentiles,
    pub durable_insert: Percentiles,
    pub signatures: SignatureFloor,
    /// `None` where it was not measured.
    pub throughput: Option<ThroughputFloor>,
}

/// Ed25519 signatures per authorization (a scan, its start, and the ack and state that
/// follow): the device signs the scan, the ack and the state, management the start command and
/// the desired state.
pub const SIGNS_PER_AUTHORIZATION: u32 = 5;
/// Management verifies the scan, its ticket, the ack and the state; the agent the start
/// command and the desired state.
pub const VERIFIES_PER_AUTHORIZATION: u32 = 6;

/// What one signature costs on this machine, with mujin's own code (a signed scan encoded and
/// signed, or decoded-equal and verified, with ring's Ed25519): CPU that every authorization
/// needs whatever else is made faster.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SignatureFloor {
    pub sign_us: f64,
    pub verify_us: f64,
}

impl SignatureFloor {
    /// Times `rounds` signatures and verifications, three times over; keeps the fastest batch
    /// of each (the least disturbed by the rest of the machine).
    pub fn measure(rounds: usize) -> anyhow::Result<SignatureFloor> {
        let (store, device) = floor_device()?;
        let key = DeviceKey::generate().context("a device key")?;
        let public = key.public_key();
        let mut scan = floor_scan();
        let rounds = rounds.max(1);
        let mut floor = SignatureFloor {
            sign_us: f64::INFINITY,
            verify_us: f64::INFINITY,
        };
        for _ in 0..3 {
            let started = Instant::now();
            for _ in 0..rounds {
                key.sign(&store, &device, &mut scan);
            }
            floor.sign_us = floor.sign_us.min(per_round_us(started, rounds));
            let started = Instant::now();
            for _ in 0..rounds {
                device_auth::verify(&public, &store, &device, &scan)
                    .context("the floor's own signature does not verify")?;
            }
            floor.verify_us = floor.verify_us.min(per_round_us(started, rounds));
        }
        Ok(floor)
    }

    /// Signature CPU per authorization.
    pub fn us_per_authorization(&self) -> f64 {
        f64::from(SIGNS_PER_AUTHORIZATION) * self.sign_us
            + f64::from(VERIFIES_PER_AUTHORIZATION) * self.verify_us
    }

    /// The most authorizations per second `cores` cores could sign and verify, doing nothing
    /// else.
    pub fn ceiling_per_sec(&self, cores: usize) -> Option<f64> {
        let us = self.us_per_authorization();
        (us > 0.0 && us.is_finite()).then(|| cores as f64 * 1_000_000.0 / us)
    }
}

/// The store and device the floor's scans are signed for.
fn floor_device() -> anyhow::Result<(StoreId, DeviceId)> {
    let store = StoreId::parse("bench").context("store id")?;
    let device = DeviceId::parse("floor").context("device id")?;
    Ok((store, device))
}

/// An unsigned scan of a ticket's length: the scan is the largest message signed per
/// authorization.
fn floor_scan() -> Scan {
    Scan {
        scan_id: ScanId::random(),
        ticket: "T".repeat(160),
        read_at: chrono::Utc::now(),
        offline: None,
        sent_at: Some(chrono::Utc::now()),
        signature: None,
    }
}

/// A signed scan encoded as a device publishes it.
fn signed_scan_bytes() -> anyhow::Result<Vec<u8>> {
    let (store, device) = floor_device()?;
    let key = DeviceKey::generate().context("a device key")?;
    let mut scan = floor_scan();
    key.sign(&store, &device, &mut scan);
    Ok(message::encode(&scan))
}

fn per_round_us(started: Instant, rounds: usize) -> f64 {
    started.elapsed().as_secs_f64() * 1_000_000.0 / rounds as f64
}

impl Floor {
    /// The least a scan → start can take: one round trip plus one commit (p50s).
    pub fn p50_ms(&self) -> f64 {
        self.mqtt_round_trip.p50_ms + self.durable_insert.p50_ms
    }
}

/// A plain MQTT client whose event loop runs in its own task and forwards publishes.
struct PlainClient {
    client: AsyncClient,
    messages: mpsc::UnboundedReceiver<Publish>,
    task: JoinHandle<()>,
}

impl PlainClient {
    /// Connects and waits until `filter` is subscribed.
    async fn connect(
        broker: &BrokerAddress,
        (username, password): (&str, &str),
        client_id: &str,
        filter: &str,
    ) -> anyhow::Result<PlainClient> {
        let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
        options
            .set_keep_alive(Duration::from_secs(15))
            .set_credentials(username, password);
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        event_loop.set_network_options(crate::no_delay());
        let (forward, messages) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(poll(
            event_loop,
            client.clone(),
            filter.to_owned(),
            forward,
            subscribed_tx,
        ));
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .with_context(|| format!("{client_id} did not connect to the broker within 10 s"))?
            .ok();
        Ok(PlainClient {
            client,
            messages,
            task,
        })
    }

    async fn close(self) {
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

async fn poll(
    mut event_loop: EventLoop,
    client: AsyncClient,
    filter: String,
    forward: mpsc::UnboundedSender<Publish>,
    subscribed: tokio::sync::oneshot::Sender<()>,
) {
    let mut subscribed = Some(subscribed);
    loop {
        match event_loop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Some(subscribed) = subscribed.take() {
                    let _ = subscribed.send(());
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if forward.send(publish).is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(_) => {
                if forward.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Waits until a management worker says it is online on its retained status topic.
pub async fn wait_for_worker(broker: &BrokerAddress, password: &str) -> anyhow::Result<()> {
    let mut watcher = PlainClient::connect(
        broker,
        (PING, password),
        "bench-watch",
        &topic::every_worker_status(),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let online = loop {
        let received = tokio::time::timeout_at(deadline, watcher.messages.recv()).await;
        match received {
            Ok(Some(publish)) => {
                let status = message::decode::<WorkerStatus>(&publish.payload);
                if matches!(status, Ok(status) if status.availability == Availability::Online) {
                    break true;
                }
            }
            Ok(None) | Err(_) => break false,
        }
    };
    watcher.close().await;
    if !online {
        bail!(
            "management did not come online within 60 s (see management.log in the run directory)"
        );
    }
    Ok(())
}

/// `count` sequential MQTT round trips through `broker`.
pub async fn mqtt_round_trips(
    broker: &BrokerAddress,
    password: &str,
    count: usize,
) -> anyhow::Result<Percentiles> {
    let mut echo = PlainClient::connect(broker, (ECHO, password), "bench-echo", PING_TOPIC).await?;
    let echo_client = echo.client.clone();
    let echoing = tokio::spawn(async move {
        while let Some(publish) = echo.messages.recv().await {
            let _ = echo_client.try_publish(PONG_TOPIC, QoS::AtLeastOnce, false, publish.payload);
        }
        echo.task.abort();
    });
    let mut ping = PlainClient::connect(broker, (PING, password), "bench-ping", PONG_TOPIC).await?;
    let mut samples = Samples::default();
    for sequence in 0..count {
        let payload = sequence.to_string().into_bytes();
        let sent = Instant::now();
        ping.client
            .try_publish(PING_TOPIC, QoS::AtLeastOnce, false, payload.clone())
            .context("cannot queue a ping")?;
        loop {
            let reply = tokio::time::timeout(ROUND_TRIP_DEADLINE, ping.messages.recv())
                .await
                .context("a ping got no answer within 5 s")?
                .context("the ping client stopped")?;
            if reply.payload.as_ref() == payload.as_slice() {
                samples.record(sent.elapsed());
                break;
            }
        }
    }
    let echo_closer = ping.client.clone();
    ping.close().await;
    drop(echo_closer);
    echoing.abort();
    Ok(samples.percentiles())
}

/// `count` sequential single-row INSERTs, each its own durable commit.
pub async fn durable_inserts(pool: &Pool, count: usize) -> anyhow::Result<Percentiles> {
    let client = pool.get().await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, at timestamptz NOT NULL);
             SET synchronous_commit = on;",
        )
        .await
        .context("cannot prepare the floor table")?;
    let insert = client
        .prepare("INSERT INTO bench_floor (at) VALUES (now())")
        .await?;
    let mut samples = Samples::default();
    for _ in 0..count {
        let started = Instant::now();
        client.execute(&insert, &[]).await?;
        samples.record(started.elapsed());
    }
    client
        .batch_execute("DROP TABLE bench_floor; RESET synchronous_commit;")
        .await?;
    Ok(samples.percentiles())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_timed_and_counted_per_authorization() {
        let floor = SignatureFloor::measure(20).unwrap();
        assert!(floor.sign_us > 0.0 && floor.verify_us > 0.0, "{floor:?}");
        let fixed = SignatureFloor {
            sign_us: 20.0,
            verify_us: 50.0,
        };
        assert_eq!(fixed.us_per_authorization(), 5.0 * 20.0 + 6.0 * 50.0);
        assert_eq!(fixed.ceiling_per_sec(2), Some(5000.0));
        assert_eq!(SignatureFloor::default().ceiling_per_sec(2), None);
    }

    #[test]
    fn the_throughput_payload_is_a_signed_scan() {
        let bytes = signed_scan_bytes().unwrap();
        let scan: Scan = message::decode(&bytes).unwrap();
        assert!(scan.signature.is_some());
        assert!((250..600).contains(&bytes.len()), "{} bytes", bytes.len());
    }
}
