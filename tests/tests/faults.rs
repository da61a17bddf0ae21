//! Fault tests: the guarantees hold while parts crash — over the real broker process,
//! PostgreSQL, `mujin-management` and `mujin-agent` processes.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mujin_protocol::message::{self, ReportedState};
use mujin_protocol::topic::{DeviceChannel, Topic};
use mujin_protocol::{ScanId, SessionId};
use mujin_tests::agent::Agent;
use mujin_tests::stack::Stack;
use mujin_tests::wait_for;

/// When each session's program stopped, as its device reported it.
fn program_stops(stack: &Stack) -> HashMap<SessionId, DateTime<Utc>> {
    stack
        .observer
        .recorded()
        .into_iter()
        .filter(|r| {
            matches!(
                r.topic,
                Topic::Device {
                    channel: DeviceChannel::State,
                    ..
                }
            )
        })
        .filter_map(|r| message::decode::<ReportedState>(&r.payload).ok()?.last_exit)
        .map(|exit| (exit.session_id, exit.at))
        .collect()
}

/// Waits until every booking has ended (and a little more, for the stops to be reported).
async fn wait_until_over(bookings: &[mujin_management::booking::Booking]) {
    let last_end = bookings
        .iter()
        .map(|b| b.claims.not_after)
        .max()
        .expect("bookings");
    wait_for(
        "every booking to be over",
        Duration::from_secs(20),
        || async { (Utc::now() > last_end + chrono::Duration::seconds(3)).then_some(()) },
    )
    .await;
}

