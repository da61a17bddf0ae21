//! The statements on every message's path look rows up by key, whatever the statistics say:
//! after an ANALYZE at a quiet moment (no session open, no command pending), the stop timers'
//! and the dispatcher's small partial indexes looked cheapest to PostgreSQL for finding a
//! device's open session or a pending command, which then scanned every open session or every
//! pending command. The timers and the dispatcher still use those indexes, and read only the
//! rows near their moment however many sessions are open.

use mujin_management::{db, devices, lifecycle, metrics, outbox, scans, stop_timer, trust};

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

/// A fresh migrated database holding `history`, and a connection to it (the pool must outlive
/// the connection).
async fn database_with(history: &str) -> (deadpool_postgres::Pool, deadpool_postgres::Object) {
    let url = mujin_tests::postgres::fresh_database().await;
    let pool = db::pool(&url, 1).expect("pool");
    db::migrate(&pool).await.expect("migrate");
    let client = pool.get().await.expect("connection");
    client.batch_execute(history).await.expect("history");
    (pool, client)
}

/// Prepares `statement` as `probe`, always with its generic plan (the one a connection keeps
/// using once it has run it a few times).
async fn prepare_generic(client: &tokio_postgres::Client, statement: &str) {
    client
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE probe AS {statement}"
        ))
        .await
        .unwrap_or_else(|error| panic!("cannot prepare {statement}: {error}"));
}

async fn deallocate(client: &tokio_postgres::Client) {
    client
        .batch_execute("DEALLOCATE probe; RESET plan_cache_mode")
        .await
        .expect("deallocate");
}

/// The generic plan of `statement` (the one a connection keeps using once it has run it a few
/// times), its parameters left unknown.
async fn generic_plan(client: &tokio_postgres::Client, statement: &str) -> String {
    let params = (1..=9)
        .filter(|n| statement.contains(&format!("${n}")))
        .count();
    prepare_generic(client, statement).await;
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
    deallocate(client).await;
    plan.join("\n")
}

#[tokio::test]
async fn lookups_by_key_use_their_keys_and_the_timers_their_indexes_after_a_quiet_analyze() {
    let (_pool, client) = database_with(QUIET_HISTORY).await;

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

/// A busy hour: 2,000 sessions open, all ending within the next two hours and none inside its
/// store's 5-minute warning window; then ANALYZE.
const BUSY_HOUR: &str = "
    INSERT INTO stores (store_id, warn_minutes) VALUES ('s1', 5);
    INSERT INTO devices (store_id, device_id)
        SELECT 's1', 'd' || n FROM generate_series(1, 2000) n;
    INSERT INTO reservations (ticket_id, store_id, device_id, period, key_id)
        SELECT gen_random_uuid(), 's1', 'd' || n,
               tstzrange(now() - interval '10 minutes',
                         now() + make_interval(mins => 10 + n % 110)),
               'k1'
        FROM generate_series(1, 2000) n;
    INSERT INTO sessions (session_id, ticket_id, scan_id, store_id, device_id, started_at,
                          lease_until, start_command_id)
        SELECT gen_random_uuid(), ticket_id, gen_random_uuid(), store_id, device_id,
               lower(period), upper(period), gen_random_uuid()
        FROM reservations;
    ANALYZE;";

/// The rows of `table` a node of an `EXPLAIN (ANALYZE, FORMAT JSON)` plan and its children
/// read: those they returned and those their filters removed.
fn rows_read(node: &serde_json::Value, table: &str) -> f64 {
    let own = if node["Relation Name"] == table {
        let loops = node["Actual Loops"].as_f64().unwrap_or(1.0);
        let read = node["Actual Rows"].as_f64().unwrap_or(0.0)
            + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0)
            + node["Rows Removed by Index Recheck"]
                .as_f64()
                .unwrap_or(0.0);
        read * loops
    } else {
        0.0
    };
    let children = node["Plans"].as_array().map_or(0.0, |plans| {
        plans.iter().map(|plan| rows_read(plan, table)).sum()
    });
    own + children
}

