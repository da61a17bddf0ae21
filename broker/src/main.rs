//! `mujin-broker`: the embedded MQTT broker as a process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mujin_broker::{BrokerSettings, Credentials};
use tracing_subscriber::EnvFilter;

/// rumqttd is chatty at info (one line per connection); keep it at warn unless RUST_LOG says
/// otherwise.
const DEFAULT_LOG_FILTER: &str = "info,rumqttd=warn";

/// The mujin MQTT broker: MQTT 3.1.1 and 5, authenticated clients only.
#[derive(Debug, Parser)]
#[command(name = "mujin-broker", version)]
struct Flags {
    /// Address of the MQTT 3.1.1 listener.
    #[arg(long, env = "MUJIN_BROKER_LISTEN", default_value = "127.0.0.1:1883")]
    listen: SocketAddr,
    /// Address of the MQTT 5 listener (none if not given).
    #[arg(long, env = "MUJIN_BROKER_LISTEN_V5")]
    listen_v5: Option<SocketAddr>,
    /// TOML file of the clients allowed in: [[client]] username = "..", password = "..".
    #[arg(long, env = "MUJIN_BROKER_CREDENTIALS")]
    credentials: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let result = match Credentials::load(&flags.credentials) {
        Ok(credentials) => {
            let settings = BrokerSettings {
                listen_v4: flags.listen,
                listen_v5: flags.listen_v5,
                credentials,
            };
            mujin_broker::run(settings, shutdown_signal()).await
        }
        Err(error) => Err(error),
    };
    // BrokerError messages already carry their cause, so print them once, plainly, instead
    // of anyhow's "Caused by" chain that would repeat it.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mujin-broker: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
