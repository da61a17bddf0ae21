//! Golden vectors of the wire contract, checked in under `protocol/vectors/` so that other
//! implementations can test against them. These tests keep them honest:
//!
//! - every vector regenerated from the Rust types must equal the checked-in file (as JSON
//!   values, so formatting is free); with `MUJIN_UPDATE_VECTORS=1` the files are rewritten;
//! - every checked-in message decodes into its type and encodes back unchanged;
//! - every checked-in ticket verifies, or fails with its stated error, using public keys only.

// Helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

#[path = "vectors/messages.rs"]
mod messages;
#[path = "vectors/tickets.rs"]
mod tickets;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

const UPDATE_VAR: &str = "MUJIN_UPDATE_VECTORS";
const REGENERATE: &str = "MUJIN_UPDATE_VECTORS=1 cargo test -p mujin-protocol --test vectors";

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn messages_dir() -> PathBuf {
    vectors_dir().join("messages")
}

/// Every vector file (path relative to `vectors/`) with its text, from the Rust types. The text
/// keeps the fields in declaration order, which reads better than sorted keys.
fn generated() -> Vec<(String, String)> {
    let mut files = vec![("tickets.json".to_owned(), pretty(&tickets::generate()))];
    for (name, vector) in messages::generate() {
        files.push((format!("messages/{name}"), pretty(&vector)));
    }
    files
}

fn pretty<T: serde::Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap();
    text.push('\n');
    text
}

fn updating() -> bool {
    std::env::var(UPDATE_VAR).is_ok_and(|value| value == "1")
}

/// The message files on disk, sorted by name.
fn message_files() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(messages_dir()) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
}

/// In update mode, writes every vector once per test run (before any test reads them) and
/// removes message files nothing generates any more.
fn prepare() {
    static WRITTEN: OnceLock<()> = OnceLock::new();
    if !updating() {
        return;
    }
    WRITTEN.get_or_init(|| {
        fs::create_dir_all(messages_dir()).unwrap();
        let files = generated();
        for stale in message_files() {
            let name = format!("messages/{}", stale.file_name().unwrap().to_string_lossy());
            if !files.iter().any(|(file, _)| *file == name) {
                fs::remove_file(stale).unwrap();
            }
        }
        for (file, text) in files {
            fs::write(vectors_dir().join(file), text).unwrap();
        }
    });
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = fs::read_to_string(path).map_err(|err| format!("cannot read it: {err}"))?;
    serde_json::from_str(&text).map_err(|err| format!("not valid JSON: {err}"))
}

/// Where two JSON values first differ, as a path with both sides.
fn first_difference(expected: &Value, found: &Value, path: &str) -> Option<String> {
    match (expected, found) {
        (Value::Object(want), Value::Object(got)) => want
            .keys()
            .chain(got.keys().filter(|key| !want.contains_key(*key)))
            .find_map(|key| {
                let (want, got) = (want.get(key), got.get(key));
                let path = format!("{path}.{key}");
                match (want, got) {
                    (Some(want), Some(got)) => first_difference(want, got, &path),
                    _ => Some(format!("{path}: expected {want:?}, found {got:?}")),
                }
            }),
        (Value::Array(want), Value::Array(got)) if want.len() == got.len() => want
            .iter()
            .zip(got)
            .enumerate()
            .find_map(|(index, (want, got))| {
                first_difference(want, got, &format!("{path}[{index}]"))
            }),
        _ if expected == found => None,
        _ => Some(format!("{path}: expected {expected}, found {found}")),
    }
}

#[test]
fn checked_in_vectors_match_the_rust_types() {
    prepare();
    let files = generated();
    let mut problems = Vec::new();
    for (file, text) in &files {
        let expected: Value = serde_json::from_str(text).unwrap();
        match read_json(&vectors_dir().join(file)) {
            Ok(found) => {
                if let Some(difference) = first_difference(&expected, &found, "$") {
                    problems.push(format!("{file} differs at {difference}"));
                }
            }
            Err(error) => problems.push(format!("{file}: {error}")),
        }
    }
    for path in message_files() {
        let name = format!("messages/{}", path.file_name().unwrap().to_string_lossy());
        if !files.iter().any(|(file, _)| *file == name) {
            problems.push(format!("{name} is not generated by any vector"));
        }
    }
    assert!(
        problems.is_empty(),
        "the vectors in {} no longer match the Rust types:\n  {}\n\nIf the wire contract changed \
         on purpose, regenerate them with\n  {REGENERATE}\nand review the diff: other \
         implementations test against these files.",
        vectors_dir().display(),
        problems.join("\n  ")
    );
}

#[test]
fn message_vectors_decode_and_re_encode_unchanged() {
    prepare();
    let files = message_files();
    assert!(
        files.len() >= messages::generate().len(),
        "missing message vectors; run {REGENERATE}"
    );
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let value = read_json(&path).unwrap_or_else(|error| panic!("{name}: {error}"));
        let vector: messages::MessageVector =
            serde_json::from_value(value).unwrap_or_else(|error| panic!("{name}: {error}"));
        messages::check(&name, &vector);
    }
}

