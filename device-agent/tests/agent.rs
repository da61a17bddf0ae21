//! The real `mujin-agent` binary against a real broker, with the test acting as management:
//! commands and their epochs, the retained desired state, warnings and extensions, acks,
//! reported state, the lease, scans from the named pipe, and shutdown.

// Helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use mujin_broker::{free_local_port, Broker, BrokerSettings, Credentials};
use mujin_protocol::message::{
    decode, encode, Ack, Availability, Command, CommandAction, Decision, DesiredProgram,
    DesiredState, EndReason, ProgramStatus, RejectReason, ReportedState, Scan, ScanResult,
    StopCause,
};
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::{CommandId, DeviceId, SessionId, StoreId};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command as Process};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(10);
const STOP_GRACE_MS: u64 = 500;

/// A message management saw on one of the device's channels.
struct Seen {
    channel: DeviceChannel,
    payload: Vec<u8>,
}

struct Harness {
    broker: Option<Broker>,
    store: StoreId,
    device: DeviceId,
    management: AsyncClient,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Messages set aside while waiting for an ack, read again before new ones.
    backlog: VecDeque<Seen>,
    agent: Child,
    screen: mpsc::UnboundedReceiver<String>,
    dir: tempfile::TempDir,
    /// The device's command epoch, raised with every command like management does.
    epoch: u64,
}

impl Harness {
    /// Starts a broker, a management client and the agent running `program` (a `sh -c` script
    /// that may use `$PIDFILE`).
    async fn start(script: &str) -> Harness {
        Harness::start_with(&["sh", "-c", script]).await
    }

    /// Like [`Harness::start`] with any program and arguments.
    async fn start_with(program: &[&str]) -> Harness {
        Harness::launch(program, None).await
    }

    /// Like [`Harness::start`], with `desired` retained on the broker before the agent starts
    /// (what an agent restarted mid-session finds).
    async fn start_after_desired(script: &str, desired: &DesiredState) -> Harness {
        Harness::launch(&["sh", "-c", script], Some(desired)).await
    }

