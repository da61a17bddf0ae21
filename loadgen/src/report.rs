//! The benchmark report: the machine, the date, each scenario's parameters and results and the
//! targets met or not, as JSON and as Markdown.

use std::fmt::Write;

use serde::Serialize;

use crate::cpu::CpuPerScan;
use crate::fleet::StepOutcome;
use crate::floor::per_authorization::{
    AuthorizationCpu, COMMITS_PER_AUTHORIZATION, DEVICE_MESSAGES_PER_AUTHORIZATION,
    DEVICE_SIGNS_PER_AUTHORIZATION, MANAGEMENT_MESSAGES_PER_AUTHORIZATION,
    MANAGEMENT_SIGNS_PER_AUTHORIZATION, MANAGEMENT_VERIFIES_PER_AUTHORIZATION,
    MESSAGES_PER_AUTHORIZATION,
};
use crate::floor::throughput::{ThroughputFloor, MAX_UNDELIVERED, WARM_UP};
use crate::floor::{Floor, SignatureFloor, SIGNS_PER_AUTHORIZATION, VERIFIES_PER_AUTHORIZATION};
use crate::scenarios::{FleetLoad, LatencyAtRate, StopsOnTime, Throughput, THROUGHPUT_P99_MS};
use crate::stack::BrokerKind;
use crate::stages::StageMeans;
use crate::statements::StatementCosts;
use crate::stats::Percentiles;

/// Where the benchmarks ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    /// Read from /proc (unknown parts stay "unknown").
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split(':').nth(1))
            .map_or("unknown".to_owned(), |name| name.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or("unknown".to_owned(), |release| release.trim().to_owned());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: (memory_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            kernel,
        }
    }
}

/// Scenario 5: scenario 1 against another broker.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerComparison {
    pub broker: BrokerKind,
    /// How that broker was set up (authentication, ACL).
    pub setup: String,
    pub floor: Floor,
    pub latency: Vec<LatencyAtRate>,
    /// This broker's p50 / the embedded broker's p50, per rate.
    pub p50_ratios: Vec<(f64, f64)>,
}

/// One target and whether it was met (`None`: not measured as specified).
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// Everything one `mujin-loadgen bench` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub git_commit: Option<String>,
    pub machine: Machine,
    pub quick: bool,
    /// How the scenarios were built, in words.
    pub notes: Vec<String>,
    pub fleet_devices: usize,
    pub floor: Floor,
    pub latency: Vec<LatencyAtRate>,
    pub throughput: Option<Throughput>,
    pub fleet: Option<FleetLoad>,
    pub stops: Option<StopsOnTime>,
    pub broker_comparison: Option<BrokerComparison>,
    pub targets: Vec<Target>,
}

/// The offered rate the latency targets are set at (scans per second).
const TARGET_RATE: f64 = 500.0;
/// The machine size the targets are set for.
const TARGET_CORES: usize = 2;
/// The throughput target, authorizations per second on [`TARGET_CORES`] cores.
const TARGET_THROUGHPUT: f64 = 5000.0;

/// CPU per authorization the throughput target allows in all: 400 µs on 2 cores.
fn target_budget_us() -> f64 {
    TARGET_CORES as f64 * 1_000_000.0 / TARGET_THROUGHPUT
}

