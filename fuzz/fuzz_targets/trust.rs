//! Fuzzes the offline check: a trust list payload and a scanned text, separated by a NUL byte
//! (which JSON cannot hold), go through `decode::<TrustList>` and `check_offline`, which never
//! panic and only let a ticket start that verifies against the list and meets every rule.
#![no_main]

use chrono::{DateTime, TimeDelta, Utc};
use libfuzzer_sys::fuzz_target;
use mujin_protocol::message::{decode, RejectReason};
use mujin_protocol::trust::{check_offline, TrustList};
use mujin_protocol::{DeviceId, StoreId};

/// Inside the window of `tickets.json`'s `one_hour_booking` (shibuya, pc-01).
const NOW_UNIX: i64 = 1_800_001_800;

fuzz_target!(|data: &[u8]| {
    let (list, ticket) = match data.iter().position(|&byte| byte == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(list) = decode::<TrustList>(list) else {
        return;
    };
    let ticket = String::from_utf8_lossy(ticket);
    let store = StoreId::parse("shibuya").expect("a valid store id");
    let device = DeviceId::parse("pc-01").expect("a valid device id");
    let now = DateTime::from_timestamp(NOW_UNIX, 0).expect("a representable time");

    let checked = check_offline(&list, &ticket, &store, &device, now, false);
    let again = check_offline(&list, &ticket, &store, &device, now, true);
    let Ok(claims) = checked else {
        // A ticket refused on its own is refused whatever the device already did.
        assert!(again.is_err());
        return;
    };
    // Accepted: it verifies with the list's keys, is for this device, inside its window and
    // not refused by the list; started once, it cannot start again.
    assert_eq!(list.keyring().verify(&ticket).as_ref(), Ok(&claims));
    assert_eq!((&claims.store, &claims.device), (&store, &device));
    assert!(claims.not_before <= now && now < claims.not_after);
    assert!(list
        .refused_tickets
        .iter()
        .all(|refused| refused.ticket_id != claims.ticket_id));
    assert_eq!(
        again.map_err(|refusal| refusal.reason),
        Err(RejectReason::AlreadyUsed)
    );

    // The window's edges: it opens at not_before (no early grace offline) and closes at
    // not_after.
    let at = |time: DateTime<Utc>| {
        check_offline(&list, &ticket, &store, &device, time, false).map_err(|r| r.reason)
    };
    assert_eq!(at(claims.not_before), Ok(claims.clone()));
    if let Some(before) = claims.not_before.checked_sub_signed(TimeDelta::seconds(1)) {
        assert_eq!(at(before), Err(RejectReason::TooEarly));
    }
    assert_eq!(at(claims.not_after), Err(RejectReason::Expired));
});
