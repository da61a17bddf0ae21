//! The real `mujin-console` binary in a real terminal (tmux) against a real stack: an operator
//! (registered with a key file the console signs its requests with) selects a device with the
//! keys, force-stops its session, sees management's answer on screen, and the program on the
//! device really stops.

use std::process::{Command, Output};
use std::time::Duration;

use mujin_management::operators::Role;
use mujin_protocol::message::EventKind;
use mujin_tests::operator::Operator;
use mujin_tests::stack::{Stack, OPERATOR};
use mujin_tests::{process_alive, wait_for};

const SHORT: Duration = Duration::from_secs(15);

/// One tmux server of its own (private socket) running one command in a 120×30 window; killed
/// when dropped, also when the test fails.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    /// Whether tmux can be run at all.
    fn installed() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|output| output.status.success())
    }

    fn start(name: &str, command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("{name}-{}", std::process::id()),
            session: name.to_owned(),
        };
        let output = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "120",
            "-y",
            "30",
            command,
        ]);
        assert!(
            output.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        tmux
    }

    /// Runs a tmux command on this server (no user configuration).
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn send_keys(&self, keys: &str) {
        let output = self.run(&["send-keys", "-t", &self.session, keys]);
        assert!(output.status.success(), "tmux send-keys {keys}");
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(
            &self
                .run(&["capture-pane", "-p", "-t", &self.session])
                .stdout,
        )
        .into_owned()
    }

    /// Waits until the screen shows `text`; panics with the screen after `timeout`.
    async fn wait_screen(&self, text: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the console never showed {text:?}; the screen:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_force_stops_a_session_from_the_console() {
    if !Tmux::installed() {
        println!("skipped: tmux is not installed (CI installs it; `apt-get install tmux`)");
        return;
    }
    let stack = Stack::start().await;
    let device = stack.add_device("shibuya", "pc-01").await;
    let mut agent = stack.agent(&device);
    let booking = stack.book_now(&device, 600).await;
    agent.scan(&booking.ticket).await;
    agent.wait_screen("ACCEPTED", SHORT).await;
    let pid = agent.program_pid(SHORT).await;

    let operator = Operator::add(&stack, OPERATOR.0, Role::Operator).await;
    let key_file = stack.dir.path().join("alice.pk8");
    operator.write_key_file(&key_file);

    // The console prints its error and stays on screen if it cannot start.
    let command = format!(
        "MUJIN_CONSOLE_PASSWORD='{password}' '{console}' --broker 127.0.0.1:{port} \
         --username {username} --operator-key '{key}'; echo console exited with $?; sleep 60",
        password = OPERATOR.1,
        console = mujin_tests::binary("mujin-console").display(),
        port = stack.port,
        username = OPERATOR.0,
        key = key_file.display(),
    );
    let console = Tmux::start("mujin-console-test", &command);
    console.wait_screen("shibuya", SHORT).await;
    console.send_keys("2");
    console.wait_screen("running", SHORT).await;
    console.send_keys("x");
    console
        .wait_screen("Force stop shibuya/pc-01?", SHORT)
        .await;
    console.send_keys("y");
    let screen = console
        .wait_screen("force stop shibuya/pc-01: done", SHORT)
        .await;
    println!("the console after the reply:\n{screen}");

    wait_for("the program to stop", SHORT, || async {
        (!process_alive(pid)).then_some(())
    })
    .await;
    let row = wait_for("the session to end", SHORT, || async {
        stack
            .session_row(&booking)
            .await
            .filter(|row| row.ended_at.is_some())
    })
    .await;
    assert_eq!(row.end_reason.as_deref(), Some("forced"));
    // The console sees the end too.
    stack
        .observer
        .wait_event("the session to end", SHORT, |event| match event.kind {
            EventKind::SessionEnded { .. } => Some(()),
            _ => None,
        })
        .await;
    console.wait_screen("idle", SHORT).await;
    println!("checked: force stop from the console, reply shown, program stopped, session forced");
    drop(console);
    agent.stop().await;
    stack.shutdown().await;
}
