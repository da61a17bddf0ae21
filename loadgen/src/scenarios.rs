//! The benchmark scenarios, each over a connected [`Fleet`]: scan → start latency at fixed
//! rates, the highest sustained rate, a fleet sending telemetry with scans on top, and many
//! sessions ending within the same minute.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use crate::cpu::CpuProbe;
use crate::fleet::{Fleet, StepOutcome};
use crate::machine::MachineStalls;
use crate::stack::{sample_process, ProcessSample};
use crate::stats::{Percentiles, Samples};

/// The highest p99 scan → start for a rate to count as sustained.
pub const THROUGHPUT_P99_MS: f64 = 50.0;

/// Scenario 1 at one rate: `rounds` steps of `scans` scans, pooled.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyAtRate {
    pub rate: f64,
    pub rounds: usize,
    pub scans_per_round: usize,
    pub result: StepOutcome,
    /// Each round on its own, in order.
    pub each_round: Vec<Round>,
}

/// One round of scenario 1: its latencies and what the machine did meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Round {
    pub latency: Percentiles,
    pub machine: Option<MachineStalls>,
}

/// Runs scenario 1: for each rate, `rounds` steps of `min(fleet, rate × step_secs)` scans,
/// with the CPU per scan of `cpu`'s processes when given.
pub async fn latency(
    fleet: &mut Fleet,
    rates: &[f64],
    step_secs: f64,
    rounds: usize,
    cpu: Option<&CpuProbe>,
) -> anyhow::Result<Vec<LatencyAtRate>> {
    let mut results = Vec::new();
    for &rate in rates {
        let scans = ((rate * step_secs).round() as usize).clamp(1, fleet.len());
        let mut pooled: Option<StepOutcome> = None;
        let mut each_round = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let step = fleet.step_measured(scans, rate, cpu).await?;
            tracing::info!(
                rate,
                round,
                cpu_us_per_scan = step.cpu.map(|cpu| cpu.total_us),
                p50 = step.latency.p50_ms,
                p99 = step.latency.p99_ms,
                started = step.started,
                max_oversleep_ms = step.machine.map(|machine| machine.max_oversleep_ms),
                max_fdatasync_ms = step.machine.map(|machine| machine.max_fdatasync_ms),
                "latency step"
            );
            each_round.push(Round {
                latency: step.latency,
                machine: step.machine,
            });
            pooled = Some(match pooled {
                None => step,
                Some(total) => pool(total, step),
            });
        }
        if let Some(result) = pooled {
            results.push(LatencyAtRate {
                rate,
                rounds,
                scans_per_round: scans,
                result,
                each_round,
            });
        }
    }
    Ok(results)
}

/// Adds `step` to `total` (counts summed, percentiles over every sample).
fn pool(mut total: StepOutcome, step: StepOutcome) -> StepOutcome {
    total.scans += step.scans;
    total.started += step.started;
    total.unanswered += step.unanswered;
    total.send_errors += step.send_errors;
    total.stopped += step.stopped;
    total.offer_secs += step.offer_secs;
    total.completion_secs += step.completion_secs;
    for (reason, count) in step.rejected {
        *total.rejected.entry(reason).or_default() += count;
    }
    total.cpu = match (total.cpu, step.cpu) {
        (Some(total), Some(step)) => Some(total.pooled(&step)),
        (total, step) => total.or(step),
    };
    total.stages = match (total.stages, step.stages) {
        (Some(total), Some(step)) => Some(total.pooled(&step)),
        (total, step) => total.or(step),
    };
    total.machine = match (total.machine, step.machine) {
        (Some(total), Some(step)) => Some(total.pooled(&step)),
        (total, step) => total.or(step),
    };
    total.latency_samples.extend(&step.latency_samples);
    total.lateness_samples.extend(&step.lateness_samples);
    total.latency = total.latency_samples.percentiles();
    total.stop_lateness = total.lateness_samples.percentiles();
    total
}

/// Scenario 2: increasing offered rates until one is not sustained.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub steps: Vec<StepOutcome>,
    /// The highest offered rate whose every scan started with p99 ≤ 50 ms.
    pub sustained_rate: Option<f64>,
    /// The highest rate of starts reached in any step (sessions started / time taken).
    pub peak_achieved_rate: f64,
}

/// Offers each rate for `step_secs` (at most one scan per device of the fleet), stopping at
/// the first rate that is not sustained; with the CPU per scan of `cpu`'s processes when given.
pub async fn throughput(
    fleet: &mut Fleet,
    rates: &[f64],
    step_secs: f64,
    cpu: Option<&CpuProbe>,
) -> anyhow::Result<Throughput> {
    let mut result = Throughput {
        steps: Vec::new(),
        sustained_rate: None,
        peak_achieved_rate: 0.0,
    };
    for &rate in rates {
        let scans = ((rate * step_secs).round() as usize).clamp(1, fleet.len());
        let step = fleet.step_measured(scans, rate, cpu).await?;
        let sustained = step.all_started() && step.latency.p99_ms <= THROUGHPUT_P99_MS;
        tracing::info!(
            rate,
            sustained,
            achieved = step.achieved_rate(),
            p99 = step.latency.p99_ms,
            cpu_us_per_scan = step.cpu.map(|cpu| cpu.total_us),
            "throughput step"
        );
        result.peak_achieved_rate = result.peak_achieved_rate.max(step.achieved_rate());
        result.steps.push(step);
        if !sustained {
            break;
        }
        result.sustained_rate = Some(rate);
    }
    Ok(result)
}

