//! A whole mujin stack for one test: the `mujin-broker` process (checking the database's
//! identities), a fresh database, management running in-process, and an observer. Devices
//! registered with [`Stack::add_device`] are enrolled, and their agents ([`Stack::agent`]) connect
//! with their own identity and sign with their own device key ([`Stack::sign_as`] signs a
//! hand-made device message the same way); management, the observer and the operator use the
//! fixed accounts of the broker's credentials file. [`Stack::start_on_mosquitto`] runs the same
//! stack on a real Mosquitto instead, with Mosquitto's usernames and the generated ACL.
//! [`Stack::start_with_bookings`] adds booking over MQTT (an MQTT 5 listener and management's
//! booking gateway); integrators are enrolled with [`Stack::enrol_integrator`] (module
//! [`crate::bookings`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use mujin_management::booking::{self, Booking, BookingError};
use mujin_management::identities;
use mujin_management::keys::{self, TicketKeys};
use mujin_management::{db, MqttSettings, Settings};
use mujin_protocol::device_auth::{DeviceKey, DeviceMessage};
use mujin_protocol::identity::{Identity, Pepper};
use mujin_protocol::message::{self, Availability, EventKind};
use mujin_protocol::presence::WorkerStatus;
use mujin_protocol::topic::Topic;
use mujin_protocol::{DeviceId, KeyId, SessionId, StoreId};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::mosquitto::{Binaries, StackLogins};
use crate::observer::Observer;
use crate::tls::StackTls;

/// How long the harness waits for one step of a session.
const SHORT: Duration = Duration::from_secs(10);

/// Usernames and passwords of the test broker's credentials file. Agents of devices registered
/// with [`Stack::add_device`] use their own identity instead of `AGENT`.
pub const MANAGEMENT: (&str, &str) = ("management", "management-secret");
pub const AGENT: (&str, &str) = ("agent", "agent-secret");
pub const OBSERVER: (&str, &str) = ("observer", "observer-secret");
/// An operator at a console (its user name is its operator id).
pub const OPERATOR: (&str, &str) = ("alice", "alice-secret");

/// The running parts of one test.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub database_url: String,
    pub pool: Pool,
    pub keys: TicketKeys,
    /// The pepper of identity tokens (the broker reads the same file, [`Stack::pepper_file`]).
    pub pepper: Pepper,
    pub observer: Observer,
    /// The token of each enrolled device.
    tokens: Mutex<HashMap<(StoreId, DeviceId), String>>,
    /// The device key of each enrolled device (its latest enrolment's).
    device_keys: Mutex<HashMap<(StoreId, DeviceId), Arc<DeviceKey>>>,
    broker: Option<Child>,
    management: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    /// TLS on the broker and for management and agents ([`Stack::start_with_tls`]).
    pub tls: Option<StackTls>,
    /// Where management serves its metrics ([`Stack::start_with_metrics`]).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Mosquitto in place of `mujin-broker` ([`Stack::start_on_mosquitto`]).
    pub mosquitto: Option<StackLogins>,
    /// The broker's MQTT 5 port, where management takes booking requests
    /// ([`Stack::start_with_bookings`]); `None`: booking over MQTT is off.
    pub v5_port: Option<u16>,
}

impl Stack {
    /// Starts the broker, a fresh database and management.
    pub async fn start() -> Stack {
        Self::start_on(crate::postgres::fresh_database().await).await
    }

    /// Like [`Stack::start`], with the broker's TLS listener on and management and agents
    /// connecting through it (the observer stays on the plain listener), client certificates
    /// required or not.
    pub async fn start_with_tls(client_certificates: bool) -> Stack {
        let database_url = crate::postgres::fresh_database().await;
        Self::start_on_with(database_url, Some(client_certificates), None, None, false).await
    }

