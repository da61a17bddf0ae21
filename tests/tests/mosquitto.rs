//! The Mosquitto ACL generated from the identities registry, on a real Mosquitto: a device
//! publishes only on its own topics and hears only its own; an operator cannot publish a
//! command; management's shared subscriptions work. Real PostgreSQL for the registry, a real
//! `mosquitto` process with a password file made by `mosquitto_passwd`, plain rumqttc clients.
//!
//! Mosquitto accepts a denied publish (it even acknowledges it) and drops it, and accepts every
//! subscription, filtering each delivered message instead. So "denied" is checked as "never
//! delivered": after the denied messages, a permitted marker goes the same way; once the
//! marker has arrived, anything published before it on the same path would have too.

// The whole file is test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use chrono::Utc;
use mujin_management::{db, identities, keys, mosquitto};
use mujin_protocol::identity::{device_client_id, Identity, ServiceName};
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::{DeviceId, OperatorId, StoreId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const SHORT: Duration = Duration::from_secs(10);

/// `mosquitto` (often in /usr/sbin, not on a user's PATH) and `mosquitto_passwd`.
fn mosquitto_binaries() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    };
    Some((find("mosquitto")?, find("mosquitto_passwd")?))
}

/// The binaries, or `None` after saying why the test is skipped; in CI a missing Mosquitto
/// is a failure, not a skip.
fn mosquitto_or_skip() -> Option<(PathBuf, PathBuf)> {
    let found = mosquitto_binaries();
    if found.is_none() {
        let message =
            "mosquitto is not installed (`apt-get install mosquitto`; .ci/run installs it)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        println!("skipped: {message}");
    }
    found
}

