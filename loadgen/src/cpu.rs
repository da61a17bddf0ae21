//! CPU time per authorization: the user + system time that PostgreSQL (the postmaster and every
//! process it forked), management, the broker and the load generator itself spend over the scan
//! phase of a step, read from /proc and divided by the scans answered. With the machine's core
//! count it gives a ceiling on authorizations per second that no amount of concurrency can pass.

use crate::machine::MachineProbe;
use crate::stages::StageProbe;
use crate::statements::StatementProbe;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::stack::sample_process;

/// USER_HZ, 100 on every Linux architecture mujin runs on: /proc counts CPU time in 10 ms
/// ticks per process, so a phase needs hundreds of scans for the µs per scan to mean much.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// CPU time (user + system, seconds) of the processes a scan goes through: cumulative when
/// sampled, spent over a phase after [`CpuTimes::since`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuTimes {
    pub postgres_secs: f64,
    pub management_secs: f64,
    pub broker_secs: f64,
    pub loadgen_secs: f64,
}

impl CpuTimes {
    pub fn total_secs(&self) -> f64 {
        self.postgres_secs + self.management_secs + self.broker_secs + self.loadgen_secs
    }

    /// What was spent from `before` to `self` (never negative: a process that vanished in
    /// between reads as 0 at the end).
    pub fn since(&self, before: &CpuTimes) -> CpuTimes {
        let spent = |after: f64, before: f64| (after - before).max(0.0);
        CpuTimes {
            postgres_secs: spent(self.postgres_secs, before.postgres_secs),
            management_secs: spent(self.management_secs, before.management_secs),
            broker_secs: spent(self.broker_secs, before.broker_secs),
            loadgen_secs: spent(self.loadgen_secs, before.loadgen_secs),
        }
    }

    fn plus(&self, other: &CpuTimes) -> CpuTimes {
        CpuTimes {
            postgres_secs: self.postgres_secs + other.postgres_secs,
            management_secs: self.management_secs + other.management_secs,
            broker_secs: self.broker_secs + other.broker_secs,
            loadgen_secs: self.loadgen_secs + other.loadgen_secs,
        }
    }
}

/// The processes to read. A missing pid reads as 0 s.
#[derive(Debug, Clone)]
pub struct CpuProbe {
    broker: Option<u32>,
    management: Option<u32>,
    postmaster: Option<u32>,
    /// Cores of the machine, for the ceiling (the count the report shows).
    cores: usize,
    /// What the database executed over the same phase, when it can be read.
    statements: Option<StatementProbe>,
    /// Where management spent the phase's scans, stage by stage (its metrics).
    stages: Option<StageProbe>,
    /// What the machine itself did over the phase.
    machine: Option<Arc<MachineProbe>>,
}

impl CpuProbe {
    /// Reads the postmaster's pid from `postgres_data_dir/postmaster.pid` (its first line).
    pub fn new(
        broker: Option<u32>,
        management: Option<u32>,
        postgres_data_dir: &Path,
        cores: usize,
    ) -> CpuProbe {
        let postmaster = std::fs::read_to_string(postgres_data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|file| postmaster_pid(&file));
        if postmaster.is_none() {
            tracing::warn!(dir = %postgres_data_dir.display(), "no postmaster.pid: PostgreSQL's CPU reads as 0");
        }
        CpuProbe {
            broker,
            management,
            postmaster,
            cores,
            statements: None,
            stages: None,
            machine: None,
        }
    }

    /// Also reads which statements the database executed over each measured phase.
    pub fn with_statements(self, statements: Option<StatementProbe>) -> CpuProbe {
        CpuProbe { statements, ..self }
    }

    pub fn statements(&self) -> Option<&StatementProbe> {
        self.statements.as_ref()
    }

    /// Also reads management's stages over each measured phase.
    pub fn with_stages(self, stages: StageProbe) -> CpuProbe {
        CpuProbe {
            stages: Some(stages),
            ..self
        }
    }

    pub fn stages(&self) -> Option<&StageProbe> {
        self.stages.as_ref()
    }

    /// Also reads the machine's stalls over each measured phase.
    pub fn with_machine(self, machine: Option<Arc<MachineProbe>>) -> CpuProbe {
        CpuProbe { machine, ..self }
    }

    pub fn machine(&self) -> Option<&MachineProbe> {
        self.machine.as_deref()
    }

    /// The cumulative CPU time of every process, now.
    pub fn sample(&self) -> CpuTimes {
        let secs = |pid: Option<u32>| pid.and_then(sample_process).map_or(0.0, |s| s.cpu_secs);
        CpuTimes {
            postgres_secs: self.postmaster.map_or(0.0, postgres_secs),
            management_secs: secs(self.management),
            broker_secs: secs(self.broker),
            loadgen_secs: secs(Some(std::process::id())),
        }
    }

