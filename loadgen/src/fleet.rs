//! A fleet of virtual devices: enrolled through management's own enrolment, connected in
//! batches, booked through management's booking path, and driven in *steps*: book a set of
//! devices, have each scan its ticket at a fixed offered rate, collect the start latencies, then
//! wait for the booked end and collect the stops.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures::{StreamExt, TryStreamExt};
use mujin_management::{booking, identities};
use mujin_protocol::identity::{Identity, Pepper};
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::{DeviceId, SessionId, StoreId};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cpu::{CpuPerScan, CpuProbe};
use crate::device::{BrokerAddress, Credentials, Observation, VirtualDevice};
use crate::machine::MachineStalls;
use crate::stages::{StageMeans, StageTotals};
use crate::statements::StatementCosts;
use crate::stats::{Percentiles, Samples};

/// Database work (enrolments, bookings) in flight at once.
const DB_CONCURRENCY: usize = 16;
/// Devices connecting at once: the broker is not stormed, and each batch must be in before
/// the next one starts.
const CONNECT_BATCH: usize = 100;
const CONNECT_BATCH_DEADLINE: Duration = Duration::from_secs(30);
/// How long a step waits for management to settle its commands before the next.
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

/// Which devices exist: `stores` stores of `devices_per_store` devices each.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub stores: usize,
    pub devices_per_store: usize,
    /// Store ids are this prefix and a number (`lg-s000`, …).
    pub store_prefix: String,
}

impl FleetSpec {
    /// Every (store, device) of the fleet, store by store.
    pub fn ids(&self) -> anyhow::Result<Vec<(StoreId, DeviceId)>> {
        let mut ids = Vec::with_capacity(self.stores * self.devices_per_store);
        for store in 0..self.stores {
            let store = StoreId::parse(&format!("{}-s{store:03}", self.store_prefix))?;
            for device in 0..self.devices_per_store {
                ids.push((store.clone(), DeviceId::parse(&format!("d{device:05}"))?));
            }
        }
        Ok(ids)
    }
}

/// Enrols every device of `spec` (a fresh token and device key each; the broker lets them in
/// once it reloaded its identities) and turns end-of-session warnings off in their stores:
/// the sessions here last seconds, and a warning per session is not what is measured.
pub async fn enrol(
    pool: &Pool,
    pepper: &Pepper,
    spec: &FleetSpec,
) -> anyhow::Result<Vec<Credentials>> {
    let ids = spec.ids()?;
    let credentials: Vec<Credentials> = futures::stream::iter(ids)
        .map(|(store, device)| async move {
            let identity = Identity::Device {
                store: store.clone(),
                device: device.clone(),
            };
            let enrolled = identities::enrol(pool, pepper, &identity, Utc::now())
                .await
                .with_context(|| format!("cannot enrol {store}/{device}"))?;
            let key = enrolled
                .device_key
                .with_context(|| format!("enrolment gave {store}/{device} no device key"))?;
            anyhow::Ok(Credentials {
                username: identity.username(),
                token: enrolled.token.expose().to_owned(),
                key: Arc::new(key),
                store,
                device,
            })
        })
        .buffered(DB_CONCURRENCY)
        .try_collect()
        .await?;
    let stores: HashSet<StoreId> = credentials.iter().map(|c| c.store.clone()).collect();
    for store in stores {
        let no_warnings = booking::StoreSettingsChange {
            warn_minutes: Some(0),
            ..booking::StoreSettingsChange::default()
        };
        booking::update_store_settings(pool, &store, no_warnings)
            .await
            .with_context(|| format!("cannot turn warnings off in {store}"))?;
    }
    Ok(credentials)
}

