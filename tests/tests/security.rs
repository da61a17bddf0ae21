//! Commands that cannot be forged: a client holding only broker credentials (the broker has no
//! topic ACL) publishes start commands — unsigned, signed with another key, a real one replayed
//! to another device or after its expiry — and no program starts; each is answered
//! `ok: false` with the reason. Real broker process, PostgreSQL, management and agent processes.

use std::time::Duration;

use chrono::Utc;
use mujin_protocol::message::{self, Ack, Command, CommandAction};
use mujin_protocol::signed::sign_command;
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::{CommandId, DeviceId, KeyId, SessionId, StoreId};
use mujin_tests::stack::Stack;
use mujin_tests::{process_alive, wait_for};

const SHORT: Duration = Duration::from_secs(10);

/// A start for `device` as a forger would write it, valid for a minute.
fn forged_start((store, device): &(StoreId, DeviceId)) -> Command {
    Command {
        command_id: CommandId::random(),
        issued_at: Utc::now(),
        epoch: 1_000,
        store: Some(store.clone()),
        device: Some(device.clone()),
        expires_at: Some(Utc::now() + chrono::Duration::minutes(1)),
        action: CommandAction::Start {
            session_id: SessionId::random(),
            lease_until: Utc::now() + chrono::Duration::minutes(10),
            remaining_ms: 600_000,
        },
        signature: None,
    }
}

/// Publishes `payload` on `device`'s command topic as a plain broker client.
async fn publish_command(stack: &Stack, (store, device): &(StoreId, DeviceId), payload: Vec<u8>) {
    let command_topic = topic::device(store, device, DeviceChannel::Command);
    stack.observer.publish_raw(&command_topic, payload).await;
}

/// Waits for `device`'s refusal of `command_id` (it may have accepted it before).
async fn refusal_of(stack: &Stack, device: &DeviceId, command_id: CommandId) -> Ack {
    stack
        .observer
        .wait_for(
            "the device's refusal",
            SHORT,
            |topic, payload| match topic {
                Topic::Device {
                    device: from,
                    channel: DeviceChannel::Ack,
                    ..
                } if from == device => message::decode::<Ack>(payload)
                    .ok()
                    .filter(|ack| ack.command_id == command_id && !ack.ok),
                _ => None,
            },
        )
        .await
}

