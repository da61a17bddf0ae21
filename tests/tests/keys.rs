//! Ticket-key rotation and revocation against the real broker, PostgreSQL, management and agent
//! processes: after a rotation new tickets carry the new key and start sessions, tickets of the
//! retired key still do; once that key is revoked its tickets are refused `revoked_key` by
//! management and by an agent checking offline; the current key cannot be revoked; a trust list
//! not signed with the root key is ignored by the agents.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use mujin_management::booking::{self, StoreSettingsChange};
use mujin_management::ticket_keys::{self, Revocation, TicketKeyError};
use mujin_protocol::message::{self, Availability, EventKind, RejectReason, ReportedState};
use mujin_protocol::signed::sign_trust_list;
use mujin_protocol::ticket::{parse_unverified, SigningKey, TicketClaims};
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::trust::{TrustList, TrustedKey};
use mujin_protocol::{DeviceId, KeyId, StoreId, TicketId};
use mujin_tests::stack::Stack;
use mujin_tests::wait_for;

const SHORT: Duration = Duration::from_secs(15);

fn key_dir(stack: &Stack) -> PathBuf {
    stack.dir.path().join("keys")
}

fn key_id(text: &str) -> KeyId {
    KeyId::parse(text).expect("key id")
}

async fn allow_offline_start(stack: &Stack, store: &StoreId) {
    let change = StoreSettingsChange {
        offline_start: Some(true),
        ..StoreSettingsChange::default()
    };
    booking::update_store_settings(&stack.pool, store, change)
        .await
        .expect("store settings");
}

/// Waits until management publishes a trust list of `store` that satisfies `check` (which
/// also tells that the worker reloaded its keys: both follow the same table).
async fn wait_trust_list(
    stack: &Stack,
    store: &StoreId,
    what: &str,
    check: impl Fn(&TrustList) -> bool,
) {
    wait_for(what, SHORT, || {
        let newest =
            stack
                .observer
                .recorded()
                .into_iter()
                .rev()
                .find_map(|recorded| match &recorded.topic {
                    Topic::Trust { store: of } if of == store => {
                        message::decode::<TrustList>(&recorded.payload).ok()
                    }
                    _ => None,
                });
        let ok = newest.as_ref().is_some_and(&check).then_some(());
        async move { ok }
    })
    .await;
}

/// Waits until the device's agent reported itself online (so it receives what is published).
async fn wait_online(stack: &Stack, (store, device): &(StoreId, DeviceId)) {
    let wanted = Topic::device(store, device, DeviceChannel::State);
    wait_for("the agent online", SHORT, || {
        let online = stack.observer.recorded().into_iter().any(|recorded| {
            recorded.topic == wanted
                && message::decode::<ReportedState>(&recorded.payload)
                    .is_ok_and(|state| state.availability == Availability::Online)
        });
        async move { online.then_some(()) }
    })
    .await;
}

fn lists_key(list: &TrustList, id: &str) -> bool {
    list.keys.iter().any(|key| key.key_id.as_str() == id)
}

