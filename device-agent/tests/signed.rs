//! The real `mujin-agent` binary given management's command key: commands, desired states and
//! trust lists not signed with it, or not meant for this device, or expired, are refused.

// Helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use chrono::Utc;
use mujin_protocol::message::{encode, DesiredProgram, DesiredState};
use mujin_protocol::signed::sign_command;
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::topic::DeviceChannel;
use mujin_protocol::{DeviceId, KeyId, SessionId};
use rumqttc::QoS;

use support::{command_key, start, stop, Harness, SLEEPER};

#[tokio::test]
async fn forged_misdirected_and_expired_commands_are_refused_and_start_nothing() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();

    let unsigned = harness.unsigned_command(1, start(session, 60_000));
    let ack = harness.send_command(&unsigned).await;
    assert_eq!(
        (ack.ok, ack.detail.as_str()),
        (false, "rejected: bad signature")
    );

    let mut forged = harness.unsigned_command(1, start(session, 60_000));
    let forger = SigningKey::from_seed(KeyId::parse("c1").unwrap(), &[0x11; 32]).unwrap();
    sign_command(&forger, &mut forged);
    let ack = harness.send_command(&forged).await;
    assert_eq!(
        (ack.ok, ack.detail.as_str()),
        (false, "rejected: bad signature")
    );

    let mut elsewhere = harness.unsigned_command(1, start(session, 60_000));
    elsewhere.device = Some(DeviceId::parse("pc-02").unwrap());
    sign_command(&command_key(), &mut elsewhere);
    let ack = harness.send_command(&elsewhere).await;
    assert_eq!(
        (ack.ok, ack.detail.as_str()),
        (false, "rejected: for another device")
    );

    let mut expired = harness.unsigned_command(1, start(session, 60_000));
    expired.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
    sign_command(&command_key(), &mut expired);
    let ack = harness.send_command(&expired).await;
    assert_eq!((ack.ok, ack.detail.as_str()), (false, "rejected: expired"));

    assert!(
        !harness.pidfile().exists(),
        "a refused command started the program"
    );
    // A refused command recorded no epoch and no answer: the signed one still runs.
    let ack = harness.command_at(1, start(session, 60_000)).await;
    assert!(ack.ok && ack.detail == "started", "{ack:?}");
    harness.program_pid().await;
    assert!(harness.command(stop(session)).await.ok);
    harness.shutdown().await;
}

#[tokio::test]
async fn an_unsigned_desired_state_is_ignored() {
    let mut harness = Harness::start(SLEEPER).await;
    let session = SessionId::random();
    let desired = DesiredState {
        epoch: 1,
        issued_at: Utc::now(),
        store: Some(harness.store.clone()),
        device: Some(harness.device.clone()),
        program: DesiredProgram::Running {
            session_id: session,
            lease_until: Utc::now() + chrono::Duration::minutes(1),
            remaining_ms: 60_000,
        },
        signature: None,
    };
    harness
        .management
        .publish(
            harness.topic(DeviceChannel::Desired),
            QoS::AtLeastOnce,
            true,
            encode(&desired),
        )
        .await
        .unwrap();
    // Published after it on the same connection, so answered after it was handled.
    let ack = harness.command(stop(SessionId::random())).await;
    assert!(ack.ok, "{ack:?}");
    assert!(
        !harness.pidfile().exists(),
        "an unsigned desired state started the program"
    );
    harness.shutdown().await;
}
