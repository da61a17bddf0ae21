//! A few virtual devices for a few seconds against a real stack (the `mujin-broker` process,
//! PostgreSQL, management): their scans are answered, sessions start and stop on time, and
//! the latencies are recorded.

use std::time::Duration;

use mujin_loadgen::device::BrokerAddress;
use mujin_loadgen::fleet::{self, Fleet, FleetSpec};
use mujin_management::ticket_keys;
use mujin_tests::stack::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_scans_starts_and_stops() {
    let stack = Stack::start().await;
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
    let mut fleet = Fleet::connect(&credentials, &broker, stack.pool.clone(), key)
        .await
        .unwrap();
    assert_eq!(fleet.ready(), 4);
    let heartbeats = fleet.start_telemetry(Duration::from_millis(500));

    let step = fleet.step(4, 20.0).await.unwrap();

    assert_eq!(step.started, 4, "every scan started a session: {step:?}");
    assert!(step.rejected.is_empty(), "{:?}", step.rejected);
    assert_eq!(step.latency.count, 4);
    assert!(step.latency.p50_ms > 0.0);
    assert_eq!(
        step.stopped, 4,
        "every session was stopped at its booked end"
    );
    assert_eq!(step.stop_lateness.count, 4);
    assert!(
        step.stop_lateness.max_ms < 5_000.0,
        "{:?}",
        step.stop_lateness
    );
    heartbeats.stop().await;
    fleet.shutdown().await;
    stack.shutdown().await;
}
