//! Operators and their roles: who may send requests, proven by an Ed25519 signature with the
//! operator's own key (the broker has no topic ACL, so the topic alone proves nothing).
//!
//! [`authenticate`] and [`authorize`] are the rules as pure functions; the rest reads and writes
//! the `operators` table and records refusals (table `refused_requests`, and an
//! `operator_action` event when the request concerns a store). The command line's subcommands
//! are in [`cli`].

pub mod cli;

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::{GenericClient, Pool};
use mujin_protocol::message::{Event, EventKind, Request, RequestAction};
use mujin_protocol::signed::{self, VerifyError};
use mujin_protocol::ticket::PublicKey;
use mujin_protocol::{DeviceId, KeyId, OperatorId, StoreId};

use crate::audit;
use crate::db::WorkError;

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Snapshot queries only.
    Viewer,
    /// Also force stop, extend, service state, cancel and walk-in tickets.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("expected viewer, operator or admin, not {text:?}"))
    }

    /// The least role that may ask for `action`. (No request is admin-only today; an admin may
    /// do everything an operator may.)
    pub fn needed_for(action: &RequestAction) -> Role {
        match action {
            RequestAction::Snapshot { .. } => Role::Viewer,
            RequestAction::ForceStop { .. }
            | RequestAction::Extend { .. }
            | RequestAction::SetService { .. }
            | RequestAction::Cancel { .. }
            | RequestAction::IssueTicket { .. } => Role::Operator,
        }
    }

    /// "a viewer", "an operator", "an admin".
    fn with_article(self) -> String {
        match self {
            Role::Viewer => "a viewer".into(),
            Role::Operator => "an operator".into(),
            Role::Admin => "an admin".into(),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `operators`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRecord {
    pub operator: OperatorId,
    pub role: Role,
    /// The public key its requests are signed with (its id derived from it).
    pub key: PublicKey,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Why a request was refused. The `Display` text is the reply's `detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "refused: the request is not signed (requests must be signed with the operator's key)"
    )]
    Unsigned,
    #[error("refused: signed with unknown key {0} (no such operator)")]
    UnknownKey(String),
    #[error("refused: the signature does not match (key of operator {0})")]
    BadSignature(OperatorId),
    #[error("refused: operator {operator} was revoked at {}", time(*at))]
    Revoked {
        operator: OperatorId,
        at: DateTime<Utc>,
    },
    #[error("refused: signed by operator {signer}, not by {topic} whose topic it came on")]
    OtherOperator {
        signer: OperatorId,
        topic: OperatorId,
    },
    #[error("refused: the request does not say when it was sent (sent_at)")]
    Undated,
    #[error(
        "refused: sent at {}, more than 5 minutes from management's clock ({})",
        time(*sent_at),
        time(*now)
    )]
    OutOfTime {
        sent_at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    #[error("refused: {action} needs the {needed} role; {operator} is {}", role.with_article())]
    Role {
        operator: OperatorId,
        action: &'static str,
        role: Role,
        needed: Role,
    },
}

/// Whom a request is from once its signature holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub operator: OperatorId,
    pub role: Role,
    pub key_id: KeyId,
}

/// Checks that `request`, which came on `topic`'s requests topic, is signed by `signer` (the
/// operator whose key id its signature names, if any is known), that the signer is not revoked
/// and is `topic`, and that it was sent within 5 minutes of `now`.
pub fn authenticate(
    topic: &OperatorId,
    request: &Request,
    signer: Option<&OperatorRecord>,
    now: DateTime<Utc>,
) -> Result<Signer, Refusal> {
    let signature = request.signature.as_ref().ok_or(Refusal::Unsigned)?;
    let record = signer.ok_or_else(|| Refusal::UnknownKey(signature.key_id.to_string()))?;
    match signed::verify_request(&record.key, request, now) {
        Ok(()) => {}
        Err(VerifyError::Unsigned) => return Err(Refusal::Unsigned),
        Err(VerifyError::UnknownKey(key_id)) => return Err(Refusal::UnknownKey(key_id)),
        Err(VerifyError::Undated) => return Err(Refusal::Undated),
        Err(VerifyError::OutOfTime(sent_at)) => {
            // Only once the signature holds: a forger learns nothing from the clock check.
            check_operator(topic, record)?;
            return Err(Refusal::OutOfTime { sent_at, now });
        }
        Err(_) => return Err(Refusal::BadSignature(record.operator.clone())),
    }
    check_operator(topic, record)?;
    Ok(Signer {
        operator: record.operator.clone(),
        role: record.role,
        key_id: record.key.key_id.clone(),
    })
}

