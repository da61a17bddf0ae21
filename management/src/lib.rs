//! The mujin management worker: the one place that decides who may use which device when.
//!
//! - [`booking`]: the store/device registry and reservations (overlaps refused by PostgreSQL);
//! - [`keys`]: the ticket-signing keys on disk; [`qr`]: tickets as QR codes;
//! - [`authorize`]: the scan rules as a pure function;
//! - [`scans`]: one transaction per scan, idempotent by scan id;
//! - [`stop_timer`]: durable stop timers that end sessions on time;
//! - [`mqtt`]: the broker connection; [`db`]: pool and migrations; [`audit`]: the event log;
//! - [`postgres`]: a private PostgreSQL cluster for when no database URL is configured.
//!
//! [`run`] wires them together until its shutdown future completes.

pub mod audit;
pub mod authorize;
pub mod booking;
pub mod cli;
pub mod db;
pub mod keys;
pub mod mqtt;
pub mod postgres;
pub mod qr;
pub mod scans;
pub mod stop_timer;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use deadpool_postgres::Pool;
use mujin_protocol::topic::{self, DeviceChannel, Topic};
use mujin_protocol::KeyId;
use rumqttc::{AsyncClient, Publish};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

pub use mqtt::MqttSettings;
use scans::ScanRules;

/// Everything the worker needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// libpq-style connection string or `postgres://` URL.
    pub database_url: String,
    pub mqtt: MqttSettings,
    /// Directory of the ticket-signing keys (created with owner-only permissions).
    pub key_dir: PathBuf,
    /// The key that signs new tickets.
    pub key_id: KeyId,
    /// How long before its window a ticket is already accepted.
    pub early_grace: Duration,
}

/// Runs the worker until `shutdown` completes, then stops every task and returns.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let pool = db::pool(&settings.database_url, 8).context("cannot set up the database pool")?;
    db::migrate(&pool)
        .await
        .context("cannot prepare the database")?;
    let keys = keys::load_or_create(&settings.key_dir, &settings.key_id)?;
    let rules = ScanRules {
        keyring: keys.keyring,
        early_grace: settings.early_grace,
    };
    let stop = CancellationToken::new();
    // The connection outlives the workers so their last publishes and acks still go out.
    let stop_mqtt = CancellationToken::new();
    let connection = mqtt::connect(
        &settings.mqtt,
        vec![topic::every_device(DeviceChannel::Scan)],
        stop_mqtt.clone(),
    );
    let wake_timer = Arc::new(Notify::new());
    let scans_task = tokio::spawn(scan_worker(
        pool.clone(),
        rules,
        connection.client.clone(),
        connection.incoming,
        wake_timer.clone(),
        stop.clone(),
    ));
    let timer_task = tokio::spawn(stop_timer::run(
        pool.clone(),
        connection.client.clone(),
        wake_timer,
        stop.clone(),
    ));
    tracing::info!(broker = %format!("{}:{}", settings.mqtt.host, settings.mqtt.port), "management running");
    shutdown.await;
    tracing::info!("management shutting down");
    stop.cancel();
    let _ = tokio::join!(scans_task, timer_task);
    // Let queued publishes and acks go out before the connection closes; a full queue (broker
    // gone) must not hold shutdown.
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.client.disconnect()).await;
    let mut mqtt_task = connection.task;
    if tokio::time::timeout(Duration::from_secs(2), &mut mqtt_task)
        .await
        .is_err()
    {
        stop_mqtt.cancel();
        let _ = mqtt_task.await;
    }
    pool.close();
    Ok(())
}

/// Takes scans one by one; each is acknowledged to the broker only after its decision is
/// committed and its answers are queued, so a crash before that means redelivery, not loss.
async fn scan_worker(
    pool: Pool,
    rules: ScanRules,
    client: AsyncClient,
    mut incoming: mpsc::UnboundedReceiver<Publish>,
    wake_timer: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let publish = tokio::select! {
            () = stop.cancelled() => break,
            publish = incoming.recv() => match publish {
                Some(publish) => publish,
                None => break,
            },
        };
        if !handle_publish(&pool, &rules, &client, &publish, &wake_timer, &stop).await {
            break; // shutting down: leave the message unacknowledged for redelivery
        }
        if let Err(error) = client.ack(&publish).await {
            tracing::error!(%error, "cannot acknowledge a scan");
        }
    }
}

/// Decides one incoming message, retrying while the database is unavailable. Returns `false`
/// when shutdown interrupted it.
async fn handle_publish(
    pool: &Pool,
    rules: &ScanRules,
    client: &AsyncClient,
    publish: &Publish,
    wake_timer: &Notify,
    stop: &CancellationToken,
) -> bool {
    let topic_name = &publish.topic;
    let (store, device) = match Topic::parse(topic_name) {
        Ok(Topic::Device {
            store,
            device,
            channel: DeviceChannel::Scan,
        }) => (store, device),
        other => {
            tracing::warn!(topic = %topic_name, ?other, "ignoring a message on an unexpected topic");
            return true;
        }
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match scans::handle_scan(pool, rules, &store, &device, &publish.payload, Utc::now()).await {
            Ok(outcome) => {
                mqtt::publish_all(client, outcome.publish).await;
                if outcome.session_started {
                    wake_timer.notify_one();
                }
                return true;
            }
            Err(error) => {
                tracing::warn!(%error, %store, %device, "cannot decide a scan yet; retrying");
                tokio::select! {
                    () = stop.cancelled() => return false,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
