//! The real `mujin-agent` binary against a real broker, with the test acting as management:
//! commands and their epochs, the retained desired state, warnings and extensions, acks,
//! reported state, the lease, scans from the named pipe, and shutdown.

// Helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use mujin_protocol::message::{
    decode, encode, Availability, CommandAction, Decision, DesiredProgram, DesiredState,
    ProgramStatus, RejectReason, ReportedState, Scan, ScanResult, StopCause,
};
use mujin_protocol::topic::DeviceChannel;
use mujin_protocol::SessionId;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use support::{alive, start, stop, Harness, DEADLINE, SLEEPER, STOP_GRACE_MS};

#[tokio::test]
async fn start_and_stop_commands_run_and_end_the_program() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();

    let ack = harness.command(start(session, 60_000)).await;
    assert!(ack.ok, "{ack:?}");
    let state = harness
        .wait_state(|state| matches!(state.program, ProgramStatus::Running { .. }))
        .await;
    assert!(
        matches!(state.program, ProgramStatus::Running { session_id, .. } if session_id == session)
    );
    let pid = harness.program_pid().await;
    assert!(alive(pid));

    let again = harness.command(start(session, 60_000)).await;
    assert!(again.ok && again.detail == "already running", "{again:?}");
    let other = harness.command(start(SessionId::random(), 60_000)).await;
    assert!(!other.ok && other.detail.contains("busy"), "{other:?}");

    let ack = harness.command(stop(session)).await;
    assert!(ack.ok, "{ack:?}");
    assert!(!alive(pid), "the program still runs after the stop ack");
    let state = harness
        .wait_state(|state| state.program == ProgramStatus::Idle && state.last_exit.is_some())
        .await;
    let exit = state.last_exit.unwrap();
    assert_eq!(
        (exit.session_id, exit.stopped_by),
        (session, StopCause::Command)
    );
    assert_eq!(exit.exit, "signal 15 (SIGTERM)");

    let again = harness.command(stop(session)).await;
    assert!(again.ok && again.detail == "not running", "{again:?}");
    harness.shutdown().await;
}

#[tokio::test]
async fn the_lease_stops_the_program_without_a_stop_command() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();
    let started = Instant::now();
    let ack = harness.command(start(session, 1_500)).await;
    assert!(ack.ok, "{ack:?}");
    let pid = harness.program_pid().await;

    let state = harness.wait_state(|state| state.last_exit.is_some()).await;
    let exit = state.last_exit.unwrap();
    assert_eq!(exit.stopped_by, StopCause::LeaseExpired);
    assert_eq!(state.program, ProgramStatus::Idle);
    assert!(started.elapsed() >= Duration::from_millis(1_400));
    assert!(!alive(pid));
    harness.wait_screen(|line| line == "LEASE ENDED").await;

    let late = harness.command(start(SessionId::random(), 0)).await;
    assert!(!late.ok && late.detail == "lease already ended", "{late:?}");
    harness.shutdown().await;
}

#[tokio::test]
async fn the_lease_holds_with_the_broker_gone() {
    let mut harness = Harness::start(SLEEPER).await;
    let ack = harness.command(start(SessionId::random(), 1_500)).await;
    assert!(ack.ok, "{ack:?}");
    let pid = harness.program_pid().await;
    if let Some(broker) = harness.broker.take() {
        broker.shutdown().await;
    }
    assert!(alive(pid));
    harness.wait_screen(|line| line == "LEASE ENDED").await;
    assert!(!alive(pid));
    harness.shutdown().await;
}

#[tokio::test]
async fn lines_on_the_pipe_become_scans_and_results_reach_the_screen() {
    let mut harness = Harness::start(SLEEPER).await;
    let pipe = harness.scan_pipe();
    // Opening for writing blocks until the agent has the pipe open for reading.
    tokio::task::spawn_blocking(move || std::fs::write(pipe, b"\n  MJ1:TEST-TICKET  \n"))
        .await
        .unwrap()
        .unwrap();

    let deadline = Instant::now() + DEADLINE;
    let scan: Scan = loop {
        let seen = harness.next_seen(deadline).await;
        if seen.channel == DeviceChannel::Scan {
            break decode(&seen.payload).unwrap();
        }
    };
    assert_eq!(scan.ticket, "MJ1:TEST-TICKET");
    let shown = format!("SCANNED {}", scan.scan_id);
    harness.wait_screen(|line| line == shown).await;

    let result = ScanResult {
        scan_id: scan.scan_id,
        decision: Decision::Rejected {
            reason: RejectReason::TooEarly,
            detail: String::new(),
        },
    };
    harness
        .publish(DeviceChannel::ScanResult, b"not json".to_vec())
        .await;
    harness
        .publish(DeviceChannel::ScanResult, encode(&result))
        .await;
    harness
        .wait_screen(|line| {
            line == "REFUSED (too_early): Too early: your booking has not started yet."
        })
        .await;
    harness.shutdown().await;
}

