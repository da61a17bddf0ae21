//! The `mujin-agent` command line: flags (also read from `MUJIN_AGENT_*` variables), tracing to
//! stderr, a runtime, and the OS signals that shut the agent down.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mujin_protocol::device_auth::DeviceKey;
use mujin_protocol::signed::parse_public_key;
use mujin_protocol::ticket::PublicKey;
use mujin_protocol::{DeviceId, StoreId};

use crate::scanner::serial::{Baud, SerialScanner};
use crate::Settings;

/// How long the runtime may take to wind down after `run` returned (stdin readers may be stuck
/// in a blocking read).
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(500);

/// The mujin device agent: reads tickets from the scanner, runs the device's program for
/// each accepted session and stops it when the session's lease ends.
#[derive(Debug, Parser)]
#[command(name = "mujin-agent", version)]
pub struct Args {
    /// Store id, e.g. `shibuya`.
    #[arg(long, env = "MUJIN_AGENT_STORE", value_parser = StoreId::parse)]
    pub store: StoreId,
    /// Device id within the store, e.g. `pc-01`.
    #[arg(long, env = "MUJIN_AGENT_DEVICE", value_parser = DeviceId::parse)]
    pub device: DeviceId,
    /// MQTT broker as HOST:PORT.
    #[arg(long, env = "MUJIN_AGENT_BROKER", value_parser = parse_broker, default_value = "127.0.0.1:1883")]
    pub broker: (String, u16),
    /// MQTT user name.
    #[arg(long, env = "MUJIN_AGENT_USERNAME")]
    pub username: String,
    /// MQTT password.
    #[arg(long, env = "MUJIN_AGENT_PASSWORD", hide_env_values = true)]
    pub password: String,
    /// Named pipe to read scans from, one per line (created if missing).
    #[arg(long, env = "MUJIN_AGENT_SCAN_PIPE")]
    pub scan_pipe: Option<PathBuf>,
    /// Serial QR scanner to read scans from: a tty such as `/dev/ttyACM0` (better a stable
    /// `/dev/serial/by-id/…` link), set raw at --serial-baud; one reading per line ended by CR
    /// and/or LF. Opened again when it is plugged back.
    #[arg(long, env = "MUJIN_AGENT_SCAN_SERIAL")]
    pub scan_serial: Option<PathBuf>,
    /// Baud rate of --scan-serial.
    #[arg(long, env = "MUJIN_AGENT_SERIAL_BAUD", value_parser = Baud::parse, default_value_t = Baud::default(), requires = "scan_serial")]
    pub serial_baud: Baud,
    /// Linux input device of a keyboard-wedge scanner to read scans from, e.g.
    /// `/dev/input/by-id/usb-…-event-kbd`; grabbed exclusively so its keys reach nothing else.
    /// Opened again when it is plugged back.
    #[arg(long, env = "MUJIN_AGENT_SCAN_EVDEV")]
    pub scan_evdev: Option<PathBuf>,
    /// Do not read scans from stdin.
    #[arg(long, env = "MUJIN_AGENT_NO_STDIN")]
    pub no_stdin: bool,
    /// Milliseconds between telemetry reports.
    #[arg(
        long,
        env = "MUJIN_AGENT_TELEMETRY_INTERVAL_MS",
        default_value_t = 2000
    )]
    pub telemetry_interval_ms: u64,
    /// Milliseconds a program gets to exit after SIGTERM before SIGKILL.
    #[arg(long, env = "MUJIN_AGENT_STOP_GRACE_MS", default_value_t = 3000)]
    pub stop_grace_ms: u64,
    /// Milliseconds a scan may go unanswered by management before the device checks the ticket
    /// itself against the store's trust list and, if the store allows it, starts the program
    /// provisionally (management confirms or refuses it when it answers).
    #[arg(long, env = "MUJIN_AGENT_OFFLINE_AFTER_MS", default_value_t = 3000)]
    pub offline_after_ms: u64,
    /// Milliseconds within which the same code read again is the scanner repeating itself (a
    /// code held in front of it, a stuck trigger) and not a new scan; 0 sends every reading.
    #[arg(long, env = "MUJIN_AGENT_REPEAT_WINDOW_MS", default_value_t = 3000)]
    pub repeat_window_ms: u64,
    /// Management's command key as KEYID:HEX (`mujin-management command-key` prints it). When
    /// given, the agent acts only on commands and desired states signed with it and meant for
    /// this device; without it, on anything well-formed.
    #[arg(long, env = "MUJIN_AGENT_MANAGEMENT_KEY", value_parser = parse_management_key)]
    pub management_key: Option<PublicKey>,
    /// Management's root key as KEYID:HEX (`mujin-management root-key` prints it). Only trust
    /// lists signed with it are used to check tickets offline; without it, none is and the
    /// device never starts a session offline.
    #[arg(long, env = "MUJIN_AGENT_ROOT_KEY", value_parser = parse_management_key)]
    pub root_key: Option<PublicKey>,
    /// The device's own key, 64 hex digits (`mujin-management device-enrol` prints it once, as
    /// MUJIN_AGENT_DEVICE_KEY). Everything the agent publishes is signed with it; management
    /// refuses device messages that are not.
    #[arg(long, env = "MUJIN_AGENT_DEVICE_KEY", hide_env_values = true, value_parser = DeviceKeyParser)]
    pub device_key: Option<Arc<DeviceKey>>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The operating program and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub program: Vec<OsString>,
}

