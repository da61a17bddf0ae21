//! The command outbox: every command to a device is a row written in the transaction of the
//! decision that caused it, then published by the dispatcher and tracked through its lifecycle
//! (queued → sent → acknowledged / failed / expired / superseded), resent with backoff until the device
//! answers or the command expires. Each command raises the device's epoch; the device's desired
//! state (retained) is republished with it. Every command and desired state is signed with
//! management's command key as it goes out; each attempt of a command names its device and
//! expires [`SIGNED_COMMAND_TTL`] later at most, so a captured one cannot be replayed elsewhere
//! or much later.

use crate::db::CachedStatements;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use mujin_protocol::message::{
    self, Ack, Command, CommandAction, DesiredProgram, DesiredState, EndReason, Event, EventKind,
};
use mujin_protocol::signed::{sign_command, sign_desired};
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::topic::{DeviceChannel, Topic};
use mujin_protocol::{CommandId, DeviceId, SessionId, StoreId};
use rumqttc::AsyncClient;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::audit;
use crate::db::{clean_text, WorkError};
use crate::metrics::Metrics;
use crate::mqtt::{publish_all, Outbound};
use crate::scans::command_message;

/// How long a stop is retried before it is given up as expired (the device's own lease has
/// stopped the program long before).
pub const STOP_EXPIRY: chrono::Duration = chrono::Duration::minutes(10);
/// How long one sent attempt of a command is valid for a device that verifies it (its own
/// expiry when sooner). Long enough for a device clock a little off; a resend gets a new one.
pub const SIGNED_COMMAND_TTL: chrono::Duration = chrono::Duration::minutes(5);
/// The longest wait between two attempts of a command.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The longest the dispatcher sleeps before looking at the table again.
const MAX_SLEEP: Duration = Duration::from_secs(1);
const BATCH: i64 = 100;

/// Queues `action` for the device inside the caller's transaction and returns the command.
pub async fn enqueue(
    tx: &impl GenericClient,
    store: &StoreId,
    device: &DeviceId,
    command_id: CommandId,
    action: CommandAction,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Command, tokio_postgres::Error> {
    let epoch: i64 = tx
        .cached_query_one(
            "UPDATE devices SET epoch = epoch + 1 WHERE store_id = $1 AND device_id = $2 RETURNING epoch",
            &[&store.as_str(), &device.as_str()],
        )
        .await?
        .get(0);
    let command = new_command((store, device), command_id, action, epoch, now);
    insert_command(tx, &command, expires_at, now, false).await?;
    Ok(command)
}

/// How a command left the outbox's pending states (its final `commands.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Carried out by the device.
    Acknowledged,
    /// Refused by the device.
    Failed,
    /// Given up unanswered.
    Expired,
    /// Overtaken by a newer command to the device.
    Superseded,
}

impl Settled {
    pub const ALL: [Settled; 4] = [
        Settled::Acknowledged,
        Settled::Failed,
        Settled::Expired,
        Settled::Superseded,
    ];

    /// The state as stored in `commands.status` and as the metric's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Settled::Acknowledged => "acknowledged",
            Settled::Failed => "failed",
            Settled::Expired => "expired",
            Settled::Superseded => "superseded",
        }
    }
}

/// A command for the device at `epoch` (the device's epoch once this command is queued).
pub fn new_command(
    (store, device): (&StoreId, &DeviceId),
    command_id: CommandId,
    action: CommandAction,
    epoch: i64,
    now: DateTime<Utc>,
) -> Command {
    Command {
        command_id,
        issued_at: now,
        epoch: epoch.max(0) as u64,
        store: Some(store.clone()),
        device: Some(device.clone()),
        // Set, with the signature, on each attempt (see `sealed`).
        expires_at: None,
        action,
        signature: None,
    }
}

/// The statement [`insert_commands`] runs.
pub const INSERT_COMMANDS: &str =
    "INSERT INTO commands (command_id, store_id, device_id, session_id, epoch, action, payload,
                           next_attempt_at, expires_at, created_at, status, attempts, sent_at)
     SELECT c.*, $10::timestamptz, $11::text, $12::integer, $13::timestamptz
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::bigint[], $6::text[],
                 $7::jsonb[], $8::timestamptz[], $9::timestamptz[]) AS c";

