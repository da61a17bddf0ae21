//! The machine probe's threads measure for real: a phase reads the sleeper's oversleep and the
//! disk's flushes, and the probe's file goes with it.

use std::time::Duration;

use mujin_loadgen::machine::MachineProbe;

#[test]
fn a_phase_reads_the_sleeper_and_the_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let probe = MachineProbe::start(dir.path()).expect("probe");
    let phase = probe.start_phase();
    std::thread::sleep(Duration::from_millis(300));
    let stalls = probe.end_phase(phase);
    assert!(stalls.fdatasyncs >= 2, "{stalls:?}");
    assert!(stalls.max_fdatasync_ms > 0.0, "{stalls:?}");
    assert!(stalls.max_oversleep_ms > 0.0, "{stalls:?}");
    drop(probe);
    assert!(!dir.path().join("machine-probe").exists());
}
