//! TLS for mujin's MQTT connections, with rustls and its `ring` provider only (aws-lc-rs, the
//! default provider, needs a C toolchain and cmake).
//!
//! - [`TlsSettings`] — what a client's `--tls-ca`, `--tls-client-cert` and `--tls-client-key`
//!   flags name; [`TlsSettings::transport`] turns them into the `rumqttc::Transport` that verifies
//!   the broker's certificate against that CA (for the host name the client connects to);
//! - [`server_config`] — the broker side: its certificate chain and key, and optionally the CA
//!   whose client certificates are required;
//! - [`load_certificates`], [`load_private_key`], [`load_roots`] — PEM files, with a
//!   [`TlsError`] that names the file and the problem;
//! - [`low_latency`] — the socket options every mujin client uses.

mod pem;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::{TlsConfiguration, Transport};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

pub use pem::{load_certificates, load_private_key, load_roots};

/// Sets the socket options every mujin client connects with: `TCP_NODELAY`, so a small MQTT
/// packet (a scan, a command, an ack) goes out at once instead of waiting up to ~40 ms for
/// Nagle's algorithm to coalesce it with the next one.
pub fn low_latency(event_loop: &mut rumqttc::EventLoop) {
    let mut options = event_loop.network_options();
    options.set_tcp_nodelay(true);
    event_loop.set_network_options(options);
}

/// Why a TLS configuration cannot be built from the files given.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: no such file", path.display())]
    Missing { path: PathBuf },
    #[error("{}: cannot read it: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a PEM file ({reason})", path.display())]
    NotPem { path: PathBuf, reason: String },
    #[error("{}: holds no certificate (no -----BEGIN CERTIFICATE----- block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: holds no private key (no -----BEGIN PRIVATE KEY----- block, nor an RSA or EC one)", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("{}: a certificate there cannot be a trust anchor: {reason}", path.display())]
    BadCaCertificate { path: PathBuf, reason: String },
    #[error("{}: the private key cannot be used: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("the private key {} does not belong to the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("a client certificate needs its key and the key its certificate: give both --tls-client-cert and --tls-client-key")]
    IncompleteClientIdentity,
    #[error("a client certificate is only sent over TLS: give --tls-ca too")]
    ClientIdentityWithoutCa,
    #[error("{}: cannot check client certificates against it: {reason}", path.display())]
    ClientVerifier { path: PathBuf, reason: String },
    #[error("cannot set up TLS: {0}")]
    Setup(#[source] rustls::Error),
}

/// The rustls crypto provider every mujin TLS configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client's TLS: the CA that signed the broker's certificate and, when the broker asks for
/// one, the client's own certificate and key. Paths only; the files are read by
/// [`TlsSettings::transport`], so errors show up when connecting is first attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file of the CA certificate(s) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// PEM file of this client's certificate chain (end entity first), if the broker wants one.
    pub client_cert: Option<PathBuf>,
    /// PEM file of the private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl TlsSettings {
    /// The settings a client's three TLS flags describe: `None` (plain MQTT) without a CA;
    /// a client certificate needs both its files and a CA.
    pub fn from_flags(
        ca_file: Option<PathBuf>,
        client_cert: Option<PathBuf>,
        client_key: Option<PathBuf>,
    ) -> Result<Option<TlsSettings>, TlsError> {
        if client_cert.is_some() != client_key.is_some() {
            return Err(TlsError::IncompleteClientIdentity);
        }
        match ca_file {
            Some(ca_file) => Ok(Some(TlsSettings {
                ca_file,
                client_cert,
                client_key,
            })),
            None if client_cert.is_some() => Err(TlsError::ClientIdentityWithoutCa),
            None => Ok(None),
        }
    }

    /// Reads the files into a rustls client configuration that accepts only a broker
    /// certificate signed by the CA and valid for the host name connected to.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let roots = load_roots(&self.ca_file)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?
            .with_root_certificates(roots);
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = load_certificates(cert)?;
                let private_key = load_private_key(key)?;
                builder
                    .with_client_auth_cert(chain, private_key)
                    .map_err(|error| key_error(error, cert, key))
            }
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err(TlsError::IncompleteClientIdentity),
        }
    }

    /// The rumqttc transport for these settings: TLS checked as [`TlsSettings::client_config`]
    /// says. rumqttc checks the certificate against the host of `MqttOptions::new`.
    pub fn transport(&self) -> Result<Transport, TlsError> {
        let config = self.client_config()?;
        Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )))
    }
}

/// The transport for optional TLS settings: plain TCP without them.
pub fn transport(tls: Option<&TlsSettings>) -> Result<Transport, TlsError> {
    match tls {
        Some(settings) => settings.transport(),
        None => Ok(Transport::tcp()),
    }
}

/// The broker's TLS configuration: its certificate chain and key and, with `client_ca`, a
/// client certificate signed by that CA required from every client.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let chain = load_certificates(cert_file)?;
    let key = load_private_key(key_file)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?;
    let builder = match client_ca {
        Some(ca_file) => {
            let roots = Arc::new(load_roots(ca_file)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|error| TlsError::ClientVerifier {
                    path: ca_file.to_owned(),
                    reason: error.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|error| key_error(error, cert_file, key_file))
}

fn key_error(error: rustls::Error, cert: &Path, key: &Path) -> TlsError {
    match error {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        },
        other => TlsError::BadKey {
            path: key.to_owned(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests;
