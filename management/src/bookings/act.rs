//! The booking actions, each inside the transaction that records its reply: reserve, cancel and
//! extend reuse the operator code ([`crate::booking`], [`crate::actions`]) and yield the same
//! store events; free slots, bookings and ticket status only read.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use mujin_protocol::booking::{
    self, BookingAction, BookingEntry, BookingReply, BookingRequest, ErrorCode, Refusal,
    TicketStatus,
};
use mujin_protocol::{DeviceId, IntegratorId, SessionId, StoreId, TicketId};
use tokio_postgres::error::SqlState;

use super::Desk;
use crate::actions::{self, CancelError, ExtendError, NewEnd, SessionError};
use crate::booking::{self as reservations, BookingError};
use crate::db::{sql_state, DbError, WorkError};

/// A refusal, or a database failure for the caller to retry.
enum Failure {
    Refused(Refusal),
    Db(WorkError),
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        Failure::Refused(refusal)
    }
}

impl<E: Into<WorkError>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure::Db(error.into())
    }
}

fn refused(code: ErrorCode, detail: impl Into<String>) -> Failure {
    Failure::Refused(Refusal::new(code, detail))
}

/// Carries out one authenticated request for `integrator`.
pub(super) async fn act(
    desk: &Desk,
    tx: &mut Transaction<'_>,
    integrator: &IntegratorId,
    request: &BookingRequest,
    now: DateTime<Utc>,
) -> Result<BookingReply, WorkError> {
    let done = BookingReply::done(request.request_id, request.action.name());
    let outcome = match &request.action {
        BookingAction::Reserve {
            store,
            device,
            from,
            minutes,
        } => {
            reserve(
                desk,
                tx,
                integrator,
                (store, device),
                (*from, *minutes),
                now,
                done,
            )
            .await
        }
        BookingAction::Cancel { ticket_id } => cancel(tx, integrator, *ticket_id, now, done).await,
        BookingAction::Extend { ticket_id, minutes } => {
            extend(tx, integrator, *ticket_id, *minutes, now, done).await
        }
        BookingAction::FreeSlots {
            store,
            device,
            from,
            to,
        } => free_slots(&*tx, (store, device), (*from, *to), done).await,
        BookingAction::Bookings {
            store,
            device,
            from,
            to,
        } => bookings(&*tx, integrator, (store, device), (*from, *to), now, done).await,
        BookingAction::TicketStatus { ticket_id } => {
            ticket_status(&*tx, integrator, *ticket_id, now, done).await
        }
    };
    match outcome {
        Ok(reply) => Ok(reply),
        Err(Failure::Refused(refusal)) => Ok(BookingReply::refused(
            Some(request.request_id),
            Some(request.action.name()),
            refusal,
        )),
        Err(Failure::Db(error)) => Err(error),
    }
}

/// `unknown_store`, `unknown_device` or (when `in_service` is required) `out_of_service`.
async fn check_device(
    client: &impl GenericClient,
    (store, device): (&StoreId, &DeviceId),
    in_service: bool,
) -> Result<(), Failure> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM stores WHERE store_id = $1),
                    (SELECT in_service FROM devices WHERE store_id = $1 AND device_id = $2)",
            &[&store.as_str(), &device.as_str()],
        )
        .await?;
    let (store_known, service): (bool, Option<bool>) = (row.get(0), row.get(1));
    match service {
        _ if !store_known => Err(refused(
            ErrorCode::UnknownStore,
            format!("no store {store}"),
        )),
        None => Err(refused(
            ErrorCode::UnknownDevice,
            format!("no device {device} in store {store}"),
        )),
        Some(false) if in_service => Err(refused(
            ErrorCode::OutOfService,
            format!("device {store}/{device} is out of service"),
        )),
        Some(_) => Ok(()),
    }
}

