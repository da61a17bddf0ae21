//! Configuration files of the real binaries: `--config FILE` (or `MUJIN_<BINARY>_CONFIG`),
//! flags over environment over file over defaults, `--print-config` with its sources and
//! secrets masked, and errors that name the file and the key.

// The whole file is test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mujin_tests::binary;

/// A configuration file, owner-only as a file with secrets must be.
fn config_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Runs `name` with only the given environment (none of the caller's `MUJIN_*`).
fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(binary(name))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The refusal's message, checking the process refused with clap's usage code.
fn refusal(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn broker_flags_beat_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(
        dir.path(),
        "broker.toml",
        "listen = \"127.0.0.1:1001\"\nlisten-v5 = \"127.0.0.1:1002\"\ntls-client-ca = \"file-ca.pem\"\n\
         credentials = \"/etc/mujin/accounts.toml\"\n\
         database-url = \"host=/run/postgresql password=hunter2\"\nidentity-pepper = \"/p\"\n",
    );
    let output = run(
        "mujin-broker",
        &[
            "--print-config",
            "--listen",
            "127.0.0.1:3001",
            "--tls-listen",
            "127.0.0.1:8883",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ],
        &[
            ("MUJIN_BROKER_CONFIG", file.to_str().unwrap()),
            ("MUJIN_BROKER_LISTEN", "127.0.0.1:2001"),
            ("MUJIN_BROKER_LISTEN_V5", "127.0.0.1:2002"),
        ],
    );
    let printed = stdout(&output);
    for line in [
        "listen = \"127.0.0.1:3001\"  # flag",
        "listen-v5 = \"127.0.0.1:2002\"  # env MUJIN_BROKER_LISTEN_V5",
        "tls-client-ca = \"file-ca.pem\"  # file",
        "database-url = \"********\"  # file",
        "tls-key = \"k.pem\"  # flag",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "no {line:?} in\n{printed}"
        );
    }
    assert!(printed.contains(&format!("# Configuration file: {}", file.display())));
    assert!(!printed.contains("hunter2"), "{printed}");
    // What it prints is a valid configuration file of its own.
    let again = config_file(dir.path(), "again.toml", &printed);
    let output = run(
        "mujin-broker",
        &["--config", again.to_str().unwrap(), "--print-config"],
        &[],
    );
    assert!(stdout(&output).contains("listen = \"127.0.0.1:3001\"  # file"));
}

#[test]
fn broker_refuses_an_invalid_value_and_an_unknown_key_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let bad = config_file(dir.path(), "bad.toml", "listen = \"abc\"\n");
    let output = run(
        "mujin-broker",
        &["--config", bad.to_str().unwrap(), "--credentials", "x"],
        &[],
    );
    let error = refusal(&output);
    assert!(
        error.contains(&format!(
            "{}: key \"listen\": invalid value \"abc\": invalid socket address",
            bad.display()
        )),
        "{error}"
    );
    let typo = config_file(dir.path(), "typo.toml", "[run]\nx = 1\n");
    let error = refusal(&run(
        "mujin-broker",
        &["--config", typo.to_str().unwrap(), "--credentials", "x"],
        &[],
    ));
    assert!(error.contains("key \"run\": unknown key"), "{error}");
    let typo = config_file(dir.path(), "typo2.toml", "tls-lissen = \"127.0.0.1:1\"\n");
    let error = refusal(&run(
        "mujin-broker",
        &["--config", typo.to_str().unwrap(), "--credentials", "x"],
        &[],
    ));
    assert!(
        error.contains("key \"tls-lissen\": unknown key; did you mean \"tls-listen\"?"),
        "{error}"
    );
    // clap's own rules hold for settings of the file: a certificate needs its listener.
    let half = config_file(dir.path(), "half.toml", "tls-cert = \"c.pem\"\n");
    let error = refusal(&run(
        "mujin-broker",
        &["--config", half.to_str().unwrap(), "--credentials", "x"],
        &[],
    ));
    assert!(error.contains("--tls-listen"), "{error}");
    assert!(error.contains("settings from"), "{error}");
}

#[test]
fn agent_secrets_are_masked_and_a_bad_device_key_is_never_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(
        dir.path(),
        "agent.toml",
        "store = \"shibuya\"\ndevice = \"pc-01\"\nusername = \"device:shibuya:pc-01\"\n\
         password = \"file-password\"\nstop-grace-ms = 5000\nprogram = [\"sh\", \"-c\", \"sleep 1\"]\n",
    );
    let path = file.to_str().unwrap();
    let printed = stdout(&run(
        "mujin-agent",
        &["--config", path, "--print-config"],
        &[("MUJIN_AGENT_PASSWORD", "env-password")],
    ));
    for line in [
        "password = \"********\"  # env MUJIN_AGENT_PASSWORD",
        "stop-grace-ms = 5000  # file",
        "program = [\"sh\", \"-c\", \"sleep 1\"]  # file",
        "# offline-after-ms = 3000  # default",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "no {line:?} in\n{printed}"
        );
    }
    assert!(!printed.contains("password\""), "{printed}");
    let bad_key = config_file(
        dir.path(),
        "key.toml",
        "device-key = \"0123456789abcdef-not-a-key\"\n",
    );
    let error = refusal(&run(
        "mujin-agent",
        &["--config", bad_key.to_str().unwrap(), "--print-config"],
        &[],
    ));
    assert!(
        error.contains("key \"device-key\": invalid value (not shown)"),
        "{error}"
    );
    assert!(!error.contains("0123456789abcdef"), "{error}");
    // A file with secrets that everyone may read is refused.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = refusal(&run(
        "mujin-agent",
        &["--config", path, "--print-config"],
        &[],
    ));
    assert!(error.contains("chmod o-r"), "{error}");
}

#[test]
fn management_run_reads_its_table_and_keeps_its_variables() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(
        dir.path(),
        "management.toml",
        "data-dir = \"/var/lib/mujin\"\n\n[run]\nbroker = \"broker.example:8883\"\n\
         password = \"file-token\"\nearly-grace-secs = 90\nmetrics-listen = \"127.0.0.1:9464\"\n",
    );
    let printed = stdout(&run(
        "mujin-management",
        &["run", "--print-config", "--client-id", "worker-2"],
        &[
            ("MUJIN_MANAGEMENT_CONFIG", file.to_str().unwrap()),
            (
                "MUJIN_DATABASE_URL",
                "host=/run/postgresql password=pg-secret",
            ),
            ("MUJIN_MQTT_USERNAME", "service:mujin-management"),
        ],
    ));
    for line in [
        "database-url = \"********\"  # env MUJIN_DATABASE_URL",
        "data-dir = \"/var/lib/mujin\"  # file",
        "[run]",
        "broker = \"broker.example:8883\"  # file",
        "username = \"service:mujin-management\"  # env MUJIN_MQTT_USERNAME",
        "password = \"********\"  # file",
        "client-id = \"worker-2\"  # flag",
        "early-grace-secs = 90  # file",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "no {line:?} in\n{printed}"
        );
    }
    assert!(
        !printed.contains("pg-secret") && !printed.contains("file-token"),
        "{printed}"
    );
    let bad = config_file(
        dir.path(),
        "bad.toml",
        "[run]\npassword = \"x\"\nearly-grace-secs = \"soon\"\n",
    );
    let error = refusal(&run(
        "mujin-management",
        &["--config", bad.to_str().unwrap(), "run"],
        &[],
    ));
    assert!(
        error.contains("key \"run.early-grace-secs\": invalid value \"soon\": invalid digit"),
        "{error}"
    );
}
