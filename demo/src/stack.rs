//! The whole demo store as one stack: starting its parts in order (PostgreSQL, database,
//! broker, management, agents, customers), running it headless or under the console, and
//! stopping every part in reverse order — on success, on errors and on Ctrl-C alike.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use mujin_broker::{Broker, BrokerError, BrokerSettings, Credentials, IdentitySettings};
use mujin_management::db::{self, DbPool};
use mujin_management::postgres::PrivateCluster;
use mujin_management::{booking, identities, keys, MqttSettings};
use mujin_protocol::device_auth::DeviceKey;
use mujin_protocol::identity::{Identity, Token};
use mujin_protocol::signed::public_key_text;
use mujin_protocol::{DeviceId, KeyId, StoreId};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agents::{self, AgentSpec, RunningAgent, Watcher};
use crate::simulator::{self, Simulator};
use crate::summary::{self, Summary};

/// The demo's store and its devices, with the names operators see.
const STORE: &str = "demo";
const DEVICES: [(&str, &str); 4] = [
    ("pc-01", "Gaming PC 1"),
    ("pc-02", "Gaming PC 2"),
    ("vr-01", "VR booth"),
    ("karaoke-01", "Karaoke room"),
];
/// Dropped and re-created on every run.
const DATABASE: &str = "mujin_demo";
const KEY_ID: &str = "k1";
/// The MQTT port the demo prefers, so other tools find it without flags.
const DEFAULT_PORT: u16 = 1883;
/// How long before its window a ticket is already accepted.
const EARLY_GRACE: Duration = Duration::from_secs(60);
/// How long the agents may take to come online before the customers start anyway.
const AGENTS_ONLINE_DEADLINE: Duration = Duration::from_secs(20);
/// How long agents get to stop their programs after SIGTERM before SIGKILL.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(5);

/// What `mujin-demo` was asked to do.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    pub data_dir: PathBuf,
    pub port: Option<u16>,
    pub headless: bool,
    pub duration: Duration,
}

/// Runs the demo to its end and stops everything it started.
///
/// Must be driven by `Runtime::block_on` on the main thread, not spawned: the private
/// PostgreSQL server is tied to the thread that starts it (it is stopped when that thread
/// ends), and the main thread lives as long as the demo.
pub async fn run(settings: DemoSettings) -> anyhow::Result<()> {
    // Installed first, so a Ctrl-C while PostgreSQL starts is noticed right after.
    let mut interrupt = Interrupt::new()?;
    let mut stack = Stack::default();
    let started = tokio::select! {
        started = stack.start(&settings) => started,
        () = interrupt.recv() => Err(anyhow::anyhow!("interrupted while starting")),
    };
    let outcome = match started {
        Ok(running) if settings.headless => {
            run_headless(&mut stack, running, &settings, &mut interrupt)
                .await
                .map(Some)
        }
        Ok(running) => run_console(running, &mut interrupt).await.map(|()| None),
        Err(error) => Err(error),
    };
    if !settings.headless {
        eprintln!("mujin demo: stopping the store…");
    }
    stack.shutdown().await;
    if let Some(summary) = outcome? {
        print!("{summary}");
    }
    Ok(())
}

/// Lets the customers come for the requested time (or until interrupted), then reads what
/// happened from the database.
async fn run_headless(
    stack: &mut Stack,
    running: Running,
    settings: &DemoSettings,
    interrupt: &mut Interrupt,
) -> anyhow::Result<Summary> {
    let mut customers_since = tokio::time::Instant::now();
    let run_for = async {
        let _ = running.customers_ready.await;
        customers_since = tokio::time::Instant::now();
        tracing::info!(seconds = settings.duration.as_secs(), "the store is open");
        tokio::time::sleep(settings.duration).await;
    };
    tokio::select! {
        () = run_for => {}
        () = interrupt.recv() => tracing::info!("interrupted: closing the store early"),
    }
    let elapsed = customers_since.elapsed();
    stack.stop_customers().await;
    let pool = stack.pool.as_ref().context("the database is not open")?;
    summary::wait_for_due_stops(pool, Duration::from_secs(5)).await?;
    summary::collect(pool, elapsed).await
}

