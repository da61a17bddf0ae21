//! The registry of stores and devices, and reservations: a booked window on one device and
//! the signed ticket that goes with it. Overlaps are refused by the database itself.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use mujin_protocol::message::{Event, EventKind};
use mujin_protocol::ticket::{SigningKey, TicketClaims};
use mujin_protocol::{DeviceId, IntegratorId, StoreId, TicketId};
use tokio_postgres::error::SqlState;

use crate::audit;
use crate::db::{sql_state, DbError};

/// Why a booking was refused.
#[derive(Debug, thiserror::Error)]
pub enum BookingError {
    #[error(
        "unknown device {store}/{device}; register it first with `mujin-management device-add`"
    )]
    UnknownDevice { store: StoreId, device: DeviceId },
    #[error("device {store}/{device} is already booked during part of that window")]
    Overlap { store: StoreId, device: DeviceId },
    #[error("the booking window is empty: it must end after it starts")]
    EmptyWindow,
    #[error("the booking window ended in the past ({0})")]
    WindowInPast(DateTime<Utc>),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for BookingError {
    fn from(error: tokio_postgres::Error) -> Self {
        BookingError::Db(DbError::Postgres(error))
    }
}

impl From<deadpool_postgres::PoolError> for BookingError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        BookingError::Db(DbError::Connect(error))
    }
}

/// A confirmed reservation with its ticket.
#[derive(Debug, Clone)]
pub struct Booking {
    pub claims: TicketClaims,
    /// The signed ticket text, as encoded in the QR code.
    pub ticket: String,
}

/// Registers a store (or renames it).
pub async fn add_store(pool: &Pool, store: &StoreId, name: &str) -> Result<(), BookingError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO stores (store_id, name) VALUES ($1, $2)
             ON CONFLICT (store_id) DO UPDATE SET name = EXCLUDED.name",
            &[&store.as_str(), &name],
        )
        .await?;
    Ok(())
}

/// Registers a device (and its store when new). Registering twice is harmless.
pub async fn add_device(
    pool: &Pool,
    store: &StoreId,
    device: &DeviceId,
    name: &str,
) -> Result<(), BookingError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO stores (store_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&store.as_str()],
        )
        .await?;
    client
        .execute(
            "INSERT INTO devices (store_id, device_id, name) VALUES ($1, $2, $3)
             ON CONFLICT (store_id, device_id) DO UPDATE SET name = EXCLUDED.name",
            &[&store.as_str(), &device.as_str(), &name],
        )
        .await?;
    Ok(())
}

/// A store's session rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    /// Minutes before the end of a session its customer is warned (0: no warning).
    pub warn_minutes: i32,
    /// How long after its start a booking nobody scanned is given up as a no-show.
    pub no_show_grace_seconds: i32,
    /// Whether its devices may start a provisional session when management does not answer.
    pub offline_start: bool,
}

/// The store settings to change (`None`: keep).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreSettingsChange {
    pub warn_minutes: Option<i32>,
    pub no_show_grace_seconds: Option<i32>,
    pub offline_start: Option<bool>,
}

