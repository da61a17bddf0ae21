//! The floor on throughput, measured in the same run on the same broker and database: how many
//! QoS 1 messages per second the broker carries from a few publishers to one subscriber, how
//! many durable commits per second PostgreSQL makes over management's number of connections,
//! and the CPU each message and commit costs the server and its clients. With the counts of
//! [`super::per_authorization`] they give the least CPU an authorization can cost here.
//!
//! The publishers and the subscriber each run on a thread of their own (a current-thread
//! runtime), so that /proc tells the sending side's CPU from the receiving side's.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use deadpool_postgres::Pool;
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::per_authorization::AuthorizationFloor;
use super::{PlainClient, SignatureFloor};
use crate::cpu::{CpuProbe, CpuTimes};
use crate::device::BrokerAddress;
use crate::stack::{current_thread_id, thread_cpu_secs, ECHO, PING};

/// Publisher `n` publishes to `bench/floor/flow/<n>`, and the subscriber takes them all with one
/// wildcard, as management does the devices' topics. Not mujin topics: nothing of mujin
/// subscribes to them.
const FLOW_TOPIC: &str = "bench/floor/flow";
const FLOW_FILTER: &str = "bench/floor/flow/+";
/// What the publishers subscribe to: nothing is published there.
const IDLE_FILTER: &str = "bench/floor/idle";
/// Publishing connections, each its own client.
pub const PUBLISHERS: usize = 4;
/// Messages published and not yet delivered, across the publishers. The broker never holds
/// more, so it never drops a message for a slow subscriber (rumqttd keeps a bounded log per
/// topic), and its CPU goes to messages that are delivered.
pub const MAX_UNDELIVERED: usize = 400;
/// Durable commits run over as many connections as management handles messages at once.
pub const COMMIT_CONNECTIONS: usize = mujin_management::lanes::LANES;
/// Publishing and committing run this long before the window opens, so that connecting and
/// preparing are not in it.
pub const WARM_UP: Duration = Duration::from_millis(250);

/// The throughput floor and what it makes of an authorization.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ThroughputFloor {
    pub mqtt: MqttThroughput,
    pub commits: CommitThroughput,
    pub per_authorization: AuthorizationFloor,
}

impl ThroughputFloor {
    pub fn new(
        mqtt: MqttThroughput,
        commits: CommitThroughput,
        signatures: &SignatureFloor,
        cores: usize,
    ) -> ThroughputFloor {
        ThroughputFloor {
            mqtt,
            commits,
            per_authorization: AuthorizationFloor::new(signatures, &mqtt, &commits, cores),
        }
    }
}

/// QoS 1 messages from [`PUBLISHERS`] clients through the broker to one subscriber over a
/// window, and their CPU per delivered message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MqttThroughput {
    pub window_secs: f64,
    pub publishers: usize,
    /// Each message's payload: a signed scan as a device sends it.
    pub payload_bytes: usize,
    /// Messages the subscriber received in the window.
    pub delivered: u64,
    pub messages_per_sec: f64,
    /// The broker process's CPU per delivered message.
    pub broker_us: f64,
    /// This process's CPU per delivered message: both clients' sides and everything else it
    /// did meanwhile.
    pub client_us: f64,
    /// The publishers' thread: the sending side of one message.
    pub publisher_us: f64,
    /// The subscriber's thread: the receiving side of one message.
    pub subscriber_us: f64,
}

/// Single-row INSERTs, each its own durable commit, over [`COMMIT_CONNECTIONS`] connections
/// for a window, and their CPU per commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CommitThroughput {
    pub window_secs: f64,
    pub connections: usize,
    pub commits: u64,
    pub commits_per_sec: f64,
    /// PostgreSQL's CPU (the postmaster and its children) per commit.
    pub server_us: f64,
    /// This process's CPU per commit (tokio-postgres's side).
    pub client_us: f64,
}

/// Work counted and CPU read at one instant.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    count: u64,
    cpu: CpuTimes,
    /// The publishers' and the subscriber's threads (MQTT only).
    sides_secs: (f64, f64),
}

