//! The `mujin-console` binary: parses flags and hands over to `mujin_console::run`.

use anyhow::Context;
use clap::Parser;
use mujin_console::Settings;
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
    let client_id = flags
        .client_id
        .unwrap_or_else(|| format!("mujin-console-{}", flags.username));
    let settings = Settings {
        broker: flags.broker,
        username: flags.username,
        password: flags.password,
        client_id,
    };
    mujin_console::run(settings)
        .await
        .context("mujin-console failed")
}
