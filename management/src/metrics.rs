//! Prometheus metrics of one worker, served on `GET /metrics` when `--metrics-listen` is given
//! (every metric is described in docs/metrics.md).
//!
//! Counters and histograms move on the code paths (an atomic increment, or a short lock inside
//! the histogram; nothing is held across an await). What the database knows — sessions
//! running, commands pending — and the pool's state are read when Prometheus scrapes, so they
//! are exact at scrape time and cost nothing while nobody scrapes; each read is bounded by
//! what is open or pending, never by the history.
//! Store and device ids are never labels: a fleet's size must not multiply the series.

use crate::db::CachedStatements;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use deadpool_postgres::Pool;
use mujin_protocol::message::RejectReason;
use mujin_protocol::topic::DeviceChannel;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::db::WorkError;
use crate::outbox::Settled;

/// The states of a command still pending in the outbox, counted in the database at each
/// scrape: `queued` not sent yet, `sent` sent and not answered.
pub const PENDING_COMMAND_STATES: [&str; 2] = ["queued", "sent"];

/// The pending commands by state. Only pending commands are counted: settled ones pile up for
/// as long as the outbox keeps them, so counting them at each scrape would take longer every
/// day (they are counted as they settle instead, [`Settled`]). `next_attempt_at IS NOT NULL`
/// (true of every pending command) lets it read the `commands_pending` index (migration V14).
pub const PENDING_COMMANDS: &str = "SELECT status, count(*) FROM commands
     WHERE status IN ('queued', 'sent') AND next_attempt_at IS NOT NULL
     GROUP BY status";

/// The open sessions, through their partial index.
pub const SESSIONS_RUNNING: &str = "SELECT count(*) FROM sessions WHERE ended_at IS NULL";

/// The channels devices publish on, whose messages must carry their device's signature.
const DEVICE_CHANNELS: [DeviceChannel; 4] = [
    DeviceChannel::Scan,
    DeviceChannel::State,
    DeviceChannel::Telemetry,
    DeviceChannel::Ack,
];
/// How long a scrape waits for the database before reporting it down.
const SCRAPE_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The content type of the OpenMetrics text format, which Prometheus reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets of the stop lateness, in seconds: the stop timer is normally on time to a few
/// milliseconds; seconds mean a busy database or a broker that was away.
const STOP_LATENESS_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Buckets of the scan → start latency, in seconds.
const SCAN_TO_START_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of each stage of an accepted scan in the worker, in seconds: most stages take tens
/// or hundreds of microseconds.
const SCAN_STAGE_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25,
];

/// Where an accepted scan whose start went out with its answer spent its time in the worker,
/// stage by stage, in order: from the MQTT client's receipt of the scan to the start handed
/// back to it. The stages add up to the worker's whole part of the scan → start latency (of
/// the attempt that succeeded, when the database made it retry).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ScanStages {
    /// Waiting for a lane: the inbox's channel and the earlier messages of the same lane.
    pub queued: Duration,
    /// The device's signature on the scan checked (with its key from the cache).
    pub authenticate: Duration,
    /// The scan decoded and its ticket's signature checked.
    pub verify_ticket: Duration,
    /// A pooled database connection taken.
    pub connect: Duration,
    /// `BEGIN` and the reads (one round trip), and the decision.
    pub read: Duration,
    /// The writes and `COMMIT` (one round trip and the commit's flush to disk).
    pub write: Duration,
    /// The start command and the desired state signed, the answer and events encoded.
    pub sign: Duration,
    /// The answer, the start, the desired state and the events handed to the MQTT client.
    pub publish: Duration,
}

impl ScanStages {
    /// The `stage` label values, in the order of [`ScanStages::durations`].
    pub const NAMES: [&'static str; 8] = [
        "queued",
        "authenticate",
        "verify_ticket",
        "connect",
        "read",
        "write",
        "sign",
        "publish",
    ];

    /// Each stage's duration, in the order of [`ScanStages::NAMES`].
    pub fn durations(&self) -> [Duration; 8] {
        [
            self.queued,
            self.authenticate,
            self.verify_ticket,
            self.connect,
            self.read,
            self.write,
            self.sign,
            self.publish,
        ]
    }
}