/// Writes `command` to the outbox: queued for the dispatcher, or, when `sent_now`, recorded as
/// its first attempt, made by the caller right after the commit (see [`sent_now`]).
pub async fn insert_command(
    tx: &impl GenericClient,
    command: &Command,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
    sent_now: bool,
) -> Result<(), tokio_postgres::Error> {
    insert_commands(tx, &[(command, expires_at)], now, sent_now).await
}

/// Writes `commands` (each with when it expires) in one statement, as [`insert_command`] does.
pub async fn insert_commands(
    tx: &impl GenericClient,
    commands: &[(&Command, DateTime<Utc>)],
    now: DateTime<Utc>,
    sent_now: bool,
) -> Result<(), tokio_postgres::Error> {
    let first = FirstAttempt::new(now, sent_now);
    let mut columns = CommandColumns::default();
    for (command, expires_at) in commands {
        columns.push(command, *expires_at, first.next_attempt_at);
    }
    let c = &columns;
    tx.cached_execute(
        INSERT_COMMANDS,
        &[
            &c.ids,
            &c.stores,
            &c.devices,
            &c.sessions,
            &c.epochs,
            &c.actions,
            &c.payloads,
            &c.next_attempts,
            &c.expiries,
            &now,
            &first.status,
            &first.attempts,
            &first.sent_at,
        ],
    )
    .await?;
    Ok(())
}

/// How a new command is written to the outbox: queued for the dispatcher, or recorded as its
/// first attempt, made by the writer right after its commit (`sent_now`).
pub(crate) struct FirstAttempt {
    pub status: &'static str,
    pub attempts: i32,
    pub sent_at: Option<DateTime<Utc>>,
    pub next_attempt_at: DateTime<Utc>,
}

impl FirstAttempt {
    pub fn new(now: DateTime<Utc>, sent_now: bool) -> FirstAttempt {
        if sent_now {
            FirstAttempt {
                status: "sent",
                attempts: 1,
                sent_at: Some(now),
                next_attempt_at: now + chrono::Duration::from_std(backoff(1)).unwrap_or_default(),
            }
        } else {
            FirstAttempt {
                status: "queued",
                attempts: 0,
                sent_at: None,
                next_attempt_at: now,
            }
        }
    }
}

/// Commands as the columns of [`INSERT_COMMANDS`].
#[derive(Default)]
struct CommandColumns<'a> {
    ids: Vec<Uuid>,
    stores: Vec<Option<&'a str>>,
    devices: Vec<Option<&'a str>>,
    sessions: Vec<Uuid>,
    epochs: Vec<i64>,
    actions: Vec<&'static str>,
    payloads: Vec<serde_json::Value>,
    next_attempts: Vec<DateTime<Utc>>,
    expiries: Vec<DateTime<Utc>>,
}

impl<'a> CommandColumns<'a> {
    fn push(&mut self, command: &'a Command, expires_at: DateTime<Utc>, next: DateTime<Utc>) {
        self.ids.push(command.command_id.as_uuid());
        self.stores
            .push(command.store.as_ref().map(StoreId::as_str));
        self.devices
            .push(command.device.as_ref().map(DeviceId::as_str));
        self.sessions.push(command.action.session_id().as_uuid());
        self.epochs.push(command.epoch as i64);
        self.actions.push(command.action.name());
        self.payloads
            .push(serde_json::to_value(command).unwrap_or_default());
        self.next_attempts.push(next);
        self.expiries.push(expires_at);
    }
}

/// A command written with [`insert_command`]`(…, sent_now: true)`, as it goes out right after
/// the commit: the sealed command (valid until `expires_at` at most), then its device's desired
/// state at the command's epoch (running a session until its end, or idle). A crash between the
/// commit and the publish leaves the command `sent` with its next attempt due: the dispatcher
/// sends it then.
pub fn sent_now(
    command: Command,
    (store, device): (&StoreId, &DeviceId),
    expires_at: DateTime<Utc>,
    running: Option<(SessionId, DateTime<Utc>)>,
    key: &SigningKey,
    now: DateTime<Utc>,
) -> Vec<Outbound> {
    let epoch = command.epoch as i64;
    let command = sealed(command, (store, device), expires_at, key, now);
    vec![
        command_message(store, device, &command),
        desired_message((store.clone(), device.clone()), epoch, running, key, now),
    ]
}