impl Report {
    /// Fills in the targets from the results.
    pub fn judge(&mut self) {
        let mut targets = Vec::new();
        let at_500 = self
            .latency
            .iter()
            .find(|l| (l.rate - TARGET_RATE).abs() < 1.0);
        if let Some(at_500) = at_500 {
            let p50 = at_500.result.latency.p50_ms;
            let floor = self.floor.p50_ms();
            targets.push(Target {
                name: "scan → start p50 at 500 scans/s".into(),
                target: "≤ 2 × floor".into(),
                measured: format!(
                    "{p50:.2} ms = {:.1} × floor ({floor:.2} ms)",
                    ratio(p50, floor)
                ),
                met: Some(at_500.result.all_started() && p50 <= 2.0 * floor),
            });
            let p99 = at_500.result.latency.p99_ms;
            targets.push(Target {
                name: "scan → start p99 at 500 scans/s".into(),
                target: "≤ 10 ms".into(),
                measured: format!("{p99:.2} ms"),
                met: Some(at_500.result.all_started() && p99 <= 10.0),
            });
        }
        if let Some(throughput) = &self.throughput {
            let sustained = throughput.sustained_rate.unwrap_or(0.0);
            targets.push(Target {
                name: format!("sustained authorizations/s (p99 ≤ {THROUGHPUT_P99_MS} ms)"),
                target: "≥ 5,000/s".into(),
                measured: format!(
                    "{sustained:.0}/s offered (peak reached {:.0}/s){}{}{}",
                    throughput.peak_achieved_rate,
                    cpu_ceiling_words(&throughput.steps),
                    self.floor
                        .signatures
                        .ceiling_per_sec(TARGET_CORES)
                        .map_or(String::new(), |ceiling| format!(
                            "; signatures alone: at most {ceiling:.0}/s"
                        )),
                    self.floor
                        .throughput
                        .as_ref()
                        .map_or(String::new(), throughput_floor_words)
                ),
                met: Some(sustained >= TARGET_THROUGHPUT),
            });
        }
        if let Some(fleet) = &self.fleet {
            let total = fleet.broker_rss_mib + fleet.management_rss_mib;
            targets.push(Target {
                name: "broker + management resident memory, 10,000 devices".into(),
                target: "< 1 GiB".into(),
                measured: format!("{total:.0} MiB with {} devices", fleet.devices),
                met: (fleet.devices >= 10_000).then_some(total < 1024.0),
            });
        }
        if let Some(stops) = &self.stops {
            let p99 = stops.result.stop_lateness.p99_ms;
            let complete = stops.result.stopped == stops.sessions;
            targets.push(Target {
                name: "stop lateness p99".into(),
                target: "≤ 100 ms".into(),
                measured: format!(
                    "{p99:.1} ms over {} of {} sessions",
                    stops.result.stopped, stops.sessions
                ),
                met: Some(complete && p99 <= 100.0),
            });
        }
        self.targets = targets;
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = self.write_markdown(&mut out);
        out
    }

    fn write_markdown(&self, out: &mut String) -> std::fmt::Result {
        let mode = if self.quick { "quick" } else { "full" };
        writeln!(out, "# mujin benchmark report ({mode} run)\n")?;
        writeln!(out, "- date: {}", self.date)?;
        writeln!(
            out,
            "- commit: {}",
            self.git_commit.as_deref().unwrap_or("unknown")
        )?;
        let m = &self.machine;
        writeln!(
            out,
            "- machine: {}, {} cores, {} GiB, Linux {}",
            m.cpu, m.cores, m.memory_gib, m.kernel
        )?;
        writeln!(out, "- fleet: {} virtual devices\n", self.fleet_devices)?;
        writeln!(out, "## Targets\n")?;
        writeln!(
            out,
            "| target | wanted | measured | met |\n|---|---|---|---|"
        )?;
        for target in &self.targets {
            let met = match target.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured as specified",
            };
            writeln!(
                out,
                "| {} | {} | {} | {met} |",
                target.name, target.target, target.measured
            )?;
        }
        writeln!(out, "\n## Floor (same run, same broker and database)\n")?;
        floor_table(out, &self.floor)?;
        writeln!(out, "\n## 1. Scan → start latency\n")?;
        latency_section(out, &self.latency, &self.floor, self.machine.cores)?;
        let target_step = self
            .latency
            .iter()
            .filter_map(|at| Some((at.rate, at.result.statements.as_ref()?)))
            .min_by(|a, b| {
                (a.0 - TARGET_RATE)
                    .abs()
                    .total_cmp(&(b.0 - TARGET_RATE).abs())
            });
        if let Some((rate, statements)) = target_step {
            statements_table(out, rate, statements)?;
        }
        if let Some(throughput) = &self.throughput {
            writeln!(out, "\n## 2. Throughput\n")?;
            writeln!(
                out,
                "Sustained (every scan started, p99 ≤ {THROUGHPUT_P99_MS} ms): **{}**; peak rate of starts reached: {:.0}/s.\n",
                throughput
                    .sustained_rate
                    .map_or("none".to_owned(), |rate| format!("{rate:.0} scans/s")),
                throughput.peak_achieved_rate
            )?;
            step_table(out, &throughput.steps)?;
            let by_step: Vec<(f64, Option<&CpuPerScan>)> = throughput
                .steps
                .iter()
                .map(|step| (step.offered_rate, step.cpu.as_ref()))
                .collect();
            cpu_table(out, &by_step, self.machine.cores)?;
        }
        if let Some(fleet) = &self.fleet {
            writeln!(out, "\n## 3. Fleet\n")?;
            writeln!(
                out,
                "{} devices sending telemetry every {} s, scans at {}/s on top.\n",
                fleet.devices, fleet.telemetry_secs, fleet.scan_rate
            )?;
            writeln!(
                out,
                "| process | peak RSS | CPU (% of one core) |\n|---|---|---|"
            )?;
            writeln!(
                out,
                "| broker | {:.1} MiB | {:.0} % |",
                fleet.broker_rss_mib, fleet.broker_cpu_percent
            )?;
            writeln!(
                out,
                "| management | {:.1} MiB | {:.0} % |\n",
                fleet.management_rss_mib, fleet.management_cpu_percent
            )?;
            step_table(out, std::slice::from_ref(&fleet.scans))?;
        }
        if let Some(stops) = &self.stops {
            writeln!(out, "\n## 4. Stops on time\n")?;
            writeln!(
                out,
                "{} sessions with booked ends spread over {} s (started beforehand at {}/s); lateness of the stop command at the device after the booked end:\n",
                stops.sessions, stops.spread_secs, stops.start_rate
            )?;
            writeln!(
                out,
                "| stopped | p50 | p90 | p99 | max |\n|---|---|---|---|---|"
            )?;
            let l = &stops.result.stop_lateness;
            writeln!(
                out,
                "| {} / {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
                stops.result.stopped, stops.sessions, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            )?;
        }
        if let Some(comparison) = &self.broker_comparison {
            writeln!(out, "\n## 5. Broker comparison: {:?}\n", comparison.broker)?;
            writeln!(out, "{}\n", comparison.setup)?;
            floor_table(out, &comparison.floor)?;
            writeln!(out)?;
            latency_section(
                out,
                &comparison.latency,
                &comparison.floor,
                self.machine.cores,
            )?;
            writeln!(
                out,
                "\n| rate | p50 {:?} / p50 embedded |\n|---|---|",
                comparison.broker
            )?;
            for (rate, ratio) in &comparison.p50_ratios {
                writeln!(out, "| {rate:.0}/s | {ratio:.2} |")?;
            }
        }
        writeln!(out, "\n## How the scenarios are built\n")?;
        for note in &self.notes {
            writeln!(out, "- {note}")?;
        }
        Ok(())
    }
}