fn check_operator(topic: &OperatorId, record: &OperatorRecord) -> Result<(), Refusal> {
    if let Some(at) = record.revoked_at {
        return Err(Refusal::Revoked {
            operator: record.operator.clone(),
            at,
        });
    }
    if record.operator != *topic {
        return Err(Refusal::OtherOperator {
            signer: record.operator.clone(),
            topic: topic.clone(),
        });
    }
    Ok(())
}

/// Whether `signer`'s role allows `action`.
pub fn authorize(signer: &Signer, action: &RequestAction) -> Result<(), Refusal> {
    let needed = Role::needed_for(action);
    if signer.role >= needed {
        Ok(())
    } else {
        Err(Refusal::Role {
            operator: signer.operator.clone(),
            action: action.name(),
            role: signer.role,
            needed,
        })
    }
}

/// Times in details: whole seconds, UTC.
fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Why an operator could not be added or changed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("operator {0} already exists (change its role with operator-role)")]
    Exists(OperatorId),
    #[error("no operator {0} (add it with operator-add)")]
    Unknown(OperatorId),
    #[error("operator {operator} was revoked at {}; it cannot be changed", time(*at))]
    Revoked {
        operator: OperatorId,
        at: DateTime<Utc>,
    },
    #[error(transparent)]
    Db(#[from] WorkError),
}

impl From<tokio_postgres::Error> for OperatorError {
    fn from(error: tokio_postgres::Error) -> Self {
        OperatorError::Db(error.into())
    }
}

impl From<deadpool_postgres::PoolError> for OperatorError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        OperatorError::Db(error.into())
    }
}

const SELECT_OPERATOR: &str =
    "SELECT operator, role, key_id, public_key, created_at, revoked_at FROM operators";

fn record_of(row: &tokio_postgres::Row) -> Option<OperatorRecord> {
    let operator = OperatorId::parse(row.get(0)).ok()?;
    let role = Role::parse(row.get(1)).ok()?;
    let key_id = KeyId::parse(row.get(2)).ok()?;
    let bytes: Vec<u8> = row.get(3);
    Some(OperatorRecord {
        operator,
        role,
        key: PublicKey {
            key_id,
            bytes: bytes.try_into().ok()?,
        },
        created_at: row.get(4),
        revoked_at: row.get(5),
    })
}

/// The operator whose key has this id, if any.
pub async fn find_by_key(
    client: &impl GenericClient,
    key_id: &KeyId,
) -> Result<Option<OperatorRecord>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!("{SELECT_OPERATOR} WHERE key_id = $1"),
            &[&key_id.as_str()],
        )
        .await?;
    Ok(row.as_ref().and_then(record_of))
}

/// Every operator, by id.
pub async fn list(pool: &Pool) -> Result<Vec<OperatorRecord>, OperatorError> {
    let client = pool.get().await?;
    let rows = client
        .query(&format!("{SELECT_OPERATOR} ORDER BY operator"), &[])
        .await?;
    Ok(rows.iter().filter_map(record_of).collect())
}

/// Adds an operator with the public half of its key.
pub async fn add(
    pool: &Pool,
    operator: &OperatorId,
    role: Role,
    key: &PublicKey,
    now: DateTime<Utc>,
) -> Result<(), OperatorError> {
    let client = pool.get().await?;
    let added = client
        .execute(
            "INSERT INTO operators (operator, role, key_id, public_key, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (operator) DO NOTHING",
            &[
                &operator.as_str(),
                &role.as_str(),
                &key.key_id.as_str(),
                &key.bytes.as_slice(),
                &now,
            ],
        )
        .await?;
    if added == 0 {
        return Err(OperatorError::Exists(operator.clone()));
    }
    Ok(())
}

/// Changes an operator's role; returns the previous one.
pub async fn set_role(
    pool: &Pool,
    operator: &OperatorId,
    role: Role,
) -> Result<Role, OperatorError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let record = locked(&tx, operator).await?;
    if let Some(at) = record.revoked_at {
        return Err(OperatorError::Revoked {
            operator: operator.clone(),
            at,
        });
    }
    tx.execute(
        "UPDATE operators SET role = $2 WHERE operator = $1",
        &[&operator.as_str(), &role.as_str()],
    )
    .await?;
    tx.commit().await?;
    Ok(record.role)
}