/// Scan ids the agents printed (`SCANNED <id>`).
fn scanned_ids(agents: &[Agent]) -> Vec<ScanId> {
    agents
        .iter()
        .flat_map(|agent| agent.screen())
        .filter_map(|line| {
            line.strip_prefix("SCANNED ")
                .and_then(|id| ScanId::parse(id.trim()).ok())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_management_mid_run_loses_no_scan_doubles_no_session_and_every_session_stops_on_time(
) {
    let mut stack = Stack::start().await;
    stack.stop_management().await;
    let mut management = stack.spawn_management_process();
    stack.wait_for_management().await;

    let devices = [
        stack.add_device("shibuya", "pc-01").await,
        stack.add_device("shibuya", "pc-02").await,
        stack.add_device("shibuya", "pc-03").await,
    ];
    let mut agents: Vec<Agent> = devices.iter().map(|device| stack.agent(device)).collect();
    let mut bookings = Vec::new();
    let mut killed = false;
    // Rounds of 3-second sessions on every device; management is killed in the middle.
    for round in 0..5 {
        for (device, agent) in devices.iter().zip(agents.iter_mut()) {
            let booking = stack.book_now(device, 3).await;
            agent.scan(&booking.ticket).await;
            bookings.push(booking);
        }
        if round == 2 && !killed {
            management.start_kill().expect("kill -9 management");
            management.wait().await.expect("reap management");
            killed = true;
            println!("killed management (SIGKILL) after {} scans", bookings.len());
            tokio::time::sleep(Duration::from_millis(500)).await;
            management = stack.spawn_management_process();
        }
        tokio::time::sleep(Duration::from_millis(3_600)).await;
    }
    wait_until_over(&bookings).await;

    // No scan lost: every reading the agents sent was decided.
    let scan_ids = scanned_ids(&agents);
    assert_eq!(scan_ids.len(), bookings.len(), "every scan was sent");
    let client = stack.pool.get().await.expect("db");
    let decided: i64 = client
        .query_one(
            "SELECT count(*) FROM scans WHERE scan_id = ANY($1)",
            &[&scan_ids.iter().map(|id| id.as_uuid()).collect::<Vec<_>>()],
        )
        .await
        .expect("count scans")
        .get(0);
    assert_eq!(
        decided,
        scan_ids.len() as i64,
        "every scan has its decision"
    );

    // No ticket with two sessions, every session closed.
    let sessions = client
        .query(
            "SELECT session_id, lease_until, ended_at FROM sessions ORDER BY started_at",
            &[],
        )
        .await
        .expect("sessions");
    let doubled: i64 = client
        .query_one("SELECT count(*) FROM (SELECT ticket_id FROM sessions GROUP BY 1 HAVING count(*) > 1) t", &[])
        .await
        .expect("doubles")
        .get(0);
    assert_eq!(doubled, 0, "a ticket gave two sessions");
    assert!(
        sessions.len() >= bookings.len() - 1,
        "{} sessions for {} bookings",
        sessions.len(),
        bookings.len()
    );

    // Every session's program stopped within 2 s of its end, as the devices report it.
    let stops = program_stops(&stack);
    let mut worst = chrono::Duration::zero();
    for row in &sessions {
        let session_id = SessionId::from_uuid(row.get(0));
        let lease_until: DateTime<Utc> = row.get(1);
        let ended_at: Option<DateTime<Utc>> = row.get(2);
        assert!(ended_at.is_some(), "session {session_id} was never closed");
        let stopped = stops
            .get(&session_id)
            .unwrap_or_else(|| panic!("no stop reported for {session_id}"));
        let lateness = *stopped - lease_until;
        worst = worst.max(lateness);
        assert!(
            lateness < chrono::Duration::seconds(2),
            "session {session_id} stopped {lateness} late"
        );
    }
    println!(
        "checked: {} scans all decided, {} sessions, none doubled, all closed, worst stop lateness {worst}",
        scan_ids.len(),
        sessions.len()
    );
    for agent in agents {
        agent.stop().await;
    }
    drop(management);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_delivered_again_and_out_of_order_has_no_effect_beyond_the_first() {
    use mujin_protocol::message::EventKind;

    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 3).await;
    agent.scan(&booking.ticket).await;
    let session_id = stack
        .observer
        .wait_event(
            "the session to end",
            Duration::from_secs(15),
            |event| match event.kind {
                EventKind::SessionEnded { session_id, .. } => Some(session_id),
                _ => None,
            },
        )
        .await;
    let pid = agent.program_pid(Duration::from_secs(5)).await;
    wait_for(
        "the stop to be acknowledged",
        Duration::from_secs(10),
        || async {
            let commands = stack.commands_of(session_id).await;
            commands
                .iter()
                .any(|(action, status, _)| action == "stop" && status == "acknowledged")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let commands_before = stack.commands_of(session_id).await;
    let recorded = stack.observer.recorded();
    let events_before = stack.observer.events().len();

    // Everything every part received, once more, newest first: scans, acks, states and
    // heartbeats to management; commands, desired states and scan results to the agent.
    let replayed: Vec<_> = recorded
        .iter()
        .rev()
        .filter(|r| !matches!(r.topic, Topic::Events { .. }))
        // The readiness probe's payloads are deliberately not scans (no scan id to answer once).
        .filter(|r| !matches!(&r.topic, Topic::Device { store, .. } if store.as_str() == "probe"))
        .collect();
    for message in &replayed {
        stack
            .observer
            .publish_raw(&message.topic.to_string(), message.payload.clone())
            .await;
    }
    println!("replayed {} messages in reverse order", replayed.len());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let client = stack.pool.get().await.expect("db");
    let sessions: i64 = client
        .query_one("SELECT count(*) FROM sessions", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(sessions, 1, "still one session");
    assert_eq!(
        stack.commands_of(session_id).await,
        commands_before,
        "commands unchanged"
    );
    assert!(
        !mujin_tests::process_alive(pid),
        "the program did not come back"
    );
    assert!(
        std::fs::metadata(&agent.pid_file)
            .map(|m| m.modified().ok())
            .ok()
            .flatten()
            <= Some(std::time::SystemTime::now() - Duration::from_secs(3)),
        "the program was not started again"
    );
    let new_events: Vec<_> = stack
        .observer
        .events()
        .into_iter()
        .skip(events_before)
        .collect();
    assert!(
        new_events.is_empty(),
        "new events after the replay: {new_events:?}"
    );
    println!(
        "checked: 1 session, commands {commands_before:?} unchanged, program not restarted, no new event"
    );
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_management_workers_never_double_a_session_a_stop_or_an_event() {
    use mujin_protocol::message::EventKind;

    let mut stack = Stack::start().await;
    stack.stop_management().await;
    let first = stack.spawn_management_worker("mujin-management-1");
    let second = stack.spawn_management_worker("mujin-management-2");
    stack.wait_for_workers(2).await;
    let devices = [
        stack.add_device("shibuya", "pc-01").await,
        stack.add_device("shibuya", "pc-02").await,
        stack.add_device("shibuya", "pc-03").await,
        stack.add_device("shibuya", "pc-04").await,
    ];
    let mut agents: Vec<Agent> = devices.iter().map(|device| stack.agent(device)).collect();
    let mut bookings = Vec::new();
    for _round in 0..3 {
        for (device, agent) in devices.iter().zip(agents.iter_mut()) {
            let booking = stack.book_now(device, 3).await;
            agent.scan(&booking.ticket).await;
            // The same ticket again at once: both workers see both readings.
            agent.scan(&booking.ticket).await;
            bookings.push(booking);
        }
        tokio::time::sleep(Duration::from_millis(3_600)).await;
    }
    wait_until_over(&bookings).await;

    let client = stack.pool.get().await.expect("db");
    let count = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .expect(sql)
                .get::<_, i64>(0)
        }
    };
    assert_eq!(
        count("SELECT count(*) FROM sessions").await,
        bookings.len() as i64,
        "one session per ticket"
    );
    assert_eq!(
        count("SELECT count(*) FROM sessions WHERE ended_at IS NULL").await,
        0,
        "all stopped"
    );
    assert_eq!(
        count("SELECT count(*) FROM commands WHERE action = 'stop'").await,
        bookings.len() as i64,
        "one stop each"
    );
    assert_eq!(
        count("SELECT count(*) FROM commands WHERE status <> 'acknowledged'").await,
        0,
        "every command acknowledged once"
    );
    // Every event published once: as many session starts and ends on the wire as sessions.
    let events = stack.observer.events();
    let starts = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::SessionStarted { .. }))
        .count();
    let ends = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::SessionEnded { .. }))
        .count();
    assert_eq!(
        (starts, ends),
        (bookings.len(), bookings.len()),
        "events published once"
    );
    let refused = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ScanRejected { .. }) && e.store.as_str() != "probe")
        .count();
    assert_eq!(refused, bookings.len(), "each second reading refused once");
    println!(
        "checked: 2 workers, {} tickets scanned twice each: {} sessions, {} stops, {starts} starts and {ends} ends published, {refused} refusals",
        bookings.len(),
        bookings.len(),
        bookings.len()
    );
    for agent in agents {
        agent.stop().await;
    }
    drop((first, second));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_during_a_database_outage_are_answered_once_after_it_and_the_worker_recovers() {
    use mujin_management::postgres::PrivateCluster;
    use mujin_protocol::message::EventKind;

    // A cluster of this test's own, so stopping it leaves the other tests alone.
    let pg_dir = tempfile::tempdir().expect("temp dir");
    let data_dir = pg_dir.path().join("pg");
    let cluster = PrivateCluster::start_for_tests(&data_dir).expect("start PostgreSQL");
    cluster.create_database("mujin").await.expect("database");
    let stack = Stack::start_on(cluster.connection_string("mujin")).await;
    let devices = [
        stack.add_device("shibuya", "pc-01").await,
        stack.add_device("shibuya", "pc-02").await,
    ];
    let mut agents: Vec<Agent> = devices.iter().map(|device| stack.agent(device)).collect();
    let mut bookings = Vec::new();
    for device in &devices {
        bookings.push(stack.book_now(device, 60).await);
    }

    cluster.stop().expect("stop PostgreSQL");
    let outage = std::time::Instant::now();
    for (agent, booking) in agents.iter_mut().zip(&bookings) {
        agent.scan(&booking.ticket).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cluster = PrivateCluster::start_for_tests(&data_dir).expect("restart PostgreSQL");
    println!("PostgreSQL was down for {:?}", outage.elapsed());

    for agent in &agents {
        agent.wait_screen("ACCEPTED", Duration::from_secs(30)).await;
    }
    let recovered_after = outage.elapsed();
    // The worker carries on by itself: a new booking and scan work as usual.
    let third = stack.add_device("shibuya", "pc-03").await;
    let mut agent = stack.agent(&third);
    let booking = stack.book_now(&third, 60).await;
    agent.scan(&booking.ticket).await;
    agent.wait_screen("ACCEPTED", Duration::from_secs(15)).await;
    bookings.push(booking);
    agents.push(agent);

    tokio::time::sleep(Duration::from_millis(500)).await;
    for (agent, booking) in agents.iter().zip(&bookings) {
        let shown = agent
            .screen()
            .iter()
            .filter(|line| line.starts_with("ACCEPTED") || line.starts_with("REFUSED"))
            .count();
        assert_eq!(shown, 1, "one answer for one scan");
        assert_eq!(
            stack.session_count(booking).await,
            1,
            "one session for one ticket"
        );
    }
    let started = stack
        .observer
        .events()
        .iter()
        .filter(|event| matches!(event.kind, EventKind::SessionStarted { .. }))
        .count();
    assert_eq!(started, bookings.len(), "each session started once");
    println!(
        "checked: {} scans sent during a 10 s outage answered once each, {:?} after it began; the worker then served a new scan",
        devices.len(),
        recovered_after
    );
    for agent in agents {
        agent.stop().await;
    }
    stack.shutdown().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_agent_takes_its_program_down_and_a_restarted_one_resumes_the_session() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 30).await;
    agent.scan(&booking.ticket).await;
    agent.wait_screen("ACCEPTED", Duration::from_secs(10)).await;
    let first = agent.program_pid(Duration::from_secs(10)).await;

    let agent_pid = Pid::from_raw(agent.pid().expect("agent pid") as i32);
    kill(agent_pid, Signal::SIGKILL).expect("kill -9 the agent");
    wait_for(
        "the orphaned program to end",
        Duration::from_secs(5),
        || async { (!mujin_tests::process_alive(first)).then_some(()) },
    )
    .await;
    let pid_file = agent.pid_file.clone();
    agent.stop().await;
    std::fs::remove_file(&pid_file).expect("remove the pid file");

    // A new agent finds management's retained desired state and runs the session again.
    let restarted = stack.agent(&device);
    let second = restarted.program_pid(Duration::from_secs(10)).await;
    assert_ne!(first, second);
    assert!(mujin_tests::process_alive(second));
    assert_eq!(
        stack.session_count(&booking).await,
        1,
        "still the one session"
    );
    println!("checked: the program of a SIGKILLed agent ended with it; the restarted agent resumed the session");
    restarted.stop().await;
    stack.shutdown().await;
}

