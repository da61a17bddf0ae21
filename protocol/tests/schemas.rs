//! The JSON Schemas of the wire messages, checked in under `docs/schemas/` for the AsyncAPI
//! document (`docs/asyncapi.yaml`) and for other implementations. These tests keep them honest:
//!
//! - every schema generated from the Rust types ([`mujin_protocol::schema::all`]) must equal the
//!   checked-in file (as JSON values); with `MUJIN_UPDATE_SCHEMAS=1` the files are rewritten;
//! - every schema is a valid JSON Schema (draft 7);
//! - every message of `protocol/vectors/` (what serde emits) is valid against its schema, and
//!   payloads serde refuses are refused by the schema too.

// Helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use jsonschema::Validator;
use mujin_protocol::booking::{
    ActionName, BookingAction, BookingEntry, BookingReply, BookingRequest, ErrorCode,
    IntegratorKey, Refusal, Slot, TicketStatus,
};
use mujin_protocol::message::{decode, encode, Event, Request, Scan};
use mujin_protocol::{DeviceId, RequestId, StoreId, TicketId};
use serde_json::{json, Value};

const UPDATE_VAR: &str = "MUJIN_UPDATE_SCHEMAS";
const REGENERATE: &str = "MUJIN_UPDATE_SCHEMAS=1 cargo test -p mujin-protocol --test schemas";

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas")
}

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/messages")
}

fn updating() -> bool {
    std::env::var(UPDATE_VAR).is_ok_and(|value| value == "1")
}

/// The `.json` files in a directory, sorted by name.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// In update mode, writes every schema once per test run (before any test reads them) and
/// removes files nothing generates any more.
fn prepare() {
    static WRITTEN: OnceLock<()> = OnceLock::new();
    if !updating() {
        return;
    }
    WRITTEN.get_or_init(|| {
        fs::create_dir_all(schemas_dir()).unwrap();
        let schemas = mujin_protocol::schema::all();
        for stale in json_files(&schemas_dir()) {
            let name = file_name(&stale);
            if !schemas
                .iter()
                .any(|(schema, _)| format!("{schema}.json") == name)
            {
                fs::remove_file(stale).unwrap();
            }
        }
        for (name, schema) in schemas {
            let mut text = serde_json::to_string_pretty(&schema).unwrap();
            text.push('\n');
            fs::write(schemas_dir().join(format!("{name}.json")), text).unwrap();
        }
    });
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = fs::read_to_string(path).map_err(|err| format!("cannot read it: {err}"))?;
    serde_json::from_str(&text).map_err(|err| format!("not valid JSON: {err}"))
}

/// A validator for a schema, checking formats (`date-time`, …) too.
fn validator(schema: &Value) -> Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap()
}