/// Whose desired states [`desired_states`] reads.
pub enum DesiredOf<'a> {
    All,
    These(&'a [(StoreId, DeviceId)]),
}

/// Commands attempted in one dispatcher pass, as the columns of one update.
#[derive(Default)]
struct AttemptColumns {
    ids: Vec<Uuid>,
    attempts: Vec<i32>,
    next: Vec<DateTime<Utc>>,
}

impl AttemptColumns {
    fn push(&mut self, id: Uuid, attempts: i32, next: DateTime<Utc>) {
        self.ids.push(id);
        self.attempts.push(attempts);
        self.next.push(next);
    }
}

/// The desired state of every device, or of some, from the database (the source of truth).
pub async fn desired_states(
    client: &impl GenericClient,
    which: DesiredOf<'_>,
    key: &SigningKey,
    now: DateTime<Utc>,
) -> Result<Vec<Outbound>, tokio_postgres::Error> {
    const SELECT: &str = "SELECT d.store_id, d.device_id, d.epoch, s.session_id, s.lease_until
         FROM devices d
         LEFT JOIN sessions s ON s.store_id = d.store_id AND s.device_id = d.device_id AND s.ended_at IS NULL";
    let rows = match which {
        DesiredOf::All => client.cached_query(SELECT, &[]).await?,
        DesiredOf::These(these) => {
            // A join on the listed devices, not a filter that may also be null: the planner
            // then looks them up by key.
            const THESE: &str = "SELECT d.store_id, d.device_id, d.epoch, s.session_id, s.lease_until
                 FROM unnest($1::text[], $2::text[]) AS u(store_id, device_id)
                 JOIN devices d ON d.store_id = u.store_id AND d.device_id = u.device_id
                 LEFT JOIN sessions s ON s.store_id = d.store_id AND s.device_id = d.device_id AND s.ended_at IS NULL";
            let (stores, devices): (Vec<&str>, Vec<&str>) = these
                .iter()
                .map(|(store, device)| (store.as_str(), device.as_str()))
                .unzip();
            client.cached_query(THESE, &[&stores, &devices]).await?
        }
    };
    Ok(rows
        .iter()
        .filter_map(|row| {
            let store = StoreId::parse(row.get(0)).ok()?;
            let device = DeviceId::parse(row.get(1)).ok()?;
            let session: Option<Uuid> = row.get(3);
            let lease_until: Option<DateTime<Utc>> = row.get(4);
            let running = session
                .zip(lease_until)
                .map(|(session_id, until)| (SessionId::from_uuid(session_id), until));
            Some(desired_message(
                (store, device),
                row.get(2),
                running,
                key,
                now,
            ))
        })
        .collect())
}

/// The signed desired state of a device at `epoch`: running `running` (session and end), or
/// idle.
fn desired_message(
    (store, device): (StoreId, DeviceId),
    epoch: i64,
    running: Option<(SessionId, DateTime<Utc>)>,
    key: &SigningKey,
    now: DateTime<Utc>,
) -> Outbound {
    let program = match running {
        Some((session_id, lease_until)) => DesiredProgram::Running {
            session_id,
            lease_until,
            remaining_ms: remaining_ms(lease_until, now),
        },
        None => DesiredProgram::Idle,
    };
    let topic = Topic::device(&store, &device, DeviceChannel::Desired);
    let mut state = DesiredState {
        epoch: epoch.max(0) as u64,
        issued_at: now,
        store: Some(store),
        device: Some(device),
        program,
        signature: None,
    };
    sign_desired(key, &mut state);
    Outbound::new(&topic, message::encode(&state))
}

fn remaining_ms(until: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    (until - now).num_milliseconds().max(0) as u64
}

