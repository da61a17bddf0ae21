//! The agent's state and its reactions: commands (fenced by epoch), the retained desired state,
//! program exits, the lease deadline, telemetry and shutdown; scans, their answers, the trust
//! list and offline starts are in [`scans`]. IO is limited to the link (non-blocking
//! publishes), the supervisor and the screen.

mod scans;

use std::collections::VecDeque;
use std::time::Duration;

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use mujin_protocol::device_auth::{DeviceKey, DeviceMessage};
use mujin_protocol::message::{
    decode, encode, Ack, Availability, Command, CommandAction, DesiredState, ProgramExit,
    ReportedState, ScanResult, StopCause, Telemetry,
};
use mujin_protocol::signed::{verify_command, verify_desired};
use mujin_protocol::ticket::PublicKey;
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::trust::TrustList;
use mujin_protocol::{CommandId, DeviceId, ScanId, SessionId, StoreId};
use tokio::time::Instant;

use crate::desired::{converge, Convergence, EndedSessions, EpochFence};
use crate::mqtt::{Link, LinkEvent};
use crate::offline::{Provisional, StartedTickets};
use crate::pending::{PendingScans, RepeatFilter};
use crate::program::{
    decide_start, decide_stop, lease_duration, StartDecision, StopDecision, Supervisor,
};
use crate::screen;

/// How many recent command answers are kept to answer a redelivered command without acting
/// on it twice.
const REMEMBERED_ACKS: usize = 64;
/// How long shutdown waits for the broker to take the last state and the disconnect.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);
/// A lease moved silently to match the desired state is reported only when it moved this much:
/// a retained desired state converged again on every reconnection moves it by milliseconds.
const REPORTED_LEASE_CHANGE: Duration = Duration::from_secs(1);

/// Everything the main loop acts on.
pub(crate) struct Agent {
    store: StoreId,
    device: DeviceId,
    link: Link,
    connected: bool,
    pub(crate) supervisor: Supervisor,
    last_exit: Option<ProgramExit>,
    started: Instant,
    /// How often telemetry goes out (told to management with each report).
    telemetry_interval: Duration,
    recent_acks: VecDeque<Ack>,
    /// Scans whose answer the customer has seen, so a redelivered answer is not shown twice.
    answered_scans: VecDeque<ScanId>,
    epochs: EpochFence,
    ended: EndedSessions,
    /// Readings not answered yet, sent again until they are.
    pending: PendingScans,
    /// Drops the scanner's repeats of one code.
    repeats: RepeatFilter,
    /// The newest valid trust list of the store, once one arrived.
    trust: Option<TrustList>,
    /// The session started offline whose scan is still unanswered, while it runs.
    provisional: Option<Provisional>,
    /// Tickets that started a session here, so that one ticket cannot start two offline.
    started_tickets: StartedTickets,
    /// Management's command key; `None` acts on anything well-formed.
    management_key: Option<PublicKey>,
    /// Management's root key, which signs trust lists; `None` uses no trust list.
    root_key: Option<PublicKey>,
    /// The device's own key, which signs everything published; `None` sends unsigned.
    device_key: Option<Arc<DeviceKey>>,
}

impl Agent {
    pub(crate) fn new(settings: &crate::Settings, link: Link, supervisor: Supervisor) -> Self {
        let management_key = settings.management_key.clone();
        let device_key = settings.device_key.clone();
        match &device_key {
            Some(key) => {
                tracing::info!(key_id = %key.public_key().key_id, "signing what this device publishes")
            }
            None => tracing::warn!(
                "no --device-key: management refuses this device's scans, states, telemetry and acks"
            ),
        }
        match &settings.root_key {
            Some(key) => tracing::info!(key_id = %key.key_id, "using only trust lists signed with the root key"),
            None => tracing::warn!(
                "no --root-key: trust lists are ignored, so this device never starts a session offline"
            ),
        }
        match &management_key {
            Some(key) => {
                tracing::info!(key_id = %key.key_id, "acting only on what management's key signed")
            }
            None => tracing::warn!(
                "no --management-key: commands, desired states and trust lists are NOT verified"
            ),
        }
        Self {
            store: settings.store.clone(),
            device: settings.device.clone(),
            link,
            connected: false,
            supervisor,
            last_exit: None,
            started: Instant::now(),
            telemetry_interval: settings.telemetry_interval,
            recent_acks: VecDeque::new(),
            answered_scans: VecDeque::new(),
            epochs: EpochFence::default(),
            ended: EndedSessions::default(),
            pending: PendingScans::new(settings.offline_after),
            repeats: RepeatFilter::new(settings.repeat_window),
            trust: None,
            provisional: None,
            started_tickets: StartedTickets::default(),
            management_key,
            root_key: settings.root_key.clone(),
            device_key,
        }
    }