/// Why store settings could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum StoreSettingsError {
    #[error("unknown store {0}")]
    UnknownStore(StoreId),
    #[error("{0} must be between 0 and {1}")]
    OutOfRange(&'static str, i32),
    #[error(transparent)]
    Db(#[from] BookingError),
}

/// Changes the given settings of a store (the others stay) and returns them all.
pub async fn update_store_settings(
    pool: &Pool,
    store: &StoreId,
    change: StoreSettingsChange,
) -> Result<StoreSettings, StoreSettingsError> {
    let StoreSettingsChange {
        warn_minutes,
        no_show_grace_seconds,
        offline_start,
    } = change;
    if warn_minutes.is_some_and(|minutes| !(0..=24 * 60).contains(&minutes)) {
        return Err(StoreSettingsError::OutOfRange("warn minutes", 24 * 60));
    }
    if no_show_grace_seconds.is_some_and(|seconds| !(0..=24 * 3600).contains(&seconds)) {
        return Err(StoreSettingsError::OutOfRange(
            "no-show grace seconds",
            24 * 3600,
        ));
    }
    let client = pool.get().await.map_err(BookingError::from)?;
    let row = client
        .query_opt(
            "UPDATE stores SET warn_minutes = coalesce($2, warn_minutes),
                               no_show_grace_seconds = coalesce($3, no_show_grace_seconds),
                               offline_start = coalesce($4, offline_start)
             WHERE store_id = $1
             RETURNING warn_minutes, no_show_grace_seconds, offline_start",
            &[
                &store.as_str(),
                &warn_minutes,
                &no_show_grace_seconds,
                &offline_start,
            ],
        )
        .await
        .map_err(BookingError::from)?
        .ok_or_else(|| StoreSettingsError::UnknownStore(store.clone()))?;
    Ok(StoreSettings {
        warn_minutes: row.get(0),
        no_show_grace_seconds: row.get(1),
        offline_start: row.get(2),
    })
}

/// The devices of every store, ordered.
pub async fn list_devices(pool: &Pool) -> Result<Vec<(StoreId, DeviceId)>, BookingError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT store_id, device_id FROM devices ORDER BY store_id, device_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let store = StoreId::parse(row.get(0)).ok()?;
            let device = DeviceId::parse(row.get(1)).ok()?;
            Some((store, device))
        })
        .collect())
}

/// Books `device` of `store` from `starts_at` (inclusive) to `ends_at` (exclusive) and signs
/// its ticket with `key`.
pub async fn reserve(
    pool: &Pool,
    key: &SigningKey,
    store: &StoreId,
    device: &DeviceId,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Booking, BookingError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let booking = reserve_in(&tx, key, (store, device), (starts_at, ends_at), None, now).await?;
    tx.commit().await?;
    Ok(booking)
}

/// [`reserve`] inside the caller's transaction, for `owner` (the integrator that booked it, if
/// one did). A refused booking leaves the transaction aborted: call it in a savepoint to go on.
pub async fn reserve_in(
    tx: &impl GenericClient,
    key: &SigningKey,
    (store, device): (&StoreId, &DeviceId),
    (starts_at, ends_at): (DateTime<Utc>, DateTime<Utc>),
    owner: Option<&IntegratorId>,
    now: DateTime<Utc>,
) -> Result<Booking, BookingError> {
    // Tickets carry whole seconds; book what the ticket says.
    let starts_at = truncate_to_second(starts_at);
    let ends_at = truncate_to_second(ends_at);
    if ends_at <= starts_at {
        return Err(BookingError::EmptyWindow);
    }
    if ends_at <= now {
        return Err(BookingError::WindowInPast(ends_at));
    }
    let claims = TicketClaims {
        ticket_id: TicketId::random(),
        store: store.clone(),
        device: device.clone(),
        not_before: starts_at,
        not_after: ends_at,
        key_id: key.key_id().clone(),
    };
    let inserted = tx
        .execute(
            "INSERT INTO reservations (ticket_id, store_id, device_id, period, key_id, integrator)
             VALUES ($1, $2, $3, tstzrange($4, $5, '[)'), $6, $7)",
            &[
                &claims.ticket_id.as_uuid(),
                &store.as_str(),
                &device.as_str(),
                &starts_at,
                &ends_at,
                &claims.key_id.as_str(),
                &owner.map(IntegratorId::as_str),
            ],
        )
        .await;
    if let Err(error) = inserted {
        let (store, device) = (store.clone(), device.clone());
        return Err(match sql_state(&error) {
            Some(state) if *state == SqlState::EXCLUSION_VIOLATION => {
                BookingError::Overlap { store, device }
            }
            Some(state) if *state == SqlState::FOREIGN_KEY_VIOLATION => {
                BookingError::UnknownDevice { store, device }
            }
            _ => error.into(),
        });
    }
    let event = Event {
        at: now,
        store: store.clone(),
        device: Some(device.clone()),
        kind: EventKind::ReservationCreated {
            ticket_id: claims.ticket_id,
            not_before: starts_at,
            not_after: ends_at,
        },
    };
    audit::record(tx, &event).await?;
    let ticket = key.issue(&claims);
    Ok(Booking { claims, ticket })
}

fn truncate_to_second(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(time.timestamp(), 0).unwrap_or(time)
}
