//! The shared test harness: a real broker on a free port, a test MQTT client playing
//! management, and the real `mujin-agent` binary running a real program, its stdout read as the
//! customer's screen. Like management, the test client signs its commands, desired states and
//! trust lists with a command key the agent is given.

// Each test binary uses a part of the harness only.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;
use mujin_broker::{free_local_port, Broker, BrokerSettings, Credentials};
use mujin_protocol::message::{
    decode, encode, Ack, Availability, Command, CommandAction, Decision, DesiredProgram,
    DesiredState, EndReason, ReportedState, Scan, ScanResult,
};
use mujin_protocol::signed::{public_key_text, sign_command, sign_desired, sign_trust_list};
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::trust::TrustList;
use mujin_protocol::{CommandId, DeviceId, KeyId, SessionId, StoreId};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command as Process};
use tokio::sync::mpsc;

pub const DEADLINE: Duration = Duration::from_secs(10);
pub const STOP_GRACE_MS: u64 = 500;
/// How long the agents under test wait for a scan's answer before checking it offline.
pub const OFFLINE_AFTER_MS: u64 = 1_000;

/// The command key the test client signs with and the agents are given.
pub fn command_key() -> SigningKey {
    SigningKey::from_seed(KeyId::parse("c1").unwrap(), &[0x5c; 32]).unwrap()
}

/// Management's root key, which signs trust lists.
pub fn root_key() -> SigningKey {
    SigningKey::from_seed(KeyId::parse("r1").unwrap(), &[0x4f; 32]).unwrap()
}

/// A message management saw on one of the device's channels.
pub struct Seen {
    pub channel: DeviceChannel,
    pub payload: Vec<u8>,
}

pub struct Harness {
    pub broker: Option<Broker>,
    pub store: StoreId,
    pub device: DeviceId,
    pub management: AsyncClient,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    /// Messages set aside while waiting for an ack, read again before new ones.
    pub backlog: VecDeque<Seen>,
    pub agent: Child,
    pub screen: mpsc::UnboundedReceiver<String>,
    pub dir: tempfile::TempDir,
    /// The device's command epoch, raised with every command like management does.
    pub epoch: u64,
}

impl Harness {
    /// Starts a broker, a management client and the agent running `program` (a `sh -c` script
    /// that may use `$PIDFILE`).
    pub async fn start(script: &str) -> Harness {
        Harness::start_with(&["sh", "-c", script]).await
    }

    /// Like [`Harness::start`] with any program and arguments.
    pub async fn start_with(program: &[&str]) -> Harness {
        Harness::launch(program, None).await
    }

    /// Like [`Harness::start`], with `desired` retained on the broker before the agent starts
    /// (what an agent restarted mid-session finds).
    pub async fn start_after_desired(script: &str, desired: &DesiredState) -> Harness {
        Harness::launch(&["sh", "-c", script], Some(desired)).await
    }

