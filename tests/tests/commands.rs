//! Commands that arrive, once: the outbox, its lifecycle, retries, expiry, epochs and the
//! retained desired state — over the real broker process, PostgreSQL and agent processes.

use std::time::Duration;

use chrono::Utc;
use mujin_protocol::message::{self, Command, DesiredProgram, DesiredState, EventKind, Scan};
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::{DeviceId, ScanId, SessionId, StoreId};
use mujin_tests::metrics::{scrape, value};
use mujin_tests::stack::Stack;
use mujin_tests::{process_alive, wait_for};

const SHORT: Duration = Duration::from_secs(10);

/// Publishes a scan of `ticket` as if `device` had read it, and returns the session started.
async fn scan_without_agent(
    stack: &Stack,
    (store, device): &(StoreId, DeviceId),
    ticket: &str,
) -> SessionId {
    let mut scan = Scan {
        sent_at: None,
        signature: None,
        scan_id: ScanId::random(),
        ticket: ticket.to_owned(),
        read_at: Utc::now(),
        offline: None,
    };
    stack.sign_scan_as(&(store.clone(), device.clone()), &mut scan);
    let scan_topic = topic::device(store, device, DeviceChannel::Scan);
    stack
        .observer
        .publish_raw(&scan_topic, message::encode(&scan))
        .await;
    stack
        .observer
        .wait_event("the session to start", SHORT, |event| match event.kind {
            EventKind::SessionStarted { session_id, .. }
                if event.device.as_ref() == Some(device) =>
            {
                Some(session_id)
            }
            _ => None,
        })
        .await
}

/// The rules management's inbox decides scans with, for deciding them in the test itself.
fn scan_rules_here(stack: &Stack) -> mujin_management::scans::ScanRules {
    let command_key =
        mujin_management::keys::load_or_create_command_key(&stack.dir.path().join("keys"))
            .expect("the command key");
    mujin_management::scans::ScanRules {
        keyring: stack.keys.keyring.clone(),
        early_grace: Duration::from_secs(60),
        command_key: Some(std::sync::Arc::new(command_key)),
    }
}

/// Decides a scan of `ticket` on `device` here, the way management's inbox decides one.
async fn decide_scan_here(
    stack: &Stack,
    rules: &mujin_management::scans::ScanRules,
    (store, device): &(StoreId, DeviceId),
    ticket: &str,
    now: chrono::DateTime<Utc>,
) -> mujin_management::scans::ScanOutcome {
    let scan = Scan {
        scan_id: ScanId::random(),
        ticket: ticket.to_owned(),
        read_at: now,
        offline: None,
        sent_at: None,
        signature: None,
    };
    mujin_management::scans::handle_scan(
        &stack.pool,
        rules,
        store,
        device,
        &message::encode(&scan),
        now,
    )
    .await
    .expect("the scan is decided")
}

/// Waits until the session's start has been sent at least twice (nobody answered the first).
async fn wait_for_resent_start(stack: &Stack, session_id: SessionId) {
    wait_for("the start to be resent", SHORT, || async {
        let commands = stack.commands_of(session_id).await;
        commands
            .iter()
            .any(|(action, status, attempts)| {
                action == "start" && status == "sent" && *attempts >= 2
            })
            .then_some(())
    })
    .await;
}