type Labels = [(&'static str, &'static str); 1];
type ScanLabels = [(&'static str, &'static str); 2];

/// A scan decision as counted: accepted, or rejected with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanVerdict {
    Accepted,
    Rejected(RejectReason),
}

/// The worker's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    scans_accepted: Counter,
    /// One per [`RejectReason::ALL`], in that order.
    scans_rejected: Vec<Counter>,
    /// One per [`DEVICE_CHANNELS`], in that order.
    device_messages_refused: Vec<Counter>,
    events_published: Counter,
    stop_lateness: Histogram,
    scan_to_start: Histogram,
    /// One per [`ScanStages::NAMES`], in that order.
    scan_stages: Vec<Histogram>,
    sessions_running: Gauge,
    /// One per [`PENDING_COMMAND_STATES`], in that order.
    commands: Vec<Gauge>,
    /// One per [`Settled::ALL`], in that order.
    commands_settled: Vec<Counter>,
    database_up: Gauge,
    pool_in_use: Gauge,
    pool_idle: Gauge,
    broker_connected: Gauge,
    broker_reconnects: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered, each labelled series created at zero (so a rate is defined
    /// from the first scrape, and dashboards see every reason before it first happens).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mujin");
        let scans = Family::<ScanLabels, Counter>::default();
        registry.register(
            "scans",
            "Scans decided, by decision and reject reason (empty when accepted); a scan \
             delivered again is answered with its first decision and not counted again",
            scans.clone(),
        );
        let scans_accepted = scans
            .get_or_create(&[("decision", "accepted"), ("reason", "")])
            .clone();
        let scans_rejected = RejectReason::ALL
            .iter()
            .map(|reason| {
                scans
                    .get_or_create(&[("decision", "rejected"), ("reason", reason.as_str())])
                    .clone()
            })
            .collect();
        let refused = Family::<Labels, Counter>::default();
        registry.register(
            "device_messages_refused",
            "Device messages refused because they were not signed with their device's key \
             (or, for scans, sent outside the allowed clock skew), by channel",
            refused.clone(),
        );
        let device_messages_refused = DEVICE_CHANNELS
            .iter()
            .map(|channel| {
                refused
                    .get_or_create(&[("channel", channel.as_str())])
                    .clone()
            })
            .collect();
        let events_published = Counter::default();
        registry.register(
            "events_published",
            "Events published on the stores' event topics (scan decisions, sessions, alerts)",
            events_published.clone(),
        );
        let stop_lateness = Histogram::new(STOP_LATENESS_BUCKETS);
        registry.register_with_unit(
            "stop_lateness",
            "From a booking's end to the first publication of the stop command that ends its \
             session",
            Unit::Seconds,
            stop_lateness.clone(),
        );
        let scan_to_start = Histogram::new(SCAN_TO_START_BUCKETS);
        registry.register_with_unit(
            "scan_to_start",
            "From the worker taking up a scan it accepts to the first publication of the \
             start command",
            Unit::Seconds,
            scan_to_start.clone(),
        );
        let stages = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(SCAN_STAGE_BUCKETS)
        });
        registry.register_with_unit(
            "scan_stage",
            "Where an accepted scan whose start went out with its answer spent its time in the \
             worker, by stage (queued, authenticate, verify_ticket, connect, read, write, sign, \
             publish); the stages add up to the time from receiving the scan to handing its \
             start to the MQTT client",
            Unit::Seconds,
            stages.clone(),
        );
        let scan_stages = ScanStages::NAMES
            .iter()
            .map(|stage| stages.get_or_create(&[("stage", *stage)]).clone())
            .collect();
        let sessions_running = Gauge::default();
        registry.register(
            "sessions_running",
            "Open sessions in the database (read at scrape time)",
            sessions_running.clone(),
        );
        let commands_family = Family::<Labels, Gauge>::default();
        registry.register(
            "commands",
            "Commands pending in the outbox, by state: queued (not sent yet) or sent (not \
             answered yet) (read at scrape time)",
            commands_family.clone(),
        );
        let commands = PENDING_COMMAND_STATES
            .iter()
            .map(|state| commands_family.get_or_create(&[("state", *state)]).clone())
            .collect();
        let settled_family = Family::<Labels, Counter>::default();
        registry.register(
            "commands_settled",
            "Commands this worker settled, by final state: acknowledged or failed by the \
             device, expired unanswered, superseded by a newer command",
            settled_family.clone(),
        );
        let commands_settled = Settled::ALL
            .iter()
            .map(|state| {
                settled_family
                    .get_or_create(&[("state", state.as_str())])
                    .clone()
            })
            .collect();
        let database_up = Gauge::default();
        registry.register(
            "database_up",
            "1 when the last scrape's database query succeeded, 0 when it failed or timed out",
            database_up.clone(),
        );
        let pool = Family::<Labels, Gauge>::default();
        registry.register(
            "database_pool_connections",
            "The worker's pooled database connections, in use or idle",
            pool.clone(),
        );
        let pool_in_use = pool.get_or_create(&[("state", "in_use")]).clone();
        let pool_idle = pool.get_or_create(&[("state", "idle")]).clone();
        let broker_connected = Gauge::default();
        registry.register(
            "broker_connected",
            "1 while the worker is connected to the MQTT broker",
            broker_connected.clone(),
        );
        let broker_reconnects = Counter::default();
        registry.register(
            "broker_reconnects",
            "Connections to the MQTT broker after the first one",
            broker_reconnects.clone(),
        );
        Self {
            registry,
            scans_accepted,
            scans_rejected,
            device_messages_refused,
            events_published,
            stop_lateness,
            scan_to_start,
            scan_stages,
            sessions_running,
            commands,
            commands_settled,
            database_up,
            pool_in_use,
            pool_idle,
            broker_connected,
            broker_reconnects,
        }
    }

    /// A scan was decided (its decision is committed).
    pub fn scan(&self, verdict: ScanVerdict) {
        let counter = match verdict {
            ScanVerdict::Accepted => Some(&self.scans_accepted),
            ScanVerdict::Rejected(reason) => RejectReason::ALL
                .iter()
                .position(|known| *known == reason)
                .and_then(|index| self.scans_rejected.get(index)),
        };
        if let Some(counter) = counter {
            counter.inc();
        }
    }

    /// A device message on `channel` was refused as not its device's.
    pub fn device_message_refused(&self, channel: DeviceChannel) {
        let index = DEVICE_CHANNELS.iter().position(|known| *known == channel);
        if let Some(counter) = index.and_then(|index| self.device_messages_refused.get(index)) {
            counter.inc();
        }
    }

    /// `count` events were handed to the broker.
    pub fn events_published(&self, count: usize) {
        self.events_published.inc_by(count as u64);
    }

    /// A session's stop command went out for the first time, `late` after its booking ended.
    pub fn stop_published(&self, late: chrono::Duration) {
        self.stop_lateness.observe(seconds(late));
    }

    /// A start command went out for the first time, `since_scan` after its scan was taken up.
    pub fn start_published(&self, since_scan: chrono::Duration) {
        self.scan_to_start.observe(seconds(since_scan));
    }

    /// An accepted scan's start went out with its answer, after these stages in the worker.
    pub fn scan_stages(&self, stages: &ScanStages) {
        for (histogram, duration) in self.scan_stages.iter().zip(stages.durations()) {
            histogram.observe(duration.as_secs_f64());
        }
    }

    /// `count` commands were settled as `state` (their settling is committed).
    pub fn commands_settled(&self, state: Settled, count: u64) {
        let index = Settled::ALL.iter().position(|known| *known == state);
        if let Some(counter) = index.and_then(|index| self.commands_settled.get(index)) {
            counter.inc_by(count);
        }
    }

    /// The broker connection came up (`true`) or went away.
    pub fn broker_connected(&self, connected: bool) {
        self.broker_connected.set(i64::from(connected));
    }

    /// The worker connected to the broker again after losing it.
    pub fn broker_reconnected(&self) {
        self.broker_reconnects.inc();
    }

    /// Reads the pool's state and what the database knows. A database that does not answer
    /// within [`SCRAPE_QUERY_TIMEOUT`] is reported down; the database gauges then keep their
    /// last values.
    pub async fn refresh(&self, pool: &Pool) {
        // Before the query, which takes a connection itself.
        let status = pool.status();
        let idle = status.available.min(status.size);
        self.pool_idle.set(idle as i64);
        self.pool_in_use.set((status.size - idle) as i64);
        match tokio::time::timeout(SCRAPE_QUERY_TIMEOUT, count_rows(pool)).await {
            Ok(Ok(counts)) => {
                self.database_up.set(1);
                self.sessions_running.set(counts.sessions_running);
                for (index, gauge) in self.commands.iter().enumerate() {
                    let count = counts
                        .commands
                        .iter()
                        .find(|(state, _)| {
                            Some(state.as_str()) == PENDING_COMMAND_STATES.get(index).copied()
                        })
                        .map_or(0, |(_, count)| *count);
                    gauge.set(count);
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "metrics: cannot read the database");
                self.database_up.set(0);
            }
            Err(_) => {
                tracing::warn!("metrics: the database did not answer in time");
                self.database_up.set(0);
            }
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = encode(&mut text, &self.registry) {
            // Only a failing writer can fail, and a String does not.
            let _ = writeln!(text, "# encoding failed: {error}");
        }
        text
    }
}

