//! The demo store's device agents: one real child process per device (the demo binary itself,
//! re-run with the hidden `agent` subcommand), their operating program, their shutdown, and
//! the wait until every one of them reports itself online.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use mujin_protocol::message::{decode, Availability, ReportedState};
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::{DeviceId, StoreId};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::process::{Child, Command};

/// The parent's pid, so an agent started after its parent already died exits at once.
const PARENT_PID_VAR: &str = "MUJIN_DEMO_PARENT_PID";

/// The operating program every demo device runs: it says when it starts and when it is told
/// to stop, so the agent logs show the whole life of a session.
const PROGRAM_SCRIPT: &str = r#"#!/bin/sh
# mujin demo operating program: stands in for a game launcher, a VR app or a karaoke system.
echo "program started for session $MUJIN_SESSION_ID on $MUJIN_DEVICE"
trap 'echo "program received SIGTERM for session $MUJIN_SESSION_ID on $MUJIN_DEVICE, exiting"; exit 0' TERM
while true; do
    # In the background, so that SIGTERM is handled at once rather than after the sleep.
    sleep 1 &
    wait $!
done
"#;

/// Writes the operating program into the data directory and returns its path.
pub fn write_program(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("program.sh");
    std::fs::write(&path, PROGRAM_SCRIPT)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))?;
    Ok(path)
}

/// Everything one agent process needs.
pub struct AgentSpec<'a> {
    pub store: &'a StoreId,
    pub device: &'a DeviceId,
    pub broker_port: u16,
    pub username: String,
    pub password: String,
    /// The device's own key (64 hex digits), which signs what it publishes; a secret like the
    /// password, so it too goes through the environment.
    pub device_key: String,
    pub scan_pipe: PathBuf,
    pub log: PathBuf,
    pub program: &'a Path,
    /// Management's command key (`KEYID:HEX`): the agent acts only on what it signed.
    pub management_key: String,
    /// Management's root key (`KEYID:HEX`): the agent trusts only trust lists it signed.
    pub root_key: String,
}

/// A running agent process.
pub struct RunningAgent {
    pub device: DeviceId,
    child: Child,
}

/// The `mujin-agent` flags for one device (the password and the device key go through the
/// environment).
fn agent_args(spec: &AgentSpec<'_>) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "agent",
        "--store",
        spec.store.as_str(),
        "--device",
        spec.device.as_str(),
        "--broker",
        &format!("127.0.0.1:{}", spec.broker_port),
        "--username",
        &spec.username,
        "--no-stdin",
        "--telemetry-interval-ms",
        "1000",
        "--management-key",
        &spec.management_key,
        "--root-key",
        &spec.root_key,
        "--scan-pipe",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push(spec.scan_pipe.clone().into_os_string());
    args.push("--".into());
    args.push("/bin/sh".into());
    args.push(spec.program.as_os_str().to_owned());
    args
}

