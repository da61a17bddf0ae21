//! The audit log: every event is written to the `events` table in the transaction that caused
//! it; the dispatcher publishes it on the store's event topic after the commit (see
//! [`take_unpublished`]), unless the writer publishes it itself right after its commit (see
//! [`record_published`]).

use crate::db::CachedStatements;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use mujin_protocol::message::{self, Event};
use mujin_protocol::topic::Topic;
use tokio_postgres::types::ToSql;

use crate::mqtt::Outbound;

/// Appends one event to the audit log (inside the caller's transaction).
pub async fn record<C: GenericClient>(
    client: &C,
    event: &Event,
) -> Result<(), tokio_postgres::Error> {
    record_all(client, std::slice::from_ref(event)).await
}

/// Writes `events` in one statement (one round trip however many there are), for the dispatcher
/// to publish.
pub async fn record_all<C: GenericClient>(
    client: &C,
    events: &[Event],
) -> Result<(), tokio_postgres::Error> {
    insert(client, events, None).await
}

/// Writes `events` as published at `now`: the caller publishes them itself after its commit
/// (as the dispatcher does after its own: handed to the MQTT client), so that no dispatcher
/// pass is needed for them.
pub async fn record_published<C: GenericClient>(
    client: &C,
    events: &[Event],
    now: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    insert(client, events, Some(now)).await
}

async fn insert<C: GenericClient>(
    client: &C,
    events: &[Event],
    published_at: Option<DateTime<Utc>>,
) -> Result<(), tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let columns = EventColumns::new(events);
    let [at, stores, devices, kinds, bodies] = columns.params();
    client
        .cached_execute(
            RECORD_EVENTS,
            &[at, stores, devices, kinds, bodies, &published_at],
        )
        .await?;
    Ok(())
}

/// Events as the arrays [`RECORD_EVENTS`] takes, in their order.
pub(crate) struct EventColumns<'a> {
    pub at: Vec<DateTime<Utc>>,
    pub stores: Vec<&'a str>,
    pub devices: Vec<Option<&'a str>>,
    pub kinds: Vec<String>,
    pub bodies: Vec<serde_json::Value>,
}

impl<'a> EventColumns<'a> {
    pub fn new(events: &'a [Event]) -> EventColumns<'a> {
        let mut columns = EventColumns {
            at: Vec::with_capacity(events.len()),
            stores: Vec::with_capacity(events.len()),
            devices: Vec::with_capacity(events.len()),
            kinds: Vec::with_capacity(events.len()),
            bodies: Vec::with_capacity(events.len()),
        };
        for event in events {
            let body = serde_json::to_value(event).unwrap_or_default();
            let kind = body
                .get("kind")
                .and_then(|kind| kind.as_str())
                .unwrap_or("unknown")
                .to_owned();
            columns.at.push(event.at);
            columns.stores.push(event.store.as_str());
            columns
                .devices
                .push(event.device.as_ref().map(|device| device.as_str()));
            columns.kinds.push(kind);
            columns.bodies.push(body);
        }
        columns
    }

    /// The five arrays, in the order [`RECORD_EVENTS`] takes them.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 5] {
        [
            &self.at,
            &self.stores,
            &self.devices,
            &self.kinds,
            &self.bodies,
        ]
    }
}

/// The statement [`record_all`] and [`record_published`] run (WITH ORDINALITY keeps the events'
/// order in their ids).
pub const RECORD_EVENTS: &str =
    "INSERT INTO events (at, store_id, device_id, kind, body, published_at)
     SELECT at, store_id, device_id, kind, body, $6::timestamptz
     FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
          WITH ORDINALITY AS e(at, store_id, device_id, kind, body, n)
     ORDER BY n";

/// Claims up to `limit` events not yet published, oldest first, marking them published at
/// `now` (inside the caller's transaction), and returns their messages.
pub async fn take_unpublished<C: GenericClient>(
    client: &C,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<Vec<Outbound>, tokio_postgres::Error> {
    let rows = client
        .cached_query(
            "UPDATE events SET published_at = $2
             WHERE event_id IN (SELECT event_id FROM events WHERE published_at IS NULL
                                ORDER BY event_id LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING event_id, body",
            &[&limit, &now],
        )
        .await?;
    let mut events: Vec<(i64, serde_json::Value)> =
        rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    events.sort_by_key(|(id, _)| *id);
    Ok(events
        .into_iter()
        .filter_map(|(id, body)| match serde_json::from_value::<Event>(body) {
            Ok(event) => Some(event_message(&event)),
            Err(error) => {
                tracing::error!(event_id = id, %error, "unreadable event in the audit log");
                None
            }
        })
        .collect())
}

/// The event message for the event's store.
pub fn event_message(event: &Event) -> Outbound {
    let topic = Topic::Events {
        store: event.store.clone(),
    };
    Outbound::new(&topic, message::encode(event))
}