fn ratio(value: f64, floor: f64) -> f64 {
    if floor > 0.0 {
        value / floor
    } else {
        0.0
    }
}

fn floor_table(out: &mut String, floor: &Floor) -> std::fmt::Result {
    writeln!(
        out,
        "| floor | n | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|"
    )?;
    percentile_row(out, "MQTT round trip (QoS 1)", &floor.mqtt_round_trip)?;
    percentile_row(out, "durable single-row INSERT", &floor.durable_insert)?;
    writeln!(
        out,
        "\nFloor p50 (round trip + insert): {:.2} ms",
        floor.p50_ms()
    )?;
    signatures_line(out, &floor.signatures)?;
    match &floor.throughput {
        Some(throughput) => throughput_floor_tables(out, throughput),
        None => Ok(()),
    }
}

/// What the protocol's signatures alone cost per authorization, and the rate they allow.
fn signatures_line(out: &mut String, signatures: &SignatureFloor) -> std::fmt::Result {
    let Some(ceiling) = signatures.ceiling_per_sec(TARGET_CORES) else {
        return Ok(());
    };
    writeln!(
        out,
        "\nSignatures (Ed25519 with mujin's code, a signed scan, same run): sign {:.1} µs, verify {:.1} µs; per authorization {SIGNS_PER_AUTHORIZATION} signs and {VERIFIES_PER_AUTHORIZATION} verifications (device: scan, ack, state; management: the scan, its ticket, the ack, the state, and signing the start and the desired state; agent: verifying those two) = {:.0} µs of CPU → at most {ceiling:.0} authorizations/s on {TARGET_CORES} cores from signatures alone.",
        signatures.sign_us,
        signatures.verify_us,
        signatures.us_per_authorization()
    )
}

/// "; floor of CPU per authorization …", for the throughput target's measured text.
fn throughput_floor_words(throughput: &ThroughputFloor) -> String {
    let floor = &throughput.per_authorization;
    let part = |cpu: &AuthorizationCpu| match cpu.ceiling_per_sec {
        Some(ceiling) => format!("{:.0} µs → at most {ceiling:.0}/s", cpu.total_us),
        None => "not measured".to_owned(),
    };
    format!(
        "; throughput floor (nothing but the unavoidable work, same run): server side {}, whole bench {} on {} cores",
        part(&floor.server),
        part(&floor.bench),
        floor.cores
    )
}

