//! Operator actions: force a stop, extend (or shorten) a session, take a device out of service
//! or put it back, cancel a booking. Each is one transaction that records its event in the audit
//! log (the dispatcher publishes it and any command it queued) and says who asked for it in the
//! log. Plain async functions over the pool, so the command line and MQTT requests share them.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool, Transaction};
use mujin_protocol::message::{CommandAction, EndReason, Event, EventKind};
use mujin_protocol::{CommandId, DeviceId, SessionId, StoreId, TicketId};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::audit;
use crate::db::{sql_state, WorkError};
use crate::outbox;
use crate::stop_timer::{self, OpenSession};

/// Why a session could not be acted on.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no session {0}")]
    Unknown(SessionId),
    #[error("session {session_id} already ended at {} ({reason})", .ended_at.to_rfc3339())]
    AlreadyEnded {
        session_id: SessionId,
        ended_at: DateTime<Utc>,
        reason: String,
    },
    #[error(transparent)]
    Db(#[from] WorkError),
}

/// Why a session could not be extended (or shortened).
#[derive(Debug, thiserror::Error)]
pub enum ExtendError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("the new end {} is not in the future", .0.to_rfc3339())]
    EndInPast(DateTime<Utc>),
    #[error("the new end {} is before the booking starts ({})", .new_end.to_rfc3339(), .starts_at.to_rfc3339())]
    BeforeBookingStart {
        new_end: DateTime<Utc>,
        starts_at: DateTime<Utc>,
    },
    #[error("session {session_id} already ends at {}", .lease_until.to_rfc3339())]
    Unchanged {
        session_id: SessionId,
        lease_until: DateTime<Utc>,
    },
    #[error("device {store}/{device} is booked before {}: another booking starts at {}", .new_end.to_rfc3339(), .next_start.map_or_else(|| "an overlapping time".to_owned(), |start| start.to_rfc3339()))]
    DeviceBooked {
        store: StoreId,
        device: DeviceId,
        new_end: DateTime<Utc>,
        next_start: Option<DateTime<Utc>>,
    },
    #[error(transparent)]
    Db(#[from] WorkError),
}

/// Why a device's service state could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("unknown device {store}/{device}")]
    UnknownDevice { store: StoreId, device: DeviceId },
    #[error(transparent)]
    Db(#[from] WorkError),
}

/// Why a booking could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no booking with ticket {0}")]
    UnknownTicket(TicketId),
    #[error("booking {ticket_id} was already cancelled at {} ({reason})", .cancelled_at.to_rfc3339())]
    AlreadyCancelled {
        ticket_id: TicketId,
        cancelled_at: DateTime<Utc>,
        reason: String,
    },
    #[error("booking {ticket_id} was already used: session {session_id} started with it (stop the session instead)")]
    AlreadyUsed {
        ticket_id: TicketId,
        session_id: SessionId,
    },
    #[error(transparent)]
    Db(#[from] WorkError),
}

macro_rules! db_errors {
    ($($error:ty),*) => {$(
        impl From<tokio_postgres::Error> for $error {
            fn from(error: tokio_postgres::Error) -> Self {
                WorkError::from(error).into()
            }
        }
        impl From<deadpool_postgres::PoolError> for $error {
            fn from(error: deadpool_postgres::PoolError) -> Self {
                WorkError::from(error).into()
            }
        }
    )*};
}
db_errors!(SessionError, ExtendError, ServiceError, CancelError);

/// A session that was extended or shortened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub session_id: SessionId,
    pub store: StoreId,
    pub device: DeviceId,
    pub previous_lease_until: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
}

/// The new end of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewEnd {
    /// Exactly this time.
    At(DateTime<Utc>),
    /// This much after the session's current end (read inside the transaction, so two
    /// extensions add up).
    AfterCurrent(chrono::Duration),
}

/// A device's service state after [`set_in_service`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceChange {
    pub in_service: bool,
    /// False when the device already was in that state (nothing recorded).
    pub changed: bool,
    /// Bookings still ahead on the device that no session used yet.
    pub affected_tickets: Vec<TicketId>,
    /// A session running on the device (it is not stopped by going out of service).
    pub running_session: Option<SessionId>,
}