/// A transaction whose BEGIN and COMMIT are pipelined with its statements commits them all,
/// rolls back a failed one whole, and, dropped halfway (an error, a cancelled future), rolls
/// back before its connection is used again: nothing half-done is committed by the next user
/// of the pooled connection.
#[tokio::test]
async fn a_pipelined_transaction_commits_whole_or_rolls_back_before_its_connection_is_reused() {
    use mujin_management::db::{self, CachedStatements, PipelinedTx};

    mujin_tests::init_tracing();
    let database_url = mujin_tests::postgres::fresh_database().await;
    // One connection: whoever gets it next gets the one the transaction used.
    let pool = db::pool(&database_url, 1).expect("pool");
    pool.get()
        .await
        .expect("connection")
        .batch_execute("CREATE TABLE probe (n integer PRIMARY KEY)")
        .await
        .expect("table");
    let insert = "INSERT INTO probe (n) VALUES ($1)";
    let count = || async {
        let client = pool.get().await.expect("connection");
        let in_transaction: Option<String> = client
            .query_one("SELECT pg_current_xact_id_if_assigned()::text", &[])
            .await
            .expect("transaction id")
            .get(0);
        assert_eq!(
            in_transaction, None,
            "the connection is not inside a transaction"
        );
        let rows: i64 = client
            .query_one("SELECT count(*) FROM probe", &[])
            .await
            .expect("count")
            .get(0);
        rows
    };

    // Whole: BEGIN with the first insert, COMMIT with the second.
    let tx = PipelinedTx::new(pool.get().await.expect("connection"));
    let client = tx.client();
    client.prepare_cached(insert).await.expect("prepared");
    tokio::try_join!(biased; tx.begin(), client.cached_execute(insert, &[&1i32]))
        .expect("begin and insert");
    tokio::try_join!(biased; client.cached_execute(insert, &[&2i32]), tx.commit())
        .expect("insert and commit");
    tx.committed();
    assert_eq!(count().await, 2);

    // A failed statement sent with the COMMIT: nothing of the transaction stays.
    let tx = PipelinedTx::new(pool.get().await.expect("connection"));
    let client = tx.client();
    tokio::try_join!(biased; tx.begin(), client.cached_execute(insert, &[&3i32]))
        .expect("begin and insert");
    let duplicate = tokio::try_join!(biased; client.cached_execute(insert, &[&1i32]), tx.commit());
    assert!(duplicate.is_err(), "the duplicate is refused");
    drop(tx);
    assert_eq!(count().await, 2, "3 was rolled back with the duplicate");

    // Dropped before its COMMIT was sent: rolled back before the connection is reused.
    let tx = PipelinedTx::new(pool.get().await.expect("connection"));
    let client = tx.client();
    tokio::try_join!(biased; tx.begin(), client.cached_execute(insert, &[&4i32]))
        .expect("begin and insert");
    drop(tx);
    assert_eq!(count().await, 2, "4 was rolled back");
}
