//! mujin end to end on an external broker: a real Mosquitto started by the test instead of
//! `mujin-broker`, with the password file and the ACL generated from the identities registry
//! (`Stack::start_on_mosquitto`). Management connects as its service identity, each agent as
//! its device, with Mosquitto's usernames. Shown here: a booking scanned at a real agent starts
//! the program and stops it by itself at the booking's end, and an operator with her own login
//! sees the session through a request and its reply; two management workers share the
//! scans through Mosquitto's shared subscriptions without handling one twice; a device's scan
//! forged on another device's topic is dropped by Mosquitto's ACL and, delivered anyway, is
//! refused by management; a revoked device stays connected until the password file and the
//! ACL are written again and Mosquitto reloads them, and is cut off then.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use mujin_management::identities;
use mujin_management::mosquitto::mosquitto_username;
use mujin_management::operators::Role;
use mujin_protocol::identity::{device_client_id, operator_client_id, Identity};
use mujin_protocol::message::{
    self, Availability, Decision, EndReason, EventKind, RejectReason, Reply, ReportedState,
    RequestAction, Scan, ScanResult,
};
use mujin_protocol::snapshot::{SnapshotItems, SnapshotPart};
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::{DeviceId, ScanId, SessionId, StoreId};
use mujin_tests::mosquitto::{binaries_or_skip, Binaries};
use mujin_tests::operator::Operator;
use mujin_tests::stack::Stack;
use mujin_tests::{process_alive, wait_for};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::process::{Child, Command};

const SHORT: Duration = Duration::from_secs(10);

type Device = (StoreId, DeviceId);

/// A stack on Mosquitto, or `None` when Mosquitto is not installed (a failure in CI).
async fn stack_on_mosquitto() -> Option<Stack> {
    let binaries: Binaries = binaries_or_skip()?;
    Some(Stack::start_on_mosquitto(&binaries).await)
}

/// Waits until the agent of `device` reported itself online.
async fn online(stack: &Stack, (store, device): &Device) {
    let wanted = Topic::device(store, device, DeviceChannel::State);
    stack
        .observer
        .wait_for("the agent to come online", SHORT, |topic, payload| {
            let state: ReportedState = message::decode(payload).ok()?;
            (topic == &wanted && state.availability == Availability::Online).then_some(())
        })
        .await;
}

/// Every answer management published on `device`'s scan-result topic so far.
fn answers(stack: &Stack, (store, device): &Device) -> Vec<ScanResult> {
    let wanted = Topic::device(store, device, DeviceChannel::ScanResult);
    stack
        .observer
        .recorded()
        .into_iter()
        .filter(|recorded| recorded.topic == wanted)
        .filter_map(|recorded| message::decode(&recorded.payload).ok())
        .collect()
}

