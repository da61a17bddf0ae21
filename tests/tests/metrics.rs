//! Management's Prometheus metrics over real HTTP: a customer's session runs to the end of its
//! booking, a ticket is refused, and a scan not signed by its device is refused; `GET /metrics`
//! shows the scans by decision and reason, the session running and then stopped, the commands
//! pending and settled, both latency histograms and the accepted scan's stages, and healthy database and broker gauges; then the broker
//! goes away and comes back, and the broker gauge and reconnection counter follow. Real broker
//! process, PostgreSQL and agent process; management in-process with `metrics_listen` set.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use mujin_protocol::message::{self, EventKind, Scan};
use mujin_protocol::topic::{self, DeviceChannel};
use mujin_protocol::ScanId;
use mujin_tests::metrics::{scrape, value};
use mujin_tests::stack::Stack;
use mujin_tests::wait_for;

const SHORT: Duration = Duration::from_secs(10);

fn rejected(reason: &str) -> String {
    format!("mujin_scans_total{{decision=\"rejected\",reason=\"{reason}\"}}")
}

/// Scrapes until every `(series, expected)` holds, or panics with the last scrape.
async fn wait_for_values(address: SocketAddr, what: &str, expected: &[(&str, f64)]) -> String {
    let mut last = String::new();
    let found = tokio::time::timeout(SHORT, async {
        loop {
            last = scrape(address).await;
            let holds = expected
                .iter()
                .all(|(series, want)| value(&last, series) == Some(*want));
            if holds {
                return last.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    match found {
        Ok(text) => text,
        Err(_) => panic!("timed out waiting for {what}: {expected:?} in\n{last}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_and_refused_scans_move_the_metrics() {
    let stack = Stack::start_with_metrics().await;
    let address = stack.metrics_listen.expect("metrics on");
    let healthy = [
        ("mujin_database_up", 1.0),
        ("mujin_broker_connected", 1.0),
        ("mujin_broker_reconnects_total", 0.0),
    ];
    let text = wait_for_values(address, "a healthy worker", &healthy).await;
    assert_eq!(
        value(
            &text,
            "mujin_scans_total{decision=\"accepted\",reason=\"\"}"
        ),
        Some(0.0)
    );

    let device = stack.add_device("shibuya", "pc-01").await;
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 4).await;
    let (session_id, _) = stack.start_session(&mut agent, &booking.ticket).await;
    let running = [
        ("mujin_scans_total{decision=\"accepted\",reason=\"\"}", 1.0),
        ("mujin_sessions_running", 1.0),
        ("mujin_scan_to_start_seconds_count", 1.0),
    ];
    let text = wait_for_values(address, "the session running", &running).await;
    // Where the accepted scan spent its time in the worker, stage by stage: once each, adding
    // up to at least the part the scan → start histogram times (from its transaction on).
    let mut stages_sum = 0.0;
    for stage in mujin_management::metrics::ScanStages::NAMES {
        let series =
            |suffix: &str| format!("mujin_scan_stage_seconds_{suffix}{{stage=\"{stage}\"}}");
        assert_eq!(
            value(&text, &series("count")),
            Some(1.0),
            "{stage} in\n{text}"
        );
        stages_sum += value(&text, &series("sum")).expect("a stage's sum");
    }
    let start_sum = value(&text, "mujin_scan_to_start_seconds_sum").expect("a scan → start sum");
    assert!(
        stages_sum + 0.001 >= start_sum && stages_sum < 5.0,
        "stages {stages_sum} s, scan → start {start_sum} s"
    );

    // A ticket for later is refused by management with its reason.
    let later = stack
        .book(
            &device,
            chrono::Duration::hours(1),
            chrono::Duration::minutes(10),
        )
        .await
        .expect("a later booking");
    agent.scan(&later.ticket).await;
    agent.wait_screen("REFUSED (too_early)", SHORT).await;
    // A scan published in the device's name without its signature.
    let forged = Scan {
        scan_id: ScanId::random(),
        ticket: booking.ticket.clone(),
        read_at: Utc::now(),
        offline: None,
        sent_at: Some(Utc::now()),
        signature: None,
    };
    let scan_topic = topic::device(&device.0, &device.1, DeviceChannel::Scan);
    stack
        .observer
        .publish_raw(&scan_topic, message::encode(&forged))
        .await;

    stack
        .observer
        .wait_event("the session to end", SHORT, |event| match event.kind {
            EventKind::SessionEnded {
                session_id: ended, ..
            } if ended == session_id => Some(()),
            _ => None,
        })
        .await;
    let ended = [
        ("mujin_sessions_running", 0.0),
        ("mujin_stop_lateness_seconds_count", 1.0),
        (&rejected("too_early"), 1.0),
        (&rejected("unauthenticated"), 1.0),
        ("mujin_device_messages_refused_total{channel=\"scan\"}", 1.0),
        ("mujin_scans_total{decision=\"accepted\",reason=\"\"}", 1.0),
        // Refused scans have no start: their stages are not timed.
        ("mujin_scan_stage_seconds_count{stage=\"read\"}", 1.0),
    ];
    let text = wait_for_values(address, "the session's end and the refusals", &ended).await;
    for (series, want) in healthy {
        assert_eq!(value(&text, series), Some(want), "{series}");
    }
    // The start and the stop at least were answered by the device.
    let settled = wait_for("the stop to be acknowledged", SHORT, || async {
        let text = scrape(address).await;
        let acknowledged = value(
            &text,
            "mujin_commands_settled_total{state=\"acknowledged\"}",
        )?;
        let pending = value(&text, "mujin_commands{state=\"queued\"}")?
            + value(&text, "mujin_commands{state=\"sent\"}")?;
        (acknowledged >= 2.0 && pending == 0.0).then_some(text)
    })
    .await;
    // Settled commands are counted as they settle, not read from the outbox at each scrape.
    assert_eq!(
        value(&settled, "mujin_commands{state=\"acknowledged\"}"),
        None,
        "{settled}"
    );
    let events = value(&settled, "mujin_events_published_total").expect("events counter");
    assert!(
        events >= 4.0,
        "scan accepted, session started, refusals, ended: {events}"
    );
    let connections: f64 = ["in_use", "idle"]
        .iter()
        .filter_map(|state| {
            value(
                &settled,
                &format!("mujin_database_pool_connections{{state=\"{state}\"}}"),
            )
        })
        .sum();
    assert!(connections >= 1.0, "{settled}");
    assert_eq!(
        value(&settled, "mujin_stop_lateness_seconds_bucket{le=\"+Inf\"}"),
        Some(1.0)
    );
    let lateness = value(&settled, "mujin_stop_lateness_seconds_sum").expect("a lateness sum");
    assert!((0.0..5.0).contains(&lateness), "stopped {lateness} s late");

    agent.stop().await;

    // The broker goes away and comes back: the worker reconnects by itself.
    let mut stack = stack;
    stack.kill_broker().await;
    let lost = [("mujin_broker_connected", 0.0), ("mujin_database_up", 1.0)];
    wait_for_values(address, "the broker connection lost", &lost).await;
    stack.restart_broker().await;
    wait_for("the broker connection back", SHORT, || async {
        let text = scrape(address).await;
        let connected = value(&text, "mujin_broker_connected")?;
        // The broker may close a first connection while it starts: at least one reconnection.
        let reconnects = value(&text, "mujin_broker_reconnects_total")?;
        (connected == 1.0 && reconnects >= 1.0).then_some(())
    })
    .await;
    stack.shutdown().await;
}
