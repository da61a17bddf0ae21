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

use crate::message::{Ack, Command, DesiredState, Event, Reply, ReportedState, Request, Scan};
use crate::message::{ScanResult, Telemetry};
use crate::presence::WorkerStatus;
use crate::snapshot::SnapshotPage;
use crate::trust::TrustList;

/// The schema of one type, standalone (the types it uses are under `definitions`).
pub fn schema_for<T: JsonSchema>() -> Value {
    SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
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
