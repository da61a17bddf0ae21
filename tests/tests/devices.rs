//! What devices report, and what management makes of it: availability from last wills and
//! heartbeats, clock skew, programs that exit by themselves, and a device cut off during its
//! session — over the real broker process, PostgreSQL and agent processes.

use std::time::Duration;

use chrono::Utc;
use mujin_protocol::message::{self, Availability, EndReason, EventKind, ProgramStatus, Telemetry};
use mujin_protocol::topic::{self, DeviceChannel};
use mujin_protocol::SessionId;
use mujin_tests::proxy::Proxy;
use mujin_tests::stack::Stack;
use mujin_tests::{process_alive, wait_for};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const SHORT: Duration = Duration::from_secs(10);

async fn session_started(stack: &Stack) -> SessionId {
    stack
        .observer
        .wait_event("the session to start", SHORT, |event| match event.kind {
            EventKind::SessionStarted { session_id, .. } => Some(session_id),
            _ => None,
        })
        .await
}

async fn availability_event(
    stack: &Stack,
    availability: Availability,
    after: usize,
) -> Option<SessionId> {
    stack
        .observer
        .wait_event(
            &format!("the device to be reported {availability:?}"),
            SHORT,
            |event| match event.kind {
                EventKind::DeviceAvailability {
                    availability: got,
                    session_id,
                } if got == availability => Some(session_id),
                _ => None,
            },
        )
        .await;
    // The latest such event after `after` recorded events.
    stack
        .observer
        .events()
        .into_iter()
        .skip(after)
        .rev()
        .find_map(|event| match event.kind {
            EventKind::DeviceAvailability {
                availability: got,
                session_id,
            } if got == availability => Some(session_id),
            _ => None,
        })?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_heartbeats_stop_is_offline_within_one_and_a_half_intervals_and_alerts_its_session(
) {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let mut agent = stack.agent(&device);
    availability_event(&stack, Availability::Online, 0).await;
    let booking = stack.book_now(&device, 30).await;
    agent.scan(&booking.ticket).await;
    let session_id = session_started(&stack).await;
    let pid = agent.program_pid(SHORT).await;
    // A beat or two, not the time to learn the 500 ms rhythm: the agent's telemetry declares
    // it (learned, it would start from 2 s and come down over several beats).
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Frozen: the connection stays open (no last will yet), only the heartbeats stop.
    let agent_pid = Pid::from_raw(agent.pid().expect("agent pid") as i32);
    let before = stack.observer.events().len();
    kill(agent_pid, Signal::SIGSTOP).expect("stop the agent");
    let frozen_at = std::time::Instant::now();
    let alerted = availability_event(&stack, Availability::Offline, before).await;
    let detected = frozen_at.elapsed();
    assert_eq!(
        alerted,
        Some(session_id),
        "the offline event names the running session"
    );
    assert!(
        detected < Duration::from_millis(1_500),
        "offline detected after {detected:?}"
    );
    let before = stack.observer.events().len();
    kill(agent_pid, Signal::SIGCONT).expect("resume the agent");
    availability_event(&stack, Availability::Online, before).await;
    println!("checked: offline reported {detected:?} after heartbeats stopped (interval 500 ms), with the session; online again after");
    assert!(process_alive(pid));
    agent.stop().await;
    stack.shutdown().await;
}

/// An agent whose telemetry comes every 10 s is judged by that interval from its first moment:
/// it sends a heartbeat as soon as it is connected, declaring the interval, so management
/// does not take it offline for missing the 2 s it assumes for an unknown device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_slow_telemetry_stays_online_between_its_heartbeats() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let agent = stack.agent_with_args(stack.port, &device, &["--telemetry-interval-ms", "10000"]);
    availability_event(&stack, Availability::Online, 0).await;
    // Well past the 3 s an unknown device gets, well within 1.5 × 10 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let offline = stack.observer.events().into_iter().any(|event| {
        matches!(
            event.kind,
            EventKind::DeviceAvailability {
                availability: Availability::Offline,
                ..
            }
        )
    });
    assert!(!offline, "taken offline between heartbeats");
    println!("checked: an agent beating every 10 s stays online 5 s after connecting");
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_exits_by_itself_closes_its_session_and_a_skewed_clock_is_flagged() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 30).await;
    agent.scan(&booking.ticket).await;
    let session_id = session_started(&stack).await;
    let pid = agent.program_pid(SHORT).await;
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("end the program");
    let reason = stack
        .observer
        .wait_event("the session to end", SHORT, |event| match event.kind {
            EventKind::SessionEnded {
                session_id: id,
                reason,
                ..
            } if id == session_id => Some(reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, EndReason::ProgramExited);
    let row = stack.session_row(&booking).await.expect("session row");
    assert_eq!(row.end_reason.as_deref(), Some("program_exited"));

    // A device whose clock runs 5 s ahead.
    let (store, dev) = &device;
    let mut telemetry = Telemetry {
        interval_ms: None,
        signature: None,
        at: Utc::now() + chrono::Duration::seconds(5),
        uptime_ms: 1,
        load: None,
        program: ProgramStatus::Idle,
    };
    stack.sign_as(&device, &mut telemetry);
    stack
        .observer
        .publish_raw(
            &topic::device(store, dev, DeviceChannel::Telemetry),
            message::encode(&telemetry),
        )
        .await;
    let skew = stack
        .observer
        .wait_event("a clock skew alert", SHORT, |event| match event.kind {
            EventKind::ClockSkew { skew_ms } => Some(skew_ms),
            _ => None,
        })
        .await;
    assert!((4_000..6_000).contains(&skew), "skew {skew} ms");
    println!(
        "checked: program exit closed the session as program_exited; skew of {skew} ms flagged"
    );
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cut_off_during_its_session_stops_by_itself_and_management_records_it_when_it_returns(
) {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let proxy = Proxy::start(stack.port).await;
    let mut agent = stack.agent_via(proxy.port, &device);
    availability_event(&stack, Availability::Online, 0).await;
    let booking = stack.book_now(&device, 4).await;
    agent.scan(&booking.ticket).await;
    let session_id = session_started(&stack).await;
    let pid = agent.program_pid(SHORT).await;

    let before = stack.observer.events().len();
    proxy.cut();
    let alerted = availability_event(&stack, Availability::Offline, before).await;
    assert_eq!(alerted, Some(session_id));
    wait_for(
        "the agent to stop the program by itself",
        Duration::from_secs(15),
        || async { (!process_alive(pid)).then_some(()) },
    )
    .await;
    let lateness = Utc::now() - booking.claims.not_after;
    assert!(
        lateness < chrono::Duration::seconds(2),
        "stopped {lateness} after the end"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    let (cause, stopped_at) = wait_for(
        "management to record the device's account",
        Duration::from_secs(20),
        || async {
            let client = stack.pool.get().await.expect("db");
            let row = client
            .query_one(
                "SELECT device_stop_cause, device_stopped_at FROM sessions WHERE session_id = $1",
                &[&session_id.as_uuid()],
            )
            .await
            .expect("session");
            let cause: Option<String> = row.get(0);
            let at: Option<chrono::DateTime<Utc>> = row.get(1);
            cause.zip(at)
        },
    )
    .await;
    assert_eq!(cause, "lease_expired");
    let commands = wait_for(
        "the stop to reach the device after all",
        Duration::from_secs(20),
        || async {
            let commands = stack.commands_of(session_id).await;
            commands
                .iter()
                .any(|(action, status, _)| action == "stop" && status == "acknowledged")
                .then_some(commands)
        },
    )
    .await;
    println!(
        "checked: cut off during the session, the program stopped {lateness} after the end; on return the device's account \
         ({cause} at {stopped_at}) was recorded and the stop was delivered: {commands:?}"
    );
    agent.stop().await;
    stack.shutdown().await;
}