/// The wait before attempt `attempts + 1`: 1 s, 2 s, 4 s, … up to 10 s.
pub fn backoff(attempts: i32) -> Duration {
    let exponent = attempts.clamp(1, 8) as u32 - 1;
    (Duration::from_secs(1) * 2u32.pow(exponent)).min(MAX_BACKOFF)
}

/// The command as it goes out now: same id and epoch, time left counted from `now`.
fn refreshed(mut command: Command, now: DateTime<Utc>) -> Command {
    match &mut command.action {
        CommandAction::Start {
            lease_until,
            remaining_ms: left,
            ..
        }
        | CommandAction::Warn {
            lease_until,
            remaining_ms: left,
            ..
        }
        | CommandAction::Extend {
            lease_until,
            remaining_ms: left,
            ..
        } => *left = remaining_ms(*lease_until, now),
        CommandAction::Stop { .. } => {}
    }
    command
}

/// The attempt of `command` that goes out now: for `device` of `store`, valid until
/// `expires_at` or [`SIGNED_COMMAND_TTL`] from now, whichever is sooner, and signed.
fn sealed(
    mut command: Command,
    (store, device): (&StoreId, &DeviceId),
    expires_at: DateTime<Utc>,
    key: &SigningKey,
    now: DateTime<Utc>,
) -> Command {
    command.store = Some(store.clone());
    command.device = Some(device.clone());
    command.expires_at = Some(expires_at.min(now + SIGNED_COMMAND_TTL));
    sign_command(key, &mut command);
    command
}

/// Expires overdue commands, claims the due ones and the events not yet published; returns
/// what to publish and when the next attempt is due. First attempts of starts and of stops at
/// a booking's end are timed into `metrics`.
pub async fn dispatch_due(
    pool: &Pool,
    key: &SigningKey,
    now: DateTime<Utc>,
    metrics: &Metrics,
) -> Result<(Vec<Outbound>, Option<DateTime<Utc>>), WorkError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let expired = expire(&tx, now).await?;
    let mut publish = Vec::new();
    let due = tx
        .cached_query(
            DUE_COMMANDS,
            &[&now, &BATCH, &EndReason::BookingEnded.as_str()],
        )
        .await?;
    let mut devices: Vec<(StoreId, DeviceId)> = Vec::new();
    let mut first_sends = Vec::new();
    let mut attempted = AttemptColumns::default();
    for row in &due {
        let command_id: Uuid = row.get(0);
        let attempts: i32 = row.get::<_, i32>(4) + 1;
        if attempts == 1 {
            first_sends.push(FirstSend::of(row));
        }
        let next = now + chrono::Duration::from_std(backoff(attempts)).unwrap_or_default();
        attempted.push(command_id, attempts, next);
        let (Ok(store), Ok(device)) = (StoreId::parse(row.get(1)), DeviceId::parse(row.get(2)))
        else {
            continue;
        };
        let Ok(command) = serde_json::from_value::<Command>(row.get(3)) else {
            tracing::error!(%command_id, "unreadable command in the outbox");
            continue;
        };
        if attempts > 1 {
            tracing::info!(%store, %device, %command_id, attempts, "resending an unacknowledged command");
        }
        let command = refreshed(command, now);
        let command = sealed(command, (&store, &device), row.get(5), key, now);
        publish.push(command_message(&store, &device, &command));
        if !devices.contains(&(store.clone(), device.clone())) {
            devices.push((store, device));
        }
    }
    // One statement for all attempts, and one query for the desired states of their devices.
    if !attempted.ids.is_empty() {
        tx.cached_execute(
            "UPDATE commands c SET status = 'sent', attempts = u.attempts,
                                   sent_at = coalesce(c.sent_at, $4), next_attempt_at = u.next_attempt_at
             FROM unnest($1::uuid[], $2::integer[], $3::timestamptz[]) AS u(command_id, attempts, next_attempt_at)
             WHERE c.command_id = u.command_id",
            &[&attempted.ids, &attempted.attempts, &attempted.next, &now],
        )
        .await?;
    }
    if !devices.is_empty() {
        publish.extend(desired_states(&tx, DesiredOf::These(&devices), key, now).await?);
    }
    let events = audit::take_unpublished(&tx, BATCH, now).await?;
    let more_events = events.len() as i64 == BATCH;
    let event_count = events.len();
    publish.extend(events);
    let next_due: Option<DateTime<Utc>> = tx.cached_query_one(NEXT_DUE_COMMAND, &[]).await?.get(0);
    tx.commit().await?;
    // Published means handed to the MQTT client, which the caller does right away.
    let sent_at = Utc::now();
    for first in first_sends {
        first.observe(metrics, sent_at);
    }
    metrics.events_published(event_count);
    metrics.commands_settled(Settled::Expired, expired);
    Ok((publish, if more_events { Some(now) } else { next_due }))
}