/// What one step of scans gave.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepOutcome {
    /// Scans per second offered.
    pub offered_rate: f64,
    pub scans: usize,
    /// Scans whose start command arrived.
    pub started: usize,
    /// Refused scans by reason.
    pub rejected: BTreeMap<String, usize>,
    /// Scans that got neither a start nor a refusal before the deadline.
    pub unanswered: usize,
    /// Scans the device could not even queue (its client queue was full).
    pub send_errors: usize,
    /// How long offering the scans took.
    pub offer_secs: f64,
    /// From the first scan to the last start: `started / completion_secs` is the rate reached.
    pub completion_secs: f64,
    /// Scan → start, measured at the device.
    pub latency: Percentiles,
    /// Stops received for the sessions started.
    pub stopped: usize,
    /// Stop command received − booked end.
    pub stop_lateness: Percentiles,
    /// CPU per answered scan over the scan phase, when measured.
    pub cpu: Option<CpuPerScan>,
    /// What the database executed over the scan phase, when measured.
    pub statements: Option<StatementCosts>,
    /// Management's stages over the scan phase, when measured.
    pub stages: Option<StageMeans>,
    /// The machine's own stalls over the scan phase, when measured.
    pub machine: Option<MachineStalls>,
    #[serde(skip)]
    pub latency_samples: Samples,
    #[serde(skip)]
    pub lateness_samples: Samples,
    #[serde(skip)]
    sessions: HashMap<SessionId, usize>,
}

impl StepOutcome {
    /// Authorizations per second reached (sessions started over the time they took).
    pub fn achieved_rate(&self) -> f64 {
        if self.completion_secs > 0.0 {
            self.started as f64 / self.completion_secs
        } else {
            0.0
        }
    }

    /// Every scan was answered with a start.
    pub fn all_started(&self) -> bool {
        self.started == self.scans && self.scans > 0
    }
}

/// Connected virtual devices and what they observe.
pub struct Fleet {
    devices: Vec<Arc<VirtualDevice>>,
    tasks: Vec<JoinHandle<()>>,
    observations: mpsc::UnboundedReceiver<Observation>,
    stop: CancellationToken,
    pool: Pool,
    booking_key: Arc<SigningKey>,
    /// Bookings per second seen so far, to plan how long the next ones take.
    booking_rate: f64,
    /// Whether [`Fleet::vacuum`] vacuums (see [`Fleet::vacuum_between_scenarios`]).
    vacuum_between_scenarios: bool,
}