    /// Like [`Stack::start`], with management serving Prometheus metrics on a free local port
    /// ([`Stack::metrics_listen`]).
    pub async fn start_with_metrics() -> Stack {
        let database_url = crate::postgres::fresh_database().await;
        let port = mujin_broker::free_local_port().expect("a free port");
        let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Self::start_on_with(database_url, None, Some(metrics), None, false).await
    }

    /// Like [`Stack::start`], on a real Mosquitto instead of `mujin-broker`: management
    /// connects as the enrolled service `mujin-management`, agents as their devices, with
    /// Mosquitto's usernames (`.` for `:`); the ACL generated from the registry is written and
    /// Mosquitto reloaded at every enrolment. The observer keeps its fixed account. There is
    /// no TLS and no broker restart on this stack.
    pub async fn start_on_mosquitto(binaries: &Binaries) -> Stack {
        let database_url = crate::postgres::fresh_database().await;
        Self::start_on_with(database_url, None, None, Some(binaries), false).await
    }

    /// Like [`Stack::start`], on the given (empty) database.
    pub async fn start_on(database_url: String) -> Stack {
        Self::start_on_with(database_url, None, None, None, false).await
    }

    /// Like [`Stack::start`], with booking over MQTT on: the broker also listens for MQTT 5 on
    /// [`Stack::v5_port`] and management runs its booking gateway there (as with
    /// `mujin-management run --booking-broker 127.0.0.1:V5PORT`). MQTT 3.1.1 integrators use
    /// [`Stack::port`] as usual.
    pub async fn start_with_bookings() -> Stack {
        let database_url = crate::postgres::fresh_database().await;
        Self::start_on_with(database_url, None, None, None, true).await
    }

    /// [`Stack::start_on_mosquitto`] with booking over MQTT on (Mosquitto speaks MQTT 5 on its
    /// one port, which is then also [`Stack::v5_port`]).
    pub async fn start_on_mosquitto_with_bookings(binaries: &Binaries) -> Stack {
        let database_url = crate::postgres::fresh_database().await;
        Self::start_on_with(database_url, None, None, Some(binaries), true).await
    }

    async fn start_on_with(
        database_url: String,
        tls_client_certificates: Option<bool>,
        metrics_listen: Option<std::net::SocketAddr>,
        mosquitto: Option<&Binaries>,
        bookings: bool,
    ) -> Stack {
        crate::init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = tls_client_certificates.map(|required| StackTls::new(dir.path(), required));
        // The schema first: the broker reads the identities table from its start.
        let pool = db::pool(&database_url, 4).expect("pool");
        db::migrate(&pool).await.expect("migrations");
        let keys = keys::load_or_create(&key_dir(&dir), &KeyId::parse("k1").expect("key id"))
            .expect("signing key");
        let pepper = keys::load_or_create_pepper(&key_dir(&dir)).expect("identity pepper");
        let (broker, mosquitto, port, v5_port) = match mosquitto {
            Some(binaries) => {
                let on = StackLogins::start(binaries, dir.path(), &pool, &pepper, OBSERVER).await;
                let port = on.broker.port();
                (None, Some(on), port, bookings.then_some(port))
            }
            None => {
                let port = mujin_broker::free_local_port().expect("a free port");
                let v5_port =
                    bookings.then(|| mujin_broker::free_local_port().expect("a free port"));
                let ports = (port, v5_port);
                let broker = start_broker(dir.path(), &database_url, ports, tls.as_ref()).await;
                (Some(broker), None, port, v5_port)
            }
        };
        let observer = Observer::connect(port, OBSERVER.0, OBSERVER.1).await;
        let mut stack = Stack {
            dir,
            port,
            database_url,
            pool,
            keys,
            pepper,
            observer,
            tokens: Mutex::new(HashMap::new()),
            device_keys: Mutex::new(HashMap::new()),
            broker,
            management: None,
            tls,
            metrics_listen,
            mosquitto,
            v5_port,
        };
        stack.start_management();
        stack.wait_for_management().await;
        stack
    }