/// Waits until the session's commands have the given (action, status) lifecycle.
async fn wait_for_lifecycle(
    stack: &Stack,
    session_id: SessionId,
    wanted: &[(&str, &str)],
) -> Vec<(String, String, i32)> {
    wait_for(
        &format!("commands {wanted:?}"),
        Duration::from_secs(20),
        || async {
            let commands = stack.commands_of(session_id).await;
            let states: Vec<(&str, &str)> = commands
                .iter()
                .map(|(a, s, _)| (a.as_str(), s.as_str()))
                .collect();
            (states == wanted).then_some(commands)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_stop_are_acknowledged_and_the_desired_state_follows_with_rising_epochs() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 3).await;
    agent.scan(&booking.ticket).await;
    agent.wait_screen("ACCEPTED", SHORT).await;
    let pid = agent.program_pid(SHORT).await;
    let session_id = stack
        .observer
        .wait_event("session started", SHORT, |event| match event.kind {
            EventKind::SessionStarted { session_id, .. } => Some(session_id),
            _ => None,
        })
        .await;
    let commands = wait_for_lifecycle(
        &stack,
        session_id,
        &[("start", "acknowledged"), ("stop", "acknowledged")],
    )
    .await;
    println!("command lifecycle: {commands:?}");
    wait_for("the program to stop", SHORT, || async {
        (!process_alive(pid)).then_some(())
    })
    .await;

    // Every command carried a higher epoch than the one before; the retained desired state
    // went from running this session to idle.
    let (store, dev) = &device;
    let command_topic = Topic::device(store, dev, DeviceChannel::Command);
    let desired_topic = Topic::device(store, dev, DeviceChannel::Desired);
    let recorded = stack.observer.recorded();
    let mut epochs: Vec<u64> = recorded
        .iter()
        .filter(|r| r.topic == command_topic)
        .filter_map(|r| message::decode::<Command>(&r.payload).ok())
        .map(|command| command.epoch)
        .collect();
    epochs.dedup();
    assert!(
        epochs.len() >= 2 && epochs.windows(2).all(|pair| pair[0] < pair[1]),
        "epochs {epochs:?}"
    );
    let desired: Vec<DesiredState> = recorded
        .iter()
        .filter(|r| r.topic == desired_topic)
        .filter_map(|r| message::decode(&r.payload).ok())
        .collect();
    assert!(desired.iter().any(|state| matches!(state.program, DesiredProgram::Running { session_id: s, .. } if s == session_id)));
    let last = desired.last().expect("a desired state");
    assert_eq!(last.program, DesiredProgram::Idle);
    assert_eq!(last.epoch, *epochs.last().unwrap());
    println!("checked: start and stop acknowledged, epochs {epochs:?}, desired running → idle");
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_is_resent_until_the_device_comes_online_and_answers() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-02").await;
    let booking = stack.book_now(&device, 20).await;
    let session_id = scan_without_agent(&stack, &device, &booking.ticket).await;
    // Nobody listens: the start is sent again and again.
    wait_for_resent_start(&stack, session_id).await;
    let agent = stack.agent(&device);
    let pid = agent.program_pid(Duration::from_secs(20)).await;
    assert!(process_alive(pid));
    let commands = wait_for_lifecycle(&stack, session_id, &[("start", "acknowledged")]).await;
    println!("checked: the start reached a device that came online later: {commands:?}");
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_nobody_answers_expires_at_the_end_of_the_booking() {
    let stack = Stack::start_with_metrics().await;
    let device = stack.add_device("shibuya", "pc-03").await;
    let booking = stack.book_now(&device, 3).await;
    let session_id = scan_without_agent(&stack, &device, &booking.ticket).await;
    let (command_id, attempts) = stack
        .observer
        .wait_event("the start to expire", SHORT, |event| match &event.kind {
            EventKind::CommandExpired {
                command_id,
                session_id: s,
                action,
                attempts,
            } if *s == session_id && action == "start" => Some((*command_id, *attempts)),
            _ => None,
        })
        .await;
    assert!(attempts >= 2, "tried {attempts} times");
    let commands = stack.commands_of(session_id).await;
    assert_eq!(commands[0].1, "expired", "{commands:?}");
    // The worker that expired it counts it.
    let address = stack.metrics_listen.expect("metrics on");
    let text = scrape(address).await;
    assert_eq!(
        value(&text, "mujin_commands_settled_total{state=\"expired\"}"),
        Some(1.0),
        "{text}"
    );
    println!(
        "checked: start {command_id} expired after {attempts} attempts; lifecycle {commands:?}"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_desired_states_are_republished_and_the_session_still_stops_on_time()
{
    let mut stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 8).await;
    agent.scan(&booking.ticket).await;
    agent.wait_screen("ACCEPTED", SHORT).await;
    let pid = agent.program_pid(SHORT).await;

    stack.kill_broker().await;
    let seen_before = stack.observer.recorded().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.restart_broker().await;

    let (store, dev) = &device;
    let desired_topic = Topic::device(store, dev, DeviceChannel::Desired);
    wait_for("the desired state to be published again", SHORT, || {
        let republished = stack
            .observer
            .recorded()
            .into_iter()
            .skip(seen_before)
            .any(|r| {
                r.topic == desired_topic
                    && matches!(
                        message::decode::<DesiredState>(&r.payload),
                        Ok(DesiredState {
                            program: DesiredProgram::Running { .. },
                            ..
                        })
                    )
            });
        async move { republished.then_some(()) }
    })
    .await;
    assert!(
        process_alive(pid),
        "the session survives the broker restart"
    );
    let ended_at = stack
        .observer
        .wait_event(
            "the session to end",
            Duration::from_secs(20),
            |event| match event.kind {
                EventKind::SessionEnded { ended_at, .. } => Some(ended_at),
                _ => None,
            },
        )
        .await;
    let lateness = ended_at - booking.claims.not_after;
    assert!(
        lateness < chrono::Duration::seconds(2),
        "ended {lateness} late"
    );
    wait_for("the program to stop", SHORT, || async {
        (!process_alive(pid)).then_some(())
    })
    .await;
    println!("checked: desired state republished after the broker restart; session ended {lateness} after its end");
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_overtaken_by_a_stop_is_superseded_not_failed() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-04").await;
    let booking = stack.book_now(&device, 60).await;
    let session_id = scan_without_agent(&stack, &device, &booking.ticket).await;
    wait_for_resent_start(&stack, session_id).await;
    // The operator stops the session before the device was ever reached: the stop has a newer
    // epoch, and so has the retained desired state (idle) the device finds when it connects.
    mujin_management::actions::force_stop(&stack.pool, session_id, "test", Utc::now())
        .await
        .expect("force stop");
    let agent = stack.agent(&device);
    let commands = wait_for(
        "every command to settle",
        Duration::from_secs(20),
        || async {
            let commands = stack.commands_of(session_id).await;
            commands
                .iter()
                .all(|(_, status, _)| status != "queued" && status != "sent")
                .then_some(commands)
        },
    )
    .await;
    assert_ne!(commands[0].1, "failed", "{commands:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failures = stack
        .observer
        .events()
        .into_iter()
        .filter(|event| matches!(event.kind, EventKind::CommandFailed { .. }))
        .count();
    assert_eq!(failures, 0, "no false command_failed alert");
    println!("checked: lifecycle {commands:?}, no command_failed event");
    agent.stop().await;
    stack.shutdown().await;
}

/// An accepted scan's start command goes out with the scan's answer — signed, for the device,
/// recorded as its first attempt so that the dispatcher only resends it — followed by the
/// device's desired state and the scan's events (recorded as published): nothing is left for
/// the dispatcher, which does not send any of it a second time.
#[tokio::test]
async fn an_accepted_scans_start_and_events_go_out_with_its_answer() {
    use mujin_protocol::message::{CommandAction, Decision, ScanResult};
    use mujin_protocol::signed::verify_command;

    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let booking = stack.book_now(&device, 60).await;
    // Management is not needed: the scan is decided here the way its inbox decides one.
    let mut stack = stack;
    stack.stop_management().await;
    let rules = scan_rules_here(&stack);
    let now = Utc::now();
    let outcome = decide_scan_here(&stack, &rules, &device, &booking.ticket, now).await;
    assert!(outcome.session_ends.is_some() && outcome.start_sent);
    assert!(!outcome.for_dispatcher, "nothing left for the dispatcher");

    let topics: Vec<Topic> = outcome
        .publish
        .iter()
        .map(|out| Topic::parse(&out.topic).expect("a mujin topic"))
        .collect();
    let channel = |topic: &Topic| match topic {
        Topic::Device { channel, .. } => Some(*channel),
        _ => None,
    };
    assert_eq!(
        topics.iter().map(channel).collect::<Vec<_>>(),
        [
            Some(DeviceChannel::ScanResult),
            Some(DeviceChannel::Command),
            Some(DeviceChannel::Desired),
            None,
            None
        ]
    );
    let kinds: Vec<String> = outcome.publish[3..]
        .iter()
        .map(|out| {
            assert_eq!(
                Topic::parse(&out.topic),
                Ok(Topic::Events {
                    store: device.0.clone()
                })
            );
            let event: mujin_protocol::message::Event =
                message::decode(&out.payload).expect("an event");
            serde_json::to_value(&event.kind).expect("json")["kind"]
                .as_str()
                .expect("a kind")
                .to_owned()
        })
        .collect();
    assert_eq!(kinds, ["scan_accepted", "session_started"]);
    let answer: ScanResult = message::decode(&outcome.publish[0].payload).expect("the answer");
    let Decision::Accepted { session_id, .. } = answer.decision else {
        panic!("refused: {answer:?}");
    };
    let command: Command = message::decode(&outcome.publish[1].payload).expect("the start");
    let public = rules.command_key.as_ref().expect("key").public_key();
    assert_eq!(
        verify_command(&public, &command, &device.0, &device.1, now),
        Ok(())
    );
    assert!(
        matches!(command.action, CommandAction::Start { session_id: started, .. } if started == session_id)
    );
    let desired: DesiredState = message::decode(&outcome.publish[2].payload).expect("desired");
    assert!(
        matches!(desired.program, DesiredProgram::Running { session_id: running, .. } if running == session_id)
    );

    // Recorded as sent once: the dispatcher waits for the ack before sending it again; the
    // events are recorded as published.
    let commands = stack.commands_of(session_id).await;
    assert_eq!(commands, vec![("start".to_owned(), "sent".to_owned(), 1)]);
    let unpublished: i64 = stack
        .pool
        .get()
        .await
        .expect("db connection")
        .query_one(
            "SELECT count(*) FROM events WHERE kind IN ('scan_accepted', 'session_started') AND published_at IS NULL",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(unpublished, 0);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_ending_at_the_same_instant_are_stopped_together_each_at_its_own_epoch() {
    let stack = Stack::start().await;
    let devices = [
        stack.add_device("shibuya", "pc-01").await,
        stack.add_device("shibuya", "pc-02").await,
        stack.add_device("shibuya", "vr-01").await,
    ];
    // One end for all three: the stop timer closes them in one batch.
    let now = Utc::now();
    let end = now + chrono::Duration::seconds(4);
    let mut sessions = Vec::new();
    for (store, device) in &devices {
        let booking = mujin_management::booking::reserve(
            &stack.pool,
            &stack.keys.signing,
            store,
            device,
            now,
            end,
            now,
        )
        .await
        .expect("booking");
        sessions.push(
            scan_without_agent(&stack, &(store.clone(), device.clone()), &booking.ticket).await,
        );
    }
    let mut ended = Vec::new();
    for _ in &devices {
        let session_id = stack
            .observer
            .wait_event(
                "a session to end",
                Duration::from_secs(20),
                |event| match event.kind {
                    EventKind::SessionEnded { session_id, .. } if !ended.contains(&session_id) => {
                        Some(session_id)
                    }
                    _ => None,
                },
            )
            .await;
        ended.push(session_id);
    }
    ended.sort();
    sessions.sort();
    assert_eq!(ended, sessions);

    let recorded = stack.observer.recorded();
    let client = stack.pool.get().await.expect("db connection");
    for (store, device) in &devices {
        let row = client
            .query_one(
                "SELECT s.session_id, d.epoch FROM sessions s JOIN devices d USING (store_id, device_id)
                 WHERE s.store_id = $1 AND s.device_id = $2",
                &[&store.as_str(), &device.as_str()],
            )
            .await
            .expect("the device's session");
        let (session_id, epoch): (uuid::Uuid, i64) = (row.get(0), row.get(1));
        let session_id = SessionId::from_uuid(session_id);
        let command_topic = Topic::device(store, device, DeviceChannel::Command);
        let stop = wait_for("the device's stop command", SHORT, || async {
            stack
                .observer
                .recorded()
                .iter()
                .filter(|r| r.topic == command_topic)
                .filter_map(|r| message::decode::<Command>(&r.payload).ok())
                .find(|command| command.action.name() == "stop")
        })
        .await;
        let start = recorded
            .iter()
            .filter(|r| r.topic == command_topic)
            .filter_map(|r| message::decode::<Command>(&r.payload).ok())
            .find(|command| command.action.name() == "start")
            .expect("the device's start command");
        assert_eq!(stop.action.session_id(), session_id, "{store}/{device}");
        assert!(
            stop.epoch > start.epoch,
            "{store}/{device}: stop {} after start {}",
            stop.epoch,
            start.epoch
        );
        assert_eq!(
            stop.epoch as i64, epoch,
            "{store}/{device}: the stop carries the device's epoch"
        );
    }
    println!("checked: three sessions ending together, each stopped at its own device's epoch");
    stack.shutdown().await;
}

/// While connected, the stop timer sends a booking's stop, the device's idle desired state and
/// the session's end itself, right after its commit (recorded as sent and published: no
/// dispatcher pass between the booked end and the device); while not, it leaves them queued for
/// the dispatcher. The same look closes the due sessions and tells when the next is due.
#[tokio::test]
async fn the_stop_timer_sends_a_bookings_stop_itself_or_leaves_it_to_the_dispatcher() {
    use mujin_management::stop_timer::stop_due_sessions;
    use mujin_protocol::message::CommandAction;
    use mujin_protocol::signed::verify_command;

    let mut stack = Stack::start().await;
    let queued = stack.add_device("shibuya", "pc-01").await;
    let sent = stack.add_device("shibuya", "pc-02").await;
    let bookings = [
        stack.book_now(&queued, 30).await,
        stack.book_now(&sent, 60).await,
    ];
    stack.stop_management().await;
    let rules = scan_rules_here(&stack);
    let key = rules.command_key.clone().expect("key");
    let mut sessions = Vec::new();
    for (device, booking) in [&queued, &sent].into_iter().zip(&bookings) {
        let outcome = decide_scan_here(&stack, &rules, device, &booking.ticket, Utc::now()).await;
        let answer: mujin_protocol::message::ScanResult =
            message::decode(&outcome.publish[0].payload).expect("the answer");
        let mujin_protocol::message::Decision::Accepted { session_id, .. } = answer.decision else {
            panic!("refused: {answer:?}");
        };
        sessions.push((session_id, outcome.session_ends.expect("a session")));
    }
    let [(queued_session, queued_end), (sent_session, sent_end)] = sessions[..] else {
        unreachable!("two sessions");
    };
    let just_after = |end: chrono::DateTime<Utc>| end + chrono::Duration::milliseconds(1);

    // Not connected: queued for the dispatcher, nothing to publish here.
    let pass = stop_due_sessions(&stack.pool, false, just_after(queued_end))
        .await
        .expect("a look at the due sessions");
    assert_eq!((pass.closed, pass.stops.len()), (1, 1));
    assert_eq!(
        pass.next_due,
        Some(sent_end),
        "the next end, from the same look"
    );
    assert_eq!(
        stack.commands_of(queued_session).await[1],
        ("stop".to_owned(), "queued".to_owned(), 0)
    );

    // Connected: the stop, the idle desired state and the event, ready to go out.
    let now = just_after(sent_end);
    let pass = stop_due_sessions(&stack.pool, true, now)
        .await
        .expect("a look at the due sessions");
    assert_eq!(pass.closed, 1);
    assert_eq!(pass.stops[0].0.lease_until, sent_end);
    let publish: Vec<_> = pass.messages(&key).flatten().collect();
    let channels: Vec<Option<DeviceChannel>> = publish
        .iter()
        .map(
            |out| match Topic::parse(&out.topic).expect("a mujin topic") {
                Topic::Device { channel, .. } => Some(channel),
                _ => None,
            },
        )
        .collect();
    assert_eq!(
        channels,
        [
            Some(DeviceChannel::Command),
            Some(DeviceChannel::Desired),
            None
        ]
    );
    let stop: Command = message::decode(&publish[0].payload).expect("the stop");
    assert_eq!(
        verify_command(&key.public_key(), &stop, &sent.0, &sent.1, now),
        Ok(())
    );
    assert!(
        matches!(stop.action, CommandAction::Stop { session_id, .. } if session_id == sent_session)
    );
    let desired: DesiredState = message::decode(&publish[1].payload).expect("desired");
    assert_eq!(
        (desired.program, desired.epoch),
        (DesiredProgram::Idle, stop.epoch)
    );
    let ended: mujin_protocol::message::Event =
        message::decode(&publish[2].payload).expect("an event");
    assert!(
        matches!(ended.kind, EventKind::SessionEnded { session_id, .. } if session_id == sent_session)
    );
    assert_eq!(
        stack.commands_of(sent_session).await[1],
        ("stop".to_owned(), "sent".to_owned(), 1),
        "recorded as its first attempt"
    );
    let unpublished: Vec<bool> = stack
        .pool
        .get()
        .await
        .expect("db connection")
        .query(
            "SELECT published_at IS NULL FROM events WHERE kind = 'session_ended' ORDER BY at",
            &[],
        )
        .await
        .expect("events")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        unpublished,
        [true, false],
        "the dispatcher's, then the sent one"
    );
    stack.shutdown().await;
}

/// While connected, the stop timer closes the sessions ending at the next instant ahead of it,
/// signs their stops, and commits at the end itself: until then the session is open to
/// everyone else and its stop invisible, and an extension asked meanwhile waits for the end,
/// then finds the session ended; after it the session has ended at its booked end. Stopped
/// while it waits, it rolls back: the session stays open, its row free, for the next look.
#[tokio::test]
async fn the_stop_timer_closes_a_session_ahead_of_its_end_and_commits_at_the_end() {
    use mujin_management::actions::{self, ExtendError, NewEnd, SessionError};
    use mujin_management::stop_timer::close_ahead;
    use mujin_protocol::signed::verify_command;
    use tokio_util::sync::CancellationToken;

    let mut stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let booking = stack.book_now(&device, 4).await;
    stack.stop_management().await;
    let rules = scan_rules_here(&stack);
    let key = rules.command_key.clone().expect("key");
    let outcome = decide_scan_here(&stack, &rules, &device, &booking.ticket, Utc::now()).await;
    let end = outcome.session_ends.expect("a session");
    let answer: mujin_protocol::message::ScanResult =
        message::decode(&outcome.publish[0].payload).expect("the answer");
    let mujin_protocol::message::Decision::Accepted {
        session_id: session,
        ..
    } = answer.decision
    else {
        panic!("refused: {answer:?}");
    };
    let db = stack.pool.get().await.expect("db connection");
    let state = || async {
        let row = db
            .query_one(
                "SELECT ended_at FROM sessions WHERE session_id = $1",
                &[&session.as_uuid()],
            )
            .await
            .expect("the session");
        row.get::<_, Option<chrono::DateTime<Utc>>>(0)
    };
    // Whether someone holds the session's row (a claim waiting for the end).
    let claimed = || async {
        match db
            .execute(
                "SELECT 1 FROM sessions WHERE session_id = $1 FOR UPDATE NOWAIT",
                &[&session.as_uuid()],
            )
            .await
        {
            Ok(_) => false,
            Err(error)
                if error.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
            {
                true
            }
            Err(error) => panic!("cannot look at the session's row: {error}"),
        }
    };

    // Stopped while waiting for the end: rolled back.
    let stop = CancellationToken::new();
    let (looked, ()) = tokio::join!(close_ahead(&stack.pool, end, &key, &stop), async {
        wait_for("the session claimed", SHORT, || async {
            claimed().await.then_some(())
        })
        .await;
        stop.cancel();
    });
    assert!(
        looked.expect("a look").is_none(),
        "stopped: nothing to send"
    );
    wait_for("the claim rolled back", SHORT, || async {
        (!claimed().await).then_some(())
    })
    .await;
    assert_eq!(state().await, None, "still open");
    assert_eq!(stack.commands_of(session).await.len(), 1, "only the start");

    // Waits for the end to commit; an extension asked meanwhile waits too, then is refused.
    let stop = CancellationToken::new();
    let (looked, (open_before, stop_before, extended)) =
        tokio::join!(close_ahead(&stack.pool, end, &key, &stop), async {
            wait_for("the session claimed", SHORT, || async {
                claimed().await.then_some(())
            })
            .await;
            let open_before = state().await.is_none() && Utc::now() < end;
            let stop_before = stack.commands_of(session).await.len() > 1;
            let later = NewEnd::AfterCurrent(chrono::Duration::minutes(10));
            let extended = actions::extend(&stack.pool, session, later, "test", Utc::now()).await;
            (open_before, stop_before, extended)
        });
    let committed = Utc::now();
    let (pass, signed) = looked.expect("a look").expect("not stopped");
    assert!(open_before, "open to others until its end");
    assert!(!stop_before, "its stop invisible until the end");
    assert!(committed >= end, "committed at the end, not before");
    assert!(
        matches!(
            extended,
            Err(ExtendError::Session(SessionError::AlreadyEnded { ended_at, .. })) if ended_at == end
        ),
        "the extension waited for the end: {extended:?}"
    );
    assert_eq!(state().await, Some(end), "ended at its booked end");
    assert_eq!((pass.closed, pass.now), (1, end));
    assert_eq!(
        stack.commands_of(session).await[1],
        ("stop".to_owned(), "sent".to_owned(), 1),
        "recorded as its first attempt"
    );
    let signed = signed.expect("signed ahead");
    let stop_command: Command = message::decode(&signed[0].payload).expect("the stop");
    assert_eq!(
        verify_command(&key.public_key(), &stop_command, &device.0, &device.1, end),
        Ok(())
    );
    assert_eq!(stop_command.action.session_id(), session);
    stack.shutdown().await;
}