impl Reading {
    fn take(count: &AtomicU64, cpu: &CpuProbe, sides: Option<(u32, u32)>) -> Reading {
        let thread = |tid| thread_cpu_secs(tid).unwrap_or(0.0);
        Reading {
            at: Instant::now(),
            count: count.load(Ordering::Relaxed),
            cpu: cpu.sample(),
            sides_secs: sides.map_or((0.0, 0.0), |(a, b)| (thread(a), thread(b))),
        }
    }
}

/// Microseconds per unit of work; `None` without work (nothing to divide by).
fn per_unit_us(secs: f64, count: u64) -> Option<f64> {
    (count > 0).then(|| secs.max(0.0) * 1e6 / count as f64)
}

impl MqttThroughput {
    /// From the readings at the window's start and end; `None` when nothing was delivered.
    fn between(start: &Reading, end: &Reading, payload_bytes: usize) -> Option<MqttThroughput> {
        let delivered = end.count.saturating_sub(start.count);
        let window_secs = (end.at - start.at).as_secs_f64();
        let spent = end.cpu.since(&start.cpu);
        Some(MqttThroughput {
            window_secs,
            publishers: PUBLISHERS,
            payload_bytes,
            delivered,
            messages_per_sec: delivered as f64 / window_secs,
            broker_us: per_unit_us(spent.broker_secs, delivered)?,
            client_us: per_unit_us(spent.loadgen_secs, delivered)?,
            publisher_us: per_unit_us(end.sides_secs.0 - start.sides_secs.0, delivered)?,
            subscriber_us: per_unit_us(end.sides_secs.1 - start.sides_secs.1, delivered)?,
        })
    }
}

impl CommitThroughput {
    /// From the readings at the window's start and end; `None` when nothing was committed.
    fn between(start: &Reading, end: &Reading) -> Option<CommitThroughput> {
        let commits = end.count.saturating_sub(start.count);
        let window_secs = (end.at - start.at).as_secs_f64();
        let spent = end.cpu.since(&start.cpu);
        Some(CommitThroughput {
            window_secs,
            connections: COMMIT_CONNECTIONS,
            commits,
            commits_per_sec: commits as f64 / window_secs,
            server_us: per_unit_us(spent.postgres_secs, commits)?,
            client_us: per_unit_us(spent.loadgen_secs, commits)?,
        })
    }
}

/// Messages delivered so far, and room for more: a permit per message that may be published
/// before an earlier one is delivered.
struct Flow {
    delivered: AtomicU64,
    room: Semaphore,
}

impl Flow {
    fn new() -> Flow {
        Flow {
            delivered: AtomicU64::new(0),
            room: Semaphore::new(MAX_UNDELIVERED),
        }
    }

    fn deliver(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.room.add_permits(1);
    }
}

/// Measures the MQTT part of the floor through `broker`, whose CPU `cpu` reads.
pub async fn mqtt_throughput(
    broker: &BrokerAddress,
    password: &str,
    cpu: &CpuProbe,
    window: Duration,
) -> anyhow::Result<MqttThroughput> {
    let payload = super::signed_scan_bytes()?;
    let payload_bytes = payload.len();
    let flow = Arc::new(Flow::new());
    let stop = CancellationToken::new();
    let login = (broker.clone(), password.to_owned());
    let subscriber = Side::spawn("bench-flow-sink", {
        let (login, flow, stop) = (login.clone(), flow.clone(), stop.clone());
        move |ready| receive(login, flow, stop, ready)
    })
    .await?;
    let measured = async {
        let publishers = Side::spawn("bench-flow-publish", {
            let (flow, stop) = (flow.clone(), stop.clone());
            move |ready| publish(login, payload, flow, stop, ready)
        })
        .await?;
        let sides = Some((publishers.tid, subscriber.tid));
        tokio::time::sleep(WARM_UP).await;
        let start = Reading::take(&flow.delivered, cpu, sides);
        tokio::time::sleep(window).await;
        let end = Reading::take(&flow.delivered, cpu, sides);
        stop.cancel();
        publishers.join().await?;
        anyhow::Ok((start, end))
    }
    .await;
    stop.cancel();
    let received = subscriber.join().await;
    let (start, end) = measured?;
    received?;
    MqttThroughput::between(&start, &end, payload_bytes)
        .context("no message went through the broker in the window")
}

