//! The `mujin-management` command line: run the worker, register devices, book tickets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use mujin_protocol::{DeviceId, KeyId, StoreId};

use crate::postgres::{ClusterError, PrivateCluster};

/// The database mujin uses in its private cluster.
const DATABASE_NAME: &str = "mujin";
use crate::{booking, db, keys, qr, MqttSettings, Settings};

/// mujin management: reservations, tickets, scan decisions and stop timers.
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
    /// The ticket-signing key used for new tickets (kept in <data-dir>/keys/<id>.pk8).
    #[arg(long, env = "MUJIN_KEY_ID", default_value = "k1", value_parser = KeyId::parse, global = true)]
    pub key_id: KeyId,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the worker: decide scans, start and stop sessions.
    Run(RunArgs),
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
    /// Book a device and print its ticket and QR code.
    Reserve(ReserveArgs),
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
    /// Stable MQTT client id (the broker keeps unacknowledged scans under it).
    #[arg(long, env = "MUJIN_MQTT_CLIENT_ID", default_value = "mujin-management")]
    pub client_id: String,
    /// Seconds before its window a ticket is already accepted.
    #[arg(long, env = "MUJIN_EARLY_GRACE_SECS", default_value_t = 60)]
    pub early_grace_secs: u64,
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

/// Runs one command line.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
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
                },
                key_dir: key_dir(&global.data_dir),
                key_id: global.key_id.clone(),
                early_grace: Duration::from_secs(args.early_grace_secs),
            };
            crate::run(settings, shutdown_signal()).await
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
        CliCommand::Reserve(args) => reserve(global, database_url, args).await,
    }
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
    let keys = keys::load_or_create(&key_dir(&global.data_dir), &global.key_id)?;
    let pool = ready_pool(database_url).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn broker_addresses_split() {
        assert_eq!(
            split_host_port("127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883)
        );
        assert!(split_host_port("localhost").is_err());
        assert!(split_host_port("h:99999").is_err());
    }
}
