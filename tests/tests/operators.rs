//! Operator requests are authenticated and authorized, end to end (real broker process,
//! PostgreSQL, management, `mujin-agent`): a viewer reads but cannot stop anything, an operator
//! can; unsigned, forged, misplaced, revoked and stale requests are refused and change nothing;
//! every decision is in the audit tables and the store's events.

use std::time::Duration;

use chrono::Utc;
use mujin_management::operators::{self, Role};
use mujin_protocol::message::{EventKind, Reply, Request, RequestAction};
use mujin_protocol::signed::sign_request_at;
use mujin_protocol::snapshot::SnapshotPart;
use mujin_protocol::{OperatorId, RequestId, SessionId};
use mujin_tests::operator::{publish, wait_replies, Operator};
use mujin_tests::stack::Stack;
use mujin_tests::{process_alive, wait_for};

const SHORT: Duration = Duration::from_secs(10);

/// Publishes `request` on `topic`'s requests topic and returns its reply there.
async fn send_on(stack: &Stack, topic: &OperatorId, request: &Request) -> Reply {
    publish(stack, topic, request).await;
    wait_replies(stack, topic, request.request_id, 1)
        .await
        .remove(0)
}

/// Asserts a refusal whose detail contains `words`.
fn refused(reply: &Reply, words: &str) {
    assert!(!reply.ok && reply.detail.contains(words), "{reply:?}");
}

/// Whether the session is still open in the database.
async fn still_open(stack: &Stack, session_id: SessionId) -> bool {
    let client = stack.pool.get().await.expect("db connection");
    let row = client
        .query_one(
            "SELECT ended_at IS NULL FROM sessions WHERE session_id = $1",
            &[&session_id.as_uuid()],
        )
        .await
        .expect("the session");
    row.get(0)
}

/// The operator_action events seen for `request_id`: (operator, ok, detail).
fn action_events(stack: &Stack, request_id: RequestId) -> Vec<(OperatorId, bool, String)> {
    stack
        .observer
        .events()
        .into_iter()
        .filter_map(|event| match event.kind {
            EventKind::OperatorAction {
                operator,
                request_id: id,
                ok,
                detail,
                ..
            } if id == request_id => Some((operator, ok, detail)),
            _ => None,
        })
        .collect()
}