/// Shows the store in the operator console until the operator quits (or a signal comes).
async fn run_console(running: Running, interrupt: &mut Interrupt) -> anyhow::Result<()> {
    let settings = mujin_console::Settings {
        broker: format!("127.0.0.1:{}", running.port),
        username: CONSOLE_USER.to_owned(),
        password: running.console_password,
        client_id: "mujin-demo-console".to_owned(),
        operator: mujin_protocol::OperatorId::parse(CONSOLE_USER).context("operator id")?,
        operator_key: Some(running.console_key),
        tls: None,
    };
    tokio::select! {
        result = mujin_console::run(settings) => result,
        () = interrupt.recv() => {
            // The console was dropped mid-draw: give the terminal back ourselves.
            ratatui::restore();
            Ok(())
        }
    }
}

/// SIGINT, SIGTERM or SIGHUP: each means "close the store".
struct Interrupt {
    signals: [Signal; 3],
}

impl Interrupt {
    fn new() -> anyhow::Result<Self> {
        let listen = |kind| signal(kind).context("cannot listen for signals");
        Ok(Self {
            signals: [
                listen(SignalKind::interrupt())?,
                listen(SignalKind::terminate())?,
                listen(SignalKind::hangup())?,
            ],
        })
    }

    async fn recv(&mut self) {
        let [int, term, hup] = &mut self.signals;
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    }
}

/// Where the demo keeps its files.
struct Paths {
    postgres: PathBuf,
    keys: PathBuf,
    pipes: PathBuf,
    logs: PathBuf,
    data: PathBuf,
}

impl Paths {
    fn create(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let data = data_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", data_dir.display()))?;
        let paths = Paths {
            postgres: data.join("postgres"),
            keys: data.join("keys"),
            pipes: data.join("pipes"),
            logs: data.join("logs"),
            data,
        };
        for dir in [&paths.pipes, &paths.logs] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Ok(paths)
    }
}

/// A task that stops when its token is cancelled.
struct Task {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Task {
    async fn stop(self, name: &str, deadline: Duration) {
        self.stop.cancel();
        let abort = self.handle.abort_handle();
        if tokio::time::timeout(deadline, self.handle).await.is_err() {
            tracing::warn!(name, "did not stop in time; aborting it");
            abort.abort();
        }
    }
}

/// What the running stack offers to the front end.
struct Running {
    port: u16,
    console_password: String,
    /// The console's operator key (an admin of this run's fresh database; never written).
    console_key: std::sync::Arc<mujin_protocol::ticket::SigningKey>,
    /// Fires when the customers start coming (all agents online, or the deadline passed).
    customers_ready: oneshot::Receiver<()>,
}

/// The parts started so far; [`Stack::shutdown`] stops whichever are there.
#[derive(Default)]
struct Stack {
    cluster: Option<PrivateCluster>,
    pool: Option<DbPool>,
    broker: Option<Broker>,
    management: Option<Task>,
    agents: Vec<RunningAgent>,
    simulator: Option<Task>,
}

/// A fresh random password for one MQTT client of this run.
fn password() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

const MANAGEMENT_USER: &str = "management";
const CONSOLE_USER: &str = "console";
/// The demo's own client that waits for the agents to come online.
const WATCHER_USER: &str = "demo-watcher";

/// This run's MQTT secrets; never written anywhere. Management, the console and the watcher
/// use fixed accounts with fresh passwords; every device its own enrolled identity.
struct Secrets {
    management: String,
    console: String,
    watcher: String,
    /// Each device's token and device key, in the order of the devices.
    agents: Vec<(Token, DeviceKey)>,
}

impl Secrets {
    /// Fresh passwords, and a fresh enrolment (so a fresh token) of every device.
    async fn new(
        pool: &DbPool,
        key_dir: &Path,
        (store, devices): (&StoreId, &[DeviceId]),
    ) -> anyhow::Result<Self> {
        let pepper = keys::load_or_create_pepper(key_dir)?;
        let mut agents = Vec::new();
        for device in devices {
            let identity = device_identity(store, device);
            let enrolled = identities::enrol(pool, &pepper, &identity, chrono::Utc::now())
                .await
                .with_context(|| format!("cannot enrol {device}"))?;
            let device_key = enrolled
                .device_key
                .with_context(|| format!("no device key for {device}"))?;
            agents.push((enrolled.token, device_key));
        }
        Ok(Self {
            management: password(),
            console: password(),
            watcher: password(),
            agents,
        })
    }

