//! A running rumqttd broker assembled from its parts, so that bind errors reach the caller and
//! the whole thing can be shut down.
//!
//! rumqttd's own `Broker::start` blocks forever, only logs an address already in use and has no
//! stop API. Here the router and every listener (`Server`) run as tasks on a tokio runtime with
//! one worker, owned by [`Broker`]: dropping that runtime closes the listeners and every client
//! connection and stops the router. One worker for all of them, because a message then crosses
//! the broker without one thread waking another: with the router on a thread of its own (as
//! rumqttd runs it) every message cost two cross-thread wake-ups. What is not routing (the
//! identities' reloads, the TLS relay) runs on a second runtime, so that it never holds up a
//! message.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use rumqttd::protocol::{v5::V5, Protocol};
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::gate::Gate;
use crate::tls::{self, TlsListenerSettings};
use crate::v4::V4WithoutProperties;
use crate::watch::{self, Kicker};
use crate::{BrokerError, BrokerSettings, IdentitySettings};

/// Largest accepted MQTT payload. mujin payloads are at most 16 KiB (the protocol layer refuses
/// more with a clear error), so the broker limit sits well above it and never fires first.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Bound on simultaneous client connections (devices, consoles, management workers): a store
/// chain has thousands of devices. The router reserves a few small slots per connection up
/// front (a few MiB in all); each connection also takes a file descriptor, so the process's
/// open-file limit (`ulimit -n`, systemd's `LimitNOFILE`) must be above this.
pub const MAX_CONNECTIONS: usize = 16 * 1024;
/// rumqttd keeps a commit log per subscription filter in memory and under-counts its size, so
/// segments are kept small: at most `SEGMENT_BYTES * SEGMENT_COUNT` per filter.
const SEGMENT_BYTES: usize = 256 * 1024;
const SEGMENT_COUNT: usize = 4;
/// Unacknowledged QoS 1/2 messages per connection before the broker stops sending.
const MAX_INFLIGHT: usize = 100;
/// A socket must send CONNECT within this time or be dropped (idle sockets would eat the
/// connection limit).
const CONNECT_TIMEOUT_MS: u16 = 5_000;
/// How long `shutdown` waits for the network tasks to be dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A running broker. Listeners are bound once [`Broker::start`] returns `Ok`.
pub struct Broker {
    v4_addr: SocketAddr,
    v5_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    /// `None` once shut down.
    runtimes: Option<Runtimes>,
}

/// The broker's two runtimes, one worker each.
struct Runtimes {
    /// The router, the listeners and every client connection's link: a message then crosses
    /// the broker without one thread waking another (see `Router::start_async`).
    network: Runtime,
    /// The rest, off the network's thread: reloading the identities (every row of the table,
    /// every 2 s) and the TLS listener's handshakes and relaying.
    side: Runtime,
}

impl Runtimes {
    fn new() -> Result<Self, BrokerError> {
        let one_worker = |name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(name)
                .enable_all()
                .build()
                .map_err(BrokerError::Runtime)
        };
        Ok(Self {
            network: one_worker("mujin-broker-net")?,
            side: one_worker("mujin-broker-side")?,
        })
    }
}

impl Broker {
    /// Starts the router and the listeners; returns once every listener is bound. Only the
    /// credentials file's accounts are let in.
    ///
    /// A port of 0 is replaced by a free port first (see [`Broker::v4_addr`] for the result).
    /// Must be called from within a tokio runtime.
    pub async fn start(settings: BrokerSettings) -> Result<Broker, BrokerError> {
        Self::start_with_identities(settings, None).await
    }

    /// Like [`Broker::start`], also letting in the identities of management's database (when
    /// given): they are loaded once before the listeners open (a database outage is logged and
    /// the broker starts without them), then kept up to date, and clients whose token stops
    /// being valid are disconnected.
    pub async fn start_with_identities(
        settings: BrokerSettings,
        identities: Option<IdentitySettings>,
    ) -> Result<Broker, BrokerError> {
        Self::start_with_tls(settings, identities, None).await
    }

