//! `mujin-management integrator-enrol` and `integrator-revoke`, run as a real process on a
//! private PostgreSQL: the printed lines are exactly the six KEY=value lines, the database keeps
//! only the token's hash and the key's public half, enrolling again replaces both, and revoking
//! shows in the registry and the Mosquitto ACL.

mod common;

use std::collections::BTreeMap;

use common::{answered, management};
use mujin_management::postgres::PrivateCluster;
use mujin_protocol::booking::IntegratorKey;

fn values(printed: &str) -> BTreeMap<String, String> {
    printed
        .lines()
        .map(|line| {
            let (key, value) = line.split_once('=').expect("KEY=value");
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integrator_is_enrolled_with_a_token_and_a_key_printed_once_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cluster = PrivateCluster::start_for_tests(&dir.path().join("pg")).unwrap();
    cluster.create_database("mujin").await.unwrap();
    let url = cluster.connection_string("mujin");
    let run = |args: &[&str]| management(&data, &url, args);

    let enrolled = run(&["integrator-enrol", "--integrator", "acme"]);
    let printed = answered(&enrolled);
    let first = values(&printed);
    let keys: Vec<&str> = first.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "MUJIN_INTEGRATOR",
            "MUJIN_INTEGRATOR_KEY",
            "MUJIN_INTEGRATOR_KEY_ID",
            "MUJIN_MQTT_CLIENT_ID",
            "MUJIN_MQTT_PASSWORD",
            "MUJIN_MQTT_USERNAME",
        ]
    );
    assert_eq!(printed.lines().count(), 6, "{printed}");
    assert_eq!(first["MUJIN_MQTT_USERNAME"], "integrator:acme");
    assert_eq!(first["MUJIN_MQTT_CLIENT_ID"], "mujin-integrator.acme");
    assert_eq!(first["MUJIN_INTEGRATOR"], "acme");
    let key = IntegratorKey::from_hex(&first["MUJIN_INTEGRATOR_KEY"]).unwrap();
    assert_eq!(key.key_id().as_str(), first["MUJIN_INTEGRATOR_KEY_ID"]);
    assert!(String::from_utf8_lossy(&enrolled.stderr).contains("shown only now"));

    // The database holds the public key and the token's hash, never the secrets.
    let pool = mujin_management::db::pool(&url, 1).unwrap();
    let client = pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT key_id, public_key FROM integrators WHERE integrator = 'acme'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), first["MUJIN_INTEGRATOR_KEY_ID"]);
    assert_eq!(row.get::<_, Vec<u8>>(1), key.public_key().bytes.to_vec());
    let dump = client
        .query_one(
            "SELECT (SELECT string_agg(t::text, ' ') FROM identities t)
                 || (SELECT string_agg(t::text, ' ') FROM integrators t)",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    assert!(!dump.contains(&first["MUJIN_MQTT_PASSWORD"]));
    assert!(!dump.contains(&first["MUJIN_INTEGRATOR_KEY"]));

    // Enrolling again replaces token and key.
    let again = values(&answered(&run(&[
        "integrator-enrol",
        "--integrator",
        "acme",
    ])));
    assert_ne!(again["MUJIN_MQTT_PASSWORD"], first["MUJIN_MQTT_PASSWORD"]);
    assert_ne!(
        again["MUJIN_INTEGRATOR_KEY_ID"],
        first["MUJIN_INTEGRATOR_KEY_ID"]
    );
    let identities = answered(&run(&["identities"]));
    assert!(identities.contains("integrator:acme"), "{identities}");
    let acl = answered(&run(&["mosquitto-acl"]));
    assert!(
        acl.contains("user integrator.acme\ntopic write mujin/v1/integrators/acme/bookings\n"),
        "{acl}"
    );

    let revoked = answered(&run(&["integrator-revoke", "--integrator", "acme"]));
    assert!(revoked.starts_with("revoked integrator:acme"), "{revoked}");
    let revoked_at: Option<chrono::DateTime<chrono::Utc>> = client
        .query_one(
            "SELECT revoked_at FROM integrators WHERE integrator = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(revoked_at.is_some());
    let twice = answered(&run(&["integrator-revoke", "--integrator", "acme"]));
    assert!(twice.contains("was already revoked"), "{twice}");
    assert!(!answered(&run(&["mosquitto-acl"])).contains("integrator.acme"));
    let unknown = run(&["integrator-revoke", "--integrator", "nobody"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown integrator nobody"));
    let bad = run(&["integrator-enrol", "--integrator", "Acme"]);
    assert!(!bad.status.success());
}
