//! `mujin-loadgen bench`: starts a private stack, runs the scenarios in order (floor and
//! latency, throughput, stops, fleet, then the broker comparison), and writes `report.md` and
//! `report.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;

use crate::cpu::CpuProbe;
use crate::device::Credentials;
use crate::fleet::{self, Fleet, FleetSpec};
use crate::floor::throughput::{self, ThroughputFloor};
use crate::floor::{self, Floor};
use crate::machine::MachineProbe;
use crate::report::{BrokerComparison, Machine, Report};
use crate::scenarios;
use crate::stack::{BrokerKind, BrokerProcess, Stack};
use crate::stages::StageProbe;
use crate::statements::StatementProbe;

/// What `bench` was asked to do.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    pub quick: bool,
    /// Where report.md and report.json go.
    pub out: PathBuf,
    /// Where mujin-broker and mujin-management are.
    pub bin_dir: PathBuf,
    /// Fleet size (default: 1000, or 300 with --quick).
    pub devices: Option<usize>,
    /// Skip scenario 5 (Mosquitto).
    pub skip_mosquitto: bool,
}

/// The knobs of one run: the quick run is the full run made smaller.
#[derive(Debug, Clone)]
struct Profile {
    devices: usize,
    floor_samples: usize,
    /// How long the throughput floor publishes and commits (each).
    throughput_floor_secs: f64,
    latency_rates: Vec<f64>,
    latency_step_secs: f64,
    latency_rounds: usize,
    throughput_rates: Vec<f64>,
    throughput_step_secs: f64,
    stop_spread_secs: u64,
    stop_start_rate: f64,
    telemetry: Duration,
    fleet_scan_rate: f64,
    fleet_scan_secs: f64,
    comparison_rates: Vec<f64>,
}

impl Profile {
    fn new(settings: &BenchSettings) -> Profile {
        if settings.quick {
            let devices = settings.devices.unwrap_or(300);
            Profile {
                devices,
                floor_samples: 300,
                throughput_floor_secs: 2.0,
                latency_rates: vec![100.0, 500.0, 1000.0],
                latency_step_secs: 1.0,
                latency_rounds: 1,
                throughput_rates: vec![250.0, 1000.0, 2000.0, 5000.0],
                throughput_step_secs: 1.0,
                // 10,000 sessions ending within the same minute is the target's case; smaller
                // fleets end theirs over at least 5 s.
                stop_spread_secs: (devices / 170).clamp(5, 60) as u64,
                stop_start_rate: 200.0,
                telemetry: Duration::from_secs(10),
                fleet_scan_rate: 200.0,
                fleet_scan_secs: 1.0,
                comparison_rates: vec![500.0],
            }
        } else {
            Profile {
                devices: settings.devices.unwrap_or(1000),
                floor_samples: 1000,
                throughput_floor_secs: 5.0,
                latency_rates: vec![100.0, 500.0, 1000.0],
                latency_step_secs: 10.0,
                latency_rounds: 3,
                throughput_rates: vec![250.0, 500.0, 1000.0, 2000.0, 3000.0, 5000.0, 8000.0],
                throughput_step_secs: 3.0,
                stop_spread_secs: 60,
                stop_start_rate: 200.0,
                telemetry: Duration::from_secs(10),
                fleet_scan_rate: 200.0,
                fleet_scan_secs: 5.0,
                comparison_rates: vec![100.0, 500.0, 1000.0],
            }
        }
    }

