//! The mujin device agent: one process per device that turns scanner readings into scans,
//! starts and stops the device's operating program on management's commands, stops it by
//! itself when its lease runs out (even with the network gone), and reports state and telemetry.
//!
//! Each reading is sent again until management answers it. When no answer comes within the
//! offline-after time, the device checks the ticket itself against the store's retained trust
//! list and, where the store allows it, starts a provisional session that management's answer
//! to the scan later confirms or stops.
//!
//! Given its device key (`--device-key`), the agent signs every scan, state (its last will
//! included), telemetry report and ack it publishes; management refuses device messages not
//! signed with the device's own key, so without it the agent says so once at startup.
//!
//! Given management's root key (`--root-key`), the agent uses only trust lists signed with it;
//! without it, it uses none (and so never starts offline).
//!
//! Given management's public key (`--management-key`), the agent acts only on commands and
//! desired states signed with it and meant for this device (and, for a command, not
//! expired); a refused command is answered `rejected: …`. Without it, anything well-formed is
//! acted on, which the agent says once at startup.
//!
//! Commands carry an epoch: one older than the newest seen (in a command or a desired state) is
//! refused as stale. Management's retained desired state is converged to on every
//! (re)subscription, so an agent restarted mid-session resumes it, and a stop lost while the
//! device was offline still happens; a session that already ended here is never restarted.
//!
//! - [`cli`]: the `mujin-agent` command line, also callable from another binary;
//! - [`desired`]: the epoch fence and the pure desired-state convergence decision;
//! - [`mqtt`]: the connection task (poll, resubscribe, back off, forward);
//! - [`offline`]: the pure offline-start decision and the merge with management's answer;
//! - [`pending`]: the scans waiting for an answer and their resend schedule;
//! - [`program`]: the program supervisor and its pure start/stop/lease decisions;
//! - [`scanner`]: the scanner readers: stdin, a named pipe, a serial tty, a grabbed input device;
//! - [`screen`]: the customer-facing lines on stdout;
//! - `agent`: the state and reactions driven by [`run`]'s single `select!` loop.

mod agent;
pub mod cli;
pub mod desired;
pub mod mqtt;
pub mod offline;
pub mod pending;
pub mod program;
pub mod scanner;
pub mod screen;

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use std::sync::Arc;

use mujin_protocol::device_auth::DeviceKey;
use mujin_protocol::message::ReportedState;
use mujin_protocol::ticket::PublicKey;
use mujin_protocol::{DeviceId, StoreId};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

pub use cli::{cli_main, Args};

/// Everything one agent needs to run.
#[derive(Clone)]
pub struct Settings {
    pub store: StoreId,
    pub device: DeviceId,
    pub broker_host: String,
    pub broker_port: u16,
    pub username: String,
    pub password: String,
    /// The operating program and its arguments.
    pub program: OsString,
    pub args: Vec<OsString>,
    /// A named pipe to read scans from (created if missing).
    pub scan_pipe: Option<PathBuf>,
    /// Whether scans are also read from stdin.
    pub read_stdin: bool,
    /// A serial QR scanner (a tty) to read scans from.
    pub scan_serial: Option<scanner::serial::SerialScanner>,
    /// A Linux input device (a keyboard-wedge scanner) to grab and read scans from.
    pub scan_evdev: Option<PathBuf>,
    pub telemetry_interval: Duration,
    /// How long a program gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// How long a scan may go unanswered before the device checks the ticket offline.
    pub offline_after: Duration,
    /// The same code read again within this time is not a new scan (zero: every reading is).
    pub repeat_window: Duration,
    /// Management's command key: when set, only what it signed is acted on.
    pub management_key: Option<PublicKey>,
    /// Management's root key: only trust lists signed with it are used; without it none is, and
    /// the device never starts a session offline.
    pub root_key: Option<PublicKey>,
    /// The device's own key, which signs what the agent publishes (its `Debug` shows only the
    /// key id).
    pub device_key: Option<Arc<DeviceKey>>,
    /// TLS to the broker (its certificate checked against a CA); plain MQTT without it.
    pub tls: Option<mujin_transport::TlsSettings>,
}