    pub async fn launch(program: &[&str], desired: Option<&DesiredState>) -> Harness {
        let mut credentials = Credentials::new();
        credentials.insert("device", "device-secret");
        credentials.insert("management", "management-secret");
        let listen = SocketAddr::from(([127, 0, 0, 1], free_local_port().unwrap()));
        let broker = Broker::start(BrokerSettings {
            listen_v4: listen,
            listen_v5: None,
            credentials,
        })
        .await
        .unwrap();
        let addr = broker.v4_addr();
        let store = StoreId::parse("test-store").unwrap();
        let device = DeviceId::parse("pc-01").unwrap();
        let (management, mut seen) = management_client(addr, &store, &device).await;
        let mut backlog = VecDeque::new();
        if let Some(desired) = desired {
            let topic = topic::device(&store, &device, DeviceChannel::Desired);
            publish_desired(&management, &mut seen, &mut backlog, topic, desired).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let (agent, screen) = spawn_agent(addr, &store, &device, dir.path(), program);
        let mut harness = Harness {
            broker: Some(broker),
            store,
            device,
            management,
            seen,
            backlog,
            agent,
            screen,
            dir,
            epoch: desired.map_or(0, |desired| desired.epoch),
        };
        harness
            .wait_state(|state| state.availability == Availability::Online)
            .await;
        harness
    }

    pub fn topic(&self, channel: DeviceChannel) -> String {
        topic::device(&self.store, &self.device, channel)
    }

    pub fn pidfile(&self) -> PathBuf {
        self.dir.path().join("program.pid")
    }

    pub fn scan_pipe(&self) -> PathBuf {
        self.dir.path().join("scan.pipe")
    }

    pub async fn next_seen(&mut self, deadline: Instant) -> Seen {
        if let Some(seen) = self.backlog.pop_front() {
            return seen;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.seen.recv()).await {
            Ok(Some(seen)) => seen,
            Ok(None) => panic!("management client stopped"),
            Err(_) => panic!("nothing matching arrived within {DEADLINE:?}"),
        }
    }

    pub async fn wait_state(&mut self, want: impl Fn(&ReportedState) -> bool) -> ReportedState {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let seen = self.next_seen(deadline).await;
            if seen.channel == DeviceChannel::State {
                let state: ReportedState = decode(&seen.payload).unwrap();
                if want(&state) {
                    return state;
                }
            }
        }
    }

    /// Sends a command with a fresh epoch until its ack arrives.
    pub async fn command(&mut self, action: CommandAction) -> Ack {
        self.command_at(self.epoch + 1, action).await
    }

    /// Sends a command of `epoch` (again every 500 ms: the agent answers a repeated command id
    /// without acting twice) until its ack arrives.
    pub async fn command_at(&mut self, epoch: u64, action: CommandAction) -> Ack {
        self.epoch = self.epoch.max(epoch);
        let mut command = self.unsigned_command(epoch, action);
        sign_command(&command_key(), &mut command);
        self.send_command(&command).await
    }

    /// A command for this device valid for a minute, not signed yet.
    pub fn unsigned_command(&self, epoch: u64, action: CommandAction) -> Command {
        Command {
            command_id: CommandId::random(),
            issued_at: Utc::now(),
            epoch,
            store: Some(self.store.clone()),
            device: Some(self.device.clone()),
            expires_at: Some(Utc::now() + chrono::Duration::minutes(1)),
            action,
            signature: None,
        }
    }

