//! `mujin-loadgen`: a virtual fleet against a running stack (`run`), or the benchmark suite on a
//! private stack (`bench`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mujin_loadgen::bench::{self, BenchSettings};
use mujin_loadgen::device::BrokerAddress;
use mujin_loadgen::fleet::FleetSpec;
use mujin_loadgen::run::{self, RunSettings};
use tracing_subscriber::EnvFilter;

/// mujin load generator: virtual devices that behave like agents, and the benchmarks.
#[derive(Debug, Parser)]
#[command(name = "mujin-loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run N stores × M virtual devices against a running broker, management and database:
    /// telemetry every T seconds, scans of freshly booked tickets at R per second.
    Run {
        /// The broker, host:port.
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        /// Management's PostgreSQL (devices are enrolled and tickets booked there).
        #[arg(long, env = "MUJIN_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Management's data directory (its keys: the identity pepper and ticket keys).
        #[arg(long, env = "MUJIN_DATA_DIR", default_value = ".mujin")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        stores: usize,
        /// Devices per store.
        #[arg(long, default_value_t = 10)]
        devices: usize,
        /// Store ids are `<prefix>-s000`, `<prefix>-s001`, …
        #[arg(long, default_value = "loadgen")]
        store_prefix: String,
        #[arg(long, default_value_t = 10.0)]
        telemetry_secs: f64,
        /// Scans per second over the whole fleet (0: telemetry only).
        #[arg(long, default_value_t = 10.0)]
        scan_rate: f64,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
    },
    /// Run the benchmark scenarios on a private stack and write report.md and report.json.
    Bench {
        /// Smaller and shorter (under 2 minutes), for everyday comparisons.
        #[arg(long)]
        quick: bool,
        /// Where the report goes (default target/bench/<date>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where mujin-broker and mujin-management are (default: next to this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Virtual devices (default 1000, quick 300; the embedded broker admits 16384 clients).
        #[arg(long)]
        devices: Option<usize>,
        /// Skip the comparison with Mosquitto.
        #[arg(long)]
        no_mosquitto: bool,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,rumqttc=warn,refinery_core=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli: Cli = mujin_config::parse("MUJIN_LOADGEN_CONFIG");
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    // block_on keeps the work on the main thread, which the private PostgreSQL is tied to.
    runtime.block_on(async {
        match cli.command {
            Command::Run {
                broker,
                database_url,
                data_dir,
                stores,
                devices,
                store_prefix,
                telemetry_secs,
                scan_rate,
                duration,
            } => {
                let (host, port) = broker.rsplit_once(':').context("--broker is host:port")?;
                let settings = RunSettings {
                    broker: BrokerAddress {
                        host: host.to_owned(),
                        port: port.parse().context("--broker port")?,
                    },
                    database_url,
                    data_dir,
                    fleet: FleetSpec {
                        stores,
                        devices_per_store: devices,
                        store_prefix,
                    },
                    telemetry: Duration::from_secs_f64(telemetry_secs.max(0.1)),
                    scan_rate,
                    duration: Duration::from_secs_f64(duration.max(0.0)),
                };
                let summary = run::run(settings).await?;
                print!("{summary}");
            }
            Command::Bench {
                quick,
                out,
                bin_dir,
                devices,
                no_mosquitto,
            } => {
                let bin_dir = match bin_dir {
                    Some(dir) => dir,
                    None => std::env::current_exe()?
                        .parent()
                        .context("the binary has no directory")?
                        .to_owned(),
                };
                let out = out.unwrap_or_else(|| {
                    let date = chrono::Utc::now().format("%Y-%m-%dT%H-%M-%S");
                    PathBuf::from("target/bench").join(date.to_string())
                });
                let settings = BenchSettings {
                    quick,
                    out: out.clone(),
                    bin_dir,
                    devices,
                    skip_mosquitto: no_mosquitto,
                };
                let markdown = bench::run(settings).await?;
                print!("{markdown}");
                eprintln!("report written to {}", out.display());
            }
        }
        anyhow::Ok(())
    })
}