    /// Like [`Broker::start_with_identities`], with a TLS listener too (when given) that relays
    /// to the MQTT 3.1.1 listener. Its certificate files are read before anything starts, so a
    /// bad file fails the start with an error naming it.
    pub async fn start_with_tls(
        settings: BrokerSettings,
        identities: Option<IdentitySettings>,
        tls: Option<TlsListenerSettings>,
    ) -> Result<Broker, BrokerError> {
        let tls_listener = tls.as_ref().map(tls::bind).transpose()?;
        let tls_addr = tls_listener.as_ref().map(|bound| bound.addr);
        let v4_addr = resolve_port(settings.listen_v4)?;
        let v5_addr = settings.listen_v5.map(resolve_port).transpose()?;
        // Cheap early check with the real io::Error; the authoritative one is rumqttd's own
        // bind below (another process could take the port in between).
        check_bindable(v4_addr)?;
        if let Some(addr) = v5_addr {
            check_bindable(addr)?;
        }

        let broker = Broker {
            v4_addr,
            v5_addr,
            tls_addr,
            runtimes: Some(Runtimes::new()?),
        };

        let pepper = identities.as_ref().map(|settings| settings.pepper.clone());
        let gate = Arc::new(Gate::new(settings.credentials, pepper).map_err(BrokerError::Secret)?);
        if let (Some(identities), Some(runtimes)) = (identities, &broker.runtimes) {
            let kicker = Kicker::new(v4_addr, gate.internal_secret().to_owned());
            let (loaded_tx, loaded) = oneshot::channel();
            let watch = watch::run(identities, gate.clone(), kicker, loaded_tx);
            runtimes.side.spawn(watch);
            // Answered after the first attempt, whether the database was there or not.
            let _ = loaded.await;
        }

        // The router runs next to the links, on the network runtime.
        let (router_tx, router) = Router::new(0, router_config()).start_async();
        if let Some(runtimes) = &broker.runtimes {
            runtimes.network.spawn(async move {
                let error = router.await;
                warn!(%error, "broker router stopped");
            });
        }
        let connections = connection_settings(gate);
        let v4 = Server::new(
            server_settings("v4", v4_addr, &connections),
            router_tx.clone(),
            V4WithoutProperties,
        );
        let mut pending = vec![(v4_addr, broker.spawn_listener(v4))];
        if let Some(addr) = v5_addr {
            let v5 = Server::new(server_settings("v5", addr, &connections), router_tx, V5);
            pending.push((addr, broker.spawn_listener(v5)));
        }
        for (addr, ready) in pending {
            match ready.await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    return Err(BrokerError::Bind {
                        addr,
                        source: io::Error::other(reason),
                    })
                }
                Err(_) => {
                    return Err(BrokerError::Listener {
                        addr,
                        reason: "the listener task ended before binding".to_owned(),
                    })
                }
            }
        }
        if let (Some(bound), Some(runtimes)) = (tls_listener, &broker.runtimes) {
            // Only now: a TLS client must find the plain listener it is relayed to.
            let upstream = tls::upstream_of(v4_addr);
            runtimes
                .side
                .spawn(tls::serve(bound, upstream, MAX_CONNECTIONS));
        }
        Ok(broker)
    }

    /// Where MQTT 3.1.1 clients connect.
    pub fn v4_addr(&self) -> SocketAddr {
        self.v4_addr
    }

    /// Where MQTT 5 clients connect, if that listener is enabled.
    pub fn v5_addr(&self) -> Option<SocketAddr> {
        self.v5_addr
    }

    /// Where TLS clients connect, if that listener is enabled.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Stops accepting, closes every client connection and waits (briefly) until the
    /// listening sockets are released. Sessions and queued messages are lost, exactly as
    /// after a broker restart.
    pub async fn shutdown(mut self) {
        if let Some(Runtimes { network, side }) = self.runtimes.take() {
            // Dropping a runtime blocks, which is not allowed on an async worker thread.
            let stopped = tokio::task::spawn_blocking(move || {
                side.shutdown_timeout(SHUTDOWN_GRACE);
                network.shutdown_timeout(SHUTDOWN_GRACE);
            });
            if stopped.await.is_err() {
                warn!("broker runtimes did not shut down cleanly");
            }
        }
        info!("broker stopped");
    }

    /// Runs one listener on the network runtime; the receiver tells whether it bound.
    fn spawn_listener<P>(&self, server: Server<P>) -> oneshot::Receiver<Result<(), String>>
    where
        P: Protocol + Clone + Send + Sync + 'static,
    {
        let (ready_tx, ready_rx) = oneshot::channel();
        if let Some(runtimes) = &self.runtimes {
            runtimes.network.spawn(serve(server, ready_tx));
        }
        ready_rx
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(Runtimes { network, side }) = self.runtimes.take() {
            // Drop may run inside an async context, where a blocking shutdown would panic.
            side.shutdown_background();
            network.shutdown_background();
        }
    }
}