    /// The fixed accounts the broker lets in (devices come from the database).
    fn credentials(&self) -> Credentials {
        let mut credentials = Credentials::new();
        credentials.insert(MANAGEMENT_USER, self.management.clone());
        credentials.insert(CONSOLE_USER, self.console.clone());
        credentials.insert(WATCHER_USER, self.watcher.clone());
        credentials
    }
}

/// Makes the console an admin operator with a key of this run, which signs its requests.
async fn add_console_operator(
    pool: &DbPool,
) -> anyhow::Result<std::sync::Arc<mujin_protocol::ticket::SigningKey>> {
    let placeholder = KeyId::parse("op")?;
    let (_, pkcs8) = mujin_protocol::ticket::SigningKey::generate(placeholder)?;
    let key = mujin_protocol::signed::operator_key(&pkcs8)?;
    let operator = mujin_protocol::OperatorId::parse(CONSOLE_USER)?;
    let admin = mujin_management::operators::Role::Admin;
    mujin_management::operators::add(
        pool,
        &operator,
        admin,
        &key.public_key(),
        chrono::Utc::now(),
    )
    .await
    .context("cannot add the console's operator")?;
    Ok(std::sync::Arc::new(key))
}

fn device_identity(store: &StoreId, device: &DeviceId) -> Identity {
    Identity::Device {
        store: store.clone(),
        device: device.clone(),
    }
}

fn ids() -> anyhow::Result<(StoreId, Vec<DeviceId>)> {
    let store = StoreId::parse(STORE)?;
    let devices = DEVICES
        .iter()
        .map(|(device, _)| DeviceId::parse(device))
        .collect::<Result<_, _>>()?;
    Ok((store, devices))
}

/// The public keys every agent is given (`KEYID:HEX`).
struct AgentKeys {
    /// Management's command key: commands and desired states.
    management: String,
    /// Management's root key: trust lists.
    root: String,
}

impl Stack {
    /// Starts every part in order. Each part is stored as soon as it runs, so that
    /// [`Stack::shutdown`] stops it even when a later part fails.
    async fn start(&mut self, settings: &DemoSettings) -> anyhow::Result<Running> {
        let paths = Paths::create(&settings.data_dir)?;
        let (store, devices) = ids()?;
        let database_url = self.open_database(&paths, &store, &devices).await?;
        let key_id = KeyId::parse(KEY_ID)?;
        let ticket_keys = keys::load_or_create(&paths.keys, &key_id)?;
        let pool = self.pool.clone().context("the database is not open")?;
        let secrets = Secrets::new(&pool, &paths.keys, (&store, &devices)).await?;
        let identities = IdentitySettings::new(
            database_url.clone(),
            keys::load_or_create_pepper(&paths.keys)?,
        );

        let broker = start_broker(settings.port, secrets.credentials(), identities).await?;
        let port = broker.v4_addr().port();
        self.broker = Some(broker);
        tracing::info!(port, "broker ready");
        self.management = Some(start_management(
            &database_url,
            port,
            secrets.management.clone(),
            &paths.keys,
            key_id,
        ));
        let agent_keys = AgentKeys {
            management: public_key_text(&ticket_keys.command.public_key()),
            root: public_key_text(&ticket_keys.root.public_key()),
        };
        self.spawn_agents(&paths, (&store, &devices), port, &secrets, &agent_keys)?;

        let (ready_tx, customers_ready) = oneshot::channel();
        let watcher = Watcher {
            port,
            username: WATCHER_USER.to_owned(),
            password: secrets.watcher.clone(),
        };
        let simulator = Simulator {
            pool: self.pool.clone().context("the database is not open")?,
            key: ticket_keys.signing,
            store: store.clone(),
            devices: devices
                .iter()
                .map(|device| (device.clone(), scan_pipe(&paths, device)))
                .collect(),
        };
        self.simulator = Some(start_customers(
            watcher, store, devices, simulator, ready_tx,
        ));
        Ok(Running {
            port,
            console_password: secrets.console,
            console_key: add_console_operator(&pool).await?,
            customers_ready,
        })
    }