#[tokio::test]
async fn the_warning_timer_reads_only_the_sessions_ending_within_the_longest_warning() {
    let (_pool, client) = database_with(BUSY_HOUR).await;
    let read = rows_read_by(&client, lifecycle::WARN_DUE, "now(), 100", "sessions").await;
    assert!(
        read < 100.0,
        "the warning timer read {read} of 2,000 open sessions, none due"
    );
}

/// Runs `statement`'s generic plan (as a connection keeps using it) once with `params`, and
/// returns how many rows of `table` it read.
async fn rows_read_by(
    client: &tokio_postgres::Client,
    statement: &str,
    params: &str,
    table: &str,
) -> f64 {
    prepare_generic(client, statement).await;
    let arguments = if params.is_empty() {
        String::new()
    } else {
        format!("({params})")
    };
    let row = client
        .query_one(
            &format!("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE probe{arguments}"),
            &[],
        )
        .await
        .unwrap_or_else(|error| panic!("cannot run {statement}: {error}"));
    deallocate(client).await;
    let plan: serde_json::Value = row.get(0);
    let read = rows_read(&plan[0]["Plan"], table);
    println!("{read} rows of {table} read:\n{plan:#}");
    read
}

/// A busy day: 2,000 bookings over the last 20 hours, each scanned (its session started and
/// ended) on its own device, 100 more booked for later today and 500 from two days ago; then
/// ANALYZE.
const BUSY_DAY: &str = "
    INSERT INTO stores (store_id) VALUES ('s1');
    INSERT INTO devices (store_id, device_id)
        SELECT 's1', 'd' || n FROM generate_series(1, 2100) n;
    INSERT INTO reservations (ticket_id, store_id, device_id, period, key_id)
        SELECT gen_random_uuid(), 's1', 'd' || n,
               tstzrange(now() - make_interval(mins => 30 + n / 2),
                         now() - make_interval(mins => n / 2)),
               'k1'
        FROM generate_series(1, 2000) n;
    INSERT INTO sessions (session_id, ticket_id, scan_id, store_id, device_id, started_at,
                          lease_until, start_command_id, ended_at, end_reason)
        SELECT gen_random_uuid(), ticket_id, gen_random_uuid(), store_id, device_id,
               lower(period), upper(period), gen_random_uuid(), upper(period), 'booking_ended'
        FROM reservations;
    INSERT INTO reservations (ticket_id, store_id, device_id, period, key_id)
        SELECT gen_random_uuid(), 's1', 'd' || n,
               tstzrange(now() + make_interval(mins => n - 2000),
                         now() + make_interval(mins => n - 1970)),
               'k1'
        FROM generate_series(2001, 2100) n;
    INSERT INTO reservations (ticket_id, store_id, device_id, period, key_id)
        SELECT gen_random_uuid(), 's1', 'd' || n,
               tstzrange(now() - interval '2 days', now() - interval '2 days' + interval '1 hour'),
               'k1'
        FROM generate_series(1, 500) n;
    ANALYZE;";

#[tokio::test]
async fn the_no_show_timer_reads_only_the_bookings_due_since_its_last_pass() {
    let (_pool, client) = database_with(BUSY_DAY).await;

    let full = rows_read_by(
        &client,
        lifecycle::NO_SHOWS_DUE,
        "now(), 100",
        "reservations",
    )
    .await;
    let since = rows_read_by(
        &client,
        lifecycle::NO_SHOWS_DUE_SINCE,
        "now(), 100, now() - interval '11 seconds'",
        "reservations",
    )
    .await;
    assert!(
        since < 100.0,
        "a pass read {since} of 2,600 bookings, none due (a full look: {full})"
    );
    assert!(
        full <= 2100.0,
        "a full look read {full} of 2,600 bookings: older ones than a day too"
    );
}