/// The first attempt of a command, as the metrics time it.
enum FirstSend {
    /// A start, queued when its scan was decided.
    Start {
        queued_at: DateTime<Utc>,
    },
    /// A stop ending a session at its booking's end.
    Stop {
        booked_end: DateTime<Utc>,
    },
    Other,
}

impl FirstSend {
    /// From a row of the due commands query.
    fn of(row: &tokio_postgres::Row) -> Self {
        let action: &str = row.get(6);
        match (action, row.get::<_, Option<DateTime<Utc>>>(8)) {
            ("start", _) => FirstSend::Start {
                queued_at: row.get(7),
            },
            ("stop", Some(booked_end)) => FirstSend::Stop { booked_end },
            _ => FirstSend::Other,
        }
    }

    fn observe(self, metrics: &Metrics, sent_at: DateTime<Utc>) {
        match self {
            FirstSend::Start { queued_at } => metrics.start_published(sent_at - queued_at),
            FirstSend::Stop { booked_end } => metrics.stop_published(sent_at - booked_end),
            FirstSend::Other => {}
        }
    }
}

/// Expires the pending commands whose time is over, each with its event; returns how many.
async fn expire(tx: &impl GenericClient, now: DateTime<Utc>) -> Result<u64, WorkError> {
    let rows = tx.cached_query(EXPIRE_COMMANDS, &[&now]).await?;
    for row in &rows {
        let (Ok(store), Ok(device)) = (StoreId::parse(row.get(1)), DeviceId::parse(row.get(2)))
        else {
            continue;
        };
        let event = Event {
            at: now,
            store,
            device: Some(device),
            kind: EventKind::CommandExpired {
                command_id: CommandId::from_uuid(row.get(0)),
                session_id: SessionId::from_uuid(row.get(3)),
                action: row.get(4),
                attempts: row.get::<_, i32>(5).max(0) as u32,
            },
        };
        tracing::warn!(store = %event.store, device = ?event.device, kind = ?event.kind, "command expired unacknowledged");
        audit::record(tx, &event).await?;
    }
    Ok(rows.len() as u64)
}