    /// Signs `message` as this device's, when the agent has its device key.
    fn sign<M: DeviceMessage>(&self, message: &mut M) {
        if let Some(key) = &self.device_key {
            key.sign(&self.store, &self.device, message);
        }
    }

    /// Signs and publishes a message on its channel.
    fn publish<M: DeviceMessage>(&self, message: &M) {
        let channel = M::CHANNEL;
        let mut message = message.clone();
        self.sign(&mut message);
        let topic = topic::device(&self.store, &self.device, channel);
        if let Err(err) = self.link.publish(topic, channel, encode(&message)) {
            tracing::warn!(%err, %channel, "publish dropped");
        }
    }

    fn state(&self, availability: Availability) -> ReportedState {
        ReportedState {
            signature: None,
            availability,
            program: self.supervisor.status(),
            last_exit: self.last_exit.clone(),
            at: Some(Utc::now()),
        }
    }

    /// Publishes the state when connected; a reconnection publishes it anyway.
    fn report_state(&self) {
        if self.connected {
            self.publish(&self.state(Availability::Online));
        }
    }

    pub(crate) async fn on_link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected => {
                self.connected = true;
                self.report_state();
                // A heartbeat at once, not one interval later: it tells management the interval
                // to judge this device by (until then it assumes 2 s, so a slower agent would be
                // taken offline right after connecting).
                self.on_telemetry_tick();
                // Scans are not queued while disconnected (the queue would fill up): send every
                // waiting one now.
                self.send_pending_scans();
            }
            LinkEvent::Disconnected => self.connected = false,
            LinkEvent::Message { topic, payload } => self.on_message(&topic, &payload).await,
        }
    }

    async fn on_message(&mut self, topic: &str, payload: &[u8]) {
        let channel = match Topic::parse(topic) {
            Ok(Topic::Device {
                store,
                device,
                channel,
            }) if store == self.store && device == self.device => channel,
            Ok(Topic::Trust { store }) if store == self.store => {
                self.on_trust_list(payload);
                return;
            }
            _ => {
                tracing::debug!(topic, "ignoring a message on a foreign topic");
                return;
            }
        };
        match channel {
            DeviceChannel::Command => match decode::<Command>(payload) {
                Ok(command) => self.on_command(command).await,
                Err(err) => tracing::warn!(%err, "ignoring a malformed command"),
            },
            DeviceChannel::Desired => match decode::<DesiredState>(payload) {
                Ok(desired) => self.on_desired(desired).await,
                Err(err) => tracing::warn!(%err, "ignoring a malformed desired state"),
            },
            DeviceChannel::ScanResult => match decode::<ScanResult>(payload) {
                Ok(result) => self.on_scan_result(result).await,
                Err(err) => tracing::warn!(%err, "ignoring a malformed scan result"),
            },
            other => {
                tracing::debug!(channel = %other, "ignoring a message on a channel we send on")
            }
        }
    }

    async fn on_command(&mut self, command: Command) {
        if let Some(key) = &self.management_key {
            let verified = verify_command(key, &command, &self.store, &self.device, Utc::now());
            if let Err(err) = verified {
                // Not remembered: a forgery must not stand in for the real command's answer.
                tracing::warn!(command_id = %command.command_id, %err, "command refused");
                let ack = Ack {
                    signature: None,
                    command_id: command.command_id,
                    ok: false,
                    detail: format!("rejected: {}", err.refusal()),
                    at: Utc::now(),
                };
                self.publish(&ack);
                return;
            }
        }
        if let Some(ack) = self
            .recent_acks
            .iter()
            .find(|ack| ack.command_id == command.command_id)
        {
            // A redelivery: answer the same, do not act twice.
            tracing::info!(command_id = %command.command_id, "command seen before; acking again");
            self.publish(ack);
            return;
        }
        tracing::info!(
            command_id = %command.command_id,
            epoch = command.epoch,
            action = ?command.action,
            "command"
        );
        let (ok, detail) = match self.epochs.admit(command.epoch) {
            Ok(()) => self.apply(command.action).await,
            Err(stale) => {
                // A command management superseded (e.g. a start retried after its stop).
                tracing::warn!(command_id = %command.command_id, %stale, "stale command refused");
                (false, stale.to_string())
            }
        };
        self.ack(command.command_id, ok, detail);
    }

    async fn apply(&mut self, action: CommandAction) -> (bool, String) {
        match action {
            CommandAction::Start {
                session_id,
                lease_until,
                remaining_ms,
            } => {
                let decision = decide_start(
                    self.supervisor.running_session(),
                    session_id,
                    lease_until,
                    remaining_ms,
                    Utc::now(),
                );
                self.start(session_id, decision)
            }
            CommandAction::Stop { session_id, reason } => {
                tracing::info!(%session_id, reason = reason.as_str(), "stop requested");
                self.stop_by_command(session_id).await
            }
            CommandAction::Warn {
                session_id,
                lease_until,
                remaining_ms,
            } => self.warn(session_id, lease_until, remaining_ms),
            CommandAction::Extend {
                session_id,
                lease_until,
                remaining_ms,
            } => self.extend(session_id, lease_until, remaining_ms),
        }
    }

    /// Whether this is the first answer to `scan_id` (and remembers it).
    fn first_answer(&mut self, scan_id: ScanId) -> bool {
        if self.answered_scans.contains(&scan_id) {
            return false;
        }
        if self.answered_scans.len() >= REMEMBERED_ACKS {
            self.answered_scans.pop_front();
        }
        self.answered_scans.push_back(scan_id);
        true
    }

    fn ack(&mut self, command_id: CommandId, ok: bool, detail: String) {
        let ack = Ack {
            signature: None,
            command_id,
            ok,
            detail,
            at: Utc::now(),
        };
        self.publish(&ack);
        if self.recent_acks.len() >= REMEMBERED_ACKS {
            self.recent_acks.pop_front();
        }
        self.recent_acks.push_back(ack);
    }

    fn start(&mut self, session_id: SessionId, decision: StartDecision) -> (bool, String) {
        match decision {
            StartDecision::AlreadyRunning => (true, "already running".into()),
            StartDecision::Busy(other) => (false, format!("busy with session {other}")),
            StartDecision::LeaseEnded => (false, "lease already ended".into()),
            StartDecision::Launch { lease } => match self.supervisor.start(session_id, lease) {
                Ok(()) => {
                    tracing::info!(%session_id, ?lease, "program started");
                    self.report_state();
                    (true, "started".into())
                }
                Err(err) => {
                    tracing::error!(%err, %session_id, "program did not start");
                    (false, err.to_string())
                }
            },
        }
    }

    async fn stop_by_command(&mut self, session_id: SessionId) -> (bool, String) {
        match decide_stop(self.supervisor.running_session(), session_id) {
            StopDecision::NotRunning => (true, "not running".into()),
            StopDecision::Stop => match self.stop(StopCause::Command).await {
                Some(exit) => (true, format!("stopped ({})", exit.exit)),
                None => (true, "not running".into()),
            },
        }
    }

    /// Shows the customer how long is left, when the warning is about the running session.
    fn warn(
        &self,
        session_id: SessionId,
        lease_until: DateTime<Utc>,
        remaining_ms: u64,
    ) -> (bool, String) {
        if self.supervisor.running_session() != Some(session_id) {
            return (false, "not running".into());
        }
        // Bounded like a lease, so that a warning delivered late does not promise more time.
        let left = lease_duration(lease_until, remaining_ms, Utc::now()).unwrap_or_default();
        screen::show(&screen::warning(left, lease_until));
        (true, "warned".into())
    }

    /// Moves the running session's lease (later or sooner), reports and shows the new end.
    fn extend(
        &mut self,
        session_id: SessionId,
        lease_until: DateTime<Utc>,
        remaining_ms: u64,
    ) -> (bool, String) {
        if self.supervisor.running_session() != Some(session_id) {
            return (false, "not running".into());
        }
        let lease = lease_duration(lease_until, remaining_ms, Utc::now()).unwrap_or_default();
        let Some(until) = self.supervisor.set_lease(lease) else {
            return (false, "not running".into());
        };
        tracing::info!(%session_id, ?lease, "lease moved by command");
        self.report_state();
        screen::show(&screen::extended(until));
        (
            true,
            format!(
                "extended until {}",
                until.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
        )
    }

    /// Converges to management's desired state, unless a newer epoch was already seen. No ack:
    /// it is not a command, and it arrives again on every (re)subscription.
    async fn on_desired(&mut self, desired: DesiredState) {
        if let Some(key) = &self.management_key {
            if let Err(err) = verify_desired(key, &desired, &self.store, &self.device) {
                tracing::warn!(epoch = desired.epoch, %err, "desired state refused; ignoring it");
                return;
            }
        }
        if let Err(stale) = self.epochs.admit(desired.epoch) {
            tracing::debug!(%stale, "ignoring an outdated desired state");
            return;
        }
        let decision = converge(
            self.supervisor.running_session(),
            &self.ended,
            &desired.program,
            Utc::now(),
        );
        tracing::info!(epoch = desired.epoch, ?decision, "desired state");
        let provisional = self
            .provisional
            .filter(|provisional| provisional.protects(self.supervisor.running_session()));
        if let (Some(provisional), Convergence::Stop | Convergence::Replace { .. }) =
            (provisional, decision)
        {
            // Management may not have seen the scan yet (it republishes "idle" when it comes
            // back, before reading the resent scan); its answer to the scan decides.
            tracing::info!(scan_id = %provisional.scan_id, "provisional session kept until its scan is answered");
            return;
        }
        match decision {
            Convergence::InPlace | Convergence::Skip(_) => {}
            Convergence::Stop => {
                self.stop(StopCause::DesiredState).await;
            }
            Convergence::SetLease { lease } => self.match_lease(lease),
            Convergence::Start { session_id, lease } => {
                self.start(session_id, StartDecision::Launch { lease });
            }
            Convergence::Replace { session_id, lease } => {
                self.stop(StopCause::DesiredState).await;
                self.start(session_id, StartDecision::Launch { lease });
            }
        }
    }

    /// Moves the lease silently to what the desired state says; reports it when it really moved.
    fn match_lease(&mut self, lease: Duration) {
        let before = self.supervisor.lease_until();
        let Some(until) = self.supervisor.set_lease(lease) else {
            return;
        };
        let moved = before
            .and_then(|before| (until - before).abs().to_std().ok())
            .unwrap_or(Duration::MAX);
        if moved >= REPORTED_LEASE_CHANGE {
            tracing::info!(?lease, "lease moved to match the desired state");
            self.report_state();
        }
    }

    /// Stops the running program for `cause` and reports it.
    async fn stop(&mut self, cause: StopCause) -> Option<ProgramExit> {
        let exit = self.supervisor.stop(cause).await?;
        tracing::info!(session_id = %exit.session_id, ?cause, exit = %exit.exit, "program stopped");
        self.ended.remember(exit.session_id);
        self.provisional = None;
        self.last_exit = Some(exit.clone());
        self.report_state();
        Some(exit)
    }

    pub(crate) async fn on_lease_end(&mut self) {
        if self.stop(StopCause::LeaseExpired).await.is_some() {
            screen::show(screen::LEASE_ENDED);
        }
    }

    pub(crate) fn on_program_exit(&mut self, status: std::io::Result<std::process::ExitStatus>) {
        if let Some(exit) = self.supervisor.record_exit(status) {
            tracing::info!(session_id = %exit.session_id, exit = %exit.exit, "program ended by itself");
            self.ended.remember(exit.session_id);
            self.provisional = None;
            self.last_exit = Some(exit);
            self.report_state();
        }
    }

    pub(crate) fn on_telemetry_tick(&self) {
        if !self.connected {
            return;
        }
        let telemetry = Telemetry {
            interval_ms: Some(
                u64::try_from(self.telemetry_interval.as_millis()).unwrap_or(u64::MAX),
            ),
            signature: None,
            at: Utc::now(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            load: read_load(),
            program: self.supervisor.status(),
        };
        self.publish(&telemetry);
    }

    /// Stops the program, says goodbye (offline state, retained) and disconnects, within a
    /// deadline so that shutdown never hangs on an unreachable broker.
    pub(crate) async fn shut_down(mut self) {
        self.stop(StopCause::AgentShutdown).await;
        self.publish(&self.state(Availability::Offline));
        self.link.close(CLOSE_DEADLINE).await;
    }
}

/// The one-minute load average, where /proc/loadavg exists.
fn read_load() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    parse_load(&text)
}

fn parse_load(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_the_first_field_of_loadavg() {
        assert_eq!(parse_load("0.52 0.58 0.59 1/467 12345\n"), Some(0.52));
        assert_eq!(parse_load(""), None);
        assert_eq!(parse_load("abc"), None);
    }
}