/// One side of the MQTT measurement: a thread with its own runtime.
struct Side {
    name: &'static str,
    tid: u32,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

/// Said by a side once its clients are connected: its thread id.
struct Ready(oneshot::Sender<u32>, u32);

impl Ready {
    fn signal(self) {
        let _ = self.0.send(self.1);
    }
}

impl Side {
    /// Runs `body` on a new thread and waits until it is ready (or has failed).
    async fn spawn<F, Fut>(name: &'static str, body: F) -> anyhow::Result<Side>
    where
        F: FnOnce(Ready) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let (ready_tx, ready) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let tid = current_thread_id().context("this thread's id is not in /proc")?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start a runtime")?;
                runtime.block_on(body(Ready(ready_tx, tid)))
            })
            .with_context(|| format!("cannot start the {name} thread"))?;
        match ready.await {
            Ok(tid) => Ok(Side { name, tid, thread }),
            // Dropped unsent: the body ended, with its error.
            Err(_) => {
                let side = Side {
                    name,
                    tid: 0,
                    thread,
                };
                side.join().await?;
                Err(anyhow!("{name} stopped before it was ready"))
            }
        }
    }

    async fn join(self) -> anyhow::Result<()> {
        let name = self.name;
        tokio::task::spawn_blocking(move || self.thread.join())
            .await
            .context("cannot wait for a thread")?
            .map_err(|_| anyhow!("the {name} thread panicked"))?
            .with_context(|| format!("{name} failed"))
    }
}

/// The subscriber: counts what it receives until `stop`.
async fn receive(
    (broker, password): (BrokerAddress, String),
    flow: Arc<Flow>,
    stop: CancellationToken,
    ready: Ready,
) -> anyhow::Result<()> {
    let mut sink =
        PlainClient::connect(&broker, (ECHO, &password), "bench-flow-sink", FLOW_FILTER).await?;
    ready.signal();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            received = sink.messages.recv() => match received {
                Some(_) => flow.deliver(),
                None => break,
            },
        }
    }
    sink.close().await;
    Ok(())
}

/// The publishers: each publishes as fast as the flow's room allows until `stop`.
async fn publish(
    (broker, password): (BrokerAddress, String),
    payload: Vec<u8>,
    flow: Arc<Flow>,
    stop: CancellationToken,
    ready: Ready,
) -> anyhow::Result<()> {
    let mut clients = Vec::with_capacity(PUBLISHERS);
    for n in 0..PUBLISHERS {
        let client_id = format!("bench-flow-{n}");
        clients
            .push(PlainClient::connect(&broker, (PING, &password), &client_id, IDLE_FILTER).await?);
    }
    ready.signal();
    let sending = clients.iter().enumerate().map(|(n, publisher)| {
        let topic = format!("{FLOW_TOPIC}/{n}");
        publish_until_stopped(&publisher.client, topic, &payload, &flow, &stop)
    });
    let sent = futures::future::try_join_all(sending).await;
    futures::future::join_all(clients.into_iter().map(PlainClient::close)).await;
    sent.map(drop)
}

async fn publish_until_stopped(
    client: &AsyncClient,
    topic: String,
    payload: &[u8],
    flow: &Flow,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let room = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            room = flow.room.acquire() => room.context("the flow was closed")?,
        };
        // Given back by the subscriber when a message arrives.
        room.forget();
        let publishing = client.publish(topic.clone(), QoS::AtLeastOnce, false, payload.to_vec());
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            published = publishing => published.context("cannot queue a message")?,
        }
    }
}

