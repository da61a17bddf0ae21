//! The integrator examples of docs/examples run as documented against a live stack (the
//! `mujin-broker` process with its MQTT 5 listener, PostgreSQL, management answering bookings):
//! `book.sh` (mosquitto_pub/sub, openssl, jq) over MQTT 5 and 3.1.1 and `book.py` (paho-mqtt,
//! cryptography) each get a ticket that verifies as a mujin ticket for the booked device, the
//! events follower (`follow-events.sh`, `book.py --follow`) sees the booking's
//! `reservation_created`, and the shell's ticket starts a session on a real agent. The shell
//! scripts run on Mosquitto too (MQTT 5 on its usual port, the generated ACL).
//!
//! Before that, without any broker: the envelopes both scripts sign (`--dry-run`) verify with
//! mujin_protocol's booking verification for the same key, and carry the request asked for.
//!
//! Without the tools the tests are skipped with a message, except in CI (`CI=true`), where they
//! fail: .ci/run installs them.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use mujin_protocol::booking::{BookingAction, BookingEnvelope, IntegratorKey};
use mujin_protocol::message::{self, Event, EventKind};
use mujin_protocol::ticket::TicketClaims;
use mujin_protocol::topic::Topic;
use mujin_protocol::{DeviceId, StoreId, TicketId};
use mujin_tests::bookings::IntegratorLogin;
use mujin_tests::mosquitto::{binaries_or_skip, Binaries};
use mujin_tests::stack::Stack;
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

const SHORT: Duration = Duration::from_secs(20);

/// A script of docs/examples.
fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples")
        .join(name)
}

