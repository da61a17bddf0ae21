//! The throughput floor for a short window against the `mujin-broker` process and a private
//! PostgreSQL, as the bench starts them: messages and commits go through, and the CPU they cost
//! is read from /proc.

use std::time::Duration;

use mujin_loadgen::cpu::CpuProbe;
use mujin_loadgen::floor::throughput::{self, ThroughputFloor};
use mujin_loadgen::floor::SignatureFloor;
use mujin_loadgen::stack::{BrokerKind, Stack};

const WINDOW: Duration = Duration::from_millis(800);

/// WAL the tests' clusters recycle: enough to see it set, a fraction of a benchmark's
/// (`BENCH_WAL_MIB`), so that the suite does not write a gigabyte per cluster.
const WAL_MIB: u32 = 32;

fn positive(value: f64) -> bool {
    value > 0.0 && value.is_finite()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_commits_are_counted_with_their_cpu() {
    let broker_binary = mujin_tests::binary("mujin-broker");
    let bin_dir = broker_binary.parent().expect("the binaries' directory");
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL is started on this test's thread, which outlives it (see PrivateCluster::start).
    let stack = Stack::start(bin_dir, dir.path(), WAL_MIB).await.unwrap();
    let broker = stack.start_broker(BrokerKind::Embedded).await.unwrap();
    let cpu = CpuProbe::new(broker.pid(), None, &stack.postgres_dir(), 2);

    let mqtt = throughput::mqtt_throughput(&broker.address(), &stack.password, &cpu, WINDOW)
        .await
        .unwrap();
    let commits = throughput::durable_commits(&stack.pool, &cpu, WINDOW)
        .await
        .unwrap();

    assert!(mqtt.delivered > 0, "{mqtt:?}");
    assert!(positive(mqtt.messages_per_sec), "{mqtt:?}");
    assert!(
        positive(mqtt.broker_us),
        "the broker's CPU is read: {mqtt:?}"
    );
    assert!(positive(mqtt.client_us), "{mqtt:?}");
    assert!(positive(mqtt.publisher_us), "{mqtt:?}");
    assert!(positive(mqtt.subscriber_us), "{mqtt:?}");
    assert!(mqtt.window_secs >= WINDOW.as_secs_f64(), "{mqtt:?}");
    assert!(commits.commits > 0, "{commits:?}");
    assert!(positive(commits.commits_per_sec), "{commits:?}");
    assert!(
        positive(commits.server_us),
        "PostgreSQL's CPU is read: {commits:?}"
    );
    assert!(positive(commits.client_us), "{commits:?}");
    let table: Option<String> = stack
        .pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT to_regclass('bench_floor_commits')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(table, None, "the commit floor's table is dropped");

    let signatures = SignatureFloor::measure(20).unwrap();
    let floor = ThroughputFloor::new(mqtt, commits, &signatures, 2).per_authorization;
    assert!(positive(floor.server.total_us), "{floor:?}");
    assert!(floor.bench.total_us > floor.server.total_us, "{floor:?}");
    assert!(
        floor.server.ceiling_per_sec.is_some_and(positive),
        "{floor:?}"
    );

    broker.stop().await;
    stack.shutdown().await;
}

/// The bench's cluster is made like a running server's before anything is measured: its WAL
/// files are there to recycle, and autovacuum (which a young cluster's small tables set off
/// every minute) is left to the benchmark, which vacuums between its scenarios.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusters_wal_is_ready_for_reuse_and_vacuum_is_left_to_the_benchmark() {
    let broker_binary = mujin_tests::binary("mujin-broker");
    let bin_dir = broker_binary.parent().expect("the binaries' directory");
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(bin_dir, dir.path(), WAL_MIB).await.unwrap();
    let client = stack.pool.get().await.unwrap();
    let setting = |name: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .unwrap();
            row.get::<_, String>(0)
        }
    };
    assert_eq!(setting("min_wal_size").await, format!("{WAL_MIB}MB"));
    assert_eq!(setting("autovacuum").await, "off");
    assert_eq!(setting("log_autovacuum_min_duration").await, "0");
    drop(client);
    stack.shutdown().await;
}
