//! Durable stop timers: every open session's `lease_until` in PostgreSQL is a timer. When it is
//! due, the session is closed with its usage record and a stop command goes to the device.
//! Timers survive restarts because they are rows, and several workers can share them: due rows
//! are claimed with `FOR UPDATE SKIP LOCKED`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use mujin_protocol::message::{CommandAction, EndReason, Event, EventKind};
use mujin_protocol::{CommandId, DeviceId, SessionId, StoreId};
use rumqttc::AsyncClient;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::audit;
use crate::db::WorkError;
use crate::mqtt::{publish_all, Outbound};
use crate::outbox;
use crate::scans::event_message;

/// The longest the timer sleeps before looking at the table again (new sessions also wake it).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How many due sessions one transaction closes.
const BATCH: i64 = 100;

/// Runs the stop timers until `stop` is cancelled; `dispatch` wakes the command dispatcher
/// when stop commands were queued.
pub async fn run(
    pool: Pool,
    client: AsyncClient,
    wake: Arc<Notify>,
    dispatch: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let pause = match stop_due_sessions(&pool, Utc::now()).await {
            Ok((messages, next_due)) => {
                backoff = Duration::from_millis(200);
                let closed = !messages.is_empty();
                publish_all(&client, messages, &stop).await;
                if closed {
                    dispatch.notify_one();
                    continue; // there may be more due than one batch
                }
                next_due
                    .and_then(|due| (due - Utc::now()).to_std().ok())
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_SLEEP)
            }
            Err(error) => {
                tracing::warn!(%error, "stop timers cannot reach the database; retrying");
                backoff = (backoff * 2).min(Duration::from_secs(5));
                backoff
            }
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Closes every session due at `now` and returns the messages to publish and when the next
/// open session is due.
pub async fn stop_due_sessions(
    pool: &Pool,
    now: DateTime<Utc>,
) -> Result<(Vec<Outbound>, Option<DateTime<Utc>>), WorkError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let due = tx
        .query(
            "SELECT session_id, store_id, device_id, started_at, lease_until FROM sessions
             WHERE ended_at IS NULL AND lease_until <= $1
             ORDER BY lease_until
             LIMIT $2
             FOR UPDATE SKIP LOCKED",
            &[&now, &BATCH],
        )
        .await?;
    let mut messages = Vec::new();
    for row in &due {
        let (Ok(store), Ok(device)) = (StoreId::parse(row.get(1)), DeviceId::parse(row.get(2)))
        else {
            continue; // ids are validated before they are stored
        };
        let session_id = SessionId::from_uuid(row.get(0));
        let started_at: DateTime<Utc> = row.get(3);
        let lease_until: DateTime<Utc> = row.get(4);
        let command_id = CommandId::random();
        tx.execute(
            "UPDATE sessions SET ended_at = $2, end_reason = $3, stop_command_id = $4 WHERE session_id = $1",
            &[
                &session_id.as_uuid(),
                &now,
                &EndReason::BookingEnded.as_str(),
                &command_id.as_uuid(),
            ],
        )
        .await?;
        let event = Event {
            at: now,
            store: store.clone(),
            device: Some(device.clone()),
            kind: EventKind::SessionEnded {
                session_id,
                started_at,
                ended_at: now,
                reason: EndReason::BookingEnded,
                used_ms: (now - started_at).num_milliseconds().max(0) as u64,
            },
        };
        audit::record(&tx, &event).await?;
        let lateness_ms = (now - lease_until).num_milliseconds();
        tracing::info!(%store, %device, %session_id, lateness_ms, "booking ended, stopping the session");
        let stop = CommandAction::Stop {
            session_id,
            reason: EndReason::BookingEnded,
        };
        outbox::enqueue(
            &tx,
            &store,
            &device,
            command_id,
            stop,
            now + outbox::STOP_EXPIRY,
            now,
        )
        .await?;
        messages.push(event_message(&event));
    }
    let next_due: Option<DateTime<Utc>> = tx
        .query_one(
            "SELECT min(lease_until) FROM sessions WHERE ended_at IS NULL AND lease_until > $1",
            &[&now],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok((messages, next_due))
}
