//! The operator actions on sessions and devices: `sessions`, `stop`, `extend`,
//! `device-service` and `cancel`.

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Args;
use mujin_protocol::{DeviceId, SessionId, StoreId, TicketId};

use super::{clock, ready_pool};
use crate::actions;

/// Who runs an operator action (written to the log with it).
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Who is acting (written to the log with the action).
    #[arg(long, env = "MUJIN_OPERATOR", default_value = "command-line")]
    pub operator: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("new_end").required(true).args(["minutes", "until"])))]
pub struct ExtendArgs {
    /// The session id (see `sessions`).
    #[arg(long, value_parser = SessionId::parse)]
    pub session: SessionId,
    /// Minutes to add to the session's current end.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=24 * 60))]
    pub minutes: Option<u32>,
    /// The new end, as an RFC 3339 time (may also shorten the session).
    #[arg(long)]
    pub until: Option<String>,
    #[command(flatten)]
    pub operator: OperatorArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("service").required(true).args(["out", "back_in"])))]
pub struct DeviceServiceArgs {
    #[arg(long, value_parser = StoreId::parse)]
    pub store: StoreId,
    #[arg(long, value_parser = DeviceId::parse)]
    pub device: DeviceId,
    /// Take the device out of service.
    #[arg(long)]
    pub out: bool,
    /// Put the device back in service.
    #[arg(long = "in")]
    pub back_in: bool,
    #[command(flatten)]
    pub operator: OperatorArgs,
}

pub(super) async fn list_sessions(database_url: &str) -> anyhow::Result<()> {
    let pool = ready_pool(database_url).await?;
    let sessions = actions::open_sessions(&pool).await?;
    if sessions.is_empty() {
        println!("no open sessions");
        return Ok(());
    }
    println!(
        "{:<36}  {:<24}  {:<20}  {:<20}  warned",
        "session", "device", "started", "ends"
    );
    for summary in sessions {
        let session = &summary.session;
        let warned = summary.warned_at.map_or_else(|| "no".to_owned(), clock);
        println!(
            "{:<36}  {:<24}  {:<20}  {:<20}  {warned}",
            session.session_id,
            format!("{}/{}", session.store, session.device),
            clock(session.started_at),
            clock(session.lease_until),
        );
    }
    Ok(())
}

pub(super) async fn stop(
    database_url: &str,
    session: SessionId,
    operator: &OperatorArgs,
) -> anyhow::Result<()> {
    let pool = ready_pool(database_url).await?;
    let stopped = actions::force_stop(&pool, session, &operator.operator, Utc::now()).await?;
    println!(
        "stopped session {} on {}/{}",
        stopped.session_id, stopped.store, stopped.device
    );
    Ok(())
}

pub(super) async fn cancel(
    database_url: &str,
    ticket: TicketId,
    operator: &OperatorArgs,
) -> anyhow::Result<()> {
    let pool = ready_pool(database_url).await?;
    actions::cancel(&pool, ticket, &operator.operator, Utc::now()).await?;
    println!("cancelled booking {ticket}");
    Ok(())
}

pub(super) async fn extend(database_url: &str, args: &ExtendArgs) -> anyhow::Result<()> {
    let new_end = match (args.minutes, &args.until) {
        (Some(minutes), _) => {
            actions::NewEnd::AfterCurrent(chrono::Duration::minutes(minutes.into()))
        }
        (None, Some(until)) => actions::NewEnd::At(
            DateTime::parse_from_rfc3339(until)
                .with_context(|| format!("--until {until:?} is not an RFC 3339 time"))?
                .with_timezone(&Utc),
        ),
        (None, None) => bail!("give the new end with --minutes N or --until TIME"),
    };
    let pool = ready_pool(database_url).await?;
    let extension = actions::extend(
        &pool,
        args.session,
        new_end,
        &args.operator.operator,
        Utc::now(),
    )
    .await?;
    println!(
        "session {} now ends at {} (was {})",
        extension.session_id,
        clock(extension.lease_until),
        clock(extension.previous_lease_until)
    );
    Ok(())
}

pub(super) async fn device_service(
    database_url: &str,
    args: &DeviceServiceArgs,
) -> anyhow::Result<()> {
    let pool = ready_pool(database_url).await?;
    let in_service = args.back_in;
    let change = actions::set_in_service(
        &pool,
        &args.store,
        &args.device,
        in_service,
        &args.operator.operator,
        Utc::now(),
    )
    .await?;
    let state = if in_service {
        "in service"
    } else {
        "out of service"
    };
    let mut line = format!(
        "device {}/{} {}{state}; {} booking(s) ahead",
        args.store,
        args.device,
        if change.changed { "now " } else { "already " },
        change.affected_tickets.len()
    );
    if !change.affected_tickets.is_empty() {
        let tickets: Vec<String> = change
            .affected_tickets
            .iter()
            .map(|t| t.to_string())
            .collect();
        line.push_str(&format!(": {}", tickets.join(", ")));
    }
    if let (false, Some(session)) = (in_service, change.running_session) {
        line.push_str(&format!(
            "; session {session} keeps running (stop it with `stop --session {session}`)"
        ));
    }
    println!("{line}");
    Ok(())
}