/// A running `mosquitto`, stopped when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Mosquitto {
    /// Starts Mosquitto with the ACL and password files in `dir` and waits until it listens.
    async fn start(binary: &Path, dir: &Path) -> Mosquitto {
        let port = mujin_broker::free_local_port().unwrap();
        let config = dir.join("mosquitto.conf");
        // As root, Mosquitto would switch to the `mosquitto` user, who cannot read the test's
        // private directory; `user root` keeps it as it is (and is ignored when not root).
        std::fs::write(
            &config,
            format!(
                "user root\nlistener {port} 127.0.0.1\n\
                 allow_anonymous false\npassword_file {}\nacl_file {}\n\
                 persistence false\nlog_dest stdout\nlog_type all\n",
                dir.join("passwords").display(),
                dir.join("acl").display(),
            ),
        )
        .unwrap();
        let log = dir.join("mosquitto.log");
        let output = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap();
        let mut broker = Mosquitto { child, port, log };
        let deadline = tokio::time::Instant::now() + SHORT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(status) = broker.child.try_wait().unwrap() {
                panic!("mosquitto exited ({status}): {}", broker.log_text());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto does not listen: {}",
                broker.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        broker
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain MQTT client: its event loop runs in its own task, which subscribes on every
/// ConnAck and forwards what arrives.
struct Client {
    client: AsyncClient,
    received: mpsc::UnboundedReceiver<Publish>,
    /// How many of its QoS 1 publishes the broker acknowledged.
    acked: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Client {
    /// Connects and returns once `filters` (QoS 1) are acknowledged.
    async fn connect(
        port: u16,
        client_id: &str,
        login: &(String, String),
        filters: &[String],
    ) -> Client {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_credentials(&login.0, &login.1)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        let (forward, received) = mpsc::unbounded_channel();
        let (acked_tx, acked) = watch::channel(0u64);
        let (ready_tx, mut ready) = watch::channel(false);
        let subscriber = client.clone();
        let filters = filters.to_vec();
        let task = tokio::spawn(async move {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) if filters.is_empty() => {
                        let _ = ready_tx.send(true);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let subscriptions = filters.iter().map(|filter| {
                            rumqttc::SubscribeFilter::new(filter.clone(), QoS::AtLeastOnce)
                        });
                        subscriber.try_subscribe_many(subscriptions).unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(true);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked_tx.send_modify(|count| *count += 1);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let _ = forward.send(publish);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "test client connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        tokio::time::timeout(SHORT, ready.wait_for(|ready| *ready))
            .await
            .unwrap_or_else(|_| panic!("{client_id} could not connect and subscribe"))
            .unwrap();
        Client {
            client,
            received,
            acked,
            task,
        }
    }

    /// Publishes at QoS 1 and waits for the broker's acknowledgement, so that the broker has
    /// routed (or dropped) the message before the next step.
    async fn publish_acked(&mut self, topic: &str, payload: &str) {
        let before = *self.acked.borrow();
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .unwrap();
        tokio::time::timeout(SHORT, self.acked.wait_for(|count| *count > before))
            .await
            .unwrap_or_else(|_| panic!("no PUBACK for {topic}"))
            .unwrap();
    }

    /// Everything received until a message with `marker` as payload (included).
    async fn until(&mut self, marker: &str) -> Vec<(String, String)> {
        let mut seen = Vec::new();
        loop {
            let publish = tokio::time::timeout(SHORT, self.received.recv())
                .await
                .unwrap_or_else(|_| panic!("no {marker:?} within {SHORT:?}; got {seen:?}"))
                .unwrap();
            let payload = String::from_utf8_lossy(&publish.payload).into_owned();
            let done = payload == marker;
            seen.push((publish.topic, payload));
            if done {
                return seen;
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn device(store: &str, device: &str) -> (StoreId, DeviceId) {
    (
        StoreId::parse(store).unwrap(),
        DeviceId::parse(device).unwrap(),
    )
}

fn channel(device: &(StoreId, DeviceId), channel: DeviceChannel) -> String {
    topic::device(&device.0, &device.1, channel)
}

/// Mosquitto with the ACL of a registry holding devices A and B, a revoked device C,
/// operator alice and the service mujin-management, each with its Mosquitto login.
struct Fleet {
    broker: Mosquitto,
    a: (StoreId, DeviceId),
    b: (StoreId, DeviceId),
    c: (StoreId, DeviceId),
    logins: std::collections::HashMap<Identity, (String, String)>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn start(mosquitto_binary: &Path, passwd_binary: &Path) -> Fleet {
        mujin_tests::init_tracing();
        let database_url = mujin_tests::postgres::fresh_database().await;
        let pool = db::pool(&database_url, 2).unwrap();
        db::migrate(&pool).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pepper = keys::load_or_create_pepper(dir.path()).unwrap();
        let (a, b, c) = (
            device("shibuya", "pc-01"),
            device("shibuya", "pc-02"),
            device("shibuya", "pc-03"),
        );
        let identities_list = [
            device_identity(&a),
            device_identity(&b),
            device_identity(&c),
            Identity::Operator(OperatorId::parse("alice").unwrap()),
            Identity::Service(ServiceName::parse("mujin-management").unwrap()),
        ];
        let passwords = dir.path().join("passwords");
        std::fs::write(&passwords, "").unwrap();
        let mut logins = std::collections::HashMap::new();
        for identity in identities_list {
            let enrolled = identities::enrol(&pool, &pepper, &identity, Utc::now())
                .await
                .unwrap();
            // What an administrator does at enrolment, with the token printed then.
            let username = mosquitto::mosquitto_username(&identity);
            let token = enrolled.token.expose().to_owned();
            let status = Command::new(passwd_binary)
                .arg("-b")
                .arg(&passwords)
                .args([&username, &token])
                .status()
                .unwrap();
            assert!(
                status.success(),
                "mosquitto_passwd -b failed for {username}"
            );
            logins.insert(identity, (username, token));
        }
        let revoked = device_identity(&c).username();
        identities::revoke(&pool, &revoked, Utc::now())
            .await
            .unwrap();
        let acl = mosquitto::acl_text(&identities::list(&pool).await.unwrap());
        std::fs::write(dir.path().join("acl"), acl).unwrap();
        pool.close();
        let broker = Mosquitto::start(mosquitto_binary, dir.path()).await;
        Fleet {
            broker,
            a,
            b,
            c,
            logins,
            _dir: dir,
        }
    }

    fn login(&self, identity: &Identity) -> &(String, String) {
        &self.logins[identity]
    }

    async fn device(&self, device: &(StoreId, DeviceId), filters: &[String]) -> Client {
        let client_id = device_client_id(&device.0, &device.1);
        let login = self.login(&device_identity(device));
        Client::connect(self.broker.port, &client_id, login, filters).await
    }

    async fn management(&self, filters: &[String]) -> Client {
        let service = Identity::Service(ServiceName::parse("mujin-management").unwrap());
        Client::connect(
            self.broker.port,
            "mujin-management-1",
            self.login(&service),
            filters,
        )
        .await
    }

    async fn operator(&self, filters: &[String]) -> Client {
        let alice = Identity::Operator(OperatorId::parse("alice").unwrap());
        Client::connect(
            self.broker.port,
            "mujin-console.alice",
            self.login(&alice),
            filters,
        )
        .await
    }
}

fn device_identity((store, device): &(StoreId, DeviceId)) -> Identity {
    Identity::Device {
        store: store.clone(),
        device: device.clone(),
    }
}

fn assert_none_forged(seen: &[(String, String)], who: &str) {
    let forged: Vec<_> = seen
        .iter()
        .filter(|(_, payload)| payload.starts_with("forged"))
        .collect();
    assert!(
        forged.is_empty(),
        "{who} received denied messages: {forged:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_publishes_only_on_its_own_topics() {
    let Some((mosquitto_binary, passwd_binary)) = mosquitto_or_skip() else {
        return;
    };
    let fleet = Fleet::start(&mosquitto_binary, &passwd_binary).await;
    // Management takes scans as its workers do (a shared subscription) and watches states;
    // the operator watches commands and states.
    let mut management = fleet
        .management(&[
            topic::shared("scan", &topic::every_device(DeviceChannel::Scan)),
            topic::every_device(DeviceChannel::State),
        ])
        .await;
    let mut operator = fleet
        .operator(&[
            topic::every_device(DeviceChannel::Command),
            topic::every_device(DeviceChannel::State),
        ])
        .await;
    let mut a = fleet.device(&fleet.a, &[]).await;

    a.publish_acked(&channel(&fleet.a, DeviceChannel::Scan), "a-scan")
        .await;
    let seen = management.until("a-scan").await;
    assert_eq!(
        seen,
        [(channel(&fleet.a, DeviceChannel::Scan), "a-scan".to_owned())]
    );

    for forged in [
        channel(&fleet.b, DeviceChannel::Scan),
        channel(&fleet.b, DeviceChannel::State),
        channel(&fleet.a, DeviceChannel::Command),
        channel(&fleet.b, DeviceChannel::Command),
    ] {
        a.publish_acked(&forged, &format!("forged by a on {forged}"))
            .await;
    }
    // Markers on A's own topics, sent after the forged ones on the same connection.
    a.publish_acked(&channel(&fleet.a, DeviceChannel::State), "a-state")
        .await;
    a.publish_acked(&channel(&fleet.a, DeviceChannel::Scan), "a-scan-2")
        .await;
    let seen = management.until("a-scan-2").await;
    assert_none_forged(&seen, "management");
    assert!(
        seen.iter().any(|(_, payload)| payload == "a-state"),
        "{seen:?}"
    );
    assert_none_forged(&operator.until("a-state").await, "the operator");

    // A revoked identity that still has a password gets no topic at all.
    let mut c = fleet.device(&fleet.c, &[]).await;
    c.publish_acked(
        &channel(&fleet.c, DeviceChannel::Scan),
        "forged by revoked c",
    )
    .await;
    a.publish_acked(&channel(&fleet.a, DeviceChannel::Scan), "a-scan-3")
        .await;
    assert_none_forged(&management.until("a-scan-3").await, "management");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_hears_only_its_own_commands_and_an_operator_cannot_command() {
    let Some((mosquitto_binary, passwd_binary)) = mosquitto_or_skip() else {
        return;
    };
    let fleet = Fleet::start(&mosquitto_binary, &passwd_binary).await;
    let a_command = channel(&fleet.a, DeviceChannel::Command);
    let b_command = channel(&fleet.b, DeviceChannel::Command);
    // A also asks for B's commands: Mosquitto accepts the subscription and filters deliveries.
    let mut a = fleet
        .device(&fleet.a, &[a_command.clone(), b_command.clone()])
        .await;
    let mut b = fleet
        .device(&fleet.b, std::slice::from_ref(&b_command))
        .await;
    let mut management = fleet
        .management(&[topic::shared("requests", &topic::every_operator_requests())])
        .await;
    let mut operator = fleet.operator(&[]).await;

    management
        .publish_acked(&b_command, "command for b, not for a")
        .await;
    management.publish_acked(&a_command, "command for a").await;
    let seen = a.until("command for a").await;
    assert_eq!(seen, [(a_command.clone(), "command for a".to_owned())]);
    let seen = b.until("command for b, not for a").await;
    assert_eq!(seen.len(), 1, "{seen:?}");

    // The operator tries to command B, then sends a request (allowed) to management.
    operator
        .publish_acked(&b_command, "forged by the operator")
        .await;
    let requests = Topic::Requests {
        operator: OperatorId::parse("alice").unwrap(),
    }
    .to_string();
    operator
        .publish_acked(&requests, "request from alice")
        .await;
    let seen = management.until("request from alice").await;
    assert_eq!(seen, [(requests, "request from alice".to_owned())]);
    // Routed before management's next command, had it been allowed.
    management.publish_acked(&b_command, "command for b").await;
    let seen = b.until("command for b").await;
    assert_none_forged(&seen, "device b");
}
