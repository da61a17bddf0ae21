//! Operator requests over MQTT, end to end: an operator publishes on its requests topic and
//! management answers on its replies topic — force stop, extend, service state, cancel and
//! walk-in tickets, once per request id — over the real broker process, PostgreSQL, management
//! and `mujin-agent` processes.

use std::time::Duration;

use mujin_management::operators::Role;
use mujin_protocol::message::{
    self, EndReason, EventKind, RejectReason, Reply, RequestAction, Scan,
};
use mujin_protocol::topic::{self, DeviceChannel};
use mujin_protocol::{DeviceId, RequestId, ScanId, StoreId};
use mujin_tests::operator::{publish, publish_raw, replies, wait_replies, Operator};
use mujin_tests::stack::Stack;
use mujin_tests::{process_alive, wait_for};

const SHORT: Duration = Duration::from_secs(10);

/// A registered operator allowed to act.
async fn operator(stack: &Stack, name: &str) -> Operator {
    Operator::add(stack, name, Role::Operator).await
}

/// Sends a new signed request with a fresh id and returns its reply.
async fn ask(stack: &Stack, operator: &Operator, action: RequestAction) -> Reply {
    operator.ask(stack, action).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_extends_cancels_and_force_stops_over_mqtt() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    stack.set_store_timing(&device.0, 0, 600).await;
    let alice = operator(&stack, "alice").await;
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 60).await;
    let old_end = booking.claims.not_after;
    let next = stack
        .book(
            &device,
            old_end - chrono::Utc::now(),
            chrono::Duration::minutes(5),
        )
        .await
        .expect("the next booking, right after the first");
    assert_eq!(next.claims.not_before, old_end);
    let (session_id, pid) = stack.start_session(&mut agent, &booking.ticket).await;

    let extend = RequestAction::Extend {
        session_id,
        minutes: 1,
    };
    let refused = ask(&stack, &alice, extend.clone()).await;
    assert!(!refused.ok);
    assert!(
        refused.detail.contains(&format!(
            "another booking starts at {}",
            old_end.to_rfc3339()
        )),
        "{refused:?}"
    );
    println!(
        "checked: extension into the next booking refused: {}",
        refused.detail
    );

    let cancel = RequestAction::Cancel {
        ticket_id: next.claims.ticket_id,
    };
    let cancelled = ask(&stack, &alice, cancel.clone()).await;
    assert!(cancelled.ok, "{cancelled:?}");
    let again = ask(&stack, &alice, cancel).await;
    assert!(
        !again.ok && again.detail.contains("already cancelled"),
        "{again:?}"
    );
    println!(
        "checked: cancel → {:?}; cancelling again → {:?}",
        cancelled.detail, again.detail
    );

    let extended = ask(&stack, &alice, extend).await;
    assert!(extended.ok, "{extended:?}");
    let new_end = old_end + chrono::Duration::minutes(1);
    let row = stack.session_row(&booking).await.expect("the session");
    assert_eq!(row.lease_until, new_end);
    stack
        .observer
        .wait_event("the extension event", SHORT, |event| match event.kind {
            EventKind::SessionExtended {
                session_id: s,
                lease_until,
                ..
            } if s == session_id && lease_until == new_end => Some(()),
            _ => None,
        })
        .await;
    println!(
        "checked: extension once the device is free: {}",
        extended.detail
    );

    let stopped = ask(&stack, &alice, RequestAction::ForceStop { session_id }).await;
    assert!(stopped.ok, "{stopped:?}");
    let reason = stack
        .observer
        .wait_event("the session to end", SHORT, |event| match event.kind {
            EventKind::SessionEnded {
                session_id: s,
                reason,
                ..
            } if s == session_id => Some(reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, EndReason::Forced);
    wait_for("the program to stop", SHORT, || async {
        (!process_alive(pid)).then_some(())
    })
    .await;
    let twice = ask(&stack, &alice, RequestAction::ForceStop { session_id }).await;
    assert!(
        !twice.ok && twice.detail.contains("already ended"),
        "{twice:?}"
    );
    println!(
        "checked: force stop → {:?}, session ended as forced, program stopped; again → {:?}",
        stopped.detail, twice.detail
    );
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_state_and_walk_in_tickets_over_mqtt() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-02").await;
    let (store, dev): (StoreId, DeviceId) = device.clone();
    let bob = operator(&stack, "bob").await;
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 20).await;

    let out = RequestAction::SetService {
        store: store.clone(),
        device: dev.clone(),
        in_service: false,
    };
    let taken_out = ask(&stack, &bob, out).await;
    assert!(taken_out.ok, "{taken_out:?}");
    assert!(
        taken_out.detail.contains("now out of service")
            && taken_out
                .detail
                .contains(&booking.claims.ticket_id.to_string()),
        "{taken_out:?}"
    );
    let walk_in = |minutes| RequestAction::IssueTicket {
        store: store.clone(),
        device: dev.clone(),
        minutes,
    };
    let no_ticket = ask(&stack, &bob, walk_in(30)).await;
    assert!(!no_ticket.ok && no_ticket.detail.contains("out of service"));
    assert_eq!(no_ticket.ticket, None);
    agent.scan(&booking.ticket).await;
    let refusal = RejectReason::OutOfService;
    agent
        .wait_screen(&format!("REFUSED ({refusal})"), SHORT)
        .await;
    println!(
        "checked: out of service → {:?}; walk-in refused ({:?}); the scan is refused ({refusal})",
        taken_out.detail, no_ticket.detail
    );

    let back = RequestAction::SetService {
        store: store.clone(),
        device: dev.clone(),
        in_service: true,
    };
    let put_back = ask(&stack, &bob, back).await;
    assert!(
        put_back.ok && put_back.detail.contains("now in service"),
        "{put_back:?}"
    );
    let zero = ask(&stack, &bob, walk_in(0)).await;
    assert_eq!(
        (zero.ok, zero.detail.as_str()),
        (false, "minutes must be between 1 and 1440, got 0")
    );
    let overlapping = ask(&stack, &bob, walk_in(30)).await;
    assert!(
        !overlapping.ok && overlapping.detail.contains("is booked from"),
        "{overlapping:?}"
    );
    let unknown = RequestAction::IssueTicket {
        store: store.clone(),
        device: DeviceId::parse("pc-99").expect("device id"),
        minutes: 30,
    };
    let unknown = ask(&stack, &bob, unknown).await;
    assert!(
        !unknown.ok && unknown.detail.contains("unknown device"),
        "{unknown:?}"
    );
    println!(
        "checked: refusals: {:?} / {:?} / {:?}",
        zero.detail, overlapping.detail, unknown.detail
    );

    let cancel = RequestAction::Cancel {
        ticket_id: booking.claims.ticket_id,
    };
    assert!(ask(&stack, &bob, cancel).await.ok);
    let issued = ask(&stack, &bob, walk_in(1)).await;
    assert!(issued.ok, "{issued:?}");
    assert!(issued.detail.starts_with("booked shibuya/pc-02 until "));
    let ticket = issued.ticket.clone().expect("the reply carries the ticket");
    let (_, pid) = stack.start_session(&mut agent, &ticket).await;
    assert!(process_alive(pid));
    println!(
        "checked: walk-in ticket issued ({:?}) and accepted by the device",
        issued.detail
    );
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_twice_is_carried_out_once_and_answered_twice_alike() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-03").await;
    let carol = operator(&stack, "carol").await;
    let request = carol.request(RequestAction::IssueTicket {
        store: device.0.clone(),
        device: device.1.clone(),
        minutes: 10,
    });
    let first = carol.send(&stack, &request).await;
    assert!(first.ok && first.ticket.is_some(), "{first:?}");
    publish(&stack, &carol.id, &request).await;
    let both = wait_replies(&stack, &carol.id, request.request_id, 2).await;
    assert_eq!(both[0], both[1]);
    let client = stack.pool.get().await.expect("db connection");
    let bookings: i64 = client
        .query_one(
            "SELECT count(*) FROM reservations WHERE store_id = $1 AND device_id = $2",
            &[&device.0.as_str(), &device.1.as_str()],
        )
        .await
        .expect("count bookings")
        .get(0);
    assert_eq!(bookings, 1);
    println!("checked: walk-in request sent twice → one booking, two identical replies");

    // The walk-in ticket starts a session (no agent needed: the scan is published directly);
    // an extension sent twice moves its end once.
    let ticket = first.ticket.clone().expect("ticket");
    let mut scan = Scan {
        sent_at: None,
        signature: None,
        scan_id: ScanId::random(),
        ticket,
        read_at: chrono::Utc::now(),
        offline: None,
    };
    stack.sign_scan_as(&device, &mut scan);
    let scan_topic = topic::device(&device.0, &device.1, DeviceChannel::Scan);
    stack
        .observer
        .publish_raw(&scan_topic, message::encode(&scan))
        .await;
    let (session_id, booked_end) = stack
        .observer
        .wait_event("the session to start", SHORT, |event| match event.kind {
            EventKind::SessionStarted {
                session_id,
                lease_until,
                ..
            } => Some((session_id, lease_until)),
            _ => None,
        })
        .await;
    let extend = carol.request(RequestAction::Extend {
        session_id,
        minutes: 5,
    });
    let extended = carol.send(&stack, &extend).await;
    assert!(extended.ok, "{extended:?}");
    publish(&stack, &carol.id, &extend).await;
    let both = wait_replies(&stack, &carol.id, extend.request_id, 2).await;
    assert_eq!(both[0], both[1]);
    let lease_until: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "SELECT lease_until FROM sessions WHERE session_id = $1",
            &[&session_id.as_uuid()],
        )
        .await
        .expect("the session")
        .get(0);
    assert_eq!(lease_until, booked_end + chrono::Duration::minutes(5));
    println!("checked: extension sent twice → the end moved by 5 minutes once, two identical replies: {:?}", extended.detail);

    // Another operator reusing the id (in a request of its own) gets a refusal, not carol's
    // ticket.
    let dave = operator(&stack, "dave").await;
    let mut reused = request.clone();
    dave.sign(&mut reused);
    let stolen = dave.send(&stack, &reused).await;
    assert!(!stolen.ok && stolen.ticket.is_none(), "{stolen:?}");
    println!(
        "checked: the same id from another operator → {:?}",
        stolen.detail
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_whose_reply_cannot_be_recorded_is_retried_and_applied_once() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-05").await;
    let booking = stack.book_now(&device, 600).await;
    let mut scan = Scan {
        sent_at: None,
        signature: None,
        scan_id: ScanId::random(),
        ticket: booking.ticket.clone(),
        read_at: chrono::Utc::now(),
        offline: None,
    };
    stack.sign_scan_as(&device, &mut scan);
    let scan_topic = topic::device(&device.0, &device.1, DeviceChannel::Scan);
    stack
        .observer
        .publish_raw(&scan_topic, message::encode(&scan))
        .await;
    let (session_id, booked_end) = stack
        .observer
        .wait_event("the session to start", SHORT, |event| match event.kind {
            EventKind::SessionStarted {
                session_id,
                lease_until,
                ..
            } => Some((session_id, lease_until)),
            _ => None,
        })
        .await;
    // The first attempt to record the extension's reply fails the way a lost race does
    // (serialization failure, which management retries); a sequence is not rolled back, so the
    // retry goes through.
    let client = stack.pool.get().await.expect("db connection");
    client
        .batch_execute(
            "CREATE SEQUENCE record_attempts;
             CREATE FUNCTION fail_first_record() RETURNS trigger AS $$
             BEGIN
                 IF NEW.action = 'extend' AND nextval('record_attempts') = 1 THEN
                     RAISE EXCEPTION 'injected failure' USING ERRCODE = '40001';
                 END IF;
                 RETURN NEW;
             END $$ LANGUAGE plpgsql;
             CREATE TRIGGER fail_first_record BEFORE UPDATE ON requests
                 FOR EACH ROW EXECUTE FUNCTION fail_first_record();",
        )
        .await
        .expect("install the failing trigger");
    let alice = operator(&stack, "alice").await;
    let extended = ask(
        &stack,
        &alice,
        RequestAction::Extend {
            session_id,
            minutes: 5,
        },
    )
    .await;
    assert!(extended.ok, "{extended:?}");
    let attempts: i64 = client
        .query_one("SELECT last_value FROM record_attempts", &[])
        .await
        .expect("attempts")
        .get(0);
    assert!(attempts >= 2, "the failure was injected and retried");
    let lease_until: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "SELECT lease_until FROM sessions WHERE session_id = $1",
            &[&session_id.as_uuid()],
        )
        .await
        .expect("the session")
        .get(0);
    assert_eq!(lease_until, booked_end + chrono::Duration::minutes(5));
    stack
        .observer
        .wait_event("the extension event", SHORT, |event| {
            matches!(event.kind, EventKind::SessionExtended { .. }).then_some(())
        })
        .await;
    // Events go out within about a second of their commit: a second one would be here by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let extensions = stack
        .observer
        .events()
        .iter()
        .filter(|event| matches!(event.kind, EventKind::SessionExtended { .. }))
        .count();
    assert_eq!(extensions, 1, "one session_extended event");
    println!(
        "checked: the reply's record failed once, the retry extended once (+5 min): {:?}",
        extended.detail
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_do_not_stop_the_next_one() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-04").await;
    let erin = operator(&stack, "erin").await;
    publish_raw(&stack, &erin.id, b"not json".to_vec()).await;
    publish_raw(&stack, &erin.id, vec![b'{'; 20 * 1024]).await;
    let salvaged = RequestId::random();
    let unknown_action = format!(r#"{{"request_id":"{salvaged}","action":"reboot"}}"#);
    publish_raw(&stack, &erin.id, unknown_action.into_bytes()).await;
    let answered = ask(
        &stack,
        &erin,
        RequestAction::SetService {
            store: device.0.clone(),
            device: device.1.clone(),
            in_service: true,
        },
    )
    .await;
    assert!(answered.ok, "{answered:?}");
    // Requests are handled in order: everything before the answered one was handled too.
    let all = replies(&stack, &erin.id);
    assert_eq!(all.len(), 2, "{all:?}");
    let refused = &all[0];
    assert_eq!(refused.request_id, salvaged);
    assert!(
        !refused.ok && refused.detail.contains("unknown variant `reboot`"),
        "{refused:?}"
    );
    println!(
        "checked: garbage and an oversized payload got no reply, an unknown action with an id got {:?}, the next request was answered: {:?}",
        refused.detail, answered.detail
    );
    stack.shutdown().await;
}