async fn reserve(
    desk: &Desk,
    tx: &mut Transaction<'_>,
    integrator: &IntegratorId,
    target: (&StoreId, &DeviceId),
    (from, minutes): (DateTime<Utc>, u32),
    now: DateTime<Utc>,
    mut reply: BookingReply,
) -> Result<BookingReply, Failure> {
    let (from, to) = booking::reserve_window(from, minutes, now)?;
    check_device(&*tx, target, true).await?;
    let keys = desk.ticket_keys.current();
    let savepoint = tx.savepoint("reserve").await?;
    let booked = reservations::reserve_in(
        &savepoint,
        &keys.signing,
        target,
        (from, to),
        Some(integrator),
        now,
    )
    .await;
    let booking = match booked {
        Ok(booking) => {
            savepoint.commit().await?;
            booking
        }
        Err(error) => {
            drop(savepoint); // back to before the insert
            return Err(match error {
                BookingError::Overlap { .. } => overlap(&*tx, target, (from, to), None).await?,
                BookingError::UnknownDevice { store, device } => refused(
                    ErrorCode::UnknownDevice,
                    format!("no device {device} in store {store}"),
                ),
                BookingError::EmptyWindow => refused(ErrorCode::BadWindow, error.to_string()),
                BookingError::WindowInPast(_) => {
                    refused(ErrorCode::WindowInPast, error.to_string())
                }
                BookingError::Db(DbError::Postgres(error)) => Failure::Db(error.into()),
                BookingError::Db(DbError::Connect(error)) => Failure::Db(error.into()),
                BookingError::Db(error) => refused(ErrorCode::Unavailable, error.to_string()),
            });
        }
    };
    reply.ticket_id = Some(booking.claims.ticket_id);
    reply.ticket = Some(booking.ticket);
    reply.store = Some(target.0.clone());
    reply.device = Some(target.1.clone());
    reply.valid_from = Some(booking.claims.not_before);
    reply.valid_until = Some(booking.claims.not_after);
    Ok(reply)
}

/// `overlap`, naming the first live booking in the way of [`from`, `to`) (other than `own`).
async fn overlap(
    client: &impl GenericClient,
    (store, device): (&StoreId, &DeviceId),
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    own: Option<TicketId>,
) -> Result<Failure, WorkError> {
    let row = client
        .query_opt(
            "SELECT lower(period), upper(period) FROM reservations
             WHERE store_id = $1 AND device_id = $2 AND cancelled_at IS NULL
               AND period && tstzrange($3, $4, '[)') AND ticket_id IS DISTINCT FROM $5
             ORDER BY lower(period) LIMIT 1",
            &[
                &store.as_str(),
                &device.as_str(),
                &from,
                &to,
                &own.map(|id| id.as_uuid()),
            ],
        )
        .await?;
    let detail = match row {
        Some(row) => format!(
            "{device} is booked from {} to {}",
            time(row.get(0)),
            time(row.get(1))
        ),
        None => format!("{device} is booked during part of that window"),
    };
    Ok(refused(ErrorCode::Overlap, detail))
}

/// One of `integrator`'s bookings, locked when `lock` (for a change).
struct Owned {
    store: StoreId,
    device: DeviceId,
    valid_from: DateTime<Utc>,
    valid_until: DateTime<Utc>,
    /// The session its ticket started, if any.
    session: Option<SessionId>,
    status: TicketStatus,
}

async fn owned(
    client: &impl GenericClient,
    integrator: &IntegratorId,
    ticket_id: TicketId,
    lock: bool,
    now: DateTime<Utc>,
) -> Result<Owned, Failure> {
    let sql = if lock {
        "SELECT r.store_id, r.device_id, lower(r.period), upper(r.period), r.cancel_reason,
                s.session_id, s.ended_at IS NOT NULL
         FROM reservations r LEFT JOIN sessions s ON s.ticket_id = r.ticket_id
         WHERE r.ticket_id = $1 AND r.integrator = $2 FOR UPDATE OF r"
    } else {
        "SELECT r.store_id, r.device_id, lower(r.period), upper(r.period), r.cancel_reason,
                s.session_id, s.ended_at IS NOT NULL
         FROM reservations r LEFT JOIN sessions s ON s.ticket_id = r.ticket_id
         WHERE r.ticket_id = $1 AND r.integrator = $2"
    };
    let unknown = || {
        refused(
            ErrorCode::UnknownTicket,
            format!("no booking {ticket_id} of integrator {integrator}"),
        )
    };
    let row = client
        .query_opt(sql, &[&ticket_id.as_uuid(), &integrator.as_str()])
        .await?
        .ok_or_else(unknown)?;
    let (Ok(store), Ok(device)) = (StoreId::parse(row.get(0)), DeviceId::parse(row.get(1))) else {
        return Err(unknown());
    };
    let valid_until: DateTime<Utc> = row.get(3);
    let cancel_reason: Option<String> = row.get(4);
    let session: Option<uuid::Uuid> = row.get(5);
    let ended: Option<bool> = row.get(6);
    let session_state = session.map(|_| ended.unwrap_or(false));
    Ok(Owned {
        store,
        device,
        valid_from: row.get(2),
        valid_until,
        session: session.map(SessionId::from_uuid),
        status: TicketStatus::of(cancel_reason.as_deref(), session_state, valid_until, now),
    })
}

