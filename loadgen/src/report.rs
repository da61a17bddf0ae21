//! The benchmark report: the machine, the date, each scenario's parameters and results and the
//! targets met or not, as JSON and as Markdown.

use std::fmt::Write;

use serde::Serialize;

use crate::cpu::CpuPerScan;
use crate::fleet::StepOutcome;
use crate::floor::{Floor, SignatureFloor, SIGNS_PER_AUTHORIZATION, VERIFIES_PER_AUTHORIZATION};
use crate::scenarios::{FleetLoad, LatencyAtRate, StopsOnTime, Throughput, THROUGHPUT_P99_MS};
use crate::stack::BrokerKind;
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
const SIGNATURE_CORES: usize = 2;

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
                    "{sustained:.0}/s offered (peak reached {:.0}/s){}{}",
                    throughput.peak_achieved_rate,
                    cpu_ceiling_words(&throughput.steps),
                    self.floor
                        .signatures
                        .ceiling_per_sec(SIGNATURE_CORES)
                        .map_or(String::new(), |ceiling| format!(
                            "; signatures alone: at most {ceiling:.0}/s"
                        ))
                ),
                met: Some(sustained >= 5000.0),
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
        latency_table(out, &self.latency, self.floor.p50_ms())?;
        let by_rate: Vec<(f64, Option<&CpuPerScan>)> = self
            .latency
            .iter()
            .map(|at| (at.rate, at.result.cpu.as_ref()))
            .collect();
        cpu_table(out, &by_rate, self.machine.cores)?;
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
            latency_table(out, &comparison.latency, comparison.floor.p50_ms())?;
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
    signatures_line(out, &floor.signatures)
}

/// What the protocol's signatures alone cost per authorization, and the rate they allow.
fn signatures_line(out: &mut String, signatures: &SignatureFloor) -> std::fmt::Result {
    let Some(ceiling) = signatures.ceiling_per_sec(SIGNATURE_CORES) else {
        return Ok(());
    };
    writeln!(
        out,
        "\nSignatures (Ed25519 with mujin's code, a signed scan, same run): sign {:.1} µs, verify {:.1} µs; per authorization {SIGNS_PER_AUTHORIZATION} signs and {VERIFIES_PER_AUTHORIZATION} verifications (device: scan, ack, state; management: the scan, its ticket, the ack, the state, and signing the start and the desired state; agent: verifying those two) = {:.0} µs of CPU → at most {ceiling:.0} authorizations/s on {SIGNATURE_CORES} cores from signatures alone.",
        signatures.sign_us,
        signatures.verify_us,
        signatures.us_per_authorization()
    )
}

fn percentile_row(out: &mut String, name: &str, p: &Percentiles) -> std::fmt::Result {
    writeln!(
        out,
        "| {name} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
        p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
    )
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