#[tokio::test]
async fn the_trust_lists_read_the_bookings_that_may_have_been_used_not_every_booking_made() {
    let (_pool, client) = database_with(BUSY_DAY).await;
    // Weeks of history before it: 20,000 bookings long over, every tenth cancelled and the
    // others used; and the weeks ahead: 20,000 bookings from tomorrow on, ten for each of 2,000
    // devices.
    client
        .batch_execute(
            "INSERT INTO reservations (ticket_id, store_id, device_id, period, key_id,
                                       cancelled_at, cancel_reason)
                 SELECT gen_random_uuid(), 's1', 'd' || (n % 2000 + 1),
                        tstzrange(now() - make_interval(hours => 100 + n),
                                  now() - make_interval(hours => 100 + n) + interval '30 minutes'),
                        'k1',
                        CASE WHEN n % 10 = 0 THEN now() - make_interval(hours => 101 + n) END,
                        CASE WHEN n % 10 = 0 THEN 'cancelled' END
                 FROM generate_series(1, 20000) n;
             INSERT INTO reservations (ticket_id, store_id, device_id, period, key_id)
                 SELECT gen_random_uuid(), 's1', 'd' || (n % 2000 + 1),
                        tstzrange(now() + make_interval(days => 1 + 2 * (n / 2000)),
                                  now() + make_interval(days => 1 + 2 * (n / 2000))
                                        + interval '30 minutes'),
                        'k1'
                 FROM generate_series(0, 19999) n;
             INSERT INTO sessions (session_id, ticket_id, scan_id, store_id, device_id,
                                   started_at, lease_until, start_command_id, ended_at,
                                   end_reason)
                 SELECT gen_random_uuid(), ticket_id, gen_random_uuid(), store_id, device_id,
                        lower(period), upper(period), gen_random_uuid(), upper(period),
                        'booking_ended'
                 FROM reservations
                 WHERE cancelled_at IS NULL AND upper(period) < now() - interval '3 days';
             ANALYZE;",
        )
        .await
        .expect("history and bookings ahead");

    let params = "now(), now() + interval '60 seconds'";
    let read = rows_read_by(&client, trust::REFUSED_TICKETS, params, "reservations").await;
    assert!(
        read <= 200.0,
        "a trust list refresh read {read} of 42,600 bookings, 20,100 of them still ahead and \
         at most one starting within the early grace"
    );
    let sessions = rows_read_by(&client, trust::REFUSED_TICKETS, params, "sessions").await;
    assert!(
        sessions <= 200.0,
        "a trust list refresh read {sessions} of 20,000 sessions"
    );
}

#[tokio::test]
async fn a_metrics_scrape_reads_what_is_open_or_pending_not_the_history() {
    let (_pool, client) = database_with(QUIET_HISTORY).await;
    // After the history (and its ANALYZE): 10 sessions open, their starts sent and unanswered.
    client
        .batch_execute(
            "INSERT INTO reservations (ticket_id, store_id, device_id, period, key_id)
                 SELECT gen_random_uuid(), 's1', 'd' || n,
                        tstzrange(now(), now() + interval '1 hour'), 'k1'
                 FROM generate_series(1, 10) n;
             INSERT INTO sessions (session_id, ticket_id, scan_id, store_id, device_id,
                                   started_at, lease_until, start_command_id)
                 SELECT gen_random_uuid(), ticket_id, gen_random_uuid(), store_id, device_id,
                        lower(period), upper(period), gen_random_uuid()
                 FROM reservations WHERE lower(period) > now() - interval '1 minute';
             INSERT INTO commands (command_id, store_id, device_id, session_id, epoch, action,
                                   payload, status, attempts, next_attempt_at, expires_at,
                                   created_at)
                 SELECT start_command_id, store_id, device_id, session_id, 1, 'start', '{}',
                        'sent', 1, now() + interval '1 second', lease_until, started_at
                 FROM sessions WHERE ended_at IS NULL;",
        )
        .await
        .expect("open sessions and pending commands");

    let pending = client
        .query(metrics::PENDING_COMMANDS, &[])
        .await
        .expect("pending commands");
    let counted: Vec<(String, i64)> = pending.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(counted, vec![("sent".to_owned(), 10)]);
    let commands = rows_read_by(&client, metrics::PENDING_COMMANDS, "", "commands").await;
    assert!(
        commands <= 10.0,
        "a scrape read {commands} of 2,010 commands, 10 of them pending"
    );
    let sessions = rows_read_by(&client, metrics::SESSIONS_RUNNING, "", "sessions").await;
    assert!(
        sessions <= 10.0,
        "a scrape read {sessions} of 2,010 sessions, 10 of them open"
    );
}