    /// Waits until management decides scans (its worker says it is online).
    pub async fn wait_for_management(&self) {
        self.wait_for_workers(1).await;
    }

    /// Waits until `workers` management workers are online: each announces itself on its
    /// retained status topic once its subscriptions are in place.
    pub async fn wait_for_workers(&self, workers: usize) {
        let online = || {
            let mut latest = std::collections::HashMap::new();
            for recorded in self.observer.recorded() {
                if let Topic::Worker { worker } = recorded.topic {
                    if let Ok(status) = message::decode::<WorkerStatus>(&recorded.payload) {
                        latest.insert(worker, status.availability);
                    }
                }
            }
            latest
                .values()
                .filter(|availability| **availability == Availability::Online)
                .count()
        };
        crate::wait_for(
            &format!("{workers} management worker(s) online"),
            Duration::from_secs(20),
            || {
                let ready = (online() >= workers).then_some(());
                async move { ready }
            },
        )
        .await;
    }

    /// Starts management in-process (again, after [`Stack::stop_management`]).
    pub fn start_management(&mut self) {
        let settings = Settings {
            database_url: self.database_url.clone(),
            mqtt: MqttSettings {
                host: "127.0.0.1".into(),
                port: self.tls.as_ref().map_or(self.port, |tls| tls.port),
                username: self.management_credentials().0,
                password: self.management_credentials().1,
                client_id: "mujin-management".into(),
                tls: self.tls.as_ref().map(StackTls::client),
            },
            key_dir: key_dir(&self.dir),
            key_id: KeyId::parse("k1").expect("key id"),
            early_grace: Duration::from_secs(5),
            metrics_listen: self.metrics_listen,
            booking_broker: self.v5_port.map(|port| ("127.0.0.1".to_owned(), port)),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(mujin_management::run(
            settings,
            stop.clone().cancelled_owned(),
        ));
        self.management = Some((stop, task));
    }

    /// Starts management as a real `mujin-management run` process on the same database, keys and
    /// broker (stop the in-process one first). Killed when dropped.
    pub fn spawn_management_process(&self) -> Child {
        self.spawn_management_worker("mujin-management")
    }

    /// Like [`Stack::spawn_management_process`], with its own MQTT client id, so several
    /// workers can run at once.
    pub fn spawn_management_worker(&self, client_id: &str) -> Child {
        let (port, tls_args) = match &self.tls {
            Some(tls) => (tls.port, tls.client_args()),
            None => (self.port, Vec::new()),
        };
        let (username, password) = self.management_credentials();
        Command::new(crate::binary("mujin-management"))
            .arg("--database-url")
            .arg(&self.database_url)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["run", "--broker", &format!("127.0.0.1:{port}")])
            .args(tls_args)
            .args(["--username", &username, "--early-grace-secs", "5"])
            .args(["--client-id", client_id])
            .args(
                self.v5_port
                    .map(|v5| format!("--booking-broker=127.0.0.1:{v5}")),
            )
            .env("MUJIN_MQTT_PASSWORD", password)
            .env("RUST_LOG", "info,rumqttc=warn,refinery_core=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start mujin-management")
    }

    /// Stops management cleanly and waits for it.
    pub async fn stop_management(&mut self) {
        if let Some((stop, task)) = self.management.take() {
            stop.cancel();
            task.await
                .expect("management task")
                .expect("management ran cleanly");
        }
    }

    /// Registers a device and enrols it (once per stack), so its agent connects as itself.
    pub async fn add_device(&self, store: &str, device: &str) -> (StoreId, DeviceId) {
        let store = StoreId::parse(store).expect("store id");
        let device = DeviceId::parse(device).expect("device id");
        booking::add_device(&self.pool, &store, &device, "")
            .await
            .expect("register device");
        let key = (store.clone(), device.clone());
        let enrolled = self.tokens.lock().expect("tokens").contains_key(&key);
        if !enrolled {
            self.enrol_device(&key).await;
        }
        key
    }

