//! `mujin-broker`: the embedded MQTT broker as a process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use mujin_broker::{
    BrokerError, BrokerSettings, Credentials, IdentitySettings, TlsListenerSettings,
};
use tracing_subscriber::EnvFilter;

/// rumqttd is chatty at info (one line per connection); keep it at warn unless RUST_LOG says
/// otherwise.
const DEFAULT_LOG_FILTER: &str = "info,rumqttd=warn";

/// The mujin MQTT broker: MQTT 3.1.1 and 5, authenticated clients only.
///
/// Clients are let in by identities from management's database (--database-url with
/// --identity-pepper) and/or by the fixed accounts of a credentials file (--credentials).
#[derive(Debug, clap::Parser)]
#[command(name = "mujin-broker", version)]
#[command(group(clap::ArgGroup::new("accounts").required(true).multiple(true).args(["credentials", "database_url"])))]
struct Flags {
    /// Address of the MQTT 3.1.1 listener.
    #[arg(long, env = "MUJIN_BROKER_LISTEN", default_value = "127.0.0.1:1883")]
    listen: SocketAddr,
    /// Address of the MQTT 5 listener (none if not given).
    #[arg(long, env = "MUJIN_BROKER_LISTEN_V5")]
    listen_v5: Option<SocketAddr>,
    /// TOML file of fixed accounts: [[client]] username = "..", password = "..". The passwords
    /// are in plain text: for development, bootstrapping and tests.
    #[arg(long, env = "MUJIN_BROKER_CREDENTIALS")]
    credentials: Option<PathBuf>,
    /// Management's PostgreSQL: its identities (devices, operators, services) are let in,
    /// reloaded every 2 s; revoked ones are disconnected.
    #[arg(
        long,
        env = "MUJIN_BROKER_DATABASE_URL",
        hide_env_values = true,
        requires = "identity_pepper"
    )]
    database_url: Option<String>,
    /// The pepper file the identity tokens are hashed with: management's
    /// <data-dir>/keys/identity-pepper (32 bytes, mode 0600).
    #[arg(long, env = "MUJIN_BROKER_IDENTITY_PEPPER", requires = "database_url")]
    identity_pepper: Option<PathBuf>,
    /// Address of the TLS listener (MQTT 3.1.1 over TLS, relayed to --listen). When TLS is
    /// used, keep --listen on 127.0.0.1 so that nobody reaches the broker unencrypted.
    #[arg(
        long,
        env = "MUJIN_BROKER_TLS_LISTEN",
        requires_all = ["tls_cert", "tls_key"]
    )]
    tls_listen: Option<SocketAddr>,
    /// PEM file of the broker's certificate chain (its own certificate first); clients check
    /// it against their --tls-ca and the host name they connect to.
    #[arg(long, env = "MUJIN_BROKER_TLS_CERT", requires = "tls_listen")]
    tls_cert: Option<PathBuf>,
    /// PEM file of the private key of --tls-cert.
    #[arg(long, env = "MUJIN_BROKER_TLS_KEY", requires = "tls_listen")]
    tls_key: Option<PathBuf>,
    /// PEM file of a CA: TLS clients must then present a certificate it signed.
    #[arg(long, env = "MUJIN_BROKER_TLS_CLIENT_CA", requires = "tls_listen")]
    tls_client_ca: Option<PathBuf>,
}

impl Flags {
    /// The TLS listener the flags describe, if any (clap makes sure cert and key come with it).
    fn tls(&self) -> Option<TlsListenerSettings> {
        match (self.tls_listen, &self.tls_cert, &self.tls_key) {
            (Some(listen), Some(cert_file), Some(key_file)) => Some(TlsListenerSettings {
                listen,
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }
}

/// The accounts the flags name: the credentials file's and the identities' source.
fn accounts(flags: &Flags) -> Result<(Credentials, Option<IdentitySettings>), BrokerError> {
    let credentials = match &flags.credentials {
        Some(path) => Credentials::load(path)?,
        None => Credentials::new(),
    };
    let identities = match (&flags.database_url, &flags.identity_pepper) {
        (Some(url), Some(pepper)) => Some(IdentitySettings::new(
            url.clone(),
            mujin_broker::read_pepper(pepper)?,
        )),
        _ => None,
    };
    Ok((credentials, identities))
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags: Flags = mujin_config::parse("MUJIN_BROKER_CONFIG");
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let result = match accounts(&flags) {
        Ok((credentials, identities)) => {
            let settings = BrokerSettings {
                listen_v4: flags.listen,
                listen_v5: flags.listen_v5,
                credentials,
            };
            mujin_broker::run(settings, identities, flags.tls(), shutdown_signal()).await
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