/// Records a device's answer (counted into `metrics` when it settles a command). Only the
/// device the command was for can settle it; an answer for a settled or unknown command
/// changes nothing. Returns whether an event may have been recorded for the dispatcher to
/// publish (a refusal; never for an acknowledgement).
pub async fn record_ack(
    pool: &Pool,
    metrics: &Metrics,
    store: &StoreId,
    device: &DeviceId,
    payload: &[u8],
    now: DateTime<Utc>,
) -> Result<bool, WorkError> {
    let ack: Ack = match message::decode(payload) {
        Ok(ack) => ack,
        Err(error) => {
            tracing::warn!(%store, %device, %error, "ignoring a malformed ack");
            return Ok(false);
        }
    };
    let superseded = !ack.ok && ack.detail.starts_with(message::STALE_ACK_PREFIX);
    let mut client = pool.get().await?;
    if ack.ok {
        // One statement, committed on its own: no transaction to open and close.
        let settled = client
            .cached_execute(
                SETTLE_COMMAND,
                &[
                    &ack.command_id.as_uuid(),
                    &store.as_str(),
                    &device.as_str(),
                    &Settled::Acknowledged.as_str(),
                    &now,
                    &"",
                ],
            )
            .await?;
        metrics.commands_settled(Settled::Acknowledged, settled);
        tracing::debug!(%store, %device, command_id = %ack.command_id, settled, "command acknowledged");
        return Ok(false);
    }
    let tx = client.transaction().await?;
    let status = if superseded {
        Settled::Superseded
    } else {
        Settled::Failed
    };
    let detail = clean_text(&ack.detail, 500);
    let row = tx
        .cached_query_opt(
            SETTLE_COMMAND,
            &[
                &ack.command_id.as_uuid(),
                &store.as_str(),
                &device.as_str(),
                &status.as_str(),
                &now,
                &detail,
            ],
        )
        .await?;
    let settled = row.is_some();
    match row {
        None => {
            tracing::debug!(%store, %device, command_id = %ack.command_id, "ack for no pending command")
        }
        Some(_) if superseded => {
            tracing::info!(%store, %device, command_id = %ack.command_id, detail = ack.detail, "command superseded by a newer one")
        }
        Some(row) => {
            let event = Event {
                at: now,
                store: store.clone(),
                device: Some(device.clone()),
                kind: EventKind::CommandFailed {
                    command_id: ack.command_id,
                    session_id: SessionId::from_uuid(row.get(0)),
                    action: row.get(1),
                    detail,
                },
            };
            tracing::warn!(%store, %device, command_id = %ack.command_id, detail = ack.detail, "device refused a command");
            audit::record(&tx, &event).await?;
        }
    }
    tx.commit().await?;
    if settled {
        metrics.commands_settled(status, 1);
    }
    Ok(true)
}

/// The pending commands due now, oldest first (through the `commands_pending` index, which
/// `next_attempt_at <= $1` allows). The session's booked end comes along for a stop that ends
/// it at that end (a primary-key lookup per command), to time the stop's lateness.
pub const DUE_COMMANDS: &str =
    "SELECT c.command_id, c.store_id, c.device_id, c.payload, c.attempts, c.expires_at,
            c.action, c.created_at,
            CASE WHEN s.stop_command_id = c.command_id AND s.end_reason = $3
                 THEN s.lease_until END
     FROM commands c JOIN sessions s ON s.session_id = c.session_id
     WHERE c.status IN ('queued', 'sent') AND c.next_attempt_at <= $1
     ORDER BY c.created_at, c.epoch LIMIT $2
     FOR UPDATE OF c SKIP LOCKED";

/// When the dispatcher next has something to do: the earliest attempt or expiry of a pending
/// command. `next_attempt_at IS NOT NULL` (always true) lets it read the `commands_pending`
/// index instead of the whole table (see migration V14).
pub const NEXT_DUE_COMMAND: &str = "SELECT min(least(next_attempt_at, expires_at)) FROM commands
     WHERE status IN ('queued', 'sent') AND next_attempt_at IS NOT NULL";

/// Expires the pending commands whose time is over, through the `commands_pending` index as
/// [`NEXT_DUE_COMMAND`] does.
pub const EXPIRE_COMMANDS: &str = "UPDATE commands SET status = 'expired', settled_at = $1
     WHERE status IN ('queued', 'sent') AND next_attempt_at IS NOT NULL AND expires_at <= $1
     RETURNING command_id, store_id, device_id, session_id, action, attempts";

/// Settles a pending command with the device's answer (a primary-key lookup: see migration
/// V14).
pub const SETTLE_COMMAND: &str = "UPDATE commands SET status = $4, settled_at = $5, detail = $6
     WHERE command_id = $1 AND store_id = $2 AND device_id = $3 AND status IN ('queued', 'sent')
     RETURNING session_id, action";