    /// Enrols a device (again): a new token and device key for its identity, which its next
    /// agent uses; the previous ones stop working. Returns the new token.
    pub async fn enrol_device(&self, (store, device): &(StoreId, DeviceId)) -> String {
        let identity = Identity::Device {
            store: store.clone(),
            device: device.clone(),
        };
        let enrolled = identities::enrol(&self.pool, &self.pepper, &identity, Utc::now())
            .await
            .expect("enrol the device");
        let token = enrolled.token.expose().to_owned();
        if let Some(device_key) = enrolled.device_key {
            self.device_keys
                .lock()
                .expect("device keys")
                .insert((store.clone(), device.clone()), Arc::new(device_key));
        }
        self.tokens
            .lock()
            .expect("tokens")
            .insert((store.clone(), device.clone()), token.clone());
        if let Some(mosquitto) = &self.mosquitto {
            mosquitto.enrolled(&self.pool, &identity, &token).await;
        }
        token
    }

    /// The username and password management connects with: the fixed account, or on
    /// Mosquitto its service identity.
    pub fn management_credentials(&self) -> (String, String) {
        match &self.mosquitto {
            Some(mosquitto) => mosquitto.management.clone(),
            None => (MANAGEMENT.0.to_owned(), MANAGEMENT.1.to_owned()),
        }
    }

    /// The username and password an agent of `device` connects with: its identity once
    /// enrolled, else the shared fixed account.
    pub fn agent_credentials(&self, (store, device): &(StoreId, DeviceId)) -> (String, String) {
        let tokens = self.tokens.lock().expect("tokens");
        match tokens.get(&(store.clone(), device.clone())) {
            Some(token) => {
                let identity = Identity::Device {
                    store: store.clone(),
                    device: device.clone(),
                };
                let username = match &self.mosquitto {
                    Some(_) => mujin_management::mosquitto::mosquitto_username(&identity),
                    None => identity.username(),
                };
                (username, token.clone())
            }
            None => (AGENT.0.to_owned(), AGENT.1.to_owned()),
        }
    }

    /// The device key of an enrolled device.
    pub fn device_key(&self, (store, device): &(StoreId, DeviceId)) -> Option<Arc<DeviceKey>> {
        let keys = self.device_keys.lock().expect("device keys");
        keys.get(&(store.clone(), device.clone())).cloned()
    }

    /// Signs a hand-made message with `device`'s key, as its agent would (a scan's `sent_at` is
    /// left as it is: see [`Stack::sign_scan_as`]). Panics for a device not enrolled.
    pub fn sign_as<M: DeviceMessage>(&self, device: &(StoreId, DeviceId), message: &mut M) {
        let key = self
            .device_key(device)
            .unwrap_or_else(|| panic!("{}/{} is not enrolled", device.0, device.1));
        key.sign(&device.0, &device.1, message);
    }

    /// Stamps `scan` as sent now and signs it as `device`'s.
    pub fn sign_scan_as(&self, device: &(StoreId, DeviceId), scan: &mut message::Scan) {
        scan.sent_at = Some(Utc::now());
        self.sign_as(device, scan);
    }

    /// The pepper file the broker was given.
    pub fn pepper_file(&self) -> PathBuf {
        key_dir(&self.dir).join(keys::PEPPER_FILE)
    }

    /// Books `device` from `now + start` for `length`.
    pub async fn book(
        &self,
        (store, device): &(StoreId, DeviceId),
        start: chrono::Duration,
        length: chrono::Duration,
    ) -> Result<Booking, BookingError> {
        let now = Utc::now();
        booking::reserve(
            &self.pool,
            &self.keys.signing,
            store,
            device,
            now + start,
            now + start + length,
            now,
        )
        .await
    }