#[tokio::test]
async fn malformed_commands_are_ignored() {
    let mut harness = Harness::start(SLEEPER).await;
    for garbage in [&b"{not json"[..], b"{}", &[0xff; 100], b"\"start\""] {
        harness
            .publish(DeviceChannel::Command, garbage.to_vec())
            .await;
    }
    let ack = harness.command(stop(SessionId::random())).await;
    assert!(ack.ok && ack.detail == "not running", "{ack:?}");
    assert!(
        harness.agent.try_wait().unwrap().is_none(),
        "the agent exited"
    );
    harness.shutdown().await;
}

#[tokio::test]
async fn a_program_ignoring_sigterm_is_killed_after_the_grace() {
    let mut harness = Harness::start("trap '' TERM; echo $$ > \"$PIDFILE\"; exec sleep 60").await;
    let session = SessionId::random();
    assert!(harness.command(start(session, 60_000)).await.ok);
    let pid = harness.program_pid().await;

    let asked = Instant::now();
    let ack = harness.command(stop(session)).await;
    assert!(ack.ok, "{ack:?}");
    assert!(asked.elapsed() >= Duration::from_millis(STOP_GRACE_MS));
    assert!(!alive(pid));
    let state = harness.wait_state(|state| state.last_exit.is_some()).await;
    assert_eq!(state.last_exit.unwrap().exit, "signal 9 (SIGKILL)");
    harness.shutdown().await;
}

#[tokio::test]
async fn sigterm_stops_the_program_and_reports_offline() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();
    assert!(harness.command(start(session, 60_000)).await.ok);
    let pid = harness.program_pid().await;

    let agent_pid = Pid::from_raw(i32::try_from(harness.agent.id().unwrap()).unwrap());
    kill(agent_pid, Signal::SIGTERM).unwrap();
    let state = harness
        .wait_state(|state| state.availability == Availability::Offline)
        .await;
    let exit = state
        .last_exit
        .expect("the offline state tells how the program ended");
    assert_eq!(
        (exit.session_id, exit.stopped_by),
        (session, StopCause::AgentShutdown)
    );
    assert!(!alive(pid));
    let status = tokio::time::timeout(DEADLINE, harness.agent.wait())
        .await
        .expect("the agent exits in time")
        .unwrap();
    assert!(status.success(), "{status}");
    harness.shutdown().await;
}

#[tokio::test]
async fn a_program_that_ends_by_itself_is_reported() {
    let mut harness = Harness::start("exit 3").await;
    let session = SessionId::random();
    assert!(harness.command(start(session, 60_000)).await.ok);
    let state = harness.wait_state(|state| state.last_exit.is_some()).await;
    assert_eq!(state.program, ProgramStatus::Idle);
    let exit = state.last_exit.unwrap();
    assert_eq!(
        (exit.session_id, exit.stopped_by, exit.exit.as_str()),
        (session, StopCause::ProgramExited, "exit code 3")
    );
    harness.shutdown().await;
}

#[tokio::test]
async fn a_program_that_cannot_start_gets_a_refusing_ack() {
    let mut harness = Harness::start_with(&["/nonexistent/mujin-program"]).await;
    let ack = harness.command(start(SessionId::random(), 60_000)).await;
    assert!(!ack.ok && ack.detail.contains("cannot start"), "{ack:?}");
    let ack = harness.command(stop(SessionId::random())).await;
    assert!(ack.ok, "{ack:?}");
    harness.shutdown().await;
}

fn running(session_id: SessionId, remaining_ms: u64) -> DesiredProgram {
    DesiredProgram::Running {
        session_id,
        lease_until: Utc::now() + chrono::Duration::seconds(60),
        remaining_ms,
    }
}

fn lease_until_of(state: &ReportedState) -> DateTime<Utc> {
    match state.program {
        ProgramStatus::Running { lease_until, .. } => lease_until,
        ProgramStatus::Idle => panic!("not running: {state:?}"),
    }
}

/// The time of day the agent shows for `at`.
fn clock_time(at: DateTime<Utc>) -> String {
    at.round_subsecs(0).format("%H:%M:%SZ").to_string()
}

#[tokio::test]
async fn a_start_older_than_the_newest_epoch_is_refused_as_stale() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();
    assert!(harness.command_at(5, start(session, 60_000)).await.ok);
    let pid = harness.program_pid().await;
    let ack = harness.command_at(6, stop(session)).await;
    assert!(ack.ok, "{ack:?}");
    assert!(!alive(pid));
    harness
        .wait_state(|state| state.program == ProgramStatus::Idle && state.last_exit.is_some())
        .await;
    std::fs::remove_file(harness.pidfile()).unwrap();

    // The start, retried late by management with a new command id but its old epoch.
    let late = harness.command_at(5, start(session, 60_000)).await;
    assert!(!late.ok, "{late:?}");
    assert_eq!(late.detail, "stale: epoch 5 is older than 6");
    // Not started: the next command (same epoch as the newest) finds nothing running.
    let ack = harness.command_at(6, stop(session)).await;
    assert!(ack.ok && ack.detail == "not running", "{ack:?}");
    assert!(!harness.pidfile().exists());
    harness.shutdown().await;
}

