//! Stalls of the machine itself over a scan phase, to tell a slow mujin from a slow machine: a
//! thread at real-time priority that sleeps 5 ms at a time and records how late it wakes (the
//! virtual machine descheduled, or interrupts holding a core), the hypervisor's steal time from
//! `/proc/stat`, and a thread that writes and `fdatasync`s a small file next to the database
//! every 100 ms and records how long the disk takes. Both wake rarely enough to cost the bench
//! little: a 1 ms sleeper cost this process ~3 % of a core on the virtual machine (each wake a
//! timer interrupt), and preempted whatever ran on its core 1,000 times a second.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long the sleeper asks to sleep each time.
const NAP: Duration = Duration::from_millis(5);
/// How often the disk probe writes and flushes.
const DISK_EVERY: Duration = Duration::from_millis(100);
/// A wake this late counts as a stall.
const STALL: Duration = Duration::from_millis(5);
/// The real-time priority of the sleeper (SCHED_FIFO, 1–99): above every other process of the
/// bench, which all run at normal priority.
const PRIORITY: i32 = 50;

/// What the machine did over a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MachineStalls {
    /// The latest wake of a 5 ms sleep, beyond the 5 ms.
    pub max_oversleep_ms: f64,
    /// Wakes later than 5 ms.
    pub stalls_over_5ms: u64,
    /// Whether the sleeper got its real-time priority (otherwise it competes with the bench and
    /// its oversleep includes waiting for a core).
    pub realtime: bool,
    /// CPU time the hypervisor took from this machine's cores over the phase (all cores).
    pub steal_ms: f64,
    /// The slowest 4 KiB write + fdatasync on the database's file system.
    pub max_fdatasync_ms: f64,
    pub fdatasyncs: u64,
}

impl MachineStalls {
    /// Both phases as one: maxima of the maxima, counts and steal summed.
    pub fn pooled(&self, other: &MachineStalls) -> MachineStalls {
        MachineStalls {
            max_oversleep_ms: self.max_oversleep_ms.max(other.max_oversleep_ms),
            stalls_over_5ms: self.stalls_over_5ms + other.stalls_over_5ms,
            realtime: self.realtime && other.realtime,
            steal_ms: self.steal_ms + other.steal_ms,
            max_fdatasync_ms: self.max_fdatasync_ms.max(other.max_fdatasync_ms),
            fdatasyncs: self.fdatasyncs + other.fdatasyncs,
        }
    }
}

/// The running probe; its threads stop when it is dropped.
#[derive(Debug)]
pub struct MachineProbe {
    shared: Arc<Shared>,
    disk_file: PathBuf,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    realtime: AtomicBool,
    max_oversleep_us: AtomicU64,
    stalls: AtomicU64,
    max_fdatasync_us: AtomicU64,
    fdatasyncs: AtomicU64,
}

/// A phase in progress: what [`MachineProbe::start_phase`] saw at its start.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    steal_ticks: Option<u64>,
}

impl MachineProbe {
    /// Starts the sleeper and the disk probe, which writes `dir/machine-probe` (on the
    /// database's file system).
    pub fn start(dir: &Path) -> std::io::Result<MachineProbe> {
        let shared = Arc::new(Shared::default());
        let disk_file = dir.join("machine-probe");
        let file = File::create(&disk_file)?;
        file.write_all_at(&[0; 4096], 0)?;
        file.sync_all()?;
        let sleeper = shared.clone();
        std::thread::Builder::new()
            .name("machine-sleeper".into())
            .spawn(move || sleep_and_measure(&sleeper))?;
        let disk = shared.clone();
        std::thread::Builder::new()
            .name("machine-disk".into())
            .spawn(move || write_and_measure(&disk, file))?;
        Ok(MachineProbe { shared, disk_file })
    }

