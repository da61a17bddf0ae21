//! The broker's TLS listener: accepts, completes the TLS handshake under a deadline, then
//! connects to the broker's own plain MQTT 3.1.1 listener on loopback and copies bytes both ways.
//!
//! rumqttd 0.20's built-in TLS uses an older rustls and makes client-certificate checking a
//! compile-time feature; terminating TLS here keeps one rustls (0.23, ring provider) for the
//! whole workspace and lets `--tls-client-ca` turn client certificates on at run time.
//! MQTT itself (CONNECT, authentication, sessions) is still handled by rumqttd behind it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::BrokerError;

/// A TLS handshake must be done within this time, or the socket is dropped (like rumqttd's own
/// connect timeout: idle sockets would hold a connection slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS listener a broker may have besides its plain ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListenerSettings {
    /// Where TLS clients connect. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// PEM file of the broker's certificate chain (its own certificate first).
    pub cert_file: PathBuf,
    /// PEM file of the private key of that certificate.
    pub key_file: PathBuf,
    /// PEM file of the CA whose client certificates are required; without it, no client
    /// certificate is asked for (clients still authenticate with their MQTT credentials).
    pub client_ca: Option<PathBuf>,
}

/// A bound TLS listener, not accepting yet.
pub(crate) struct BoundListener {
    pub addr: SocketAddr,
    listener: std::net::TcpListener,
    acceptor: TlsAcceptor,
}

/// Reads the certificate files and binds the TLS listener (a std socket, so that it can be
/// handed to the broker's own runtime by [`serve`]).
pub(crate) fn bind(settings: &TlsListenerSettings) -> Result<BoundListener, BrokerError> {
    let config = mujin_transport::server_config(
        &settings.cert_file,
        &settings.key_file,
        settings.client_ca.as_deref(),
    )
    .map_err(BrokerError::Tls)?;
    let addr = settings.listen;
    let bind = || {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok((listener.local_addr()?, listener))
    };
    let (addr, listener) = bind().map_err(|source| BrokerError::Bind { addr, source })?;
    Ok(BoundListener {
        addr,
        listener,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}

/// Runs the accept loop on the current runtime until that runtime is dropped (which closes the
/// listener and every relayed connection). Each accepted socket takes one of `max_connections` slots until it closes; beyond that,
/// new sockets are closed at once.
pub(crate) async fn serve(bound: BoundListener, upstream: SocketAddr, max_connections: usize) {
    let BoundListener {
        listener, acceptor, ..
    } = bound;
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            warn!(%error, "TLS listener cannot run");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // E.g. out of file descriptors: pause instead of spinning on the error.
                warn!(%error, "TLS listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            info!(%peer, "TLS connection refused: too many connections");
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            relay(socket, peer, acceptor, upstream).await;
            drop(slot);
        });
    }
}

/// One client: handshake, then bytes both ways between it and the plain listener.
async fn relay(socket: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, upstream: SocketAddr) {
    let _ = socket.set_nodelay(true);
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            // Wrong CA, wrong host name, no client certificate, port scanners: the client's
            // problem, never the broker's; info so that a misconfigured fleet is visible.
            info!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            info!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            return;
        }
    };
    let mut plain = match TcpStream::connect(upstream).await {
        Ok(plain) => plain,
        Err(error) => {
            warn!(%peer, %upstream, %error, "cannot reach the broker's plain listener");
            let _ = tls.shutdown().await;
            return;
        }
    };
    let _ = plain.set_nodelay(true);
    debug!(%peer, "TLS client connected");
    match tokio::io::copy_bidirectional(&mut tls, &mut plain).await {
        Ok((from_client, to_client)) => {
            debug!(%peer, from_client, to_client, "TLS client disconnected");
        }
        Err(error) => debug!(%peer, %error, "TLS connection ended"),
    }
}

/// Where the relay reaches the plain listener: itself, or loopback when it listens on every
/// address (`0.0.0.0` / `::`).
pub(crate) fn upstream_of(plain: SocketAddr) -> SocketAddr {
    let ip = match plain.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, plain.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_reaches_a_listener_on_every_address_through_loopback() {
        let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert_eq!(upstream_of(addr("0.0.0.0:1883")), addr("127.0.0.1:1883"));
        assert_eq!(upstream_of(addr("[::]:1883")), addr("[::1]:1883"));
        assert_eq!(upstream_of(addr("10.1.2.3:1883")), addr("10.1.2.3:1883"));
        assert_eq!(upstream_of(addr("127.0.0.1:1884")), addr("127.0.0.1:1884"));
    }
}