    fn notes(&self, quick: bool) -> Vec<String> {
        let mut notes = vec![
            format!(
                "One process runs {} virtual devices (one store), each with its own MQTT connection, enrolled identity and device key; they sign scans (with sent_at), acks and states like the agent, ack every command at once and report their state after each start and stop.",
                self.devices
            ),
            "Every ticket is booked through management's booking path (booking::reserve with the current ticket key). A step books each device it uses once (one session per device per step), has them scan at the offered rate (open loop: paced by the clock, not by answers), then waits for the booked end and for every stop.".into(),
            "Latency is measured at the virtual device, from handing the signed scan to its MQTT client to receiving the start command. Management runs as `mujin-management run` with RUST_LOG=warn (or MUJIN_BENCH_MANAGEMENT_LOG); PostgreSQL runs with its default durability (fsync and synchronous_commit on).".into(),
            "The embedded broker admits at most 16384 connections (MAX_CONNECTIONS in broker/src/server.rs), and this process needs an open-file limit above the fleet size; a step offers at most one scan per device, so steps at rates above the fleet size per second last under a second.".into(),
            "CPU per authorization (scenarios 1 and 2): user + system time from /proc of PostgreSQL (the postmaster, every process it forked, and the children it reaped), management, the broker and this process, read just before a step's first scan is offered and when its last scan is answered (not over the booking before nor the wait for the stops after), divided by the scans answered. It includes the acks and states the devices send after their starts (except for the last few answers), and this process's own share (signing scans, acks and states for every device) because it runs on the same cores. The ceiling is cores × 1,000,000 / total µs per scan: the rate at which these processes alone would fill every core. /proc counts in 10 ms ticks per process, so short steps read coarsely.".into(),
            "The machine's own stalls (scenario 1's rounds): a thread of this process at real-time priority (SCHED_FIFO 50, above every process of the bench) sleeps 5 ms at a time and records how late it wakes, which only the machine can cause (the virtual machine descheduled, interrupts); the hypervisor's steal time is read from /proc/stat (10 ms ticks); a second thread overwrites one 4 KiB block of a file in the run directory (the database's file system) and fdatasyncs it every 100 ms, as PostgreSQL flushes its preallocated WAL, and records the slowest. All three over the same scan phase as the CPU.".into(),
            "Every device sends telemetry (a heartbeat saying its interval) for the whole run, as agents do, one full round before the first scenario: without it management would take idle devices offline. End-of-session warnings are turned off in the bench store (sessions last seconds).".into(),
            format!(
                "Throughput floor: {} s of messages, then {} s of commits. Scenario 1: rates {:?}/s, {} round(s) of up to {} s each. Scenario 2: rates {:?}/s for up to {} s each, stopping at the first rate not sustained. Scenario 4: ends spread over {} s. Scenario 3: telemetry every {} s, scans at {}/s for {} s.",
                self.throughput_floor_secs, self.throughput_floor_secs,
                self.latency_rates, self.latency_rounds, self.latency_step_secs, self.throughput_rates,
                self.throughput_step_secs, self.stop_spread_secs, self.telemetry.as_secs(),
                self.fleet_scan_rate, self.fleet_scan_secs
            ),
        ];
        if quick {
            notes.push("Quick run: a smaller fleet, shorter steps and one round each: for everyday comparisons, not for the targets.".into());
        }
        notes
    }
}

/// Runs every scenario and writes the report; returns its Markdown.
///
/// Must run on the main thread's runtime (`block_on`), not in a spawned task: the private
/// PostgreSQL is tied to the thread that starts it.
pub async fn run(settings: BenchSettings) -> anyhow::Result<String> {
    let profile = Profile::new(&settings);
    let stack = Stack::start(
        &settings.bin_dir,
        &settings.out.join("stack"),
        crate::stack::BENCH_WAL_MIB,
    )
    .await?;
    tracing::info!(dir = %stack.dir.display(), "run directory (logs of the broker and management)");
    // Ctrl-C or SIGTERM ends the run without a report but not without cleaning up: dropping
    // the scenarios drops the broker and management (killed on drop), and the private
    // PostgreSQL is stopped below. Killed by a signal instead, they would outlive the run.
    let outcome = tokio::select! {
        outcome = run_on(&stack, &settings, &profile) => outcome,
        () = mujin_management::cli::shutdown_signal() => {
            Err(anyhow::anyhow!("interrupted; the stack is shut down, no report written"))
        }
    };
    stack.shutdown().await;
    let report = outcome?;
    write(&settings.out, &report)?;
    Ok(report.markdown())
}

