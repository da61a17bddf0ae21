//! A few virtual devices for a few seconds against a real stack (the `mujin-broker` process,
//! PostgreSQL, management): their scans are answered, sessions start and stop on time, the
//! latencies are recorded, and management's own stages of those scans are read from its metrics;
//! the database is vacuumed when the benchmark asks between scenarios, never after a step.

use std::path::PathBuf;
use std::time::Duration;

use mujin_loadgen::cpu::CpuProbe;
use mujin_loadgen::device::BrokerAddress;
use mujin_loadgen::fleet::{self, Fleet, FleetSpec};
use mujin_loadgen::stages::StageProbe;
use mujin_management::ticket_keys;
use mujin_tests::stack::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_scans_starts_and_stops() {
    let stack = Stack::start_with_metrics().await;
    let spec = FleetSpec {
        stores: 2,
        devices_per_store: 2,
        store_prefix: "smoke".into(),
    };
    let credentials = fleet::enrol(&stack.pool, &stack.pepper, &spec)
        .await
        .unwrap();
    assert_eq!(credentials.len(), 4);
    let key = ticket_keys::load(&stack.pool, &stack.dir.path().join("keys"))
        .await
        .unwrap()
        .signing;
    let broker = BrokerAddress {
        host: "127.0.0.1".into(),
        port: stack.port,
    };
    // The broker learns new identities within its reload period: connecting retries until then.
    let beat = Duration::from_millis(500);
    let mut fleet = Fleet::connect(&credentials, &broker, stack.pool.clone(), key, beat)
        .await
        .unwrap()
        .vacuum_between_scenarios();
    assert_eq!(fleet.ready(), 4);
    let heartbeats = fleet.start_telemetry(beat);

    // The broker runs in this process; PostgreSQL's data directory holds its socket directory.
    let metrics = stack.metrics_listen.expect("management's metrics");
    let cpu = CpuProbe::new(None, None, &postgres_dir(&stack.database_url), 2)
        .with_stages(StageProbe::new(metrics));
    assert!(
        cpu.sample().postgres_secs > 0.0,
        "the postmaster and its children have run the migrations"
    );
    let step = fleet.step_measured(4, 20.0, Some(&cpu)).await.unwrap();

    assert_eq!(step.started, 4, "every scan started a session: {step:?}");
    assert!(step.rejected.is_empty(), "{:?}", step.rejected);
    assert_eq!(step.latency.count, 4);
    assert!(step.latency.p50_ms > 0.0);
    assert_eq!(
        step.stopped, 4,
        "every session was stopped at its booked end"
    );
    assert_eq!(step.stop_lateness.count, 4);
    let cpu = step.cpu.expect("the scan phase was measured");
    assert_eq!(cpu.answered_scans, 4);
    assert!(cpu.phase_secs > 0.0, "{cpu:?}");
    // Management timed the four scans stage by stage; its part is within what the devices saw.
    let stages = step.stages.expect("management's stages were read");
    assert_eq!(stages.scans, 4, "{stages:?}");
    assert_eq!(stages.stages.len(), 8);
    assert!(
        stages.total_us > 0.0 && stages.total_us <= step.latency.mean_ms * 1000.0,
        "management {} µs of a mean {} ms: {stages:?}",
        stages.total_us,
        step.latency.mean_ms
    );
    assert!(
        step.stop_lateness.max_ms < 5_000.0,
        "{:?}",
        step.stop_lateness
    );
    // A step does not vacuum: an ANALYZE makes every connection of management plan its
    // statements again, which the next step's first scans would measure.
    assert_eq!(manual_vacuums(&stack).await, 0, "vacuumed after a step");
    fleet.vacuum().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while manual_vacuums(&stack).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no VACUUM (ANALYZE) between scenarios"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    heartbeats.stop().await;
    fleet.shutdown().await;
    stack.shutdown().await;
}

/// How many times the sessions table was vacuumed and analyzed by hand (not by autovacuum).
async fn manual_vacuums(stack: &Stack) -> i64 {
    let client = stack.pool.get().await.expect("a connection");
    client
        .query_one(
            "SELECT vacuum_count + analyze_count FROM pg_stat_user_tables
             WHERE relname = 'sessions'",
            &[],
        )
        .await
        .expect("the table's statistics")
        .get(0)
}

/// The private cluster's data directory: the parent of its socket directory (the URL's host).
fn postgres_dir(database_url: &str) -> PathBuf {
    let config: tokio_postgres::Config = database_url.parse().expect("a connection string");
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Unix(socket)) => {
            socket.parent().expect("a socket directory").to_owned()
        }
        other => panic!("not a private cluster's socket: {other:?}"),
    }
}
