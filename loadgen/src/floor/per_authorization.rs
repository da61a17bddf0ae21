//! What one authorization (a scan, its start, and the ack and state that follow) cannot do
//! without — MQTT messages, durable commits, signatures — and the CPU that costs at the least
//! on this machine, from what each costs when measured alone ([`super::throughput`],
//! [`SignatureFloor`]). Every count leaves out what some authorization might not need, so the
//! floor stays below what an authorization really costs.

use serde::Serialize;

use super::throughput::{CommitThroughput, MqttThroughput};
use super::{SignatureFloor, SIGNS_PER_AUTHORIZATION};

/// Messages a device publishes and management receives: the scan, the ack of the start
/// command and the state after it.
pub const DEVICE_MESSAGES_PER_AUTHORIZATION: u32 = 3;
/// Messages management publishes and the device receives: the scan's result and the start
/// command. Management also publishes the desired state (retained; the bench's devices do not
/// subscribe to it) and two events (`scan_accepted`, `session_started`; nobody subscribes to
/// them in the bench): the broker spends CPU on those too, but they are published without
/// being delivered, so they are not counted.
pub const MANAGEMENT_MESSAGES_PER_AUTHORIZATION: u32 = 2;
/// QoS 1 messages both published and delivered per authorization.
pub const MESSAGES_PER_AUTHORIZATION: u32 =
    DEVICE_MESSAGES_PER_AUTHORIZATION + MANAGEMENT_MESSAGES_PER_AUTHORIZATION;

/// Durable commits per authorization: the scan's transaction (`scans::decide_and_record`
/// writes the scan, the session, the device's epoch, the start command and the events, and
/// commits once) and the ack's settle (`outbox::record_ack`: one UPDATE of the command,
/// committed on its own). The state after a start commits nothing: `devices::reconcile` reads
/// the open session without a transaction, since the earlier session's exit the state repeats
/// is known recorded (only the state after a stop records one, in a transaction of its own
/// that the next authorization's count leaves out).
pub const COMMITS_PER_AUTHORIZATION: u32 = 2;

/// Management signs the start command and the desired state.
pub const MANAGEMENT_SIGNS_PER_AUTHORIZATION: u32 = 2;
/// Management verifies the scan, its ticket, the ack and the state.
pub const MANAGEMENT_VERIFIES_PER_AUTHORIZATION: u32 = 4;
/// A device signs the scan, the ack and the state. The bench's virtual devices verify nothing:
/// the agent's two verifications (the start command, the desired state), counted in
/// [`super::VERIFIES_PER_AUTHORIZATION`], happen on the agent's own hardware, not on these cores.
pub const DEVICE_SIGNS_PER_AUTHORIZATION: u32 =
    SIGNS_PER_AUTHORIZATION - MANAGEMENT_SIGNS_PER_AUTHORIZATION;

/// CPU one authorization cannot do without, by where it is spent, in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AuthorizationCpu {
    /// Ed25519 signs and verifications.
    pub signatures_us: f64,
    /// The broker, for [`MESSAGES_PER_AUTHORIZATION`] messages.
    pub broker_us: f64,
    /// PostgreSQL, for [`COMMITS_PER_AUTHORIZATION`] commits.
    pub postgres_us: f64,
    /// The clients' side of the same messages and commits: publishing, receiving, sending the
    /// statements and reading their answers.
    pub clients_us: f64,
    pub total_us: f64,
    /// cores × 1,000,000 / total µs: authorizations/s if nothing else cost CPU (`None` when
    /// nothing was measured).
    pub ceiling_per_sec: Option<f64>,
}

impl AuthorizationCpu {
    fn new(parts: [f64; 4], cores: usize) -> AuthorizationCpu {
        let [signatures_us, broker_us, postgres_us, clients_us] = parts;
        let total_us = signatures_us + broker_us + postgres_us + clients_us;
        AuthorizationCpu {
            signatures_us,
            broker_us,
            postgres_us,
            clients_us,
            total_us,
            ceiling_per_sec: (total_us > 0.0 && total_us.is_finite())
                .then(|| cores as f64 * 1_000_000.0 / total_us),
        }
    }
}

/// The two floors of CPU per authorization.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AuthorizationFloor {
    /// The cores the ceilings are for (this machine's).
    pub cores: usize,
    /// What management, the broker and PostgreSQL must spend, devices being elsewhere:
    /// management's signatures, the broker's and PostgreSQL's work, and management's side of
    /// each message (receiving the device's three, publishing its two) and commit.
    pub server: AuthorizationCpu,
    /// The same with the devices on the same cores, as in the bench: their signatures too and
    /// their side of each message (publishing three, receiving two).
    pub bench: AuthorizationCpu,
}