    /// Sends `command` as it is (again every 500 ms) until its ack arrives.
    pub async fn send_command(&mut self, command: &Command) -> Ack {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.publish(DeviceChannel::Command, encode(command)).await;
            let resend = Instant::now() + Duration::from_millis(500);
            while Instant::now() < resend {
                let wait = resend.min(deadline);
                let left = wait.saturating_duration_since(Instant::now());
                let Ok(seen) = tokio::time::timeout(left, self.seen.recv()).await else {
                    break;
                };
                let seen = seen.expect("management client stopped");
                if seen.channel == DeviceChannel::Ack {
                    let ack: Ack = decode(&seen.payload).unwrap();
                    if ack.command_id == command.command_id {
                        return ack;
                    }
                }
                self.backlog.push_back(seen);
            }
            assert!(Instant::now() < deadline, "no ack within {DEADLINE:?}");
        }
    }

    /// Publishes `program` as the retained desired state with a fresh epoch, like management
    /// after a change, and returns it.
    pub async fn desire(&mut self, program: DesiredProgram) -> DesiredState {
        self.epoch += 1;
        let desired = DesiredState {
            epoch: self.epoch,
            issued_at: Utc::now(),
            store: None,
            device: None,
            program,
            signature: None,
        };
        self.publish_desired(&desired).await;
        desired
    }

    /// Publishes `desired` (retained) and waits until the broker passed it on.
    pub async fn publish_desired(&mut self, desired: &DesiredState) {
        let topic = self.topic(DeviceChannel::Desired);
        publish_desired(
            &self.management,
            &mut self.seen,
            &mut self.backlog,
            topic,
            desired,
        )
        .await;
    }

    pub async fn publish(&self, channel: DeviceChannel, payload: Vec<u8>) {
        self.management
            .publish(self.topic(channel), QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    pub async fn wait_screen(&mut self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.screen.recv()).await {
                Ok(Some(line)) if want(&line) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the agent's stdout closed"),
                Err(_) => panic!("no such screen line within {DEADLINE:?}"),
            }
        }
    }

    /// The pid the program wrote, once it exists.
    pub async fn program_pid(&self) -> Pid {
        let pidfile = self.pidfile();
        wait_until("the program wrote its pid", || {
            std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|text| text.trim().parse().ok())
        })
        .await
        .map(Pid::from_raw)
        .unwrap()
    }

    /// Writes `ticket` to the scan pipe, as the scanner would.
    pub async fn scan(&self, ticket: &str) {
        let pipe = self.scan_pipe();
        let line = format!("{ticket}\n");
        // Opening for writing blocks until the agent has the pipe open for reading.
        tokio::task::spawn_blocking(move || std::fs::write(pipe, line))
            .await
            .unwrap()
            .unwrap();
    }

    /// Waits for a scan `want` accepts; other messages are skipped.
    pub async fn wait_scan(&mut self, want: impl Fn(&Scan) -> bool) -> Scan {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let seen = self.next_seen(deadline).await;
            if seen.channel == DeviceChannel::Scan {
                let scan: Scan = decode(&seen.payload).unwrap();
                if want(&scan) {
                    return scan;
                }
            }
        }
    }

    /// Every scan published until `until`; other messages are skipped.
    pub async fn scans_until(&mut self, until: Instant) -> Vec<Scan> {
        let mut scans = Vec::new();
        while let Some(seen) = self.seen_before(until).await {
            if seen.channel == DeviceChannel::Scan {
                scans.push(decode(&seen.payload).unwrap());
            }
        }
        scans
    }

    async fn seen_before(&mut self, until: Instant) -> Option<Seen> {
        if let Some(seen) = self.backlog.pop_front() {
            return Some(seen);
        }
        let left = until.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, self.seen.recv()).await.ok()?
    }

    /// Answers a scan, like management.
    pub async fn answer(&self, scan_id: mujin_protocol::ScanId, decision: Decision) {
        let result = ScanResult { scan_id, decision };
        self.publish(DeviceChannel::ScanResult, encode(&result))
            .await;
    }

    /// `list` for this store, signed like management does.
    pub fn signed_trust(&self, list: &TrustList) -> TrustList {
        let mut list = TrustList {
            store: Some(self.store.clone()),
            ..list.clone()
        };
        sign_trust_list(&root_key(), &mut list);
        list
    }

    /// Publishes `list` as it is (no signing), retained, on the store's trust topic.
    pub async fn publish_raw_trust(&self, list: &TrustList) {
        self.management
            .publish(
                topic::trust(&self.store),
                QoS::AtLeastOnce,
                true,
                encode(list),
            )
            .await
            .unwrap();
    }

    /// Publishes the store's trust list (signed), retained, like management.
    pub async fn publish_trust(&self, list: &TrustList) {
        self.management
            .publish(
                topic::trust(&self.store),
                QoS::AtLeastOnce,
                true,
                encode(&self.signed_trust(list)),
            )
            .await
            .unwrap();
    }

    pub async fn shutdown(mut self) {
        let _ = self.agent.start_kill();
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await;
        }
    }
}

