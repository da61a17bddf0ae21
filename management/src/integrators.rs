//! Integrators that book over MQTT (see [`crate::bookings`]): `integrator-enrol` gives one a
//! broker identity `integrator:NAME` and a signing key in one transaction and prints both once
//! as `KEY=value` lines; `integrator-revoke` revokes both. The keys management checks requests
//! against are read here too.

use std::path::Path;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use deadpool_postgres::{GenericClient, Pool};
use mujin_protocol::identity::{Identity, INTEGRATOR_CLIENT_PREFIX};
use mujin_protocol::ticket::PublicKey;
use mujin_protocol::{IntegratorId, KeyId};

use crate::db::WorkError;
use crate::identities::{self, Enrolled, IdentityDbError, Revoked};
use crate::keys;

/// The `mujin-management` subcommands of integrators.
#[derive(Debug, Subcommand)]
pub enum IntegratorCommand {
    /// Give an integrator (a booking site, a kiosk) a broker identity and a signing key for
    /// booking over MQTT, and print both, this once, as KEY=value lines (MUJIN_MQTT_USERNAME,
    /// MUJIN_MQTT_PASSWORD, MUJIN_MQTT_CLIENT_ID, MUJIN_INTEGRATOR, MUJIN_INTEGRATOR_KEY_ID,
    /// MUJIN_INTEGRATOR_KEY). Enrolling again replaces token and key.
    IntegratorEnrol {
        #[arg(long, value_parser = IntegratorId::parse)]
        integrator: IntegratorId,
    },
    /// Revoke an integrator's broker identity and signing key: the broker disconnects it and
    /// management refuses its requests.
    IntegratorRevoke {
        #[arg(long, value_parser = IntegratorId::parse)]
        integrator: IntegratorId,
    },
}

/// Runs one integrator subcommand; `key_dir` holds the pepper.
pub async fn execute(
    command: &IntegratorCommand,
    pool: &Pool,
    key_dir: &Path,
) -> anyhow::Result<()> {
    match command {
        IntegratorCommand::IntegratorEnrol { integrator } => {
            let pepper = keys::load_or_create_pepper(key_dir)?;
            let identity = Identity::Integrator(integrator.clone());
            let enrolled = identities::enrol(pool, &pepper, &identity, Utc::now()).await?;
            // The notice goes to stderr, so stdout is only the lines to keep.
            let replaced = if enrolled.replaced {
                " (its previous token and key no longer work)"
            } else {
                ""
            };
            eprintln!(
                "enrolled {identity}{replaced}; the token and key below are shown only now and stored nowhere"
            );
            print!("{}", enrolment_text(&enrolled));
        }
        IntegratorCommand::IntegratorRevoke { integrator } => {
            let username = Identity::Integrator(integrator.clone()).username();
            match identities::revoke(pool, &username, Utc::now()).await {
                Ok(Revoked::Now(_)) => println!(
                    "revoked {username} and its signing key; the broker disconnects it within seconds"
                ),
                Ok(Revoked::Already(at)) => println!(
                    "{username} was already revoked at {}",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                Err(IdentityDbError::Unknown(_)) => {
                    anyhow::bail!("unknown integrator {integrator}; enrol it with `mujin-management integrator-enrol`")
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(())
}

/// What `integrator-enrol` prints: six `KEY=value` lines, for a shell (`set -a; . ./FILE`) or
/// any dotenv reader.
pub fn enrolment_text(enrolled: &Enrolled) -> String {
    let Identity::Integrator(integrator) = &enrolled.identity else {
        return String::new();
    };
    let mut text = format!(
        "MUJIN_MQTT_USERNAME={}\n\
         MUJIN_MQTT_PASSWORD={}\n\
         MUJIN_MQTT_CLIENT_ID={INTEGRATOR_CLIENT_PREFIX}{integrator}\n\
         MUJIN_INTEGRATOR={integrator}\n",
        enrolled.identity.username(),
        enrolled.token.expose(),
    );
    if let Some(key) = &enrolled.integrator_key {
        text.push_str(&format!(
            "MUJIN_INTEGRATOR_KEY_ID={}\nMUJIN_INTEGRATOR_KEY={}\n",
            key.key_id(),
            key.expose_hex()
        ));
    }
    text
}

/// An integrator's current key, as management checks requests with it.
#[derive(Debug, Clone)]
pub struct IntegratorKeyRow {
    pub integrator: IntegratorId,
    pub key: PublicKey,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The key with id `key_id`, whoever it belongs to (`None`: no such key).
pub async fn key_by_id(
    client: &impl GenericClient,
    key_id: &KeyId,
) -> Result<Option<IntegratorKeyRow>, WorkError> {
    let row = client
        .query_opt(
            "SELECT integrator, public_key, revoked_at FROM integrators WHERE key_id = $1",
            &[&key_id.as_str()],
        )
        .await?;
    Ok(row.and_then(|row| {
        let integrator = IntegratorId::parse(row.get(0)).ok()?;
        let bytes: Vec<u8> = row.get(1);
        Some(IntegratorKeyRow {
            integrator,
            key: PublicKey {
                key_id: key_id.clone(),
                bytes: bytes.try_into().ok()?,
            },
            revoked_at: row.get(2),
        })
    }))
}

#[cfg(test)]
mod tests {
    use mujin_protocol::booking::IntegratorKey;
    use mujin_protocol::identity::Token;

    use super::*;

    #[test]
    fn the_enrolment_is_six_key_value_lines_with_the_secrets_once() {
        let key = IntegratorKey::generate().unwrap();
        let seed = key.expose_hex();
        let key_id = key.key_id().to_string();
        let enrolled = Enrolled {
            identity: Identity::Integrator(IntegratorId::parse("acme").unwrap()),
            token: Token::generate().unwrap(),
            replaced: false,
            device_key: None,
            integrator_key: Some(key),
        };
        let text = enrolment_text(&enrolled);
        assert_eq!(
            text,
            format!(
                "MUJIN_MQTT_USERNAME=integrator:acme\n\
                 MUJIN_MQTT_PASSWORD={}\n\
                 MUJIN_MQTT_CLIENT_ID=mujin-integrator.acme\n\
                 MUJIN_INTEGRATOR=acme\n\
                 MUJIN_INTEGRATOR_KEY_ID={key_id}\n\
                 MUJIN_INTEGRATOR_KEY={seed}\n",
                enrolled.token.expose()
            )
        );
        assert!(enrolled.identity.allows_client_id("mujin-integrator.acme"));
    }
}
