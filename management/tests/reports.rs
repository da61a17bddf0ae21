//! `mujin-management report`, run as a real process on a private PostgreSQL holding known
//! usage: sessions of known length, a no-show and refusals of two reasons, over two days, two
//! devices and two stores.

// The whole file is test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Output;

use chrono::{DateTime, Utc};
use common::{answered, management};
use mujin_management::postgres::PrivateCluster;
use mujin_protocol::message::{Event, EventKind, RejectReason};
use mujin_protocol::{DeviceId, ScanId, StoreId};
use uuid::Uuid;

fn refused(output: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", answered(output));
    assert!(stderr.contains(message), "{stderr}");
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

/// A private cluster with the schema and the devices shibuya/pc-01, shibuya/pc-02, ueno/vr-01.
async fn database(dir: &Path) -> (PrivateCluster, String, deadpool_postgres::Pool) {
    let cluster = PrivateCluster::start_for_tests(&dir.join("pg")).unwrap();
    cluster.create_database("mujin").await.unwrap();
    let url = cluster.connection_string("mujin");
    let pool = mujin_management::db::pool(&url, 2).unwrap();
    mujin_management::db::migrate(&pool).await.unwrap();
    for (store, device) in [
        ("shibuya", "pc-01"),
        ("shibuya", "pc-02"),
        ("ueno", "vr-01"),
    ] {
        mujin_management::booking::add_device(
            &pool,
            &StoreId::parse(store).unwrap(),
            &DeviceId::parse(device).unwrap(),
            "",
        )
        .await
        .unwrap();
    }
    (cluster, url, pool)
}

/// A booking of `device` over [from, to); with `no_show`, given up as nobody scanned it.
async fn booking(
    pool: &deadpool_postgres::Pool,
    (store, device): (&str, &str),
    (from, to): (&str, &str),
    no_show: bool,
) -> Uuid {
    let ticket_id = Uuid::new_v4();
    let (cancelled_at, reason) = if no_show {
        (
            Some(at(from) + chrono::Duration::minutes(10)),
            Some("no_show"),
        )
    } else {
        (None, None)
    };
    pool.get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO reservations (ticket_id, store_id, device_id, period, key_id,
                                       cancelled_at, cancel_reason)
             VALUES ($1, $2, $3, tstzrange($4, $5, '[)'), 'k1', $6, $7)",
            &[
                &ticket_id,
                &store,
                &device,
                &at(from),
                &at(to),
                &cancelled_at,
                &reason,
            ],
        )
        .await
        .unwrap();
    ticket_id
}

/// A session of `device` booked over [from, to), used from `from` to `ended` (open if None).
async fn session(
    pool: &deadpool_postgres::Pool,
    (store, device): (&str, &str),
    (from, to): (&str, &str),
    ended: Option<&str>,
) {
    let ticket_id = booking(pool, (store, device), (from, to), false).await;
    let ended_at = ended.map(at);
    pool.get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO sessions (session_id, ticket_id, scan_id, store_id, device_id, started_at,
                                   lease_until, start_command_id, ended_at, end_reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &Uuid::new_v4(),
                &ticket_id,
                &Uuid::new_v4(),
                &store,
                &device,
                &at(from),
                &at(to),
                &Uuid::new_v4(),
                &ended_at,
                &ended_at.map(|_| "booking_ended"),
            ],
        )
        .await
        .unwrap();
}

/// A refused scan, written to the audit log as management writes it.
async fn refusal(
    pool: &deadpool_postgres::Pool,
    (store, device): (&str, &str),
    when: &str,
    reason: RejectReason,
) {
    let event = Event {
        at: at(when),
        store: StoreId::parse(store).unwrap(),
        device: Some(DeviceId::parse(device).unwrap()),
        kind: EventKind::ScanRejected {
            scan_id: Some(ScanId::random()),
            reason,
            detail: String::new(),
        },
    };
    let client = pool.get().await.unwrap();
    mujin_management::audit::record(&client, &event)
        .await
        .unwrap();
}