/// What the broker and PostgreSQL carry per second, what each message and commit costs, and the
/// least CPU an authorization can cost with them.
fn throughput_floor_tables(out: &mut String, throughput: &ThroughputFloor) -> std::fmt::Result {
    let (mqtt, commits) = (&throughput.mqtt, &throughput.commits);
    writeln!(
        out,
        "\nThroughput floor (same run, same broker and database):\n"
    )?;
    writeln!(
        out,
        "| measured | in the window | per second | server CPU | client CPU |\n|---|---|---|---|---|"
    )?;
    writeln!(
        out,
        "| MQTT QoS 1 messages, {} publishers → 1 subscriber, {}-byte signed scans | {} in {:.1} s | {:.0}/s | broker {:.1} µs per message | {:.1} µs per message (sending {:.1} µs, receiving {:.1} µs) |",
        mqtt.publishers,
        mqtt.payload_bytes,
        mqtt.delivered,
        mqtt.window_secs,
        mqtt.messages_per_sec,
        mqtt.broker_us,
        mqtt.client_us,
        mqtt.publisher_us,
        mqtt.subscriber_us
    )?;
    writeln!(
        out,
        "| durable commits, {} connections, single-row INSERTs | {} in {:.1} s | {:.0}/s | PostgreSQL {:.1} µs per commit | {:.1} µs per commit |",
        commits.connections,
        commits.commits,
        commits.window_secs,
        commits.commits_per_sec,
        commits.server_us,
        commits.client_us
    )?;
    let floor = &throughput.per_authorization;
    let budget = target_budget_us();
    writeln!(
        out,
        "\nCPU per authorization at the least ({MESSAGES_PER_AUTHORIZATION} messages published and delivered, {COMMITS_PER_AUTHORIZATION} durable commits, the signatures above):\n"
    )?;
    writeln!(
        out,
        "| floor | signatures | broker | PostgreSQL | clients | total | ceiling on {} cores | ≤ {budget:.0} µs (5,000/s on {TARGET_CORES} cores) |\n|---|---|---|---|---|---|---|---|",
        floor.cores
    )?;
    authorization_row(
        out,
        "server side: management, broker, PostgreSQL",
        &floor.server,
    )?;
    authorization_row(
        out,
        "whole bench: the devices on the same cores too",
        &floor.bench,
    )?;
    writeln!(out, "\n{}", throughput_floor_how())
}

fn authorization_row(out: &mut String, name: &str, cpu: &AuthorizationCpu) -> std::fmt::Result {
    let ceiling = cpu
        .ceiling_per_sec
        .map_or("–".to_owned(), |c| format!("{c:.0}/s"));
    let within = if cpu.total_us <= target_budget_us() {
        "yes"
    } else {
        "**no**"
    };
    writeln!(
        out,
        "| {name} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {ceiling} | {within} |",
        cpu.signatures_us, cpu.broker_us, cpu.postgres_us, cpu.clients_us, cpu.total_us
    )
}

/// How the throughput floor's figures are obtained.
fn throughput_floor_how() -> String {
    format!(
        "How: messages — each publisher (its own connection) publishes a signed scan to its own topic as fast as the flow allows (at most {MAX_UNDELIVERED} messages published and not yet delivered, so the broker never drops one); the subscriber takes them all with one wildcard and counts them over the window, which opens after {:.2} s of warm-up. Broker µs = the broker process's user + system CPU (/proc) over the window per message delivered; sending and receiving µs = the CPU of the publishers' thread and of the subscriber's thread (each its own runtime) per message; the client total is this whole process. Commits — each connection (as many as the messages management handles at once) commits one single-row INSERT after the other (synchronous_commit on); PostgreSQL µs = the CPU of the postmaster and every process it forked per commit; client µs = this process's CPU per commit. Per authorization — messages: the device's scan, ack and state and management's scan result and start command (management's desired state and its two events are published but not delivered in the bench: left out); commits: the scan's transaction and the ack's settle (the state after a start commits nothing: the earlier exit it repeats is known recorded). Server side = management's {MANAGEMENT_SIGNS_PER_AUTHORIZATION} signs and {MANAGEMENT_VERIFIES_PER_AUTHORIZATION} verifications + the broker's CPU for the messages + PostgreSQL's for the commits + management's side of each message (receiving {DEVICE_MESSAGES_PER_AUTHORIZATION}, sending {MANAGEMENT_MESSAGES_PER_AUTHORIZATION}) and of each commit. Whole bench = that + the devices' {DEVICE_SIGNS_PER_AUTHORIZATION} signs (the virtual devices verify nothing) + their side of each message (sending {DEVICE_MESSAGES_PER_AUTHORIZATION}, receiving {MANAGEMENT_MESSAGES_PER_AUTHORIZATION}). Ceiling = cores × 1,000,000 / total µs. Both are floors: here the messages travel many to a connection and are read and written in batches, where a device's scan, ack and state each go alone, and nothing else management does is counted. /proc counts CPU in 10 ms ticks.",
        WARM_UP.as_secs_f64()
    )
}

