//! The `mujin-console` binary: parses flags and hands over to `mujin_console::run`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use mujin_console::Settings;
use mujin_protocol::signed;
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::OperatorId;
use tracing_subscriber::EnvFilter;

/// The mujin operator console: every store's devices and events, live.
///
/// Pass the password through MUJIN_CONSOLE_PASSWORD to keep it off the process list.
#[derive(Debug, clap::Parser)]
#[command(version)]
struct Flags {
    /// The MQTT broker, host:port.
    #[arg(long, env = "MUJIN_CONSOLE_BROKER", default_value = "127.0.0.1:1883")]
    broker: String,
    /// The operator's MQTT user name.
    #[arg(long, env = "MUJIN_CONSOLE_USERNAME")]
    username: String,
    /// The operator's MQTT password (prefer the environment variable).
    #[arg(long, env = "MUJIN_CONSOLE_PASSWORD", hide_env_values = true)]
    password: String,
    /// MQTT client id [default: mujin-console-<username>]. Keep it stable: the broker keeps
    /// a session per client id.
    #[arg(long, env = "MUJIN_CONSOLE_CLIENT_ID")]
    client_id: Option<String>,
    /// Who sends the requests (force stop, extend, …) [default: the user name]. Replies come
    /// back on this operator's own topic.
    #[arg(long, env = "MUJIN_CONSOLE_OPERATOR")]
    operator: Option<String>,
    /// The operator's private key file (from `mujin-management operator-add`), which signs
    /// every request. Without it the console is read-only: it shows everything live but sends
    /// nothing.
    #[arg(long, env = "MUJIN_CONSOLE_OPERATOR_KEY")]
    operator_key: Option<PathBuf>,
    /// Connect with TLS, accepting only a broker certificate signed by this CA (PEM) and valid
    /// for the host of --broker.
    #[arg(long, env = "MUJIN_CONSOLE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// The operator's certificate (PEM), for a broker that requires client certificates.
    #[arg(long, env = "MUJIN_CONSOLE_TLS_CLIENT_CERT", requires_all = ["tls_ca", "tls_client_key"])]
    tls_client_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-client-cert.
    #[arg(
        long,
        env = "MUJIN_CONSOLE_TLS_CLIENT_KEY",
        requires = "tls_client_cert"
    )]
    tls_client_key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The screen belongs to the console: logs are off unless RUST_LOG asks for them (then
    // redirect stderr, e.g. `2>console.log`).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("off")),
        )
        .init();
    let flags: Flags = mujin_config::parse("MUJIN_CONSOLE_CONFIG");
    let operator = operator_id(flags.operator.as_deref(), &flags.username)?;
    let client_id = flags
        .client_id
        .unwrap_or_else(|| format!("mujin-console-{}", flags.username));
    let operator_key = match &flags.operator_key {
        Some(path) => Some(Arc::new(load_operator_key(path)?)),
        None => None,
    };
    let tls = mujin_transport::TlsSettings::from_flags(
        flags.tls_ca,
        flags.tls_client_cert,
        flags.tls_client_key,
    )?;
    let settings = Settings {
        broker: flags.broker,
        username: flags.username,
        password: flags.password,
        client_id,
        operator,
        operator_key,
        tls,
    };
    mujin_console::run(settings)
        .await
        .context("mujin-console failed")
}

/// The operator named by `--operator`, else the user name when it is a valid operator id.
fn operator_id(flag: Option<&str>, username: &str) -> anyhow::Result<OperatorId> {
    match flag {
        Some(name) => {
            OperatorId::parse(name).with_context(|| format!("invalid --operator {name:?}"))
        }
        None => OperatorId::parse(username).with_context(|| {
            format!(
                "the user name {username:?} is not a valid operator id: pass --operator NAME \
                 (lower-case letters, digits and dashes)"
            )
        }),
    }
}

/// Reads the operator's key file, refusing one others can read.
fn load_operator_key(path: &Path) -> anyhow::Result<SigningKey> {
    let shown = path.display();
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read --operator-key {shown}"))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "--operator-key {shown} is readable by others (mode {:o}); run `chmod 600 {shown}`",
            mode & 0o777
        );
    }
    let pkcs8 =
        std::fs::read(path).with_context(|| format!("cannot read --operator-key {shown}"))?;
    signed::operator_key(&pkcs8).with_context(|| format!("--operator-key {shown}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_defaults_to_the_user_name_when_it_is_a_valid_id() {
        assert_eq!(operator_id(None, "alice").unwrap().as_str(), "alice");
        assert_eq!(operator_id(Some("bob"), "alice").unwrap().as_str(), "bob");
        let error = format!("{:#}", operator_id(None, "Alice Smith").unwrap_err());
        assert!(error.contains("pass --operator NAME"), "{error}");
        assert!(operator_id(Some("Bob!"), "alice").is_err());
    }

    #[test]
    fn the_operator_key_file_must_be_owner_only() {
        let dir = std::env::temp_dir().join(format!("mujin-console-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("alice.pk8");
        let placeholder = mujin_protocol::KeyId::parse("op").unwrap();
        let (_, pkcs8) = SigningKey::generate(placeholder).unwrap();
        std::fs::write(&path, &pkcs8).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = format!("{:#}", load_operator_key(&path).unwrap_err());
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = load_operator_key(&path).unwrap();
        assert_eq!(
            *key.key_id(),
            signed::operator_key_id(&key.public_key().bytes)
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load_operator_key(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