    async fn launch(program: &[&str], desired: Option<&DesiredState>) -> Harness {
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

    fn topic(&self, channel: DeviceChannel) -> String {
        topic::device(&self.store, &self.device, channel)
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.path().join("program.pid")
    }

    fn scan_pipe(&self) -> PathBuf {
        self.dir.path().join("scan.pipe")
    }

    async fn next_seen(&mut self, deadline: Instant) -> Seen {
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

    async fn wait_state(&mut self, want: impl Fn(&ReportedState) -> bool) -> ReportedState {
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
    async fn command(&mut self, action: CommandAction) -> Ack {
        self.command_at(self.epoch + 1, action).await
    }

    /// Sends a command of `epoch` (again every 500 ms: the agent answers a repeated command id
    /// without acting twice) until its ack arrives.
    async fn command_at(&mut self, epoch: u64, action: CommandAction) -> Ack {
        self.epoch = self.epoch.max(epoch);
        let command = Command {
            command_id: CommandId::random(),
            issued_at: Utc::now(),
            epoch,
            action,
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.publish(DeviceChannel::Command, encode(&command)).await;
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
    async fn desire(&mut self, program: DesiredProgram) -> DesiredState {
        self.epoch += 1;
        let desired = DesiredState {
            epoch: self.epoch,
            issued_at: Utc::now(),
            program,
        };
        self.publish_desired(&desired).await;
        desired
    }

    /// Publishes `desired` (retained) and waits until the broker passed it on.
    async fn publish_desired(&mut self, desired: &DesiredState) {
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

    async fn publish(&self, channel: DeviceChannel, payload: Vec<u8>) {
        self.management
            .publish(self.topic(channel), QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    async fn wait_screen(&mut self, want: impl Fn(&str) -> bool) -> String {
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
    async fn program_pid(&self) -> Pid {
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

    async fn shutdown(mut self) {
        let _ = self.agent.start_kill();
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await;
        }
    }
}

/// Publishes `desired` retained and waits for the broker to echo it, so that it is certainly
/// retained before anything else happens. Other messages seen meanwhile go to `backlog`.
async fn publish_desired(
    management: &AsyncClient,
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    backlog: &mut VecDeque<Seen>,
    topic: String,
    desired: &DesiredState,
) {
    let payload = encode(desired);
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

async fn management_client(
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

fn spawn_agent(
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
async fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: Pid) -> bool {
    kill(pid, None::<Signal>).is_ok()
}

fn start(session_id: SessionId, remaining_ms: u64) -> CommandAction {
    CommandAction::Start {
        session_id,
        lease_until: Utc::now() + chrono::Duration::seconds(60),
        remaining_ms,
    }
}

fn stop(session_id: SessionId) -> CommandAction {
    CommandAction::Stop {
        session_id,
        reason: EndReason::Forced,
    }
}

const SLEEPER: &str = "echo $$ > \"$PIDFILE\"; exec sleep 60";

#[tokio::test]
async fn start_and_stop_commands_run_and_end_the_program() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();

    let ack = harness.command(start(session, 60_000)).await;
    assert!(ack.ok, "{ack:?}");
    let state = harness
        .wait_state(|state| matches!(state.program, ProgramStatus::Running { .. }))
        .await;
    assert!(
        matches!(state.program, ProgramStatus::Running { session_id, .. } if session_id == session)
    );
    let pid = harness.program_pid().await;
    assert!(alive(pid));

    let again = harness.command(start(session, 60_000)).await;
    assert!(again.ok && again.detail == "already running", "{again:?}");
    let other = harness.command(start(SessionId::random(), 60_000)).await;
    assert!(!other.ok && other.detail.contains("busy"), "{other:?}");

    let ack = harness.command(stop(session)).await;
    assert!(ack.ok, "{ack:?}");
    assert!(!alive(pid), "the program still runs after the stop ack");
    let state = harness
        .wait_state(|state| state.program == ProgramStatus::Idle && state.last_exit.is_some())
        .await;
    let exit = state.last_exit.unwrap();
    assert_eq!(
        (exit.session_id, exit.stopped_by),
        (session, StopCause::Command)
    );
    assert_eq!(exit.exit, "signal 15 (SIGTERM)");

    let again = harness.command(stop(session)).await;
    assert!(again.ok && again.detail == "not running", "{again:?}");
    harness.shutdown().await;
}

#[tokio::test]
async fn the_lease_stops_the_program_without_a_stop_command() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();
    let started = Instant::now();
    let ack = harness.command(start(session, 1_500)).await;
    assert!(ack.ok, "{ack:?}");
    let pid = harness.program_pid().await;

    let state = harness.wait_state(|state| state.last_exit.is_some()).await;
    let exit = state.last_exit.unwrap();
    assert_eq!(exit.stopped_by, StopCause::LeaseExpired);
    assert_eq!(state.program, ProgramStatus::Idle);
    assert!(started.elapsed() >= Duration::from_millis(1_400));
    assert!(!alive(pid));
    harness.wait_screen(|line| line == "LEASE ENDED").await;

    let late = harness.command(start(SessionId::random(), 0)).await;
    assert!(!late.ok && late.detail == "lease already ended", "{late:?}");
    harness.shutdown().await;
}

#[tokio::test]
async fn the_lease_holds_with_the_broker_gone() {
    let mut harness = Harness::start(SLEEPER).await;
    let ack = harness.command(start(SessionId::random(), 1_500)).await;
    assert!(ack.ok, "{ack:?}");
    let pid = harness.program_pid().await;
    if let Some(broker) = harness.broker.take() {
        broker.shutdown().await;
    }
    assert!(alive(pid));
    harness.wait_screen(|line| line == "LEASE ENDED").await;
    assert!(!alive(pid));
    harness.shutdown().await;
}

#[tokio::test]
async fn lines_on_the_pipe_become_scans_and_results_reach_the_screen() {
    let mut harness = Harness::start(SLEEPER).await;
    let pipe = harness.scan_pipe();
    // Opening for writing blocks until the agent has the pipe open for reading.
    tokio::task::spawn_blocking(move || std::fs::write(pipe, b"\n  MJ1:TEST-TICKET  \n"))
        .await
        .unwrap()
        .unwrap();

    let deadline = Instant::now() + DEADLINE;
    let scan: Scan = loop {
        let seen = harness.next_seen(deadline).await;
        if seen.channel == DeviceChannel::Scan {
            break decode(&seen.payload).unwrap();
        }
    };
    assert_eq!(scan.ticket, "MJ1:TEST-TICKET");
    let shown = format!("SCANNED {}", scan.scan_id);
    harness.wait_screen(|line| line == shown).await;

    let result = ScanResult {
        scan_id: scan.scan_id,
        decision: Decision::Rejected {
            reason: RejectReason::TooEarly,
            detail: String::new(),
        },
    };
    harness
        .publish(DeviceChannel::ScanResult, b"not json".to_vec())
        .await;
    harness
        .publish(DeviceChannel::ScanResult, encode(&result))
        .await;
    harness
        .wait_screen(|line| {
            line == "REFUSED (too_early): Too early: your booking has not started yet."
        })
        .await;
    harness.shutdown().await;
}

#[tokio::test]
async fn malformed_commands_are_ignored() {
    let mut harness = Harness::start(SLEEPER).await;
    for garbage in [&b"{not json"[..], b"{}", &[0xff; 100], b"\"start\""] {
        harness
            .publish(DeviceChannel::Command, garbage.to_vec())
            .await;
    }
    let ack = harness.command(stop(SessionId::random())).await;
    assert!(ack.ok && ack.detail == "not running", "{ack:?}");
    assert!(
        harness.agent.try_wait().unwrap().is_none(),
        "the agent exited"
    );
    harness.shutdown().await;
}

#[tokio::test]
async fn a_program_ignoring_sigterm_is_killed_after_the_grace() {
    let mut harness = Harness::start("trap '' TERM; echo $$ > \"$PIDFILE\"; exec sleep 60").await;
    let session = SessionId::random();
    assert!(harness.command(start(session, 60_000)).await.ok);
    let pid = harness.program_pid().await;

    let asked = Instant::now();
    let ack = harness.command(stop(session)).await;
    assert!(ack.ok, "{ack:?}");
    assert!(asked.elapsed() >= Duration::from_millis(STOP_GRACE_MS));
    assert!(!alive(pid));
    let state = harness.wait_state(|state| state.last_exit.is_some()).await;
    assert_eq!(state.last_exit.unwrap().exit, "signal 9 (SIGKILL)");
    harness.shutdown().await;
}

#[tokio::test]
async fn sigterm_stops_the_program_and_reports_offline() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();
    assert!(harness.command(start(session, 60_000)).await.ok);
    let pid = harness.program_pid().await;

    let agent_pid = Pid::from_raw(i32::try_from(harness.agent.id().unwrap()).unwrap());
    kill(agent_pid, Signal::SIGTERM).unwrap();
    let state = harness
        .wait_state(|state| state.availability == Availability::Offline)
        .await;
    let exit = state
        .last_exit
        .expect("the offline state tells how the program ended");
    assert_eq!(
        (exit.session_id, exit.stopped_by),
        (session, StopCause::AgentShutdown)
    );
    assert!(!alive(pid));
    let status = tokio::time::timeout(DEADLINE, harness.agent.wait())
        .await
        .expect("the agent exits in time")
        .unwrap();
    assert!(status.success(), "{status}");
    harness.shutdown().await;
}

#[tokio::test]
async fn a_program_that_ends_by_itself_is_reported() {
    let mut harness = Harness::start("exit 3").await;
    let session = SessionId::random();
    assert!(harness.command(start(session, 60_000)).await.ok);
    let state = harness.wait_state(|state| state.last_exit.is_some()).await;
    assert_eq!(state.program, ProgramStatus::Idle);
    let exit = state.last_exit.unwrap();
    assert_eq!(
        (exit.session_id, exit.stopped_by, exit.exit.as_str()),
        (session, StopCause::ProgramExited, "exit code 3")
    );
    harness.shutdown().await;
}

#[tokio::test]
async fn a_program_that_cannot_start_gets_a_refusing_ack() {
    let mut harness = Harness::start_with(&["/nonexistent/mujin-program"]).await;
    let ack = harness.command(start(SessionId::random(), 60_000)).await;
    assert!(!ack.ok && ack.detail.contains("cannot start"), "{ack:?}");
    let ack = harness.command(stop(SessionId::random())).await;
    assert!(ack.ok, "{ack:?}");
    harness.shutdown().await;
}

fn running(session_id: SessionId, remaining_ms: u64) -> DesiredProgram {
    DesiredProgram::Running {
        session_id,
        lease_until: Utc::now() + chrono::Duration::seconds(60),
        remaining_ms,
    }
}

fn lease_until_of(state: &ReportedState) -> DateTime<Utc> {
    match state.program {
        ProgramStatus::Running { lease_until, .. } => lease_until,
        ProgramStatus::Idle => panic!("not running: {state:?}"),
    }
}

/// The time of day the agent shows for `at`.
fn clock_time(at: DateTime<Utc>) -> String {
    at.round_subsecs(0).format("%H:%M:%SZ").to_string()
}

#[tokio::test]
async fn a_start_older_than_the_newest_epoch_is_refused_as_stale() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();
    assert!(harness.command_at(5, start(session, 60_000)).await.ok);
    let pid = harness.program_pid().await;
    let ack = harness.command_at(6, stop(session)).await;
    assert!(ack.ok, "{ack:?}");
    assert!(!alive(pid));
    harness
        .wait_state(|state| state.program == ProgramStatus::Idle && state.last_exit.is_some())
        .await;
    std::fs::remove_file(harness.pidfile()).unwrap();

    // The start, retried late by management with a new command id but its old epoch.
    let late = harness.command_at(5, start(session, 60_000)).await;
    assert!(!late.ok, "{late:?}");
    assert_eq!(late.detail, "stale: epoch 5 is older than 6");
    // Not started: the next command (same epoch as the newest) finds nothing running.
    let ack = harness.command_at(6, stop(session)).await;
    assert!(ack.ok && ack.detail == "not running", "{ack:?}");
    assert!(!harness.pidfile().exists());
    harness.shutdown().await;
}

#[tokio::test]
async fn a_retained_desired_running_state_resumes_the_session_on_connect() {
    let session = SessionId::random();
    let desired = DesiredState {
        epoch: 3,
        issued_at: Utc::now(),
        program: running(session, 60_000),
    };
    let mut harness = Harness::start_after_desired(SLEEPER, &desired).await;
    let state = harness
        .wait_state(|state| matches!(state.program, ProgramStatus::Running { .. }))
        .await;
    assert!(
        matches!(state.program, ProgramStatus::Running { session_id, .. } if session_id == session)
    );
    assert!(alive(harness.program_pid().await));

    // The start command of the same epoch, delivered after the desired state, changes nothing.
    let ack = harness.command_at(3, start(session, 60_000)).await;
    assert!(ack.ok && ack.detail == "already running", "{ack:?}");
    harness.shutdown().await;
}

#[tokio::test]
async fn desired_idle_stops_the_running_program() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();
    assert!(harness.command(start(session, 60_000)).await.ok);
    let pid = harness.program_pid().await;

    harness.desire(DesiredProgram::Idle).await;
    let state = harness.wait_state(|state| state.last_exit.is_some()).await;
    assert_eq!(state.program, ProgramStatus::Idle);
    let exit = state.last_exit.unwrap();
    assert_eq!(
        (exit.session_id, exit.stopped_by),
        (session, StopCause::DesiredState)
    );
    assert!(!alive(pid));
    harness.shutdown().await;
}

#[tokio::test]
async fn a_session_that_ended_here_is_not_restarted_by_a_stale_desired_state() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();
    let desired = harness.desire(running(session, 1_000)).await;
    let pid = harness.program_pid().await;
    let state = harness.wait_state(|state| state.last_exit.is_some()).await;
    assert_eq!(state.last_exit.unwrap().stopped_by, StopCause::LeaseExpired);
    assert!(!alive(pid));
    std::fs::remove_file(harness.pidfile()).unwrap();

    // Management has not caught up yet: the same desired state comes again (as on a reconnect).
    harness.publish_desired(&desired).await;
    let ack = harness
        .command_at(
            desired.epoch,
            CommandAction::Warn {
                session_id: session,
                lease_until: Utc::now() + chrono::Duration::seconds(60),
                remaining_ms: 60_000,
            },
        )
        .await;
    assert!(!ack.ok && ack.detail == "not running", "{ack:?}");
    // The desired state and the command travel on different topics: allow a moment for order.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !harness.pidfile().exists(),
        "the ended session was restarted"
    );
    while let Some(seen) = harness.backlog.pop_front() {
        if seen.channel == DeviceChannel::State {
            let state: ReportedState = decode(&seen.payload).unwrap();
            assert_eq!(state.program, ProgramStatus::Idle);
        }
    }
    harness.shutdown().await;
}

#[tokio::test]
async fn warn_shows_the_time_left_and_extend_moves_the_lease() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();
    let started = Instant::now();
    assert!(harness.command(start(session, 2_000)).await.ok);
    let pid = harness.program_pid().await;
    let first_end = lease_until_of(
        &harness
            .wait_state(|state| matches!(state.program, ProgramStatus::Running { .. }))
            .await,
    );

    let lease_until = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(300);
    let warn = CommandAction::Warn {
        session_id: session,
        lease_until,
        remaining_ms: 300_000,
    };
    let ack = harness.command(warn).await;
    assert!(ack.ok && ack.detail == "warned", "{ack:?}");
    let expected = format!(
        "WARNING: your session ends in 5 min (at {})",
        clock_time(lease_until)
    );
    harness.wait_screen(|line| line == expected).await;
    let other = CommandAction::Warn {
        session_id: SessionId::random(),
        lease_until,
        remaining_ms: 300_000,
    };
    let ack = harness.command(other).await;
    assert!(!ack.ok && ack.detail == "not running", "{ack:?}");

    let extend_sent = Instant::now();
    let extend = CommandAction::Extend {
        session_id: session,
        lease_until: Utc::now() + chrono::Duration::seconds(60),
        remaining_ms: 3_000,
    };
    let ack = harness.command(extend).await;
    assert!(
        ack.ok && ack.detail.starts_with("extended until "),
        "{ack:?}"
    );
    harness
        .wait_screen(|line| line.starts_with("EXTENDED until "))
        .await;
    let state = harness
        .wait_state(|state| matches!(state.program, ProgramStatus::Running { .. }))
        .await;
    assert!(lease_until_of(&state) > first_end + chrono::Duration::milliseconds(500));

    // Past the first lease's end the program still runs, and it stops at the new one.
    while started.elapsed() < Duration::from_millis(2_300) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(alive(pid), "the program stopped at the first lease's end");
    let state = harness.wait_state(|state| state.last_exit.is_some()).await;
    assert_eq!(state.last_exit.unwrap().stopped_by, StopCause::LeaseExpired);
    assert!(extend_sent.elapsed() >= Duration::from_millis(2_900));
    assert!(!alive(pid));
    harness.shutdown().await;
}