/// Whether every tool is there; if not, says why the test is skipped, or fails in CI.
fn tools_or_skip(commands: &[&str], python_modules: bool) -> bool {
    let mut missing: Vec<String> = commands
        .iter()
        .filter(|command| !on_path(command))
        .map(|command| (*command).to_owned())
        .collect();
    if python_modules && missing.is_empty() {
        // The same python3 the script's shebang finds: the one on PATH.
        let imported = std::process::Command::new("python3")
            .args(["-c", "import paho.mqtt, cryptography"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !imported {
            missing.push("python3's paho-mqtt or cryptography".to_owned());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "not installed: {} (apt-get install mosquitto-clients openssl xxd jq; \
         python3 -m pip install paho-mqtt cryptography; .ci/run installs them)",
        missing.join(", ")
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
    println!("skipped: {message}");
    false
}

fn on_path(command: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(command).is_file())
}

/// A stack answering bookings, a device, and an enrolled integrator's environment as
/// `integrator-enrol` prints it, plus the broker's address for MQTT 5.
struct Setup {
    stack: Stack,
    device: (StoreId, DeviceId),
    login: IntegratorLogin,
    /// The scripts' environment: what `integrator-enrol` printed.
    env: Vec<(String, String)>,
}

impl Setup {
    async fn start() -> Setup {
        Self::on(Stack::start_with_bookings().await).await
    }

    /// On Mosquitto (MQTT 5 on its one port, the generated ACL): the integrator logs in with
    /// Mosquitto's form of its username.
    async fn on_mosquitto(binaries: &Binaries) -> Setup {
        let mut setup = Self::on(Stack::start_on_mosquitto_with_bookings(binaries).await).await;
        let username = setup.login.mosquitto_username();
        for (name, value) in &mut setup.env {
            if name == "MUJIN_MQTT_USERNAME" {
                value.clone_from(&username);
            }
        }
        setup
    }

    async fn on(stack: Stack) -> Setup {
        let device = stack.add_device("shibuya", "pc-01").await;
        let login = stack.enrol_integrator("acme").await;
        let env = login.env();
        Setup {
            stack,
            device,
            env,
            login,
        }
    }

    /// A script run with the integrator's environment, on the broker's MQTT 5 listener.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .env("MUJIN_BROKER_HOST", "127.0.0.1")
            .env("MUJIN_BROKER_PORT", self.stack.v5_port().to_string())
            .env("MUJIN_REPLY_TIMEOUT", "20")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// The ticket text verified with management's ticket keys, for the test's device.
    fn verified(&self, ticket: &str) -> TicketClaims {
        let claims = self
            .stack
            .keys
            .keyring
            .verify(ticket)
            .unwrap_or_else(|error| panic!("{ticket:?} is not a valid mujin ticket: {error}"));
        assert_eq!(
            (&claims.store, &claims.device),
            (&self.device.0, &self.device.1)
        );
        claims
    }

    /// Every booking request the scripts published (the observer records them) verifies with
    /// the integrator's key: shell, Python and mujin agree on the signature.
    fn check_request_signatures(&self, at_least: usize) {
        let key = self.login.key();
        let envelopes: Vec<BookingEnvelope> = self
            .stack
            .observer
            .recorded()
            .into_iter()
            .filter(|recorded| matches!(recorded.topic, Topic::IntegratorBookings { .. }))
            .map(|recorded| message::decode(&recorded.payload).expect("an envelope"))
            .collect();
        assert!(
            envelopes.len() >= at_least,
            "{} requests seen",
            envelopes.len()
        );
        for envelope in envelopes {
            envelope
                .verify(&key.public_key())
                .unwrap_or_else(|error| panic!("{envelope:?} does not verify: {error:?}"));
        }
    }
}

/// A running events follower, its standard output read line by line. It runs in a process
/// group of its own, ended as a whole when dropped (the script and its `mosquitto_sub`).
struct Follower {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
}

impl Follower {
    /// Starts `command` and waits until it says, on standard error, that it follows the store.
    async fn start(mut command: Command) -> Follower {
        let mut child = command
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the follower");
        let stderr = child.stderr.take().expect("piped stderr");
        wait_for_line(BufReader::new(stderr).lines(), "following ").await;
        let stdout = child.stdout.take().expect("piped stdout");
        Follower {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// Reads events until `pick` finds one, within a deadline.
    async fn wait_event<T>(&mut self, what: &str, pick: impl Fn(&Event) -> Option<T>) -> T {
        let read = async {
            while let Some(line) = self.lines.next_line().await.expect("read the follower") {
                let event: Event = message::decode(line.as_bytes())
                    .unwrap_or_else(|error| panic!("not an event: {line}: {error}"));
                if let Some(found) = pick(&event) {
                    return found;
                }
            }
            panic!("the follower ended before {what}");
        };
        tokio::time::timeout(SHORT, read)
            .await
            .unwrap_or_else(|_| panic!("the follower saw no {what} within {SHORT:?}"))
    }
}

/// Reads `lines` (standard error) until one starts with `prefix`, echoing them to the test's
/// output; the rest is drained in the background so the child never blocks on a full pipe.
async fn wait_for_line(mut lines: Lines<BufReader<ChildStderr>>, prefix: &str) {
    let found = tokio::time::timeout(SHORT, async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            println!("follower: {line}");
            if line.starts_with(prefix) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "the follower never said {prefix:?}");
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("follower: {line}");
        }
    });
}

/// Runs a booking script to its end; returns its standard output, panics with its standard
/// error if it failed.
async fn run(mut command: Command) -> String {
    let output = tokio::time::timeout(SHORT * 2, command.output())
        .await
        .expect("the script ends")
        .expect("run the script");
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stderr}");
    assert!(output.status.success(), "the script failed: {stderr}");
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn reservation_created(ticket_id: TicketId) -> impl Fn(&Event) -> Option<()> {
    move |event| match &event.kind {
        EventKind::ReservationCreated { ticket_id: id, .. } if *id == ticket_id => Some(()),
        _ => None,
    }
}

const SHELL_TOOLS: [&str; 6] = [
    "mosquitto_pub",
    "mosquitto_sub",
    "openssl",
    "xxd",
    "jq",
    "stdbuf",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_example_books_over_mqtt_5_and_3_and_follows_the_events() {
    if !tools_or_skip(&SHELL_TOOLS, false) {
        return;
    }
    let setup = Setup::start().await;
    let first = book_and_follow_in_a_shell(&setup).await;

    // MQTT 3.1.1 on the broker's other listener: the request's reply_to. A later window.
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let mut command = setup.command(example("book.sh").to_str().expect("path"));
    command
        .args(["shibuya", "pc-01", "30", &later])
        .env("MUJIN_MQTT_VERSION", "3.1.1")
        .env("MUJIN_BROKER_PORT", setup.stack.port.to_string());
    let second = setup.verified(run(command).await.trim());
    assert_ne!(second.ticket_id, first);
    assert_eq!(
        second.not_after - second.not_before,
        chrono::Duration::minutes(30)
    );
    setup.check_request_signatures(2);
    setup.stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_example_books_on_mosquitto() {
    if !tools_or_skip(&SHELL_TOOLS, false) {
        return;
    }
    let Some(binaries) = binaries_or_skip() else {
        return;
    };
    let setup = Setup::on_mosquitto(&binaries).await;
    book_and_follow_in_a_shell(&setup).await;
    setup.stack.shutdown().await;
}

/// Follows the store with `follow-events.sh`, books the device for a minute from now with
/// `book.sh` over MQTT 5, checks the ticket and the follower's `reservation_created`, and that
/// the ticket scanned at a real agent starts its program (`session_started` for the follower
/// too). Returns the ticket's id.
async fn book_and_follow_in_a_shell(setup: &Setup) -> TicketId {
    let mut follower = {
        let mut command = setup.command(example("follow-events.sh").to_str().expect("path"));
        command.args(["shibuya", "60"]);
        Follower::start(command).await
    };
    let mut command = setup.command(example("book.sh").to_str().expect("path"));
    command.args(["shibuya", "pc-01", "1"]);
    let ticket = run(command).await.trim().to_owned();
    let claims = setup.verified(&ticket);
    follower
        .wait_event("reservation_created", reservation_created(claims.ticket_id))
        .await;

    let mut agent = setup.stack.agent(&setup.device);
    let (session_id, _pid) = setup.stack.start_session(&mut agent, &ticket).await;
    follower
        .wait_event("session_started", |event| match &event.kind {
            EventKind::SessionStarted { session_id: id, .. } if *id == session_id => Some(()),
            _ => None,
        })
        .await;
    claims.ticket_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_books_and_follows_the_events() {
    if !tools_or_skip(&["python3"], true) {
        return;
    }
    let setup = Setup::start().await;
    let mut command = setup.command("python3");
    command
        .arg(example("book.py"))
        .args(["shibuya", "pc-01", "--minutes", "5", "--free-slots"])
        .args(["--follow", "5"]);
    let output = run(command).await;
    let mut lines = output.lines();
    let ticket = lines.next().expect("the ticket on the first line");
    let claims = setup.verified(ticket);
    assert_eq!(
        claims.not_after - claims.not_before,
        chrono::Duration::minutes(5)
    );
    let created = reservation_created(claims.ticket_id);
    let events: Vec<Event> = lines
        .map(|line| message::decode(line.as_bytes()).expect("an event a line"))
        .collect();
    assert!(
        events.iter().any(|event| created(event).is_some()),
        "book.py --follow saw no reservation_created for its booking: {events:?}"
    );
    setup.check_request_signatures(2);
    setup.stack.shutdown().await;
}

/// The envelope a script prints with `--dry-run`, checked against `key`: the signature verifies
/// and the request is the reservation asked for.
fn check_dry_run(output: &[u8], key: &IntegratorKey, minutes: u32) {
    let envelope: BookingEnvelope = message::decode(output.trim_ascii_end())
        .unwrap_or_else(|error| panic!("not an envelope: {error}"));
    assert_eq!(&envelope.key_id, key.key_id());
    envelope
        .verify(&key.public_key())
        .unwrap_or_else(|error| panic!("{envelope:?} does not verify: {error:?}"));
    let request = envelope.decode_request().expect("a booking request");
    let now = chrono::Utc::now();
    assert!(
        (request.sent_at - now).num_seconds().abs() < 60,
        "{request:?}"
    );
    match request.action {
        BookingAction::Reserve {
            store,
            device,
            minutes: asked,
            ..
        } => assert_eq!(
            (store.as_str(), device.as_str(), asked),
            ("shibuya", "pc-01", minutes)
        ),
        other => panic!("not a reservation: {other:?}"),
    }
}

#[tokio::test]
async fn examples_sign_requests_that_mujin_verifies() {
    let key = IntegratorKey::generate().expect("a key");
    let env = [
        ("MUJIN_INTEGRATOR", "acme".to_owned()),
        ("MUJIN_INTEGRATOR_KEY_ID", key.key_id().to_string()),
        ("MUJIN_INTEGRATOR_KEY", key.expose_hex()),
    ];
    let dry_run = |program: &str| {
        let mut command = Command::new(program);
        command
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null());
        command
    };
    if tools_or_skip(&["openssl", "xxd", "jq"], false) {
        let mut command = dry_run(example("book.sh").to_str().expect("path"));
        command.args(["--dry-run", "shibuya", "pc-01", "45"]);
        check_dry_run(run(command).await.as_bytes(), &key, 45);
    }
    if tools_or_skip(&["python3"], true) {
        let mut command = dry_run("python3");
        command.arg(example("book.py")).args(["shibuya", "pc-01"]);
        command.args(["--minutes", "50", "--dry-run"]);
        check_dry_run(run(command).await.as_bytes(), &key, 50);
    }
}
