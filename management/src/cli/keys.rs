//! The key commands: `command-key`, `root-key` and `ticket-key list|rotate|revoke`.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use mujin_protocol::signed::public_key_text;
use mujin_protocol::KeyId;

use super::{clock, key_dir, GlobalArgs};
use crate::{keys, ticket_keys};

/// The ticket-key subcommands.
#[derive(Debug, Subcommand)]
pub enum TicketKeyCommand {
    /// List the ticket keys: id, state (current, retired, revoked) and when each was created,
    /// retired and revoked.
    List,
    /// Create a new ticket key (id from the global --key-id, default the next free kN), make it
    /// current and retire the current one. New tickets are signed with the new key; tickets
    /// of the retired key stay valid until they expire. Running workers switch within seconds.
    Rotate,
    /// Revoke a retired ticket key: its tickets are refused (`revoked_key`) within seconds,
    /// by management and by devices checking offline. The current key cannot be revoked:
    /// rotate first.
    Revoke {
        /// The key id (see `ticket-key list`).
        #[arg(value_parser = KeyId::parse)]
        key_id: KeyId,
    },
}

/// Prints the command key's public key, creating the key when missing.
pub(super) fn print_command_key(global: &GlobalArgs) -> anyhow::Result<()> {
    let key = keys::load_or_create_command_key(&key_dir(&global.data_dir))?;
    println!("{}", public_key_text(&key.public_key()));
    Ok(())
}

/// Prints the root key's public key, creating the key when missing.
pub(super) fn print_root_key(global: &GlobalArgs) -> anyhow::Result<()> {
    let key = keys::load_or_create_root_key(&key_dir(&global.data_dir))?;
    println!("{}", public_key_text(&key.public_key()));
    Ok(())
}

pub(super) async fn ticket_key(
    global: &GlobalArgs,
    pool: &deadpool_postgres::Pool,
    command: &TicketKeyCommand,
) -> anyhow::Result<()> {
    let dir = key_dir(&global.data_dir);
    let now = Utc::now();
    // An installation from before the key table gets its keys recorded first.
    ticket_keys::seed_if_empty(pool, &dir, &global.seed_key_id(), now).await?;
    match command {
        TicketKeyCommand::List => print!("{}", ticket_key_table(&ticket_keys::list(pool).await?)),
        TicketKeyCommand::Rotate => {
            let rotation = ticket_keys::rotate(pool, &dir, global.key_id.clone(), now).await?;
            println!(
                "ticket key {} is now current: new tickets are signed with it (running workers \
                 switch within seconds)",
                rotation.current
            );
            if let Some(retired) = rotation.retired {
                println!(
                    "ticket key {retired} is retired: its tickets stay valid until they expire; \
                     revoke it with `mujin-management ticket-key revoke {retired}`"
                );
            }
        }
        TicketKeyCommand::Revoke { key_id } => {
            match ticket_keys::revoke(pool, key_id, now).await? {
                ticket_keys::Revocation::Now { open_bookings } => println!(
                    "revoked ticket key {key_id}: its tickets are refused (revoked_key) within \
                 seconds; {open_bookings} open booking(s) hold a ticket signed with it and need \
                 a new one"
                ),
                ticket_keys::Revocation::Already(at) => {
                    println!("ticket key {key_id} was already revoked at {}", clock(at))
                }
            }
        }
    }
    Ok(())
}

/// The `ticket-key list` table.
fn ticket_key_table(keys: &[ticket_keys::TicketKey]) -> String {
    let when = |time: Option<DateTime<Utc>>| time.map_or_else(|| "-".to_owned(), clock);
    let mut text = format!(
        "{:<12}  {:<8}  {:<20}  {:<20}  revoked\n",
        "key", "state", "created", "retired"
    );
    for key in keys {
        text.push_str(&format!(
            "{:<12}  {:<8}  {:<20}  {:<20}  {}\n",
            key.key_id().as_str(),
            key.state().as_str(),
            clock(key.created_at),
            when(key.retired_at),
            when(key.revoked_at)
        ));
    }
    text
}