async fn run_on(
    stack: &Stack,
    settings: &BenchSettings,
    profile: &Profile,
) -> anyhow::Result<Report> {
    let spec = FleetSpec {
        stores: 1,
        devices_per_store: profile.devices,
        store_prefix: "bench".into(),
    };
    let credentials = fleet::enrol(&stack.pool, &stack.pepper, &spec).await?;
    let machine = start_machine_probe(stack);
    let broker = stack.start_broker(BrokerKind::Embedded).await?;
    let management = stack.start_management(&broker).await?;
    let mut report = Report {
        date: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        git_commit: crate::report::git_commit(),
        machine: Machine::detect(),
        quick: settings.quick,
        notes: profile.notes(settings.quick),
        fleet_devices: profile.devices,
        floor: Floor::default(),
        latency: Vec::new(),
        throughput: None,
        fleet: None,
        stops: None,
        broker_comparison: None,
        targets: Vec::new(),
    };
    report.floor = measure_floor(stack, &broker, profile, report.machine.cores).await?;
    let mut fleet = connect(stack, &broker, &credentials, profile.telemetry).await?;
    let heartbeats = start_heartbeats(&fleet, profile.telemetry).await;
    let cpu = CpuProbe::new(
        broker.pid(),
        management.pid(),
        &stack.postgres_dir(),
        report.machine.cores,
    )
    .with_statements(StatementProbe::new(&stack.pool).await)
    .with_stages(StageProbe::new(management.metrics))
    .with_machine(machine.clone());
    tracing::info!("scenario 1: latency");
    report.latency = scenarios::latency(
        &mut fleet,
        &profile.latency_rates,
        profile.latency_step_secs,
        profile.latency_rounds,
        Some(&cpu),
    )
    .await?;
    fleet.vacuum().await;
    tracing::info!("scenario 2: throughput");
    report.throughput = Some(
        scenarios::throughput(
            &mut fleet,
            &profile.throughput_rates,
            profile.throughput_step_secs,
            Some(&cpu),
        )
        .await?,
    );
    fleet.vacuum().await;
    tracing::info!("scenario 4: stops on time");
    report.stops = Some(
        scenarios::stops_on_time(
            &mut fleet,
            profile.devices,
            profile.stop_spread_secs,
            profile.stop_start_rate,
        )
        .await?,
    );
    fleet.vacuum().await;
    tracing::info!("scenario 3: fleet");
    let pids = (broker.pid(), management.pid());
    let fleet_load = scenarios::fleet_load(
        &mut fleet,
        profile.telemetry,
        profile.fleet_scan_rate,
        profile.fleet_scan_secs,
        pids,
    )
    .await?;
    report.fleet = Some(fleet_load);
    heartbeats.stop().await;
    fleet.shutdown().await;
    management.kill().await;
    broker.stop().await;
    if !settings.skip_mosquitto {
        tracing::info!("scenario 5: Mosquitto");
        let comparison = compare_mosquitto(stack, &credentials, profile, &report, machine).await;
        match comparison {
            Ok(comparison) => report.broker_comparison = Some(comparison),
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "the Mosquitto comparison failed"
                );
                report
                    .notes
                    .push(format!("Scenario 5 (Mosquitto) failed: {error:#}"));
            }
        }
    }
    report.judge();
    Ok(report)
}

/// The machine probe, writing next to the database (`None`, with a warning, when it cannot
/// start: the report then has no machine columns).
fn start_machine_probe(stack: &Stack) -> Option<Arc<MachineProbe>> {
    match MachineProbe::start(&stack.dir) {
        Ok(probe) => Some(Arc::new(probe)),
        Err(error) => {
            tracing::warn!(%error, "no machine probe");
            None
        }
    }
}

async fn measure_floor(
    stack: &Stack,
    broker: &BrokerProcess,
    profile: &Profile,
    cores: usize,
) -> anyhow::Result<Floor> {
    let samples = profile.floor_samples;
    let mqtt_round_trip = floor::mqtt_round_trips(&broker.address(), &stack.password, samples)
        .await
        .context("the MQTT floor")?;
    let durable_insert = floor::durable_inserts(&stack.pool, samples / 2)
        .await
        .context("the database floor")?;
    // CPU-bound for a fraction of a second: off the runtime's workers.
    let signatures = tokio::task::spawn_blocking(|| floor::SignatureFloor::measure(1000))
        .await
        .context("the signature floor panicked")??;
    // The throughput floor last: its thousands of commits leave work (checkpoints, vacuum)
    // that the single insert above should not wait behind.
    let cpu = CpuProbe::new(broker.pid(), None, &stack.postgres_dir(), cores);
    let window = Duration::from_secs_f64(profile.throughput_floor_secs);
    let mqtt = throughput::mqtt_throughput(&broker.address(), &stack.password, &cpu, window)
        .await
        .context("the MQTT throughput floor")?;
    let commits = throughput::durable_commits(&stack.pool, &cpu, window)
        .await
        .context("the commit throughput floor")?;
    Ok(Floor {
        mqtt_round_trip,
        durable_insert,
        signatures,
        throughput: Some(ThroughputFloor::new(mqtt, commits, &signatures, cores)),
    })
}

