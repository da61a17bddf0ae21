//! The mujin management worker: the one place that decides who may use which device when.
//!
//! - [`booking`]: the store/device registry and reservations (overlaps refused by PostgreSQL);
//! - [`keys`]: the signing keys on disk; [`ticket_keys`]: which ticket key is current, retired
//!   or revoked (rotation, revocation); [`qr`]: tickets as QR codes;
//! - [`identities`]: who the broker lets in (enrolment, revocation); [`mosquitto`]: their ACL
//!   for fleets on Mosquitto;
//! - [`authorize`]: the scan rules as a pure function;
//! - [`scans`]: one transaction per scan, idempotent by scan id;
//! - [`stop_timer`]: durable stop timers that end sessions on time;
//! - [`trust`]: the stores' trust lists, for devices that start offline;
//! - [`ratelimit`]: per-device scan rate limits; [`lanes`]: messages of different devices
//!   handled side by side, acknowledged in arrival order;
//! - [`device_keys`]: every device message must be signed with its device's own key;
//! - [`actions`]: operator actions; [`requests`]: the same actions requested over MQTT;
//! - [`integrators`]: who may book over MQTT; [`bookings`]: their requests, over MQTT 5;
//! - [`operators`]: who may send requests (signed with the operator's key) and with what role;
//! - [`mqtt`]: the broker connection; [`db`]: pool and migrations; [`audit`]: the event log;
//! - [`metrics`]: Prometheus metrics on `GET /metrics`; [`reports`]: usage reports (sessions,
//!   minutes, no-shows, refusals) per store, device and day;
//! - [`postgres`]: a private PostgreSQL cluster for when no database URL is configured.
//!
//! [`run`] wires them together until its shutdown future completes.

pub mod actions;
pub mod audit;
pub mod authorize;
pub mod booking;
pub mod bookings;
pub mod cli;
pub mod db;
pub mod device_keys;
pub mod devices;
pub mod identities;
pub mod integrators;
pub mod keys;
pub mod lanes;
pub mod lifecycle;
pub mod metrics;
pub mod mosquitto;
pub mod mqtt;
pub mod operators;
pub mod outbox;
pub mod postgres;
pub mod qr;
pub mod ratelimit;
pub mod reports;
pub mod requests;
pub mod scans;
pub mod snapshot;
pub mod stop_timer;
pub mod ticket_keys;
pub mod trust;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use deadpool_postgres::Pool;
use mujin_protocol::message::{self, Availability, ReportedState};
use mujin_protocol::ticket::Keyring;
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::{DeviceId, KeyId, OperatorId, StoreId};
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use mqtt::MqttSettings;
use scans::ScanRules;

/// Everything the worker needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// libpq-style connection string or `postgres://` URL.
    pub database_url: String,
    pub mqtt: MqttSettings,
    /// Directory of the ticket-signing keys (created with owner-only permissions).
    pub key_dir: PathBuf,
    /// The key that signs new tickets when the key table is still empty (afterwards the table
    /// says which key is current; see [`ticket_keys`]).
    pub key_id: KeyId,
    /// How long before its window a ticket is already accepted.
    pub early_grace: Duration,
    /// Where to serve Prometheus metrics on `GET /metrics`; none when not given.
    pub metrics_listen: Option<SocketAddr>,
    /// The MQTT 5 broker (host, port) integrators' booking requests are taken from (see
    /// [`bookings`]); booking over MQTT is off without it.
    pub booking_broker: Option<(String, u16)>,
}