/// Measures the database part of the floor: commits over [`COMMIT_CONNECTIONS`] connections
/// of `pool`, PostgreSQL's CPU read by `cpu`.
pub async fn durable_commits(
    pool: &Pool,
    cpu: &CpuProbe,
    window: Duration,
) -> anyhow::Result<CommitThroughput> {
    let client = pool.get().await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS bench_floor_commits (id bigserial PRIMARY KEY, at timestamptz NOT NULL)",
        )
        .await
        .context("cannot prepare the commit floor's table")?;
    let commits = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let committers: Vec<_> = (0..COMMIT_CONNECTIONS)
        .map(|_| {
            tokio::spawn(commit_until_stopped(
                pool.clone(),
                commits.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(WARM_UP).await;
    let start = Reading::take(&commits, cpu, None);
    tokio::time::sleep(window).await;
    let end = Reading::take(&commits, cpu, None);
    stop.cancel();
    let committed = futures::future::join_all(committers).await;
    client
        .batch_execute("DROP TABLE bench_floor_commits")
        .await
        .context("cannot drop the commit floor's table")?;
    for committer in committed {
        committer.context("a committer panicked")??;
    }
    CommitThroughput::between(&start, &end).context("nothing was committed in the window")
}

/// Commits single-row INSERTs one after the other on a connection of its own until `stop`.
async fn commit_until_stopped(
    pool: Pool,
    commits: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let client = pool
        .get()
        .await
        .context("no connection for the commit floor")?;
    // Durable like management's commits, whatever the server's default.
    client.batch_execute("SET synchronous_commit = on").await?;
    let insert = client
        .prepare("INSERT INTO bench_floor_commits (at) VALUES (now())")
        .await?;
    while !stop.is_cancelled() {
        client.execute(&insert, &[]).await?;
        commits.fetch_add(1, Ordering::Relaxed);
    }
    client.batch_execute("RESET synchronous_commit").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: Instant, count: u64, cpu: CpuTimes, sides_secs: (f64, f64)) -> Reading {
        Reading {
            at,
            count,
            cpu,
            sides_secs,
        }
    }

    #[test]
    fn messages_and_their_cpu_are_counted_over_the_window() {
        let at = Instant::now();
        let before = CpuTimes {
            broker_secs: 1.0,
            loadgen_secs: 2.0,
            ..CpuTimes::default()
        };
        let after = CpuTimes {
            broker_secs: 1.5,
            loadgen_secs: 3.0,
            ..CpuTimes::default()
        };
        let start = reading(at, 1_000, before, (0.5, 0.25));
        let end = reading(at + Duration::from_secs(2), 21_000, after, (0.8, 0.75));
        let mqtt = MqttThroughput::between(&start, &end, 300).unwrap();
        assert_eq!(mqtt.delivered, 20_000);
        assert!((mqtt.messages_per_sec - 10_000.0).abs() < 1e-6, "{mqtt:?}");
        assert!((mqtt.broker_us - 25.0).abs() < 1e-9, "{mqtt:?}");
        assert!((mqtt.client_us - 50.0).abs() < 1e-9, "{mqtt:?}");
        assert!((mqtt.publisher_us - 15.0).abs() < 1e-9, "{mqtt:?}");
        assert!((mqtt.subscriber_us - 25.0).abs() < 1e-9, "{mqtt:?}");
        assert_eq!((mqtt.publishers, mqtt.payload_bytes), (PUBLISHERS, 300));
        assert_eq!(MqttThroughput::between(&start, &start, 300), None);
    }

    #[test]
    fn commits_and_their_cpu_are_counted_over_the_window() {
        let at = Instant::now();
        let before = CpuTimes {
            postgres_secs: 10.0,
            loadgen_secs: 1.0,
            ..CpuTimes::default()
        };
        let after = CpuTimes {
            postgres_secs: 10.6,
            loadgen_secs: 1.1,
            ..CpuTimes::default()
        };
        let start = reading(at, 50, before, (0.0, 0.0));
        let end = reading(at + Duration::from_millis(500), 1_050, after, (0.0, 0.0));
        let commits = CommitThroughput::between(&start, &end).unwrap();
        assert_eq!(commits.commits, 1_000);
        assert!(
            (commits.commits_per_sec - 2_000.0).abs() < 1e-6,
            "{commits:?}"
        );
        assert!((commits.server_us - 600.0).abs() < 1e-6, "{commits:?}");
        assert!((commits.client_us - 100.0).abs() < 1e-6, "{commits:?}");
        assert_eq!(commits.connections, COMMIT_CONNECTIONS);
    }

    #[test]
    fn the_flow_gives_room_back_as_messages_arrive() {
        let flow = Flow::new();
        let taken = flow.room.try_acquire_many(MAX_UNDELIVERED as u32).unwrap();
        taken.forget();
        assert!(flow.room.try_acquire().is_err(), "no room left");
        flow.deliver();
        assert_eq!(flow.delivered.load(Ordering::Relaxed), 1);
        assert!(flow.room.try_acquire().is_ok());
    }
}