fn percentile_row(out: &mut String, name: &str, p: &Percentiles) -> std::fmt::Result {
    writeln!(
        out,
        "| {name} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
        p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
    )
}

/// Scenario 1's tables (also scenario 5's, on the other broker): the latencies, the CPU per
/// authorization and where the time goes, for what was measured.
fn latency_section(
    out: &mut String,
    latency: &[LatencyAtRate],
    floor: &Floor,
    cores: usize,
) -> std::fmt::Result {
    latency_table(out, latency, floor.p50_ms())?;
    rounds_table(out, latency)?;
    let by_rate: Vec<(f64, Option<&CpuPerScan>)> = latency
        .iter()
        .map(|at| (at.rate, at.result.cpu.as_ref()))
        .collect();
    cpu_table(out, &by_rate, cores)?;
    let stages: Vec<(f64, &Percentiles, &StageMeans)> = latency
        .iter()
        .filter_map(|at| {
            let means = at.result.stages.as_ref()?;
            Some((at.rate, &at.result.latency, means))
        })
        .collect();
    crate::stages::markdown(out, &stages, floor)
}

fn latency_table(out: &mut String, results: &[LatencyAtRate], floor: f64) -> std::fmt::Result {
    writeln!(
        out,
        "| offered rate | rounds × scans | started | refused / unanswered | p50 | p90 | p99 | max | p50 / floor |\n|---|---|---|---|---|---|---|---|---|"
    )?;
    for at in results {
        let r = &at.result;
        let l = &r.latency;
        writeln!(
            out,
            "| {:.0}/s | {} × {} | {} | {} / {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} |",
            at.rate,
            at.rounds,
            at.scans_per_round,
            r.started,
            r.rejected.values().sum::<usize>(),
            r.unanswered,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms,
            ratio(l.p50_ms, floor)
        )?;
    }
    Ok(())
}

/// Each round of several, next to what the machine did over its scan phase: a round's p99 far
/// above the others' with the machine stalled meanwhile is the machine's, not mujin's.
fn rounds_table(out: &mut String, results: &[LatencyAtRate]) -> std::fmt::Result {
    if results.iter().all(|at| at.each_round.len() < 2) {
        return Ok(());
    }
    writeln!(
        out,
        "\nEach round, with the machine's own stalls over its scan phase (a thread at real-time priority sleeping 5 ms at a time: its latest wake and its wakes over 5 ms late; the hypervisor's steal time over both cores; the slowest of a 4 KiB write + fdatasync every 100 ms next to the database):\n"
    )?;
    writeln!(
        out,
        "| offered rate | round | p50 | p99 | max | latest wake | wakes > 5 ms late | steal | slowest fdatasync |\n|---|---|---|---|---|---|---|---|---|"
    )?;
    for at in results {
        for (n, round) in at.each_round.iter().enumerate() {
            let l = &round.latency;
            let machine = match &round.machine {
                Some(m) => format!(
                    "{:.1} ms{} | {} | {:.0} ms | {:.1} ms",
                    m.max_oversleep_ms,
                    if m.realtime { "" } else { " (not real-time)" },
                    m.stalls_over_5ms,
                    m.steal_ms,
                    m.max_fdatasync_ms
                ),
                None => "– | – | – | –".into(),
            };
            writeln!(
                out,
                "| {:.0}/s | {} | {:.2} ms | {:.2} ms | {:.2} ms | {machine} |",
                at.rate,
                n + 1,
                l.p50_ms,
                l.p99_ms,
                l.max_ms
            )?;
        }
    }
    Ok(())
}

/// "; CPU … per scan at the last step → at most …/s on N cores", or nothing unmeasured.
fn cpu_ceiling_words(steps: &[StepOutcome]) -> String {
    let Some((rate, cpu)) = steps
        .iter()
        .rev()
        .find_map(|step| Some((step.offered_rate, step.cpu.as_ref()?)))
    else {
        return String::new();
    };
    match cpu.ceiling_per_sec {
        Some(ceiling) => format!(
            "; CPU {:.0} µs per scan at {rate:.0}/s → at most {ceiling:.0}/s on {} cores",
            cpu.total_us, cpu.cores
        ),
        None => String::new(),
    }
}