async fn cancel(
    tx: &mut Transaction<'_>,
    integrator: &IntegratorId,
    ticket_id: TicketId,
    now: DateTime<Utc>,
    mut reply: BookingReply,
) -> Result<BookingReply, Failure> {
    let booking = owned(&*tx, integrator, ticket_id, true, now).await?;
    not_over(&booking, ticket_id, "cancel")?;
    if booking.status == TicketStatus::InUse {
        return Err(refused(
            ErrorCode::AlreadyUsed,
            format!("booking {ticket_id} is in use: its session started"),
        ));
    }
    let by = format!("integrator:{integrator}");
    match actions::cancel_in(&*tx, ticket_id, &by, now).await {
        Ok(()) => {}
        Err(CancelError::Db(error)) => return Err(Failure::Db(error)),
        Err(CancelError::UnknownTicket(_)) => {
            return Err(refused(
                ErrorCode::UnknownTicket,
                format!("no booking {ticket_id}"),
            ))
        }
        Err(error @ CancelError::AlreadyCancelled { .. }) => {
            return Err(refused(ErrorCode::Cancelled, error.to_string()))
        }
        Err(error @ CancelError::AlreadyUsed { .. }) => {
            return Err(refused(ErrorCode::AlreadyUsed, error.to_string()))
        }
    }
    reply.ticket_id = Some(ticket_id);
    Ok(reply)
}

/// `cancelled`, `already_used` (cancel) or `ended` for a booking that can no longer change.
fn not_over(booking: &Owned, ticket_id: TicketId, verb: &str) -> Result<(), Failure> {
    match booking.status {
        TicketStatus::Booked | TicketStatus::InUse => Ok(()),
        TicketStatus::Cancelled => Err(refused(
            ErrorCode::Cancelled,
            format!("booking {ticket_id} was cancelled"),
        )),
        TicketStatus::Used if verb == "cancel" => Err(refused(
            ErrorCode::AlreadyUsed,
            format!("booking {ticket_id} was used: its session ended"),
        )),
        TicketStatus::Used | TicketStatus::NoShow => Err(refused(
            ErrorCode::Ended,
            format!(
                "cannot {verb} booking {ticket_id}: its window ended at {}",
                time(booking.valid_until)
            ),
        )),
    }
}

async fn extend(
    tx: &mut Transaction<'_>,
    integrator: &IntegratorId,
    ticket_id: TicketId,
    minutes: u32,
    now: DateTime<Utc>,
    mut reply: BookingReply,
) -> Result<BookingReply, Failure> {
    let length = booking::check_minutes(minutes)?;
    let booking = owned(&*tx, integrator, ticket_id, true, now).await?;
    not_over(&booking, ticket_id, "extend")?;
    let target = (&booking.store, &booking.device);
    let valid_until = match booking.session {
        Some(session_id) => {
            let by = format!("integrator:{integrator}");
            let moved =
                actions::extend_in(tx, session_id, NewEnd::AfterCurrent(length), &by, now).await;
            match moved {
                Ok(extension) => extension.lease_until,
                Err(ExtendError::DeviceBooked { new_end, .. }) => {
                    let window = (booking.valid_until, new_end);
                    return Err(overlap(&*tx, target, window, Some(ticket_id)).await?);
                }
                Err(ExtendError::Db(error) | ExtendError::Session(SessionError::Db(error))) => {
                    return Err(Failure::Db(error))
                }
                Err(error) => return Err(refused(ErrorCode::Ended, error.to_string())),
            }
        }
        None => {
            let new_end = booking.valid_until + length;
            let savepoint = tx.savepoint("extend_booking").await?;
            let moved = savepoint
                .execute(
                    "UPDATE reservations SET period = tstzrange(lower(period), $2, '[)')
                     WHERE ticket_id = $1",
                    &[&ticket_id.as_uuid(), &new_end],
                )
                .await;
            match moved {
                Ok(_) => savepoint.commit().await?,
                Err(error) if is_exclusion(&error) => {
                    drop(savepoint);
                    let window = (booking.valid_until, new_end);
                    return Err(overlap(&*tx, target, window, Some(ticket_id)).await?);
                }
                Err(error) => return Err(error.into()),
            }
            tracing::info!(store = %booking.store, device = %booking.device, %ticket_id, %new_end, %integrator, "booking extended (on commit)");
            new_end
        }
    };
    reply.ticket_id = Some(ticket_id);
    reply.valid_until = Some(valid_until);
    Ok(reply)
}

