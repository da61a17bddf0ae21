//! `mujin-loadgen run`: a virtual fleet against a stack that is already running (its broker,
//! management and database), for as long as asked; prints the latencies at the end.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use mujin_management::{db, keys, ticket_keys};

use crate::device::BrokerAddress;
use crate::fleet::{self, Fleet, FleetSpec, StepOutcome};
use crate::stats::Samples;

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub broker: BrokerAddress,
    pub database_url: String,
    /// Management's data directory: its keys (identity pepper, ticket keys) are read there.
    pub data_dir: PathBuf,
    pub fleet: FleetSpec,
    pub telemetry: Duration,
    pub scan_rate: f64,
    pub duration: Duration,
}

/// The totals of a run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub devices: usize,
    pub scans: usize,
    pub started: usize,
    pub stopped: usize,
    pub refused: usize,
    pub unanswered: usize,
    pub latency: Samples,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = self.latency.percentiles();
        writeln!(
            f,
            "{} devices: {} scans, {} started, {} stopped, {} refused, {} unanswered",
            self.devices, self.scans, self.started, self.stopped, self.refused, self.unanswered
        )?;
        writeln!(
            f,
            "scan → start: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        )
    }
}

impl RunSummary {
    fn add(&mut self, step: &StepOutcome) {
        self.scans += step.scans;
        self.started += step.started;
        self.stopped += step.stopped;
        self.refused += step.rejected.values().sum::<usize>();
        self.unanswered += step.unanswered;
        self.latency.extend(&step.latency_samples);
    }
}

/// Enrols and connects the fleet, then runs steps of scans at the rate asked (each device
/// booked and scanning once per step, a step lasting up to 5 s of scans) until `duration`.
pub async fn run(settings: RunSettings) -> anyhow::Result<RunSummary> {
    let pool = db::pool(&settings.database_url, 16).context("cannot open the database")?;
    let key_dir = settings.data_dir.join("keys");
    let pepper = keys::load_or_create_pepper(&key_dir)?;
    let booking_key = ticket_keys::load(&pool, &key_dir)
        .await
        .context("cannot load the current ticket key (is management's --data-dir right?)")?
        .signing;
    let credentials = fleet::enrol(&pool, &pepper, &settings.fleet).await?;
    // The broker reloads its identities at least every 2 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut fleet = Fleet::connect(
        &credentials,
        &settings.broker,
        pool.clone(),
        booking_key,
        settings.telemetry,
    )
    .await?;
    let heartbeats = fleet.start_telemetry(settings.telemetry);
    let mut summary = RunSummary {
        devices: fleet.len(),
        ..RunSummary::default()
    };
    let started = tokio::time::Instant::now();
    let per_step = ((settings.scan_rate * 5.0).round() as usize).clamp(1, fleet.len());
    let outcome = async {
        while started.elapsed() < settings.duration && settings.scan_rate > 0.0 {
            let step = fleet.step(per_step, settings.scan_rate).await?;
            summary.add(&step);
        }
        if settings.scan_rate <= 0.0 {
            tokio::time::sleep(settings.duration).await;
        }
        anyhow::Ok(())
    }
    .await;
    heartbeats.stop().await;
    fleet.shutdown().await;
    pool.close();
    outcome?;
    Ok(summary)
}
