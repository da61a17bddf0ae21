//! The harness of mujin's end-to-end tests: real parts, started per test.
//!
//! - [`postgres`]: one private PostgreSQL cluster per test process, a fresh database per test;
//! - [`stack`]: the `mujin-broker` process, management in-process, and helpers to book tickets;
//! - [`agent`]: real `mujin-agent` processes with real child programs;
//! - [`bookings`]: integrators enrolled for booking over MQTT ([`stack::Stack::enrol_integrator`]);
//! - [`observer`]: an MQTT client that records everything published, to assert on;
//! - [`operator`]: registered operators that sign their requests;
//! - [`proxy`]: a TCP proxy to cut one client off the broker;
//! - [`mosquitto`]: a real Mosquitto process (password file, ACL, reload), also for a whole
//!   stack ([`stack::Stack::start_on_mosquitto`]);
//! - [`tls`]: certificates made at test time, and TLS for a whole stack.

pub mod agent;
pub mod bookings;
pub mod metrics;
pub mod mosquitto;
pub mod observer;
pub mod operator;
pub mod postgres;
pub mod proxy;
pub mod stack;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

/// Path of a binary of this workspace, built by `cargo test --workspace` next to the tests.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so every binary is built",
        path.display()
    );
    path
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a process with this pid exists.
pub fn process_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Logs of the parts go to the test's output (shown for failing tests).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttc=warn,rumqttd=warn,refinery_core=warn".into()),
        )
        .try_init();
}
