//! The `mujin-management` command line: run the worker, register devices, book tickets, and
//! the operator actions (stop, extend, service state, cancel) with the list of open sessions.
//!
//! The clap tree and the dispatch live here; each theme has its module: [`run`] (the worker's
//! flags), [`keys`] (command, root and ticket keys), [`stores`] (stores, devices, bookings),
//! [`sessions`] (operator actions), [`reports`] (usage reports).

mod keys;
mod reports;
mod run;
mod sessions;
mod stores;

use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use mujin_protocol::{DeviceId, KeyId, SessionId, StoreId, TicketId};

pub use keys::TicketKeyCommand;
pub use reports::{ReportArgs, ReportFormat};
pub use run::{shutdown_signal, split_host_port, RunArgs};
pub use sessions::{DeviceServiceArgs, ExtendArgs, OperatorArgs};
pub use stores::{parse_start, ReserveArgs, StoreSettingsArgs};

use crate::postgres::{ClusterError, PrivateCluster};
use crate::{db, identities, integrators, mosquitto, operators};

/// The database mujin uses in its private cluster.
const DATABASE_NAME: &str = "mujin";

/// mujin management: reservations, tickets, scan decisions, stop timers and operator actions.
#[derive(Debug, Parser)]
#[command(name = "mujin-management", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// PostgreSQL to use. Without it, a private cluster is started in <data-dir>/postgres.
    #[arg(
        long,
        env = "MUJIN_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Where mujin keeps its private PostgreSQL cluster and signing keys.
    #[arg(long, env = "MUJIN_DATA_DIR", default_value = ".mujin", global = true)]
    pub data_dir: PathBuf,
    /// The ticket key for new tickets while no ticket key is recorded yet (default k1; kept in
    /// <data-dir>/keys/<id>.pk8); with `ticket-key rotate`, the id of the new key. Afterwards
    /// the database says which key is current.
    #[arg(long, env = "MUJIN_KEY_ID", value_parser = KeyId::parse, global = true)]
    pub key_id: Option<KeyId>,
}