impl Fleet {
    /// Connects every device, [`CONNECT_BATCH`] at a time, each batch waited for.
    pub async fn connect(
        credentials: &[Credentials],
        broker: &BrokerAddress,
        pool: Pool,
        booking_key: Arc<SigningKey>,
        heartbeat: Duration,
    ) -> anyhow::Result<Fleet> {
        let (observe, observations) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let mut fleet = Fleet {
            devices: Vec::with_capacity(credentials.len()),
            tasks: Vec::with_capacity(credentials.len()),
            observations,
            stop: stop.clone(),
            pool,
            booking_key,
            booking_rate: 200.0,
            vacuum_between_scenarios: false,
        };
        for batch in credentials.chunks(CONNECT_BATCH) {
            let first = fleet.devices.len();
            for credentials in batch {
                let index = fleet.devices.len();
                let (device, task) = VirtualDevice::spawn(
                    index,
                    credentials,
                    broker,
                    observe.clone(),
                    (heartbeat, stop.clone()),
                );
                fleet.devices.push(device);
                fleet.tasks.push(task);
            }
            let deadline = Instant::now() + CONNECT_BATCH_DEADLINE;
            while !fleet.devices[first..].iter().all(|d| d.is_ready()) {
                if Instant::now() >= deadline {
                    let ready = fleet.devices.iter().filter(|d| d.is_ready()).count();
                    fleet.shutdown().await;
                    anyhow::bail!(
                        "only {ready} of {} devices connected within {CONNECT_BATCH_DEADLINE:?} of their batch (a broker connection limit?)",
                        first + batch.len()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(fleet)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Has [`Fleet::vacuum`], which the benchmark calls between scenarios, run `VACUUM
    /// (ANALYZE)` of the database: for the benchmark's own cluster, whose autovacuum is off (see
    /// `stack::prepare_cluster`). Not after every step: each ANALYZE makes every connection of
    /// management plan its statements again on its next scan, and the first ~100 ms of every
    /// round then measured that, not mujin running. Not before the first scenario either: the
    /// plans made for the empty sessions table would then last through it (docs/benchmarks.md,
    /// fix 30).
    pub fn vacuum_between_scenarios(mut self) -> Self {
        self.vacuum_between_scenarios = true;
        self
    }

    /// How many devices are connected right now.
    pub fn ready(&self) -> usize {
        self.devices.iter().filter(|d| d.is_ready()).count()
    }

    /// Books each device from now until its `end` (whole seconds) and returns the tickets.
    pub async fn book(
        &mut self,
        devices: &[usize],
        end: impl Fn(usize) -> DateTime<Utc>,
    ) -> anyhow::Result<Vec<String>> {
        let started = Instant::now();
        let pool = &self.pool;
        let key = &self.booking_key;
        let tickets: Vec<String> = futures::stream::iter(devices.iter().enumerate())
            .map(|(position, index)| {
                let device = &self.devices[*index];
                let ends_at = end(position);
                async move {
                    let now = Utc::now();
                    let booked = booking::reserve(
                        pool,
                        key,
                        &device.store,
                        &device.device,
                        now,
                        ends_at,
                        now,
                    )
                    .await
                    .with_context(|| format!("cannot book {}/{}", device.store, device.device))?;
                    anyhow::Ok(booked.ticket)
                }
            })
            .buffered(DB_CONCURRENCY)
            .try_collect()
            .await?;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        self.booking_rate = (devices.len() as f64 / secs).max(20.0);
        Ok(tickets)
    }

    /// A booked end late enough for `count` bookings and their scans at `rate` to be done, with
    /// `slack` to spare.
    pub fn plan_end(&self, count: usize, rate: f64, slack: Duration) -> DateTime<Utc> {
        let booking = count as f64 / self.booking_rate * 1.5;
        let scanning = count as f64 / rate;
        let total = Duration::from_secs_f64(booking + scanning) + slack;
        Utc::now() + chrono::Duration::from_std(total).unwrap_or_default()
    }

    /// One standard step: books `count` devices until a common end, scans at `rate`, collects
    /// the starts, then waits for the booked end and collects the stops.
    pub async fn step(&mut self, count: usize, rate: f64) -> anyhow::Result<StepOutcome> {
        self.step_measured(count, rate, None).await
    }

    /// [`Fleet::step`], reading the CPU time of `cpu`'s processes just before the first scan
    /// is offered and when the last is answered (not over the booking before nor the wait for
    /// the stops after): [`StepOutcome::cpu`].
    pub async fn step_measured(
        &mut self,
        count: usize,
        rate: f64,
        cpu: Option<&CpuProbe>,
    ) -> anyhow::Result<StepOutcome> {
        let count = count.min(self.len());
        let devices: Vec<usize> = (0..count).collect();
        let end = self.plan_end(count, rate, Duration::from_secs(4));
        let tickets = self.book(&devices, |_| end).await?;
        let statements = cpu.and_then(CpuProbe::statements);
        if let Some(statements) = statements {
            if let Err(error) = statements.reset().await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "cannot reset the statement statistics"
                );
            }
        }
        let stages_before = read_stages(cpu).await;
        let machine = cpu
            .and_then(CpuProbe::machine)
            .map(|machine| (machine, machine.start_phase()));
        let before = cpu.map(|probe| (probe.sample(), Instant::now()));
        let mut outcome = self.scan(&devices, tickets, rate, end).await;
        outcome.machine = machine.map(|(machine, phase)| machine.end_phase(phase));
        if let (Some(probe), Some((before, started))) = (cpu, before) {
            let spent = probe.sample().since(&before);
            let answered = outcome.started + outcome.rejected.values().sum::<usize>();
            let phase = started.elapsed().as_secs_f64();
            outcome.cpu = CpuPerScan::new(spent, answered, phase, probe.cores());
            if let Some(statements) = statements {
                outcome.statements = statements.read(answered).await.ok();
            }
            if let (Some(before), Some(after)) = (stages_before, read_stages(cpu).await) {
                outcome.stages = after.since(&before);
            }
        }
        self.wait_stops(&mut outcome, end + chrono::Duration::seconds(20))
            .await;
        self.wait_settled().await;
        Ok(outcome)
    }

    /// Has `devices[i]` scan `tickets[i]`, at `rate` scans per second, and collects starts and
    /// refusals until each scan is answered or `deadline` passes.
    pub async fn scan(
        &mut self,
        devices: &[usize],
        tickets: Vec<String>,
        rate: f64,
        deadline: DateTime<Utc>,
    ) -> StepOutcome {
        let mut outcome = StepOutcome {
            offered_rate: rate,
            scans: devices.len(),
            ..StepOutcome::default()
        };
        let mut waiting: HashSet<usize> = devices.iter().copied().collect();
        let scanners: Vec<Arc<VirtualDevice>> =
            devices.iter().map(|i| self.devices[*i].clone()).collect();
        let first_scan = Instant::now();
        let pacer = tokio::spawn(offer(scanners, tickets, rate));
        let deadline = Instant::now() + (deadline - Utc::now()).to_std().unwrap_or_default();
        let mut last_start = first_scan;
        while !waiting.is_empty() {
            let observation = tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                observation = self.observations.recv() => match observation {
                    Some(observation) => observation,
                    None => break,
                },
            };
            match observation {
                Observation::Started {
                    device,
                    session_id,
                    latency,
                } if waiting.remove(&device) => {
                    outcome.started += 1;
                    last_start = Instant::now();
                    outcome.sessions.insert(session_id, device);
                    if let Some(latency) = latency {
                        outcome.latency_samples.record(latency);
                    }
                }
                Observation::Rejected { device, reason } if waiting.remove(&device) => {
                    *outcome.rejected.entry(reason.to_string()).or_default() += 1;
                }
                _ => {}
            }
        }
        match pacer.await {
            Ok((send_errors, offered)) => {
                outcome.send_errors = send_errors;
                outcome.offer_secs = offered.as_secs_f64();
            }
            Err(error) => tracing::warn!(%error, "the scan pacer failed"),
        }
        outcome.unanswered = waiting.len();
        outcome.completion_secs = last_start.duration_since(first_scan).as_secs_f64();
        outcome.latency = outcome.latency_samples.percentiles();
        outcome
    }

    /// Waits until every session started in `outcome` got its stop command, or `deadline`.
    pub async fn wait_stops(&mut self, outcome: &mut StepOutcome, deadline: DateTime<Utc>) {
        let mut open: HashSet<SessionId> = outcome.sessions.keys().copied().collect();
        let deadline = Instant::now() + (deadline - Utc::now()).to_std().unwrap_or_default();
        while !open.is_empty() {
            let observation = tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                observation = self.observations.recv() => match observation {
                    Some(observation) => observation,
                    None => break,
                },
            };
            if let Observation::Stopped {
                session_id,
                lateness_ms,
                ..
            } = observation
            {
                if open.remove(&session_id) {
                    outcome.stopped += 1;
                    if let Some(lateness) = lateness_ms {
                        outcome.lateness_samples.record_signed_ms(lateness);
                    }
                }
            }
        }
        outcome.stop_lateness = outcome.lateness_samples.percentiles();
    }

    /// Waits (at most [`SETTLE_DEADLINE`]) until management has settled every command of the
    /// fleet's stores, i.e. taken in the acks of the step's starts and stops. A device sees its
    /// stop before management has the ack: without this, the next step would start on that
    /// backlog (a step's sessions all end at once) and measure it.
    pub async fn wait_settled(&self) {
        self.wait_commands_settled().await;
    }

    /// `VACUUM (ANALYZE)` of the database, when told to ([`Fleet::vacuum_between_scenarios`]);
    /// once management has settled.
    pub async fn vacuum(&self) {
        if !self.vacuum_between_scenarios {
            return;
        }
        self.wait_commands_settled().await;
        let started = Instant::now();
        let vacuumed = async {
            self.pool
                .get()
                .await?
                .batch_execute("VACUUM (ANALYZE)")
                .await?;
            anyhow::Ok(())
        }
        .await;
        match vacuumed {
            Ok(()) => tracing::debug!(secs = started.elapsed().as_secs_f64(), "vacuumed"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "cannot vacuum"),
        }
    }

    async fn wait_commands_settled(&self) {
        let mut stores: Vec<String> = self.devices.iter().map(|d| d.store.to_string()).collect();
        stores.sort();
        stores.dedup();
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let pending = async {
                let client = self.pool.get().await?;
                let row = client
                    .query_one(
                        "SELECT count(*) FROM commands
                         WHERE status IN ('queued', 'sent') AND store_id = ANY($1)",
                        &[&stores],
                    )
                    .await?;
                anyhow::Ok(row.get::<_, i64>(0))
            }
            .await;
            match pending {
                Ok(0) => return,
                Ok(pending) if Instant::now() >= deadline => {
                    tracing::warn!(pending, "commands still unsettled after the step; going on");
                    return;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "cannot read the pending commands"
                    );
                    return;
                }
            }
        }
    }

    /// Starts every device's heartbeat, spread evenly over `every`.
    pub fn start_telemetry(&self, every: Duration) -> Telemetry {
        let devices = self.devices.clone();
        let stop = self.stop.child_token();
        let task = tokio::spawn(heartbeats(devices, every, stop.clone()));
        Telemetry { stop, task }
    }

    /// Disconnects every device and ends their tasks.
    pub async fn shutdown(self) {
        for device in &self.devices {
            device.disconnect();
        }
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .is_err()
        {
            tracing::warn!("some devices did not disconnect in time");
        }
        self.stop.cancel();
    }
}