/// TLS to the broker.
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// Connect with TLS, accepting only a broker certificate signed by this CA (PEM) and valid
    /// for the host of --broker.
    #[arg(long, env = "MUJIN_AGENT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This device's certificate (PEM), for a broker that requires client certificates.
    #[arg(long, env = "MUJIN_AGENT_TLS_CLIENT_CERT", requires_all = ["tls_ca", "tls_client_key"])]
    pub tls_client_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-client-cert.
    #[arg(long, env = "MUJIN_AGENT_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS settings, if --tls-ca turns TLS on (clap already refused partial client
    /// certificates).
    fn settings(self) -> Option<mujin_transport::TlsSettings> {
        self.tls_ca.map(|ca_file| mujin_transport::TlsSettings {
            ca_file,
            client_cert: self.tls_client_cert,
            client_key: self.tls_client_key,
        })
    }
}

fn parse_management_key(text: &str) -> Result<PublicKey, String> {
    parse_public_key(text).map_err(|err| err.to_string())
}

/// Parses the device key without ever repeating it: clap's own message for a value it refuses
/// quotes the value, and this one is a secret.
#[derive(Clone)]
struct DeviceKeyParser;

impl clap::builder::TypedValueParser for DeviceKeyParser {
    type Value = Arc<DeviceKey>;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        let text = value.to_str().unwrap_or_default();
        DeviceKey::from_hex(text).map(Arc::new).map_err(|err| {
            let message = format!(
                "invalid --device-key (MUJIN_AGENT_DEVICE_KEY): {err} (the value is not shown)\n"
            );
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message).with_cmd(cmd)
        })
    }
}

