//! Operator requests over MQTT (force stop, extend, service state, cancel, walk-in ticket):
//! each must be signed by the operator of its topic, recently, and be allowed by the operator's
//! role (see [`crate::operators`]); each request id is carried out once, its reply recorded in
//! `requests`, and the reply sent on the operator's replies topic after the commit. A request
//! sent again gets the recorded reply. Snapshot queries only read, so they are answered directly
//! (see [`crate::snapshot`]). What is carried out or refused for its role is recorded in
//! `requests`, what fails authentication in `refused_requests`; both leave an `operator_action`
//! event when they concern a store.

use crate::db::CachedStatements;
use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::{GenericClient, Pool, Transaction};
use mujin_protocol::message::{self, Reply, Request, RequestAction};
use mujin_protocol::snapshot::SnapshotPart;
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::topic::Topic;
use mujin_protocol::{DeviceId, OperatorId, RequestId, SessionId, StoreId, TicketId};

use crate::actions::{self, CancelError, ExtendError, NewEnd, ServiceError, SessionError};
use crate::booking::{self, BookingError};
use crate::db::{DbError, WorkError};
use crate::mqtt::Outbound;
use crate::operators::{self, Signer};
use crate::snapshot::{self, SnapshotError};

/// The most minutes one request may extend a session by or book a walk-in for (a day).
pub const MAX_MINUTES: u32 = 24 * 60;

/// The longest parser message quoted back in a reply.
const DETAIL_LIMIT: usize = 200;