/// Publishes due commands while connected, and every device's desired state on each
/// (re)connection, until `stop` is cancelled.
pub async fn run_dispatcher(
    pool: Pool,
    client: AsyncClient,
    mut connected: watch::Receiver<bool>,
    wake: Arc<Notify>,
    key: Arc<SigningKey>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut republish = true;
    let mut backoff_on_error = Duration::from_millis(200);
    loop {
        let mut pause = MAX_SLEEP;
        if *connected.borrow_and_update() {
            match dispatch_once(&pool, &key, republish, &metrics).await {
                Ok((messages, next_due)) => {
                    republish = false;
                    backoff_on_error = Duration::from_millis(200);
                    publish_all(&client, messages, &stop).await;
                    pause = next_due
                        .and_then(|due| (due - Utc::now()).to_std().ok())
                        .unwrap_or(Duration::ZERO)
                        .min(MAX_SLEEP);
                }
                Err(error) => {
                    tracing::warn!(%error, "command dispatcher cannot reach the database; retrying");
                    backoff_on_error = (backoff_on_error * 2).min(Duration::from_secs(5));
                    pause = backoff_on_error;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = wake.notified() => {}
            changed = connected.changed() => {
                if changed.is_err() {
                    break;
                }
                // The broker keeps nothing across restarts: after every (re)connection every
                // device's desired state is published again from the database.
                republish = true;
            }
            () = tokio::time::sleep(pause) => {}
        }
    }
}

async fn dispatch_once(
    pool: &Pool,
    key: &SigningKey,
    republish: bool,
    metrics: &Metrics,
) -> Result<(Vec<Outbound>, Option<DateTime<Utc>>), WorkError> {
    let now = Utc::now();
    let mut messages = Vec::new();
    if republish {
        let client = pool.get().await?;
        messages.extend(desired_states(&client, DesiredOf::All, key, now).await?);
        tracing::info!(
            devices = messages.len(),
            "published every device's desired state"
        );
    }
    let (due, next_due) = dispatch_due(pool, key, now, metrics).await?;
    messages.extend(due);
    Ok((messages, next_due))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_ten_seconds() {
        let waits: Vec<u64> = (1..=6).map(|attempt| backoff(attempt).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(0), Duration::from_secs(1));
    }

    #[test]
    fn a_resent_start_counts_the_time_left_from_now() {
        let issued = DateTime::from_timestamp(1_000, 0).unwrap();
        let command = Command {
            command_id: CommandId::random(),
            issued_at: issued,
            epoch: 3,
            store: None,
            device: None,
            expires_at: None,
            action: CommandAction::Start {
                session_id: SessionId::random(),
                lease_until: issued + chrono::Duration::seconds(60),
                remaining_ms: 60_000,
            },
            signature: None,
        };
        let later = refreshed(command.clone(), issued + chrono::Duration::seconds(45));
        assert!(matches!(
            later.action,
            CommandAction::Start {
                remaining_ms: 15_000,
                ..
            }
        ));
        assert_eq!((later.command_id, later.epoch), (command.command_id, 3));
        let after_end = refreshed(command, issued + chrono::Duration::seconds(90));
        assert!(matches!(
            after_end.action,
            CommandAction::Start {
                remaining_ms: 0,
                ..
            }
        ));
    }

    #[test]
    fn each_attempt_names_its_device_expires_soon_and_verifies() {
        use mujin_protocol::signed::verify_command;
        let now = DateTime::from_timestamp(1_000, 0).unwrap();
        let key = SigningKey::from_seed("c1".parse().unwrap(), &[3; 32]).unwrap();
        let (store, device): (StoreId, DeviceId) = ("s".parse().unwrap(), "d".parse().unwrap());
        let command = Command {
            command_id: CommandId::random(),
            issued_at: now,
            epoch: 1,
            store: None,
            device: None,
            expires_at: None,
            action: CommandAction::Stop {
                session_id: SessionId::random(),
                reason: mujin_protocol::message::EndReason::Forced,
            },
            signature: None,
        };
        let late = now + chrono::Duration::hours(2);
        let sent = sealed(command.clone(), (&store, &device), late, &key, now);
        assert_eq!(sent.expires_at, Some(now + SIGNED_COMMAND_TTL));
        let public = key.public_key();
        assert_eq!(verify_command(&public, &sent, &store, &device, now), Ok(()));
        let soon = now + chrono::Duration::seconds(30);
        let sent = sealed(command, (&store, &device), soon, &key, now);
        assert_eq!(sent.expires_at, Some(soon));
    }
}