/// Books `device` for a minute from now with the `mujin-management reserve` command line, which
/// signs with the current key; returns the ticket text.
fn reserve_with_cli(stack: &Stack, (store, device): &(StoreId, DeviceId)) -> String {
    let output = Command::new(mujin_tests::binary("mujin-management"))
        .arg("--data-dir")
        .arg(stack.dir.path())
        .args(["--database-url", &stack.database_url])
        .args([
            "reserve",
            "--store",
            store.as_str(),
            "--device",
            device.as_str(),
        ])
        .args(["--seconds", "60", "--quiet"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run mujin-management reserve");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_and_a_revocation_apply_while_management_runs() {
    let mut stack = Stack::start().await;
    let store = StoreId::parse("shibuya").expect("store id");
    let new_device = stack.add_device("shibuya", "pc-01").await;
    let old_device = stack.add_device("shibuya", "pc-02").await;
    let revoked_device = stack.add_device("shibuya", "pc-03").await;
    allow_offline_start(&stack, &store).await;
    // Two tickets signed with k1 before the rotation.
    let before = stack.book_now(&old_device, 60).await;
    let to_revoke = stack.book_now(&revoked_device, 60).await;
    assert_eq!(before.claims.key_id.as_str(), "k1");

    let rotation = ticket_keys::rotate(&stack.pool, &key_dir(&stack), None, Utc::now())
        .await
        .expect("rotate");
    assert_eq!(rotation.current.as_str(), "k2");
    assert_eq!(rotation.retired, Some(key_id("k1")));
    let revoking_current = ticket_keys::revoke(&stack.pool, &key_id("k2"), Utc::now()).await;
    assert!(
        matches!(revoking_current, Err(TicketKeyError::Current(ref id)) if id.as_str() == "k2"),
        "{revoking_current:?}"
    );
    wait_trust_list(&stack, &store, "a trust list with k1 and k2", |list| {
        lists_key(list, "k1") && lists_key(list, "k2")
    })
    .await;

    // New tickets carry the new key and start sessions; the old one still does too.
    let ticket = reserve_with_cli(&stack, &new_device);
    let claims = parse_unverified(&ticket).expect("a ticket").claims;
    assert_eq!(claims.key_id.as_str(), "k2");
    let mut new_agent = stack.agent(&new_device);
    stack.start_session(&mut new_agent, &ticket).await;
    let mut old_agent = stack.agent(&old_device);
    stack.start_session(&mut old_agent, &before.ticket).await;

    // Revoked: refused online, with the reason and the key named; nothing started.
    let revocation = ticket_keys::revoke(&stack.pool, &key_id("k1"), Utc::now())
        .await
        .expect("revoke");
    // The k1 ticket of pc-03 was still open.
    assert_eq!(revocation, Revocation::Now { open_bookings: 1 });
    wait_trust_list(&stack, &store, "a trust list with k1 revoked", |list| {
        !lists_key(list, "k1") && list.revoked_keys == [key_id("k1")] && list.offline_start
    })
    .await;
    let mut agent = stack.agent(&revoked_device);
    agent.scan(&to_revoke.ticket).await;
    agent.wait_screen("REFUSED (revoked_key)", SHORT).await;
    let detail = stack
        .observer
        .wait_event("the revoked ticket refused", SHORT, |event| {
            match &event.kind {
                EventKind::ScanRejected {
                    reason: RejectReason::RevokedKey,
                    detail,
                    ..
                } => Some(detail.clone()),
                _ => None,
            }
        })
        .await;
    assert!(detail.contains("\"k1\""), "{detail}");
    assert_eq!(stack.session_count(&to_revoke).await, 0);

    // And by the agent on its own while management is away.
    stack.stop_management().await;
    agent.scan(&to_revoke.ticket).await;
    agent
        .wait_screen("REFUSED (checked offline, revoked_key)", SHORT)
        .await;
    assert!(!agent.pid_file.exists(), "a program was started");
    agent.stop().await;
    new_agent.stop().await;
    old_agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_list_not_signed_with_the_root_key_starts_nothing_offline() {
    let mut stack = Stack::start().await;
    let store = StoreId::parse("shibuya").expect("store id");
    let device = stack.add_device("shibuya", "pc-01").await;
    allow_offline_start(&stack, &store).await;
    wait_trust_list(&stack, &store, "offline starts allowed", |list| {
        list.offline_start
    })
    .await;
    let mut agent = stack.agent(&device);
    wait_online(&stack, &device).await;
    // Management away, an attacker with broker credentials publishes a list trusting their
    // own ticket key, signed with management's command key (not its root key), after the
    // agent has the genuine one.
    stack.stop_management().await;
    let attacker = SigningKey::from_seed(key_id("k1"), &[66; 32]).expect("key");
    let mut forged = TrustList {
        issued_at: Utc::now(),
        store: Some(store.clone()),
        offline_start: true,
        keys: vec![TrustedKey::from(&attacker.public_key())],
        revoked_keys: Vec::new(),
        refused_tickets: Vec::new(),
        truncated: false,
        signature: None,
    };
    sign_trust_list(&stack.keys.command, &mut forged);
    stack
        .observer
        .publish_raw(&topic::trust(&store), message::encode(&forged))
        .await;
    let now = Utc::now();
    let ticket = attacker.issue(&TicketClaims {
        ticket_id: TicketId::random(),
        store: store.clone(),
        device: device.1.clone(),
        not_before: now - chrono::Duration::minutes(1),
        not_after: now + chrono::Duration::minutes(10),
        key_id: key_id("k1"),
    });
    agent.scan(&ticket).await;
    // Checked against the genuine list, where k1 is another key: not genuine.
    agent
        .wait_screen("REFUSED (checked offline, bad_signature)", SHORT)
        .await;
    assert!(!agent.pid_file.exists(), "a program was started");
    agent.stop().await;
    stack.shutdown().await;
}