/// Why `instance` is not valid against the schema named `name`, if it is not.
fn problems(name: &str, instance: &Value) -> Option<String> {
    let (_, schema) = mujin_protocol::schema::all()
        .into_iter()
        .find(|(schema, _)| *schema == name)
        .unwrap_or_else(|| panic!("no schema named {name}"));
    let errors: Vec<String> = validator(&schema)
        .iter_errors(instance)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

#[test]
fn checked_in_schemas_match_the_rust_types() {
    prepare();
    let schemas = mujin_protocol::schema::all();
    let mut stale = Vec::new();
    for (name, schema) in &schemas {
        let file = format!("{name}.json");
        match read_json(&schemas_dir().join(&file)) {
            Ok(found) if found == *schema => {}
            Ok(_) => stale.push(format!("{file} differs")),
            Err(error) => stale.push(format!("{file}: {error}")),
        }
    }
    for path in json_files(&schemas_dir()) {
        let name = file_name(&path);
        if !schemas
            .iter()
            .any(|(schema, _)| format!("{schema}.json") == name)
        {
            stale.push(format!("{name} is not generated from any type"));
        }
    }
    assert!(
        stale.is_empty(),
        "the schemas in {} no longer match the Rust types:\n  {}\n\nRegenerate them with\n  \
         {REGENERATE}\nand review the diff (and docs/asyncapi.yaml if a message was added).",
        schemas_dir().display(),
        stale.join("\n  ")
    );
}

#[test]
fn every_schema_is_a_valid_draft_7_schema() {
    for (name, schema) in mujin_protocol::schema::all() {
        assert_eq!(
            schema["$schema"], "http://json-schema.org/draft-07/schema#",
            "{name}"
        );
        if let Err(error) = jsonschema::meta::validate(&schema) {
            panic!("{name}.json is not a valid JSON Schema: {error}");
        }
    }
}

/// Every message vector's payload with the schema of its type (found by the schema's title, the
/// type's name), plus the snapshot pages inside the replies.
fn vector_payloads() -> Vec<(String, &'static str, Value)> {
    let schemas = mujin_protocol::schema::all();
    let mut payloads = Vec::new();
    for path in json_files(&vectors_dir()) {
        let vector = read_json(&path).unwrap();
        let message = vector["message"].as_str().unwrap();
        let (schema, _) = schemas
            .iter()
            .find(|(_, schema)| schema["title"] == message)
            .unwrap_or_else(|| panic!("{}: no schema has the title {message}", path.display()));
        let payload = vector["payload"].clone();
        if let Some(page) = payload.get("snapshot") {
            payloads.push((file_name(&path), "snapshot-page", page.clone()));
        }
        payloads.push((file_name(&path), schema, payload));
    }
    payloads
}

#[test]
fn what_serde_emits_is_valid_against_the_schemas() {
    let payloads = vector_payloads();
    assert!(payloads.len() >= 40, "too few message vectors found");
    let mut invalid = Vec::new();
    for (file, schema, payload) in &payloads {
        if let Some(problems) = problems(schema, payload) {
            invalid.push(format!("{file} against {schema}.json: {problems}"));
        }
    }
    assert!(invalid.is_empty(), "{}", invalid.join("\n"));
    // Every schema is exercised by at least one message (the booking ones by
    // booking_messages_are_valid_against_their_schemas).
    for (name, _) in mujin_protocol::schema::all() {
        assert!(
            payloads.iter().any(|(_, schema, _)| *schema == name) || name.starts_with("booking"),
            "no message vector checks {name}.json"
        );
    }
}

#[test]
fn what_serde_refuses_the_schemas_refuse() {
    let scan = json!({
        "scan_id": "6f1c2a9e-3b7d-4c1a-9a55-2d4b8e0f7a10",
        "ticket": "MJ1:AAAA",
        "read_at": "2026-05-01T10:00:00Z"
    });
    assert_eq!(problems("scan", &scan), None);
    let mut cases = Vec::new();
    for (field, value) in [
        ("scan_id", json!("not-a-uuid")),
        ("read_at", json!("yesterday")),
        ("ticket", json!(3)),
    ] {
        let mut bad = scan.clone();
        bad[field] = value;
        cases.push(("scan", bad));
    }
    let mut missing = scan.clone();
    missing.as_object_mut().unwrap().remove("read_at");
    cases.push(("scan", missing));
    let event = json!({"at": "2026-05-01T10:00:00Z", "store": "Shibuya/2", "kind": "clock_skew",
                       "skew_ms": 5});
    cases.push(("event", event));
    let unknown_kind = json!({"at": "2026-05-01T10:00:00Z", "store": "shibuya", "kind": "reboot"});
    cases.push(("event", unknown_kind));
    let long_device = json!({"request_id": "6f1c2a9e-3b7d-4c1a-9a55-2d4b8e0f7a10",
                             "action": "set_service", "store": "shibuya",
                             "device": "d".repeat(33), "in_service": true});
    cases.push(("request", long_device));
    for (schema, payload) in cases {
        let bytes = payload.to_string().into_bytes();
        let decoded = match schema {
            "scan" => decode::<Scan>(&bytes).is_ok(),
            "event" => decode::<Event>(&bytes).is_ok(),
            _ => decode::<Request>(&bytes).is_ok(),
        };
        assert!(!decoded, "serde accepts {payload}");
        assert!(
            problems(schema, &payload).is_some(),
            "{schema}.json accepts {payload}"
        );
    }
}

/// One booking request of every action, signed, and replies of every shape, as management and
/// an integrator write them.
#[test]
fn booking_messages_are_valid_against_their_schemas() {
    let at = |text: &str| text.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let (store, device) = (
        StoreId::parse("shibuya").unwrap(),
        DeviceId::parse("pc-01").unwrap(),
    );
    let ticket_id = TicketId::parse("0b7a0d52-5c8e-4f3a-9d1e-2f6b8c4a7e90").unwrap();
    let (from, to) = (at("2027-01-15T09:00:00Z"), at("2027-01-15T10:30:00Z"));
    let actions = [
        BookingAction::Reserve {
            store: store.clone(),
            device: device.clone(),
            from,
            minutes: 90,
        },
        BookingAction::Cancel { ticket_id },
        BookingAction::Extend {
            ticket_id,
            minutes: 30,
        },
        BookingAction::FreeSlots {
            store: store.clone(),
            device: device.clone(),
            from,
            to,
        },
        BookingAction::Bookings {
            store: store.clone(),
            device: device.clone(),
            from,
            to,
        },
        BookingAction::TicketStatus { ticket_id },
    ];
    let key = IntegratorKey::from_hex(&"a1".repeat(32)).unwrap();
    let mut messages = Vec::new();
    for (index, action) in actions.into_iter().enumerate() {
        let request = BookingRequest {
            request_id: RequestId::random(),
            sent_at: at("2027-01-15T08:59:58.250Z"),
            reply_to: (index == 0).then(|| "mujin/v1/integrators/acme/inbox/7".to_owned()),
            action,
        };
        let envelope = key.sign(&request);
        messages.push(("booking-request", serde_json::to_value(&request).unwrap()));
        messages.push(("booking-envelope", serde_json::to_value(&envelope).unwrap()));
    }
    let request_id = RequestId::random();
    let mut reserved = BookingReply::done(request_id, ActionName::Reserve);
    reserved.ticket_id = Some(ticket_id);
    reserved.ticket = Some("MJ1:AAAA".to_owned());
    reserved.valid_from = Some(from);
    reserved.valid_until = Some(to);
    let mut status = BookingReply::done(request_id, ActionName::TicketStatus);
    status.store = Some(store);
    status.device = Some(device);
    status.status = Some(TicketStatus::InUse);
    let mut slots = BookingReply::done(request_id, ActionName::FreeSlots);
    slots.slots = Some(vec![Slot { from, to }]);
    let mut bookings = BookingReply::done(request_id, ActionName::Bookings);
    bookings.bookings = Some(vec![
        BookingEntry {
            from,
            to,
            status: TicketStatus::Booked,
            ticket_id: Some(ticket_id),
        },
        BookingEntry {
            from: to,
            to: at("2027-01-15T11:00:00Z"),
            status: TicketStatus::NoShow,
            ticket_id: None,
        },
    ]);
    let overlap = BookingReply::refused(
        Some(request_id),
        Some(ActionName::Reserve),
        Refusal::new(ErrorCode::Overlap, "pc-01 is booked from 10:30 to 11:30"),
    );
    let unreadable = BookingReply::refused(None, None, Refusal::new(ErrorCode::Malformed, "EOF"));
    for reply in [reserved, status, slots, bookings, overlap, unreadable] {
        messages.push(("booking-reply", serde_json::to_value(&reply).unwrap()));
    }
    for (schema, message) in messages {
        if let Some(problems) = problems(schema, &message) {
            panic!("{message} is not valid against {schema}.json: {problems}");
        }
        // What the schema accepts, serde reads back (the wire form is the compact encoding).
        let bytes = encode(&message);
        let decoded = match schema {
            "booking-request" => decode::<BookingRequest>(&bytes).is_ok(),
            "booking-envelope" => {
                decode::<mujin_protocol::booking::BookingEnvelope>(&bytes).is_ok()
            }
            _ => decode::<BookingReply>(&bytes).is_ok(),
        };
        assert!(decoded, "serde does not read back {message}");
    }
}
