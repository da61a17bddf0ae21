//! Keeps the identities in force up to date: reloads them from PostgreSQL every refresh period
//! and on the table's notification, keeps the last set through a database outage, and
//! disconnects clients whose token stopped being valid.
//!
//! rumqttd has no API to drop a connection, but it drops the older connection when a new one
//! arrives with the same client id. So the broker connects to its own listener with the client
//! id to remove (as its internal user) and disconnects at once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet};
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{debug, info, warn};

use crate::gate::{Gate, INTERNAL_USERNAME};
use crate::identities::{self, IdentitySettings, NOTIFY_CHANNEL};

/// How long connecting to PostgreSQL may take before the attempt counts as an outage.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the internal client may take to push one client out.
const KICK_DEADLINE: Duration = Duration::from_secs(5);

/// A database connection that listens for changes of the identities.
struct Listener {
    client: tokio_postgres::Client,
    changed: mpsc::UnboundedReceiver<()>,
}

/// Reloads the identities until the runtime it runs on is dropped. `first_load` is answered
/// after the first attempt (successful or not).
pub(crate) async fn run(
    settings: IdentitySettings,
    gate: Arc<Gate>,
    kicker: Kicker,
    first_load: oneshot::Sender<()>,
) {
    let mut first_load = Some(first_load);
    let mut listener: Option<Listener> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(settings.refresh);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let connection_ended = match &mut listener {
            Some(open) => tokio::select! {
                _ = tick.tick() => false,
                changed = open.changed.recv() => changed.is_none(),
            },
            None => {
                tick.tick().await;
                false
            }
        };
        if connection_ended {
            listener = None; // reconnect now
        }
        let outcome = reload(&settings.database_url, &mut listener, &gate, &kicker).await;
        match outcome {
            Ok(count) if failing => {
                info!(identities = count, "identities loaded again");
                failing = false;
            }
            Ok(count) => debug!(identities = count, "identities reloaded"),
            Err(error) => {
                listener = None;
                if !failing {
                    warn!(%error, kept = gate.identity_count(), "cannot load the identities; keeping the last loaded set");
                    failing = true;
                } else {
                    debug!(%error, "still cannot load the identities");
                }
            }
        }
        if let Some(sender) = first_load.take() {
            let _ = sender.send(());
        }
    }
}

/// One reload: connects when needed, loads, puts the set in force and disconnects whoever must
/// go. Returns the number of identities.
async fn reload(
    database_url: &str,
    listener: &mut Option<Listener>,
    gate: &Gate,
    kicker: &Kicker,
) -> Result<usize, tokio_postgres::Error> {
    let open = match listener {
        Some(open) => open,
        None => listener.insert(listen(database_url).await?),
    };
    // Drain wake-ups already queued: this load covers them.
    while open.changed.try_recv().is_ok() {}
    let set = identities::load(&open.client).await?;
    let count = set.len();
    for (client_id, username) in gate.replace_identities(set) {
        kicker.kick(client_id, username);
    }
    Ok(count)
}

/// Connects and listens on the identities' channel; notifications arrive as wake-ups.
async fn listen(database_url: &str) -> Result<Listener, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = database_url.parse()?;
    config.connect_timeout(CONNECT_TIMEOUT);
    let (client, mut connection) = config.connect(NoTls).await?;
    let (changed_tx, changed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Drives the connection; ends (dropping the sender) when it breaks.
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    let _ = changed_tx.send(());
                }
                Ok(_) => {}
                Err(error) => {
                    debug!(%error, "identity listener connection ended");
                    break;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await?;
    Ok(Listener { client, changed })
}

/// Pushes clients out through the broker's own listener.
#[derive(Clone)]
pub(crate) struct Kicker {
    /// Where the internal client connects (the MQTT 3.1.1 listener, on loopback if it listens
    /// on every interface).
    pub(crate) addr: SocketAddr,
    pub(crate) secret: String,
}

impl Kicker {
    pub(crate) fn new(listen: SocketAddr, secret: String) -> Self {
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Self {
            addr: SocketAddr::new(ip, listen.port()),
            secret,
        }
    }

    /// Disconnects the client connected as `client_id` (in the background).
    pub(crate) fn kick(&self, client_id: String, username: String) {
        let kicker = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(KICK_DEADLINE, kicker.take_over(&client_id)).await {
                Ok(Ok(())) => {
                    info!(%client_id, %username, "disconnected a client whose token is no longer valid")
                }
                Ok(Err(error)) => {
                    warn!(%client_id, %username, %error, "cannot disconnect a client whose token is no longer valid")
                }
                Err(_) => {
                    warn!(%client_id, %username, "timed out disconnecting a client whose token is no longer valid")
                }
            }
        });
    }

    /// Connects with `client_id` (rumqttd drops whoever held it) and disconnects again.
    async fn take_over(&self, client_id: &str) -> Result<(), rumqttc::ConnectionError> {
        let mut options = MqttOptions::new(client_id, self.addr.ip().to_string(), self.addr.port());
        options
            .set_credentials(INTERNAL_USERNAME, self.secret.clone())
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut event_loop) = AsyncClient::new(options, 4);
        loop {
            match event_loop.poll().await? {
                // Queued before the loop polls again, so it goes out next.
                Event::Incoming(Packet::ConnAck(_)) if client.try_disconnect().is_err() => {
                    return Ok(());
                }
                Event::Outgoing(Outgoing::Disconnect) => return Ok(()),
                _ => {}
            }
        }
    }
}
