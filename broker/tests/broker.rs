//! The broker against real rumqttc clients over loopback, and the `mujin-broker` binary.

// The whole file is test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mujin_broker::{free_local_port, Broker, BrokerError, BrokerSettings, Credentials};
use mujin_protocol::ids::StoreId;
use mujin_protocol::topic;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(10);

fn credentials() -> Credentials {
    let mut credentials = Credentials::new();
    credentials.insert("management", "management-password");
    credentials.insert("console", "console-password");
    credentials
}

fn local_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_local_port().unwrap()))
}

async fn start_broker(listen_v5: Option<SocketAddr>) -> Broker {
    Broker::start(BrokerSettings {
        listen_v4: local_addr(),
        listen_v5,
        credentials: credentials(),
    })
    .await
    .unwrap()
}

fn options(broker: SocketAddr, client_id: &str, user: &str, password: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
    options.set_credentials(user, password);
    options.set_keep_alive(Duration::from_secs(5));
    options
}

fn events_topic() -> String {
    topic::events(&StoreId::parse("store-1").unwrap())
}

/// Polls until the first ConnAck (Ok(session_present)) or the first error.
async fn wait_connack(eventloop: &mut EventLoop) -> Result<bool, String> {
    timeout(DEADLINE, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack.session_present),
                Ok(_) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "no ConnAck before the deadline".to_owned())?
}