/// Waits for management's answer to `scan_id` on `device`'s scan-result topic.
async fn answer_to(stack: &Stack, device: &Device, scan_id: ScanId) -> Decision {
    wait_for("the scan's answer", SHORT, || {
        let found = answers(stack, device)
            .into_iter()
            .find(|answer| answer.scan_id == scan_id)
            .map(|answer| answer.decision);
        async move { found }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_starts_and_stops_by_itself_on_mosquitto() {
    let Some(stack) = stack_on_mosquitto().await else {
        return;
    };
    let device = stack.add_device("shibuya", "pc-01").await;
    let mut agent = stack.agent(&device);
    online(&stack, &device).await;

    let booking = stack.book_now(&device, 3).await;
    let (session_id, pid) = stack.start_session(&mut agent, &booking.ticket).await;
    assert!(process_alive(pid), "the operating program runs");
    let sessions = operator_sees_sessions(&stack, &device.0).await;
    assert!(sessions.contains(&session_id), "{sessions:?}");
    let (ended_at, reason) = stack
        .observer
        .wait_event("the session to end", SHORT, |event| match event.kind {
            EventKind::SessionEnded {
                session_id: id,
                ended_at,
                reason,
                ..
            } if id == session_id => Some((ended_at, reason)),
            _ => None,
        })
        .await;
    assert_eq!(reason, EndReason::BookingEnded);
    let lateness = ended_at - booking.claims.not_after;
    assert!(
        lateness >= chrono::Duration::zero() && lateness < chrono::Duration::seconds(2),
        "stopped {lateness} after the end of the booking"
    );
    wait_for("the program to be stopped", SHORT, || async {
        (!process_alive(pid)).then_some(())
    })
    .await;
    let row = stack.session_row(&booking).await.expect("a session row");
    assert_eq!(row.end_reason.as_deref(), Some("booking_ended"));
    wait_for("the start and the stop acknowledged", SHORT, || async {
        let commands = stack.commands_of(session_id).await;
        let statuses: Vec<_> = commands
            .iter()
            .map(|(action, status, _)| (action.as_str(), status.as_str()))
            .collect();
        (statuses == [("start", "acknowledged"), ("stop", "acknowledged")]).then_some(())
    })
    .await;

    // The events a console or an integrator follows, in order, all through Mosquitto.
    let kinds: Vec<&'static str> = stack
        .observer
        .events()
        .iter()
        .filter_map(|event| match event.kind {
            EventKind::ScanAccepted { session_id: id, .. } if id == session_id => {
                Some("scan_accepted")
            }
            EventKind::SessionStarted { session_id: id, .. } if id == session_id => {
                Some("session_started")
            }
            EventKind::SessionEnded { session_id: id, .. } if id == session_id => {
                Some("session_ended")
            }
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["scan_accepted", "session_started", "session_ended"]);
    // Both parts really went through Mosquitto, as their own identities.
    let log = stack
        .mosquitto
        .as_ref()
        .expect("on Mosquitto")
        .broker
        .log_text();
    for username in ["service.mujin-management", "device.shibuya.pc-01"] {
        assert!(log.contains(&format!("u'{username}'")), "{username}: {log}");
    }
    println!("checked: on Mosquitto, scan → start → stop {lateness} after the booking's end");
    agent.stop().await;
    stack.shutdown().await;
}

/// An operator's console on Mosquitto: operator alice, enrolled (login in the password file,
/// ACL reloaded) and registered as a viewer, asks for a store's sessions on her requests topic
/// with her own login and reads management's reply on her replies topic.
async fn operator_sees_sessions(stack: &Stack, store: &StoreId) -> Vec<SessionId> {
    let alice = Operator::add(stack, "alice", Role::Viewer).await;
    let identity = Identity::Operator(alice.id.clone());
    let enrolled = identities::enrol(&stack.pool, &stack.pepper, &identity, Utc::now())
        .await
        .expect("enrol alice");
    let token = enrolled.token.expose().to_owned();
    let mosquitto = stack.mosquitto.as_ref().expect("on Mosquitto");
    mosquitto.enrolled(&stack.pool, &identity, &token).await;
    let replies = Topic::Replies {
        operator: alice.id.clone(),
    };
    let mut console = Client::connect(
        stack,
        operator_client_id(&alice.id),
        (mosquitto_username(&identity), token),
        vec![replies.to_string()],
    )
    .await;
    let request = alice.request(RequestAction::Snapshot {
        part: SnapshotPart::Sessions,
        store: Some(store.clone()),
        after: None,
    });
    let requests = Topic::Requests {
        operator: alice.id.clone(),
    };
    console
        .publish_acked(requests.to_string(), message::encode(&request))
        .await;
    let reply = loop {
        let publish = tokio::time::timeout(SHORT, console.received.recv())
            .await
            .expect("a reply within 10 s")
            .expect("client task alive");
        let reply: Reply = message::decode(&publish.payload).expect("a reply");
        if reply.request_id == request.request_id {
            break reply;
        }
    };
    assert!(reply.ok, "{reply:?}");
    match reply.snapshot.map(|page| page.items) {
        Some(SnapshotItems::Sessions(sessions)) => {
            sessions.iter().map(|session| session.session_id).collect()
        }
        other => panic!("not a page of sessions: {other:?}"),
    }
}

/// Starts `mujin-management run` as a worker with its own client id, its log in `log`.
fn spawn_worker(stack: &Stack, client_id: &str, log: &Path) -> Child {
    let (username, password) = stack.management_credentials();
    let log = std::fs::File::create(log).expect("create the worker's log");
    Command::new(mujin_tests::binary("mujin-management"))
        .arg("--database-url")
        .arg(&stack.database_url)
        .arg("--data-dir")
        .arg(stack.dir.path())
        .args(["run", "--broker", &format!("127.0.0.1:{}", stack.port)])
        .args(["--username", &username, "--early-grace-secs", "5"])
        .args(["--client-id", client_id])
        .env("MUJIN_MQTT_PASSWORD", password)
        .env("RUST_LOG", "info,rumqttc=warn,refinery_core=warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start mujin-management")
}

/// How many scans the worker logging to `log` accepted.
fn accepted_by(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("scan accepted, session started")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_mosquitto_share_the_scans_without_doubling() {
    let Some(mut stack) = stack_on_mosquitto().await else {
        return;
    };
    stack.stop_management().await;
    let logs = [1, 2].map(|n| stack.dir.path().join(format!("worker-{n}.log")));
    let workers = [
        spawn_worker(&stack, "mujin-management-1", &logs[0]),
        spawn_worker(&stack, "mujin-management-2", &logs[1]),
    ];
    stack.wait_for_workers(2).await;
    let mut devices = Vec::new();
    for name in ["pc-01", "pc-02", "pc-03", "pc-04"] {
        devices.push(stack.add_device("shibuya", name).await);
    }
    let mut agents: Vec<_> = devices.iter().map(|device| stack.agent(device)).collect();
    for device in &devices {
        online(&stack, device).await;
    }
    let mut bookings = Vec::new();
    for (device, agent) in devices.iter().zip(agents.iter_mut()) {
        let booking = stack.book_now(device, 3).await;
        agent.scan(&booking.ticket).await;
        bookings.push(booking);
    }
    wait_for("every session to start and end", SHORT, || async {
        let ended = stack
            .observer
            .events()
            .iter()
            .filter(|event| matches!(event.kind, EventKind::SessionEnded { .. }))
            .count();
        (ended >= bookings.len()).then_some(())
    })
    .await;

    for (device, booking) in devices.iter().zip(&bookings) {
        assert_eq!(stack.session_count(booking).await, 1, "{}", device.1);
        let answers = answers(&stack, device);
        assert_eq!(
            answers.len(),
            1,
            "one answer to {}'s scan: {answers:?}",
            device.1
        );
        assert!(
            matches!(answers[0].decision, Decision::Accepted { .. }),
            "{answers:?}"
        );
    }
    let count = |kind: fn(&EventKind) -> bool| {
        stack
            .observer
            .events()
            .iter()
            .filter(|event| kind(&event.kind))
            .count()
    };
    let accepted = count(|kind| matches!(kind, EventKind::ScanAccepted { .. }));
    let started = count(|kind| matches!(kind, EventKind::SessionStarted { .. }));
    let ended = count(|kind| matches!(kind, EventKind::SessionEnded { .. }));
    assert_eq!(
        (accepted, started, ended),
        (4, 4, 4),
        "events published once"
    );
    // Each scan went to one worker of the group, and both took some.
    let by_worker = [accepted_by(&logs[0]), accepted_by(&logs[1])];
    assert_eq!(by_worker.iter().sum::<usize>(), 4, "{by_worker:?}");
    assert!(by_worker.iter().all(|scans| *scans > 0), "{by_worker:?}");
    println!("checked: 4 scans on Mosquitto, taken {by_worker:?} by two workers, 4 sessions");
    for agent in agents {
        agent.stop().await;
    }
    drop(workers);
    stack.shutdown().await;
}

/// A plain MQTT client with one party's login and client id: an operator's console, or
/// someone who copied a device's login from it. It counts acknowledgements and forwards what
/// arrives on `filters`.
struct Client {
    client: AsyncClient,
    acked: tokio::sync::mpsc::UnboundedReceiver<()>,
    received: tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Connects and returns once `filters` are subscribed (at QoS 1).
    async fn connect(
        stack: &Stack,
        client_id: String,
        (username, password): (String, String),
        filters: Vec<String>,
    ) -> Client {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", stack.port);
        options
            .set_credentials(username, password)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut event_loop) = AsyncClient::new(options, 16);
        let (ready_tx, mut ready) = tokio::sync::watch::channel(false);
        let (acked_tx, acked) = tokio::sync::mpsc::unbounded_channel();
        let (received_tx, received) = tokio::sync::mpsc::unbounded_channel();
        let subscriber = client.clone();
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
                        let _ = subscriber.try_subscribe_many(subscriptions);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(true);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let _ = acked_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let _ = received_tx.send(publish);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(SHORT, ready.wait_for(|ready| *ready))
            .await
            .expect("Mosquitto lets the login in")
            .expect("client task alive");
        Client {
            client,
            acked,
            received,
            task,
        }
    }

    /// Connects with `device`'s own login and client id.
    async fn device(stack: &Stack, device: &Device) -> Client {
        let client_id = device_client_id(&device.0, &device.1);
        Client::connect(
            stack,
            client_id,
            stack.agent_credentials(device),
            Vec::new(),
        )
        .await
    }

    /// Publishes at QoS 1 and waits for Mosquitto's PUBACK (which a 3.1.1 client gets for a
    /// denied publish too).
    async fn publish_acked(&mut self, topic: String, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue a publish");
        tokio::time::timeout(SHORT, self.acked.recv())
            .await
            .expect("Mosquitto acknowledged the publish");
    }

    /// Publishes `scan` on `device`'s scan topic.
    async fn publish_scan(&mut self, (store, device): &Device, scan: &Scan) {
        let topic = topic::device(store, device, DeviceChannel::Scan);
        self.publish_acked(topic, message::encode(scan)).await;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn scan_of(ticket: &str) -> Scan {
    Scan {
        scan_id: ScanId::random(),
        ticket: ticket.to_owned(),
        read_at: Utc::now(),
        offline: None,
        sent_at: Some(Utc::now()),
        signature: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_forged_on_another_devices_topic_is_dropped_by_mosquitto_and_refused_by_management()
{
    let Some(stack) = stack_on_mosquitto().await else {
        return;
    };
    let a = stack.add_device("shibuya", "pc-01").await;
    let b = stack.add_device("shibuya", "pc-02").await;
    let booking = stack.book_now(&b, 60).await;
    let key_of_a = stack.device_key(&a).expect("A is enrolled");
    let mut impostor = Client::device(&stack, &a).await;

    // B's valid ticket on B's scan topic, from A's login, signed with A's key.
    let mut forged = scan_of(&booking.ticket);
    key_of_a.sign(&b.0, &b.1, &mut forged);
    impostor.publish_scan(&b, &forged).await;
    // Then, on the same connection, a genuine scan of A's own: once management has answered
    // it, the forged one would have been delivered before it.
    let mut marker = scan_of("NOT-A-TICKET");
    key_of_a.sign(&a.0, &a.1, &mut marker);
    impostor.publish_scan(&a, &marker).await;
    answer_to(&stack, &a, marker.scan_id).await;
    let b_scans: Vec<_> = stack
        .observer
        .recorded()
        .into_iter()
        .filter(|recorded| recorded.topic == Topic::device(&b.0, &b.1, DeviceChannel::Scan))
        .collect();
    assert!(b_scans.is_empty(), "Mosquitto delivered {b_scans:?}");
    assert!(answers(&stack, &b).is_empty(), "management answered B");
    assert_eq!(stack.session_count(&booking).await, 0);
    let log = stack
        .mosquitto
        .as_ref()
        .expect("on Mosquitto")
        .broker
        .log_text();
    let denied = format!("Denied PUBLISH from {}", device_client_id(&a.0, &a.1));
    assert!(log.contains(&denied), "{log}");
    println!("checked: A's scan on B's topic reached nobody (Mosquitto's ACL)");

    // Had it got through (a broker without that ACL: here the observer, which may write
    // anywhere, delivers the very same message), management refuses it.
    stack
        .observer
        .publish_raw(
            &topic::device(&b.0, &b.1, DeviceChannel::Scan),
            message::encode(&forged),
        )
        .await;
    let decision = answer_to(&stack, &b, forged.scan_id).await;
    assert!(
        matches!(
            decision,
            Decision::Rejected {
                reason: RejectReason::Unauthenticated,
                ..
            }
        ),
        "{decision:?}"
    );
    stack
        .observer
        .wait_event("the unauthenticated refusal", SHORT, |event| {
            match &event.kind {
                EventKind::ScanRejected {
                    scan_id: Some(id),
                    reason: RejectReason::Unauthenticated,
                    ..
                } if *id == forged.scan_id => Some(()),
                _ => None,
            }
        })
        .await;
    assert_eq!(stack.session_count(&booking).await, 0);
    println!("checked: the same scan, delivered anyway, is refused unauthenticated by management");
    stack.shutdown().await;
}

/// How many telemetry messages of `device` the observer recorded.
fn telemetry_count(stack: &Stack, (store, device): &Device) -> usize {
    let wanted = Topic::device(store, device, DeviceChannel::Telemetry);
    let recorded = stack.observer.recorded();
    recorded
        .iter()
        .filter(|recorded| recorded.topic == wanted)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_cut_off_only_when_mosquitto_reloads() {
    let Some(stack) = stack_on_mosquitto().await else {
        return;
    };
    let device = stack.add_device("shibuya", "pc-01").await;
    let agent = stack.agent(&device);
    online(&stack, &device).await;
    let identity = Identity::Device {
        store: device.0.clone(),
        device: device.1.clone(),
    };
    identities::revoke(&stack.pool, &identity.username(), Utc::now())
        .await
        .expect("revoke the device");
    // Mosquitto knows nothing of the registry: the device keeps publishing.
    let before = telemetry_count(&stack, &device);
    wait_for("telemetry after the revocation", SHORT, || {
        let more = telemetry_count(&stack, &device) >= before + 2;
        async move { more.then_some(()) }
    })
    .await;

    // The administrator's part: password file, ACL, SIGHUP. Mosquitto drops the connection
    // at the reload and refuses the agent's reconnections.
    let mosquitto = stack.mosquitto.as_ref().expect("on Mosquitto");
    mosquitto.revoked(&stack.pool, &identity).await;
    let since_reload = || {
        let log = mosquitto.broker.log_text();
        let at = log.rfind("Reloading config.").unwrap_or(0);
        log[at..].to_owned()
    };
    wait_for("the agent cut off and refused", SHORT, || {
        let log = since_reload();
        let cut = log.contains("Client mujin-agent.shibuya.pc-01 disconnected")
            && log.contains("not authorised");
        async move { cut.then_some(()) }
    })
    .await;
    // Without its heartbeats management reports the device offline.
    stack
        .observer
        .wait_event("the device reported offline", SHORT, |event| {
            match event.kind {
                EventKind::DeviceAvailability {
                    availability: Availability::Offline,
                    ..
                } if event.device.as_ref() == Some(&device.1) => Some(()),
                _ => None,
            }
        })
        .await;
    println!("checked: revoked on Mosquitto → connected until the reload, then cut off, offline");
    agent.stop().await;
    stack.shutdown().await;
}