    /// Starts PostgreSQL, re-creates the demo database and registers the store's devices;
    /// returns the database URL.
    async fn open_database(
        &mut self,
        paths: &Paths,
        store: &StoreId,
        devices: &[DeviceId],
    ) -> anyhow::Result<String> {
        // Not in spawn_blocking: see `run` for why this must run on the main thread.
        let cluster = PrivateCluster::start(&paths.postgres)
            .with_context(|| format!("cannot start PostgreSQL in {}", paths.postgres.display()))?;
        let database_url = fresh_database(self.cluster.insert(cluster)).await?;
        let pool = self.pool.insert(db::pool(&database_url, 4)?);
        db::migrate(pool)
            .await
            .context("cannot prepare the database")?;
        for (device, (_, name)) in devices.iter().zip(DEVICES) {
            booking::add_device(pool, store, device, name).await?;
        }
        // The demo store lets its devices start offline when management does not answer.
        let offline = booking::StoreSettingsChange {
            offline_start: Some(true),
            ..booking::StoreSettingsChange::default()
        };
        booking::update_store_settings(pool, store, offline)
            .await
            .context("cannot allow offline starts in the demo store")?;
        Ok(database_url)
    }

    fn spawn_agents(
        &mut self,
        paths: &Paths,
        (store, devices): (&StoreId, &[DeviceId]),
        port: u16,
        secrets: &Secrets,
        keys: &AgentKeys,
    ) -> anyhow::Result<()> {
        let program = agents::write_program(&paths.data)?;
        for (device, (token, device_key)) in devices.iter().zip(&secrets.agents) {
            self.agents.push(agents::spawn(&AgentSpec {
                store,
                device,
                broker_port: port,
                username: device_identity(store, device).username(),
                password: token.expose().to_owned(),
                device_key: device_key.expose_hex(),
                scan_pipe: scan_pipe(paths, device),
                log: paths.logs.join(format!("{device}.log")),
                program: &program,
                management_key: keys.management.clone(),
                root_key: keys.root.clone(),
            })?);
        }
        Ok(())
    }

    /// Stops the customers (the headless run does this before reading its summary).
    async fn stop_customers(&mut self) {
        if let Some(simulator) = self.simulator.take() {
            simulator
                .stop("customer simulator", Duration::from_secs(5))
                .await;
        }
    }

    /// Stops every part that runs, in reverse order of their start.
    async fn shutdown(mut self) {
        self.stop_customers().await;
        agents::stop_all(std::mem::take(&mut self.agents), AGENT_STOP_GRACE).await;
        if let Some(management) = self.management.take() {
            management.stop("management", Duration::from_secs(10)).await;
        }
        if let Some(pool) = self.pool.take() {
            pool.close();
        }
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await;
        }
        if let Some(cluster) = self.cluster.take() {
            match tokio::task::spawn_blocking(move || cluster.stop()).await {
                Ok(Ok(())) => tracing::info!("PostgreSQL stopped"),
                Ok(Err(error)) => tracing::warn!(%error, "PostgreSQL did not stop cleanly"),
                Err(error) => tracing::warn!(%error, "cannot stop PostgreSQL"),
            }
        }
        tracing::info!("demo store closed");
    }
}