/// What the database executed over one step's scan phase, per answered scan.
fn statements_table(out: &mut String, rate: f64, statements: &StatementCosts) -> std::fmt::Result {
    writeln!(
        out,
        "\nDatabase statements at {rate:.0}/s (pg_stat_statements over the same scan phase: execution time inside PostgreSQL, planning and client round trips not included): {:.1} statements and {:.0} µs per answered scan in all; the {} that took longest:\n",
        statements.calls_per_scan(statements.calls),
        statements.us_per_scan(statements.total_ms),
        statements.top.len()
    )?;
    writeln!(
        out,
        "| statement | calls per scan | µs per scan | µs per call |\n|---|---|---|---|"
    )?;
    for statement in &statements.top {
        writeln!(
            out,
            "| `{}` | {:.2} | {:.0} | {:.0} |",
            statement.statement.replace('|', "\\|").replace('`', "'"),
            statements.calls_per_scan(statement.calls),
            statements.us_per_scan(statement.total_ms),
            statement.total_ms * 1000.0 / statement.calls.max(1) as f64
        )?;
    }
    Ok(())
}

/// CPU per answered scan over the scan phase, one row per rate (nothing when unmeasured).
fn cpu_table(
    out: &mut String,
    rows: &[(f64, Option<&CpuPerScan>)],
    cores: usize,
) -> std::fmt::Result {
    if rows.iter().all(|(_, cpu)| cpu.is_none()) {
        return Ok(());
    }
    writeln!(
        out,
        "\nCPU per authorization (scan phase: from just before the first scan is offered to the last answer), user + system time per answered scan:\n"
    )?;
    writeln!(
        out,
        "| offered rate | answered | PostgreSQL | management | broker | load generator | total | cores busy | ceiling on {cores} cores |\n|---|---|---|---|---|---|---|---|---|"
    )?;
    for (rate, cpu) in rows {
        let Some(cpu) = cpu else {
            writeln!(out, "| {rate:.0}/s | not measured | | | | | | | |")?;
            continue;
        };
        let ceiling = cpu
            .ceiling_per_sec
            .map_or("–".to_owned(), |c| format!("{c:.0}/s"));
        writeln!(
            out,
            "| {rate:.0}/s | {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} % | {ceiling} |",
            cpu.answered_scans,
            cpu.postgres_us,
            cpu.management_us,
            cpu.broker_us,
            cpu.loadgen_us,
            cpu.total_us,
            cpu.cores_busy_percent
        )?;
    }
    Ok(())
}

fn step_table(out: &mut String, steps: &[StepOutcome]) -> std::fmt::Result {
    writeln!(
        out,
        "| offered rate | scans | started | refused / unanswered | starts/s reached | p50 | p99 | max |\n|---|---|---|---|---|---|---|---|"
    )?;
    for step in steps {
        let l = &step.latency;
        writeln!(
            out,
            "| {:.0}/s | {} | {} | {} / {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
            step.offered_rate,
            step.scans,
            step.started,
            step.rejected.values().sum::<usize>(),
            step.unanswered,
            step.achieved_rate(),
            l.p50_ms,
            l.p99_ms,
            l.max_ms
        )?;
    }
    Ok(())
}