#[test]
fn ticket_vectors_verify_with_public_keys_only() {
    prepare();
    let path = vectors_dir().join("tickets.json");
    let value = read_json(&path).unwrap_or_else(|error| panic!("tickets.json: {error}"));
    let vectors: tickets::TicketVectors = serde_json::from_value(value).unwrap();
    assert!(!vectors.valid.is_empty() && !vectors.invalid.is_empty());
    tickets::check(&vectors);
}

#[test]
fn every_ticket_error_kind_has_an_invalid_vector() {
    let vectors = tickets::generate();
    let kinds = [
        "empty",
        "too_long",
        "not_a_ticket",
        "bad_encoding",
        "unsupported_version",
        "malformed",
        "bad_field",
        "bad_window",
        "unknown_key",
        "bad_signature",
    ];
    for kind in kinds {
        assert!(
            vectors.invalid.iter().any(|case| case.error == kind),
            "no invalid ticket vector for {kind}"
        );
    }
}

#[test]
fn difference_paths_point_at_the_change() {
    let expected = serde_json::json!({"a": {"b": [1, 2]}, "c": "x"});
    let found = serde_json::json!({"a": {"b": [1, 3]}, "c": "x"});
    assert_eq!(
        first_difference(&expected, &found, "$").unwrap(),
        "$.a.b[1]: expected 2, found 3"
    );
    assert_eq!(first_difference(&expected, &expected, "$"), None);
}

/// Whether `block` is a booking envelope that verifies with the integrator key of
/// docs/protocol.md's example (seed `07` × 32) and holds a request that decodes.
fn is_pinned_booking_envelope(block: &str) -> bool {
    let key = mujin_protocol::booking::IntegratorKey::from_hex(&"07".repeat(32)).unwrap();
    mujin_protocol::booking::decode_envelope(block.as_bytes()).is_ok_and(|envelope| {
        envelope.verify(&key.public_key()).is_ok() && envelope.decode_request().is_ok()
    })
}

/// The JSON examples of `docs/protocol.md` are vector payloads (or the pinned booking envelope), so the document cannot drift
/// from the contract unnoticed.
#[test]
fn documented_examples_are_vector_payloads() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    let text = fs::read_to_string(&docs).unwrap();
    let payloads: Vec<Value> = messages::generate()
        .into_iter()
        .map(|(_, vector)| vector.payload)
        .collect();
    let blocks: Vec<&str> = text
        .split("```json\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .collect();
    assert!(!blocks.is_empty(), "no JSON examples in {}", docs.display());
    for block in blocks {
        let example: Value = serde_json::from_str(block)
            .unwrap_or_else(|error| panic!("example is not JSON ({error}):\n{block}"));
        assert!(
            payloads.contains(&example) || is_pinned_booking_envelope(block),
            "this example in docs/protocol.md is not a vector payload (copy it from \
             protocol/vectors/messages/) nor a booking envelope signed with the documented \
             integrator key:\n{block}"
        );
    }
    assert!(text.contains(&tickets::booking_ticket()));
}

/// The signed vectors verify with public keys only: management's command key, as a device
/// checks them, and operator alice's key, as management checks her requests.
#[test]
fn signed_vectors_verify_with_the_public_command_key() {
    use mujin_protocol::message::{decode, Command, DesiredState, Request};
    use mujin_protocol::signed::{
        verify_command, verify_desired, verify_request, verify_trust_list,
    };
    use mujin_protocol::topic::Topic;
    use mujin_protocol::trust::TrustList;

    prepare();
    let public = messages::command_key().public_key();
    let mut checked = 0;
    for path in message_files() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let vector: messages::MessageVector =
            serde_json::from_value(read_json(&path).unwrap()).unwrap();
        let payload = serde_json::to_vec(&vector.payload).unwrap();
        let topic = Topic::parse(&vector.topic).unwrap();
        let result = match (vector.message.as_str(), &topic) {
            ("Command", Topic::Device { store, device, .. }) => {
                let command: Command = decode(&payload).unwrap();
                verify_command(&public, &command, store, device, command.issued_at)
            }
            ("DesiredState", Topic::Device { store, device, .. }) => verify_desired(
                &public,
                &decode::<DesiredState>(&payload).unwrap(),
                store,
                device,
            ),
            ("TrustList", Topic::Trust { store }) => {
                verify_trust_list(&public, &decode::<TrustList>(&payload).unwrap(), store)
            }
            ("Request", Topic::Requests { .. }) => {
                let request: Request = decode(&payload).unwrap();
                let operator = messages::operator_key().public_key();
                let sent_at = request.sent_at.expect("signed requests say when");
                verify_request(&operator, &request, sent_at)
            }
            _ => continue,
        };
        assert_eq!(result, Ok(()), "{name}");
        checked += 1;
    }
    assert!(checked >= 13, "only {checked} signed vectors");
}
