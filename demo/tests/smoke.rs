//! Runs the real `mujin-demo --headless` for a short while and checks what a user would see:
//! the summary shows sessions started and stopped on time and each kind of refusal, and
//! nothing the demo started is left running afterwards.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The number after `label` on the summary line that starts with it.
fn count(summary: &str, label: &str) -> i64 {
    summary
        .lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in the summary:\n{summary}"))
}

/// How many times each refusal reason was counted (`too_early 1, wrong_device 2`).
fn refusals(summary: &str, reason: &str) -> i64 {
    summary
        .lines()
        .flat_map(|line| line.split(','))
        .find_map(|part| part.trim().strip_prefix(reason)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Command lines of live processes that mention `needle` (postgres, agents, programs).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let own = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        panic!("cannot list processes in /proc");
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == own || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// Processes end a moment after their parent reaps them; allow that moment.
fn wait_until_gone(needle: &str, deadline: Duration) -> Vec<String> {
    let until = Instant::now() + deadline;
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() || Instant::now() >= until {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_headless_run_opens_the_store_and_closes_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // The private PostgreSQL runs as the `postgres` user when we are root: let it in.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_dir = dir.path().canonicalize().unwrap().join("demo");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_mujin-demo"))
        .args(["--headless", "--duration", "25", "--data-dir"])
        .arg(&data_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let summary = String::from_utf8_lossy(&output.stdout);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed: {}\n{log}",
        output.status
    );
    assert!(
        elapsed < Duration::from_secs(60),
        "the demo took {elapsed:?}"
    );

    let started_sessions = count(&summary, "sessions started:");
    assert!(started_sessions >= 3, "{summary}");
    let ended = started_sessions - count(&summary, "sessions still running:");
    assert!(ended >= 1, "{summary}");
    assert_eq!(
        count(&summary, "sessions stopped on time:"),
        ended,
        "{summary}"
    );
    assert_eq!(count(&summary, "sessions stopped late:"), 0, "{summary}");
    for reason in [
        "too_early",
        "wrong_device",
        "already_used",
        "malformed_ticket",
    ] {
        assert!(
            refusals(&summary, reason) >= 1,
            "no {reason} in:\n{summary}"
        );
    }

    let left = wait_until_gone(&data_dir.to_string_lossy(), Duration::from_secs(5));
    assert!(left.is_empty(), "left running: {left:#?}");
    assert!(Path::new(&data_dir).join("logs/pc-01.log").exists());
}

#[test]
fn the_summary_parsers_read_the_documented_format() {
    let summary = "mujin demo summary (30 s)\n  sessions started:         6\n    too_early 1, wrong_device 2\n";
    assert_eq!(count(summary, "sessions started:"), 6);
    assert_eq!(refusals(summary, "wrong_device"), 2);
    assert_eq!(refusals(summary, "already_used"), 0);
}
