//! `mujin-demo`: one command that runs a whole unattended store (PostgreSQL, broker,
//! management, one agent process per device, simulated customers) and shows it in the console.

mod agents;
mod simulator;
mod stack;
mod summary;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::stack::DemoSettings;

/// Runs a complete mujin store on this machine: a private PostgreSQL, the MQTT broker, the
/// management worker, one device agent per device (pc-01, pc-02, vr-01, karaoke-01) and
/// simulated customers who book devices and scan their tickets, some of them wrongly.
///
/// Every run starts clean: the `mujin_demo` database is dropped and re-created.
/// Without --headless the operator console takes over the terminal (quit with q or Ctrl-C);
/// logs then go to <data-dir>/logs/demo.log and each agent's to <data-dir>/logs/<device>.log.
#[derive(Debug, Parser)]
#[command(name = "mujin-demo", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    demo: DemoArgs,
    #[command(subcommand)]
    command: Option<Hidden>,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Where the demo keeps its PostgreSQL cluster, keys, scan pipes and logs.
    #[arg(long, default_value = ".mujin/demo")]
    data_dir: PathBuf,
    /// MQTT port of the embedded broker on 127.0.0.1 [default: 1883 if free, else any free port].
    #[arg(long)]
    port: Option<u16>,
    /// No console: log to stderr, run for --duration seconds (or until Ctrl-C), then print a
    /// summary of the run.
    #[arg(long)]
    headless: bool,
    /// How long a headless run lasts, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
}

#[derive(Debug, Subcommand)]
enum Hidden {
    /// Runs one device agent (the `mujin-agent` command line); the demo starts itself this way.
    #[command(hide = true, disable_help_flag = true)]
    Agent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<OsString>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli: Cli = mujin_config::parse("MUJIN_DEMO_CONFIG");
    if let Some(Hidden::Agent { args }) = cli.command {
        return agents::agent_main(args);
    }
    let settings = DemoSettings {
        data_dir: cli.demo.data_dir,
        port: cli.demo.port,
        headless: cli.demo.headless,
        duration: Duration::from_secs(cli.demo.duration),
    };
    init_tracing(&settings)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(stack::run(settings));
    // Blocking readers (e.g. a stuck pipe open) must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Headless: stderr. With the console: a log file, because the terminal belongs to the console.
fn init_tracing(settings: &DemoSettings) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=warn,rumqttc=warn"));
    if settings.headless {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
        return Ok(());
    }
    let logs = settings.data_dir.join("logs");
    std::fs::create_dir_all(&logs)
        .with_context(|| format!("cannot create the log directory {}", logs.display()))?;
    let path = logs.join("demo.log");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create the log file {}", path.display()))?;
    tracing_subscriber::fmt()
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .with_env_filter(filter)
        .init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_subcommand_passes_every_argument_through() {
        let cli = Cli::try_parse_from([
            "mujin-demo",
            "agent",
            "--store",
            "demo",
            "--no-stdin",
            "--",
            "/bin/sh",
            "program.sh",
        ])
        .unwrap();
        let Some(Hidden::Agent { args }) = cli.command else {
            panic!("expected the agent subcommand");
        };
        let args: Vec<_> = args.iter().map(|arg| arg.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "--store",
                "demo",
                "--no-stdin",
                "--",
                "/bin/sh",
                "program.sh"
            ]
        );
    }

    #[test]
    fn demo_flags_have_their_defaults() {
        let cli = Cli::try_parse_from(["mujin-demo", "--headless"]).unwrap();
        assert!(cli.command.is_none());
        assert!(cli.demo.headless);
        assert_eq!(cli.demo.duration, 30);
        assert_eq!(cli.demo.data_dir, PathBuf::from(".mujin/demo"));
        assert!(Cli::try_parse_from(["mujin-demo", "--duration", "0"]).is_err());
    }
}
