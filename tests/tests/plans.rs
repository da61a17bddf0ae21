//! The statements on every message's path look rows up by key, whatever the statistics say:
//! after an ANALYZE at a quiet moment (no session open, no command pending), the stop timers'
//! and the dispatcher's small partial indexes looked cheapest to PostgreSQL for finding a
//! device's open session or a pending command, which then scanned every open session or every
//! pending command. The timers and the dispatcher still use those indexes.

use mujin_management::{db, devices, outbox, scans, stop_timer};

/// A store's history: 100 devices, 2,000 sessions all ended and their 2,000 start commands all
/// acknowledged; then ANALYZE, so the statistics say nothing is open or pending.
const QUIET_HISTORY: &str = "
    INSERT INTO stores (store_id) VALUES ('s1');
    INSERT INTO devices (store_id, device_id)
        SELECT 's1', 'd' || n FROM generate_series(1, 100) n;
    INSERT INTO reservations (ticket_id, store_id, device_id, period, key_id)
        SELECT gen_random_uuid(), 's1', 'd' || (n % 100 + 1),
               tstzrange(now() - make_interval(hours => n + 1), now() - make_interval(hours => n)),
               'k1'
        FROM generate_series(1, 2000) n;
    INSERT INTO sessions (session_id, ticket_id, scan_id, store_id, device_id, started_at,
                          lease_until, start_command_id, ended_at, end_reason)
        SELECT gen_random_uuid(), ticket_id, gen_random_uuid(), store_id, device_id,
               lower(period), upper(period), gen_random_uuid(), upper(period), 'booking_ended'
        FROM reservations;
    INSERT INTO commands (command_id, store_id, device_id, session_id, epoch, action, payload,
                          status, attempts, next_attempt_at, expires_at, created_at, settled_at)
        SELECT start_command_id, store_id, device_id, session_id, 1, 'start', '{}',
               'acknowledged', 1, started_at, lease_until, started_at, started_at
        FROM sessions;
    ANALYZE;";

/// The generic plan of `statement` (the one a connection keeps using once it has run it a few
/// times), its parameters left unknown.
async fn generic_plan(client: &tokio_postgres::Client, statement: &str) -> String {
    let params = (1..=9)
        .filter(|n| statement.contains(&format!("${n}")))
        .count();
    client
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE probe AS {statement}"
        ))
        .await
        .unwrap_or_else(|error| panic!("cannot prepare {statement}: {error}"));
    let nulls = vec!["NULL"; params].join(", ");
    let execute = if params == 0 {
        "EXPLAIN EXECUTE probe".to_owned()
    } else {
        format!("EXPLAIN EXECUTE probe({nulls})")
    };
    let plan: Vec<String> = client
        .query(&execute, &[])
        .await
        .unwrap_or_else(|error| panic!("cannot explain {statement}: {error}"))
        .iter()
        .map(|row| row.get(0))
        .collect();
    client
        .batch_execute("DEALLOCATE probe; RESET plan_cache_mode")
        .await
        .expect("deallocate");
    plan.join("\n")
}

#[tokio::test]
async fn lookups_by_key_use_their_keys_and_the_timers_their_indexes_after_a_quiet_analyze() {
    let url = mujin_tests::postgres::fresh_database().await;
    let pool = db::pool(&url, 1).expect("pool");
    db::migrate(&pool).await.expect("migrate");
    let client = pool.get().await.expect("connection");
    client.batch_execute(QUIET_HISTORY).await.expect("history");

    let by_key = [
        ("a device state's open session", devices::OPEN_SESSION),
        (
            "an ended program's open session",
            devices::OPEN_SESSION_FOR_UPDATE,
        ),
        ("a scanning device's row", scans::DEVICE_ROW),
        ("an acknowledgement", outbox::SETTLE_COMMAND),
    ];
    for (what, statement) in by_key {
        let plan = generic_plan(&client, statement).await;
        assert!(
            !plan.contains("sessions_stop_timers") && !plan.contains("commands_pending"),
            "{what} scans a timer index:\n{plan}"
        );
    }

    let timers = [
        (
            "the stop timer's due sessions",
            stop_timer::CLOSE_DUE_SESSIONS,
            "sessions_stop_timers",
        ),
        (
            "the stop timer's next end",
            stop_timer::NEXT_DUE,
            "sessions_stop_timers",
        ),
        (
            "the dispatcher's due commands",
            outbox::DUE_COMMANDS,
            "commands_pending",
        ),
        (
            "the dispatcher's next attempt",
            outbox::NEXT_DUE_COMMAND,
            "commands_pending",
        ),
        (
            "the dispatcher's expiry",
            outbox::EXPIRE_COMMANDS,
            "commands_pending",
        ),
    ];
    for (what, statement, index) in timers {
        let plan = generic_plan(&client, statement).await;
        assert!(plan.contains(index), "{what} does not use {index}:\n{plan}");
    }
}