impl fmt::Debug for Settings {
    // By hand so that the password never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("store", &self.store)
            .field("device", &self.device)
            .field("broker_host", &self.broker_host)
            .field("broker_port", &self.broker_port)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("scan_pipe", &self.scan_pipe)
            .field("read_stdin", &self.read_stdin)
            .field("scan_serial", &self.scan_serial)
            .field("scan_evdev", &self.scan_evdev)
            .field("telemetry_interval", &self.telemetry_interval)
            .field("stop_grace", &self.stop_grace)
            .field("offline_after", &self.offline_after)
            .field("repeat_window", &self.repeat_window)
            .field(
                "management_key",
                &self
                    .management_key
                    .as_ref()
                    .map(mujin_protocol::signed::public_key_text),
            )
            .field(
                "root_key",
                &self
                    .root_key
                    .as_ref()
                    .map(mujin_protocol::signed::public_key_text),
            )
            .field("device_key", &self.device_key)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Runs the agent until `shutdown` completes, then stops the program, reports the device
/// offline and disconnects.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let (scans_tx, mut scans) = mpsc::channel::<String>(64);
    if settings.read_stdin {
        scanner::spawn_stdin_reader(scans_tx.clone()).context("cannot read scans from stdin")?;
    }
    if let Some(path) = &settings.scan_pipe {
        scanner::ensure_fifo(path)?;
        scanner::spawn_pipe_reader(path.clone(), scans_tx.clone())
            .context("cannot read scans from the pipe")?;
    }
    if let Some(serial) = &settings.scan_serial {
        scanner::serial::spawn_serial_reader(serial.clone(), scans_tx.clone())
            .context("cannot read scans from the serial scanner")?;
    }
    if let Some(path) = &settings.scan_evdev {
        scanner::input::spawn_input_reader(path.clone(), scans_tx.clone());
    }
    drop(scans_tx);

    // Signed now, once: the broker publishes it for us whenever the connection drops.
    let mut last_will = ReportedState::offline();
    if let Some(key) = &settings.device_key {
        key.sign(&settings.store, &settings.device, &mut last_will);
    }
    // Read once, before anything runs: a bad certificate file is a configuration error.
    let transport = mujin_transport::transport(settings.tls.as_ref())
        .context("cannot set up TLS to the broker")?;
    let (link, mut link_events) = mqtt::Link::start(&mqtt::LinkSettings {
        store: settings.store.clone(),
        device: settings.device.clone(),
        host: settings.broker_host.clone(),
        port: settings.broker_port,
        username: settings.username.clone(),
        password: settings.password.clone(),
        last_will,
        transport,
    });
    let supervisor = program::Supervisor::new(
        program::ProgramSpec {
            program: settings.program.clone(),
            args: settings.args.clone(),
            store: settings.store.clone(),
            device: settings.device.clone(),
        },
        settings.stop_grace,
    );
    let mut agent = agent::Agent::new(&settings, link, supervisor);
    let mut telemetry =
        tokio::time::interval(settings.telemetry_interval.max(Duration::from_millis(10)));
    telemetry.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    tracing::info!("agent running");

    loop {
        let lease_deadline = agent.supervisor.lease_deadline();
        let scans_deadline = agent.pending_deadline();
        tokio::select! {
            () = &mut shutdown => break,
            Some(event) = link_events.recv() => agent.on_link_event(event).await,
            Some(ticket) = scans.recv() => agent.on_scanned(ticket),
            status = agent.supervisor.exited() => agent.on_program_exit(status),
            () = sleep_until(lease_deadline) => agent.on_lease_end().await,
            () = sleep_until(scans_deadline) => agent.on_scans_due(),
            _ = telemetry.tick() => agent.on_telemetry_tick(),
        }
    }
    tracing::info!("agent shutting down");
    agent.shut_down().await;
    Ok(())
}

/// Sleeps until the deadline, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
