//! Offline start against the real broker, PostgreSQL, management and agent processes: a store
//! that allows it lets a device start a provisional session when management is away, which
//! management records under the device's own session id when it returns; a ticket management
//! refuses is flagged as a conflict; a store that does not allow it waits for management.

use std::time::Duration;

use chrono::Utc;
use mujin_management::booking::{self, StoreSettingsChange};
use mujin_protocol::message::{
    self, Decision, EventKind, OfflineStart, ProgramStatus, RejectReason, ReportedState, Scan,
    ScanResult,
};
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::trust::TrustList;
use mujin_protocol::{DeviceId, ScanId, SessionId, StoreId, TicketId};
use mujin_tests::stack::Stack;
use mujin_tests::wait_for;

const SHORT: Duration = Duration::from_secs(15);

async fn allow_offline_start(stack: &Stack, store: &StoreId) {
    let change = StoreSettingsChange {
        offline_start: Some(true),
        ..StoreSettingsChange::default()
    };
    booking::update_store_settings(&stack.pool, store, change)
        .await
        .expect("store settings");
}

/// Waits for the newest trust list of `store` on the wire that satisfies `check`.
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

/// The newest state the device reported.
fn newest_state(stack: &Stack, (store, device): &(StoreId, DeviceId)) -> Option<ReportedState> {
    let wanted = Topic::device(store, device, DeviceChannel::State);
    stack
        .observer
        .recorded()
        .into_iter()
        .rev()
        .find(|recorded| recorded.topic == wanted)
        .and_then(|recorded| message::decode(&recorded.payload).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_started_offline_is_recorded_under_the_device_id_when_management_returns() {
    let mut stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    allow_offline_start(&stack, &device.0).await;
    let booking = stack.book_now(&device, 12).await;
    wait_trust_list(
        &stack,
        &device.0,
        "a trust list allowing offline starts",
        |list| list.offline_start && !list.keys.is_empty(),
    )
    .await;

    stack.stop_management().await;
    let mut agent = stack.agent(&device);
    agent.scan(&booking.ticket).await;
    agent.wait_screen("STARTED OFFLINE", SHORT).await;
    let pid = agent.program_pid(SHORT).await;
    let provisional = wait_for("a provisional state", SHORT, || {
        let found = match newest_state(&stack, &device).map(|state| state.program) {
            Some(ProgramStatus::Running {
                session_id,
                provisional: true,
                ..
            }) => Some(session_id),
            _ => None,
        };
        async move { found }
    })
    .await;
    println!("management away: the device started provisional session {provisional}");

    stack.start_management();
    stack.wait_for_management().await;
    let recorded = stack
        .observer
        .wait_event("the offline session recorded", SHORT, |event| {
            match event.kind {
                EventKind::SessionStarted {
                    session_id,
                    offline: true,
                    ..
                } => Some(session_id),
                _ => None,
            }
        })
        .await;
    assert_eq!(
        recorded, provisional,
        "management kept the device's session id"
    );
    wait_for("the session confirmed on the device", SHORT, || {
        let confirmed = matches!(
            newest_state(&stack, &device).map(|state| state.program),
            Some(ProgramStatus::Running { session_id, provisional: false, .. }) if session_id == provisional
        )
        .then_some(());
        async move { confirmed }
    })
    .await;
    assert!(
        mujin_tests::process_alive(pid),
        "confirming did not restart the program"
    );
    let row = stack.session_row(&booking).await.expect("session row");
    assert!(
        row.started_at < Utc::now() - chrono::Duration::seconds(1),
        "start time is the device's"
    );

    // It still stops at the end of the booking, and the ticket is now refused offline too.
    wait_for("the program stopped at the end", SHORT, || {
        let gone = (!mujin_tests::process_alive(pid)).then_some(());
        async move { gone }
    })
    .await;
    let ended = stack
        .observer
        .wait_event("the session ended", SHORT, |event| match event.kind {
            EventKind::SessionEnded { session_id, .. } if session_id == provisional => Some(()),
            _ => None,
        });
    ended.await;
    let ticket_id = booking.claims.ticket_id;
    wait_trust_list(
        &stack,
        &device.0,
        "the used ticket on the trust list",
        |list| {
            list.refused_tickets.iter().any(|refused| {
                refused.ticket_id == ticket_id && refused.reason == RejectReason::AlreadyUsed
            })
        },
    )
    .await;
    assert_eq!(stack.session_count(&booking).await, 1);
    println!("checked: recorded with the device's id and start, program not restarted, stopped at the end, ticket listed as used");
    agent.stop().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_start_on_a_used_ticket_is_refused_and_flagged_as_a_conflict() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-02").await;
    allow_offline_start(&stack, &device.0).await;
    let booking = stack.book_now(&device, 30).await;
    let mut agent = stack.agent(&device);
    let (first, _pid) = stack.start_session(&mut agent, &booking.ticket).await;
    agent.stop().await;

    // A device with a stale trust list reports an offline start on the same ticket.
    let (store, dev) = &device;
    let offline_session = SessionId::random();
    let mut scan = Scan {
        sent_at: None,
        signature: None,
        scan_id: ScanId::random(),
        ticket: booking.ticket.clone(),
        read_at: Utc::now(),
        offline: Some(OfflineStart {
            session_id: offline_session,
            started_at: Utc::now(),
            lease_until: booking.claims.not_after,
        }),
    };
    stack.sign_scan_as(&device, &mut scan);
    stack
        .observer
        .publish_raw(
            &topic::device(store, dev, DeviceChannel::Scan),
            message::encode(&scan),
        )
        .await;
    let answer = stack
        .observer
        .wait_for("the answer", SHORT, |topic, payload| match topic {
            Topic::Device {
                channel: DeviceChannel::ScanResult,
                ..
            } => message::decode::<ScanResult>(payload)
                .ok()
                .filter(|result| result.scan_id == scan.scan_id),
            _ => None,
        })
        .await;
    assert!(matches!(
        answer.decision,
        Decision::Rejected {
            reason: RejectReason::AlreadyUsed,
            ..
        }
    ));
    let detail = stack
        .observer
        .wait_event("the conflict", SHORT, |event| match &event.kind {
            EventKind::SessionConflict { session_id, detail } if *session_id == offline_session => {
                Some(detail.clone())
            }
            _ => None,
        })
        .await;
    assert!(
        detail.contains("offline") && detail.contains("already_used"),
        "{detail}"
    );
    assert_eq!(
        stack.session_count(&booking).await,
        1,
        "still one session: {first}"
    );
    println!("checked: refused as already used, conflict flagged: {detail}");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_offline_start_a_scan_waits_for_management_and_is_answered_once_it_returns() {
    let mut stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-03").await;
    let booking = stack.book_now(&device, 30).await;
    wait_trust_list(
        &stack,
        &device.0,
        "a trust list without offline starts",
        |list| !list.offline_start,
    )
    .await;
    stack.stop_management().await;
    let mut agent = stack.agent(&device);
    agent.scan(&booking.ticket).await;
    agent.wait_screen("NOT ANSWERING", SHORT).await;
    assert!(
        !agent.screen().iter().any(|line| line.contains("STARTED")),
        "nothing starts while management is away"
    );
    // Scans published while no worker was subscribed are lost by the broker; the agent's resends
    // bring this one to management once it is back.
    stack.start_management();
    stack.wait_for_management().await;
    agent.wait_screen("ACCEPTED", Duration::from_secs(20)).await;
    let ticket_id: TicketId = booking.claims.ticket_id;
    stack
        .observer
        .wait_event("the session", SHORT, |event| match event.kind {
            EventKind::SessionStarted {
                ticket_id: t,
                offline: false,
                ..
            } if t == ticket_id => Some(()),
            _ => None,
        })
        .await;
    assert_eq!(stack.session_count(&booking).await, 1);
    println!("checked: no offline start when the store forbids it; the resent scan answered after management returned");
    agent.stop().await;
    stack.shutdown().await;
}
