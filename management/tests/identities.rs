//! `mujin-management device-enrol`, `operator-enrol`, `identities`, `device-revoke` and
//! `identity-revoke` as real processes on a private PostgreSQL: the token is printed once and
//! stored only as its keyed hash.

// The whole file is test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use mujin_management::postgres::PrivateCluster;

fn management(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mujin-management"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("MUJIN_DATABASE_URL")
        .env_remove("MUJIN_BROKER")
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run mujin-management")
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value after `KEY=` on its own line.
fn env_value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= line in {text}"))
}

/// Every identity row as text, and whether each row's hash is HMAC(pepper, token).
async fn stored_rows(data_dir: &Path) -> Vec<String> {
    let cluster = PrivateCluster::start(&data_dir.join("postgres")).unwrap();
    let (client, connection) =
        tokio_postgres::connect(&cluster.connection_string("mujin"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let driver = tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT identities::text || encode(token_hash, 'hex') FROM identities ORDER BY username",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    drop(client);
    let _ = driver.await;
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap()
        .unwrap();
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn enrolment_prints_the_token_once_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let enrolled = succeeded(&management(
        &data,
        &[
            "device-enrol",
            "--store",
            "shibuya",
            "--device",
            "pc-01",
            "--broker",
            "10.0.0.5:1883",
        ],
    ));
    let token = env_value(&enrolled, "MUJIN_AGENT_PASSWORD").to_owned();
    assert_eq!(token.len(), 64, "{enrolled}");
    assert_eq!(enrolled.matches(&token).count(), 1, "{enrolled}");
    assert_eq!(
        env_value(&enrolled, "MUJIN_AGENT_USERNAME"),
        "device:shibuya:pc-01"
    );
    assert_eq!(env_value(&enrolled, "MUJIN_AGENT_BROKER"), "10.0.0.5:1883");
    let command_key = succeeded(&management(&data, &["command-key"]));
    assert_eq!(
        env_value(&enrolled, "MUJIN_AGENT_MANAGEMENT_KEY"),
        command_key.trim()
    );
    let root_key = succeeded(&management(&data, &["root-key"]));
    assert_eq!(
        env_value(&enrolled, "MUJIN_AGENT_ROOT_KEY"),
        root_key.trim()
    );
    assert_ne!(root_key, command_key);
    assert!(enrolled.contains("mujin-agent.shibuya.pc-01"), "{enrolled}");
    // The device was registered on the way.
    assert!(succeeded(&management(&data, &["devices"])).contains("shibuya/pc-01"));

    let operator = succeeded(&management(
        &data,
        &["operator-enrol", "--operator", "alice"],
    ));
    let operator_token = operator
        .lines()
        .find_map(|line| line.strip_prefix("token"))
        .map(str::trim)
        .unwrap()
        .to_owned();
    assert_eq!(operator_token.len(), 64, "{operator}");

    let listed = succeeded(&management(&data, &["identities"]));
    assert!(listed.contains("device:shibuya:pc-01"), "{listed}");
    assert!(listed.contains("operator:alice"), "{listed}");
    assert!(!listed.contains(&token) && !listed.contains(&operator_token));

    let pepper = mujin_management::keys::load_or_create_pepper(&data.join("keys")).unwrap();
    let rows = stored_rows(&data).await;
    assert_eq!(rows.len(), 2);
    for (row, token) in rows.iter().zip([&token, &operator_token]) {
        assert!(!row.contains(token.as_str()), "a token is stored: {row}");
        let hash = data_encoding_hex(pepper.hash(token).as_bytes());
        assert!(row.ends_with(&hash), "{row} is not keyed by the pepper");
    }
}

#[test]
fn revocation_shows_in_the_list_and_enrolling_again_lifts_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    succeeded(&management(
        &data,
        &["device-enrol", "--store", "s", "--device", "d"],
    ));
    succeeded(&management(
        &data,
        &["service-enrol", "--name", "mujin-management"],
    ));

    let revoked = succeeded(&management(
        &data,
        &["device-revoke", "--store", "s", "--device", "d"],
    ));
    assert!(revoked.starts_with("revoked device:s:d"), "{revoked}");
    let again = succeeded(&management(
        &data,
        &["identity-revoke", "--username", "device:s:d"],
    ));
    assert!(again.contains("already revoked"), "{again}");
    let listed = succeeded(&management(&data, &["identities"]));
    let device_line = listed
        .lines()
        .find(|l| l.starts_with("device:s:d"))
        .unwrap();
    assert!(!device_line.ends_with("no"), "{listed}");
    let service_line = listed
        .lines()
        .find(|l| l.starts_with("service:mujin-management"))
        .unwrap();
    assert!(service_line.ends_with("no"), "{listed}");

    let unknown = management(&data, &["identity-revoke", "--username", "operator:nobody"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown identity"));

    let renewed = succeeded(&management(
        &data,
        &["device-enrol", "--store", "s", "--device", "d"],
    ));
    assert!(
        renewed.contains("previous token no longer works"),
        "{renewed}"
    );
    let listed = succeeded(&management(&data, &["identities"]));
    let device_line = listed
        .lines()
        .find(|l| l.starts_with("device:s:d"))
        .unwrap();
    assert!(device_line.ends_with("no"), "{listed}");

    let reserved = management(&data, &["service-enrol", "--name", "mujin-agent"]);
    assert!(!reserved.status.success());
}

fn data_encoding_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
