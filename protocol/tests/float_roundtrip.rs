//! A decoded number keeps its exact value, so a message decoded, encoded and decoded again is
//! the same message (the property the `messages` fuzz target checks, see docs/fuzzing.md).

use mujin_protocol::message::{decode, encode, Telemetry};

#[test]
fn telemetry_load_survives_a_round_trip_exactly() {
    // serde_json's default float parser may be one unit in the last place off for long
    // decimals like this one (found by fuzzing); its `float_roundtrip` feature is exact.
    let load = "4.5090972581236106e+49";
    let payload = format!(r#"{{"at":"2027-01-15T08:00:00Z","uptime_ms":1,"load":{load}}}"#);
    let telemetry: Telemetry = decode(payload.as_bytes()).expect("a valid telemetry payload");
    assert_eq!(telemetry.load, load.parse::<f64>().ok());
    assert_eq!(decode::<Telemetry>(&encode(&telemetry)), Ok(telemetry));
}
