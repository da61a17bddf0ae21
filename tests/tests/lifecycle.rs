//! The session lifecycle around the stop timer, end to end: the warning before the end, operator
//! actions (force stop, extend, out of service) and no-shows — over the real broker process,
//! PostgreSQL, management and `mujin-agent` processes.

use std::time::Duration;

use chrono::Utc;
use mujin_management::actions::{self, ExtendError, NewEnd, SessionError};
use mujin_management::booking;
use mujin_protocol::message::{EndReason, EventKind, RejectReason};
use mujin_protocol::{DeviceId, SessionId, StoreId};
use mujin_tests::stack::Stack;
use mujin_tests::{process_alive, wait_for};

const SHORT: Duration = Duration::from_secs(10);
const OPERATOR: &str = "lifecycle-test";

/// Waits until a command of `action` for the session reached one of the `statuses`.
async fn command_settled(
    stack: &Stack,
    session_id: SessionId,
    action: &str,
    statuses: &[&str],
) -> String {
    wait_for(
        &format!("the {action} command to be {statuses:?}"),
        SHORT,
        || async {
            stack
                .commands_of(session_id)
                .await
                .into_iter()
                .find(|(a, s, _)| a == action && statuses.contains(&s.as_str()))
                .map(|(_, status, _)| status)
        },
    )
    .await
}

/// Waits for the session's `session_ended` event: (ended_at, reason).
async fn session_ended(
    stack: &Stack,
    session_id: SessionId,
    timeout: Duration,
) -> (chrono::DateTime<Utc>, EndReason) {
    stack
        .observer
        .wait_event("the session to end", timeout, |event| match event.kind {
            EventKind::SessionEnded {
                session_id: s,
                ended_at,
                reason,
                ..
            } if s == session_id => Some((ended_at, reason)),
            _ => None,
        })
        .await
}