/// Keeps polling in its own task and forwards incoming publishes and SubAcks.
fn drive(mut eventloop: EventLoop) -> mpsc::UnboundedReceiver<Packet> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(packet @ (Packet::Publish(_) | Packet::SubAck(_)))) => {
                    if tx.send(packet).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

async fn next_matching(
    rx: &mut mpsc::UnboundedReceiver<Packet>,
    wanted: impl Fn(&Packet) -> bool,
) -> Packet {
    timeout(DEADLINE, async {
        loop {
            let packet = rx.recv().await.expect("event loop ended");
            if wanted(&packet) {
                return packet;
            }
        }
    })
    .await
    .expect("expected packet before the deadline")
}

async fn subscribed_client(
    broker: SocketAddr,
    client_id: &str,
    clean_session: bool,
) -> (AsyncClient, mpsc::UnboundedReceiver<Packet>, bool) {
    let mut opts = options(broker, client_id, "management", "management-password");
    opts.set_clean_session(clean_session);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let session_present = wait_connack(&mut eventloop).await.unwrap();
    client
        .subscribe(events_topic(), QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut rx = drive(eventloop);
    next_matching(&mut rx, |p| matches!(p, Packet::SubAck(_))).await;
    (client, rx, session_present)
}

async fn publisher(broker: SocketAddr) -> AsyncClient {
    let opts = options(broker, "test-console", "console", "console-password");
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    wait_connack(&mut eventloop).await.unwrap();
    drive(eventloop);
    client
}

#[tokio::test]
async fn authenticated_qos1_publish_reaches_subscriber() {
    let broker = start_broker(None).await;
    let (_sub, mut rx, _) = subscribed_client(broker.v4_addr(), "test-sub", true).await;
    let publisher = publisher(broker.v4_addr()).await;

    publisher
        .publish(events_topic(), QoS::AtLeastOnce, false, b"hello".to_vec())
        .await
        .unwrap();
    let Packet::Publish(publish) =
        next_matching(&mut rx, |p| matches!(p, Packet::Publish(_))).await
    else {
        unreachable!()
    };
    assert_eq!(publish.topic, events_topic());
    assert_eq!(&publish.payload[..], b"hello");
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    broker.shutdown().await;
}

#[tokio::test]
async fn bad_password_and_unknown_user_are_refused() {
    let broker = start_broker(None).await;
    let addr = broker.v4_addr();
    for (client_id, user, password) in [
        ("bad-password", "management", "wrong"),
        ("unknown-user", "intruder", "management-password"),
        ("empty-login", "", ""),
    ] {
        let (_client, mut eventloop) =
            AsyncClient::new(options(addr, client_id, user, password), 10);
        let outcome = wait_connack(&mut eventloop).await;
        assert!(
            outcome.is_err(),
            "{client_id} must be refused, got {outcome:?}"
        );
    }
    // A good client still gets in afterwards.
    let (_client, mut eventloop) =
        AsyncClient::new(options(addr, "good", "console", "console-password"), 10);
    wait_connack(&mut eventloop).await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn address_in_use_is_a_bind_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let result = Broker::start(BrokerSettings {
        listen_v4: addr,
        listen_v5: None,
        credentials: credentials(),
    })
    .await;
    match result {
        Err(BrokerError::Bind {
            addr: failed,
            source,
        }) => {
            assert_eq!(failed, addr);
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        }
        Err(other) => panic!("expected a bind error, got {other}"),
        Ok(_) => panic!("expected a bind error, the broker started"),
    }

    // Same for the MQTT 5 listener.
    let result = Broker::start(BrokerSettings {
        listen_v4: local_addr(),
        listen_v5: Some(addr),
        credentials: credentials(),
    })
    .await;
    assert!(matches!(result, Err(BrokerError::Bind { addr: failed, .. }) if failed == addr));
}

#[tokio::test]
async fn v5_client_connects_to_the_v5_listener() {
    use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
    use rumqttc::v5::{AsyncClient as V5Client, Event as V5Event, MqttOptions as V5Options};

    let broker = start_broker(Some(local_addr())).await;
    let addr = broker.v5_addr().unwrap();
    assert_ne!(addr, broker.v4_addr());

    let connect = |password: &str| {
        let mut opts = V5Options::new("v5-client", addr.ip().to_string(), addr.port());
        opts.set_credentials("console", password);
        let (_client, mut eventloop) = V5Client::new(opts, 10);
        async move {
            timeout(DEADLINE, async {
                loop {
                    match eventloop.poll().await {
                        Ok(V5Event::Incoming(V5Packet::ConnAck(_))) => return true,
                        Ok(_) => {}
                        Err(_) => return false,
                    }
                }
            })
            .await
            .unwrap()
        }
    };
    assert!(connect("console-password").await, "good v5 client refused");
    assert!(!connect("wrong").await, "bad v5 client accepted");
    broker.shutdown().await;
}

#[tokio::test]
async fn persistent_session_gets_messages_sent_while_offline() {
    let broker = start_broker(None).await;
    let addr = broker.v4_addr();
    let (sub, mut rx, _) = subscribed_client(addr, "test-management", false).await;
    sub.disconnect().await.unwrap();
    // The event loop ends once DISCONNECT is sent and the socket closed.
    timeout(DEADLINE, async { while rx.recv().await.is_some() {} })
        .await
        .unwrap();

    let publisher = publisher(addr).await;
    // The broker handles each connection separately: let it file the old session away first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    publisher
        .publish(
            events_topic(),
            QoS::AtLeastOnce,
            false,
            b"while-away".to_vec(),
        )
        .await
        .unwrap();

    let mut opts = options(addr, "test-management", "management", "management-password");
    opts.set_clean_session(false);
    let (_client, mut eventloop) = AsyncClient::new(opts, 10);
    let session_present = wait_connack(&mut eventloop).await.unwrap();
    assert!(session_present, "the broker must resume the session");
    let mut rx = drive(eventloop);
    let Packet::Publish(publish) =
        next_matching(&mut rx, |p| matches!(p, Packet::Publish(_))).await
    else {
        unreachable!()
    };
    assert_eq!(&publish.payload[..], b"while-away");
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_frees_the_port() {
    let broker = start_broker(None).await;
    let addr = broker.v4_addr();
    let (_sub, mut rx, _) = subscribed_client(addr, "test-sub", true).await;
    broker.shutdown().await;
    // The subscriber's event loop ends on the closed connection.
    timeout(DEADLINE, async { while rx.recv().await.is_some() {} })
        .await
        .expect("connection still open after shutdown");

    let again = Broker::start(BrokerSettings {
        listen_v4: addr,
        listen_v5: None,
        credentials: credentials(),
    })
    .await
    .expect("port must be free after shutdown");
    assert_eq!(again.v4_addr(), addr);
    again.shutdown().await;
}

#[tokio::test]
async fn port_zero_picks_a_free_port() {
    let broker = Broker::start(BrokerSettings {
        listen_v4: "127.0.0.1:0".parse().unwrap(),
        listen_v5: None,
        credentials: credentials(),
    })
    .await
    .unwrap();
    assert_ne!(broker.v4_addr().port(), 0);
    publisher(broker.v4_addr()).await;
    broker.shutdown().await;
}

#[test]
fn binary_refuses_a_missing_credentials_file() {
    let output = Command::new(env!("CARGO_BIN_EXE_mujin-broker"))
        .args(["--listen", "127.0.0.1:0"])
        .args(["--credentials", "/nonexistent/broker-credentials.toml"])
        .env_remove("MUJIN_BROKER_LISTEN_V5")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("credentials file /nonexistent/broker-credentials.toml")
            && stderr.contains("cannot read it"),
        "unexpected error output: {stderr}"
    );
}

#[test]
fn binary_without_credentials_flag_says_it_is_required() {
    let output = Command::new(env!("CARGO_BIN_EXE_mujin-broker"))
        .env_remove("MUJIN_BROKER_CREDENTIALS")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--credentials"),
        "unexpected error output: {stderr}"
    );
}

/// `mujin-broker` on a free port with the accounts of [`credentials`] in a file, and its
/// stdout (the file is in `dir`).
fn spawn_binary(dir: &tempfile::TempDir) -> (std::process::Child, SocketAddr, impl BufRead) {
    let file = dir.path().join("credentials.toml");
    std::fs::write(
        &file,
        "[[client]]\nusername = \"console\"\npassword = \"console-password\"\n\
         [[client]]\nusername = \"management\"\npassword = \"management-password\"\n",
    )
    .unwrap();
    let addr = local_addr();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mujin-broker"))
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--credentials")
        .arg(&file)
        .env_remove("MUJIN_BROKER_LISTEN_V5")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, addr, stdout)
}