#[tokio::test]
async fn a_retained_desired_running_state_resumes_the_session_on_connect() {
    let session = SessionId::random();
    let desired = DesiredState {
        epoch: 3,
        issued_at: Utc::now(),
        store: None,
        device: None,
        program: running(session, 60_000),
        signature: None,
    };
    let mut harness = Harness::start_after_desired(SLEEPER, &desired).await;
    let state = harness
        .wait_state(|state| matches!(state.program, ProgramStatus::Running { .. }))
        .await;
    assert!(
        matches!(state.program, ProgramStatus::Running { session_id, .. } if session_id == session)
    );
    assert!(alive(harness.program_pid().await));

    // The start command of the same epoch, delivered after the desired state, changes nothing.
    let ack = harness.command_at(3, start(session, 60_000)).await;
    assert!(ack.ok && ack.detail == "already running", "{ack:?}");
    harness.shutdown().await;
}

#[tokio::test]
async fn desired_idle_stops_the_running_program() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();
    assert!(harness.command(start(session, 60_000)).await.ok);
    let pid = harness.program_pid().await;

    harness.desire(DesiredProgram::Idle).await;
    let state = harness.wait_state(|state| state.last_exit.is_some()).await;
    assert_eq!(state.program, ProgramStatus::Idle);
    let exit = state.last_exit.unwrap();
    assert_eq!(
        (exit.session_id, exit.stopped_by),
        (session, StopCause::DesiredState)
    );
    assert!(!alive(pid));
    harness.shutdown().await;
}

#[tokio::test]
async fn a_session_that_ended_here_is_not_restarted_by_a_stale_desired_state() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();
    let desired = harness.desire(running(session, 1_000)).await;
    let pid = harness.program_pid().await;
    let state = harness.wait_state(|state| state.last_exit.is_some()).await;
    assert_eq!(state.last_exit.unwrap().stopped_by, StopCause::LeaseExpired);
    assert!(!alive(pid));
    std::fs::remove_file(harness.pidfile()).unwrap();

    // Management has not caught up yet: the same desired state comes again (as on a reconnect).
    harness.publish_desired(&desired).await;
    let ack = harness
        .command_at(
            desired.epoch,
            CommandAction::Warn {
                session_id: session,
                lease_until: Utc::now() + chrono::Duration::seconds(60),
                remaining_ms: 60_000,
            },
        )
        .await;
    assert!(!ack.ok && ack.detail == "not running", "{ack:?}");
    // The desired state and the command travel on different topics: allow a moment for order.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !harness.pidfile().exists(),
        "the ended session was restarted"
    );
    while let Some(seen) = harness.backlog.pop_front() {
        if seen.channel == DeviceChannel::State {
            let state: ReportedState = decode(&seen.payload).unwrap();
            assert_eq!(state.program, ProgramStatus::Idle);
        }
    }
    harness.shutdown().await;
}

#[tokio::test]
async fn warn_shows_the_time_left_and_extend_moves_the_lease() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();
    let started = Instant::now();
    assert!(harness.command(start(session, 2_000)).await.ok);
    let pid = harness.program_pid().await;
    let first_end = lease_until_of(
        &harness
            .wait_state(|state| matches!(state.program, ProgramStatus::Running { .. }))
            .await,
    );

    let lease_until = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(300);
    let warn = CommandAction::Warn {
        session_id: session,
        lease_until,
        remaining_ms: 300_000,
    };
    let ack = harness.command(warn).await;
    assert!(ack.ok && ack.detail == "warned", "{ack:?}");
    let expected = format!(
        "WARNING: your session ends in 5 min (at {})",
        clock_time(lease_until)
    );
    harness.wait_screen(|line| line == expected).await;
    let other = CommandAction::Warn {
        session_id: SessionId::random(),
        lease_until,
        remaining_ms: 300_000,
    };
    let ack = harness.command(other).await;
    assert!(!ack.ok && ack.detail == "not running", "{ack:?}");

    let extend_sent = Instant::now();
    let extend = CommandAction::Extend {
        session_id: session,
        lease_until: Utc::now() + chrono::Duration::seconds(60),
        remaining_ms: 3_000,
    };
    let ack = harness.command(extend).await;
    assert!(
        ack.ok && ack.detail.starts_with("extended until "),
        "{ack:?}"
    );
    harness
        .wait_screen(|line| line.starts_with("EXTENDED until "))
        .await;
    let state = harness
        .wait_state(|state| matches!(state.program, ProgramStatus::Running { .. }))
        .await;
    assert!(lease_until_of(&state) > first_end + chrono::Duration::milliseconds(500));

    // Past the first lease's end the program still runs, and it stops at the new one.
    while started.elapsed() < Duration::from_millis(2_300) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(alive(pid), "the program stopped at the first lease's end");
    let state = harness.wait_state(|state| state.last_exit.is_some()).await;
    assert_eq!(state.last_exit.unwrap().stopped_by, StopCause::LeaseExpired);
    assert!(extend_sent.elapsed() >= Duration::from_millis(2_900));
    assert!(!alive(pid));
    harness.shutdown().await;
}
