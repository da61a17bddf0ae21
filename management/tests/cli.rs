//! The `mujin-management` command line, run as a real process on a private PostgreSQL.

use std::path::Path;
use std::process::{Command, Output};

use mujin_protocol::ticket::Keyring;
use mujin_protocol::KeyId;

fn management(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mujin-management"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("MUJIN_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run mujin-management")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn books_a_ticket_from_the_command_line_and_refuses_an_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let added = management(
        &data,
        &["device-add", "--store", "shibuya", "--device", "pc-01"],
    );
    assert!(added.status.success(), "{}", stderr(&added));
    assert_eq!(stdout(&added).trim(), "registered device shibuya/pc-01");

    let png = dir.path().join("ticket.png");
    let png_arg = png.to_str().unwrap();
    let booked = management(
        &data,
        &[
            "reserve",
            "--store",
            "shibuya",
            "--device",
            "pc-01",
            "--from",
            "+1h",
            "--minutes",
            "30",
            "--quiet",
            "--png",
            png_arg,
        ],
    );
    assert!(booked.status.success(), "{}", stderr(&booked));
    let ticket = stdout(&booked).trim().to_owned();
    let keys =
        mujin_management::keys::load_or_create(&data.join("keys"), &KeyId::parse("k1").unwrap())
            .unwrap();
    let claims = Keyring::new([keys.signing.public_key()])
        .verify(&ticket)
        .expect("a valid ticket");
    assert_eq!(claims.device.as_str(), "pc-01");
    assert_eq!(
        claims.not_after - claims.not_before,
        chrono::Duration::minutes(30)
    );
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");

    let overlap = management(
        &data,
        &[
            "reserve",
            "--store",
            "shibuya",
            "--device",
            "pc-01",
            "--from",
            "+70m",
            "--minutes",
            "30",
        ],
    );
    assert!(!overlap.status.success());
    assert!(
        stderr(&overlap).contains("already booked during part of that window"),
        "{}",
        stderr(&overlap)
    );

    let unknown = management(
        &data,
        &[
            "reserve",
            "--store",
            "shibuya",
            "--device",
            "pc-09",
            "--minutes",
            "5",
        ],
    );
    assert!(
        stderr(&unknown).contains("unknown device shibuya/pc-09"),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn the_terminal_shows_the_ticket_as_a_qr_code() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(
        management(&data, &["device-add", "--store", "s", "--device", "d"])
            .status
            .success()
    );
    let booked = management(
        &data,
        &["reserve", "--store", "s", "--device", "d", "--minutes", "5"],
    );
    assert!(booked.status.success(), "{}", stderr(&booked));
    let text = stdout(&booked);
    assert!(text.contains('█') && text.contains('▀'), "{text}");
    assert!(text.contains("text     MJ1:"), "{text}");
}