    pub fn cores(&self) -> usize {
        self.cores
    }
}

/// CPU spent over the scan phase of one step (or several, pooled), per answered scan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuPerScan {
    /// Scans answered (started or refused) in the phase.
    pub answered_scans: usize,
    /// Wall-clock length of the phase.
    pub phase_secs: f64,
    /// CPU spent in the phase, per process group.
    pub spent: CpuTimes,
    pub postgres_us: f64,
    pub management_us: f64,
    pub broker_us: f64,
    pub loadgen_us: f64,
    pub total_us: f64,
    /// Share of all cores busy with these processes over the phase, in percent.
    pub cores_busy_percent: f64,
    pub cores: usize,
    /// cores × 1e6 / total µs per scan: authorizations/s if these processes had every core to
    /// themselves and nothing else cost CPU (`None` when no CPU was measured).
    pub ceiling_per_sec: Option<f64>,
}

impl CpuPerScan {
    /// `None` without an answered scan (nothing to divide by).
    pub fn new(
        spent: CpuTimes,
        answered_scans: usize,
        phase_secs: f64,
        cores: usize,
    ) -> Option<Self> {
        if answered_scans == 0 {
            return None;
        }
        let per_scan = |secs: f64| secs * 1e6 / answered_scans as f64;
        let total_us = per_scan(spent.total_secs());
        let capacity = phase_secs * cores as f64;
        Some(CpuPerScan {
            answered_scans,
            phase_secs,
            spent,
            postgres_us: per_scan(spent.postgres_secs),
            management_us: per_scan(spent.management_secs),
            broker_us: per_scan(spent.broker_secs),
            loadgen_us: per_scan(spent.loadgen_secs),
            total_us,
            cores_busy_percent: if capacity > 0.0 {
                spent.total_secs() / capacity * 100.0
            } else {
                0.0
            },
            cores,
            ceiling_per_sec: (total_us > 0.0).then(|| cores as f64 * 1e6 / total_us),
        })
    }

    /// Both phases as one: times and scans summed, per-scan figures recomputed.
    pub fn pooled(&self, other: &CpuPerScan) -> CpuPerScan {
        let spent = self.spent.plus(&other.spent);
        let answered = self.answered_scans + other.answered_scans;
        let phase = self.phase_secs + other.phase_secs;
        // Both have at least one answered scan, so the sum has too.
        CpuPerScan::new(spent, answered, phase, self.cores).unwrap_or(*self)
    }
}

/// The first line of `postmaster.pid`.
fn postmaster_pid(file: &str) -> Option<u32> {
    file.lines().next()?.trim().parse().ok()
}

/// The postmaster's CPU time and that of every process whose parent it is (backends,
/// walwriter, checkpointer, autovacuum workers, …).
///
/// Processes that exit are no longer in /proc: a backend that ends during a phase would take
/// its CPU out of the sum (its past CPU too, so the phase could even read negative). The
/// postmaster's cutime + cstime add the CPU of the children it reaped, which covers them (the
/// pool's connections are long-lived anyway; autovacuum workers come and go). A child that
/// exits while /proc is being read may be missed or counted twice: rare, one backend's CPU.
fn postgres_secs(postmaster: u32) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let stats: Vec<String> = entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .collect();
    family_ticks(postmaster, stats.iter().map(String::as_str)) as f64 / CLOCK_TICKS_PER_SEC
}

/// Sums the ticks of `parent` (its own and its reaped children's) and of its live children,
/// from /proc/<pid>/stat lines.
fn family_ticks<'a>(parent: u32, stats: impl Iterator<Item = &'a str>) -> u64 {
    stats
        .filter_map(parse_stat)
        .map(|stat| {
            if stat.pid == parent {
                stat.own_ticks + stat.reaped_children_ticks
            } else if stat.ppid == parent {
                stat.own_ticks
            } else {
                0
            }
        })
        .sum()
}

/// The fields of /proc/<pid>/stat used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    pid: u32,
    ppid: u32,
    /// utime + stime.
    own_ticks: u64,
    /// cutime + cstime: children waited for.
    reaped_children_ticks: u64,
}

