//! The `mujin-console` binary: parses flags and hands over to `mujin_console::run`.

use anyhow::Context;
use clap::Parser;
use mujin_console::Settings;
use mujin_protocol::OperatorId;
use tracing_subscriber::EnvFilter;

/// The mujin operator console: every store's devices and events, live.
///
/// Pass the password through MUJIN_CONSOLE_PASSWORD to keep it off the process list.
#[derive(Debug, Parser)]
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
    let flags = Flags::parse();
    let operator = operator_id(flags.operator.as_deref(), &flags.username)?;
    let client_id = flags
        .client_id
        .unwrap_or_else(|| format!("mujin-console-{}", flags.username));
    let settings = Settings {
        broker: flags.broker,
        username: flags.username,
        password: flags.password,
        client_id,
        operator,
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
}
