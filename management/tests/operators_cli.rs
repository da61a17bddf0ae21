//! The operator subcommands of `mujin-management`, run as a real process on a private
//! PostgreSQL: the private key goes to an owner-only file and nowhere else, the database keeps
//! the public key only, and roles and revocations change what the listing shows.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use common::{answered, management};
use mujin_management::postgres::PrivateCluster;
use mujin_protocol::signed::operator_key;

fn refused(output: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(message), "{stderr}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_are_added_with_an_owner_only_key_file_and_only_the_public_key_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cluster = PrivateCluster::start_for_tests(&dir.path().join("pg")).unwrap();
    cluster.create_database("mujin").await.unwrap();
    let url = cluster.connection_string("mujin");
    let run = |args: &[&str]| management(&data, &url, args);

    assert_eq!(answered(&run(&["operators"])), "no operators\n");
    let added = answered(&run(&[
        "operator-add",
        "--operator",
        "alice",
        "--role",
        "admin",
    ]));
    let key_file = data.join("operators").join("alice.pk8");
    assert!(added.contains(&key_file.display().to_string()), "{added}");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is owner-only");
    let pkcs8 = std::fs::read(&key_file).unwrap();
    let key = operator_key(&pkcs8).unwrap();
    assert!(added.contains(key.key_id().as_str()), "{added}");
    assert!(
        !added.contains(&hex(&pkcs8[16..48])),
        "the key is never printed"
    );
    println!("checked: operator-add → {}", added.trim());

    let elsewhere = dir.path().join("bob.pk8");
    let elsewhere_text = elsewhere.display().to_string();
    answered(&run(&[
        "operator-add",
        "--operator",
        "bob",
        "--role",
        "viewer",
        "--key-out",
        &elsewhere_text,
    ]));
    let bob_mode = std::fs::metadata(&elsewhere).unwrap().permissions().mode();
    assert_eq!(bob_mode & 0o777, 0o600);

    // The database holds alice's public key and nothing of the private one.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT public_key, key_id, role, operators::text FROM operators WHERE operator = 'alice'",
            &[],
        )
        .await
        .unwrap();
    let public: Vec<u8> = row.get(0);
    assert_eq!(public, key.public_key().bytes.to_vec());
    assert_eq!(row.get::<_, String>(1), key.key_id().as_str());
    assert_eq!(row.get::<_, String>(2), "admin");
    let whole_row: String = row.get(3);
    // The PKCS#8 document holds the seed right after its 16-byte header.
    assert!(!whole_row.contains(&hex(&pkcs8[16..48])), "{whole_row}");
    println!("checked: key file mode 600, the database keeps the public key only");

    refused(
        &run(&["operator-add", "--operator", "alice", "--role", "viewer"]),
        "cannot create the key file",
    );
    assert_eq!(std::fs::read(&key_file).unwrap(), pkcs8, "not overwritten");
    refused(
        &run(&["operator-add", "--operator", "bob", "--role", "viewer"]),
        "operator bob already exists",
    );
    assert!(
        !data.join("operators").join("bob.pk8").exists(),
        "no key file is left for an operator that was not added"
    );

    let changed = answered(&run(&[
        "operator-role",
        "--operator",
        "bob",
        "--role",
        "operator",
    ]));
    assert_eq!(changed.trim(), "operator bob is now operator (was viewer)");
    let revoked = answered(&run(&["operator-revoke", "--operator", "bob"]));
    assert!(revoked.contains("operator bob revoked at"), "{revoked}");
    refused(
        &run(&["operator-role", "--operator", "bob", "--role", "admin"]),
        "was revoked at",
    );
    refused(
        &run(&["operator-role", "--operator", "carol", "--role", "admin"]),
        "no operator carol",
    );
    let listing = answered(&run(&["operators"]));
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "{listing}");
    assert!(
        lines[0].starts_with("alice") && lines[0].contains("admin"),
        "{listing}"
    );
    assert!(
        lines[1].starts_with("bob")
            && lines[1].contains("operator")
            && lines[1].contains("revoked"),
        "{listing}"
    );
    println!("checked: roles, revocation and the listing:\n{listing}");
    drop(client);
    cluster.stop().unwrap();
}
