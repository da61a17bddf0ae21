//! Integrators for booking over MQTT on a test [`Stack`]: enrolment through the real
//! `mujin-management integrator-enrol` command, its printed `KEY=value` lines parsed into an
//! [`IntegratorLogin`].

use std::collections::BTreeMap;
use std::process::Stdio;

use mujin_protocol::booking::IntegratorKey;
use mujin_protocol::identity::Identity;
use mujin_protocol::IntegratorId;
use tokio::process::Command;

use crate::stack::Stack;

/// What `mujin-management integrator-enrol` printed for one integrator.
#[derive(Debug, Clone)]
pub struct IntegratorLogin {
    /// `MUJIN_INTEGRATOR`.
    pub integrator: IntegratorId,
    /// `MUJIN_MQTT_USERNAME`: `integrator:NAME` (on Mosquitto, use
    /// [`IntegratorLogin::mosquitto_username`]).
    pub username: String,
    /// `MUJIN_MQTT_PASSWORD`: the broker token.
    pub password: String,
    /// `MUJIN_MQTT_CLIENT_ID`: `mujin-integrator.NAME` (`….SUFFIX` is allowed too).
    pub client_id: String,
    /// `MUJIN_INTEGRATOR_KEY_ID`.
    pub key_id: String,
    /// `MUJIN_INTEGRATOR_KEY`: the Ed25519 seed, 64 hex digits.
    pub key_hex: String,
    /// Every printed line, `KEY=value`, in order (e.g. to write an env file for a script).
    pub printed: String,
}

impl IntegratorLogin {
    /// Parses the printed lines; panics when one is missing.
    pub fn parse(printed: &str) -> Self {
        let values: BTreeMap<&str, &str> = printed
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let value = |key: &str| {
            values
                .get(key)
                .unwrap_or_else(|| panic!("{key} missing from {printed}"))
                .to_string()
        };
        Self {
            integrator: IntegratorId::parse(&value("MUJIN_INTEGRATOR")).expect("integrator id"),
            username: value("MUJIN_MQTT_USERNAME"),
            password: value("MUJIN_MQTT_PASSWORD"),
            client_id: value("MUJIN_MQTT_CLIENT_ID"),
            key_id: value("MUJIN_INTEGRATOR_KEY_ID"),
            key_hex: value("MUJIN_INTEGRATOR_KEY"),
            printed: printed.to_owned(),
        }
    }

    /// The signing key, to sign requests in Rust.
    pub fn key(&self) -> IntegratorKey {
        IntegratorKey::from_hex(&self.key_hex).expect("the printed key")
    }

    /// The printed values as (name, value) pairs, for a child process's environment.
    pub fn env(&self) -> Vec<(String, String)> {
        self.printed
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }

    /// The username on Mosquitto (`integrator.NAME`).
    pub fn mosquitto_username(&self) -> String {
        mujin_management::mosquitto::mosquitto_username(&Identity::Integrator(
            self.integrator.clone(),
        ))
    }
}

impl Stack {
    /// Enrols integrator `name` (again) by running `mujin-management integrator-enrol
    /// --integrator NAME` on the stack's database and key directory, and returns what it
    /// printed. On Mosquitto, its password and the ACL are updated too. An earlier enrolment's
    /// token and key stop working.
    pub async fn enrol_integrator(&self, name: &str) -> IntegratorLogin {
        let output = Command::new(crate::binary("mujin-management"))
            .arg("--database-url")
            .arg(&self.database_url)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["integrator-enrol", "--integrator", name])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run mujin-management integrator-enrol");
        assert!(
            output.status.success(),
            "integrator-enrol failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let login = IntegratorLogin::parse(&String::from_utf8_lossy(&output.stdout));
        if let Some(mosquitto) = &self.mosquitto {
            let identity = Identity::Integrator(login.integrator.clone());
            mosquitto
                .enrolled(&self.pool, &identity, &login.password)
                .await;
        }
        login
    }

    /// The broker's MQTT 5 port; panics unless the stack has booking over MQTT on
    /// ([`Stack::start_with_bookings`]).
    pub fn v5_port(&self) -> u16 {
        self.v5_port
            .expect("start the stack with Stack::start_with_bookings for an MQTT 5 port")
    }
}
