//! `docs/asyncapi.yaml` against the topic tree of `mujin_protocol::topic`: every topic mujin
//! builds has a channel there, with management's operation on it at the topic's QoS and retain
//! flag, and every message payload it names is a checked-in schema of `docs/schemas/`.
//! (The AsyncAPI CLI validates the document itself in `.ci/run`.)

// Helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use mujin_protocol::topic::{DeviceChannel, Topic};
use mujin_protocol::{DeviceId, IntegratorId, OperatorId, StoreId, WorkerId};
use yaml_rust2::{Yaml, YamlLoader};

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

fn document() -> Yaml {
    let path = docs_dir().join("asyncapi.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// One topic of every shape, with ids that stand for the channel's parameters.
fn every_topic() -> Vec<Topic> {
    let store = StoreId::parse("p-store").unwrap();
    let device = DeviceId::parse("p-device").unwrap();
    let operator = OperatorId::parse("p-operator").unwrap();
    let integrator = IntegratorId::parse("p-integrator").unwrap();
    let mut topics: Vec<Topic> = DeviceChannel::ALL
        .into_iter()
        .map(|channel| Topic::device(&store, &device, channel))
        .collect();
    topics.extend([
        Topic::Events {
            store: store.clone(),
        },
        Topic::Trust { store },
        Topic::Worker {
            worker: WorkerId::parse("p-worker").unwrap(),
        },
        Topic::Requests {
            operator: operator.clone(),
        },
        Topic::Replies { operator },
        Topic::IntegratorBookings {
            integrator: integrator.clone(),
        },
        Topic::IntegratorReplies { integrator },
    ]);
    for topic in &topics {
        // No wildcard arm: a new kind of topic does not compile here until it is listed above
        // (and so checked against the document).
        match topic {
            Topic::Device { .. }
            | Topic::Events { .. }
            | Topic::Trust { .. }
            | Topic::Worker { .. }
            | Topic::Requests { .. }
            | Topic::Replies { .. }
            | Topic::IntegratorBookings { .. }
            | Topic::IntegratorReplies { .. } => {}
        }
    }
    topics
}

/// The channel address of a topic: its ids replaced by the parameter names.
fn address(topic: &Topic) -> String {
    let mut text = topic.to_string();
    for name in ["store", "device", "operator", "worker", "integrator"] {
        text = text.replace(&format!("p-{name}"), &format!("{{{name}}}"));
    }
    text
}

fn hash_entries(yaml: &Yaml) -> Vec<(&str, &Yaml)> {
    yaml.as_hash()
        .map(|hash| {
            hash.iter()
                .filter_map(|(key, value)| Some((key.as_str()?, value)))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_topic_has_a_channel_with_its_qos_and_retain_flag() {
    let document = document();
    assert_eq!(document["asyncapi"].as_str(), Some("3.0.0"));
    let channels = hash_entries(&document["channels"]);
    let operations = hash_entries(&document["operations"]);
    let mut problems = Vec::new();
    for topic in every_topic() {
        let address = address(&topic);
        let Some((id, channel)) = channels
            .iter()
            .find(|(_, channel)| channel["address"].as_str() == Some(&address))
        else {
            problems.push(format!("no channel has the address {address}"));
            continue;
        };
        for (name, _) in hash_entries(&channel["parameters"]) {
            if !address.contains(&format!("{{{name}}}")) {
                problems.push(format!(
                    "channel {id}: parameter {name} is not in its address"
                ));
            }
        }
        let reference = format!("#/channels/{id}");
        let ours: Vec<_> = operations
            .iter()
            .filter(|(_, operation)| operation["channel"]["$ref"].as_str() == Some(&reference))
            .collect();
        if ours.is_empty() {
            problems.push(format!("no operation on channel {id} ({address})"));
        }
        for (name, operation) in ours {
            let mqtt = &operation["bindings"]["mqtt"];
            let qos = mqtt["qos"].as_i64();
            let retain = mqtt["retain"].as_bool();
            if qos != Some(i64::from(topic.qos())) || retain != Some(topic.retained()) {
                problems.push(format!(
                    "operation {name} on {address}: qos {qos:?}, retain {retain:?}; the topic \
                     uses qos {}, retain {}",
                    topic.qos(),
                    topic.retained()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_payload_is_a_generated_schema_and_every_schema_is_used() {
    let document = document();
    let mut referenced = Vec::new();
    let messages = hash_entries(&document["components"]["messages"]);
    let schemas = hash_entries(&document["components"]["schemas"]);
    for (_, message) in messages {
        referenced.push(message["payload"]["$ref"].as_str().unwrap().to_owned());
    }
    for (_, schema) in schemas {
        referenced.push(schema["$ref"].as_str().unwrap().to_owned());
    }
    let generated: Vec<String> = mujin_protocol::schema::all()
        .into_iter()
        .map(|(name, _)| format!("./schemas/{name}.json"))
        .collect();
    for reference in &referenced {
        assert!(
            generated.contains(reference),
            "docs/asyncapi.yaml refers to {reference}, which mujin_protocol::schema::all() does \
             not generate"
        );
    }
    for schema in &generated {
        assert!(
            referenced.contains(schema),
            "docs/asyncapi.yaml does not use {schema}"
        );
    }
}