/// Runs the worker until `shutdown` completes, then stops every task and returns.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // The inbox's lanes, plus the dispatcher, the timers, the trust lists, the key caches and
    // the metrics and the booking gateway each hold a connection at times.
    let pool = db::pool(&settings.database_url, lanes::LANES + 10)
        .context("cannot set up the database pool")?;
    db::migrate(&pool)
        .await
        .context("cannot prepare the database")?;
    let command_key = Arc::new(keys::load_or_create_command_key(&settings.key_dir)?);
    let root_key = Arc::new(keys::load_or_create_root_key(&settings.key_dir)?);
    let ticket_keys = ticket_keys::LiveKeys::new(
        ticket_keys::open(&pool, &settings.key_dir, &settings.key_id, Utc::now())
            .await
            .context("cannot load the ticket keys")?,
    );
    let stop = CancellationToken::new();
    let metrics = Arc::new(metrics::Metrics::new());
    let metrics_task = match settings.metrics_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen for metrics on {address}"))?;
            tracing::info!(%address, "serving metrics on /metrics");
            let serve = metrics::serve(listener, metrics.clone(), pool.clone(), stop.clone());
            Some(tokio::spawn(serve))
        }
        None => None,
    };
    // The connection outlives the workers so their last publishes and acks still go out.
    let stop_mqtt = CancellationToken::new();
    let connection = mqtt::connect(
        &settings.mqtt,
        subscriptions(),
        stop_mqtt.clone(),
        metrics.clone(),
    )?;
    // Rotations and revocations apply within one trust-list refresh.
    let reload_task = tokio::spawn(ticket_keys::reload_every(
        pool.clone(),
        settings.key_dir.clone(),
        ticket_keys.clone(),
        trust::REFRESH,
        stop.clone(),
    ));
    let trust_task = tokio::spawn(trust::run(
        pool.clone(),
        connection.client.clone(),
        ticket_keys.clone(),
        root_key,
        settings.early_grace,
        connection.connected.clone(),
        stop.clone(),
    ));
    let inbox = Inbox {
        pool: pool.clone(),
        rules: ScanRules {
            keyring: Keyring::default(), // replaced by the live keys at each scan
            early_grace: settings.early_grace,
            command_key: Some(command_key.clone()),
        },
        ticket_keys,
        client: connection.client.clone(),
        wake_timer: Arc::new(stop_timer::TimerWake::default()),
        wake_dispatcher: Arc::new(Notify::new()),
        liveness: Arc::new(tokio::sync::Mutex::new(devices::Liveness::default())),
        scan_limiter: std::sync::Mutex::new(ratelimit::ScanLimiter::default()),
        device_auth: device_keys::DeviceAuth::new(pool.clone()),
        metrics: metrics.clone(),
        stop: stop.clone(),
    };
    // Device keys are reloaded off the inbox's path (a message waits only for a key it misses).
    let device_keys_task = {
        let (keys, stop) = (inbox.device_auth.keys(), stop.clone());
        tokio::spawn(async move { keys.refresh_every(device_keys::REFRESH, stop).await })
    };
    let liveness_task = tokio::spawn(watch_heartbeats(
        pool.clone(),
        inbox.liveness.clone(),
        inbox.wake_dispatcher.clone(),
        stop.clone(),
    ));
    let stop_sender = stop_timer::StopSender {
        client: connection.client.clone(),
        connected: connection.connected.clone(),
        key: command_key.clone(),
        metrics: metrics.clone(),
    };
    let timer_task = tokio::spawn(stop_timer::run(
        pool.clone(),
        inbox.wake_timer.clone(),
        inbox.wake_dispatcher.clone(),
        stop_sender,
        stop.clone(),
    ));
    let lifecycle_task = tokio::spawn(lifecycle::run(
        pool.clone(),
        inbox.wake_dispatcher.clone(),
        stop.clone(),
    ));
    let dispatcher_task = tokio::spawn(outbox::run_dispatcher(
        pool.clone(),
        connection.client.clone(),
        connection.connected.clone(),
        inbox.wake_dispatcher.clone(),
        command_key,
        metrics,
        stop.clone(),
    ));
    let bookings_task = match &settings.booking_broker {
        Some((host, port)) => {
            let desk = bookings::Desk {
                pool: pool.clone(),
                ticket_keys: inbox.ticket_keys.clone(),
                wake_timer: inbox.wake_timer.clone(),
                wake_dispatcher: inbox.wake_dispatcher.clone(),
            };
            Some(bookings::start(
                &settings.mqtt,
                (host, *port),
                desk,
                stop.clone(),
            )?)
        }
        None => {
            tracing::info!("booking over MQTT is off (no --booking-broker)");
            None
        }
    };
    let inbox = Arc::new(inbox);
    let handle = move |publish: Publish, received_at| {
        let inbox = inbox.clone();
        async move { inbox.handle(&publish, received_at).await }
    };
    let inbox_task = tokio::spawn(lanes::run(
        connection.incoming,
        (connection.client.clone(), connection.generation.clone()),
        handle,
        stop.clone(),
    ));
    tracing::info!(broker = %format!("{}:{}", settings.mqtt.host, settings.mqtt.port), "management running");
    shutdown.await;
    tracing::info!("management shutting down");
    stop.cancel();
    let _ = tokio::join!(
        inbox_task,
        timer_task,
        dispatcher_task,
        liveness_task,
        lifecycle_task,
        trust_task,
        reload_task,
        device_keys_task
    );
    if let Some(task) = bookings_task {
        let _ = task.await;
    }
    if let Some(mut task) = metrics_task {
        // A scraper holding its connection open must not hold shutdown.
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    // Let queued publishes and acks go out before the connection closes; a full queue (broker
    // gone) must not hold shutdown.
    mqtt::close(
        &connection.client,
        &connection.status_topic,
        Duration::from_secs(2),
    )
    .await;
    let mut mqtt_task = connection.task;
    if tokio::time::timeout(Duration::from_secs(2), &mut mqtt_task)
        .await
        .is_err()
    {
        stop_mqtt.cancel();
        let _ = mqtt_task.await;
    }
    pool.close();
    Ok(())
}