/// Publishes `desired` retained, for the device of `topic` and signed like management does, and
/// waits for the broker to echo it, so that it is certainly retained before anything else
/// happens. Other messages seen meanwhile go to `backlog`.
pub async fn publish_desired(
    management: &AsyncClient,
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    backlog: &mut VecDeque<Seen>,
    topic: String,
    desired: &DesiredState,
) {
    let mut desired = desired.clone();
    if let Ok(Topic::Device { store, device, .. }) = Topic::parse(&topic) {
        desired.store = Some(store);
        desired.device = Some(device);
    }
    sign_desired(&command_key(), &mut desired);
    let payload = encode(&desired);
    management
        .publish(topic, QoS::AtLeastOnce, true, payload.clone())
        .await
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let echo = tokio::time::timeout(left, seen.recv())
            .await
            .expect("the desired state comes back in time")
            .expect("management client stopped");
        if echo.channel == DeviceChannel::Desired && echo.payload == payload {
            return;
        }
        backlog.push_back(echo);
    }
}

pub async fn management_client(
    addr: SocketAddr,
    store: &StoreId,
    device: &DeviceId,
) -> (AsyncClient, mpsc::UnboundedReceiver<Seen>) {
    let client_id = format!("test-management-{}", free_local_port().unwrap());
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options
        .set_credentials("management", "management-secret")
        .set_keep_alive(Duration::from_secs(5));
    let (client, mut event_loop) = AsyncClient::new(options, 64);
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let filters = [
        DeviceChannel::State,
        DeviceChannel::Ack,
        DeviceChannel::Scan,
        DeviceChannel::Desired,
    ]
    .map(|channel| topic::device(store, device, channel));
    let subscriptions = filters.len();
    let subscriber = client.clone();
    tokio::spawn(async move {
        loop {
            match event_loop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for filter in &filters {
                        let _ = subscriber.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if let Ok(Topic::Device { channel, .. }) = Topic::parse(&publish.topic) {
                        let payload = publish.payload.to_vec();
                        if seen_tx.send(Seen { channel, payload }).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    for _ in 0..subscriptions {
        tokio::time::timeout(DEADLINE, ready_rx.recv())
            .await
            .expect("management subscribed in time");
    }
    (client, seen_rx)
}

pub fn spawn_agent(
    addr: SocketAddr,
    store: &StoreId,
    device: &DeviceId,
    dir: &Path,
    program: &[&str],
) -> (Child, mpsc::UnboundedReceiver<String>) {
    let mut agent = Process::new(env!("CARGO_BIN_EXE_mujin-agent"))
        .args(["--store", store.as_str(), "--device", device.as_str()])
        .args(["--broker", &addr.to_string()])
        .args(["--username", "device", "--password", "device-secret"])
        .arg("--scan-pipe")
        .arg(dir.join("scan.pipe"))
        .args(["--no-stdin", "--telemetry-interval-ms", "200"])
        .args(["--stop-grace-ms", &STOP_GRACE_MS.to_string()])
        .args(["--offline-after-ms", &OFFLINE_AFTER_MS.to_string()])
        .args([
            "--management-key",
            &public_key_text(&command_key().public_key()),
        ])
        .args(["--root-key", &public_key_text(&root_key().public_key())])
        .arg("--")
        .args(program)
        .env("PIDFILE", dir.join("program.pid"))
        // Quiet unless asked: the agent's stderr goes straight to the terminal.
        .env(
            "RUST_LOG",
            std::env::var("MUJIN_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = agent.stdout.take().unwrap();
    let (screen_tx, screen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if screen_tx.send(line).is_err() {
                return;
            }
        }
    });
    (agent, screen_rx)
}

/// Polls `check` every 20 ms until it returns something or the deadline passes.
pub async fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn alive(pid: Pid) -> bool {
    kill(pid, None::<Signal>).is_ok()
}

pub fn start(session_id: SessionId, remaining_ms: u64) -> CommandAction {
    CommandAction::Start {
        session_id,
        lease_until: Utc::now() + chrono::Duration::seconds(60),
        remaining_ms,
    }
}

pub fn stop(session_id: SessionId) -> CommandAction {
    CommandAction::Stop {
        session_id,
        reason: EndReason::Forced,
    }
}

pub const SLEEPER: &str = "echo $$ > \"$PIDFILE\"; exec sleep 60";