/// An open session as operators list it.
#[derive(Debug, Clone)]
pub struct SessionSummary {
    pub session: OpenSession,
    pub warned_at: Option<DateTime<Utc>>,
}

/// Reads and locks a session; an unknown or ended one is an error.
async fn lock_open_session(
    tx: &impl GenericClient,
    session_id: SessionId,
) -> Result<OpenSession, SessionError> {
    let row = tx
        .query_opt(
            "SELECT session_id, store_id, device_id, started_at, lease_until, ended_at, end_reason
             FROM sessions WHERE session_id = $1 FOR UPDATE",
            &[&session_id.as_uuid()],
        )
        .await?
        .ok_or(SessionError::Unknown(session_id))?;
    if let Some(ended_at) = row.get::<_, Option<DateTime<Utc>>>(5) {
        return Err(SessionError::AlreadyEnded {
            session_id,
            ended_at,
            reason: row.get::<_, Option<String>>(6).unwrap_or_default(),
        });
    }
    OpenSession::from_row(&row).ok_or(SessionError::Unknown(session_id))
}

/// Stops a session now: closes it with reason `forced`, records `session_ended` and queues the
/// stop command. `by` names who asked (logged).
pub async fn force_stop(
    pool: &Pool,
    session_id: SessionId,
    by: &str,
    now: DateTime<Utc>,
) -> Result<OpenSession, SessionError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let session = lock_open_session(&tx, session_id).await?;
    stop_timer::end_session(&tx, &session, EndReason::Forced, now).await?;
    tx.commit().await?;
    tracing::info!(store = %session.store, device = %session.device, %session_id, by, "session stopped by an operator");
    Ok(session)
}