    /// Books `device` from now (rounded up to the next whole second) for `seconds`.
    pub async fn book_now(&self, device: &(StoreId, DeviceId), seconds: i64) -> Booking {
        let now = Utc::now();
        let to_next_second =
            chrono::Duration::milliseconds(1000 - i64::from(now.timestamp_subsec_millis()));
        self.book(
            device,
            chrono::Duration::zero() - to_next_second + chrono::Duration::seconds(1),
            chrono::Duration::seconds(seconds),
        )
        .await
        .expect("booking")
    }

    /// Starts a real agent process for the device (through the TLS listener when the stack
    /// has one).
    pub fn agent(&self, (store, device): &(StoreId, DeviceId)) -> Agent {
        let port = self.tls.as_ref().map_or(self.port, |tls| tls.port);
        self.agent_via(port, &(store.clone(), device.clone()))
    }

    /// Management's command key as agents are given it (`KEYID:HEX`).
    pub fn management_key(&self) -> String {
        mujin_protocol::signed::public_key_text(&self.keys.command.public_key())
    }

    /// Management's root key as agents are given it (`KEYID:HEX`): it signs the trust lists.
    pub fn root_key(&self) -> String {
        mujin_protocol::signed::public_key_text(&self.keys.root.public_key())
    }

    /// Starts the broker process again on the same port (after [`Stack::kill_broker`]); like
    /// any rumqttd restart it comes back empty: no sessions, no retained messages.
    pub async fn restart_broker(&mut self) {
        assert!(self.broker.is_none(), "the broker is still running");
        assert!(
            self.mosquitto.is_none(),
            "a stack on Mosquitto keeps its broker"
        );
        let tls = self.tls.as_ref();
        let ports = (self.port, self.v5_port);
        self.broker = Some(start_broker(self.dir.path(), &self.database_url, ports, tls).await);
    }

    /// The lifecycle of every command sent for a session: (action, status, attempts), oldest first.
    pub async fn commands_of(
        &self,
        session_id: mujin_protocol::SessionId,
    ) -> Vec<(String, String, i32)> {
        let client = self.pool.get().await.expect("db connection");
        client
            .query(
                "SELECT action, status, attempts FROM commands WHERE session_id = $1 ORDER BY created_at",
                &[&session_id.as_uuid()],
            )
            .await
            .expect("query commands")
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect()
    }

    /// Scans `ticket` on the agent and returns the session it started and the program's pid.
    pub async fn start_session(&self, agent: &mut Agent, ticket: &str) -> (SessionId, i32) {
        let ticket_id = mujin_protocol::ticket::parse_unverified(ticket)
            .expect("a ticket")
            .claims
            .ticket_id;
        agent.scan(ticket).await;
        agent.wait_screen("ACCEPTED", SHORT).await;
        let pid = agent.program_pid(SHORT).await;
        let session_id = self
            .observer
            .wait_event("the session to start", SHORT, |event| match event.kind {
                EventKind::SessionStarted {
                    session_id,
                    ticket_id: started,
                    ..
                } if started == ticket_id => Some(session_id),
                _ => None,
            })
            .await;
        (session_id, pid)
    }

    /// Starts a real agent process that reaches the broker through `port` (e.g. a proxy's).
    pub fn agent_via(&self, port: u16, device: &(StoreId, DeviceId)) -> Agent {
        self.agent_with_args(port, device, &[])
    }