fn seconds(duration: chrono::Duration) -> f64 {
    duration
        .num_microseconds()
        .map_or(f64::MAX, |us| us as f64 / 1e6)
        .max(0.0)
}

/// What a scrape reads from the database.
struct RowCounts {
    sessions_running: i64,
    commands: Vec<(String, i64)>,
}

async fn count_rows(pool: &Pool) -> Result<RowCounts, WorkError> {
    let client = pool.get().await?;
    let sessions_running: i64 = client.cached_query_one(SESSIONS_RUNNING, &[]).await?.get(0);
    let commands = client
        .cached_query(PENDING_COMMANDS, &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(RowCounts {
        sessions_running,
        commands,
    })
}

/// What the HTTP handler needs.
#[derive(Clone)]
struct Scrape {
    metrics: Arc<Metrics>,
    pool: Pool,
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    pool: Pool,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape { metrics, pool });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "the metrics endpoint stopped");
    }
}

async fn scrape(State(scrape): State<Scrape>) -> impl IntoResponse {
    scrape.metrics.refresh(&scrape.pool).await;
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        scrape.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of one series in `text`, e.g. `mujin_sessions_running`.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn every_metric_is_described_and_every_reason_is_there_from_the_start() {
        let text = Metrics::new().encode();
        for name in [
            "mujin_scans",
            "mujin_device_messages_refused",
            "mujin_events_published",
            "mujin_stop_lateness_seconds",
            "mujin_scan_to_start_seconds",
            "mujin_scan_stage_seconds",
            "mujin_sessions_running",
            "mujin_commands",
            "mujin_commands_settled",
            "mujin_database_up",
            "mujin_database_pool_connections",
            "mujin_broker_connected",
            "mujin_broker_reconnects",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        }
        for reason in RejectReason::ALL {
            let series = format!(
                "mujin_scans_total{{decision=\"rejected\",reason=\"{}\"}}",
                reason.as_str()
            );
            assert_eq!(value(&text, &series), Some(0.0), "{series}");
        }
        for state in PENDING_COMMAND_STATES {
            let series = format!("mujin_commands{{state=\"{state}\"}}");
            assert_eq!(value(&text, &series), Some(0.0), "{series}");
        }
        for state in Settled::ALL {
            let series = format!(
                "mujin_commands_settled_total{{state=\"{}\"}}",
                state.as_str()
            );
            assert_eq!(value(&text, &series), Some(0.0), "{series}");
        }
        // Settled commands are counted as they settle, not read at each scrape.
        assert_eq!(value(&text, "mujin_commands{state=\"acknowledged\"}"), None);
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn a_database_that_cannot_be_reached_is_reported_down() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        // Nothing listens there any more: connecting is refused at once.
        let url = format!("host=127.0.0.1 port={port} user=mujin dbname=mujin");
        let pool = crate::db::pool(&url, 2).unwrap();
        let metrics = Metrics::new();
        metrics.database_up.set(1);
        metrics.refresh(&pool).await;
        let text = metrics.encode();
        assert_eq!(value(&text, "mujin_database_up"), Some(0.0), "{text}");
        assert_eq!(
            value(&text, "mujin_database_pool_connections{state=\"in_use\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn observations_show_in_the_exposition() {
        let metrics = Metrics::new();
        metrics.scan(ScanVerdict::Accepted);
        metrics.scan(ScanVerdict::Rejected(RejectReason::TooManyScans));
        metrics.scan(ScanVerdict::Rejected(RejectReason::TooManyScans));
        metrics.scan(ScanVerdict::Rejected(RejectReason::RevokedKey));
        metrics.device_message_refused(DeviceChannel::Ack);
        metrics.events_published(3);
        metrics.stop_published(chrono::Duration::milliseconds(30));
        metrics.start_published(chrono::Duration::milliseconds(7));
        metrics.start_published(chrono::Duration::milliseconds(-5));
        metrics.broker_connected(true);
        metrics.broker_reconnected();
        metrics.commands_settled(Settled::Acknowledged, 1);
        metrics.commands_settled(Settled::Expired, 3);
        let text = metrics.encode();
        let expect = [
            ("mujin_scans_total{decision=\"accepted\",reason=\"\"}", 1.0),
            (
                "mujin_scans_total{decision=\"rejected\",reason=\"too_many_scans\"}",
                2.0,
            ),
            (
                "mujin_scans_total{decision=\"rejected\",reason=\"revoked_key\"}",
                1.0,
            ),
            ("mujin_device_messages_refused_total{channel=\"ack\"}", 1.0),
            ("mujin_device_messages_refused_total{channel=\"scan\"}", 0.0),
            ("mujin_events_published_total", 3.0),
            ("mujin_stop_lateness_seconds_count", 1.0),
            ("mujin_stop_lateness_seconds_bucket{le=\"0.025\"}", 0.0),
            ("mujin_stop_lateness_seconds_bucket{le=\"0.05\"}", 1.0),
            ("mujin_scan_to_start_seconds_count", 2.0),
            // A clock step backwards counts as no delay, not a negative one.
            ("mujin_scan_to_start_seconds_bucket{le=\"0.005\"}", 1.0),
            ("mujin_scan_to_start_seconds_bucket{le=\"0.01\"}", 2.0),
            ("mujin_broker_connected", 1.0),
            ("mujin_broker_reconnects_total", 1.0),
            ("mujin_commands_settled_total{state=\"acknowledged\"}", 1.0),
            ("mujin_commands_settled_total{state=\"expired\"}", 3.0),
            ("mujin_commands_settled_total{state=\"failed\"}", 0.0),
        ];
        for (series, expected) in expect {
            assert_eq!(value(&text, series), Some(expected), "{series} in\n{text}");
        }
        let sum = value(&text, "mujin_scan_to_start_seconds_sum").expect("a sum");
        assert!((sum - 0.007).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn each_stage_of_a_scan_has_its_own_series() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for stage in ScanStages::NAMES {
            let series = format!("mujin_scan_stage_seconds_count{{stage=\"{stage}\"}}");
            assert_eq!(value(&text, &series), Some(0.0), "{series} from the start");
        }
        let micros = Duration::from_micros;
        let stages = ScanStages {
            queued: micros(40),
            authenticate: micros(60),
            verify_ticket: micros(55),
            connect: micros(5),
            read: micros(250),
            write: micros(400),
            sign: micros(70),
            publish: micros(20),
        };
        metrics.scan_stages(&stages);
        metrics.scan_stages(&ScanStages {
            read: micros(2500),
            ..stages
        });
        let text = metrics.encode();
        let read = |suffix: &str| value(&text, &format!("mujin_scan_stage_seconds_{suffix}"));
        assert_eq!(read("count{stage=\"read\"}"), Some(2.0));
        assert_eq!(read("bucket{le=\"0.0003\",stage=\"read\"}"), Some(1.0));
        assert_eq!(read("bucket{le=\"0.003\",stage=\"read\"}"), Some(2.0));
        let write = read("sum{stage=\"write\"}").expect("a sum");
        assert!((write - 0.0008).abs() < 1e-9, "{write}");
        let publish = read("sum{stage=\"publish\"}").expect("a sum");
        assert!((publish - 0.00004).abs() < 1e-9, "{publish}");
    }
}