/// The heartbeats of a fleet, until stopped.
pub struct Telemetry {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Telemetry {
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Publishes the scans, `rate` per second (open loop: late ones are sent at once, not
/// skipped); returns how many could not be queued and how long it took.
async fn offer(
    devices: Vec<Arc<VirtualDevice>>,
    tickets: Vec<String>,
    rate: f64,
) -> (usize, Duration) {
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut errors = 0;
    for (n, (device, ticket)) in devices.iter().zip(&tickets).enumerate() {
        let due = started + period.mul_f64(n as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        if let Err(error) = device.scan(ticket) {
            tracing::warn!(device = %device.device, %error, "scan not sent");
            errors += 1;
        }
    }
    (errors, started.elapsed())
}

async fn heartbeats(devices: Vec<Arc<VirtualDevice>>, every: Duration, stop: CancellationToken) {
    if devices.is_empty() {
        return;
    }
    const TICK: Duration = Duration::from_millis(20);
    let per_tick = devices.len() as f64 * TICK.as_secs_f64() / every.as_secs_f64().max(0.001);
    let mut tick = tokio::time::interval(TICK);
    let mut owed = 0.0;
    let mut next = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            if let Err(error) = devices[next].telemetry(every) {
                tracing::debug!(%error, "heartbeat dropped");
            }
            next = (next + 1) % devices.len();
        }
    }
}

/// Management's stage totals now, when `cpu` reads them (a failed scrape is logged and reads as
/// nothing: the step goes on without the breakdown).
async fn read_stages(cpu: Option<&CpuProbe>) -> Option<StageTotals> {
    let probe = cpu?.stages()?;
    match probe.read().await {
        Ok(totals) => Some(totals),
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot read management's scan stages"
            );
            None
        }
    }
}
