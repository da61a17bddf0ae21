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

use std::time::Duration;

use chrono::Utc;
use mujin_management::{db, identities, keys, mosquitto};
use mujin_protocol::identity::{device_client_id, Identity, ServiceName};
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::{DeviceId, OperatorId, StoreId};
use mujin_tests::mosquitto::{binaries_or_skip, Binaries, Mosquitto};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const SHORT: Duration = Duration::from_secs(10);

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
    async fn start(binaries: &Binaries) -> Fleet {
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
        // Nobody may connect until the files are written and Mosquitto has read them again.
        let broker = Mosquitto::start(binaries, dir.path()).await;
        let mut logins = std::collections::HashMap::new();
        for identity in identities_list {
            let enrolled = identities::enrol(&pool, &pepper, &identity, Utc::now())
                .await
                .unwrap();
            // What an administrator does at enrolment, with the token printed then.
            let username = mosquitto::mosquitto_username(&identity);
            let token = enrolled.token.expose().to_owned();
            broker.set_password(&username, &token);
            logins.insert(identity, (username, token));
        }
        let revoked = device_identity(&c).username();
        identities::revoke(&pool, &revoked, Utc::now())
            .await
            .unwrap();
        let acl = mosquitto::acl_text(&identities::list(&pool).await.unwrap());
        broker.write_acl(&acl);
        broker.reload().await;
        pool.close();
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
        Client::connect(self.broker.port(), &client_id, login, filters).await
    }

    async fn management(&self, filters: &[String]) -> Client {
        let service = Identity::Service(ServiceName::parse("mujin-management").unwrap());
        Client::connect(
            self.broker.port(),
            "mujin-management-1",
            self.login(&service),
            filters,
        )
        .await
    }

    async fn operator(&self, filters: &[String]) -> Client {
        let alice = Identity::Operator(OperatorId::parse("alice").unwrap());
        Client::connect(
            self.broker.port(),
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
    let Some(binaries) = binaries_or_skip() else {
        return;
    };
    let fleet = Fleet::start(&binaries).await;
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
    let Some(binaries) = binaries_or_skip() else {
        return;
    };
    let fleet = Fleet::start(&binaries).await;
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
