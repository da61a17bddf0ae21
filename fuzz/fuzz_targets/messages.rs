//! Fuzzes payloads: each input is decoded as every message type a mujin part receives.
//! `decode` never panics, never accepts more than `MAX_PAYLOAD_BYTES`, and what it accepts
//! encodes to a payload that decodes to the same message (and encodes the same again).
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use mujin_protocol::message::{
    decode, encode, Ack, Command, DecodeError, DesiredState, Event, Reply, ReportedState, Request,
    Scan, ScanResult, Telemetry, MAX_PAYLOAD_BYTES,
};
use mujin_protocol::presence::WorkerStatus;
use mujin_protocol::trust::TrustList;
use serde::de::DeserializeOwned;
use serde::Serialize;

fuzz_target!(|payload: &[u8]| {
    // The same bytes padded past the limit with whitespace (still the same JSON), which every
    // type must refuse unread.
    let mut oversized = payload.to_vec();
    oversized.resize(payload.len().max(MAX_PAYLOAD_BYTES + 1), b' ');

    // Management receives these,
    check::<Scan>(payload, &oversized);
    check::<Ack>(payload, &oversized);
    check::<ReportedState>(payload, &oversized);
    check::<Telemetry>(payload, &oversized);
    check::<Request>(payload, &oversized);
    // the agent these,
    check::<Command>(payload, &oversized);
    check::<DesiredState>(payload, &oversized);
    check::<ScanResult>(payload, &oversized);
    check::<TrustList>(payload, &oversized);
    // and the console all of them and these.
    check::<Event>(payload, &oversized);
    check::<Reply>(payload, &oversized);
    check::<WorkerStatus>(payload, &oversized);
});

fn check<T>(payload: &[u8], oversized: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    assert_eq!(
        decode::<T>(oversized),
        Err(DecodeError::TooLarge(oversized.len()))
    );
    let Ok(message) = decode::<T>(payload) else {
        return;
    };
    assert!(payload.len() <= MAX_PAYLOAD_BYTES);
    let encoded = encode(&message);
    assert!(!encoded.is_empty(), "{message:?} did not encode");
    // An accepted payload may be spelled longer by the encoder (ids and times have one
    // canonical spelling); past the limit the round trip is refused by design, not broken.
    if encoded.len() > MAX_PAYLOAD_BYTES {
        return;
    }
    let again = decode::<T>(&encoded);
    assert_eq!(
        again.as_ref(),
        Ok(&message),
        "{}",
        String::from_utf8_lossy(&encoded)
    );
    if let Ok(again) = again {
        assert_eq!(encode(&again), encoded);
    }
}