fn parse_stat(stat: &str) -> Option<Stat> {
    let pid = stat.split_whitespace().next()?.parse().ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // After the name, state (field 3) is at 0: ppid (4) at 1, utime..cstime (14..17) at 11..14.
    let number = |index: usize| fields.get(index)?.parse::<u64>().ok();
    Some(Stat {
        pid,
        ppid: u32::try_from(number(1)?).ok()?,
        own_ticks: number(11)? + number(12)?,
        reaped_children_ticks: number(13)? + number(14)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: u32, ppid: u32, utime: u64, stime: u64, cutime: u64, cstime: u64) -> String {
        format!("{pid} (postgres: x (y)) S {ppid} {pid} {pid} 0 -1 4194560 10 0 0 0 {utime} {stime} {cutime} {cstime} 20 0 1 0")
    }

    #[test]
    fn stat_fields_are_read_after_the_name() {
        assert_eq!(
            parse_stat(&stat(42, 7, 250, 50, 30, 5)),
            Some(Stat {
                pid: 42,
                ppid: 7,
                own_ticks: 300,
                reaped_children_ticks: 35
            })
        );
        assert_eq!(parse_stat("42 (truncated"), None);
    }

    #[test]
    fn the_postmaster_pid_is_the_first_line() {
        let file = "4242\n/tmp/data\n1700000000\n5432\n/tmp/data/socket\n\n";
        assert_eq!(postmaster_pid(file), Some(4242));
        assert_eq!(postmaster_pid(""), None);
    }

    #[test]
    fn the_family_is_the_parent_with_its_reaped_children_and_its_live_children() {
        let stats = [
            stat(100, 1, 10, 5, 40, 2),       // postmaster: 15 own + 42 reaped
            stat(101, 100, 300, 20, 0, 0),    // backend
            stat(102, 100, 7, 3, 0, 0),       // walwriter
            stat(200, 1, 999, 999, 999, 999), // unrelated
            stat(201, 101, 500, 0, 0, 0),     // grandchild: not PostgreSQL's way, not counted
        ];
        let ticks = family_ticks(100, stats.iter().map(String::as_str));
        assert_eq!(ticks, 15 + 42 + 320 + 10);
    }

    #[test]
    fn per_scan_figures_and_the_ceiling() {
        let before = CpuTimes {
            postgres_secs: 10.0,
            management_secs: 5.0,
            broker_secs: 2.0,
            loadgen_secs: 1.0,
        };
        let after = CpuTimes {
            postgres_secs: 10.4,
            management_secs: 5.3,
            broker_secs: 2.2,
            loadgen_secs: 1.1,
        };
        let cpu = CpuPerScan::new(after.since(&before), 1000, 1.0, 2).unwrap();
        assert!((cpu.postgres_us - 400.0).abs() < 1e-6);
        assert!((cpu.management_us - 300.0).abs() < 1e-6);
        assert!((cpu.broker_us - 200.0).abs() < 1e-6);
        assert!((cpu.loadgen_us - 100.0).abs() < 1e-6);
        assert!((cpu.total_us - 1000.0).abs() < 1e-6);
        // 1 ms of CPU per scan on 2 cores: at most 2,000/s; 1 s of CPU over 1 s of 2 cores.
        assert!((cpu.ceiling_per_sec.unwrap() - 2000.0).abs() < 1e-6);
        assert!((cpu.cores_busy_percent - 50.0).abs() < 1e-6);
    }

    #[test]
    fn nothing_answered_or_nothing_spent() {
        assert_eq!(CpuPerScan::new(CpuTimes::default(), 0, 1.0, 2), None);
        let idle = CpuPerScan::new(CpuTimes::default(), 10, 1.0, 2).unwrap();
        assert_eq!(idle.ceiling_per_sec, None);
        let vanished = CpuTimes::default().since(&CpuTimes {
            broker_secs: 3.0,
            ..CpuTimes::default()
        });
        assert_eq!(vanished.broker_secs, 0.0);
    }

    #[test]
    fn pooling_sums_time_and_scans() {
        let spent = |secs: f64| CpuTimes {
            postgres_secs: secs,
            ..CpuTimes::default()
        };
        let a = CpuPerScan::new(spent(0.1), 100, 1.0, 2).unwrap();
        let b = CpuPerScan::new(spent(0.5), 200, 2.0, 2).unwrap();
        let pooled = a.pooled(&b);
        assert_eq!(pooled.answered_scans, 300);
        assert!((pooled.postgres_us - 2000.0).abs() < 1e-6);
        assert!((pooled.phase_secs - 3.0).abs() < 1e-9);
    }

    #[test]
    fn this_process_is_sampled() {
        let probe = CpuProbe::new(None, None, Path::new("/nonexistent"), 2);
        let busy = (0..2_000_000u64).fold(0u64, |a, b| a.wrapping_add(b * b));
        assert!(busy > 0);
        let times = probe.sample();
        assert!(times.loadgen_secs >= 0.0);
        assert_eq!(times.postgres_secs, 0.0);
        assert_eq!(times.broker_secs, 0.0);
    }
}