/// What a worker subscribes to. Scans, acks and requests are shared by the workers' group: one
/// worker handles each. States and heartbeats reach every worker: each keeps its own view of
/// which devices are alive, and retained states are delivered only to plain subscriptions.
fn subscriptions() -> Vec<(String, QoS)> {
    vec![
        (
            topic::shared("scan", &topic::every_device(DeviceChannel::Scan)),
            QoS::AtLeastOnce,
        ),
        (
            topic::shared("ack", &topic::every_device(DeviceChannel::Ack)),
            QoS::AtLeastOnce,
        ),
        (
            topic::shared("requests", &topic::every_operator_requests()),
            QoS::AtLeastOnce,
        ),
        (topic::every_device(DeviceChannel::State), QoS::AtLeastOnce),
        (
            topic::every_device(DeviceChannel::Telemetry),
            QoS::AtMostOnce,
        ),
    ]
}

/// Marks devices offline when their heartbeats stop.
async fn watch_heartbeats(
    pool: Pool,
    liveness: Arc<tokio::sync::Mutex<devices::Liveness>>,
    wake_dispatcher: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let overdue = liveness.lock().await.overdue(tokio::time::Instant::now());
        for key in overdue {
            let offline =
                devices::record_availability(&pool, &key, Availability::Offline, Utc::now());
            if let Err(error) = offline.await {
                tracing::warn!(%error, store = %key.0, device = %key.1, "cannot record a device going offline");
            }
            wake_dispatcher.notify_one();
        }
    }
}

/// Where an incoming message goes.
enum Route {
    Device {
        store: StoreId,
        device: DeviceId,
        channel: DeviceChannel,
    },
    Request {
        operator: OperatorId,
    },
}

