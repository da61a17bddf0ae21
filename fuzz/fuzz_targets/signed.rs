//! Fuzzes management's signatures: a payload decoded as a command, a desired state and a trust
//! list goes through `verify_command` / `verify_desired` / `verify_trust_list` (with the
//! vectors' command key, for device `shibuya/pc-01`), and the same bytes as text through
//! `parse_public_key`. Nothing panics; what verifies is for this device (or store), unexpired,
//! signed exactly as signing it again gives, still verifies after a trip over the wire and no
//! longer verifies once a signed field changes.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use mujin_fuzz::command_key;
use mujin_protocol::message::{decode, encode, Command, DesiredState};
use mujin_protocol::signed::{
    parse_public_key, public_key_text, sign_command, sign_desired, sign_trust_list, verify_command,
    verify_desired, verify_trust_list, VerifyError,
};
use mujin_protocol::ticket::PublicKey;
use mujin_protocol::trust::TrustList;
use mujin_protocol::{DeviceId, StoreId};

/// Inside the expiry of the vectors' start command.
const NOW_UNIX: i64 = 1_800_000_010;

struct Target {
    key: PublicKey,
    store: StoreId,
    device: DeviceId,
    now: DateTime<Utc>,
}

fuzz_target!(|payload: &[u8]| {
    let target = Target {
        key: command_key().public_key(),
        store: StoreId::parse("shibuya").expect("a valid store id"),
        device: DeviceId::parse("pc-01").expect("a valid device id"),
        now: DateTime::from_timestamp(NOW_UNIX, 0).expect("a representable time"),
    };
    if let Ok(command) = decode::<Command>(payload) {
        check_command(&target, &command);
    }
    if let Ok(desired) = decode::<DesiredState>(payload) {
        check_desired(&target, &desired);
    }
    if let Ok(list) = decode::<TrustList>(payload) {
        check_trust_list(&target, &list);
    }
    check_public_key_text(&String::from_utf8_lossy(payload));
});

fn check_command(target: &Target, command: &Command) {
    let verify = |command: &Command| {
        verify_command(
            &target.key,
            command,
            &target.store,
            &target.device,
            target.now,
        )
    };
    let verdict = verify(command);
    if command.signature.is_none() {
        assert_eq!(verdict, Err(VerifyError::Unsigned));
    }
    if verdict.is_err() {
        return;
    }
    assert_eq!(command.store.as_ref(), Some(&target.store));
    assert_eq!(command.device.as_ref(), Some(&target.device));
    assert!(command
        .expires_at
        .is_some_and(|expires_at| target.now < expires_at));
    let mut resigned = command.clone();
    sign_command(command_key(), &mut resigned);
    assert_eq!(&resigned, command);
    let received = decode::<Command>(&encode(command)).expect("a verified command re-decodes");
    assert_eq!(verify(&received), Ok(()));
    let tampered = Command {
        epoch: command.epoch.wrapping_add(1),
        ..command.clone()
    };
    assert_eq!(verify(&tampered), Err(VerifyError::BadSignature));
}

fn check_desired(target: &Target, desired: &DesiredState) {
    let verify = |desired: &DesiredState| {
        verify_desired(&target.key, desired, &target.store, &target.device)
    };
    let verdict = verify(desired);
    if desired.signature.is_none() {
        assert_eq!(verdict, Err(VerifyError::Unsigned));
    }
    if verdict.is_err() {
        return;
    }
    assert_eq!(desired.store.as_ref(), Some(&target.store));
    assert_eq!(desired.device.as_ref(), Some(&target.device));
    let mut resigned = desired.clone();
    sign_desired(command_key(), &mut resigned);
    assert_eq!(&resigned, desired);
    let received = decode::<DesiredState>(&encode(desired)).expect("a verified state re-decodes");
    assert_eq!(verify(&received), Ok(()));
    let tampered = DesiredState {
        epoch: desired.epoch.wrapping_add(1),
        ..desired.clone()
    };
    assert_eq!(verify(&tampered), Err(VerifyError::BadSignature));
}

fn check_trust_list(target: &Target, list: &TrustList) {
    let verify = |list: &TrustList| verify_trust_list(&target.key, list, &target.store);
    let verdict = verify(list);
    if list.signature.is_none() {
        assert_eq!(verdict, Err(VerifyError::Unsigned));
    }
    if verdict.is_err() {
        return;
    }
    assert_eq!(list.store.as_ref(), Some(&target.store));
    let mut resigned = list.clone();
    sign_trust_list(command_key(), &mut resigned);
    assert_eq!(&resigned, list);
    let received = decode::<TrustList>(&encode(list)).expect("a verified list re-decodes");
    assert_eq!(verify(&received), Ok(()));
    let tampered = TrustList {
        offline_start: !list.offline_start,
        ..list.clone()
    };
    assert_eq!(verify(&tampered), Err(VerifyError::BadSignature));
}

/// A `KEYID:HEX` text that parses is the key's one text, up to case and surrounding whitespace.
fn check_public_key_text(text: &str) {
    if let Ok(key) = parse_public_key(text) {
        let shown = public_key_text(&key);
        assert_eq!(shown, text.trim().to_ascii_lowercase());
        assert_eq!(parse_public_key(&shown), Ok(key));
    }
}
