//! The `mujin-management` command line: run the worker, register devices, book tickets, and
//! the operator actions (stop, extend, service state, cancel) with the list of open sessions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use mujin_protocol::signed::public_key_text;
use mujin_protocol::{DeviceId, KeyId, SessionId, StoreId, TicketId};

use crate::postgres::{ClusterError, PrivateCluster};

/// The database mujin uses in its private cluster.
const DATABASE_NAME: &str = "mujin";
use crate::{
    actions, booking, db, identities, keys, mosquitto, operators, qr, ticket_keys, MqttSettings,
    Settings,
};

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
    StoreSettings {
        #[arg(long, value_parser = StoreId::parse)]
        store: StoreId,
        /// Minutes before the end of a session its customer is warned (0: no warning).
        #[arg(long)]
        warn_minutes: Option<i32>,
        /// Seconds after its start a booking nobody scanned frees the device (no-show).
        #[arg(long)]
        no_show_grace_secs: Option<i32>,
        /// Let the store's devices start a provisional session on their own check of a ticket
        /// when management does not answer (`on` or `off`; off for new stores).
        #[arg(long, value_parser = parse_on_off)]
        offline_start: Option<bool>,
    },
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
    #[command(flatten)]
    Operators(operators::cli::OperatorCommand),
    /// Broker identities: device-enrol, device-revoke, operator-enrol, service-enrol,
    /// identities, identity-revoke.
    #[command(flatten)]
    Identity(identities::IdentityCommand),
    /// Print (or write with --out) Mosquitto's ACL file for the enrolled identities, for fleets
    /// that run Mosquitto: devices reach only their own topics. Usernames there use `.` for
    /// `:`; passwords are added at enrolment with `mosquitto_passwd -b`.
    MosquittoAcl {
        /// Write the ACL to this file (replaced whole) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

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

#[derive(Debug, Args)]
pub struct RunArgs {
    /// MQTT broker, host:port.
    #[arg(long, env = "MUJIN_BROKER", default_value = "127.0.0.1:1883")]
    pub broker: String,
    #[arg(long, env = "MUJIN_MQTT_USERNAME", default_value = "management")]
    pub username: String,
    #[arg(long, env = "MUJIN_MQTT_PASSWORD", hide_env_values = true)]
    pub password: String,
    /// MQTT client id, unique per worker; also the worker's name on its status topic
    /// (lower-case letters, digits and `-`).
    #[arg(long, env = "MUJIN_MQTT_CLIENT_ID", default_value = "mujin-management")]
    pub client_id: String,
    /// Connect with TLS, accepting only a broker certificate signed by this CA (PEM) and valid
    /// for the host of --broker.
    #[arg(long, env = "MUJIN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This worker's certificate (PEM), for a broker that requires client certificates.
    #[arg(long, env = "MUJIN_TLS_CLIENT_CERT", requires_all = ["tls_ca", "tls_client_key"])]
    pub tls_client_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-client-cert.
    #[arg(long, env = "MUJIN_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
    /// Seconds before its window a ticket is already accepted.
    #[arg(long, env = "MUJIN_EARLY_GRACE_SECS", default_value_t = 60)]
    pub early_grace_secs: u64,
    /// Serve Prometheus metrics on http://ADDR/metrics (IP:port, e.g. 127.0.0.1:9464); off
    /// when not given. See docs/metrics.md.
    #[arg(long, env = "MUJIN_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct ReserveArgs {
    #[arg(long, value_parser = StoreId::parse)]
    pub store: StoreId,
    #[arg(long, value_parser = DeviceId::parse)]
    pub device: DeviceId,
    /// Start of the booking: `now`, `+10m`, `+30s`, `+2h` or an RFC 3339 time.
    #[arg(long, default_value = "now")]
    pub from: String,
    /// Length of the booking in minutes.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=24 * 60), conflicts_with = "seconds")]
    pub minutes: Option<u32>,
    /// Length of the booking in seconds (for short demos and tests).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=24 * 3600))]
    pub seconds: Option<u32>,
    /// Also write the QR code as a PNG image.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Print only the ticket text (no QR code), for scripts.
    #[arg(long)]
    pub quiet: bool,
}

/// Parses a booking start: `now`, `+<n>s|m|h`, or RFC 3339.
pub fn parse_start(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if text == "now" {
        return Ok(now);
    }
    if let Some(offset) = text.strip_prefix('+') {
        let split = offset.len().saturating_sub(1);
        let (amount, unit) = offset.split_at(split);
        let amount: i64 = amount
            .parse()
            .with_context(|| format!("bad offset {text:?}"))?;
        let seconds = match unit {
            "s" => amount,
            "m" => amount * 60,
            "h" => amount * 3600,
            _ => bail!("bad offset {text:?}: use s, m or h, e.g. +10m"),
        };
        return Ok(now + chrono::Duration::seconds(seconds));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .with_context(|| format!("{text:?} is not `now`, `+10m` or an RFC 3339 time"))
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

/// Prints the command key's public key, creating the key when missing.
fn print_command_key(global: &GlobalArgs) -> anyhow::Result<()> {
    let key = keys::load_or_create_command_key(&key_dir(&global.data_dir))?;
    println!("{}", public_key_text(&key.public_key()));
    Ok(())
}

/// Prints the root key's public key, creating the key when missing.
fn print_root_key(global: &GlobalArgs) -> anyhow::Result<()> {
    let key = keys::load_or_create_root_key(&key_dir(&global.data_dir))?;
    println!("{}", public_key_text(&key.public_key()));
    Ok(())
}

/// Runs one command line.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    // These need no database.
    match cli.command {
        CliCommand::CommandKey => return print_command_key(&cli.global),
        CliCommand::RootKey => return print_root_key(&cli.global),
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
        CliCommand::Run(args) => {
            let (host, port) = split_host_port(&args.broker)?;
            let settings = Settings {
                database_url: database_url.to_owned(),
                mqtt: MqttSettings {
                    host,
                    port,
                    username: args.username.clone(),
                    password: args.password.clone(),
                    client_id: args.client_id.clone(),
                    tls: mujin_transport::TlsSettings::from_flags(
                        args.tls_ca.clone(),
                        args.tls_client_cert.clone(),
                        args.tls_client_key.clone(),
                    )?,
                },
                key_dir: key_dir(&global.data_dir),
                key_id: global.seed_key_id(),
                early_grace: Duration::from_secs(args.early_grace_secs),
                metrics_listen: args.metrics_listen,
            };
            crate::run(settings, shutdown_signal()).await
        }
        CliCommand::CommandKey => print_command_key(global),
        CliCommand::RootKey => print_root_key(global),
        CliCommand::TicketKey(command) => {
            let pool = ready_pool(database_url).await?;
            ticket_key(global, &pool, command).await
        }
        CliCommand::DeviceAdd {
            store,
            device,
            name,
        } => {
            let pool = ready_pool(database_url).await?;
            booking::add_device(&pool, store, device, name).await?;
            println!("registered device {store}/{device}");
            Ok(())
        }
        CliCommand::Devices => {
            let pool = ready_pool(database_url).await?;
            for (store, device) in booking::list_devices(&pool).await? {
                println!("{store}/{device}");
            }
            Ok(())
        }
        CliCommand::StoreSettings {
            store,
            warn_minutes,
            no_show_grace_secs,
            offline_start,
        } => {
            let pool = ready_pool(database_url).await?;
            let change = booking::StoreSettingsChange {
                warn_minutes: *warn_minutes,
                no_show_grace_seconds: *no_show_grace_secs,
                offline_start: *offline_start,
            };
            let settings = booking::update_store_settings(&pool, store, change).await?;
            println!(
                "store {store}: warn {} min before the end, no-show after {} s, offline start {}",
                settings.warn_minutes,
                settings.no_show_grace_seconds,
                if settings.offline_start { "on" } else { "off" }
            );
            Ok(())
        }
        CliCommand::Reserve(args) => reserve(global, database_url, args).await,
        CliCommand::Sessions => list_sessions(database_url).await,
        CliCommand::Stop { session, operator } => {
            let pool = ready_pool(database_url).await?;
            let stopped =
                actions::force_stop(&pool, *session, &operator.operator, Utc::now()).await?;
            println!(
                "stopped session {} on {}/{}",
                stopped.session_id, stopped.store, stopped.device
            );
            Ok(())
        }
        CliCommand::Extend(args) => extend(database_url, args).await,
        CliCommand::DeviceService(args) => device_service(database_url, args).await,
        CliCommand::Cancel { ticket, operator } => {
            let pool = ready_pool(database_url).await?;
            actions::cancel(&pool, *ticket, &operator.operator, Utc::now()).await?;
            println!("cancelled booking {ticket}");
            Ok(())
        }
        CliCommand::Operators(command) => {
            let pool = ready_pool(database_url).await?;
            operators::cli::execute(&pool, &global.data_dir, command).await
        }
        CliCommand::Identity(command) => {
            let pool = ready_pool(database_url).await?;
            identities::execute(command, &pool, &key_dir(&global.data_dir)).await
        }
        CliCommand::MosquittoAcl { out } => {
            let pool = ready_pool(database_url).await?;
            mosquitto::execute(&pool, out.as_deref()).await
        }
    }
}

async fn ticket_key(
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

async fn list_sessions(database_url: &str) -> anyhow::Result<()> {
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

fn clock(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn extend(database_url: &str, args: &ExtendArgs) -> anyhow::Result<()> {
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

async fn device_service(database_url: &str, args: &DeviceServiceArgs) -> anyhow::Result<()> {
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

async fn ready_pool(database_url: &str) -> anyhow::Result<deadpool_postgres::Pool> {
    let pool = db::pool(database_url, 2)?;
    db::migrate(&pool).await?;
    Ok(pool)
}

async fn reserve(
    global: &GlobalArgs,
    database_url: &str,
    args: &ReserveArgs,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let starts_at = parse_start(&args.from, now)?;
    let length = match (args.minutes, args.seconds) {
        (Some(minutes), _) => i64::from(minutes) * 60,
        (None, Some(seconds)) => i64::from(seconds),
        (None, None) => bail!("give the booking length with --minutes N (or --seconds N)"),
    };
    let ends_at = starts_at + chrono::Duration::seconds(length);
    let pool = ready_pool(database_url).await?;
    let keys = ticket_keys::open(
        &pool,
        &key_dir(&global.data_dir),
        &global.seed_key_id(),
        now,
    )
    .await?;
    let booking = booking::reserve(
        &pool,
        &keys.signing,
        &args.store,
        &args.device,
        starts_at,
        ends_at,
        now,
    )
    .await?;
    if args.quiet {
        println!("{}", booking.ticket);
    } else {
        println!("{}", qr::terminal(&booking.ticket)?);
        println!("ticket   {}", booking.claims.ticket_id);
        println!(
            "device   {}/{}",
            booking.claims.store, booking.claims.device
        );
        println!(
            "window   {} → {}",
            booking.claims.not_before.to_rfc3339(),
            booking.claims.not_after.to_rfc3339()
        );
        println!("text     {}", booking.ticket);
    }
    if let Some(path) = &args.png {
        qr::write_png(&booking.ticket, path)?;
        if !args.quiet {
            println!("png      {}", path.display());
        }
    }
    Ok(())
}

/// Splits `host:port`.
pub fn split_host_port(address: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("broker address {address:?} must be host:port"))?;
    let port = port
        .parse()
        .with_context(|| format!("broker address {address:?} has a bad port"))?;
    Ok((host.to_owned(), port))
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// `on`/`off` (also `true`/`false`, `yes`/`no`) for a switch.
fn parse_on_off(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("expected on or off, not {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_parse() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("OFF"), Ok(false));
        assert!(parse_on_off("maybe").unwrap_err().contains("maybe"));
    }

    #[test]
    fn booking_starts_parse() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        assert_eq!(parse_start("now", now).unwrap(), now);
        assert_eq!(
            parse_start("+10m", now).unwrap(),
            now + chrono::Duration::minutes(10)
        );
        assert_eq!(
            parse_start("+30s", now).unwrap(),
            now + chrono::Duration::seconds(30)
        );
        assert_eq!(
            parse_start("+2h", now).unwrap(),
            now + chrono::Duration::hours(2)
        );
        assert_eq!(
            parse_start("2030-01-01T10:00:00+09:00", now).unwrap(),
            DateTime::parse_from_rfc3339("2030-01-01T01:00:00Z").unwrap()
        );
        assert!(parse_start("+10x", now).is_err());
        assert!(parse_start("tomorrow", now).is_err());
    }

    #[test]
    fn metrics_are_off_unless_an_address_is_given() {
        let run = |extra: &[&str]| {
            let mut args = vec!["mujin-management", "run", "--password", "p"];
            args.extend_from_slice(extra);
            match Cli::try_parse_from(args).map(|cli| cli.command) {
                Ok(CliCommand::Run(run)) => Ok(run.metrics_listen),
                Ok(other) => panic!("not run: {other:?}"),
                Err(error) => Err(error.kind()),
            }
        };
        assert_eq!(run(&[]), Ok(None));
        assert_eq!(
            run(&["--metrics-listen", "127.0.0.1:9464"]),
            Ok(Some("127.0.0.1:9464".parse().unwrap()))
        );
        assert_eq!(
            run(&["--metrics-listen", "localhost"]),
            Err(clap::error::ErrorKind::ValueValidation)
        );
    }

    #[test]
    fn broker_addresses_split() {
        assert_eq!(
            split_host_port("127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883)
        );
        assert!(split_host_port("localhost").is_err());
        assert!(split_host_port("h:99999").is_err());
    }
}