    /// Forgets the maxima so far and notes the steal time: call at a phase's start.
    pub fn start_phase(&self) -> Phase {
        let shared = &self.shared;
        for counter in [
            &shared.max_oversleep_us,
            &shared.stalls,
            &shared.max_fdatasync_us,
            &shared.fdatasyncs,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        Phase {
            steal_ticks: steal_ticks(),
        }
    }

    /// What the machine did since `phase` started.
    pub fn end_phase(&self, phase: Phase) -> MachineStalls {
        let shared = &self.shared;
        let ms = |us: &AtomicU64| us.load(Ordering::Relaxed) as f64 / 1000.0;
        let steal = match (phase.steal_ticks, steal_ticks()) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            _ => 0,
        };
        MachineStalls {
            max_oversleep_ms: ms(&shared.max_oversleep_us),
            stalls_over_5ms: shared.stalls.load(Ordering::Relaxed),
            realtime: shared.realtime.load(Ordering::Relaxed),
            // /proc/stat counts in USER_HZ ticks: 10 ms.
            steal_ms: steal as f64 * 10.0,
            max_fdatasync_ms: ms(&shared.max_fdatasync_us),
            fdatasyncs: shared.fdatasyncs.load(Ordering::Relaxed),
        }
    }
}

impl Drop for MachineProbe {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.disk_file);
    }
}

fn sleep_and_measure(shared: &Shared) {
    let realtime = become_realtime();
    if !realtime {
        tracing::warn!("the machine probe's sleeper runs without real-time priority: its oversleep includes waiting for a core");
    }
    shared.realtime.store(realtime, Ordering::Relaxed);
    while !shared.stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        std::thread::sleep(NAP);
        let late = asked.elapsed().saturating_sub(NAP);
        record_max(&shared.max_oversleep_us, late);
        if late >= STALL {
            shared.stalls.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Overwrites the file's one block and flushes it, as PostgreSQL does with its preallocated WAL
/// files (a flush of data, not of the file's size).
fn write_and_measure(shared: &Shared, file: File) {
    let block = [0x5au8; 4096];
    while !shared.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let written = file.write_all_at(&block, 0).and_then(|()| file.sync_data());
        if let Err(error) = written {
            tracing::warn!(%error, "the machine probe cannot write its file; no fdatasync times");
            return;
        }
        record_max(&shared.max_fdatasync_us, started.elapsed());
        shared.fdatasyncs.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(DISK_EVERY);
    }
}

fn record_max(max_us: &AtomicU64, took: Duration) {
    max_us.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
}

/// Puts the calling thread in SCHED_FIFO at [`PRIORITY`] (needs root or CAP_SYS_NICE).
fn become_realtime() -> bool {
    let param = nix::libc::sched_param {
        sched_priority: PRIORITY,
    };
    #[allow(unsafe_code)]
    // SAFETY: sched_setscheduler(2) on the calling thread (pid 0) with a valid, initialized
    // sched_param that outlives the call; it only changes this thread's scheduling.
    let result = unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_FIFO, &param) };
    result == 0
}

/// The machine's steal time so far, in ticks (the `cpu` line of /proc/stat, 8th value).
fn steal_ticks() -> Option<u64> {
    parse_steal(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_steal(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_value_of_the_cpu_line() {
        let stat = "cpu  2091770 0 351040 2283550 18267 0 23899 1892 0 0\n\
                    cpu0 1030675 0 168176 1172395 4366 0 8471 939 0 0\n";
        assert_eq!(parse_steal(stat), Some(1892));
        assert_eq!(parse_steal("intr 1 2 3\n"), None);
    }

    #[test]
    fn pooled_phases_keep_the_worst_and_add_the_counts() {
        let a = MachineStalls {
            max_oversleep_ms: 3.0,
            stalls_over_5ms: 1,
            realtime: true,
            steal_ms: 10.0,
            max_fdatasync_ms: 9.0,
            fdatasyncs: 40,
        };
        let b = MachineStalls {
            max_oversleep_ms: 12.0,
            stalls_over_5ms: 2,
            realtime: true,
            steal_ms: 20.0,
            max_fdatasync_ms: 2.0,
            fdatasyncs: 40,
        };
        assert_eq!(
            a.pooled(&b),
            MachineStalls {
                max_oversleep_ms: 12.0,
                stalls_over_5ms: 3,
                realtime: true,
                steal_ms: 30.0,
                max_fdatasync_ms: 9.0,
                fdatasyncs: 80,
            }
        );
    }
}
