//! `mujin-management run`: the worker's flags, turned into [`Settings`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{key_dir, GlobalArgs};
use crate::{MqttSettings, Settings};

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
    /// Take integrators' booking requests over MQTT 5 from this broker (host:port of an MQTT 5
    /// listener, e.g. `mujin-broker --listen-v5`), with the same username, password and TLS as
    /// --broker; booking over MQTT is off when not given. See docs/protocol.md.
    #[arg(long, env = "MUJIN_BOOKING_BROKER", value_name = "HOST:PORT")]
    pub booking_broker: Option<String>,
}

/// Runs the worker until Ctrl-C or SIGTERM.
pub(super) async fn run(
    global: &GlobalArgs,
    database_url: &str,
    args: &RunArgs,
) -> anyhow::Result<()> {
    let (host, port) = split_host_port(&args.broker)?;
    let booking_broker = args
        .booking_broker
        .as_deref()
        .map(split_host_port)
        .transpose()?;
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
        booking_broker,
    };
    crate::run(settings, shutdown_signal()).await
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
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, CliCommand};

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
