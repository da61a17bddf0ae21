//! The audit log: every event is written to the `events` table in the transaction that caused
//! it; the dispatcher publishes it on the store's event topic after the commit (see
//! [`take_unpublished`]).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use mujin_protocol::message::{self, Event};
use mujin_protocol::topic::Topic;

use crate::mqtt::Outbound;

/// Appends one event to the audit log (inside the caller's transaction).
pub async fn record<C: GenericClient>(
    client: &C,
    event: &Event,
) -> Result<(), tokio_postgres::Error> {
    let body = serde_json::to_value(event).unwrap_or_default();
    let kind = body
        .get("kind")
        .and_then(|kind| kind.as_str())
        .unwrap_or("unknown")
        .to_owned();
    client
        .execute(
            "INSERT INTO events (at, store_id, device_id, kind, body) VALUES ($1, $2, $3, $4, $5)",
            &[
                &event.at,
                &event.store.as_str(),
                &event.device.as_ref().map(|device| device.as_str()),
                &kind,
                &body,
            ],
        )
        .await?;
    Ok(())
}

/// Claims up to `limit` events not yet published, oldest first, marking them published at
/// `now` (inside the caller's transaction), and returns their messages.
pub async fn take_unpublished<C: GenericClient>(
    client: &C,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<Vec<Outbound>, tokio_postgres::Error> {
    let rows = client
        .query(
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