async fn wait_action_event(stack: &Stack, request_id: RequestId) -> (OperatorId, bool, String) {
    wait_for("the operator_action event", SHORT, || {
        let found = action_events(stack, request_id).into_iter().next();
        async move { found }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_authenticated_operator_with_the_role_stops_a_session() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let viewer = Operator::add(&stack, "victor", Role::Viewer).await;
    let alice = Operator::add(&stack, "alice", Role::Operator).await;
    let bob = Operator::add(&stack, "bob", Role::Admin).await;
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 600).await;
    let (session_id, pid) = stack.start_session(&mut agent, &booking.ticket).await;
    let stop = RequestAction::ForceStop { session_id };

    // A viewer reads, but may not stop.
    let snapshot = viewer
        .ask(
            &stack,
            RequestAction::Snapshot {
                part: SnapshotPart::Sessions,
                store: None,
                after: None,
            },
        )
        .await;
    assert!(snapshot.ok && snapshot.snapshot.is_some(), "{snapshot:?}");
    let by_viewer = viewer.request(stop.clone());
    let reply = viewer.send(&stack, &by_viewer).await;
    refused(
        &reply,
        "force_stop needs the operator role; victor is a viewer",
    );
    let event = wait_action_event(&stack, by_viewer.request_id).await;
    assert_eq!(event, (viewer.id.clone(), false, reply.detail.clone()));
    println!(
        "checked: a viewer's snapshot works; its force stop → {:?}",
        reply.detail
    );

    // Requests that cannot be trusted, each refused with its reason.
    let unsigned = Request::new(RequestId::random(), stop.clone());
    refused(&send_on(&stack, &alice.id, &unsigned).await, "not signed");
    let stranger = Operator::unregistered("alice");
    let forged = stranger.request(stop.clone());
    refused(&send_on(&stack, &alice.id, &forged).await, "unknown key");
    let bobs = bob.request(stop.clone());
    refused(
        &send_on(&stack, &alice.id, &bobs).await,
        "signed by operator bob, not by alice",
    );
    let mut tampered = alice.request(stop.clone());
    tampered.action = RequestAction::Extend {
        session_id,
        minutes: 60,
    };
    refused(
        &send_on(&stack, &alice.id, &tampered).await,
        "signature does not match",
    );
    let mut stale = Request::new(RequestId::random(), stop.clone());
    sign_request_at(
        &alice.key,
        &mut stale,
        Utc::now() - chrono::Duration::minutes(6),
    );
    refused(
        &send_on(&stack, &alice.id, &stale).await,
        "more than 5 minutes from management's clock",
    );
    assert!(still_open(&stack, session_id).await);
    assert!(process_alive(pid));
    let event = wait_action_event(&stack, unsigned.request_id).await;
    assert_eq!(event.0, alice.id);
    assert!(!event.1 && event.2.contains("not signed"), "{event:?}");
    println!("checked: unsigned, unknown key, another operator's, tampered and stale requests refused; the session still runs");

    // A request refused by authentication takes no request id: alice may still use it.
    let mut reused = unsigned.clone();
    alice.sign(&mut reused);
    publish(&stack, &alice.id, &reused).await;
    let stopped = wait_replies(&stack, &alice.id, reused.request_id, 2)
        .await
        .remove(1);
    assert!(stopped.ok, "{stopped:?}");
    wait_for("the program to stop", SHORT, || async {
        (!process_alive(pid)).then_some(())
    })
    .await;
    assert!(!still_open(&stack, session_id).await);
    let events = wait_for("the two events of the request id", SHORT, || {
        let found = action_events(&stack, unsigned.request_id);
        async move { (found.len() >= 2).then_some(found) }
    })
    .await;
    assert!(events.iter().any(|(_, ok, _)| *ok), "{events:?}");
    println!(
        "checked: alice's signed force stop works: {:?}",
        stopped.detail
    );

    // The audit tables.
    let client = stack.pool.get().await.expect("db connection");
    let recorded = client
        .query(
            "SELECT operator, action, ok, key_id FROM requests ORDER BY decided_at",
            &[],
        )
        .await
        .expect("requests");
    let recorded: Vec<(String, String, bool, Option<String>)> = recorded
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    assert_eq!(
        recorded,
        vec![
            (
                "victor".into(),
                "force_stop".into(),
                false,
                Some(viewer.key.key_id().to_string())
            ),
            (
                "alice".into(),
                "force_stop".into(),
                true,
                Some(alice.key.key_id().to_string())
            ),
        ]
    );
    let refusals: i64 = client
        .query_one(
            "SELECT count(*) FROM refused_requests WHERE operator = 'alice'",
            &[],
        )
        .await
        .expect("refusals")
        .get(0);
    assert_eq!(refusals, 5);
    println!("checked: requests holds the viewer's refusal and alice's stop; refused_requests the 5 untrusted ones");
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_operator_is_refused_and_a_new_role_applies_at_once() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-02").await;
    let carol = Operator::add(&stack, "carol", Role::Viewer).await;
    let out = RequestAction::SetService {
        store: device.0.clone(),
        device: device.1.clone(),
        in_service: false,
    };
    refused(
        &carol.ask(&stack, out.clone()).await,
        "set_service needs the operator role",
    );
    operators::set_role(&stack.pool, &carol.id, Role::Operator)
        .await
        .expect("change the role");
    let taken_out = carol.ask(&stack, out.clone()).await;
    assert!(taken_out.ok, "{taken_out:?}");

    operators::revoke(&stack.pool, &carol.id, Utc::now())
        .await
        .expect("revoke");
    let back = RequestAction::SetService {
        store: device.0.clone(),
        device: device.1.clone(),
        in_service: true,
    };
    let after_revoke = carol.request(back);
    refused(
        &carol.send(&stack, &after_revoke).await,
        "carol was revoked at",
    );
    let client = stack.pool.get().await.expect("db connection");
    let in_service: bool = client
        .query_one(
            "SELECT in_service FROM devices WHERE store_id = $1 AND device_id = $2",
            &[&device.0.as_str(), &device.1.as_str()],
        )
        .await
        .expect("the device")
        .get(0);
    assert!(!in_service, "the revoked operator changed nothing");
    let (_, ok, detail) = wait_action_event(&stack, after_revoke.request_id).await;
    assert!(!ok && detail.contains("revoked"), "{detail}");
    println!("checked: viewer refused, promoted to operator it acts, revoked it is refused");
    stack.shutdown().await;
}
