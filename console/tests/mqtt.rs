//! The console's broker connection against a real rumqttd broker on loopback: it subscribes,
//! decodes what arrives, reports a dropped broker and renews its subscriptions on reconnect.

// Test helpers outside #[test] functions panic on setup failures on purpose.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use chrono::Utc;
use mujin_console::event::{ConnectionChange, Event, Incoming};
use mujin_console::{mqtt, Settings};
use mujin_protocol::message::{
    self, Ack, Availability, Command, CommandAction, EndReason, EventKind, ProgramStatus, Reply,
    ReportedState, Request, RequestAction, Telemetry,
};
use mujin_protocol::signed::verify_request;
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::{CommandId, DeviceId, OperatorId, RequestId, SessionId, StoreId};
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

const USER: &str = "operator";
const PASSWORD: &str = "s3cret";
/// Generous: the machine is shared and noisy; conditions usually hold in milliseconds.
const WAIT: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A broker on its own runtime, so that dropping it really closes every connection
/// (rumqttd has no stop API).
struct TestBroker {
    runtime: tokio::runtime::Runtime,
}

impl TestBroker {
    fn start(port: u16) -> Self {
        let router = Router::new(
            0,
            RouterConfig {
                max_connections: 64,
                max_outgoing_packet_count: 200,
                max_segment_size: 1024 * 1024,
                max_segment_count: 4,
                ..RouterConfig::default()
            },
        );
        let router_tx = router.spawn();
        let mut connections = ConnectionSettings {
            connection_timeout_ms: 5000,
            max_payload_size: 64 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        connections.set_auth_handler(|_client_id, user: String, password: String| async move {
            user == USER && password == PASSWORD
        });
        let settings = ServerSettings {
            name: "test".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: None,
            next_connection_delay_ms: 1,
            connections,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut server = Server::new(settings, router_tx, rumqttd::protocol::v4::V4);
        runtime.spawn(async move { server.start(LinkType::Remote).await });
        Self { runtime }
    }

    fn stop(self) {
        self.runtime.shutdown_background();
    }
}

fn settings(port: u16, password: &str) -> Settings {
    Settings {
        broker: format!("127.0.0.1:{port}"),
        username: USER.into(),
        password: password.into(),
        client_id: format!("mujin-console-test-{port}-{password}"),
        operator: mujin_protocol::OperatorId::parse("alice").unwrap(),
        operator_key: Some(std::sync::Arc::new(operator_key())),
        tls: None,
    }
}

/// Operator alice's key of these tests (a fixed seed).
fn operator_key() -> mujin_protocol::ticket::SigningKey {
    let seed = [0xa1; 32];
    let probe = mujin_protocol::ticket::SigningKey::from_seed(
        mujin_protocol::KeyId::parse("op").unwrap(),
        &seed,
    )
    .unwrap();
    let key_id = mujin_protocol::signed::operator_key_id(&probe.public_key().bytes);
    mujin_protocol::ticket::SigningKey::from_seed(key_id, &seed).unwrap()
}

/// A device-side publisher that retries its connection until the broker listens, and the
/// packets it receives (to wait for acknowledgements).
async fn publisher(port: u16, id: &str) -> (AsyncClient, mpsc::UnboundedReceiver<Packet>) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_credentials(USER, PASSWORD);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (packets, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(packet)) => {
                    let _ = packets.send(packet);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    (client, received)
}

/// Waits for the first event that `pick` accepts, skipping others, until the deadline.
async fn next_matching<T>(
    events: &mut mpsc::Receiver<Event>,
    what: &str,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => {
                if let Some(found) = pick(event) {
                    return found;
                }
            }
            Ok(None) => panic!("channel closed while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

fn ids() -> (StoreId, DeviceId) {
    (
        StoreId::parse("shibuya").unwrap(),
        DeviceId::parse("pc-01").unwrap(),
    )
}

fn is_up(event: Event) -> Option<()> {
    matches!(event, Event::Connection(ConnectionChange::Up)).then_some(())
}

#[tokio::test]
async fn forwards_decoded_messages_and_survives_a_broker_restart() {
    let port = free_port();
    let (store, device) = ids();
    let broker = TestBroker::start(port);

    // A retained state published before the console connects is replayed to it.
    let (device_client, mut device_packets) = publisher(port, "pc-01").await;
    let state_topic = topic::device(&store, &device, DeviceChannel::State);
    let state = ReportedState {
        signature: None,
        availability: Availability::Online,
        program: ProgramStatus::Idle,
        last_exit: None,
        at: Some(Utc::now()),
    };
    device_client
        .publish(
            &state_topic,
            QoS::AtLeastOnce,
            true,
            message::encode(&state),
        )
        .await
        .unwrap();
    // Only once the broker has it is it certain to be replayed as a retained message.
    let deadline = Instant::now() + WAIT;
    while !matches!(
        timeout_at(deadline, device_packets.recv()).await,
        Ok(Some(Packet::PubAck(_)))
    ) {
        assert!(
            Instant::now() < deadline,
            "the retained state was never acknowledged"
        );
    }

    let (sender, mut events) = mpsc::channel(64);
    let console = mqtt::spawn(&settings(port, PASSWORD), sender).unwrap();
    next_matching(&mut events, "connection up", is_up).await;
    let retained = next_matching(&mut events, "retained state", |event| match event {
        Event::Mqtt(message) => Some(message.incoming),
        _ => None,
    })
    .await;
    assert_eq!(
        retained,
        Incoming::State {
            store: store.clone(),
            device: device.clone(),
            state,
            retained: true
        }
    );

    // A malformed payload is reported as such and the stream goes on.
    let events_topic = topic::events(&store);
    device_client
        .publish(&events_topic, QoS::AtLeastOnce, false, b"not json".to_vec())
        .await
        .unwrap();
    let offline = message::Event {
        at: Utc::now(),
        store: store.clone(),
        device: Some(device.clone()),
        kind: EventKind::DeviceAvailability {
            availability: Availability::Offline,
            session_id: None,
        },
    };
    device_client
        .publish(
            &events_topic,
            QoS::AtLeastOnce,
            false,
            message::encode(&offline),
        )
        .await
        .unwrap();
    let malformed = next_matching(&mut events, "malformed message", |event| match event {
        Event::Mqtt(message) => Some(message.incoming),
        _ => None,
    })
    .await;
    assert!(
        matches!(malformed, Incoming::Malformed { .. }),
        "{malformed:?}"
    );
    let decoded = next_matching(&mut events, "store event", |event| match event {
        Event::Mqtt(message) => Some(message.incoming),
        _ => None,
    })
    .await;
    assert_eq!(decoded, Incoming::StoreEvent(offline));

    // Commands and their acks are followed too.
    let command = Command {
        command_id: CommandId::random(),
        issued_at: Utc::now(),
        epoch: 1,
        action: CommandAction::Stop {
            session_id: SessionId::random(),
            reason: EndReason::BookingEnded,
        },
        store: None,
        device: None,
        expires_at: None,
        signature: None,
    };
    let ack = Ack {
        signature: None,
        command_id: command.command_id,
        ok: true,
        detail: String::new(),
        at: Utc::now(),
    };
    for (channel, payload) in [
        (DeviceChannel::Command, message::encode(&command)),
        (DeviceChannel::Ack, message::encode(&ack)),
    ] {
        device_client
            .publish(
                topic::device(&store, &device, channel),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }
    let mut followed = Vec::new();
    for what in ["command", "ack"] {
        followed.push(
            next_matching(&mut events, what, |event| match event {
                Event::Mqtt(message) => Some(message.incoming),
                _ => None,
            })
            .await,
        );
    }
    assert_eq!(
        followed,
        [
            Incoming::Command {
                store: store.clone(),
                device: device.clone(),
                command
            },
            Incoming::Ack {
                store: store.clone(),
                device: device.clone(),
                ack
            }
        ]
    );

    // The broker goes away: the console says so.
    broker.stop();
    next_matching(&mut events, "connection down", |event| {
        matches!(event, Event::Connection(ConnectionChange::Down { .. })).then_some(())
    })
    .await;

    // A fresh broker (which remembers nothing): the console reconnects and subscribes again.
    let broker = TestBroker::start(port);
    next_matching(&mut events, "connection up again", is_up).await;
    let (device_client, _device_packets) = publisher(port, "pc-01-again").await;
    let telemetry = Telemetry {
        interval_ms: None,
        signature: None,
        at: Utc::now(),
        uptime_ms: 42,
        load: Some(0.5),
        program: ProgramStatus::Idle,
    };
    let telemetry_topic = topic::device(&store, &device, DeviceChannel::Telemetry);
    // Telemetry is QoS 0 and the subscription may land just after the ConnAck: repeat until seen.
    let deadline = Instant::now() + WAIT;
    let seen = loop {
        device_client
            .publish(
                &telemetry_topic,
                QoS::AtMostOnce,
                false,
                message::encode(&telemetry),
            )
            .await
            .unwrap();
        let polled = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
        if let Ok(Some(Event::Mqtt(message))) = polled {
            break message.incoming;
        }
        assert!(Instant::now() < deadline, "no telemetry after reconnecting");
    };
    assert_eq!(
        seen,
        Incoming::Telemetry {
            store,
            device,
            telemetry
        }
    );

    let stopping = Instant::now();
    console.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(3));
    broker.stop();
}

#[tokio::test]
async fn wrong_credentials_never_look_connected() {
    let port = free_port();
    let broker = TestBroker::start(port);
    let (sender, mut events) = mpsc::channel(64);
    let console = mqtt::spawn(&settings(port, "wrong"), sender).unwrap();
    // Several refusals in a row (with backoff between them), and never an Up.
    for attempt in 0..3 {
        let event = next_matching(&mut events, "a connection change", |event| match event {
            Event::Connection(change) => Some(change),
            _ => None,
        })
        .await;
        assert!(
            matches!(event, ConnectionChange::Down { .. }),
            "attempt {attempt}: {event:?}"
        );
    }
    console.stop().await;
    broker.stop();
}

#[tokio::test]
async fn requests_go_out_on_the_operators_topic_and_replies_come_back() {
    let port = free_port();
    let broker = TestBroker::start(port);
    // Management's side: takes every operator's requests.
    let (management, mut management_packets) = publisher(port, "management").await;
    management
        .subscribe(topic::every_operator_requests(), QoS::AtLeastOnce)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while !matches!(
        timeout_at(deadline, management_packets.recv()).await,
        Ok(Some(Packet::SubAck(_)))
    ) {
        assert!(Instant::now() < deadline, "management never subscribed");
    }

    let (sender, mut events) = mpsc::channel(64);
    let console = mqtt::spawn(&settings(port, PASSWORD), sender).unwrap();
    next_matching(&mut events, "connection up", is_up).await;
    let request = Request::new(
        RequestId::random(),
        RequestAction::ForceStop {
            session_id: SessionId::random(),
        },
    );
    let reply = Reply {
        request_id: request.request_id,
        ok: true,
        detail: "stopped".into(),
        ticket: None,
        snapshot: None,
    };
    let replies_topic = Topic::Replies {
        operator: OperatorId::parse("alice").unwrap(),
    }
    .to_string();
    // The replies subscription may land just after the ConnAck: answer until the reply is seen.
    console.send(&request).unwrap();
    let deadline = Instant::now() + WAIT;
    let received = loop {
        match timeout_at(deadline, management_packets.recv()).await {
            Ok(Some(Packet::Publish(publish))) => break publish,
            Ok(Some(_)) => {}
            _ => panic!("management never got the request"),
        }
    };
    assert_eq!(
        Topic::parse(&received.topic),
        Ok(Topic::Requests {
            operator: OperatorId::parse("alice").unwrap()
        })
    );
    // Sent signed by the operator's key, stamped with the time it was sent.
    let sent: Request = message::decode(&received.payload).unwrap();
    assert_eq!(
        (sent.request_id, &sent.action),
        (request.request_id, &request.action)
    );
    let public = operator_key().public_key();
    assert_eq!(verify_request(&public, &sent, chrono::Utc::now()), Ok(()));
    let seen = loop {
        management
            .publish(
                &replies_topic,
                QoS::AtLeastOnce,
                false,
                message::encode(&reply),
            )
            .await
            .unwrap();
        let polled = tokio::time::timeout(Duration::from_millis(300), events.recv()).await;
        if let Ok(Some(Event::Mqtt(message))) = polled {
            break message.incoming;
        }
        assert!(Instant::now() < deadline, "no reply at the console");
    };
    assert_eq!(seen, Incoming::Reply(reply));
    console.stop().await;
    broker.stop();
}
