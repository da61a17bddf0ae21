//! Oversized and malformed payloads on every topic a mujin part reads, published by a plain
//! broker client during a running session: nothing starts, stops or changes, every part keeps
//! working, and malformed scans are refused with their reason. Real broker process,
//! PostgreSQL, management and agent processes.

use std::time::Duration;

use mujin_protocol::message::{self, EventKind, RejectReason, Telemetry};
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_tests::stack::Stack;
use mujin_tests::{process_alive, wait_for};

const SHORT: Duration = Duration::from_secs(10);

/// What a hostile or broken client might send: too big, not JSON, JSON of the wrong shape,
/// wrong types, a NUL, a lone null. (Never an empty payload here: on a retained topic rumqttd
/// takes it as "clear the retained message", which is a broker matter, not a parser's.)
fn bad_payloads() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("20 KiB of x", vec![b'x'; 20 * 1024]),
        ("20 KiB of JSON", {
            let mut big = br#"{"padding":""#.to_vec();
            big.extend(std::iter::repeat_n(b'a', 20 * 1024));
            big.extend(br#""}"#);
            big
        }),
        ("not JSON", b"{not json".to_vec()),
        ("an array", b"[1,2,3]".to_vec()),
        ("null", b"null".to_vec()),
        ("a NUL", b"\0".to_vec()),
        (
            "wrong types",
            br#"{"scan_id":3,"command_id":[],"action":"start","state":7,"at":"yesterday"}"#
                .to_vec(),
        ),
        (
            "unknown variant",
            br#"{"command_id":"6a2f41a3-c54c-4c8b-9f2d-8e1a7b3c5d4e","issued_at":"2027-01-15T08:00:00Z","action":"self_destruct"}"#
                .to_vec(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_payloads_on_every_inbound_topic_change_nothing() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let neighbour = stack.add_device("shibuya", "pc-02").await;
    let booking = stack.book_now(&device, 60).await;
    let mut agent = stack.agent(&device);
    let (session_id, pid) = stack.start_session(&mut agent, &booking.ticket).await;
    let commands_before = wait_for("the start acknowledged", SHORT, || async {
        let commands = stack.commands_of(session_id).await;
        commands
            .iter()
            .all(|(_, status, _)| status == "acknowledged")
            .then_some(commands)
    })
    .await;
    let (store, dev) = &device;

    let mut topics: Vec<String> = [
        DeviceChannel::Scan,
        DeviceChannel::Ack,
        DeviceChannel::State,
        DeviceChannel::Telemetry,
        DeviceChannel::Command,
        DeviceChannel::Desired,
        DeviceChannel::ScanResult,
    ]
    .into_iter()
    .map(|channel| topic::device(store, dev, channel))
    .collect();
    topics.push(topic::trust(store));
    topics.push(
        Topic::Requests {
            operator: mujin_protocol::OperatorId::parse("mallory").expect("operator id"),
        }
        .to_string(),
    );
    let payloads = bad_payloads();
    for topic in &topics {
        for (_, payload) in &payloads {
            stack.observer.publish_raw(topic, payload.clone()).await;
        }
    }
    let published = topics.len() * payloads.len();

    // Every malformed scan is refused with its reason (one event each).
    let malformed_scans = || {
        stack
            .observer
            .events()
            .iter()
            .filter(|event| event.device.as_ref() == Some(dev))
            .filter(|event| {
                matches!(
                    event.kind,
                    EventKind::ScanRejected {
                        reason: RejectReason::MalformedScan,
                        ..
                    }
                )
            })
            .count()
    };
    wait_for("every malformed scan refused", SHORT, || {
        let done = (malformed_scans() == payloads.len()).then_some(());
        async move { done }
    })
    .await;

    // The agent still reports (a heartbeat after the garbage), and its program still runs.
    let heartbeats = |stack: &Stack| {
        let wanted = Topic::device(store, dev, DeviceChannel::Telemetry);
        stack
            .observer
            .recorded()
            .iter()
            .filter(|recorded| recorded.topic == wanted)
            .filter(|recorded| message::decode::<Telemetry>(&recorded.payload).is_ok())
            .count()
    };
    let seen = heartbeats(&stack);
    wait_for("two more heartbeats after the garbage", SHORT, || {
        let more = (heartbeats(&stack) >= seen + 2).then_some(());
        async move { more }
    })
    .await;
    assert!(process_alive(pid), "the program was stopped");
    assert!(agent.pid().is_some(), "the agent is gone");

    // Nothing changed for the session: still open, same commands.
    assert_eq!(stack.commands_of(session_id).await, commands_before);
    let row = stack.session_row(&booking).await.expect("session row");
    assert!(row.ended_at.is_none(), "the session was ended");
    assert_eq!(stack.session_count(&booking).await, 1);

    // Management still serves: the neighbour's booking starts.
    let other = stack.book_now(&neighbour, 30).await;
    let mut neighbour_agent = stack.agent(&neighbour);
    let (_other_session, _other_pid) = stack
        .start_session(&mut neighbour_agent, &other.ticket)
        .await;
    println!(
        "checked: {published} bad payloads ({} kinds × {} topics) → {} malformed scans refused, program and session untouched, commands unchanged, agent and management still working",
        payloads.len(),
        topics.len(),
        malformed_scans()
    );
    neighbour_agent.stop().await;
    agent.stop().await;
    stack.shutdown().await;
}
