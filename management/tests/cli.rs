//! The `mujin-management` command line, run as a real process on a private PostgreSQL.

use std::path::Path;
use std::process::{Command, Output};

use mujin_protocol::ticket::Keyring;
use mujin_protocol::KeyId;

fn management(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mujin-management"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("MUJIN_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run mujin-management")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn books_a_ticket_from_the_command_line_and_refuses_an_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let added = management(
        &data,
        &["device-add", "--store", "shibuya", "--device", "pc-01"],
    );
    assert!(added.status.success(), "{}", stderr(&added));
    assert_eq!(stdout(&added).trim(), "registered device shibuya/pc-01");

    let png = dir.path().join("ticket.png");
    let png_arg = png.to_str().unwrap();
    let booked = management(
        &data,
        &[
            "reserve",
            "--store",
            "shibuya",
            "--device",
            "pc-01",
            "--from",
            "+1h",
            "--minutes",
            "30",
            "--quiet",
            "--png",
            png_arg,
        ],
    );
    assert!(booked.status.success(), "{}", stderr(&booked));
    let ticket = stdout(&booked).trim().to_owned();
    let keys =
        mujin_management::keys::load_or_create(&data.join("keys"), &KeyId::parse("k1").unwrap())
            .unwrap();
    let claims = Keyring::new([keys.signing.public_key()])
        .verify(&ticket)
        .expect("a valid ticket");
    assert_eq!(claims.device.as_str(), "pc-01");
    assert_eq!(
        claims.not_after - claims.not_before,
        chrono::Duration::minutes(30)
    );
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");

    let overlap = management(
        &data,
        &[
            "reserve",
            "--store",
            "shibuya",
            "--device",
            "pc-01",
            "--from",
            "+70m",
            "--minutes",
            "30",
        ],
    );
    assert!(!overlap.status.success());
    assert!(
        stderr(&overlap).contains("already booked during part of that window"),
        "{}",
        stderr(&overlap)
    );

    let unknown = management(
        &data,
        &[
            "reserve",
            "--store",
            "shibuya",
            "--device",
            "pc-09",
            "--minutes",
            "5",
        ],
    );
    assert!(
        stderr(&unknown).contains("unknown device shibuya/pc-09"),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn the_terminal_shows_the_ticket_as_a_qr_code() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(
        management(&data, &["device-add", "--store", "s", "--device", "d"])
            .status
            .success()
    );
    let booked = management(
        &data,
        &["reserve", "--store", "s", "--device", "d", "--minutes", "5"],
    );
    assert!(booked.status.success(), "{}", stderr(&booked));
    let text = stdout(&booked);
    assert!(text.contains('█') && text.contains('▀'), "{text}");
    assert!(text.contains("text     MJ1:"), "{text}");
}

/// Runs `mujin-management` against `database_url` (a cluster the test runs).
fn on_database(data_dir: &Path, database_url: &str, args: &[&str]) -> Output {
    let mut all = vec!["--database-url", database_url];
    all.extend_from_slice(args);
    management(data_dir, &all)
}

/// Asserts the command failed with `message` on stderr.
fn refused(output: &Output, message: &str) {
    assert!(!output.status.success(), "{}", stdout(output));
    assert!(stderr(output).contains(message), "{}", stderr(output));
}