/// The known usage: two days (1 and 2 March 2025) plus one fact on either side of them.
async fn known_usage(pool: &deadpool_postgres::Pool) {
    let (pc1, pc2, vr1) = (
        ("shibuya", "pc-01"),
        ("shibuya", "pc-02"),
        ("ueno", "vr-01"),
    );
    // Day 1: pc-01 used 45 minutes and refused twice too early; pc-02 a no-show and a ticket
    // of another device; vr-01 in the other store used an hour.
    let day1 = ("2025-03-01T10:00:00Z", "2025-03-01T11:00:00Z");
    session(pool, pc1, day1, Some("2025-03-01T10:45:00Z")).await;
    refusal(pool, pc1, "2025-03-01T09:50:00Z", RejectReason::TooEarly).await;
    refusal(pool, pc1, "2025-03-01T09:55:00Z", RejectReason::TooEarly).await;
    booking(
        pool,
        pc2,
        ("2025-03-01T12:00:00Z", "2025-03-01T13:00:00Z"),
        true,
    )
    .await;
    refusal(pool, pc2, "2025-03-01T12:05:00Z", RejectReason::WrongDevice).await;
    let vr_day1 = ("2025-03-01T14:00:00Z", "2025-03-01T15:00:00Z");
    session(pool, vr1, vr_day1, Some("2025-03-01T15:00:00Z")).await;
    // Day 2: pc-01 used 30.5 minutes and refused a wrong device; pc-02 used 20 minutes late in
    // the evening (UTC), which is the morning of 3 March in Tokyo.
    let pc1_day2 = ("2025-03-02T09:00:00Z", "2025-03-02T10:00:00Z");
    session(pool, pc1, pc1_day2, Some("2025-03-02T09:30:30Z")).await;
    refusal(pool, pc1, "2025-03-02T11:00:00Z", RejectReason::WrongDevice).await;
    let pc2_evening = ("2025-03-02T23:30:00Z", "2025-03-03T00:30:00Z");
    session(pool, pc2, pc2_evening, Some("2025-03-02T23:50:00Z")).await;
    // Outside the two days.
    let before = ("2025-02-28T10:00:00Z", "2025-02-28T11:00:00Z");
    session(pool, pc1, before, Some("2025-02-28T11:00:00Z")).await;
    refusal(pool, pc1, "2025-03-03T10:00:00Z", RejectReason::AlreadyUsed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_per_store_device_and_day_as_a_table_and_as_csv() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_cluster, url, pool) = database(dir.path()).await;
    known_usage(&pool).await;
    let report_over = |(from, to): (&str, &str), args: &[&str]| {
        let mut all = vec!["report", "--from", from, "--to", to];
        all.extend_from_slice(args);
        management(&data, &url, &all)
    };
    let report = |args: &[&str]| report_over(("2025-03-01", "2025-03-02"), args);

    let table = answered(&report(&[]));
    let expected = "\
usage from 2025-03-01 to 2025-03-02 (UTC), by day
day         store    device  sessions  minutes  no-shows  refused  wrong_device  too_early
2025-03-01  shibuya  pc-01          1     45.0         0        2             0          2
2025-03-01  shibuya  pc-02          0      0.0         1        1             1          0
2025-03-01  ueno     vr-01          1     60.0         0        0             0          0
2025-03-02  shibuya  pc-01          1     30.5         0        1             1          0
2025-03-02  shibuya  pc-02          1     20.0         0        0             0          0
total                               4    155.5         1        4             2          2
";
    assert_eq!(table, expected);

    let csv_text = answered(&report(&["--format", "csv"]));
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header = reader.headers().unwrap().clone();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 5, "{csv_text}");
    let row = |day: &str, device: &str| {
        records
            .iter()
            .find(|r| &r[column("day")] == day && &r[column("device")] == device)
            .unwrap_or_else(|| panic!("no row {day} {device} in {csv_text}"))
    };
    let pc1 = row("2025-03-01", "pc-01");
    assert_eq!(&pc1[column("store")], "shibuya");
    assert_eq!(&pc1[column("sessions")], "1");
    assert_eq!(&pc1[column("minutes")], "45.0");
    assert_eq!(&pc1[column("refused_too_early")], "2");
    assert_eq!(&pc1[column("refused_already_used")], "0");
    let pc2 = row("2025-03-01", "pc-02");
    assert_eq!(&pc2[column("no_shows")], "1");
    assert_eq!(&pc2[column("refused_wrong_device")], "1");
    assert_eq!(&row("2025-03-02", "pc-01")[column("minutes")], "30.5");
    // Every known reason has its column, whatever occurred.
    for reason in RejectReason::ALL {
        column(&format!("refused_{reason}"));
    }

    // Per device and per store over the period.
    let by_device = answered(&report(&["--by", "device", "--store", "shibuya"]));
    let expected = "\
usage from 2025-03-01 to 2025-03-02 (UTC), by device
store    device  sessions  minutes  no-shows  refused  wrong_device  too_early
shibuya  pc-01          2     75.5         0        3             1          2
shibuya  pc-02          1     20.0         1        1             1          0
total                   3     95.5         1        4             2          2
";
    assert_eq!(by_device, expected);
    let by_store = answered(&report(&["--by", "store", "--format", "csv"]));
    let lines: Vec<&str> = by_store.lines().collect();
    assert_eq!(lines.len(), 3, "{by_store}");
    assert!(lines[0].starts_with("store,sessions,minutes,no_shows,refused,refused_"));
    assert!(lines[1].starts_with("shibuya,3,95.5,1,4,"), "{by_store}");
    assert!(lines[2].starts_with("ueno,1,60.0,0,0,"), "{by_store}");

    // One device of one store, one day: a single row and no total line.
    let one = answered(&report_over(
        ("2025-03-01", "2025-03-01"),
        &["--store", "shibuya", "--device", "pc-02"],
    ));
    assert_eq!(
        one.lines().collect::<Vec<_>>(),
        [
            "usage from 2025-03-01 to 2025-03-01 (UTC), by day",
            "day         store    device  sessions  minutes  no-shows  refused  wrong_device",
            "2025-03-01  shibuya  pc-02          0      0.0         1        1             1",
        ]
    );

    // Days in Tokyo: the evening session of pc-02 falls on 3 March, outside the period.
    let tokyo = answered(&report(&["--tz", "Asia/Tokyo", "--device", "pc-02"]));
    assert!(
        tokyo.starts_with("usage from 2025-03-01 to 2025-03-02 (Asia/Tokyo), by day\n"),
        "{tokyo}"
    );
    assert!(!tokyo.contains("20.0"), "{tokyo}");
    let tokyo_next = answered(&report_over(
        ("2025-03-03", "2025-03-03"),
        &["--tz", "Asia/Tokyo", "--device", "pc-02"],
    ));
    assert!(
        tokyo_next.contains("2025-03-03  shibuya  pc-02          1     20.0"),
        "{tokyo_next}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dates_and_ids_are_refused_and_an_empty_period_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_cluster, url, _pool) = database(dir.path()).await;
    let run = |args: &[&str]| {
        let mut all = vec!["report"];
        all.extend_from_slice(args);
        management(&data, &url, &all)
    };

    refused(
        &run(&["--from", "2025-13-01"]),
        "\"2025-13-01\" is not a date like 2025-03-01",
    );
    refused(
        &run(&["--from", "2025-03-02", "--to", "2025-03-01"]),
        "the period is empty: --from 2025-03-02 is after --to 2025-03-01",
    );
    refused(
        &run(&["--store", "nowhere"]),
        "no store nowhere is registered",
    );
    refused(
        &run(&["--store", "ueno", "--device", "pc-01"]),
        "no device pc-01 is registered in store ueno",
    );
    refused(&run(&["--store", "Bad Id"]), "--store");
    refused(
        &run(&["--tz", "Mars/Olympus"]),
        "unknown time zone \"Mars/Olympus\"",
    );
    refused(&run(&["--by", "week"]), "--by");

    let period = ["--from", "2025-03-01", "--to", "2025-03-07"];
    assert_eq!(
        answered(&run(&period)),
        "no usage from 2025-03-01 to 2025-03-07 (UTC)\n"
    );
    let empty_csv = run(&[&period[..], &["--format", "csv"]].concat());
    assert_eq!(answered(&empty_csv).lines().count(), 1);
    assert!(String::from_utf8_lossy(&empty_csv.stderr).contains("no usage"));

    // Without dates: the last seven days up to today.
    let today = chrono::Utc::now().date_naive();
    let week = answered(&run(&[]));
    assert_eq!(
        week,
        format!(
            "no usage from {} to {today} (UTC)\n",
            today - chrono::Duration::days(6)
        )
    );
}