async fn program_stopped(pid: i32) {
    wait_for("the program to stop", SHORT, || async {
        (!process_alive(pid)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_is_warned_before_the_end_and_an_operator_can_stop_the_session() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    // One minute of warning on a 63-second booking: the warning is due 3 s after the start.
    stack.set_store_timing(&device.0, 1, 600).await;
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 63).await;
    let (session_id, pid) = stack.start_session(&mut agent, &booking.ticket).await;

    let warned_until = stack
        .observer
        .wait_event("the warning", SHORT, |event| match event.kind {
            EventKind::SessionWarned {
                session_id: s,
                lease_until,
            } if s == session_id => Some(lease_until),
            _ => None,
        })
        .await;
    assert_eq!(warned_until, booking.claims.not_after);
    let warn_status =
        command_settled(&stack, session_id, "warn", &["acknowledged", "failed"]).await;
    let shown = agent
        .screen()
        .into_iter()
        .find(|line| line.contains("WARNING"));
    println!("checked: session_warned for the booked end, warn command {warn_status}, device showed {shown:?}");

    let stopped = actions::force_stop(&stack.pool, session_id, OPERATOR, Utc::now())
        .await
        .expect("force stop");
    assert_eq!(stopped.session_id, session_id);
    let (ended_at, reason) = session_ended(&stack, session_id, SHORT).await;
    assert_eq!(reason, EndReason::Forced);
    assert!(ended_at < booking.claims.not_after - chrono::Duration::seconds(30));
    program_stopped(pid).await;
    command_settled(&stack, session_id, "stop", &["acknowledged"]).await;
    let again = actions::force_stop(&stack.pool, session_id, OPERATOR, Utc::now()).await;
    assert!(
        matches!(again, Err(SessionError::AlreadyEnded { .. })),
        "{again:?}"
    );
    println!("checked: force stop ended the session as forced, program stopped, stop acknowledged; a second stop is refused: {}", again.unwrap_err());
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_is_refused_into_the_next_booking_and_otherwise_moves_the_stop() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-02").await;
    stack.set_store_timing(&device.0, 0, 600).await;
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 5).await;
    let old_end = booking.claims.not_after;
    let next = booking::reserve(
        &stack.pool,
        &stack.keys.signing,
        &device.0,
        &device.1,
        old_end,
        old_end + chrono::Duration::seconds(5),
        Utc::now(),
    )
    .await
    .expect("the next booking, right after the first");
    let (session_id, pid) = stack.start_session(&mut agent, &booking.ticket).await;

    let three_more = NewEnd::AfterCurrent(chrono::Duration::seconds(3));
    let refused = actions::extend(&stack.pool, session_id, three_more, OPERATOR, Utc::now()).await;
    match &refused {
        Err(ExtendError::DeviceBooked { next_start, .. }) => {
            assert_eq!(*next_start, Some(old_end))
        }
        other => panic!("expected DeviceBooked, got {other:?}"),
    }
    println!(
        "checked: refused while the next booking starts at the end: {}",
        refused.unwrap_err()
    );

    actions::cancel(&stack.pool, next.claims.ticket_id, OPERATOR, Utc::now())
        .await
        .expect("cancel the next booking");
    let extension = actions::extend(&stack.pool, session_id, three_more, OPERATOR, Utc::now())
        .await
        .expect("extend once the device is free");
    let new_end = old_end + chrono::Duration::seconds(3);
    assert_eq!(extension.lease_until, new_end);
    let recorded = stack
        .observer
        .wait_event("the extension event", SHORT, |event| match event.kind {
            EventKind::SessionExtended {
                session_id: s,
                previous_lease_until,
                lease_until,
            } if s == session_id => Some((previous_lease_until, lease_until)),
            _ => None,
        })
        .await;
    assert_eq!(recorded, (old_end, new_end));
    command_settled(&stack, session_id, "extend", &["acknowledged"]).await;

    // Past the old end the program still runs: neither management nor the device's own lease
    // stopped it.
    let past_old_end = (old_end + chrono::Duration::milliseconds(1500) - Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(past_old_end).await;
    assert!(process_alive(pid), "the program runs past the old end");
    let (ended_at, reason) = session_ended(&stack, session_id, SHORT).await;
    assert_eq!(reason, EndReason::BookingEnded);
    let lateness = ended_at - new_end;
    assert!(
        lateness >= chrono::Duration::zero() && lateness < chrono::Duration::seconds(2),
        "ended {lateness} after the new end"
    );
    program_stopped(pid).await;
    println!("checked: extended by 3 s after cancelling the next booking; ran past the old end, ended {lateness} after the new end");
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_out_of_service_refuses_scans_and_lists_the_bookings_ahead() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-03").await;
    let mut agent = stack.agent(&device);
    let later = stack
        .book(
            &device,
            chrono::Duration::hours(1),
            chrono::Duration::minutes(30),
        )
        .await
        .expect("a booking later today");
    let now_booking = stack.book_now(&device, 20).await;

    let change = actions::set_in_service(
        &stack.pool,
        &device.0,
        &device.1,
        false,
        OPERATOR,
        Utc::now(),
    )
    .await
    .expect("take the device out of service");
    assert!(change.changed);
    let listed = stack
        .observer
        .wait_event("the service event", SHORT, |event| match &event.kind {
            EventKind::DeviceService {
                in_service: false,
                affected_tickets,
            } => Some(affected_tickets.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        listed,
        vec![now_booking.claims.ticket_id, later.claims.ticket_id]
    );
    agent.scan(&now_booking.ticket).await;
    let refusal = RejectReason::OutOfService;
    agent
        .wait_screen(&format!("REFUSED ({refusal})"), SHORT)
        .await;
    stack
        .observer
        .wait_event("the out_of_service refusal", SHORT, |event| {
            match event.kind {
                EventKind::ScanRejected { reason, .. } if reason == refusal => Some(()),
                _ => None,
            }
        })
        .await;
    println!("checked: out of service → event lists {listed:?}, the scan is refused ({refusal})");

    actions::set_in_service(
        &stack.pool,
        &device.0,
        &device.1,
        true,
        OPERATOR,
        Utc::now(),
    )
    .await
    .expect("back in service");
    let (_, pid) = stack.start_session(&mut agent, &now_booking.ticket).await;
    assert!(process_alive(pid));
    println!("checked: back in service, the same ticket starts the session");
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_nobody_scans_becomes_a_no_show_and_frees_the_device() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-04").await;
    stack.set_store_timing(&device.0, 0, 1).await;
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 30).await;
    let ticket_id = booking.claims.ticket_id;
    let at = stack
        .observer
        .wait_event("the no-show", SHORT, |event| match event.kind {
            EventKind::ReservationNoShow { ticket_id: t, .. } if t == ticket_id => Some(event.at),
            _ => None,
        })
        .await;
    let after_start = at - booking.claims.not_before;
    assert!(
        after_start >= chrono::Duration::seconds(1) && after_start < chrono::Duration::seconds(5),
        "no-show {after_start} after the start"
    );

    // The rest of the window is free: booked again, and the new ticket works.
    let (store, dev): &(StoreId, DeviceId) = &device;
    let again = booking::reserve(
        &stack.pool,
        &stack.keys.signing,
        store,
        dev,
        Utc::now(),
        booking.claims.not_after,
        Utc::now(),
    )
    .await
    .expect("the freed window can be booked again");
    agent.scan(&booking.ticket).await;
    agent
        .wait_screen(&format!("REFUSED ({})", RejectReason::Cancelled), SHORT)
        .await;
    let (_, pid) = stack.start_session(&mut agent, &again.ticket).await;
    assert!(process_alive(pid));
    println!("checked: no-show {after_start} after the start; the old ticket is refused (cancelled), the window booked again and started");
    agent.stop().await;
    stack.shutdown().await;
}

/// A stack whose management is stopped (the test runs the no-show timer's passes itself), and
/// one booking nobody scans on `device` of a store with a second of grace: the stack, the
/// booking's ticket and when it is due as a no-show.
async fn a_booking_due_in_a_second(
    device: &str,
) -> (Stack, mujin_protocol::TicketId, chrono::DateTime<Utc>) {
    let mut stack = Stack::start().await;
    let device = stack.add_device("shibuya", device).await;
    stack.stop_management().await;
    stack.set_store_timing(&device.0, 0, 1).await;
    let booking = stack.book_now(&device, 60).await;
    let due = booking.claims.not_before + chrono::Duration::seconds(1);
    (stack, booking.claims.ticket_id, due)
}

/// Between its full looks, a pass of the no-show timer looks only at the bookings whose no-show
/// moment came since the last pass; what it cannot see there (here: a booking due long before
/// the window, as after a store's grace was shortened) the next full look gives up.
#[tokio::test]
async fn a_no_show_outside_the_passes_window_is_given_up_by_the_next_full_look() {
    use mujin_management::lifecycle::{run_due, Look};

    let (stack, ticket_id, due) = a_booking_due_in_a_second("pc-05").await;
    let later = due + chrono::Duration::seconds(30);

    let since = run_due(
        &stack.pool,
        later,
        Look::Since(later - chrono::Duration::seconds(5)),
    )
    .await
    .expect("a pass");
    assert_eq!(since.no_shows, 0, "due 30 s before the window");
    let full = run_due(&stack.pool, later, Look::Full)
        .await
        .expect("a full look");
    assert_eq!(full.no_shows, 1);
    let in_window = run_due(
        &stack.pool,
        later,
        Look::Since(due - chrono::Duration::seconds(1)),
    )
    .await
    .expect("a pass");
    assert_eq!(in_window.no_shows, 0, "given up once");
    let reason: Option<String> = stack
        .pool
        .get()
        .await
        .expect("connection")
        .query_one(
            "SELECT cancel_reason FROM reservations WHERE ticket_id = $1",
            &[&ticket_id.as_uuid()],
        )
        .await
        .expect("the booking")
        .get(0);
    assert_eq!(reason.as_deref(), Some("no_show"));
    stack.shutdown().await;
}

/// A pass whose window holds the booking's no-show moment gives it up.
#[tokio::test]
async fn a_pass_gives_up_the_no_shows_whose_moment_came_since_the_last_one() {
    use mujin_management::lifecycle::{run_due, Look};

    let (stack, _, due) = a_booking_due_in_a_second("pc-06").await;

    let early = run_due(
        &stack.pool,
        due - chrono::Duration::milliseconds(1),
        Look::Since(due - chrono::Duration::seconds(2)),
    )
    .await
    .expect("a pass");
    assert_eq!(early.no_shows, 0, "not due yet");
    let pass = run_due(
        &stack.pool,
        due,
        Look::Since(due - chrono::Duration::seconds(2)),
    )
    .await
    .expect("a pass");
    assert_eq!(pass.no_shows, 1);
    stack.shutdown().await;
}
