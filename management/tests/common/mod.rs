//! What the management CLI tests share: running `mujin-management` as a real process on a
//! private PostgreSQL, and reading what it answered.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `mujin-management --data-dir DATA_DIR --database-url URL ARGS…`.
pub fn management(data_dir: &Path, database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mujin-management"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--database-url", database_url])
        .args(args)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run mujin-management")
}

/// Its standard output, after checking that it succeeded (its standard error otherwise).
pub fn answered(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