/// Starts one agent as a child process, its output going to its log file.
pub fn spawn(spec: &AgentSpec<'_>) -> anyhow::Result<RunningAgent> {
    let exe = std::env::current_exe().context("cannot find the demo's own executable")?;
    let log = File::create(&spec.log)
        .with_context(|| format!("cannot create the agent log {}", spec.log.display()))?;
    let log_err = log.try_clone().context("cannot share the agent log")?;
    let child = Command::new(exe)
        .args(agent_args(spec))
        .env("MUJIN_AGENT_PASSWORD", &spec.password)
        .env("MUJIN_AGENT_DEVICE_KEY", &spec.device_key)
        .env(PARENT_PID_VAR, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a Ctrl-C in the terminal reaches the demo only, which then
        // stops the agents in order (after the simulator, before management).
        .process_group(0)
        // Last resort if the demo itself panics: never leave an agent behind.
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the agent of {}", spec.device))?;
    tracing::info!(device = %spec.device, pid = child.id(), log = %spec.log.display(), "agent started");
    Ok(RunningAgent {
        device: spec.device.clone(),
        child,
    })
}

/// SIGTERMs every agent (each stops its program), waits up to `grace` for all of them, then
/// SIGKILLs whoever is left.
pub async fn stop_all(agents: Vec<RunningAgent>, grace: Duration) {
    for agent in &agents {
        if let Some(pid) = agent.child.id().and_then(|id| i32::try_from(id).ok()) {
            if let Err(err) = kill(Pid::from_raw(pid), Signal::SIGTERM) {
                tracing::warn!(device = %agent.device, %err, "cannot SIGTERM the agent");
            }
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    for mut agent in agents {
        match tokio::time::timeout_at(deadline, agent.child.wait()).await {
            Ok(Ok(status)) => tracing::info!(device = %agent.device, %status, "agent stopped"),
            Ok(Err(err)) => {
                tracing::warn!(device = %agent.device, %err, "cannot wait for the agent")
            }
            Err(_) => {
                tracing::warn!(device = %agent.device, "agent ignored SIGTERM; killing it");
                if let Err(err) = agent.child.kill().await {
                    tracing::warn!(device = %agent.device, %err, "cannot kill the agent");
                }
            }
        }
    }
}

/// The hidden `agent` subcommand: the `mujin-agent` command line, tied to the demo's life.
pub fn agent_main(args: Vec<OsString>) -> anyhow::Result<()> {
    // If the demo dies without stopping us (SIGKILL), we still get SIGTERM and stop cleanly.
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
        .context("cannot set the parent-death signal")?;
    if let Some(parent) = std::env::var_os(PARENT_PID_VAR) {
        // The parent may have died before the line above: then nobody would ever signal us.
        if parent.to_string_lossy() != nix::unistd::getppid().to_string() {
            anyhow::bail!("the demo that started this agent is gone");
        }
    }
    let argv = std::iter::once(OsString::from("mujin-agent")).chain(args);
    mujin_device_agent::cli_main(argv)
}

/// Where and as whom the readiness watcher connects.
pub struct Watcher {
    pub port: u16,
    pub username: String,
    pub password: String,
}

/// Waits until every device of `store` reports itself online (its retained state), at most
/// `deadline`. Returns whether they all did.
pub async fn wait_until_online(
    watcher: &Watcher,
    store: &StoreId,
    devices: &[DeviceId],
    deadline: Duration,
) -> bool {
    let mut options = MqttOptions::new("mujin-demo-watcher", "127.0.0.1", watcher.port);
    options
        .set_clean_session(true)
        .set_credentials(watcher.username.clone(), watcher.password.clone());
    let (client, mut event_loop) = AsyncClient::new(options, 16);
    let mut waiting: BTreeSet<DeviceId> = devices.iter().cloned().collect();
    let wait = async {
        // This function is the event loop's only poller and never awaits the client itself.
        while !waiting.is_empty() {
            match event_loop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let filter = topic::every_device_of(store, DeviceChannel::State);
                    if let Err(err) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                        tracing::warn!(%err, "cannot subscribe to device states");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if let Some(device) = online_device(&publish.topic, &publish.payload) {
                        waiting.remove(&device);
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(%err, "readiness watcher not connected yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    };
    let all_online = tokio::time::timeout(deadline, wait).await.is_ok();
    if !all_online {
        tracing::warn!(?waiting, "some agents did not come online in time");
    }
    let _ = client.try_disconnect();
    // One more poll sends the DISCONNECT, so the broker does not publish anything on our behalf.
    let _ = tokio::time::timeout(Duration::from_millis(200), event_loop.poll()).await;
    all_online
}

/// The device whose retained state says online, if this message is one.
fn online_device(topic_name: &str, payload: &[u8]) -> Option<DeviceId> {
    let Ok(Topic::Device {
        device,
        channel: DeviceChannel::State,
        ..
    }) = Topic::parse(topic_name)
    else {
        return None;
    };
    let state: ReportedState = decode(payload).ok()?;
    (state.availability == Availability::Online).then_some(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mujin_protocol::message::encode;

    #[test]
    fn agent_flags_carry_everything_but_the_password() {
        let store = StoreId::parse("demo").unwrap();
        let device = DeviceId::parse("pc-01").unwrap();
        let spec = AgentSpec {
            store: &store,
            device: &device,
            broker_port: 1999,
            username: "agent-pc-01".into(),
            password: "secret".into(),
            device_key: "seed".into(),
            scan_pipe: "/data/pipes/pc-01.scan".into(),
            log: "/data/logs/pc-01.log".into(),
            program: Path::new("/data/program.sh"),
            management_key: "c1:00".into(),
            root_key: "r1:00".into(),
        };
        let args: Vec<String> = agent_args(&spec)
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        let text = args.join(" ");
        assert!(text.starts_with("agent --store demo --device pc-01 --broker 127.0.0.1:1999"));
        assert!(text.contains("--scan-pipe /data/pipes/pc-01.scan"));
        assert!(text.contains("--management-key c1:00"));
        assert!(text.ends_with("-- /bin/sh /data/program.sh"), "{text}");
        assert!(!text.contains("secret"));
        assert!(!text.contains("seed"));
    }

    #[test]
    fn only_online_states_count() {
        let store = StoreId::parse("demo").unwrap();
        let device = DeviceId::parse("vr-01").unwrap();
        let state_topic = topic::device(&store, &device, DeviceChannel::State);
        let mut online = ReportedState::offline();
        online.availability = Availability::Online;
        assert_eq!(
            online_device(&state_topic, &encode(&online)),
            Some(device.clone())
        );
        assert_eq!(
            online_device(&state_topic, &encode(&ReportedState::offline())),
            None
        );
        let telemetry_topic = topic::device(&store, &device, DeviceChannel::Telemetry);
        assert_eq!(online_device(&telemetry_topic, &encode(&online)), None);
    }
}
