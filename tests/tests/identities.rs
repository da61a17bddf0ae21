//! Per-device identities checked by the broker: an enrolled device's agent connects and works;
//! a wrong token, another device's client id and an unknown username are refused; revoking a
//! connected device disconnects it within seconds and keeps it out; enrolling again retires the
//! old token; a database outage keeps the identities last loaded. Real broker (process and
//! in-process), PostgreSQL, management and agent processes.

// The whole file is test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use mujin_broker::{Broker, BrokerSettings, Credentials, IdentitySettings};
use mujin_management::{db, identities, keys};
use mujin_protocol::identity::{device_client_id, Identity};
use mujin_protocol::{DeviceId, StoreId};
use mujin_tests::stack::Stack;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};
use tokio::time::timeout;

const SHORT: Duration = Duration::from_secs(10);

/// A client connected as someone; dropped, it disconnects.
struct Connected {
    _client: AsyncClient,
    event_loop: EventLoop,
}

impl Connected {
    /// Waits until the broker closes the connection.
    async fn wait_closed(&mut self, within: Duration) {
        let closed = timeout(within, async {
            loop {
                if self.event_loop.poll().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the broker kept the connection open");
    }
}

/// One attempt to connect; `Err` when the broker refuses (it closes the socket).
async fn connect(
    port: u16,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<Connected, String> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_credentials(username, password)
        .set_keep_alive(Duration::from_secs(5));
    let (client, mut event_loop) = AsyncClient::new(options, 10);
    let connack = timeout(SHORT, async {
        loop {
            match event_loop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "no answer before the deadline".to_owned())?;
    connack.map(|()| Connected {
        _client: client,
        event_loop,
    })
}

/// Connects, trying again until the broker has loaded a fresh enrolment.
async fn connect_eventually(port: u16, client_id: &str, username: &str, token: &str) -> Connected {
    let deadline = tokio::time::Instant::now() + SHORT;
    loop {
        match connect(port, client_id, username, token).await {
            Ok(connected) => return connected,
            Err(error) if tokio::time::Instant::now() > deadline => {
                panic!("{username} as {client_id} was never let in: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn username((store, device): &(StoreId, DeviceId)) -> String {
    Identity::Device {
        store: store.clone(),
        device: device.clone(),
    }
    .username()
}

fn client_id((store, device): &(StoreId, DeviceId)) -> String {
    device_client_id(store, device)
}

#[tokio::test]
async fn an_enrolled_device_runs_a_session_with_its_own_identity() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    assert_eq!(stack.agent_credentials(&device).0, "device:shibuya:pc-01");
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 30).await;
    let (_session, pid) = stack.start_session(&mut agent, &booking.ticket).await;
    assert!(mujin_tests::process_alive(pid));
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn wrong_tokens_other_client_ids_and_unknown_users_are_refused() {
    let stack = Stack::start().await;
    let pc1 = stack.add_device("shibuya", "pc-01").await;
    let pc2 = stack.add_device("shibuya", "pc-02").await;
    let (_, token1) = stack.agent_credentials(&pc1);
    let (_, token2) = stack.agent_credentials(&pc2);
    // Loaded: the right token with the right client id gets in.
    drop(connect_eventually(stack.port, &client_id(&pc1), &username(&pc1), &token1).await);

    let refusals = [
        (
            "a wrong token",
            client_id(&pc1),
            username(&pc1),
            token2.clone(),
        ),
        (
            "a right token with another device's client id",
            client_id(&pc2),
            username(&pc1),
            token1.clone(),
        ),
        (
            "the old agent client id",
            "mujin-agent-shibuya-pc-01".to_owned(),
            username(&pc1),
            token1.clone(),
        ),
        (
            "an unknown username",
            client_id(&pc1),
            "device:shibuya:pc-09".to_owned(),
            token1.clone(),
        ),
        (
            "a device token under the shared agent account",
            client_id(&pc1),
            "agent".to_owned(),
            token1.clone(),
        ),
    ];
    for (what, client_id, username, token) in refusals {
        let outcome = connect(stack.port, &client_id, &username, &token).await;
        assert!(outcome.is_err(), "{what} was let in");
    }
    // The second device is unaffected.
    drop(
        connect(stack.port, &client_id(&pc2), &username(&pc2), &token2)
            .await
            .unwrap(),
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_revoked_device_is_disconnected_within_seconds_and_kept_out() {
    let stack = Stack::start().await;
    let pc1 = stack.add_device("shibuya", "pc-01").await;
    let pc2 = stack.add_device("shibuya", "pc-02").await;
    let (_, token1) = stack.agent_credentials(&pc1);
    let (_, token2) = stack.agent_credentials(&pc2);
    let mut revoked =
        connect_eventually(stack.port, &client_id(&pc1), &username(&pc1), &token1).await;
    let mut other =
        connect_eventually(stack.port, &client_id(&pc2), &username(&pc2), &token2).await;

    identities::revoke(&stack.pool, &username(&pc1), Utc::now())
        .await
        .unwrap();
    revoked.wait_closed(Duration::from_secs(5)).await;
    let again = connect(stack.port, &client_id(&pc1), &username(&pc1), &token1).await;
    assert!(again.is_err(), "a revoked device got back in");

    // Only the revoked device was pushed out.
    let still_open = timeout(Duration::from_secs(3), other.event_loop.poll()).await;
    assert!(
        !matches!(still_open, Ok(Err(_))),
        "the other device was disconnected: {still_open:?}"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn enrolling_again_retires_the_old_token() {
    let stack = Stack::start().await;
    let pc1 = stack.add_device("shibuya", "pc-01").await;
    let (_, old) = stack.agent_credentials(&pc1);
    let mut connected =
        connect_eventually(stack.port, &client_id(&pc1), &username(&pc1), &old).await;

    let new = stack.enrol_device(&pc1).await;
    assert_ne!(new, old);
    // Connected with the old token: pushed out like a revoked one.
    connected.wait_closed(Duration::from_secs(5)).await;
    drop(connect_eventually(stack.port, &client_id(&pc1), &username(&pc1), &new).await);
    let refused = connect(stack.port, &client_id(&pc1), &username(&pc1), &old).await;
    assert!(refused.is_err(), "the old token still works");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_database_outage_keeps_the_identities_last_loaded() {
    mujin_tests::init_tracing();
    let database_url = mujin_tests::postgres::fresh_database().await;
    let pool = db::pool(&database_url, 2).unwrap();
    db::migrate(&pool).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pepper = keys::load_or_create_pepper(dir.path()).unwrap();
    let pc1 = (
        StoreId::parse("shibuya").unwrap(),
        DeviceId::parse("pc-01").unwrap(),
    );
    let identity = Identity::Device {
        store: pc1.0.clone(),
        device: pc1.1.clone(),
    };
    let token = identities::enrol(&pool, &pepper, &identity, Utc::now())
        .await
        .unwrap()
        .token;
    pool.close();

    let mut identities = IdentitySettings::new(database_url.clone(), pepper);
    identities.refresh = Duration::from_millis(200);
    let listen = SocketAddr::from(([127, 0, 0, 1], mujin_broker::free_local_port().unwrap()));
    let settings = BrokerSettings {
        listen_v4: listen,
        listen_v5: None,
        credentials: Credentials::new(),
    };
    let broker = Broker::start_with_identities(settings, Some(identities))
        .await
        .unwrap();
    // Loaded before the listener opened: no retry needed.
    let port = broker.v4_addr().port();
    drop(
        connect(port, &client_id(&pc1), &username(&pc1), token.expose())
            .await
            .unwrap(),
    );

    drop_database(&database_url).await;
    // Several refreshes fail meanwhile; the identity still gets in, the wrong one still not.
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(
        connect(port, &client_id(&pc1), &username(&pc1), token.expose())
            .await
            .unwrap(),
    );
    let refused = connect(
        port,
        "mujin-agent.shibuya.pc-02",
        &username(&pc1),
        token.expose(),
    )
    .await;
    assert!(refused.is_err());
    broker.shutdown().await;
}

/// Removes the test database (closing the broker's connection to it): an outage that lasts.
async fn drop_database(database_url: &str) {
    let config: tokio_postgres::Config = database_url.parse().unwrap();
    let name = config.get_dbname().unwrap().to_owned();
    let admin_url = database_url.replace(&name, "postgres");
    let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    drop(client);
    let _ = driver.await;
}