/// Handles what devices send to management (scans, command acks, states and heartbeats) and
/// operators' requests, one message at a time per device (see [`lanes`]); each message is
/// acknowledged to the broker only after its effect is committed and its answers are queued,
/// so a crash before that means redelivery, not loss.
struct Inbox {
    pool: Pool,
    /// The scan rules; their keyring is taken from `ticket_keys` at each scan.
    rules: ScanRules,
    /// The ticket keys as of the last reload: new tickets are signed with the current one.
    ticket_keys: ticket_keys::LiveKeys,
    client: AsyncClient,
    wake_timer: Arc<stop_timer::TimerWake>,
    wake_dispatcher: Arc<Notify>,
    liveness: Arc<tokio::sync::Mutex<devices::Liveness>>,
    /// Scans per device: a flooding device is answered `too_many_scans` without a decision.
    scan_limiter: std::sync::Mutex<ratelimit::ScanLimiter<(StoreId, DeviceId)>>,
    /// Checks that device messages are signed with their device's own key.
    device_auth: device_keys::DeviceAuth,
    metrics: Arc<metrics::Metrics>,
    stop: CancellationToken,
}

/// What becomes of a message before any database work.
enum Admission {
    /// Handled normally.
    Handle,
    /// A scan over its device's rate limit; `true` for the first refusal of a flood.
    Flood(bool),
    /// Not authenticated as its device's; `record`: write an event about it this time.
    Refused {
        refusal: device_keys::Refusal,
        record: bool,
    },
}

/// What handling a message led to.
struct Handled {
    /// Messages to publish, in order, now that the effect is committed.
    publish: Vec<mqtt::Outbound>,
    /// Whether it recorded something for the dispatcher to publish (events, commands).
    for_dispatcher: bool,
    /// For a scan whose start is in `publish`: its stages so far, for the metrics.
    start_stages: Option<metrics::ScanStages>,
}

impl Handled {
    /// Messages to publish, and something recorded for the dispatcher.
    fn recorded(publish: Vec<mqtt::Outbound>) -> Handled {
        Handled::new(publish, true)
    }

    /// Messages to publish; `for_dispatcher`: something recorded for the dispatcher.
    fn new(publish: Vec<mqtt::Outbound>, for_dispatcher: bool) -> Handled {
        Handled {
            publish,
            for_dispatcher,
            start_stages: None,
        }
    }
}

