//! `mujin-management`: see `mujin_management::cli`.

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,rumqttc=warn")),
        )
        .init();
    let cli: mujin_management::cli::Cli = mujin_config::parse("MUJIN_MANAGEMENT_CONFIG");
    mujin_management::cli::execute(cli).await
}
