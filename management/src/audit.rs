//! The audit log: every event is written to the `events` table in the transaction that caused
//! it, then published on the store's event topic after the commit.

use deadpool_postgres::GenericClient;
use mujin_protocol::message::Event;

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
