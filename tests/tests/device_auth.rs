//! Device messages that cannot be forged or replayed: a client holding device A's broker
//! credentials (the broker has no topic ACL) publishes on device B's topics — a scan of B's
//! valid ticket signed with A's key or unsigned, a scan of B's captured and replayed after
//! 6 minutes, a state saying B is idle while it runs a session, an ack for a command B has not
//! answered, telemetry for a device that is offline — and nothing starts, stops or changes;
//! scans are answered with the reason, the rest is reported as `device_message_refused`. Real
//! broker process, PostgreSQL, management and agent processes.

use std::time::Duration;

use chrono::Utc;
use mujin_protocol::device_auth::DeviceKey;
use mujin_protocol::message::{
    self, Ack, Availability, Decision, EventKind, ProgramStatus, RejectReason, ReportedState, Scan,
    ScanResult, Telemetry,
};
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::{CommandId, DeviceId, ScanId, StoreId};
use mujin_tests::stack::Stack;
use mujin_tests::{process_alive, wait_for};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

const SHORT: Duration = Duration::from_secs(10);

type Device = (StoreId, DeviceId);

/// A broker client connected with a device's own credentials (and its client id), as someone
/// who took them from that device would be.
struct Impostor {
    client: AsyncClient,
    acked: tokio::sync::mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Impostor {
    async fn connect(stack: &Stack, device: &Device) -> Impostor {
        let (username, password) = stack.agent_credentials(device);
        let client_id = mujin_protocol::identity::device_client_id(&device.0, &device.1);
        let mut options = MqttOptions::new(client_id, "127.0.0.1", stack.port);
        options
            .set_credentials(username, password)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        let (acked_tx, acked) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let _ = acked_tx.send(());
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(SHORT, connected)
            .await
            .expect("the broker lets the device's credentials in")
            .expect("impostor task alive");
        Impostor {
            client,
            acked,
            task,
        }
    }

    /// Publishes `payload` on `device`'s `channel` and waits until the broker took it.
    async fn publish(
        &mut self,
        (store, device): &Device,
        channel: DeviceChannel,
        payload: Vec<u8>,
    ) {
        let topic = topic::device(store, device, channel);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue a publish");
        tokio::time::timeout(SHORT, self.acked.recv())
            .await
            .expect("the broker acknowledged the publish");
    }
}

impl Drop for Impostor {
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

/// Waits for management's answer to `scan_id` on `device`'s scan-result topic.
async fn answer_to(stack: &Stack, device: &DeviceId, scan_id: ScanId) -> Decision {
    stack
        .observer
        .wait_for("the scan's answer", SHORT, |topic, payload| match topic {
            Topic::Device {
                device: to,
                channel: DeviceChannel::ScanResult,
                ..
            } if to == device => message::decode::<ScanResult>(payload)
                .ok()
                .filter(|result| result.scan_id == scan_id)
                .map(|result| result.decision),
            _ => None,
        })
        .await
}

/// Waits for the `scan_rejected` event of `scan_id` and returns its reason and detail.
async fn rejection_of(stack: &Stack, scan_id: ScanId) -> (RejectReason, String) {
    stack
        .observer
        .wait_event("the scan_rejected event", SHORT, |event| {
            match &event.kind {
                EventKind::ScanRejected {
                    scan_id: Some(id),
                    reason,
                    detail,
                } if *id == scan_id => Some((*reason, detail.clone())),
                _ => None,
            }
        })
        .await
}

/// Waits for the `device_message_refused` event of `device`'s `channel`; returns its detail.
async fn refused_event(stack: &Stack, device: &DeviceId, channel: DeviceChannel) -> String {
    stack
        .observer
        .wait_event(
            "a device_message_refused event",
            SHORT,
            |event| match &event.kind {
                EventKind::DeviceMessageRefused {
                    channel: refused,
                    detail,
                } if event.device.as_ref() == Some(device) && refused == channel.as_str() => {
                    Some(detail.clone())
                }
                _ => None,
            },
        )
        .await
}

fn refused_reason(decision: &Decision) -> Option<RejectReason> {
    match decision {
        Decision::Rejected { reason, .. } => Some(*reason),
        Decision::Accepted { .. } => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_forged_with_another_devices_credentials_or_replayed_start_nothing() {
    let stack = Stack::start().await;
    let a = stack.add_device("shibuya", "pc-01").await;
    let b = stack.add_device("shibuya", "pc-02").await;
    let booking = stack.book_now(&b, 60).await;
    let mut impostor = Impostor::connect(&stack, &a).await;
    let key_of_a = stack.device_key(&a).expect("A is enrolled");

    // B's valid ticket, on B's scan topic, signed with A's key.
    let mut forged = scan_of(&booking.ticket);
    key_of_a.sign(&b.0, &b.1, &mut forged);
    impostor
        .publish(&b, DeviceChannel::Scan, message::encode(&forged))
        .await;
    let decision = answer_to(&stack, &b.1, forged.scan_id).await;
    assert_eq!(
        refused_reason(&decision),
        Some(RejectReason::Unauthenticated)
    );
    let (reason, detail) = rejection_of(&stack, forged.scan_id).await;
    assert_eq!(reason, RejectReason::Unauthenticated);
    assert!(detail.contains("another key"), "{detail}");
    println!("checked: a scan signed with A's key on B's topic → unauthenticated ({detail})");

    // The same, unsigned.
    let unsigned = scan_of(&booking.ticket);
    impostor
        .publish(&b, DeviceChannel::Scan, message::encode(&unsigned))
        .await;
    let (reason, detail) = rejection_of(&stack, unsigned.scan_id).await;
    assert_eq!(reason, RejectReason::Unauthenticated);
    assert!(detail.starts_with("unsigned"), "{detail}");
    println!("checked: an unsigned scan → unauthenticated ({detail})");

    // A scan B really signed, captured and replayed 6 minutes later.
    let mut captured = scan_of(&booking.ticket);
    captured.sent_at = Some(Utc::now() - chrono::Duration::minutes(6));
    stack.sign_as(&b, &mut captured);
    impostor
        .publish(&b, DeviceChannel::Scan, message::encode(&captured))
        .await;
    let decision = answer_to(&stack, &b.1, captured.scan_id).await;
    assert_eq!(refused_reason(&decision), Some(RejectReason::StaleScan));
    let (reason, detail) = rejection_of(&stack, captured.scan_id).await;
    assert_eq!(reason, RejectReason::StaleScan);
    assert!(detail.contains("5-minute window"), "{detail}");
    println!("checked: a replayed scan of B's → stale_scan ({detail})");

    assert_eq!(stack.session_count(&booking).await, 0, "no session started");
    let client = stack.pool.get().await.expect("db connection");
    let stored: i64 = client
        .query_one(
            "SELECT count(*) FROM scans WHERE scan_id = ANY($1)",
            &[&vec![
                forged.scan_id.as_uuid(),
                unsigned.scan_id.as_uuid(),
                captured.scan_id.as_uuid(),
            ]],
        )
        .await
        .expect("count scans")
        .get(0);
    assert_eq!(stored, 0, "refused scans are not stored");

    // B itself, later, with the scan id the forgery used: the forgery did not take it.
    let mut genuine = scan_of(&booking.ticket);
    genuine.scan_id = forged.scan_id;
    stack.sign_scan_as(&b, &mut genuine);
    stack
        .observer
        .publish_raw(
            &topic::device(&b.0, &b.1, DeviceChannel::Scan),
            message::encode(&genuine),
        )
        .await;
    wait_for("B's own scan to start the session", SHORT, || async {
        (stack.session_count(&booking).await == 1).then_some(())
    })
    .await;
    println!("checked: B's own signed scan with the forgery's scan id starts the session");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_states_acks_and_telemetry_change_nothing() {
    let stack = Stack::start().await;
    let a = stack.add_device("shibuya", "pc-01").await;
    let b = stack.add_device("shibuya", "pc-02").await;
    let c = stack.add_device("shibuya", "pc-03").await;
    let key_of_a = stack.device_key(&a).expect("A is enrolled");
    let mut impostor = Impostor::connect(&stack, &a).await;

    // B runs a session on its real agent; A says B is idle.
    let b_booking = stack.book_now(&b, 60).await;
    let mut agent = stack.agent(&b);
    let (session_id, pid) = stack.start_session(&mut agent, &b_booking.ticket).await;
    let mut idle = ReportedState {
        availability: Availability::Online,
        program: ProgramStatus::Idle,
        last_exit: None,
        at: Some(Utc::now()),
        signature: None,
    };
    key_of_a.sign(&b.0, &b.1, &mut idle);
    impostor
        .publish(&b, DeviceChannel::State, message::encode(&idle))
        .await;
    let detail = refused_event(&stack, &b.1, DeviceChannel::State).await;
    assert!(detail.contains("another key"), "{detail}");
    let row = stack.session_row(&b_booking).await.expect("B's session");
    assert_eq!(row.ended_at, None, "the session still runs");
    assert!(process_alive(pid), "B's program still runs");
    let conflict = stack.observer.events().into_iter().any(|event| {
        matches!(event.kind, EventKind::SessionConflict { session_id: id, .. } if id == session_id)
    });
    assert!(!conflict, "no conflict recorded");
    println!("checked: a forged idle state for B → refused ({detail}); the session runs on");

    // C has no agent: its start command stays unanswered; A acknowledges it for C.
    let c_booking = stack.book_now(&c, 60).await;
    let mut scan = scan_of(&c_booking.ticket);
    stack.sign_scan_as(&c, &mut scan);
    stack
        .observer
        .publish_raw(
            &topic::device(&c.0, &c.1, DeviceChannel::Scan),
            message::encode(&scan),
        )
        .await;
    let command_id = stack
        .observer
        .wait_for("C's start command", SHORT, |topic, payload| match topic {
            Topic::Device {
                device,
                channel: DeviceChannel::Command,
                ..
            } if *device == c.1 => message::decode::<message::Command>(payload)
                .ok()
                .map(|command| command.command_id),
            _ => None,
        })
        .await;
    let mut ack = Ack {
        command_id,
        ok: true,
        detail: "started".into(),
        at: Utc::now(),
        signature: None,
    };
    key_of_a.sign(&c.0, &c.1, &mut ack);
    impostor
        .publish(&c, DeviceChannel::Ack, message::encode(&ack))
        .await;
    let detail = refused_event(&stack, &c.1, DeviceChannel::Ack).await;
    assert_ne!(command_status(&stack, command_id).await, "acknowledged");
    println!("checked: a forged ack of C's start → refused ({detail}); the command is still open");

    // C never came online; A's heartbeats in C's name do not bring it online.
    for _ in 0..3 {
        let mut telemetry = Telemetry {
            at: Utc::now(),
            uptime_ms: 1_000,
            load: None,
            program: ProgramStatus::Idle,
            interval_ms: None,
            signature: None,
        };
        key_of_a.sign(&c.0, &c.1, &mut telemetry);
        impostor
            .publish(&c, DeviceChannel::Telemetry, message::encode(&telemetry))
            .await;
    }
    let detail = refused_event(&stack, &c.1, DeviceChannel::Telemetry).await;
    let refusals = stack
        .observer
        .events()
        .into_iter()
        .filter(|event| {
            event.device.as_ref() == Some(&c.1)
                && matches!(&event.kind, EventKind::DeviceMessageRefused { channel, .. } if channel == "telemetry")
        })
        .count();
    assert_eq!(refusals, 1, "one event a minute per device and channel");
    let online = stack.observer.events().into_iter().any(|event| {
        event.device.as_ref() == Some(&c.1)
            && matches!(
                event.kind,
                EventKind::DeviceAvailability {
                    availability: Availability::Online,
                    ..
                }
            )
    });
    assert!(!online, "C was never reported online");
    println!("checked: forged telemetry for C → refused once ({detail}); C stays offline");

    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_enrolled_device_s_old_key_no_longer_counts() {
    let stack = Stack::start().await;
    let b = stack.add_device("shibuya", "pc-02").await;
    let booking = stack.book_now(&b, 60).await;
    let old_key = stack.device_key(&b).expect("B is enrolled");
    stack.enrol_device(&b).await;
    let mut scan = scan_of(&booking.ticket);
    old_key.sign(&b.0, &b.1, &mut scan);
    stack
        .observer
        .publish_raw(
            &topic::device(&b.0, &b.1, DeviceChannel::Scan),
            message::encode(&scan),
        )
        .await;
    let (reason, detail) = rejection_of(&stack, scan.scan_id).await;
    assert_eq!(reason, RejectReason::Unauthenticated);
    println!("checked: B's key before re-enrolment → unauthenticated ({detail})");

    // Its new key works at once (the cache reloads on a key it does not know).
    let mut agent = stack.agent(&b);
    stack.start_session(&mut agent, &booking.ticket).await;
    assert_eq!(stack.session_count(&booking).await, 1);

    // A stranger's key never does.
    let mut stranger = scan_of(&booking.ticket);
    DeviceKey::generate()
        .expect("a key")
        .sign(&b.0, &b.1, &mut stranger);
    stack
        .observer
        .publish_raw(
            &topic::device(&b.0, &b.1, DeviceChannel::Scan),
            message::encode(&stranger),
        )
        .await;
    let (reason, _) = rejection_of(&stack, stranger.scan_id).await;
    assert_eq!(reason, RejectReason::Unauthenticated);
    agent.stop().await;
    stack.shutdown().await;
}

async fn command_status(stack: &Stack, command_id: CommandId) -> String {
    let client = stack.pool.get().await.expect("db connection");
    client
        .query_one(
            "SELECT status FROM commands WHERE command_id = $1",
            &[&command_id.as_uuid()],
        )
        .await
        .expect("the command")
        .get(0)
}
