//! What devices report, and what management makes of it: availability from last wills and
//! heartbeats, clock skew, programs that exit by themselves, a device cut off during its
//! session, states repeating an exit already recorded, and the cache of device keys — over the
//! real broker process, PostgreSQL and agent processes.

use std::time::Duration;

use chrono::Utc;
use mujin_management::booking::Booking;
use mujin_management::device_keys::{self, DeviceKeyCache};
use mujin_management::devices::{self, Liveness};
use mujin_protocol::message::{
    self, Availability, EndReason, EventKind, ProgramExit, ProgramStatus, ReportedState, StopCause,
    Telemetry,
};
use mujin_protocol::topic::{self, DeviceChannel};
use mujin_protocol::{DeviceId, KeyId, SessionId, StoreId};
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

/// Inserts a session of `booking` on `device` straight into the database: open, or ended with
/// the device's account of its stop recorded.
async fn insert_session(
    stack: &Stack,
    (store, device): &(StoreId, DeviceId),
    booking: &Booking,
    ended: bool,
) -> SessionId {
    let session_id = SessionId::random();
    let client = stack.pool.get().await.expect("db");
    client
        .execute(
            "INSERT INTO sessions (session_id, ticket_id, scan_id, store_id, device_id, started_at,
                                   lease_until, start_command_id, ended_at, end_reason,
                                   device_stopped_at, device_stop_cause, device_exit)
             SELECT $1, $2, gen_random_uuid(), $3, $4, now(), now() + interval '1 minute',
                    gen_random_uuid(), e.at, e.reason, e.at, e.cause, e.exit
             FROM (SELECT CASE WHEN $5 THEN now() END AS at,
                          CASE WHEN $5 THEN 'booking_ended' END AS reason,
                          CASE WHEN $5 THEN 'command' END AS cause,
                          CASE WHEN $5 THEN 'exit code 0' END AS exit) e",
            &[
                &session_id.as_uuid(),
                &booking.claims.ticket_id.as_uuid(),
                &store.as_str(),
                &device.as_str(),
                &ended,
            ],
        )
        .await
        .expect("a session inserted");
    session_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_repeating_a_recorded_exit_is_not_held_up_by_a_lock_on_the_open_session() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let earlier = stack
        .book(
            &device,
            chrono::Duration::hours(2),
            chrono::Duration::minutes(10),
        )
        .await
        .expect("a booking for the earlier session");
    let booking = stack.book_now(&device, 60).await;
    let ended = insert_session(&stack, &device, &earlier, true).await;
    let running = insert_session(&stack, &device, &booking, false).await;
    // The device runs its new session and repeats how the earlier one ended, as agents do in
    // every state until the next session ends.
    let state = |at: chrono::DateTime<Utc>| ReportedState {
        availability: Availability::Online,
        program: ProgramStatus::Running {
            session_id: running,
            started_at: at,
            lease_until: at + chrono::Duration::minutes(1),
            provisional: false,
        },
        last_exit: Some(ProgramExit {
            session_id: ended,
            stopped_by: StopCause::Command,
            exit: "exit code 0".into(),
            at,
        }),
        at: Some(at),
        signature: None,
    };
    let liveness = tokio::sync::Mutex::new(Liveness::default());
    let flagged = devices::reconcile(
        &stack.pool,
        &liveness,
        &device,
        &state(Utc::now()),
        Utc::now(),
    )
    .await
    .expect("the first state");
    assert!(
        !flagged,
        "the device runs the open session: nothing to flag"
    );

    // The open session's row is locked, as the stop timer holds it in the last moments before
    // its end.
    let mut holder = stack.pool.get().await.expect("db");
    let lock = holder.transaction().await.expect("a transaction");
    lock.query(
        "SELECT 1 FROM sessions WHERE session_id = $1 FOR UPDATE",
        &[&running.as_uuid()],
    )
    .await
    .expect("the lock");
    let again = state(Utc::now());
    let repeated = devices::reconcile(&stack.pool, &liveness, &device, &again, Utc::now());
    let flagged = tokio::time::timeout(Duration::from_secs(2), repeated)
        .await
        .expect("answered without waiting for the lock")
        .expect("the repeated state");
    assert!(!flagged);

    // A worker that has not seen the exit recorded yet (just started) checks it in a
    // transaction: it waits for the lock, then remembers.
    let fresh = tokio::sync::Mutex::new(Liveness::default());
    let once_more = state(Utc::now());
    {
        let checking = devices::reconcile(&stack.pool, &fresh, &device, &once_more, Utc::now());
        tokio::pin!(checking);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut checking)
                .await
                .is_err(),
            "a worker that does not know waits for the lock"
        );
        lock.rollback().await.expect("the lock released");
        checking.await.expect("checked once the lock is released");
    }
    drop(holder);
    assert!(fresh.lock().await.exit_recorded(&device, ended));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_keys_are_reloaded_off_the_messages_path_and_a_missing_key_is_read_from_its_row() {
    let stack = Stack::start().await;
    let first = stack.add_device("shibuya", "pc-01").await;
    let first_key = stack.device_key(&first).expect("enrolled").public_key();
    let cache = DeviceKeyCache::new(stack.pool.clone());
    let key_of = |device: &(StoreId, DeviceId), key: &KeyId| {
        let (cache, device, key) = (&cache, device.clone(), key.clone());
        async move { cache.key_of(&device.0, &device.1, Some(&key)).await }
    };
    assert_eq!(
        key_of(&first, &first_key.key_id).await,
        Some(first_key.clone()),
        "loaded on the first lookup"
    );
    // Enrolled after the cache was loaded.
    let second = stack.add_device("shibuya", "pc-02").await;
    let second_key = stack.device_key(&second).expect("enrolled").public_key();
    // A device with no key: its row is read, and not again for a while.
    let unknown = (
        first.0.clone(),
        DeviceId::parse("pc-99").expect("a device id"),
    );
    assert_eq!(key_of(&unknown, &first_key.key_id).await, None);

    // The table is locked (a long migration, a backup): any reload waits.
    let mut holder = stack.pool.get().await.expect("db");
    let lock = holder.transaction().await.expect("a transaction");
    lock.batch_execute("LOCK TABLE device_keys IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("the lock");
    let again = tokio::time::timeout(
        Duration::from_millis(300),
        key_of(&unknown, &first_key.key_id),
    )
    .await
    .expect("a row read a moment ago is not read again (a flood of forgeries costs no reads)");
    assert_eq!(again, None);
    tokio::time::sleep(device_keys::REFRESH + Duration::from_millis(100)).await;
    let known = tokio::time::timeout(Duration::from_secs(1), key_of(&first, &first_key.key_id))
        .await
        .expect("a key in the cache is answered without waiting for a reload");
    assert_eq!(known, Some(first_key));
    {
        let missing = key_of(&second, &second_key.key_id);
        tokio::pin!(missing);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut missing)
                .await
                .is_err(),
            "a key the cache does not hold is read from the table"
        );
        lock.rollback().await.expect("the lock released");
        assert_eq!(missing.await, Some(second_key), "found once readable");
    }
    drop(holder);
    stack.shutdown().await;
}