#[test]
fn binary_prints_ready_line_and_serves_clients() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (mut child, addr, mut stdout) = spawn_binary(&dir);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        format!("mujin-broker listening on {addr} (MQTT 3.1.1)")
    );
    assert!(started.elapsed() < DEADLINE);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_client, mut eventloop) = AsyncClient::new(
            options(addr, "bin-client", "console", "console-password"),
            10,
        );
        wait_connack(&mut eventloop).await.unwrap();
    });
    child.kill().unwrap();
    child.wait().unwrap();
}

/// rumqttd runs its router on a thread of its own, so every message woke two threads on its
/// way through; mujin's broker runs the router next to the connections, on the one network
/// worker (docs/benchmarks.md, fix 22).
#[test]
fn binary_routes_messages_on_its_one_network_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, mut stdout) = spawn_binary(&dir);
    stdout.read_line(&mut String::new()).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_subscriber, mut rx, _) = subscribed_client(addr, "bin-subscriber", true).await;
        publisher(addr)
            .await
            .publish(events_topic(), QoS::AtLeastOnce, false, "routed")
            .await
            .unwrap();
        next_matching(&mut rx, |p| matches!(p, Packet::Publish(_))).await;
    });

    // Thread names as the kernel keeps them: at most 15 bytes.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap())
        .map(|name| name.trim().to_owned())
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    let network = threads
        .iter()
        .filter(|name| name.starts_with("mujin-broker-ne"))
        .count();
    assert_eq!(network, 1, "{threads:?}");
    assert!(
        !threads.iter().any(|name| name.starts_with("router")),
        "{threads:?}"
    );
}

#[tokio::test]
async fn without_its_database_the_broker_still_serves_the_file_accounts() {
    use mujin_broker::IdentitySettings;
    use mujin_protocol::identity::Pepper;

    let pepper = Pepper::from_bytes(&[9u8; 32]).unwrap();
    // A socket directory that does not exist: every load fails at once.
    let identities = IdentitySettings::new("host=/nonexistent/mujin dbname=none", pepper.clone());
    let broker = Broker::start_with_identities(
        BrokerSettings {
            listen_v4: local_addr(),
            listen_v5: None,
            credentials: credentials(),
        },
        Some(identities),
    )
    .await
    .unwrap();
    let addr = broker.v4_addr();
    let (_client, mut eventloop) = AsyncClient::new(
        options(addr, "console-1", "console", "console-password"),
        10,
    );
    wait_connack(&mut eventloop).await.unwrap();
    // No identity was ever loaded: an identity username is unknown, whatever its token.
    let token = "a".repeat(64);
    let (_client, mut eventloop) =
        AsyncClient::new(options(addr, "mujin-agent.s.d", "device:s:d", &token), 10);
    assert!(wait_connack(&mut eventloop).await.is_err());
    broker.shutdown().await;
}

#[test]
fn binary_needs_the_pepper_with_the_database_and_a_private_pepper_file() {
    let output = Command::new(env!("CARGO_BIN_EXE_mujin-broker"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "host=/nonexistent",
        ])
        .env_remove("MUJIN_BROKER_IDENTITY_PEPPER")
        .env_remove("MUJIN_BROKER_CREDENTIALS")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--identity-pepper"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let pepper = dir.path().join("identity-pepper");
    std::fs::write(&pepper, [1u8; 32]).unwrap();
    std::fs::set_permissions(&pepper, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mujin-broker"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "host=/nonexistent",
        ])
        .arg("--identity-pepper")
        .arg(&pepper)
        .env_remove("MUJIN_BROKER_CREDENTIALS")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("readable by others"), "{stderr}");
}

/// A raw MQTT 3.1.1 CONNECT with a clean session and a username and password.
fn connect_packet(client_id: &str, username: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60];
    for field in [client_id, username, password] {
        body.extend_from_slice(&u16::try_from(field.len()).unwrap().to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10, u8::try_from(body.len()).unwrap()];
    packet.extend(body);
    packet
}

#[tokio::test]
async fn clients_racing_for_one_client_id_do_not_break_the_listener() {
    use tokio::io::AsyncWriteExt;
    let broker = start_broker(None).await;
    let addr = broker.v4_addr();
    let packet = connect_packet("contested", "console", "console-password");
    // Connections with the same client id that arrive together and hang up at once: rumqttd
    // 0.20 left a dead will handler behind for some and panicked on the next one while holding
    // its listener's lock, after which it let nobody in.
    for _ in 0..200 {
        let mut racers = Vec::new();
        for _ in 0..4 {
            let packet = packet.clone();
            racers.push(tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.write_all(&packet).await.unwrap();
            }));
        }
        for racer in racers {
            racer.await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for client_id in ["contested", "someone-else"] {
        let (_client, mut eventloop) =
            AsyncClient::new(options(addr, client_id, "console", "console-password"), 10);
        assert_eq!(wait_connack(&mut eventloop).await, Ok(false), "{client_id}");
    }
}