    /// Like [`Stack::agent_via`], with more command-line flags for the agent (e.g. its own
    /// `--telemetry-interval-ms`).
    pub fn agent_with_args(
        &self,
        port: u16,
        (store, device): &(StoreId, DeviceId),
        args: &[&str],
    ) -> Agent {
        let key = self.management_key();
        let id = (store.clone(), device.clone());
        let (username, password) = self.agent_credentials(&id);
        let device_key = self.device_key(&id).map(|key| key.expose_hex());
        Agent::spawn(
            self.dir.path(),
            port,
            (&username, &password),
            (store, device),
            &key,
            &self.root_key(),
            device_key.as_deref(),
            &self
                .tls
                .as_ref()
                .map(StackTls::client_args)
                .unwrap_or_default()
                .into_iter()
                .chain(args.iter().map(|arg| arg.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    /// Kills the broker process (as a crash would).
    pub async fn kill_broker(&mut self) {
        if let Some(mut broker) = self.broker.take() {
            let _ = broker.kill().await;
        }
    }

    /// One row of the sessions table.
    pub async fn session_row(&self, ticket: &Booking) -> Option<SessionRow> {
        let client = self.pool.get().await.expect("db connection");
        let row = client
            .query_opt(
                "SELECT started_at, lease_until, ended_at, end_reason FROM sessions WHERE ticket_id = $1",
                &[&ticket.claims.ticket_id.as_uuid()],
            )
            .await
            .expect("query sessions")?;
        Some(SessionRow {
            started_at: row.get(0),
            lease_until: row.get(1),
            ended_at: row.get(2),
            end_reason: row.get(3),
        })
    }

    /// How many sessions a ticket produced.
    pub async fn session_count(&self, ticket: &Booking) -> i64 {
        let client = self.pool.get().await.expect("db connection");
        client
            .query_one(
                "SELECT count(*) FROM sessions WHERE ticket_id = $1",
                &[&ticket.claims.ticket_id.as_uuid()],
            )
            .await
            .expect("count sessions")
            .get(0)
    }

    /// Stops management and the broker.
    pub async fn shutdown(mut self) {
        self.stop_management().await;
        self.kill_broker().await;
    }
}

/// A session's usage record.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub started_at: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
}

fn key_dir(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("keys")
}

/// Starts `mujin-broker` on `port` (and MQTT 5 on `v5_port`), with the fixed accounts in
/// `dir`/credentials.toml and the identities of `database_url` (pepper in `dir`/keys), and waits
/// until it says it listens.
async fn start_broker(
    dir: &Path,
    database_url: &str,
    (port, v5_port): (u16, Option<u16>),
    tls: Option<&StackTls>,
) -> Child {
    let credentials = dir.join("credentials.toml");
    let mut file = String::new();
    for (username, password) in [MANAGEMENT, AGENT, OBSERVER, OPERATOR] {
        file.push_str(&format!(
            "[[client]]\nusername = \"{username}\"\npassword = \"{password}\"\n\n"
        ));
    }
    std::fs::write(&credentials, file).expect("write credentials");
    let mut child = Command::new(crate::binary("mujin-broker"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(v5_port.map(|v5| format!("--listen-v5=127.0.0.1:{v5}")))
        .args(tls.map(StackTls::broker_args).unwrap_or_default())
        .arg("--credentials")
        .arg(&credentials)
        .arg("--identity-pepper")
        .arg(dir.join("keys").join(keys::PEPPER_FILE))
        .env("MUJIN_BROKER_DATABASE_URL", database_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start mujin-broker");
    let stdout = child.stdout.take().expect("broker stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("listening") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "mujin-broker did not report listening");
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// Store settings for the session lifecycle tests.
impl Stack {
    /// Sets how many minutes before the end sessions of `store` are warned, and how long after
    /// its start a booking nobody scanned becomes a no-show.
    pub async fn set_store_timing(
        &self,
        store: &StoreId,
        warn_minutes: i32,
        no_show_grace_seconds: i32,
    ) {
        let client = self.pool.get().await.expect("db connection");
        let updated = client
            .execute(
                "UPDATE stores SET warn_minutes = $2, no_show_grace_seconds = $3 WHERE store_id = $1",
                &[&store.as_str(), &warn_minutes, &no_show_grace_seconds],
            )
            .await
            .expect("update store timing");
        assert_eq!(updated, 1, "store {store} is registered");
    }
}
