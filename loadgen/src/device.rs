//! One virtual device: its own MQTT connection and identity, signing everything with its own
//! device key like the real agent, acking starts and stops at once (its "program" starts and
//! stops instantly) and reporting its state after each. Latencies are taken here: from the
//! moment a scan is handed to the client to the moment its start command arrives, and from a
//! session's booked end to the moment its stop command arrives.
//!
//! One tokio task per device polls its event loop and answers commands with non-blocking
//! publishes (`try_publish`), so many devices stay cheap: no other task, small queues.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mujin_protocol::device_auth::{DeviceKey, DeviceMessage};
use mujin_protocol::message::{
    self, Ack, Availability, Command, CommandAction, Decision, ProgramExit, ProgramStatus,
    RejectReason, ReportedState, Scan, ScanResult, StopCause, Telemetry,
};
use mujin_protocol::topic::{self, DeviceChannel};
use mujin_protocol::{CommandId, DeviceId, ScanId, SessionId, StoreId};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Publishes a device may have queued at once: a scan, an ack and a state, with room to spare.
const REQUEST_CAPACITY: usize = 16;
/// Commands remembered to answer a redelivery without counting it twice.
const REMEMBERED_COMMANDS: usize = 8;
/// Longer than the real agent's 5 s: thousands of idle connections on a loaded 2-core machine
/// must not be dropped for a late ping.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A device's broker identity and device key, as enrolment gave them.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub store: StoreId,
    pub device: DeviceId,
    pub username: String,
    pub token: String,
    pub key: Arc<DeviceKey>,
}

/// Where the devices connect.
#[derive(Debug, Clone)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
}

/// What a device saw, sent to whoever drives the load.
#[derive(Debug, Clone)]
pub enum Observation {
    /// A start command for a new session; `latency` since this device's last scan.
    Started {
        device: usize,
        session_id: SessionId,
        latency: Option<Duration>,
    },
    /// A stop command; `lateness_ms` after the session's booked end (its lease).
    Stopped {
        device: usize,
        session_id: SessionId,
        lateness_ms: Option<f64>,
    },
    /// A scan was refused.
    Rejected { device: usize, reason: RejectReason },
}

/// Why a device could not send.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the device's publish queue is full or closed: {0}")]
    Queue(#[from] rumqttc::ClientError),
}

/// The session the device runs, as the start command gave it.
#[derive(Debug, Clone, Copy)]
struct Running {
    session_id: SessionId,
    started_at: DateTime<Utc>,
    lease_until: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct DeviceState {
    /// When the last scan was handed to the client; taken by the start it leads to.
    scan_sent: Option<Instant>,
    running: Option<Running>,
    last_exit: Option<ProgramExit>,
    /// Commands already acted on (a resend is acked again, not counted again).
    seen: VecDeque<CommandId>,
}

/// A connected virtual device; the driver publishes scans and telemetry through it.
pub struct VirtualDevice {
    pub index: usize,
    pub store: StoreId,
    pub device: DeviceId,
    key: Arc<DeviceKey>,
    client: AsyncClient,
    state: Mutex<DeviceState>,
    subscribed: AtomicBool,
    born: Instant,
    /// How often the driver sends this device's telemetry (declared with each heartbeat).
    heartbeat: Duration,
}

impl VirtualDevice {
    /// Starts the device's connection task.
    pub fn spawn(
        index: usize,
        credentials: &Credentials,
        broker: &BrokerAddress,
        observations: mpsc::UnboundedSender<Observation>,
        (heartbeat, stop): (Duration, CancellationToken),
    ) -> (Arc<VirtualDevice>, JoinHandle<()>) {
        let (client, mut event_loop) =
            AsyncClient::new(options(credentials, broker), REQUEST_CAPACITY);
        event_loop.set_network_options(crate::no_delay());
        let device = Arc::new(VirtualDevice {
            index,
            store: credentials.store.clone(),
            device: credentials.device.clone(),
            key: credentials.key.clone(),
            client,
            state: Mutex::new(DeviceState::default()),
            subscribed: AtomicBool::new(false),
            born: Instant::now(),
            heartbeat,
        });
        let task = tokio::spawn(poll(device.clone(), event_loop, observations, stop));
        (device, task)
    }