impl GlobalArgs {
    /// The ticket key an empty key table is seeded with.
    pub fn seed_key_id(&self) -> KeyId {
        self.key_id
            .clone()
            .unwrap_or_else(|| KeyId::parse("k1").expect("k1 is a valid key id"))
    }
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the worker: decide scans, start and stop sessions.
    Run(RunArgs),
    /// Print the public key of the command key (`KEYID:HEX`), which signs commands and desired
    /// states; give it to every agent with `--management-key`. The key is created in
    /// <data-dir>/keys/ when missing.
    CommandKey,
    /// Print the public key of the root key (`KEYID:HEX`), which signs the stores' trust lists
    /// (the ticket keys devices trust offline); give it to every agent with `--root-key`. The
    /// key is created in <data-dir>/keys/root-r1.pk8 when missing.
    RootKey,
    /// Ticket keys: list, rotate, revoke.
    #[command(subcommand)]
    TicketKey(TicketKeyCommand),
    /// Register a device (and its store).
    DeviceAdd {
        #[arg(long, value_parser = StoreId::parse)]
        store: StoreId,
        #[arg(long, value_parser = DeviceId::parse)]
        device: DeviceId,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List registered devices.
    Devices,
    /// Show a store's session rules, changing those given.
    StoreSettings(StoreSettingsArgs),
    /// Book a device and print its ticket and QR code.
    Reserve(ReserveArgs),
    /// List open sessions: id, device, start, end and whether the customer was warned.
    Sessions,
    /// Stop a session now (reason `forced`); the device stops its program.
    Stop {
        /// The session id (see `sessions`).
        #[arg(long, value_parser = SessionId::parse)]
        session: SessionId,
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Move the end of a session (extend, or shorten with --until).
    ///
    /// Later with --minutes, or to an exact time with --until (earlier is allowed too, if still
    /// in the future). Refused when another booking of the device starts before the new end.
    /// The device is told, and the stop timer follows the new end.
    Extend(ExtendArgs),
    /// Take a device out of service (--out) or put it back (--in).
    ///
    /// Out of service, its scans are refused with `out_of_service`; the bookings still ahead on
    /// it are listed. Taking it out does NOT stop a running session: stop it with
    /// `stop --session ID` if needed.
    DeviceService(DeviceServiceArgs),
    /// Cancel a booking that was not used yet; its ticket is refused from then on.
    Cancel {
        /// The ticket id printed by `reserve`.
        #[arg(long, value_parser = TicketId::parse)]
        ticket: TicketId,
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Usage per store, device and day: sessions, minutes used, no-shows and refusals by
    /// reason, as a table or CSV.
    ///
    /// Sessions and their minutes count on the day they started, no-shows on the day the
    /// booking started, refusals (from the audit log) on the day they happened. The table shows
    /// a column per refusal reason that occurred; CSV has a `refused_<reason>` column for every
    /// reason, so its columns do not change with the period.
    Report(ReportArgs),
    #[command(flatten)]
    Operators(operators::cli::OperatorCommand),
    /// Broker identities: device-enrol, device-revoke, operator-enrol, service-enrol,
    /// identities, identity-revoke.
    #[command(flatten)]
    Identity(identities::IdentityCommand),
    /// Integrators that book over MQTT: integrator-enrol, integrator-revoke.
    #[command(flatten)]
    Integrator(integrators::IntegratorCommand),
    /// Print (or write with --out) Mosquitto's ACL file for the enrolled identities, for fleets
    /// that run Mosquitto: devices reach only their own topics. Usernames there use `.` for
    /// `:`; passwords are added at enrolment with `mosquitto_passwd -b`.
    MosquittoAcl {
        /// Write the ACL to this file (replaced whole) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// The database to use: the configured URL, or the private cluster (started if needed).
pub struct Database {
    pub url: String,
    /// Kept alive while the database is in use; stopped on drop.
    pub cluster: Option<PrivateCluster>,
}

/// Opens the configured database or starts the private cluster under `data_dir`.
pub async fn open_database(global: &GlobalArgs) -> anyhow::Result<Database> {
    if let Some(url) = &global.database_url {
        return Ok(Database {
            url: url.clone(),
            cluster: None,
        });
    }
    let dir = global.data_dir.join("postgres");
    let cluster = match PrivateCluster::start(&dir) {
        Ok(cluster) => cluster,
        Err(ClusterError::AlreadyRunning { pid, .. }) => {
            // Another mujin-management (e.g. the worker) runs it: share it.
            tracing::info!(pid, data_dir = %dir.display(), "using the private PostgreSQL already running");
            return Ok(Database {
                url: PrivateCluster::connection_string_of_running(&dir, DATABASE_NAME),
                cluster: None,
            });
        }
        Err(error) => {
            return Err(error).with_context(|| {
                format!("cannot start the private PostgreSQL in {}", dir.display())
            })
        }
    };
    cluster.create_database(DATABASE_NAME).await?;
    Ok(Database {
        url: cluster.connection_string(DATABASE_NAME),
        cluster: Some(cluster),
    })
}

fn key_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

/// Runs one command line.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    // These need no database.
    match cli.command {
        CliCommand::CommandKey => return keys::print_command_key(&cli.global),
        CliCommand::RootKey => return keys::print_root_key(&cli.global),
        _ => {}
    }
    let database = open_database(&cli.global).await?;
    let result = execute_with(&cli, &database.url).await;
    if let Some(cluster) = database.cluster {
        tokio::task::spawn_blocking(move || cluster.stop()).await??;
    }
    result
}

async fn execute_with(cli: &Cli, database_url: &str) -> anyhow::Result<()> {
    let global = &cli.global;
    match &cli.command {
        CliCommand::Run(args) => run::run(global, database_url, args).await,
        CliCommand::CommandKey => keys::print_command_key(global),
        CliCommand::RootKey => keys::print_root_key(global),
        CliCommand::TicketKey(command) => {
            let pool = ready_pool(database_url).await?;
            keys::ticket_key(global, &pool, command).await
        }
        CliCommand::DeviceAdd {
            store,
            device,
            name,
        } => stores::add_device(database_url, store, device, name).await,
        CliCommand::Devices => stores::list_devices(database_url).await,
        CliCommand::StoreSettings(args) => stores::store_settings(database_url, args).await,
        CliCommand::Reserve(args) => stores::reserve(global, database_url, args).await,
        CliCommand::Sessions => sessions::list_sessions(database_url).await,
        CliCommand::Stop { session, operator } => {
            sessions::stop(database_url, *session, operator).await
        }
        CliCommand::Extend(args) => sessions::extend(database_url, args).await,
        CliCommand::DeviceService(args) => sessions::device_service(database_url, args).await,
        CliCommand::Cancel { ticket, operator } => {
            sessions::cancel(database_url, *ticket, operator).await
        }
        CliCommand::Report(args) => reports::report(database_url, args).await,
        CliCommand::Operators(command) => {
            let pool = ready_pool(database_url).await?;
            operators::cli::execute(&pool, &global.data_dir, command).await
        }
        CliCommand::Identity(command) => {
            let pool = ready_pool(database_url).await?;
            identities::execute(command, &pool, &key_dir(&global.data_dir)).await
        }
        CliCommand::Integrator(command) => {
            let pool = ready_pool(database_url).await?;
            integrators::execute(command, &pool, &key_dir(&global.data_dir)).await
        }
        CliCommand::MosquittoAcl { out } => {
            let pool = ready_pool(database_url).await?;
            mosquitto::execute(&pool, out.as_deref()).await
        }
    }
}

/// A pool on the database, migrated.
async fn ready_pool(database_url: &str) -> anyhow::Result<deadpool_postgres::Pool> {
    let pool = db::pool(database_url, 2)?;
    db::migrate(&pool).await?;
    Ok(pool)
}

/// A time as the command line prints it: RFC 3339 in UTC, to the second.
fn clock(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