/// Parses `HOST:PORT` (the host may be a name, an IPv4 address or a bracketed IPv6 address).
pub fn parse_broker(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT, got {text:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("missing host in {text:?}"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("invalid port in {text:?}"))?;
    Ok((host.to_owned(), port))
}

impl Args {
    /// The settings these flags describe.
    pub fn into_settings(self) -> Settings {
        let mut program = self.program.into_iter();
        // clap guarantees at least one value (`required = true`).
        let command = program.next().unwrap_or_default();
        Settings {
            store: self.store,
            device: self.device,
            broker_host: self.broker.0,
            broker_port: self.broker.1,
            username: self.username,
            password: self.password,
            program: command,
            args: program.collect(),
            scan_pipe: self.scan_pipe,
            read_stdin: !self.no_stdin,
            scan_serial: self.scan_serial.map(|path| SerialScanner {
                path,
                baud: self.serial_baud,
            }),
            scan_evdev: self.scan_evdev,
            telemetry_interval: Duration::from_millis(self.telemetry_interval_ms),
            stop_grace: Duration::from_millis(self.stop_grace_ms),
            offline_after: Duration::from_millis(self.offline_after_ms),
            repeat_window: Duration::from_millis(self.repeat_window_ms),
            management_key: self.management_key,
            root_key: self.root_key,
            device_key: self.device_key,
            tls: self.tls.settings(),
        }
    }
}

/// The whole `mujin-agent` command: parses `args` (the first one is the program name), logs to
/// stderr, runs the agent on its own runtime until SIGINT or SIGTERM.
pub fn cli_main(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    let args: Args = mujin_config::parse_from("MUJIN_AGENT_CONFIG", args);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init()
        .ok();
    let settings = args.into_settings();
    tracing::info!(?settings, "starting");
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal().context("cannot listen for SIGTERM")?;
        crate::run(settings, shutdown).await
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
}

/// Completes on the first SIGINT or SIGTERM.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec![
            "mujin-agent",
            "--store",
            "shibuya",
            "--device",
            "pc-01",
            "--username",
            "u",
            "--password",
            "p",
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
    }

    #[test]
    fn program_and_arguments_follow_the_double_dash() {
        let settings = parse(&["--broker", "10.0.0.1:1884", "--", "sh", "-c", "sleep 1"])
            .unwrap()
            .into_settings();
        assert_eq!(settings.program, OsString::from("sh"));
        assert_eq!(settings.args, vec![OsString::from("-c"), "sleep 1".into()]);
        assert_eq!(
            (settings.broker_host.as_str(), settings.broker_port),
            ("10.0.0.1", 1884)
        );
        assert_eq!(settings.stop_grace, Duration::from_secs(3));
        assert_eq!(settings.offline_after, Duration::from_secs(3));
        assert_eq!(settings.repeat_window, Duration::from_secs(3));
        assert!(settings.read_stdin);
    }

    #[test]
    fn the_offline_after_time_is_a_flag() {
        let settings = parse(&["--offline-after-ms", "1500", "--", "true"])
            .unwrap()
            .into_settings();
        assert_eq!(settings.offline_after, Duration::from_millis(1500));
        let settings = parse(&["--repeat-window-ms", "0", "--", "true"])
            .unwrap()
            .into_settings();
        assert_eq!(settings.repeat_window, Duration::ZERO);
    }

    #[test]
    fn the_management_key_is_an_optional_flag() {
        let settings = parse(&["--", "true"]).unwrap().into_settings();
        assert_eq!(settings.management_key, None);
        let hex = "ab".repeat(32);
        let settings = parse(&["--management-key", &format!("c1:{hex}"), "--", "true"])
            .unwrap()
            .into_settings();
        let key = settings.management_key.unwrap();
        assert_eq!((key.key_id.as_str(), key.bytes), ("c1", [0xab; 32]));
        let err = parse(&["--management-key", "c1:abcd", "--", "true"]).unwrap_err();
        assert!(err.to_string().contains("KEYID:HEX"), "{err}");
    }

    #[test]
    fn the_root_key_is_an_optional_flag() {
        let settings = parse(&["--", "true"]).unwrap().into_settings();
        assert_eq!(settings.root_key, None);
        let hex = "cd".repeat(32);
        let settings = parse(&["--root-key", &format!("r1:{hex}"), "--", "true"])
            .unwrap()
            .into_settings();
        let key = settings.root_key.unwrap();
        assert_eq!((key.key_id.as_str(), key.bytes), ("r1", [0xcd; 32]));
        assert!(parse(&["--root-key", "r1", "--", "true"]).is_err());
    }

    #[test]
    fn the_device_key_is_an_optional_flag_never_shown() {
        let settings = parse(&["--", "true"]).unwrap().into_settings();
        assert!(settings.device_key.is_none());
        let key = DeviceKey::generate().unwrap();
        let seed = key.expose_hex();
        let settings = parse(&["--device-key", &seed, "--", "true"])
            .unwrap()
            .into_settings();
        let parsed = settings.device_key.as_ref().unwrap();
        assert_eq!(parsed.public_key(), key.public_key());
        assert!(!format!("{settings:?}").contains(&seed));
        let err = parse(&["--device-key", "abcdef0123", "--", "true"]).unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
        assert!(
            !err.to_string().contains("abcdef0123"),
            "the secret is repeated: {err}"
        );
    }

    #[test]
    fn tls_is_on_with_a_ca_and_a_client_certificate_needs_its_key() {
        let settings = parse(&["--", "true"]).unwrap().into_settings();
        assert_eq!(settings.tls, None);
        let settings = parse(&["--tls-ca", "ca.pem", "--", "true"])
            .unwrap()
            .into_settings();
        let tls = settings.tls.unwrap();
        assert_eq!((tls.ca_file, tls.client_cert), ("ca.pem".into(), None));
        let settings = parse(&[
            "--tls-ca",
            "ca.pem",
            "--tls-client-cert",
            "c.pem",
            "--tls-client-key",
            "k.pem",
            "--",
            "true",
        ])
        .unwrap()
        .into_settings();
        assert_eq!(settings.tls.unwrap().client_key, Some("k.pem".into()));
        assert!(parse(&[
            "--tls-ca",
            "ca.pem",
            "--tls-client-cert",
            "c.pem",
            "--",
            "true"
        ])
        .is_err());
        assert!(parse(&[
            "--tls-client-cert",
            "c.pem",
            "--tls-client-key",
            "k.pem",
            "--",
            "true"
        ])
        .is_err());
    }

    #[test]
    fn scanners_are_optional_flags() {
        let settings = parse(&["--", "true"]).unwrap().into_settings();
        assert_eq!((settings.scan_serial, settings.scan_evdev), (None, None));
        let settings = parse(&["--scan-serial", "/dev/ttyACM0", "--", "true"])
            .unwrap()
            .into_settings();
        let serial = settings.scan_serial.unwrap();
        assert_eq!(serial.path, PathBuf::from("/dev/ttyACM0"));
        assert_eq!(serial.baud.bits_per_second(), 9600);
        let settings = parse(&[
            "--scan-serial",
            "/dev/ttyUSB0",
            "--serial-baud",
            "115200",
            "--scan-evdev",
            "/dev/input/event3",
            "--",
            "true",
        ])
        .unwrap()
        .into_settings();
        assert_eq!(
            settings.scan_serial.unwrap().baud.bits_per_second(),
            115_200
        );
        assert_eq!(settings.scan_evdev, Some("/dev/input/event3".into()));
        let err = parse(&[
            "--scan-serial",
            "/dev/ttyS0",
            "--serial-baud",
            "1234",
            "--",
            "true",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("unsupported baud rate"), "{err}");
        assert!(parse(&["--serial-baud", "9600", "--", "true"]).is_err());
    }

    #[test]
    fn a_program_is_required() {
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn bad_ids_are_refused_with_the_reason() {
        let err = Args::try_parse_from([
            "mujin-agent",
            "--store",
            "Shibuya",
            "--device",
            "pc-01",
            "--username",
            "u",
            "--password",
            "p",
            "--",
            "true",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("store id may only hold"), "{err}");
    }

    #[test]
    fn broker_addresses() {
        assert_eq!(
            parse_broker("localhost:1883"),
            Ok(("localhost".into(), 1883))
        );
        assert_eq!(parse_broker("[::1]:1883"), Ok(("::1".into(), 1883)));
        assert!(parse_broker("localhost").is_err());
        assert!(parse_broker(":1883").is_err());
        assert!(parse_broker("host:99999").is_err());
    }

    #[test]
    fn the_password_is_not_in_debug_output() {
        let settings = parse(&["--", "true"]).unwrap().into_settings();
        let text = format!("{settings:?}");
        assert!(!text.contains("\"p\""), "{text}");
        assert!(text.contains("redacted"));
    }
}