    /// Whether the device is connected and its subscriptions are in place.
    pub fn is_ready(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Publishes a reading of `ticket`, signed and stamped as sent now, and starts its clock.
    pub fn scan(&self, ticket: &str) -> Result<(), SendError> {
        let now = Utc::now();
        let mut scan = Scan {
            scan_id: ScanId::random(),
            ticket: ticket.to_owned(),
            read_at: now,
            offline: None,
            sent_at: Some(now),
            signature: None,
        };
        self.key.sign(&self.store, &self.device, &mut scan);
        let payload = message::encode(&scan);
        self.lock().scan_sent = Some(Instant::now());
        self.send(DeviceChannel::Scan, payload)
    }

    /// Publishes a signed heartbeat, telling management it comes `every` so often.
    pub fn telemetry(&self, every: Duration) -> Result<(), SendError> {
        let program = self.program();
        let mut telemetry = Telemetry {
            at: Utc::now(),
            uptime_ms: u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX),
            load: None,
            program,
            interval_ms: Some(u64::try_from(every.as_millis()).unwrap_or(u64::MAX)),
            signature: None,
        };
        self.publish_signed(&mut telemetry)
    }

    /// Closes the connection cleanly (the broker then drops the session, not the last will).
    pub fn disconnect(&self) {
        let _ = self.client.try_disconnect();
    }

    fn lock(&self) -> MutexGuard<'_, DeviceState> {
        // Nothing panics while holding it; a poisoned lock still holds consistent data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn program(&self) -> ProgramStatus {
        match self.lock().running {
            Some(running) => ProgramStatus::Running {
                session_id: running.session_id,
                started_at: running.started_at,
                lease_until: running.lease_until,
                provisional: false,
            },
            None => ProgramStatus::Idle,
        }
    }

    fn publish_signed<M: DeviceMessage>(&self, message: &mut M) -> Result<(), SendError> {
        self.key.sign(&self.store, &self.device, message);
        self.send(M::CHANNEL, message::encode(message))
    }

    fn send(&self, channel: DeviceChannel, payload: Vec<u8>) -> Result<(), SendError> {
        let topic = topic::device(&self.store, &self.device, channel);
        self.client
            .try_publish(topic, qos(channel), channel.retained(), payload)?;
        Ok(())
    }

    fn report_state(&self) {
        let mut state = ReportedState {
            availability: Availability::Online,
            program: self.program(),
            last_exit: self.lock().last_exit.clone(),
            at: Some(Utc::now()),
            signature: None,
        };
        if let Err(error) = self.publish_signed(&mut state) {
            tracing::debug!(device = %self.device, %error, "state dropped");
        }
    }

    fn ack(&self, command_id: CommandId, detail: &str) {
        let mut ack = Ack {
            signature: None,
            command_id,
            ok: true,
            detail: detail.to_owned(),
            at: Utc::now(),
        };
        if let Err(error) = self.publish_signed(&mut ack) {
            tracing::debug!(device = %self.device, %error, "ack dropped");
        }
    }