/// Runs rumqttd's accept loop and reports, after its first poll, whether the address is bound.
///
/// `Server::start` binds its `TcpListener` synchronously during the first poll (binding a
/// `SocketAddr` needs no DNS, so nothing awaits before it) and then waits in `accept`. So
/// "first poll is Pending" means "bound", and a bind error comes back as `Ready(Err)`.
async fn serve<P>(mut server: Server<P>, ready_tx: oneshot::Sender<Result<(), String>>)
where
    P: Protocol + Clone + Send + 'static,
{
    let mut accept_loop = pin!(server.start(LinkType::Remote));
    let first = std::future::poll_fn(|cx| Poll::Ready(accept_loop.as_mut().poll(cx))).await;
    let outcome = match first {
        Poll::Pending => Ok(()),
        Poll::Ready(Err(error)) => Err(error.to_string()),
        Poll::Ready(Ok(())) => Err("the listener stopped at once".to_owned()),
    };
    let bound = outcome.is_ok();
    // The receiver is gone only when start() itself was dropped; then nobody cares.
    let _ = ready_tx.send(outcome);
    if bound {
        if let Err(error) = accept_loop.await {
            warn!(%error, "broker listener stopped");
        }
    }
}

fn router_config() -> RouterConfig {
    RouterConfig {
        max_connections: MAX_CONNECTIONS,
        max_outgoing_packet_count: 200,
        max_segment_size: SEGMENT_BYTES,
        max_segment_count: SEGMENT_COUNT,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    }
}

fn connection_settings(gate: Arc<Gate>) -> ConnectionSettings {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: CONNECT_TIMEOUT_MS,
        max_payload_size: MAX_PAYLOAD_BYTES,
        max_inflight_count: MAX_INFLIGHT,
        auth: None,
        external_auth: None,
        // Lets clients publish to topics nobody has subscribed to yet.
        dynamic_filters: true,
    };
    connections.set_auth_handler(
        move |client_id: String, username: String, password: String| {
            // In memory only (no database query per CONNECT); refusals are logged by the gate.
            std::future::ready(gate.admit(&client_id, &username, &password))
        },
    );
    connections
}

fn server_settings(
    name: &str,
    listen: SocketAddr,
    connections: &ConnectionSettings,
) -> ServerSettings {
    ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: connections.clone(),
    }
}

/// Port 0 would bind, but rumqttd never tells which port it got: pick one ourselves.
fn resolve_port(addr: SocketAddr) -> Result<SocketAddr, BrokerError> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let listener = TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
    listener
        .local_addr()
        .map_err(|source| BrokerError::Bind { addr, source })
}

fn check_bindable(addr: SocketAddr) -> Result<(), BrokerError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| BrokerError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use rumqttd::protocol::v4::V4;

    use super::*;

    /// Pins down the rumqttd behaviour `serve` relies on: the first poll of `Server::start`
    /// binds (or fails to bind) the listener.
    #[tokio::test]
    async fn serve_reports_bind_outcome_after_first_poll() {
        let runtime_handle = tokio::runtime::Handle::current();
        let (router_tx, router) = Router::new(0, router_config()).start_async();
        runtime_handle.spawn(router);
        let gate = Gate::new(crate::Credentials::new(), None).unwrap();
        let connections = connection_settings(Arc::new(gate));

        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_addr = taken.local_addr().unwrap();
        let server = Server::new(
            server_settings("taken", taken_addr, &connections),
            router_tx.clone(),
            V4,
        );
        let (tx, rx) = oneshot::channel();
        runtime_handle.spawn(serve(server, tx));
        let outcome = rx.await.unwrap();
        assert!(outcome.is_err(), "{outcome:?}");

        drop(taken);
        let server = Server::new(
            server_settings("free", taken_addr, &connections),
            router_tx,
            V4,
        );
        let (tx, rx) = oneshot::channel();
        let task = runtime_handle.spawn(serve(server, tx));
        assert_eq!(rx.await.unwrap(), Ok(()));
        // Bound before anything else ran: a connection is accepted right away.
        std::net::TcpStream::connect(taken_addr).unwrap();
        task.abort();
    }
}