impl Inbox {
    /// Handles one message, which the event loop received at `received_at`, retrying while the
    /// database is unavailable. Returns `false` when shutdown interrupted it.
    async fn handle(&self, publish: &Publish, received_at: std::time::Instant) -> bool {
        let taken_up = std::time::Instant::now();
        let route = match Topic::parse(&publish.topic) {
            Ok(Topic::Device {
                store,
                device,
                channel:
                    channel @ (DeviceChannel::Scan
                    | DeviceChannel::Ack
                    | DeviceChannel::State
                    | DeviceChannel::Telemetry),
            }) => Route::Device {
                store,
                device,
                channel,
            },
            Ok(Topic::Requests { operator }) => Route::Request { operator },
            other => {
                tracing::warn!(topic = %publish.topic, ?other, "ignoring a message on an unexpected topic");
                return true;
            }
        };
        let topic = &publish.topic;
        // Decided once per message (not per retry), before any database work: first whether the
        // device really sent it, then (for a scan) whether the device floods.
        let admission = match self.authenticate(&route, &publish.payload).await {
            Some((refusal, record)) => Admission::Refused { refusal, record },
            None => self
                .flood_check(&route)
                .map_or(Admission::Handle, Admission::Flood),
        };
        let authenticated = std::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = match (&route, &admission) {
                (Route::Device { store, device, .. }, Admission::Flood(first)) => {
                    scans::refuse_flood(
                        &self.pool,
                        store,
                        device,
                        &publish.payload,
                        *first,
                        Utc::now(),
                    )
                    .await
                    .map(|outcome| {
                        if let Some(verdict) = outcome.decided {
                            self.metrics.scan(verdict);
                        }
                        Handled::recorded(outcome.publish)
                    })
                }
                (
                    Route::Device {
                        store,
                        device,
                        channel,
                    },
                    Admission::Refused { refusal, record },
                ) => {
                    let target = (store, device, *channel);
                    let refused =
                        device_keys::refuse(&self.pool, target, refusal, *record, Utc::now()).await;
                    if refused.is_ok() {
                        self.metrics.device_message_refused(*channel);
                        if *channel == DeviceChannel::Scan {
                            let verdict = metrics::ScanVerdict::Rejected(refusal.reason);
                            self.metrics.scan(verdict);
                        }
                    }
                    // Not recorded every time: a flood of forged messages must not cost a
                    // dispatcher pass each.
                    refused.map(|publish| Handled::new(publish, *record))
                }
                _ => self.handle_once(&route, &publish.payload, Utc::now()).await,
            };
            match attempt {
                Ok(handled) => {
                    let publishing = std::time::Instant::now();
                    mqtt::publish_all(&self.client, handled.publish, &self.stop).await;
                    if let Some(stages) = handled.start_stages {
                        self.metrics.scan_stages(&metrics::ScanStages {
                            queued: taken_up.saturating_duration_since(received_at),
                            authenticate: authenticated.saturating_duration_since(taken_up),
                            publish: publishing.elapsed(),
                            ..stages
                        });
                    }
                    // What it left in the database for the dispatcher (events, commands not
                    // sent with the answer) goes out with the next pass. Most messages leave
                    // nothing (a scan's answer, start and events go out above; an
                    // acknowledgement or a heartbeat records nothing or wakes it itself): one
                    // pass for each would be several statements per message.
                    if handled.for_dispatcher {
                        self.wake_dispatcher.notify_one();
                    }
                    return true;
                }
                Err(error) if !error.is_transient() => {
                    // Retrying would fail the same way and hold up every message behind it.
                    tracing::error!(%error, topic, "cannot handle a message; dropping it");
                    return true;
                }
                Err(error) => {
                    tracing::warn!(%error, topic, "cannot handle a message yet; retrying");
                    tokio::select! {
                        () = self.stop.cancelled() => return false,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// For a device message not authenticated as its device's: why, and whether to record it.
    async fn authenticate(
        &self,
        route: &Route,
        payload: &[u8],
    ) -> Option<(device_keys::Refusal, bool)> {
        match route {
            Route::Device {
                store,
                device,
                channel,
            } => {
                self.device_auth
                    .authenticate(store, device, *channel, payload)
                    .await
            }
            Route::Request { .. } => None,
        }
    }

    /// For a scan over its device's rate limit, `Some(first refusal of this flood)`.
    fn flood_check(&self, route: &Route) -> Option<bool> {
        let Route::Device {
            store,
            device,
            channel: DeviceChannel::Scan,
        } = route
        else {
            return None;
        };
        let key = (store.clone(), device.clone());
        let verdict = match self.scan_limiter.lock() {
            Ok(mut limiter) => limiter.check(&key, tokio::time::Instant::now()),
            // A panic while holding it cannot leave the buckets inconsistent.
            Err(poisoned) => poisoned
                .into_inner()
                .check(&key, tokio::time::Instant::now()),
        };
        match verdict {
            ratelimit::Verdict::Allowed => None,
            ratelimit::Verdict::Limited { first } => Some(first),
        }
    }

    /// One attempt at a message: its effect is committed when this returns the messages to
    /// publish.
    async fn handle_once(
        &self,
        route: &Route,
        payload: &[u8],
        now: chrono::DateTime<Utc>,
    ) -> Result<Handled, db::WorkError> {
        let (store, device, channel) = match route {
            Route::Request { operator } => {
                let keys = self.ticket_keys.current();
                let reply =
                    requests::handle_request(&self.pool, &keys.signing, operator, payload, now)
                        .await?;
                // A force stop or extension moved a session's end.
                self.wake_timer.rescan();
                return Ok(Handled::recorded(reply.into_iter().collect()));
            }
            Route::Device {
                store,
                device,
                channel,
            } => (store, device, *channel),
        };
        match channel {
            DeviceChannel::Scan => {
                let rules = ScanRules {
                    keyring: self.ticket_keys.current().keyring.clone(),
                    ..self.rules.clone()
                };
                let outcome =
                    scans::handle_scan(&self.pool, &rules, store, device, payload, now).await?;
                if let Some(verdict) = outcome.decided {
                    self.metrics.scan(verdict);
                }
                if let Some(lease_until) = outcome.session_ends {
                    self.wake_timer.session_started(lease_until);
                }
                if outcome.start_sent {
                    // Handed to the MQTT client right after this returns.
                    self.metrics.start_published(Utc::now() - now);
                }
                self.metrics.events_published(outcome.events_sent);
                Ok(Handled {
                    publish: outcome.publish,
                    for_dispatcher: outcome.for_dispatcher,
                    start_stages: outcome.start_sent.then_some(outcome.stages),
                })
            }
            DeviceChannel::Ack => {
                let recorded =
                    outbox::record_ack(&self.pool, &self.metrics, store, device, payload, now)
                        .await?;
                Ok(Handled::new(Vec::new(), recorded))
            }
            _ => {
                let key = (store.clone(), device.clone());
                let recorded = self.device_report(&key, channel, payload, now).await?;
                Ok(Handled::new(Vec::new(), recorded))
            }
        }
    }

    /// A state or heartbeat: availability changes, clock skew, reconciliation with the database.
    /// (A retry after a database error sees no change again: availability is recorded on the
    /// next transition.)
    async fn device_report(
        &self,
        key: &(StoreId, DeviceId),
        channel: DeviceChannel,
        payload: &[u8],
        now: chrono::DateTime<Utc>,
    ) -> Result<bool, db::WorkError> {
        let instant = tokio::time::Instant::now();
        let mut liveness = self.liveness.lock().await;
        if channel == DeviceChannel::Telemetry {
            let Some(beat) = devices::Beat::decode(payload, now) else {
                tracing::debug!(store = %key.0, device = %key.1, "ignoring malformed telemetry");
                return Ok(false);
            };
            if !liveness.is_newest(key, true, beat.at) {
                tracing::debug!(store = %key.0, device = %key.1, "ignoring a repeated or overtaken heartbeat");
                return Ok(false);
            }
            let changes = liveness.heartbeat(key, instant, &beat, devices::MAX_CLOCK_SKEW_MS);
            drop(liveness);
            // A change wakes the dispatcher itself.
            self.record_changes(key, changes, now).await?;
            return Ok(false);
        }
        let state: ReportedState = match message::decode(payload) {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(store = %key.0, device = %key.1, %error, "ignoring a malformed state");
                return Ok(false);
            }
        };
        // The last will has no time of its own (it was written at connect); the rest must be new.
        if let Some(at) = state.at {
            if !liveness.is_newest(key, false, at) {
                tracing::debug!(store = %key.0, device = %key.1, "ignoring a repeated or overtaken state");
                return Ok(false);
            }
        }
        let change = liveness.reported(key, state.availability, instant);
        drop(liveness);
        let recorded = devices::reconcile(&self.pool, &self.liveness, key, &state, now).await?;
        self.record_changes(key, change.into_iter().collect(), now)
            .await?;
        Ok(recorded)
    }

    async fn record_changes(
        &self,
        key: &(StoreId, DeviceId),
        changes: Vec<devices::Change>,
        now: chrono::DateTime<Utc>,
    ) -> Result<(), db::WorkError> {
        for change in changes {
            match change {
                devices::Change::Availability(availability) => {
                    devices::record_availability(&self.pool, key, availability, now).await?
                }
                devices::Change::ClockSkew(skew_ms) => {
                    devices::record_skew(&self.pool, key, skew_ms, now).await?
                }
            }
            self.wake_dispatcher.notify_one();
        }
        Ok(())
    }
}