    /// Acts on a command at once and acks it; returns what to tell the driver.
    fn on_command(&self, command: Command) -> Option<Observation> {
        {
            let mut state = self.lock();
            if state.seen.contains(&command.command_id) {
                drop(state);
                self.ack(command.command_id, "seen before");
                return None;
            }
            if state.seen.len() >= REMEMBERED_COMMANDS {
                state.seen.pop_front();
            }
            state.seen.push_back(command.command_id);
        }
        let (observation, detail) = match command.action {
            CommandAction::Start {
                session_id,
                lease_until,
                ..
            } => {
                let mut state = self.lock();
                let latency = state.scan_sent.take().map(|sent| sent.elapsed());
                state.running = Some(Running {
                    session_id,
                    started_at: Utc::now(),
                    lease_until,
                });
                let started = Observation::Started {
                    device: self.index,
                    session_id,
                    latency,
                };
                (Some(started), "started")
            }
            CommandAction::Stop { session_id, .. } => {
                let now = Utc::now();
                let mut state = self.lock();
                let lease = state
                    .running
                    .filter(|running| running.session_id == session_id)
                    .map(|running| running.lease_until);
                if lease.is_some() {
                    state.running = None;
                    state.last_exit = Some(ProgramExit {
                        session_id,
                        stopped_by: StopCause::Command,
                        exit: "exit code 0".to_owned(),
                        at: now,
                    });
                }
                let lateness_ms =
                    lease.map(|lease| (now - lease).num_microseconds().unwrap_or(0) as f64 / 1e3);
                let stopped = Observation::Stopped {
                    device: self.index,
                    session_id,
                    lateness_ms,
                };
                (Some(stopped), "stopped")
            }
            CommandAction::Warn { .. } => (None, "warned"),
            CommandAction::Extend { .. } => (None, "extended"),
        };
        self.ack(command.command_id, detail);
        if observation.is_some() {
            self.report_state();
        }
        observation
    }

    fn on_message(&self, publish: &rumqttc::Publish) -> Option<Observation> {
        let channel = match topic::Topic::parse(&publish.topic) {
            Ok(topic::Topic::Device { channel, .. }) => channel,
            _ => return None,
        };
        match channel {
            DeviceChannel::Command => match message::decode::<Command>(&publish.payload) {
                Ok(command) => self.on_command(command),
                Err(error) => {
                    tracing::warn!(device = %self.device, %error, "malformed command");
                    None
                }
            },
            DeviceChannel::ScanResult => match message::decode::<ScanResult>(&publish.payload) {
                Ok(ScanResult {
                    decision: Decision::Rejected { reason, .. },
                    ..
                }) => Some(Observation::Rejected {
                    device: self.index,
                    reason,
                }),
                _ => None,
            },
            _ => None,
        }
    }
}

fn qos(channel: DeviceChannel) -> QoS {
    if channel.qos() == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn options(credentials: &Credentials, broker: &BrokerAddress) -> MqttOptions {
    let client_id =
        mujin_protocol::identity::device_client_id(&credentials.store, &credentials.device);
    let mut will = ReportedState::offline();
    credentials
        .key
        .sign(&credentials.store, &credentials.device, &mut will);
    let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_inflight(REQUEST_CAPACITY as u16)
        .set_credentials(credentials.username.clone(), credentials.token.clone())
        .set_last_will(LastWill::new(
            topic::device(
                &credentials.store,
                &credentials.device,
                DeviceChannel::State,
            ),
            message::encode(&will),
            QoS::AtLeastOnce,
            true,
        ));
    options
}

/// The device's only task: polls the connection, subscribes on every ConnAck, answers commands.
async fn poll(
    device: Arc<VirtualDevice>,
    mut event_loop: EventLoop,
    observations: mpsc::UnboundedSender<Observation>,
    stop: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    let filters: Vec<String> = [DeviceChannel::Command, DeviceChannel::ScanResult]
        .map(|channel| topic::device(&device.store, &device.device, channel))
        .to_vec();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = event_loop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = MIN_BACKOFF;
                let subscriptions = filters
                    .iter()
                    .map(|filter| rumqttc::SubscribeFilter::new(filter.clone(), QoS::AtLeastOnce));
                if let Err(error) = device.client.try_subscribe_many(subscriptions) {
                    tracing::warn!(device = %device.device, %error, "cannot subscribe");
                }
                device.report_state();
                // A heartbeat at once, like the agent: management learns the interval now,
                // not after assuming 2 s and taking the device offline meanwhile.
                let _ = device.telemetry(device.heartbeat);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                device.subscribed.store(true, Ordering::Release);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if let Some(observation) = device.on_message(&publish) {
                    let _ = observations.send(observation);
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(error) => {
                device.subscribed.store(false, Ordering::Release);
                tracing::debug!(device = %device.device, %error, "connection lost; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
