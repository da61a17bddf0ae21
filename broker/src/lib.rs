//! The mujin MQTT broker: rumqttd embedded on our own runtime, authenticated clients only.
//!
//! - [`Credentials`] — fixed accounts with plain passwords (a TOML file), for development,
//!   bootstrapping and tests;
//! - [`IdentitySettings`] — identities from management's PostgreSQL (devices, operators,
//!   services), each with its own token stored as a keyed hash and bound to its client ids;
//!   reloaded every 2 s, revoked ones disconnected (module `identities`, `gate`, `watch`);
//! - [`Broker`] — a running broker: MQTT 3.1.1 listener (module `v4`: MQTT 5 properties are
//!   left out of what it sends), optional MQTT 5 listener, optional TLS
//!   listener ([`TlsListenerSettings`], module `tls`) relaying to the 3.1.1 one; bind errors
//!   are returned by [`Broker::start`], and [`Broker::shutdown`] closes every connection.
//! - [`run`] — start, wait for the shutdown future, stop: what the `mujin-broker` binary does.
//!
//! Nothing survives a restart (sessions, queued QoS 1 messages, retained messages live in
//! rumqttd's memory): authoritative state belongs in PostgreSQL and is republished.

mod credentials;
mod gate;
pub mod identities;
mod server;
mod tls;
mod v4;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use credentials::{Credentials, CredentialsFileError};
pub use identities::{read_pepper, IdentitySettings};
pub use server::{Broker, MAX_CONNECTIONS, MAX_PAYLOAD_BYTES};
pub use tls::TlsListenerSettings;

/// What a broker listens on and whom it lets in.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// MQTT 3.1.1 listener. Port 0 picks a free port.
    pub listen_v4: SocketAddr,
    /// MQTT 5 listener, if wanted. Port 0 picks a free port.
    pub listen_v5: Option<SocketAddr>,
    /// Fixed username/password pairs (identities, when configured, are given to
    /// [`Broker::start_with_identities`]); every other client is refused.
    pub credentials: Credentials,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("credentials file {path}: {source}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: CredentialsFileError,
    },
    #[error("identity pepper file {path}: {reason}")]
    Pepper { path: PathBuf, reason: String },
    #[error("cannot create the broker's internal secret: {0}")]
    Secret(String),
    #[error("cannot start the broker's network runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("listener on {addr} failed: {reason}")]
    Listener { addr: SocketAddr, reason: String },
    #[error("TLS listener: {0}")]
    Tls(#[source] mujin_transport::TlsError),
}

/// Runs a broker until `shutdown` completes, then stops it.
///
/// Once the listeners are bound it prints one line per listener on stdout, e.g.
/// `mujin-broker listening on 127.0.0.1:1883 (MQTT 3.1.1)` (the TLS one last), so a supervising process (or a
/// test) can wait for readiness.
pub async fn run(
    settings: BrokerSettings,
    identities: Option<IdentitySettings>,
    tls: Option<TlsListenerSettings>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BrokerError> {
    let clients = settings.credentials.len();
    let checks_identities = identities.is_some();
    let client_certificates = tls.as_ref().map(|tls| tls.client_ca.is_some());
    let broker = Broker::start_with_tls(settings, identities, tls).await?;
    tracing::info!(
        v4 = %broker.v4_addr(),
        v5 = ?broker.v5_addr(),
        clients,
        identities = checks_identities,
        "broker ready"
    );
    println!(
        "mujin-broker listening on {} (MQTT 3.1.1)",
        broker.v4_addr()
    );
    if let Some(addr) = broker.v5_addr() {
        println!("mujin-broker listening on {addr} (MQTT 5)");
    }
    if let (Some(addr), Some(required)) = (broker.tls_addr(), client_certificates) {
        let client_certificates = if required { "required" } else { "not required" };
        tracing::info!("TLS listening on {addr}, client certificates {client_certificates}");
        println!("mujin-broker listening on {addr} (MQTT 3.1.1 over TLS)");
    }
    shutdown.await;
    tracing::info!("shutting down");
    broker.shutdown().await;
    Ok(())
}

/// Binds 127.0.0.1:0 and returns the port the OS chose (free right now; racy by nature, good
/// enough for tests and demos).
pub fn free_local_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
