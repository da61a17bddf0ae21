//! Real `mujin-agent` processes, each running a real child program that writes its pid to a
//! file so tests can check whether it is alive. Each is given management's command and root
//! keys, so it acts only on what management signed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mujin_protocol::{DeviceId, StoreId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// A running agent process.
pub struct Agent {
    child: Child,
    stdin: Option<ChildStdin>,
    screen: Arc<Mutex<Vec<String>>>,
    /// The program writes its pid here each time it starts.
    pub pid_file: PathBuf,
}

impl Agent {
    /// Starts `mujin-agent` for `store`/`device` against the broker on `port`, trusting
    /// `management_key` for commands and `root_key` for trust lists (both `KEYID:HEX`) and
    /// signing with `device_key` (64 hex digits) if given; `extra_args` go before the program
    /// (e.g. TLS flags).
    // One flat list of the agent's settings, as on its command line; a struct would only
    // rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        dir: &Path,
        port: u16,
        credentials: (&str, &str),
        (store, device): (&StoreId, &DeviceId),
        management_key: &str,
        root_key: &str,
        device_key: Option<&str>,
        extra_args: &[String],
    ) -> Agent {
        let pid_file = dir.join(format!("{store}-{device}.pid"));
        let program = format!("echo $$ > '{}'; exec sleep 600", pid_file.display());
        let mut command = Command::new(crate::binary("mujin-agent"));
        if let Some(device_key) = device_key {
            command.env("MUJIN_AGENT_DEVICE_KEY", device_key);
        }
        let mut child = command
            .args(["--store", store.as_str(), "--device", device.as_str()])
            .args(["--broker", &format!("127.0.0.1:{port}")])
            .args(["--username", credentials.0])
            .env("MUJIN_AGENT_PASSWORD", credentials.1)
            .args(["--stop-grace-ms", "1000"])
            .args(
                (!extra_args
                    .iter()
                    .any(|arg| arg == "--telemetry-interval-ms"))
                .then_some(["--telemetry-interval-ms", "500"])
                .into_iter()
                .flatten(),
            )
            // Several tests scan one ticket twice on purpose, at once.
            .args(["--repeat-window-ms", "0"])
            .args(extra_args)
            .env("MUJIN_AGENT_MANAGEMENT_KEY", management_key)
            .env("MUJIN_AGENT_ROOT_KEY", root_key)
            .args(["--", "sh", "-c", &program])
            .env("RUST_LOG", "info,rumqttc=warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start mujin-agent");
        let stdin = child.stdin.take();
        let screen = Arc::new(Mutex::new(Vec::new()));
        if let Some(stdout) = child.stdout.take() {
            let screen = screen.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    println!("[agent stdout] {line}");
                    screen.lock().expect("screen lock").push(line);
                }
            });
        }
        Agent {
            child,
            stdin,
            screen,
            pid_file,
        }
    }

    /// Types a code on the agent's stdin, as a keyboard-wedge scanner does.
    pub async fn scan(&mut self, code: &str) {
        let stdin = self.stdin.as_mut().expect("agent stdin open");
        stdin
            .write_all(format!("{code}\n").as_bytes())
            .await
            .expect("write to agent stdin");
        stdin.flush().await.expect("flush agent stdin");
    }

    /// What the agent printed for the customer so far.
    pub fn screen(&self) -> Vec<String> {
        self.screen.lock().expect("screen lock").clone()
    }

    /// Waits for a screen line containing `text`.
    pub async fn wait_screen(&self, text: &str, timeout: Duration) -> String {
        crate::wait_for(&format!("agent to print {text:?}"), timeout, || {
            let line = self.screen().into_iter().find(|line| line.contains(text));
            async move { line }
        })
        .await
    }

    /// Waits until the program has written its pid, and returns it.
    pub async fn program_pid(&self, timeout: Duration) -> i32 {
        crate::wait_for("the program to start", timeout, || {
            let pid = std::fs::read_to_string(&self.pid_file)
                .ok()
                .and_then(|text| text.trim().parse().ok());
            async move { pid }
        })
        .await
    }

    /// The agent process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Asks the agent to shut down (SIGTERM) and waits for it.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}