fn is_exclusion(error: &tokio_postgres::Error) -> bool {
    matches!(sql_state(error), Some(state) if *state == SqlState::EXCLUSION_VIOLATION)
}

async fn free_slots(
    client: &impl GenericClient,
    target: (&StoreId, &DeviceId),
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    mut reply: BookingReply,
) -> Result<BookingReply, Failure> {
    booking::check_span(from, to)?;
    check_device(client, target, true).await?;
    let rows = client
        .query(
            "SELECT lower(period), upper(period) FROM reservations
             WHERE store_id = $1 AND device_id = $2 AND cancelled_at IS NULL
               AND period && tstzrange($3, $4, '[)')",
            &[&target.0.as_str(), &target.1.as_str(), &from, &to],
        )
        .await?;
    let busy = rows.iter().map(|row| (row.get(0), row.get(1)));
    reply.store = Some(target.0.clone());
    reply.device = Some(target.1.clone());
    reply.slots = Some(booking::free_slots(from, to, busy));
    Ok(reply)
}

async fn bookings(
    client: &impl GenericClient,
    integrator: &IntegratorId,
    target: (&StoreId, &DeviceId),
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    now: DateTime<Utc>,
    mut reply: BookingReply,
) -> Result<BookingReply, Failure> {
    booking::check_span(from, to)?;
    check_device(client, target, false).await?;
    // Others' cancelled bookings are left out: they are nobody's business and hold no time.
    let rows = client
        .query(
            "SELECT r.ticket_id, lower(r.period), upper(r.period), r.cancel_reason,
                    r.integrator IS NOT DISTINCT FROM $5, s.session_id IS NOT NULL,
                    s.ended_at IS NOT NULL
             FROM reservations r LEFT JOIN sessions s ON s.ticket_id = r.ticket_id
             WHERE r.store_id = $1 AND r.device_id = $2 AND r.period && tstzrange($3, $4, '[)')
               AND (r.cancel_reason IS DISTINCT FROM 'cancelled'
                    OR r.integrator IS NOT DISTINCT FROM $5)
             ORDER BY lower(r.period), r.ticket_id",
            &[
                &target.0.as_str(),
                &target.1.as_str(),
                &from,
                &to,
                &integrator.as_str(),
            ],
        )
        .await?;
    let entries = rows
        .iter()
        .map(|row| {
            let until: DateTime<Utc> = row.get(2);
            let reason: Option<String> = row.get(3);
            let own: bool = row.get(4);
            let session = row.get::<_, bool>(5).then(|| row.get::<_, bool>(6));
            BookingEntry {
                from: row.get(1),
                to: until,
                status: TicketStatus::of(reason.as_deref(), session, until, now),
                ticket_id: own.then(|| TicketId::from_uuid(row.get(0))),
            }
        })
        .collect();
    reply.store = Some(target.0.clone());
    reply.device = Some(target.1.clone());
    reply.bookings = Some(entries);
    Ok(reply)
}

async fn ticket_status(
    client: &impl GenericClient,
    integrator: &IntegratorId,
    ticket_id: TicketId,
    now: DateTime<Utc>,
    mut reply: BookingReply,
) -> Result<BookingReply, Failure> {
    let booking = owned(client, integrator, ticket_id, false, now).await?;
    reply.ticket_id = Some(ticket_id);
    reply.store = Some(booking.store);
    reply.device = Some(booking.device);
    reply.valid_from = Some(booking.valid_from);
    reply.valid_until = Some(booking.valid_until);
    reply.status = Some(booking.status);
    Ok(reply)
}

/// Times in details: whole seconds, UTC.
fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