/// `git rev-parse --short HEAD`, when git and a repository are there.
pub fn git_commit() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuTimes;
    use crate::machine::MachineStalls;
    use crate::scenarios::Round;

    fn measured(rate: f64, postgres_secs: f64, answered: usize) -> StepOutcome {
        let spent = CpuTimes {
            postgres_secs,
            management_secs: 0.3,
            broker_secs: 0.1,
            loadgen_secs: 0.1,
        };
        let mut step = StepOutcome::default();
        step.offered_rate = rate;
        step.cpu = CpuPerScan::new(spent, answered, 1.0, 2);
        step
    }

    #[test]
    fn the_cpu_table_has_a_row_per_rate_in_microseconds_per_scan() {
        let step = measured(250.0, 0.5, 1000);
        let mut out = String::new();
        cpu_table(&mut out, &[(250.0, step.cpu.as_ref()), (500.0, None)], 2).unwrap();
        assert!(out.contains("| ceiling on 2 cores |"), "{out}");
        assert!(
            out.contains(
                "| 250/s | 1000 | 500 µs | 300 µs | 100 µs | 100 µs | 1000 µs | 50 % | 2000/s |"
            ),
            "{out}"
        );
        assert!(out.contains("| 500/s | not measured |"), "{out}");
        let mut nothing = String::new();
        cpu_table(&mut nothing, &[(250.0, None)], 2).unwrap();
        assert!(nothing.is_empty());
    }

    #[test]
    fn each_round_is_shown_next_to_the_machines_stalls_when_there_are_several() {
        let round = |p99_ms: f64, machine: Option<MachineStalls>| Round {
            latency: Percentiles {
                count: 1000,
                p50_ms: 2.0,
                p99_ms,
                max_ms: p99_ms + 1.0,
                ..Percentiles::default()
            },
            machine,
        };
        let stalled = MachineStalls {
            max_oversleep_ms: 41.5,
            stalls_over_5ms: 3,
            realtime: true,
            steal_ms: 20.0,
            max_fdatasync_ms: 38.2,
            fdatasyncs: 40,
        };
        let at = LatencyAtRate {
            rate: 500.0,
            rounds: 2,
            scans_per_round: 1000,
            result: StepOutcome::default(),
            each_round: vec![round(49.0, Some(stalled)), round(7.0, None)],
        };
        let mut out = String::new();
        rounds_table(&mut out, std::slice::from_ref(&at)).unwrap();
        assert!(
            out.contains(
                "| 500/s | 1 | 2.00 ms | 49.00 ms | 50.00 ms | 41.5 ms | 3 | 20 ms | 38.2 ms |"
            ),
            "{out}"
        );
        assert!(
            out.contains("| 500/s | 2 | 2.00 ms | 7.00 ms | 8.00 ms | – | – | – | – |"),
            "{out}"
        );
        // One round per rate (the broker comparison): nothing to compare, no table.
        let single = LatencyAtRate {
            rounds: 1,
            each_round: vec![round(7.0, None)],
            ..at
        };
        let mut nothing = String::new();
        rounds_table(&mut nothing, &[single]).unwrap();
        assert!(nothing.is_empty(), "{nothing}");
    }

    #[test]
    fn the_broker_comparison_shows_the_cpu_per_authorization_on_that_broker() {
        let latency = |rate: f64| LatencyAtRate {
            rate,
            rounds: 1,
            scans_per_round: 1000,
            result: measured(rate, 0.5, 1000),
            each_round: Vec::new(),
        };
        let report = Report {
            date: "2026-12-07T00:00:00Z".into(),
            git_commit: None,
            machine: Machine {
                cpu: "test".into(),
                cores: 2,
                memory_gib: 1.0,
                kernel: "test".into(),
            },
            quick: true,
            notes: Vec::new(),
            fleet_devices: 1000,
            floor: Floor::default(),
            latency: vec![latency(250.0)],
            throughput: None,
            fleet: None,
            stops: None,
            broker_comparison: Some(BrokerComparison {
                broker: BrokerKind::Mosquitto,
                setup: "test".into(),
                floor: Floor::default(),
                latency: vec![latency(500.0)],
                p50_ratios: Vec::new(),
            }),
            targets: Vec::new(),
        };
        let out = report.markdown();
        let comparison = &out[out.find("## 5. Broker comparison").unwrap()..];
        assert!(
            comparison.contains(
                "| 500/s | 1000 | 500 µs | 300 µs | 100 µs | 100 µs | 1000 µs | 50 % | 2000/s |"
            ),
            "{comparison}"
        );
    }

    #[test]
    fn the_statements_table_lists_calls_and_time_per_scan() {
        let statements = StatementCosts::new(
            vec![
                crate::statements::StatementCost {
                    statement: "SELECT a | b FROM `t`".into(),
                    calls: 1000,
                    total_ms: 50.0,
                },
                crate::statements::StatementCost {
                    statement: "COMMIT".into(),
                    calls: 500,
                    total_ms: 100.0,
                },
            ],
            500,
        );
        let mut out = String::new();
        statements_table(&mut out, 500.0, &statements).unwrap();
        assert!(
            out.contains("3.0 statements and 300 µs per answered scan in all"),
            "{out}"
        );
        assert!(out.contains("| `COMMIT` | 1.00 | 200 | 200 |"), "{out}");
        assert!(
            out.contains("| `SELECT a \\| b FROM 't'` | 2.00 | 100 | 50 |"),
            "{out}"
        );
    }

    #[test]
    fn the_signature_line_gives_the_cpu_per_authorization_and_its_ceiling() {
        let mut out = String::new();
        let signatures = SignatureFloor {
            sign_us: 20.0,
            verify_us: 50.0,
        };
        signatures_line(&mut out, &signatures).unwrap();
        assert!(out.contains("sign 20.0 µs, verify 50.0 µs"), "{out}");
        assert!(
            out.contains("= 400 µs of CPU → at most 5000 authorizations/s on 2 cores"),
            "{out}"
        );
        let mut nothing = String::new();
        signatures_line(&mut nothing, &SignatureFloor::default()).unwrap();
        assert!(nothing.is_empty());
    }

    fn throughput_floor() -> ThroughputFloor {
        use crate::floor::throughput::{CommitThroughput, MqttThroughput};
        let mqtt = MqttThroughput {
            window_secs: 2.0,
            publishers: 4,
            payload_bytes: 312,
            delivered: 20_000,
            messages_per_sec: 10_000.0,
            broker_us: 10.0,
            client_us: 9.0,
            publisher_us: 3.0,
            subscriber_us: 5.0,
        };
        let commits = CommitThroughput {
            window_secs: 2.0,
            connections: 6,
            commits: 4_000,
            commits_per_sec: 2_000.0,
            server_us: 50.0,
            client_us: 7.0,
        };
        let signatures = SignatureFloor {
            sign_us: 20.0,
            verify_us: 50.0,
        };
        ThroughputFloor::new(mqtt, commits, &signatures, 2)
    }

    #[test]
    fn the_throughput_floor_shows_rates_costs_and_both_floors_against_the_budget() {
        let mut out = String::new();
        throughput_floor_tables(&mut out, &throughput_floor()).unwrap();
        assert!(
            out.contains("| MQTT QoS 1 messages, 4 publishers → 1 subscriber, 312-byte signed scans | 20000 in 2.0 s | 10000/s | broker 10.0 µs per message | 9.0 µs per message (sending 3.0 µs, receiving 5.0 µs) |"),
            "{out}"
        );
        assert!(
            out.contains("| durable commits, 6 connections, single-row INSERTs | 4000 in 2.0 s | 2000/s | PostgreSQL 50.0 µs per commit | 7.0 µs per commit |"),
            "{out}"
        );
        assert!(
            out.contains("| ceiling on 2 cores | ≤ 400 µs (5,000/s on 2 cores) |"),
            "{out}"
        );
        // 2 × 20 + 4 × 50; 5 × 10; 2 × 50; 3 × 5 + 2 × 3 + 2 × 7.
        assert!(
            out.contains("| server side: management, broker, PostgreSQL | 240 µs | 50 µs | 100 µs | 35 µs | 425 µs | 4706/s | **no** |"),
            "{out}"
        );
        // + 3 × 20; + 3 × 3 + 2 × 5.
        assert!(
            out.contains("| whole bench: the devices on the same cores too | 300 µs | 50 µs | 100 µs | 54 µs | 504 µs | 3968/s | **no** |"),
            "{out}"
        );
        assert!(out.contains("How: messages"), "{out}");
        let words = throughput_floor_words(&throughput_floor());
        assert_eq!(
            words,
            "; throughput floor (nothing but the unavoidable work, same run): server side 425 µs → at most 4706/s, whole bench 504 µs → at most 3968/s on 2 cores"
        );
    }

    #[test]
    fn a_floor_within_the_budget_says_so_and_an_unmeasured_one_is_not_shown() {
        let mut out = String::new();
        let cheap = AuthorizationCpu {
            total_us: 400.0,
            ceiling_per_sec: Some(5000.0),
            ..AuthorizationCpu::default()
        };
        authorization_row(&mut out, "x", &cheap).unwrap();
        assert!(out.ends_with("| 400 µs | 5000/s | yes |\n"), "{out}");
        let mut floor = String::new();
        floor_table(&mut floor, &Floor::default()).unwrap();
        assert!(!floor.contains("Throughput floor"), "{floor}");
        floor_table(
            &mut floor,
            &Floor {
                throughput: Some(throughput_floor()),
                ..Floor::default()
            },
        )
        .unwrap();
        assert!(floor.contains("Throughput floor"), "{floor}");
    }

    #[test]
    fn the_throughput_target_names_the_ceiling_of_the_last_measured_step() {
        let steps = [
            measured(250.0, 0.5, 1000),
            measured(500.0, 1.5, 1000),
            StepOutcome::default(),
        ];
        assert_eq!(
            cpu_ceiling_words(&steps),
            "; CPU 2000 µs per scan at 500/s → at most 1000/s on 2 cores"
        );
        assert_eq!(cpu_ceiling_words(&[]), "");
    }
}