/// The start management sent to `device`, as captured on the wire.
fn captured_start(stack: &Stack, device: &DeviceId) -> (Vec<u8>, Command) {
    stack
        .observer
        .recorded()
        .into_iter()
        .find_map(|recorded| match &recorded.topic {
            Topic::Device {
                device: to,
                channel: DeviceChannel::Command,
                ..
            } if to == device => {
                let command: Command = message::decode(&recorded.payload).ok()?;
                matches!(command.action, CommandAction::Start { .. })
                    .then_some((recorded.payload, command))
            }
            _ => None,
        })
        .expect("a start was sent to the device")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_start_starts_nothing_and_is_refused() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let agent = stack.agent(&device);
    let online = |topic: &Topic, _: &[u8]| {
        matches!(
            topic,
            Topic::Device {
                channel: DeviceChannel::State,
                ..
            }
        )
        .then_some(())
    };
    stack
        .observer
        .wait_for("the agent online", SHORT, online)
        .await;

    let unsigned = forged_start(&device);
    publish_command(&stack, &device, message::encode(&unsigned)).await;
    let ack = refusal_of(&stack, &device.1, unsigned.command_id).await;
    assert_eq!(
        (ack.ok, ack.detail.as_str()),
        (false, "rejected: bad signature")
    );

    // The key id management uses, but another key.
    let mut other_key = forged_start(&device);
    let forger = SigningKey::from_seed(KeyId::parse("c1").unwrap(), &[0x42; 32]).unwrap();
    sign_command(&forger, &mut other_key);
    publish_command(&stack, &device, message::encode(&other_key)).await;
    let ack = refusal_of(&stack, &device.1, other_key.command_id).await;
    assert_eq!(
        (ack.ok, ack.detail.as_str()),
        (false, "rejected: bad signature")
    );

    assert!(!agent.pid_file.exists(), "a forged start ran the program");
    println!("checked: unsigned and foreign-key starts refused, nothing started");
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_start_replayed_elsewhere_or_after_its_expiry_is_refused() {
    let stack = Stack::start().await;
    let first = stack.add_device("shibuya", "pc-01").await;
    let second = stack.add_device("shibuya", "pc-02").await;
    let mut agent = stack.agent(&first);
    let other_agent = stack.agent(&second);
    let booking = stack.book_now(&first, 4).await;
    let (_, pid) = stack.start_session(&mut agent, &booking.ticket).await;
    let (payload, start) = captured_start(&stack, &first.1);
    assert!(start.signature.is_some() && start.device.as_ref() == Some(&first.1));

    // Replayed, byte for byte, to the neighbouring device.
    publish_command(&stack, &second, payload.clone()).await;
    let ack = refusal_of(&stack, &second.1, start.command_id).await;
    assert_eq!(
        (ack.ok, ack.detail.as_str()),
        (false, "rejected: for another device")
    );
    assert!(
        !other_agent.pid_file.exists(),
        "the replay ran pc-02's program"
    );

    // Replayed to its own device once the session is over and the start expired (a start
    // expires with its session's lease at the latest).
    let expires_at = start.expires_at.expect("a start carries its expiry");
    assert!(
        expires_at <= booking.claims.not_after,
        "{expires_at} after the booking's end"
    );
    wait_for("the session to end", Duration::from_secs(20), || async {
        (!process_alive(pid) && Utc::now() > expires_at).then_some(())
    })
    .await;
    std::fs::remove_file(&agent.pid_file).expect("remove the pid file");
    publish_command(&stack, &first, payload).await;
    let ack = refusal_of(&stack, &first.1, start.command_id).await;
    assert_eq!(ack.detail, "rejected: expired");
    assert!(!agent.pid_file.exists(), "the replay ran the program again");
    println!("checked: a captured start is refused on another device and after its expiry");
    agent.stop().await;
    other_agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_flooding_scans_is_answered_too_many_scans_and_others_are_served() {
    use mujin_protocol::message::{Decision, EventKind, RejectReason, Scan, ScanResult};
    use mujin_protocol::ScanId;

    let stack = Stack::start().await;
    let flooder = stack.add_device("shibuya", "pc-01").await;
    let neighbour = stack.add_device("shibuya", "pc-02").await;
    let booking = stack.book_now(&neighbour, 30).await;
    // 60 readings of garbage at once, each with its own scan id.
    let scan_topic = topic::device(&flooder.0, &flooder.1, DeviceChannel::Scan);
    let mut ids = Vec::new();
    for _ in 0..60 {
        let mut scan = Scan {
            sent_at: None,
            signature: None,
            scan_id: ScanId::random(),
            ticket: "MJ1:GARBAGE".into(),
            read_at: Utc::now(),
            offline: None,
        };
        stack.sign_scan_as(&flooder, &mut scan);
        ids.push(scan.scan_id);
        stack
            .observer
            .publish_raw(&scan_topic, message::encode(&scan))
            .await;
    }
    let answers = |reason: RejectReason| {
        stack
            .observer
            .recorded()
            .into_iter()
            .filter(|recorded| matches!(recorded.topic, Topic::Device { channel: DeviceChannel::ScanResult, .. }))
            .filter_map(|recorded| message::decode::<ScanResult>(&recorded.payload).ok())
            .filter(|result| ids.contains(&result.scan_id))
            .filter(|result| matches!(&result.decision, Decision::Rejected { reason: r, .. } if *r == reason))
            .count()
    };
    wait_for("every flood scan answered", SHORT, || {
        let done = (answers(RejectReason::TooManyScans) + answers(RejectReason::MalformedTicket)
            == ids.len())
        .then_some(());
        async move { done }
    })
    .await;
    let decided = answers(RejectReason::MalformedTicket);
    assert!((10..=13).contains(&decided), "{decided} scans decided");

    // The neighbour is served as usual meanwhile.
    let mut agent = stack.agent(&neighbour);
    let (_session, _pid) = stack.start_session(&mut agent, &booking.ticket).await;

    // One event for the flood, not one per scan; nothing stored for the refused ones.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let flood_events = stack
        .observer
        .events()
        .iter()
        .filter(|event| {
            matches!(
                event.kind,
                EventKind::ScanRejected {
                    reason: RejectReason::TooManyScans,
                    ..
                }
            )
        })
        .count();
    assert_eq!(flood_events, 1);
    let client = stack.pool.get().await.expect("db");
    let stored: i64 = client
        .query_one(
            "SELECT count(*) FROM scans WHERE scan_id = ANY($1)",
            &[&ids.iter().map(|id| id.as_uuid()).collect::<Vec<_>>()],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, decided as i64);
    println!(
        "checked: 60 scans at once → {decided} decided, {} answered too_many_scans, one event; the neighbour's session started",
        ids.len() - decided
    );
    agent.stop().await;
    stack.shutdown().await;
}