/// Moves the end of a session (later or earlier, but after `now`): the booking's window and
/// the session's lease move together, so the stop timer follows; the database refuses an end
/// that runs into another live booking of the device. Queues the extend command, records
/// `session_extended`, and clears the warning when the new end is beyond the warning window.
pub async fn extend(
    pool: &Pool,
    session_id: SessionId,
    new_end: NewEnd,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Extension, ExtendError> {
    let mut client = pool.get().await?;
    let mut tx = client.transaction().await?;
    let extension = extend_in(&mut tx, session_id, new_end, by, now).await?;
    tx.commit().await?;
    Ok(extension)
}

/// [`extend`] inside the caller's transaction (in a savepoint of its own, so a refusal leaves
/// the transaction usable): an operator request records its reply in the same commit, which
/// makes a request sent again unable to extend twice.
pub async fn extend_in(
    outer: &mut Transaction<'_>,
    session_id: SessionId,
    new_end: NewEnd,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Extension, ExtendError> {
    let tx = outer.savepoint("extend").await?;
    let session = lock_open_session(&tx, session_id).await?;
    let previous = session.lease_until;
    // Booking windows are whole seconds, like the tickets that carry them.
    let lease_until = truncate_to_second(match new_end {
        NewEnd::At(at) => at,
        NewEnd::AfterCurrent(delta) => previous + delta,
    });
    if lease_until <= now {
        return Err(ExtendError::EndInPast(lease_until));
    }
    if lease_until == previous {
        return Err(ExtendError::Unchanged {
            session_id,
            lease_until,
        });
    }
    let booking = tx
        .query_one(
            "SELECT r.ticket_id, lower(r.period), st.warn_minutes
             FROM sessions s JOIN reservations r ON r.ticket_id = s.ticket_id
                             JOIN stores st ON st.store_id = s.store_id
             WHERE s.session_id = $1",
            &[&session_id.as_uuid()],
        )
        .await?;
    let (ticket_id, starts_at, warn_minutes): (Uuid, DateTime<Utc>, i32) =
        (booking.get(0), booking.get(1), booking.get(2));
    if lease_until <= starts_at {
        return Err(ExtendError::BeforeBookingStart {
            new_end: lease_until,
            starts_at,
        });
    }
    let moved = tx
        .execute(
            "UPDATE reservations SET period = tstzrange(lower(period), $2, '[)') WHERE ticket_id = $1",
            &[&ticket_id, &lease_until],
        )
        .await;
    if let Err(error) = moved {
        if matches!(sql_state(&error), Some(state) if *state == SqlState::EXCLUSION_VIOLATION) {
            drop(tx); // back to the savepoint
            let next_start = next_booking_start(&*outer, &session, ticket_id)
                .await
                .ok()
                .flatten();
            return Err(ExtendError::DeviceBooked {
                store: session.store,
                device: session.device,
                new_end: lease_until,
                next_start,
            });
        }
        return Err(error.into());
    }
    let outside_warning = lease_until - chrono::Duration::minutes(warn_minutes.into()) > now;
    tx.execute(
        "UPDATE sessions SET lease_until = $2,
                             warned_at = CASE WHEN $3 THEN NULL ELSE warned_at END
         WHERE session_id = $1",
        &[&session_id.as_uuid(), &lease_until, &outside_warning],
    )
    .await?;
    let command = CommandAction::Extend {
        session_id,
        lease_until,
        remaining_ms: (lease_until - now).num_milliseconds().max(0) as u64,
    };
    let (store, device) = (&session.store, &session.device);
    outbox::enqueue(
        &tx,
        store,
        device,
        CommandId::random(),
        command,
        lease_until,
        now,
    )
    .await?;
    let event = Event {
        at: now,
        store: store.clone(),
        device: Some(device.clone()),
        kind: EventKind::SessionExtended {
            session_id,
            previous_lease_until: previous,
            lease_until,
        },
    };
    audit::record(&tx, &event).await?;
    tx.commit().await?;
    tracing::info!(%store, %device, %session_id, %previous, %lease_until, by, "session end moved by an operator (on commit)");
    Ok(Extension {
        session_id,
        store: session.store,
        device: session.device,
        previous_lease_until: previous,
        lease_until,
    })
}

/// The start of the first other live booking of the session's device after the session's
/// current end, for the operator's error message.
async fn next_booking_start(
    client: &impl GenericClient,
    session: &OpenSession,
    own_ticket: Uuid,
) -> Result<Option<DateTime<Utc>>, WorkError> {
    let row = client
        .query_one(
            "SELECT min(lower(period)) FROM reservations
             WHERE store_id = $1 AND device_id = $2 AND cancelled_at IS NULL
               AND ticket_id <> $3 AND upper(period) > $4",
            &[
                &session.store.as_str(),
                &session.device.as_str(),
                &own_ticket,
                &session.lease_until,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Takes a device out of service (scans are refused with `out_of_service`) or puts it back.
/// A running session is not stopped (see [`ServiceChange::running_session`]). Records
/// `device_service` with the bookings still ahead on the device, when the state changed.
pub async fn set_in_service(
    pool: &Pool,
    store: &StoreId,
    device: &DeviceId,
    in_service: bool,
    by: &str,
    now: DateTime<Utc>,
) -> Result<ServiceChange, ServiceError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let was: bool = tx
        .query_opt(
            "SELECT in_service FROM devices WHERE store_id = $1 AND device_id = $2 FOR UPDATE",
            &[&store.as_str(), &device.as_str()],
        )
        .await?
        .ok_or_else(|| ServiceError::UnknownDevice {
            store: store.clone(),
            device: device.clone(),
        })?
        .get(0);
    let affected_tickets: Vec<TicketId> = tx
        .query(
            "SELECT r.ticket_id FROM reservations r
             WHERE r.store_id = $1 AND r.device_id = $2 AND r.cancelled_at IS NULL
               AND upper(r.period) > $3
               AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.ticket_id = r.ticket_id)
             ORDER BY lower(r.period)",
            &[&store.as_str(), &device.as_str(), &now],
        )
        .await?
        .iter()
        .map(|row| TicketId::from_uuid(row.get(0)))
        .collect();
    let running_session = tx
        .query_opt(
            "SELECT session_id FROM sessions WHERE store_id = $1 AND device_id = $2 AND ended_at IS NULL",
            &[&store.as_str(), &device.as_str()],
        )
        .await?
        .map(|row| SessionId::from_uuid(row.get(0)));
    let changed = was != in_service;
    if changed {
        tx.execute(
            "UPDATE devices SET in_service = $3 WHERE store_id = $1 AND device_id = $2",
            &[&store.as_str(), &device.as_str(), &in_service],
        )
        .await?;
        let event = Event {
            at: now,
            store: store.clone(),
            device: Some(device.clone()),
            kind: EventKind::DeviceService {
                in_service,
                affected_tickets: affected_tickets.clone(),
            },
        };
        audit::record(&tx, &event).await?;
    }
    tx.commit().await?;
    if changed {
        tracing::info!(%store, %device, in_service, bookings_ahead = affected_tickets.len(), by, "device service state changed by an operator");
    }
    Ok(ServiceChange {
        in_service,
        changed,
        affected_tickets,
        running_session,
    })
}

/// Cancels a booking nobody used yet: it stops being live (its window is free again and its
/// ticket is refused with `cancelled`). There is no event kind for it, so it is only logged.
pub async fn cancel(
    pool: &Pool,
    ticket_id: TicketId,
    by: &str,
    now: DateTime<Utc>,
) -> Result<(), CancelError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    cancel_in(&tx, ticket_id, by, now).await?;
    tx.commit().await?;
    Ok(())
}

/// [`cancel`] inside the caller's transaction (takes effect when it commits).
pub async fn cancel_in(
    tx: &impl GenericClient,
    ticket_id: TicketId,
    by: &str,
    now: DateTime<Utc>,
) -> Result<(), CancelError> {
    let row = tx
        .query_opt(
            "SELECT store_id, device_id, cancelled_at, cancel_reason FROM reservations
             WHERE ticket_id = $1 FOR UPDATE",
            &[&ticket_id.as_uuid()],
        )
        .await?
        .ok_or(CancelError::UnknownTicket(ticket_id))?;
    if let Some(cancelled_at) = row.get::<_, Option<DateTime<Utc>>>(2) {
        return Err(CancelError::AlreadyCancelled {
            ticket_id,
            cancelled_at,
            reason: row.get::<_, Option<String>>(3).unwrap_or_default(),
        });
    }
    // A new statement, after the lock: a scan that started a session meanwhile is seen.
    let used = tx
        .query_opt(
            "SELECT session_id FROM sessions WHERE ticket_id = $1",
            &[&ticket_id.as_uuid()],
        )
        .await?;
    if let Some(used) = used {
        return Err(CancelError::AlreadyUsed {
            ticket_id,
            session_id: SessionId::from_uuid(used.get(0)),
        });
    }
    tx.execute(
        "UPDATE reservations SET cancelled_at = $2, cancel_reason = 'cancelled' WHERE ticket_id = $1",
        &[&ticket_id.as_uuid(), &now],
    )
    .await?;
    let (store, device): (String, String) = (row.get(0), row.get(1));
    tracing::info!(%store, %device, %ticket_id, by, "booking cancelled");
    Ok(())
}

/// Every open session, soonest end first.
pub async fn open_sessions(pool: &Pool) -> Result<Vec<SessionSummary>, WorkError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT session_id, store_id, device_id, started_at, lease_until, warned_at
             FROM sessions WHERE ended_at IS NULL ORDER BY lease_until, store_id, device_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            Some(SessionSummary {
                session: OpenSession::from_row(row)?,
                warned_at: row.get(5),
            })
        })
        .collect())
}

fn truncate_to_second(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(time.timestamp(), 0).unwrap_or(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_whole_seconds() {
        let time = DateTime::from_timestamp(1_000, 750_000_000).unwrap();
        assert_eq!(
            truncate_to_second(time),
            DateTime::from_timestamp(1_000, 0).unwrap()
        );
    }

    #[test]
    fn a_refused_extension_names_the_next_booking() {
        let next = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let error = ExtendError::DeviceBooked {
            store: StoreId::parse("shibuya").unwrap(),
            device: DeviceId::parse("pc-01").unwrap(),
            new_end: next + chrono::Duration::minutes(10),
            next_start: Some(next),
        };
        assert_eq!(
            error.to_string(),
            "device shibuya/pc-01 is booked before 2027-01-15T08:10:00+00:00: another booking starts at 2027-01-15T08:00:00+00:00"
        );
    }
}
