//! Real scanners end to end: the QR code that `mujin-management reserve --png` writes is read back
//! by a real QR reader (`zbarimg`, Debian's `zbar-tools`), and the decoded text, sent as a serial
//! scanner sends it (CR LF on a pseudo-terminal the agent reads with `--scan-serial`), starts the
//! session.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mujin_protocol::message::EventKind;
use mujin_protocol::ticket;
use mujin_protocol::{DeviceId, StoreId};
use mujin_tests::agent::Agent;
use mujin_tests::process_alive;
use mujin_tests::stack::Stack;

const SHORT: Duration = Duration::from_secs(10);

/// Books `device` from now for a minute with the `mujin-management reserve` command line, which
/// also writes the ticket's QR code to `png`; returns the ticket text it printed.
fn reserve_with_png(stack: &Stack, (store, device): &(StoreId, DeviceId), png: &Path) -> String {
    let output = Command::new(mujin_tests::binary("mujin-management"))
        .arg("--data-dir")
        .arg(stack.dir.path())
        .args(["--database-url", &stack.database_url])
        .args(["reserve", "--store", store.as_str()])
        .args(["--device", device.as_str(), "--seconds", "60", "--quiet"])
        .arg("--png")
        .arg(png)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run mujin-management reserve");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The text of the QR code in `png`, as the `zbarimg` QR reader decodes it.
fn zbarimg(png: &Path) -> String {
    let output = Command::new("zbarimg")
        .args(["--raw", "-q"])
        .arg(png)
        .output()
        .expect("run zbarimg (Debian's zbar-tools; .ci/run installs it)");
    assert!(
        output.status.success(),
        "zbarimg found no code: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // zbarimg ends its output with a newline, and names the symbology unless --raw is given.
    let text = String::from_utf8_lossy(&output.stdout);
    let text = text.trim_end_matches(['\r', '\n']);
    text.strip_prefix("QR-Code:").unwrap_or(text).to_owned()
}

/// A pseudo-terminal standing in for a serial QR scanner: writing on the master is the scanner
/// sending, the slave's path is the tty the agent opens. The slave stays open here so the tty
/// keeps what is written before the agent opens it.
struct FakeSerialScanner {
    master: File,
    _slave: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl FakeSerialScanner {
    fn new() -> FakeSerialScanner {
        let pair = nix::pty::openpty(None, None).expect("a pseudo-terminal");
        let path = std::fs::read_link(format!("/proc/self/fd/{}", pair.slave.as_raw_fd()))
            .expect("the pseudo-terminal's path");
        FakeSerialScanner {
            master: File::from(pair.master),
            _slave: pair.slave,
            path,
        }
    }

    /// Sends one reading the way serial scanners end it.
    fn send(&mut self, text: &str) {
        self.master
            .write_all(format!("{text}\r\n").as_bytes())
            .expect("write to the pseudo-terminal");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_png_ticket_read_by_a_qr_reader_and_sent_over_serial_starts_the_session() {
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let png = stack.dir.path().join("ticket.png");
    let printed = reserve_with_png(&stack, &device, &png);

    let decoded = zbarimg(&png);
    assert_eq!(decoded, printed, "the QR code holds the ticket text");
    let ticket_id = ticket::parse_unverified(&decoded)
        .expect("a ticket")
        .claims
        .ticket_id;

    let mut scanner = FakeSerialScanner::new();
    let (username, password) = stack.agent_credentials(&device);
    let device_key = stack.device_key(&device).map(|key| key.expose_hex());
    let agent = Agent::spawn(
        stack.dir.path(),
        stack.port,
        (&username, &password),
        (&device.0, &device.1),
        &stack.management_key(),
        &stack.root_key(),
        device_key.as_deref(),
        &[
            "--no-stdin".to_owned(),
            "--scan-serial".to_owned(),
            scanner.path.display().to_string(),
            "--serial-baud".to_owned(),
            "115200".to_owned(),
        ],
    );
    scanner.send(&decoded);

    agent.wait_screen("ACCEPTED", SHORT).await;
    let pid = agent.program_pid(SHORT).await;
    assert!(process_alive(pid), "the operating program runs");
    stack
        .observer
        .wait_event("the session to start", SHORT, |event| match event.kind {
            EventKind::SessionStarted {
                ticket_id: started, ..
            } if started == ticket_id => Some(()),
            _ => None,
        })
        .await;
    agent.stop().await;
    stack.shutdown().await;
}