/// Revokes an operator: its requests are refused from now on. Returns when it was revoked
/// (earlier, if it already was).
pub async fn revoke(
    pool: &Pool,
    operator: &OperatorId,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, OperatorError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let record = locked(&tx, operator).await?;
    if let Some(at) = record.revoked_at {
        return Ok(at);
    }
    tx.execute(
        "UPDATE operators SET revoked_at = $2 WHERE operator = $1",
        &[&operator.as_str(), &now],
    )
    .await?;
    tx.commit().await?;
    Ok(now)
}

async fn locked(
    client: &impl GenericClient,
    operator: &OperatorId,
) -> Result<OperatorRecord, OperatorError> {
    let row = client
        .query_opt(
            &format!("{SELECT_OPERATOR} WHERE operator = $1 FOR UPDATE"),
            &[&operator.as_str()],
        )
        .await?;
    row.as_ref()
        .and_then(record_of)
        .ok_or_else(|| OperatorError::Unknown(operator.clone()))
}

/// Authenticates a request that came on `topic`'s requests topic against the `operators` table.
pub async fn check_request(
    pool: &Pool,
    topic: &OperatorId,
    request: &Request,
    now: DateTime<Utc>,
) -> Result<Result<Signer, Refusal>, WorkError> {
    let signer = match &request.signature {
        Some(signature) => {
            let client = pool.get().await?;
            find_by_key(&client, &signature.key_id).await?
        }
        None => None,
    };
    Ok(authenticate(topic, request, signer.as_ref(), now))
}

/// Records a request refused before it could be trusted, and its event when it concerns a
/// store.
pub async fn record_refusal(
    pool: &Pool,
    topic: &OperatorId,
    request: &Request,
    refusal: &Refusal,
    now: DateTime<Utc>,
) -> Result<(), WorkError> {
    // Stored for the audit trail; these plain types always serialize.
    let body = serde_json::to_value(request).unwrap_or_default();
    let key_id = request
        .signature
        .as_ref()
        .map(|signature| signature.key_id.to_string());
    let detail = refusal.to_string();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO refused_requests (request_id, operator, key_id, action, body, detail, refused_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &request.request_id.as_uuid(),
            &topic.as_str(),
            &key_id,
            &request.action.name(),
            &body,
            &detail,
            &now,
        ],
    )
    .await?;
    record_event(&tx, topic, request, false, &detail, now).await?;
    tx.commit().await?;
    Ok(())
}

/// Records the `operator_action` event of a request that concerns a store (inside the
/// caller's transaction). Snapshot queries are reads: no event.
pub async fn record_event(
    client: &impl GenericClient,
    operator: &OperatorId,
    request: &Request,
    ok: bool,
    detail: &str,
    now: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    let Some((store, device)) = place_of(client, &request.action).await? else {
        return Ok(());
    };
    let event = Event {
        at: now,
        store,
        device,
        kind: EventKind::OperatorAction {
            operator: operator.clone(),
            request_id: request.request_id,
            action: request.action.name().to_owned(),
            ok,
            detail: detail.to_owned(),
        },
    };
    audit::record(client, &event).await
}

/// The store (and device) an action is about, when known.
async fn place_of(
    client: &impl GenericClient,
    action: &RequestAction,
) -> Result<Option<(StoreId, Option<DeviceId>)>, tokio_postgres::Error> {
    let row = match action {
        RequestAction::SetService { store, device, .. }
        | RequestAction::IssueTicket { store, device, .. } => {
            return Ok(Some((store.clone(), Some(device.clone()))))
        }
        RequestAction::Snapshot { .. } => return Ok(None),
        RequestAction::ForceStop { session_id } | RequestAction::Extend { session_id, .. } => {
            client
                .query_opt(
                    "SELECT store_id, device_id FROM sessions WHERE session_id = $1",
                    &[&session_id.as_uuid()],
                )
                .await?
        }
        RequestAction::Cancel { ticket_id } => {
            client
                .query_opt(
                    "SELECT store_id, device_id FROM reservations WHERE ticket_id = $1",
                    &[&ticket_id.as_uuid()],
                )
                .await?
        }
    };
    Ok(row.and_then(|row| {
        let store = StoreId::parse(row.get(0)).ok()?;
        Some((store, DeviceId::parse(row.get(1)).ok()))
    }))
}

#[cfg(test)]
mod tests;