/// Handles one request published by `operator`. Returns the reply to publish, or `None` for a
/// payload so broken that it has no request id to answer.
pub async fn handle_request(
    pool: &Pool,
    signing_key: &SigningKey,
    operator: &OperatorId,
    payload: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<Outbound>, WorkError> {
    let request: Request = match message::decode(payload) {
        Ok(request) => request,
        Err(error) => {
            let Some(request_id) = salvage_request_id(payload) else {
                tracing::warn!(%operator, %error, "dropping a malformed request that has no request id");
                return Ok(None);
            };
            tracing::warn!(%operator, %request_id, %error, "refusing a malformed request");
            let reply = Reply {
                request_id,
                ok: false,
                detail: error.to_string().chars().take(DETAIL_LIMIT).collect(),
                ticket: None,
                snapshot: None,
            };
            return Ok(Some(reply_message(operator, &reply)));
        }
    };
    let signer = match operators::check_request(pool, operator, &request, now).await? {
        Ok(signer) => signer,
        Err(refusal) => {
            tracing::warn!(%operator, request_id = %request.request_id, action = request.action.name(), %refusal, "request refused: not authenticated");
            operators::record_refusal(pool, operator, &request, &refusal, now).await?;
            let reply = refused_reply(request.request_id, refusal.to_string());
            return Ok(Some(reply_message(operator, &reply)));
        }
    };
    if let RequestAction::Snapshot { part, store, after } = &request.action {
        // Every role may read; nothing is recorded for a read.
        let reply = match operators::authorize(&signer, &request.action) {
            Ok(()) => snapshot_reply(pool, request.request_id, *part, store, after, now).await?,
            Err(refusal) => refused_reply(request.request_id, refusal.to_string()),
        };
        return Ok(Some(reply_message(operator, &reply)));
    }
    let reply = decide_once(pool, signing_key, &signer, &request, now).await?;
    tracing::info!(%operator, role = %signer.role, request_id = %request.request_id, ok = reply.ok, detail = reply.detail, "request answered");
    Ok(Some(reply_message(operator, &reply)))
}

fn refused_reply(request_id: RequestId, detail: String) -> Reply {
    Reply {
        request_id,
        ok: false,
        detail,
        ticket: None,
        snapshot: None,
    }
}

/// One page of a snapshot, answered directly: a read-only query is neither recorded nor
/// audited, and answering it again is harmless.
async fn snapshot_reply(
    pool: &Pool,
    request_id: RequestId,
    part: SnapshotPart,
    store: &Option<StoreId>,
    after: &Option<String>,
    now: DateTime<Utc>,
) -> Result<Reply, WorkError> {
    let refused = |detail: String| refused_reply(request_id, detail);
    match snapshot::answer(
        pool,
        request_id,
        part,
        store.as_ref(),
        after.as_deref(),
        now,
    )
    .await
    {
        Ok(reply) => {
            let items = reply.snapshot.as_ref().map_or(0, |page| page.items.len());
            tracing::debug!(%request_id, %part, items, "snapshot page answered");
            Ok(reply)
        }
        Err(SnapshotError::Db(error)) if error.is_transient() => Err(error),
        Err(error) => Ok(refused(error.to_string())),
    }
}

/// Carries out a request unless its id was seen before, and records its reply.
///
/// The request row is inserted first, in a transaction that stays open while the action runs:
/// another worker handling the same id blocks on that insert until this transaction ends, then
/// finds the recorded reply (`ON CONFLICT DO NOTHING` + re-read). The actions run their own
/// transactions, except an extension, which runs inside this one: if this worker dies (or the
/// database fails) after another action committed and before the record did, the request is
/// acted on again when sent again. That is harmless for force stop, cancel and service state
/// (the second attempt is refused or changes nothing) and for a walk-in ticket (the first
/// booking overlaps the second, which is refused); an extension, the one action that would add
/// up, commits with its record or not at all.
///
/// A request the signer's role does not allow is recorded as refused, like any other answer;
/// the record and the request's `operator_action` event commit together.
async fn decide_once(
    pool: &Pool,
    signing_key: &SigningKey,
    signer: &Signer,
    request: &Request,
    now: DateTime<Utc>,
) -> Result<Reply, WorkError> {
    let operator = &signer.operator;
    let request_id = request.request_id;
    // Stored for the audit trail; these plain types always serialize.
    let body = serde_json::to_value(request).unwrap_or_default();
    let action = body
        .get("action")
        .and_then(|action| action.as_str())
        .unwrap_or("unknown")
        .to_owned();
    let mut client = pool.get().await?;
    let mut tx = client.transaction().await?;
    let claimed = tx
        .cached_execute(
            "INSERT INTO requests (request_id, operator, action, body, ok, detail, decided_at, key_id)
             VALUES ($1, $2, $3, $4, false, '', $5, $6) ON CONFLICT (request_id) DO NOTHING",
            &[
                &request_id.as_uuid(),
                &operator.as_str(),
                &action,
                &body,
                &now,
                &signer.key_id.as_str(),
            ],
        )
        .await?;
    if claimed == 0 {
        let reply = recorded_reply(&tx, request_id, operator).await?;
        tx.commit().await?;
        return Ok(reply);
    }
    // On an error the transaction is dropped, which releases the claim for the retry.
    let decided = match operators::authorize(signer, &request.action) {
        Ok(()) => act(pool, &mut tx, signing_key, operator, &request.action, now).await?,
        Err(refusal) => {
            tracing::warn!(%operator, %request_id, %refusal, "request refused for its role");
            Decided::refused(refusal)
        }
    };
    operators::record_event(&tx, operator, request, decided.ok, &decided.detail, now).await?;
    tx.cached_execute(
        "UPDATE requests SET ok = $2, detail = $3, ticket = $4 WHERE request_id = $1",
        &[
            &request_id.as_uuid(),
            &decided.ok,
            &decided.detail,
            &decided.ticket,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Reply {
        request_id,
        ok: decided.ok,
        detail: decided.detail,
        ticket: decided.ticket,
        snapshot: None,
    })
}

/// The reply recorded for a request id seen before. Another operator reusing the id is refused
/// rather than sent someone else's reply (which may carry a ticket).
async fn recorded_reply(
    client: &impl GenericClient,
    request_id: RequestId,
    operator: &OperatorId,
) -> Result<Reply, WorkError> {
    let row = client
        .cached_query_one(
            "SELECT operator, ok, detail, ticket FROM requests WHERE request_id = $1",
            &[&request_id.as_uuid()],
        )
        .await?;
    let recorded_by: String = row.get(0);
    if recorded_by != operator.as_str() {
        return Ok(Reply {
            request_id,
            ok: false,
            detail: format!("request id {request_id} was already used by another operator"),
            ticket: None,
            snapshot: None,
        });
    }
    tracing::info!(%operator, %request_id, "request seen before; sending its recorded reply");
    Ok(Reply {
        request_id,
        ok: row.get(1),
        detail: row.get(2),
        ticket: row.get(3),
        snapshot: None,
    })
}

/// The outcome of an action, as the reply tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decided {
    ok: bool,
    detail: String,
    ticket: Option<String>,
}

impl Decided {
    fn done(detail: String) -> Self {
        Self {
            ok: true,
            detail,
            ticket: None,
        }
    }

    fn refused(detail: impl ToString) -> Self {
        Self {
            ok: false,
            detail: detail.to_string(),
            ticket: None,
        }
    }
}

/// A database error: retried by the caller when it may pass, otherwise the request's answer.
fn db_failure(error: WorkError) -> Result<Decided, WorkError> {
    if error.is_transient() {
        Err(error)
    } else {
        Ok(Decided::refused(error))
    }
}

async fn act(
    pool: &Pool,
    tx: &mut Transaction<'_>,
    signing_key: &SigningKey,
    operator: &OperatorId,
    action: &RequestAction,
    now: DateTime<Utc>,
) -> Result<Decided, WorkError> {
    let by = operator.as_str();
    match action {
        RequestAction::ForceStop { session_id } => force_stop(pool, *session_id, by, now).await,
        RequestAction::Extend {
            session_id,
            minutes,
        } => match check_minutes(*minutes) {
            Err(refusal) => Ok(refusal),
            Ok(minutes) => extend(tx, *session_id, minutes, by, now).await,
        },
        RequestAction::SetService {
            store,
            device,
            in_service,
        } => set_service(pool, store, device, *in_service, by, now).await,
        RequestAction::Cancel { ticket_id } => cancel(pool, *ticket_id, by, now).await,
        RequestAction::IssueTicket {
            store,
            device,
            minutes,
        } => match check_minutes(*minutes) {
            Err(refusal) => Ok(refusal),
            Ok(minutes) => issue_ticket(pool, signing_key, store, device, minutes, now).await,
        },
        // Answered before anything is recorded (see `handle_request`).
        RequestAction::Snapshot { .. } => Ok(Decided::refused("a snapshot is not an action")),
    }
}

/// Minutes must be 1 to [`MAX_MINUTES`].
fn check_minutes(minutes: u32) -> Result<chrono::Duration, Decided> {
    if (1..=MAX_MINUTES).contains(&minutes) {
        Ok(chrono::Duration::minutes(i64::from(minutes)))
    } else {
        Err(Decided::refused(format!(
            "minutes must be between 1 and {MAX_MINUTES}, got {minutes}"
        )))
    }
}

async fn force_stop(
    pool: &Pool,
    session_id: SessionId,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Decided, WorkError> {
    match actions::force_stop(pool, session_id, by, now).await {
        Ok(session) => Ok(Decided::done(format!(
            "session {session_id} on {}/{} stopped",
            session.store, session.device
        ))),
        Err(SessionError::Db(error)) => db_failure(error),
        Err(error) => Ok(Decided::refused(error)),
    }
}

async fn extend(
    tx: &mut Transaction<'_>,
    session_id: SessionId,
    by_duration: chrono::Duration,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Decided, WorkError> {
    let new_end = NewEnd::AfterCurrent(by_duration);
    match actions::extend_in(tx, session_id, new_end, by, now).await {
        Ok(extension) => Ok(Decided::done(format!(
            "session {session_id} on {}/{} now ends at {} (was {})",
            extension.store,
            extension.device,
            time(extension.lease_until),
            time(extension.previous_lease_until)
        ))),
        Err(ExtendError::Db(error) | ExtendError::Session(SessionError::Db(error))) => {
            db_failure(error)
        }
        Err(error) => Ok(Decided::refused(error)),
    }
}

async fn set_service(
    pool: &Pool,
    store: &StoreId,
    device: &DeviceId,
    in_service: bool,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Decided, WorkError> {
    let change = match actions::set_in_service(pool, store, device, in_service, by, now).await {
        Ok(change) => change,
        Err(ServiceError::Db(error)) => return db_failure(error),
        Err(error) => return Ok(Decided::refused(error)),
    };
    let state = if in_service {
        "in service"
    } else {
        "out of service"
    };
    let mut detail = if change.changed {
        format!("{store}/{device} is now {state}")
    } else {
        format!("{store}/{device} was already {state}")
    };
    if !in_service && !change.affected_tickets.is_empty() {
        let tickets: Vec<String> = change
            .affected_tickets
            .iter()
            .map(ToString::to_string)
            .collect();
        detail.push_str(&format!(
            "; bookings ahead that need attention: {}",
            tickets.join(", ")
        ));
    }
    if let Some(session_id) = change.running_session.filter(|_| !in_service) {
        detail.push_str(&format!(
            "; session {session_id} still runs (force stop it to free the device)"
        ));
    }
    Ok(Decided::done(detail))
}

async fn cancel(
    pool: &Pool,
    ticket_id: TicketId,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Decided, WorkError> {
    match actions::cancel(pool, ticket_id, by, now).await {
        Ok(()) => Ok(Decided::done(format!("booking {ticket_id} cancelled"))),
        Err(CancelError::Db(error)) => db_failure(error),
        Err(error) => Ok(Decided::refused(error)),
    }
}

/// Books the device from now for a walk-in customer; the reply carries the ticket.
async fn issue_ticket(
    pool: &Pool,
    signing_key: &SigningKey,
    store: &StoreId,
    device: &DeviceId,
    length: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<Decided, WorkError> {
    // A ticket the device would refuse is no use to the customer in front of it. (The state can
    // change right after this check; the scan decides again.)
    if device_out_of_service(pool, store, device).await? {
        return Ok(Decided::refused(format!(
            "device {store}/{device} is out of service"
        )));
    }
    let ends_at = now + length;
    let failure = match booking::reserve(pool, signing_key, store, device, now, ends_at, now).await
    {
        Ok(booking) => {
            return Ok(Decided {
                ok: true,
                detail: format!(
                    "booked {store}/{device} until {}",
                    time(booking.claims.not_after)
                ),
                ticket: Some(booking.ticket),
            })
        }
        Err(failure) => failure,
    };
    match failure {
        BookingError::Overlap { .. } => {
            let detail = overlap_detail(pool, store, device, now, ends_at).await?;
            Ok(Decided::refused(detail))
        }
        BookingError::Db(DbError::Connect(error)) => db_failure(WorkError::Pool(error)),
        BookingError::Db(DbError::Postgres(error)) => db_failure(WorkError::Postgres(error)),
        other => Ok(Decided::refused(other)),
    }
}

async fn device_out_of_service(
    pool: &Pool,
    store: &StoreId,
    device: &DeviceId,
) -> Result<bool, WorkError> {
    let client = pool.get().await?;
    let row = client
        .cached_query_opt(
            "SELECT in_service FROM devices WHERE store_id = $1 AND device_id = $2",
            &[&store.as_str(), &device.as_str()],
        )
        .await?;
    // An unknown device is refused by the booking itself, with its own message.
    Ok(row.is_some_and(|row| !row.get::<_, bool>(0)))
}

/// Why a walk-in booking from `now` to `ends_at` overlaps: the first live booking in the way.
async fn overlap_detail(
    pool: &Pool,
    store: &StoreId,
    device: &DeviceId,
    now: DateTime<Utc>,
    ends_at: DateTime<Utc>,
) -> Result<String, WorkError> {
    let client = pool.get().await?;
    let row = client
        .cached_query_opt(
            "SELECT lower(period), upper(period) FROM reservations
             WHERE store_id = $1 AND device_id = $2 AND cancelled_at IS NULL
               AND period && tstzrange($3, $4, '[)')
             ORDER BY lower(period) LIMIT 1",
            &[&store.as_str(), &device.as_str(), &now, &ends_at],
        )
        .await?;
    let Some(row) = row else {
        return Ok(format!(
            "device {store}/{device} is already booked during part of that window"
        ));
    };
    let (from, until): (DateTime<Utc>, DateTime<Utc>) = (row.get(0), row.get(1));
    Ok(overlap_message(store, device, from, until, now))
}

fn overlap_message(
    store: &StoreId,
    device: &DeviceId,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> String {
    let booked = format!(
        "device {store}/{device} is booked from {} until {}",
        time(from),
        time(until)
    );
    let free_minutes = (from - now).num_minutes();
    if free_minutes >= 1 {
        format!("{booked}: at most {free_minutes} minutes are free from now")
    } else {
        booked
    }
}

/// Times in replies: whole seconds, UTC, e.g. `2027-01-15T09:00:00Z`.
fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn reply_message(operator: &OperatorId, reply: &Reply) -> Outbound {
    let topic = Topic::Replies {
        operator: operator.clone(),
    };
    Outbound::new(&topic, message::encode(reply))
}

/// The request id of a request that does not otherwise parse, so it can still be answered.
fn salvage_request_id(payload: &[u8]) -> Option<RequestId> {
    if payload.len() > message::MAX_PAYLOAD_BYTES {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    RequestId::parse(value.get("request_id")?.as_str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_salvaged_from_otherwise_broken_requests() {
        let id = RequestId::random();
        let payload = format!(r#"{{"request_id":"{id}","action":"reboot"}}"#);
        assert_eq!(salvage_request_id(payload.as_bytes()), Some(id));
        assert_eq!(salvage_request_id(b"not json"), None);
        assert_eq!(salvage_request_id(br#"{"request_id":"nope"}"#), None);
    }

    #[test]
    fn minutes_outside_a_day_are_refused_with_the_range() {
        assert!(check_minutes(1).is_ok());
        assert!(check_minutes(MAX_MINUTES).is_ok());
        for minutes in [0, MAX_MINUTES + 1] {
            let refusal = check_minutes(minutes).unwrap_err();
            assert!(!refusal.ok);
            assert_eq!(
                refusal.detail,
                format!("minutes must be between 1 and 1440, got {minutes}")
            );
        }
    }

    #[test]
    fn an_overlap_names_the_booking_in_the_way_and_the_free_minutes() {
        let store = StoreId::parse("shibuya").unwrap();
        let device = DeviceId::parse("pc-01").unwrap();
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let from = now + chrono::Duration::minutes(25);
        let until = from + chrono::Duration::hours(1);
        assert_eq!(
            overlap_message(&store, &device, from, until, now),
            "device shibuya/pc-01 is booked from 2027-01-15T08:25:00Z until 2027-01-15T09:25:00Z: at most 25 minutes are free from now"
        );
        let running = now - chrono::Duration::minutes(5);
        assert_eq!(
            overlap_message(&store, &device, running, until, now),
            "device shibuya/pc-01 is booked from 2027-01-15T07:55:00Z until 2027-01-15T09:25:00Z"
        );
    }
}
