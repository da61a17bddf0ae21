//! JSON Schemas of every payload that travels over MQTT, generated from this crate's types so
//! that they cannot drift from what serde writes and reads.
//!
//! They are checked in as `docs/schemas/<name>.json` and referenced by `docs/asyncapi.yaml`;
//! `protocol/tests/schemas.rs` fails when the checked-in files differ from [`all`] (rewrite them
//! with `MUJIN_UPDATE_SCHEMAS=1 cargo test -p mujin-protocol --test schemas`).
//!
//! The schemas are JSON Schema draft 7, the dialect AsyncAPI's own schema format extends. They
//! describe what a receiver accepts: a field with a default may be absent, and unknown fields
//! are allowed (older peers ignore the fields newer ones add).

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::Value;

use crate::booking::{BookingEnvelope, BookingReply, BookingRequest};
use crate::message::{Ack, Command, DesiredState, Event, Reply, ReportedState, Request, Scan};
use crate::message::{ScanResult, Telemetry};
use crate::presence::WorkerStatus;
use crate::snapshot::SnapshotPage;
use crate::trust::TrustList;

/// The schema of one type, standalone (the types it uses are under `definitions`).
pub fn schema_for<T: JsonSchema>() -> Value {
    let mut schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    plain_descriptions(&mut schema);
    schema
}

/// Descriptions come from the doc comments: they are written for rustdoc, so its links
/// (``[`Command::epoch`]``) become plain code spans, `crate::` paths name the crate, and lines
/// wrapped in the source are joined (paragraphs stay apart).
fn plain_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(text) if key == "description" => *text = plain(text),
                    _ => plain_descriptions(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(plain_descriptions),
        _ => {}
    }
}

fn plain(doc: &str) -> String {
    let mut text = String::with_capacity(doc.len());
    let mut rest = doc;
    // ``[`path`]`` → `` `path` ``; a bracket not closing right after the span (an interval such
    // as ``[`from`, `to`)``) is left alone.
    while let Some(start) = rest.find("[`") {
        let after = &rest[start + 2..];
        match after.find('`') {
            Some(end) if after[end + 1..].starts_with(']') => {
                text.push_str(&rest[..start]);
                text.push('`');
                text.push_str(&after[..=end]);
                rest = &after[end + 2..];
            }
            _ => {
                text.push_str(&rest[..start + 2]);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    let text = text.replace("crate::", "mujin_protocol::");
    text.split("\n\n")
        .map(|paragraph| paragraph.replace('\n', " "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Every message schema, by file name without `.json` (e.g. `scan-result`), in topic order.
pub fn all() -> Vec<(&'static str, Value)> {
    vec![
        ("scan", schema_for::<Scan>()),
        ("scan-result", schema_for::<ScanResult>()),
        ("telemetry", schema_for::<Telemetry>()),
        ("state", schema_for::<ReportedState>()),
        ("command", schema_for::<Command>()),
        ("desired", schema_for::<DesiredState>()),
        ("ack", schema_for::<Ack>()),
        ("event", schema_for::<Event>()),
        ("trust", schema_for::<TrustList>()),
        ("worker-status", schema_for::<WorkerStatus>()),
        ("request", schema_for::<Request>()),
        ("reply", schema_for::<Reply>()),
        ("snapshot-page", schema_for::<SnapshotPage>()),
        ("booking-envelope", schema_for::<BookingEnvelope>()),
        ("booking-request", schema_for::<BookingRequest>()),
        ("booking-reply", schema_for::<BookingReply>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_has_a_unique_name_and_a_title() {
        let schemas = all();
        for (index, (name, schema)) in schemas.iter().enumerate() {
            assert!(
                schemas[..index].iter().all(|(other, _)| other != name),
                "{name} twice"
            );
            assert!(schema.get("title").is_some(), "{name} has no title");
        }
    }

    #[test]
    fn descriptions_lose_rustdoc_links_and_source_line_breaks() {
        assert_eq!(
            plain("Its epoch (see [`Command::epoch`],\n[`crate::signed`]).\n\nIn [`from`, `to`)."),
            "Its epoch (see `Command::epoch`, `mujin_protocol::signed`).\n\nIn [`from`, `to`)."
        );
    }

    #[test]
    fn ids_are_described_by_their_wire_form() {
        let scan = schema_for::<Scan>();
        let definitions = &scan["definitions"];
        assert_eq!(definitions["ScanId"]["format"], "uuid");
        let state = schema_for::<crate::snapshot::BookingSummary>();
        let store = &state["definitions"]["StoreId"];
        assert_eq!(store["maxLength"], crate::StoreId::MAX_LEN);
        assert_eq!(store["pattern"], "^[a-z0-9][a-z0-9-]*$");
        assert_eq!(scan["properties"]["read_at"]["format"], "date-time");
    }
}