impl AuthorizationFloor {
    pub fn new(
        signatures: &SignatureFloor,
        mqtt: &MqttThroughput,
        commits: &CommitThroughput,
        cores: usize,
    ) -> AuthorizationFloor {
        let count = f64::from;
        let broker_us = count(MESSAGES_PER_AUTHORIZATION) * mqtt.broker_us;
        let postgres_us = count(COMMITS_PER_AUTHORIZATION) * commits.server_us;
        let management_signatures_us = count(MANAGEMENT_SIGNS_PER_AUTHORIZATION)
            * signatures.sign_us
            + count(MANAGEMENT_VERIFIES_PER_AUTHORIZATION) * signatures.verify_us;
        let management_clients_us = count(DEVICE_MESSAGES_PER_AUTHORIZATION) * mqtt.subscriber_us
            + count(MANAGEMENT_MESSAGES_PER_AUTHORIZATION) * mqtt.publisher_us
            + count(COMMITS_PER_AUTHORIZATION) * commits.client_us;
        let device_signatures_us = count(DEVICE_SIGNS_PER_AUTHORIZATION) * signatures.sign_us;
        let device_clients_us = count(DEVICE_MESSAGES_PER_AUTHORIZATION) * mqtt.publisher_us
            + count(MANAGEMENT_MESSAGES_PER_AUTHORIZATION) * mqtt.subscriber_us;
        AuthorizationFloor {
            cores,
            server: AuthorizationCpu::new(
                [
                    management_signatures_us,
                    broker_us,
                    postgres_us,
                    management_clients_us,
                ],
                cores,
            ),
            bench: AuthorizationCpu::new(
                [
                    management_signatures_us + device_signatures_us,
                    broker_us,
                    postgres_us,
                    management_clients_us + device_clients_us,
                ],
                cores,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::floor::VERIFIES_PER_AUTHORIZATION;

    fn mqtt() -> MqttThroughput {
        MqttThroughput {
            broker_us: 10.0,
            publisher_us: 3.0,
            subscriber_us: 5.0,
            ..MqttThroughput::default()
        }
    }

    fn commits() -> CommitThroughput {
        CommitThroughput {
            server_us: 100.0,
            client_us: 7.0,
            ..CommitThroughput::default()
        }
    }

    #[test]
    fn the_counts_split_the_signatures_and_messages_between_management_and_devices() {
        assert_eq!(MESSAGES_PER_AUTHORIZATION, 5);
        assert_eq!(
            MANAGEMENT_SIGNS_PER_AUTHORIZATION + DEVICE_SIGNS_PER_AUTHORIZATION,
            SIGNS_PER_AUTHORIZATION
        );
        // The agent's two verifications are the rest.
        assert_eq!(
            VERIFIES_PER_AUTHORIZATION - MANAGEMENT_VERIFIES_PER_AUTHORIZATION,
            2
        );
    }

    #[test]
    fn the_server_floor_counts_management_broker_and_postgres() {
        let signatures = SignatureFloor {
            sign_us: 20.0,
            verify_us: 50.0,
        };
        let floor = AuthorizationFloor::new(&signatures, &mqtt(), &commits(), 2);
        let server = floor.server;
        assert_eq!(server.signatures_us, 2.0 * 20.0 + 4.0 * 50.0);
        assert_eq!(server.broker_us, 5.0 * 10.0);
        assert_eq!(server.postgres_us, 2.0 * 100.0);
        // Receives three messages, publishes two, runs two commits.
        assert_eq!(server.clients_us, 3.0 * 5.0 + 2.0 * 3.0 + 2.0 * 7.0);
        assert_eq!(server.total_us, 240.0 + 50.0 + 200.0 + 35.0);
        assert_eq!(server.ceiling_per_sec, Some(2.0 * 1e6 / 525.0));
    }

    #[test]
    fn the_bench_floor_adds_the_devices_signs_and_their_side_of_each_message() {
        let signatures = SignatureFloor {
            sign_us: 20.0,
            verify_us: 50.0,
        };
        let floor = AuthorizationFloor::new(&signatures, &mqtt(), &commits(), 4);
        let bench = floor.bench;
        assert_eq!(bench.signatures_us, 5.0 * 20.0 + 4.0 * 50.0);
        assert_eq!(bench.broker_us, floor.server.broker_us);
        assert_eq!(bench.postgres_us, floor.server.postgres_us);
        // Both sides of five messages, and management's side of two commits.
        assert_eq!(bench.clients_us, 5.0 * (3.0 + 5.0) + 2.0 * 7.0);
        assert_eq!(bench.total_us, 300.0 + 50.0 + 200.0 + 54.0);
        assert_eq!(bench.ceiling_per_sec, Some(4.0 * 1e6 / 604.0));
    }

    #[test]
    fn nothing_measured_has_no_ceiling() {
        let floor = AuthorizationFloor::new(
            &SignatureFloor::default(),
            &MqttThroughput::default(),
            &CommitThroughput::default(),
            2,
        );
        assert_eq!(floor.server.total_us, 0.0);
        assert_eq!(floor.server.ceiling_per_sec, None);
        assert_eq!(floor.bench.ceiling_per_sec, None);
    }
}