fn scan_pipe(paths: &Paths, device: &DeviceId) -> PathBuf {
    paths.pipes.join(format!("{device}.scan"))
}

/// Drops and re-creates the demo database, so every run starts clean; returns its URL.
async fn fresh_database(cluster: &PrivateCluster) -> anyhow::Result<String> {
    let admin = db::pool(&cluster.connection_string("postgres"), 1)?;
    let dropped = async {
        let client = admin.get().await?;
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
            .await?;
        anyhow::Ok(())
    }
    .await;
    admin.close();
    dropped.context("cannot drop the previous demo database")?;
    cluster.create_database(DATABASE).await?;
    Ok(cluster.connection_string(DATABASE))
}

/// The broker (checking the devices' identities) on the requested port, or on 1883 when free,
/// else on any free port.
async fn start_broker(
    requested: Option<u16>,
    credentials: Credentials,
    identities: IdentitySettings,
) -> anyhow::Result<Broker> {
    let settings = |port| BrokerSettings {
        listen_v4: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        listen_v5: None,
        credentials: credentials.clone(),
    };
    let port = match requested {
        Some(port) => port,
        None if TcpListener::bind((Ipv4Addr::LOCALHOST, DEFAULT_PORT)).is_ok() => DEFAULT_PORT,
        None => mujin_broker::free_local_port()?,
    };
    let start = |port| Broker::start_with_identities(settings(port), Some(identities.clone()));
    match start(port).await {
        // Someone took the port between our check and the bind: any free port will do.
        Err(BrokerError::Bind { .. }) if requested.is_none() => {
            let port = mujin_broker::free_local_port()?;
            Ok(start(port).await?)
        }
        started => Ok(started?),
    }
}

fn start_management(
    database_url: &str,
    port: u16,
    password: String,
    key_dir: &Path,
    key_id: KeyId,
) -> Task {
    let settings = mujin_management::Settings {
        database_url: database_url.to_owned(),
        mqtt: MqttSettings {
            host: Ipv4Addr::LOCALHOST.to_string(),
            port,
            username: MANAGEMENT_USER.to_owned(),
            password,
            client_id: "mujin-demo-management".to_owned(),
            tls: None,
        },
        key_dir: key_dir.to_owned(),
        key_id,
        early_grace: EARLY_GRACE,
        metrics_listen: None,
        booking_broker: None,
    };
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    let handle = tokio::spawn(async move {
        if let Err(error) = mujin_management::run(settings, shutdown).await {
            tracing::error!(error = format!("{error:#}"), "management failed");
        }
    });
    Task { stop, handle }
}

/// Waits for the agents to come online, then lets the customers in until stopped.
fn start_customers(
    watcher: Watcher,
    store: StoreId,
    devices: Vec<DeviceId>,
    simulator: Simulator,
    ready: oneshot::Sender<()>,
) -> Task {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let handle = tokio::spawn(async move {
        let online = agents::wait_until_online(&watcher, &store, &devices, AGENTS_ONLINE_DEADLINE);
        tokio::select! {
            () = token.cancelled() => return,
            _ = online => {}
        }
        let _ = ready.send(());
        simulator::run(simulator, token).await;
    });
    Task { stop, handle }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_and_its_devices_are_valid_ids() {
        let (store, devices) = ids().unwrap();
        assert_eq!(store.as_str(), "demo");
        assert_eq!(devices.len(), 4);
    }

    #[test]
    fn every_password_is_fresh() {
        assert_ne!(password(), password());
        assert!(password().len() >= 32);
    }

    #[tokio::test]
    async fn a_requested_port_in_use_is_an_error() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let pepper = mujin_protocol::identity::Pepper::from_bytes(&[0u8; 32]).unwrap();
        // No database there: the broker starts without identities, and fails on the port.
        let identities = IdentitySettings::new("host=/nonexistent dbname=none", pepper);
        let error = start_broker(Some(port), Credentials::new(), identities)
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains(&port.to_string()), "{error}");
    }
}