/// Scenario 3: the whole fleet sending telemetry, scans on top.
#[derive(Debug, Clone, Serialize)]
pub struct FleetLoad {
    pub devices: usize,
    pub telemetry_secs: f64,
    pub scan_rate: f64,
    pub scans: StepOutcome,
    pub broker_rss_mib: f64,
    pub management_rss_mib: f64,
    /// CPU use over the scan step, in percent of one core.
    pub broker_cpu_percent: f64,
    pub management_cpu_percent: f64,
}

/// Runs scenario 3 on a fleet already sending telemetry every `telemetry`: a step of scans at
/// `scan_rate` for `scan_secs`, reading the broker's and management's memory and CPU meanwhile.
pub async fn fleet_load(
    fleet: &mut Fleet,
    telemetry: Duration,
    scan_rate: f64,
    scan_secs: f64,
    pids: (Option<u32>, Option<u32>),
) -> anyhow::Result<FleetLoad> {
    let before = (
        pids.0.and_then(sample_process),
        pids.1.and_then(sample_process),
    );
    let started = tokio::time::Instant::now();
    let peak = std::sync::Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let sampler = tokio::spawn(sample_peaks(pids, peak.clone()));
    let scans = ((scan_rate * scan_secs).round() as usize).clamp(1, fleet.len());
    let step = fleet.step(scans, scan_rate).await;
    sampler.abort();
    let wall = started.elapsed().as_secs_f64().max(0.001);
    let after = (
        pids.0.and_then(sample_process),
        pids.1.and_then(sample_process),
    );
    let step = step?;
    let (broker_peak, management_peak) = *peak.lock().unwrap_or_else(|p| p.into_inner());
    let cpu = |before: Option<ProcessSample>, after: Option<ProcessSample>| match (before, after) {
        (Some(before), Some(after)) => (after.cpu_secs - before.cpu_secs) / wall * 100.0,
        _ => 0.0,
    };
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    Ok(FleetLoad {
        devices: fleet.len(),
        telemetry_secs: telemetry.as_secs_f64(),
        scan_rate,
        scans: step,
        broker_rss_mib: mib(broker_peak),
        management_rss_mib: mib(management_peak),
        broker_cpu_percent: cpu(before.0, after.0),
        management_cpu_percent: cpu(before.1, after.1),
    })
}

/// Keeps the highest resident memory of the broker and management seen, every 200 ms.
async fn sample_peaks(
    (broker, management): (Option<u32>, Option<u32>),
    peak: std::sync::Arc<std::sync::Mutex<(u64, u64)>>,
) {
    loop {
        let broker_rss = broker.and_then(sample_process).map_or(0, |s| s.rss_bytes);
        let management_rss = management
            .and_then(sample_process)
            .map_or(0, |s| s.rss_bytes);
        {
            let mut peak = peak.lock().unwrap_or_else(|p| p.into_inner());
            peak.0 = peak.0.max(broker_rss);
            peak.1 = peak.1.max(management_rss);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Scenario 4: many sessions whose booked ends fall within one window.
#[derive(Debug, Clone, Serialize)]
pub struct StopsOnTime {
    pub sessions: usize,
    /// The booked ends are spread evenly over this many seconds.
    pub spread_secs: u64,
    /// How fast the sessions were started beforehand.
    pub start_rate: f64,
    pub result: StepOutcome,
}

/// Books `sessions` devices with ends spread over `spread_secs` (whole seconds, the first one
/// after every session could start at `start_rate`), starts them all, then measures when each
/// stop command arrives after its booked end.
pub async fn stops_on_time(
    fleet: &mut Fleet,
    sessions: usize,
    spread_secs: u64,
    start_rate: f64,
) -> anyhow::Result<StopsOnTime> {
    let sessions = sessions.clamp(1, fleet.len());
    let devices: Vec<usize> = (0..sessions).collect();
    let first_end = fleet.plan_end(sessions, start_rate, Duration::from_secs(5));
    let spread = spread_secs.max(1);
    let ends = |position: usize| {
        let offset = position as u64 * spread / sessions as u64;
        first_end + chrono::Duration::seconds(offset as i64)
    };
    let tickets = fleet.book(&devices, ends).await?;
    let mut result = fleet.scan(&devices, tickets, start_rate, first_end).await;
    let last_end = ends(sessions - 1);
    fleet
        .wait_stops(&mut result, last_end + chrono::Duration::seconds(30))
        .await;
    fleet.wait_settled().await;
    tracing::info!(stopped = result.stopped, p99 = result.stop_lateness.p99_ms, late_by = ?(Utc::now() - last_end), "stops step");
    Ok(StopsOnTime {
        sessions,
        spread_secs: spread,
        start_rate,
        result,
    })
}

/// Pools the latencies of several rates (e.g. for the report's overall line).
pub fn all_latencies(results: &[LatencyAtRate]) -> Samples {
    let mut samples = Samples::default();
    for result in results {
        samples.extend(&result.result.latency_samples);
    }
    samples
}