/// Asserts the command succeeded and returns its one-line answer.
fn answered(output: &Output) -> String {
    assert!(output.status.success(), "{}", stderr(output));
    stdout(output).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_from_the_command_line() {
    use mujin_management::scans::{self, ScanRules};
    use mujin_protocol::message::{self, Scan};
    use mujin_protocol::{DeviceId, ScanId, StoreId};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The test runs the cluster so every command shares it without starting its own.
    let cluster =
        mujin_management::postgres::PrivateCluster::start_for_tests(&dir.path().join("pg"))
            .unwrap();
    cluster.create_database("mujin").await.unwrap();
    let url = cluster.connection_string("mujin");
    let run = |args: &[&str]| on_database(&data, &url, args);

    answered(&run(&[
        "device-add",
        "--store",
        "shibuya",
        "--device",
        "pc-01",
    ]));
    assert_eq!(answered(&run(&["sessions"])), "no open sessions");
    let ticket = answered(&run(&[
        "reserve",
        "--store",
        "shibuya",
        "--device",
        "pc-01",
        "--minutes",
        "30",
        "--quiet",
    ]));
    let next = answered(&run(&[
        "reserve",
        "--store",
        "shibuya",
        "--device",
        "pc-01",
        "--from",
        "+40m",
        "--minutes",
        "10",
        "--quiet",
    ]));
    let keys =
        mujin_management::keys::load_or_create(&data.join("keys"), &KeyId::parse("k1").unwrap())
            .unwrap();
    let next_ticket = keys.keyring.verify(&next).unwrap().ticket_id.to_string();
    let used_ticket = keys.keyring.verify(&ticket).unwrap().ticket_id.to_string();

    // A session started the way the worker starts one: a scan decided in the database.
    let pool = mujin_management::db::pool(&url, 2).unwrap();
    let rules = ScanRules {
        command_key: None,
        keyring: keys.keyring.clone(),
        early_grace: std::time::Duration::from_secs(60),
    };
    let scan = Scan {
        sent_at: None,
        signature: None,
        scan_id: ScanId::random(),
        ticket: ticket.clone(),
        read_at: chrono::Utc::now(),
        offline: None,
    };
    let (store, device) = (
        StoreId::parse("shibuya").unwrap(),
        DeviceId::parse("pc-01").unwrap(),
    );
    let outcome = scans::handle_scan(
        &pool,
        &rules,
        &store,
        &device,
        &message::encode(&scan),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert!(outcome.session_ends.is_some());
    let sessions = mujin_management::actions::open_sessions(&pool)
        .await
        .unwrap();
    let session = sessions[0].session.session_id.to_string();

    let listed = answered(&run(&["sessions"]));
    let row = listed.lines().nth(1).unwrap();
    assert!(
        row.starts_with(&session) && row.contains("shibuya/pc-01") && row.ends_with("no"),
        "{listed}"
    );
    println!("checked: `sessions` lists the open session:\n{listed}");

    refused(
        &run(&["extend", "--session", &session, "--minutes", "20"]),
        "is booked before",
    );
    let extended = answered(&run(&["extend", "--session", &session, "--minutes", "5"]));
    assert!(
        extended.starts_with(&format!("session {session} now ends at ")),
        "{extended}"
    );
    refused(
        &run(&[
            "extend",
            "--session",
            &session,
            "--until",
            "2001-01-01T00:00:00Z",
        ]),
        "is not in the future",
    );
    println!("checked: extend refused into the next booking, accepted for 5 minutes: {extended}");

    let out = answered(&run(&[
        "device-service",
        "--store",
        "shibuya",
        "--device",
        "pc-01",
        "--out",
    ]));
    assert!(
        out.contains("now out of service; 1 booking(s) ahead")
            && out.contains(&next_ticket)
            && out.contains(&format!("session {session} keeps running")),
        "{out}"
    );
    refused(
        &run(&[
            "device-service",
            "--store",
            "shibuya",
            "--device",
            "pc-09",
            "--in",
        ]),
        "unknown device shibuya/pc-09",
    );
    let back = answered(&run(&[
        "device-service",
        "--store",
        "shibuya",
        "--device",
        "pc-01",
        "--in",
    ]));
    assert!(back.contains("now in service"), "{back}");
    println!("checked: device-service --out / --in: {out}");

    assert_eq!(
        answered(&run(&["cancel", "--ticket", &next_ticket])),
        format!("cancelled booking {next_ticket}")
    );
    refused(
        &run(&["cancel", "--ticket", &used_ticket]),
        "was already used",
    );
    println!("checked: cancel of an unused booking, refused for a used one");

    let stopped = answered(&run(&["stop", "--session", &session]));
    assert_eq!(
        stopped,
        format!("stopped session {session} on shibuya/pc-01")
    );
    refused(&run(&["stop", "--session", &session]), "already ended");
    assert_eq!(answered(&run(&["sessions"])), "no open sessions");
    println!("checked: stop, then refused as already ended");

    let client = pool.get().await.unwrap();
    let kinds: Vec<String> = client
        .query(
            "SELECT kind FROM events WHERE kind IN ('session_extended', 'device_service', 'session_ended')
             ORDER BY event_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        kinds,
        [
            "session_extended",
            "device_service",
            "device_service",
            "session_ended"
        ]
    );
    let reason: String = client
        .query_one(
            "SELECT end_reason FROM sessions WHERE session_id::text = $1",
            &[&session],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reason, "forced");
    println!("checked: events recorded {kinds:?}, session ended as forced");
    drop(client);
    pool.close();
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn store_settings_are_shown_and_changed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(
        management(&data, &["device-add", "--store", "s", "--device", "d"])
            .status
            .success()
    );
    let shown = management(&data, &["store-settings", "--store", "s"]);
    assert_eq!(
        stdout(&shown).trim(),
        "store s: warn 5 min before the end, no-show after 600 s, offline start off"
    );
    let changed = management(
        &data,
        &["store-settings", "--store", "s", "--warn-minutes", "2"],
    );
    assert_eq!(
        stdout(&changed).trim(),
        "store s: warn 2 min before the end, no-show after 600 s, offline start off"
    );
    let offline = management(
        &data,
        &["store-settings", "--store", "s", "--offline-start", "on"],
    );
    assert_eq!(
        stdout(&offline).trim(),
        "store s: warn 2 min before the end, no-show after 600 s, offline start on"
    );
    let unclear = management(
        &data,
        &["store-settings", "--store", "s", "--offline-start", "maybe"],
    );
    assert!(
        stderr(&unclear).contains("expected on or off"),
        "{}",
        stderr(&unclear)
    );
    let unknown = management(
        &data,
        &["store-settings", "--store", "x", "--warn-minutes", "2"],
    );
    assert!(
        stderr(&unknown).contains("unknown store x"),
        "{}",
        stderr(&unknown)
    );
    let bad = management(
        &data,
        &[
            "store-settings",
            "--store",
            "s",
            "--no-show-grace-secs",
            "-5",
        ],
    );
    assert!(!bad.status.success());
}

#[test]
fn ticket_keys_rotate_and_revoke_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |args: &[&str]| management(&data, args);
    let added = run(&["device-add", "--store", "shibuya", "--device", "pc-01"]);
    assert!(added.status.success(), "{}", stderr(&added));
    let reserve = |from: &str| {
        let booked = run(&[
            "reserve",
            "--store",
            "shibuya",
            "--device",
            "pc-01",
            "--from",
            from,
            "--minutes",
            "30",
            "--quiet",
        ]);
        assert!(booked.status.success(), "{}", stderr(&booked));
        let ticket = stdout(&booked).trim().to_owned();
        mujin_protocol::ticket::parse_unverified(&ticket)
            .unwrap()
            .claims
            .key_id
    };
    assert_eq!(reserve("+1h").as_str(), "k1");
    let listed = stdout(&run(&["ticket-key", "list"]));
    assert!(listed.starts_with("key "), "{listed}");
    assert!(
        listed
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("k1            current"),
        "{listed}"
    );

    let refused = run(&["ticket-key", "revoke", "k1"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("ticket key k1 is the current key"),
        "{}",
        stderr(&refused)
    );

    let rotated = run(&["ticket-key", "rotate"]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let text = stdout(&rotated);
    assert!(text.contains("ticket key k2 is now current"), "{text}");
    assert!(text.contains("ticket key k1 is retired"), "{text}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("keys/k2.pk8"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(reserve("+2h").as_str(), "k2");

    let taken = run(&["ticket-key", "rotate", "--key-id", "k1"]);
    assert!(
        stderr(&taken).contains("ticket key k1 already exists"),
        "{}",
        stderr(&taken)
    );
    let reserved = run(&["ticket-key", "rotate", "--key-id", "root-r2"]);
    assert!(
        stderr(&reserved).contains("root-r2 cannot be a ticket key id"),
        "{}",
        stderr(&reserved)
    );
    let unknown = run(&["ticket-key", "revoke", "k9"]);
    assert!(
        stderr(&unknown).contains("ticket key k9 does not exist"),
        "{}",
        stderr(&unknown)
    );

    let revoked = run(&["ticket-key", "revoke", "k1"]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert!(
        stdout(&revoked).contains("revoked ticket key k1")
            && stdout(&revoked).contains("1 open booking(s)"),
        "{}",
        stdout(&revoked)
    );
    let again = stdout(&run(&["ticket-key", "revoke", "k1"]));
    assert!(
        again.contains("ticket key k1 was already revoked at"),
        "{again}"
    );
    let listed = stdout(&run(&["ticket-key", "list"]));
    let states: Vec<(&str, &str)> = listed
        .lines()
        .skip(1)
        .map(|line| {
            let mut columns = line.split_whitespace();
            (columns.next().unwrap(), columns.next().unwrap())
        })
        .collect();
    assert_eq!(states, [("k1", "revoked"), ("k2", "current")], "{listed}");

    let root = run(&["root-key"]);
    assert!(root.status.success(), "{}", stderr(&root));
    let root = mujin_protocol::signed::parse_public_key(&stdout(&root)).unwrap();
    assert_eq!(root.key_id.as_str(), "r1");
    let command = stdout(&run(&["command-key"]));
    assert!(!command.contains(&data_encoding_hex(&root.bytes)));
}

fn data_encoding_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