/// Starts the fleet's heartbeats and waits for one full round of them, so that management
/// knows every device's rhythm before the first scan.
async fn start_heartbeats(fleet: &Fleet, every: Duration) -> crate::fleet::Telemetry {
    let heartbeats = fleet.start_telemetry(every);
    tokio::time::sleep(every + Duration::from_secs(1)).await;
    heartbeats
}

/// Connects the fleet; each device beats at once on connecting, declaring `heartbeat`.
async fn connect(
    stack: &Stack,
    broker: &BrokerProcess,
    credentials: &[Credentials],
    heartbeat: Duration,
) -> anyhow::Result<Fleet> {
    let key = stack.booking_key().await?;
    let started = tokio::time::Instant::now();
    let fleet = Fleet::connect(
        credentials,
        &broker.address(),
        stack.pool.clone(),
        key,
        heartbeat,
    )
    .await?
    .vacuum_between_scenarios();
    tracing::info!(
        devices = fleet.len(),
        secs = started.elapsed().as_secs_f64(),
        "fleet connected"
    );
    Ok(fleet)
}

/// Scenario 1 again with Mosquitto (anonymous on loopback) in place of the embedded broker.
async fn compare_mosquitto(
    stack: &Stack,
    credentials: &[Credentials],
    profile: &Profile,
    report: &Report,
    machine: Option<Arc<MachineProbe>>,
) -> anyhow::Result<BrokerComparison> {
    let broker = stack.start_broker(BrokerKind::Mosquitto).await?;
    let management = stack.start_management(&broker).await?;
    let outcome = async {
        let floor = measure_floor(stack, &broker, profile, report.machine.cores).await?;
        let mut fleet = connect(stack, &broker, credentials, profile.telemetry).await?;
        let heartbeats = start_heartbeats(&fleet, profile.telemetry).await;
        // Mosquitto's CPU takes the embedded broker's column.
        let cpu = CpuProbe::new(
            broker.pid(),
            management.pid(),
            &stack.postgres_dir(),
            report.machine.cores,
        )
        .with_stages(StageProbe::new(management.metrics))
        .with_machine(machine);
        let latency = scenarios::latency(
            &mut fleet,
            &profile.comparison_rates,
            profile.latency_step_secs,
            1,
            Some(&cpu),
        )
        .await;
        heartbeats.stop().await;
        fleet.shutdown().await;
        anyhow::Ok((floor, latency?))
    }
    .await;
    management.kill().await;
    broker.stop().await;
    let (floor, latency) = outcome?;
    let p50_ratios = latency
        .iter()
        .filter_map(|at| {
            let embedded = report
                .latency
                .iter()
                .find(|e| (e.rate - at.rate).abs() < 1.0)?;
            let base = embedded.result.latency.p50_ms;
            (base > 0.0).then(|| (at.rate, at.result.latency.p50_ms / base))
        })
        .collect();
    Ok(BrokerComparison {
        broker: BrokerKind::Mosquitto,
        setup: "Debian's mosquitto, anonymous on a loopback listener (no password file or ACL), persistence off, set_tcp_nodelay true, max_queued_messages 10000; management, devices and the floor clients unchanged.".into(),
        floor,
        latency,
        p50_ratios,
    })
}

fn write(out: &Path, report: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let json = serde_json::to_string_pretty(report).context("cannot encode the report")?;
    std::fs::write(out.join("report.json"), json)
        .with_context(|| format!("cannot write {}/report.json", out.display()))?;
    std::fs::write(out.join("report.md"), report.markdown())
        .with_context(|| format!("cannot write {}/report.md", out.display()))?;
    Ok(())
}
