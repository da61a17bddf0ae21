//! Identities the broker lets in (devices, operators, integrators, services): enrolment, which creates a
//! random token and stores only its keyed hash, revocation, the list, and their subcommands.
//! The broker reads the same `identities` table (see `mujin-broker --database-url`).

use std::path::Path;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use deadpool_postgres::Pool;
use mujin_protocol::booking::{IntegratorKey, IntegratorKeyError};
use mujin_protocol::device_auth::{DeviceKey, DeviceKeyError};
use mujin_protocol::identity::{Identity, IdentityError, Pepper, ServiceName, Token};
use mujin_protocol::signed::public_key_text;
use mujin_protocol::{DeviceId, OperatorId, StoreId};

use crate::db::DbError;
use crate::keys;

/// The `mujin-management` subcommands of identities.
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Give a device its own broker identity (registering the device if needed) and print, this
    /// once, its token in a ready-to-use agent configuration. Enrolling again replaces the token.
    DeviceEnrol {
        #[arg(long, value_parser = StoreId::parse)]
        store: StoreId,
        #[arg(long, value_parser = DeviceId::parse)]
        device: DeviceId,
        /// The broker address the agent should use, for the printed configuration.
        #[arg(long, env = "MUJIN_BROKER", default_value = "127.0.0.1:1883")]
        broker: String,
    },
    /// Revoke a device's identity: the broker disconnects it within seconds and refuses it.
    DeviceRevoke {
        #[arg(long, value_parser = StoreId::parse)]
        store: StoreId,
        #[arg(long, value_parser = DeviceId::parse)]
        device: DeviceId,
    },
    /// Give an operator a broker identity and print, this once, its token (console client ids:
    /// `mujin-console.OPERATOR` or `mujin-console.OPERATOR.SUFFIX`).
    OperatorEnrol {
        #[arg(long, value_parser = OperatorId::parse)]
        operator: OperatorId,
    },
    /// Give a service (e.g. `mujin-management`) a broker identity and print, this once, its
    /// token (client ids: NAME or NAME-SUFFIX).
    ServiceEnrol {
        #[arg(long, value_parser = ServiceName::parse)]
        name: ServiceName,
    },
    /// List the broker identities (no secrets).
    Identities,
    /// Revoke any identity by username (see `identities`).
    IdentityRevoke {
        #[arg(long)]
        username: String,
    },
}

/// Runs one identity subcommand; `key_dir` holds the pepper and the command key.
pub async fn execute(command: &IdentityCommand, pool: &Pool, key_dir: &Path) -> anyhow::Result<()> {
    let enrol_printing = |identity: Identity| async move {
        let pepper = keys::load_or_create_pepper(key_dir)?;
        anyhow::Ok(enrol(pool, &pepper, &identity, Utc::now()).await?)
    };
    match command {
        IdentityCommand::DeviceEnrol {
            store,
            device,
            broker,
        } => {
            let enrolled = enrol_printing(device_identity(store, device)).await?;
            let command_key = keys::load_or_create_command_key(key_dir)?;
            let management_key = public_key_text(&command_key.public_key());
            let root_key = public_key_text(&keys::load_or_create_root_key(key_dir)?.public_key());
            print!(
                "{}",
                device_enrolment_text(&enrolled, broker, (&management_key, &root_key))
            );
        }
        IdentityCommand::OperatorEnrol { operator } => {
            let enrolled = enrol_printing(Identity::Operator(operator.clone())).await?;
            print!("{}", credentials_text(&enrolled));
        }
        IdentityCommand::ServiceEnrol { name } => {
            let enrolled = enrol_printing(Identity::Service(name.clone())).await?;
            print!("{}", credentials_text(&enrolled));
        }
        IdentityCommand::DeviceRevoke { store, device } => {
            print_revocation(pool, &device_identity(store, device).username()).await?
        }
        IdentityCommand::IdentityRevoke { username } => print_revocation(pool, username).await?,
        IdentityCommand::Identities => print!("{}", list_text(&list(pool).await?)),
    }
    Ok(())
}

fn device_identity(store: &StoreId, device: &DeviceId) -> Identity {
    Identity::Device {
        store: store.clone(),
        device: device.clone(),
    }
}

async fn print_revocation(pool: &Pool, username: &str) -> Result<(), IdentityDbError> {
    match revoke(pool, username, Utc::now()).await? {
        Revoked::Now(_) => println!(
            "revoked {username}; the broker disconnects it within seconds and refuses it from now on"
        ),
        Revoked::Already(at) => println!("{username} was already revoked at {}", clock(at)),
    }
    Ok(())
}

/// Why an identity could not be enrolled, revoked or listed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityDbError {
    #[error("unknown identity {0:?}; see `mujin-management identities`")]
    Unknown(String),
    #[error("cannot create a token: {0}")]
    Token(#[from] IdentityError),
    #[error("cannot create a device key: {0}")]
    DeviceKey(#[from] DeviceKeyError),
    #[error("cannot create an integrator key: {0}")]
    IntegratorKey(#[from] IntegratorKeyError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for IdentityDbError {
    fn from(error: tokio_postgres::Error) -> Self {
        IdentityDbError::Db(DbError::Postgres(error))
    }
}

impl From<deadpool_postgres::PoolError> for IdentityDbError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        IdentityDbError::Db(DbError::Connect(error))
    }
}

/// A fresh enrolment: the token exists only here (and with whoever it is given to).
#[derive(Debug)]
pub struct Enrolled {
    pub identity: Identity,
    pub token: Token,
    /// True when an earlier token of this identity was replaced (it stops working).
    pub replaced: bool,
    /// A device's new device key (its public half is stored; an earlier one stops working);
    /// `None` for other identities.
    pub device_key: Option<DeviceKey>,
    /// An integrator's new signing key (its public half is stored; an earlier one stops
    /// working); `None` for other identities.
    pub integrator_key: Option<IntegratorKey>,
}

/// One identity as listed (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRow {
    pub username: String,
    pub kind: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What a revocation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Now(DateTime<Utc>),
    Already(DateTime<Utc>),
}

/// Creates `identity` with a new token, or gives it a new one (the old token stops working and
/// a revocation is lifted). A device is registered (with its store) when it is not yet, and
/// gets a new device key in the same transaction (replacing its earlier one), an integrator a
/// new signing key.
pub async fn enrol(
    pool: &Pool,
    pepper: &Pepper,
    identity: &Identity,
    now: DateTime<Utc>,
) -> Result<Enrolled, IdentityDbError> {
    let token = Token::generate()?;
    let hash = pepper.hash(token.expose());
    let (store, device, operator, service) = match identity {
        Identity::Device { store, device } => {
            (Some(store.as_str()), Some(device.as_str()), None, None)
        }
        Identity::Operator(operator) => (None, None, Some(operator.as_str()), None),
        Identity::Service(name) => (None, None, None, Some(name.as_str())),
        Identity::Integrator(_) => (None, None, None, None),
    };
    let integrator = match identity {
        Identity::Integrator(integrator) => Some(integrator.as_str()),
        _ => None,
    };
    let device_key = match identity {
        Identity::Device { .. } => Some(DeviceKey::generate()?),
        _ => None,
    };
    let integrator_key = match identity {
        Identity::Integrator(_) => Some(IntegratorKey::generate()?),
        _ => None,
    };
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    if let (Some(store), Some(device)) = (store, device) {
        transaction
            .execute(
                "INSERT INTO stores (store_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&store],
            )
            .await?;
        transaction
            .execute(
                "INSERT INTO devices (store_id, device_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&store, &device],
            )
            .await?;
    }
    // `xmax <> 0` tells an update (a replaced token) from an insert.
    let row = transaction
        .query_one(
            "INSERT INTO identities
                 (username, kind, store_id, device_id, operator_id, service_name, token_hash,
                  created_at, integrator_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (username) DO UPDATE
                 SET token_hash = EXCLUDED.token_hash, created_at = EXCLUDED.created_at,
                     revoked_at = NULL
             RETURNING xmax <> 0",
            &[
                &identity.username(),
                &identity.kind(),
                &store,
                &device,
                &operator,
                &service,
                &hash.as_bytes().as_slice(),
                &now,
                &integrator,
            ],
        )
        .await?;
    if let (Some(store), Some(device), Some(key)) = (store, device, &device_key) {
        let public = key.public_key();
        transaction
            .execute(
                "INSERT INTO device_keys (store_id, device_id, key_id, public_key, created_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (store_id, device_id) DO UPDATE
                     SET key_id = EXCLUDED.key_id, public_key = EXCLUDED.public_key,
                         created_at = EXCLUDED.created_at",
                &[
                    &store,
                    &device,
                    &public.key_id.as_str(),
                    &public.bytes.as_slice(),
                    &now,
                ],
            )
            .await?;
    }
    if let (Some(integrator), Some(key)) = (integrator, &integrator_key) {
        let public = key.public_key();
        transaction
            .execute(
                "INSERT INTO integrators (integrator, key_id, public_key, created_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (integrator) DO UPDATE
                     SET key_id = EXCLUDED.key_id, public_key = EXCLUDED.public_key,
                         created_at = EXCLUDED.created_at, revoked_at = NULL",
                &[
                    &integrator,
                    &public.key_id.as_str(),
                    &public.bytes.as_slice(),
                    &now,
                ],
            )
            .await?;
    }
    transaction.commit().await?;
    let replaced: bool = row.get(0);
    tracing::info!(username = %identity, replaced, "enrolled an identity");
    Ok(Enrolled {
        identity: identity.clone(),
        token,
        replaced,
        device_key,
        integrator_key,
    })
}

/// Revokes the identity `username`: the broker refuses it and disconnects it within seconds.
/// A device's key is deleted too, so management refuses what is signed with it; an integrator's
/// key is revoked.
pub async fn revoke(
    pool: &Pool,
    username: &str,
    now: DateTime<Utc>,
) -> Result<Revoked, IdentityDbError> {
    let client = pool.get().await?;
    // Also for an identity revoked before: the key must not outlive the revocation.
    client
        .execute(
            "DELETE FROM device_keys AS k USING identities AS i
             WHERE i.username = $1 AND i.kind = 'device'
               AND k.store_id = i.store_id AND k.device_id = i.device_id",
            &[&username],
        )
        .await?;
    client
        .execute(
            "UPDATE integrators AS k SET revoked_at = $2 FROM identities AS i
             WHERE i.username = $1 AND i.kind = 'integrator'
               AND k.integrator = i.integrator_id AND k.revoked_at IS NULL",
            &[&username, &now],
        )
        .await?;
    let revoked = client
        .query_opt(
            "UPDATE identities SET revoked_at = $2 WHERE username = $1 AND revoked_at IS NULL
             RETURNING revoked_at",
            &[&username, &now],
        )
        .await?;
    if let Some(row) = revoked {
        tracing::info!(username, "revoked an identity");
        return Ok(Revoked::Now(row.get(0)));
    }
    let earlier = client
        .query_opt(
            "SELECT revoked_at FROM identities WHERE username = $1",
            &[&username],
        )
        .await?;
    match earlier.and_then(|row| row.get::<_, Option<DateTime<Utc>>>(0)) {
        Some(at) => Ok(Revoked::Already(at)),
        None => Err(IdentityDbError::Unknown(username.to_owned())),
    }
}

/// Every identity, by username.
pub async fn list(pool: &Pool) -> Result<Vec<IdentityRow>, IdentityDbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT username, kind, created_at, revoked_at FROM identities ORDER BY username",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| IdentityRow {
            username: row.get(0),
            kind: row.get(1),
            created_at: row.get(2),
            revoked_at: row.get(3),
        })
        .collect())
}

/// What `device-enrol` prints: a ready-to-use agent configuration holding the token (printed
/// this once, nowhere else), as environment lines a shell can source (`set -a; . ./FILE`); the
/// rest are comments.
pub fn device_enrolment_text(
    enrolled: &Enrolled,
    broker: &str,
    (management_key, root_key): (&str, &str),
) -> String {
    let Identity::Device { store, device } = &enrolled.identity else {
        return credentials_text(enrolled);
    };
    let username = enrolled.identity.username();
    let mut text: String = header(enrolled)
        .lines()
        .map(|line| format!("# {line}\n"))
        .collect();
    text.push_str(&format!(
        "# client id  {}\n\
         MUJIN_AGENT_STORE={store}\n\
         MUJIN_AGENT_DEVICE={device}\n\
         MUJIN_AGENT_BROKER={broker}\n\
         MUJIN_AGENT_USERNAME={username}\n\
         MUJIN_AGENT_PASSWORD={}\n\
         MUJIN_AGENT_MANAGEMENT_KEY={management_key}\n\
         MUJIN_AGENT_ROOT_KEY={root_key}\n\
         # or as flags, with MUJIN_AGENT_PASSWORD and MUJIN_AGENT_DEVICE_KEY set as above:\n\
         #   mujin-agent --store {store} --device {device} --broker {broker} --username {username} \
         --management-key {management_key} --root-key {root_key} -- PROGRAM [ARGS...]\n",
        enrolled.identity.client_id_rule(),
        enrolled.token.expose(),
    ));
    if let Some(key) = &enrolled.device_key {
        // The device key's seed, like the token, is printed this once and stored nowhere.
        text.push_str(&format!(
            "# the device key signs what the agent publishes; management refuses the rest\n\
             MUJIN_AGENT_DEVICE_KEY={}\n",
            key.expose_hex()
        ));
    }
    text
}

/// What `operator-enrol` and `service-enrol` print: username, token and client-id rule.
pub fn credentials_text(enrolled: &Enrolled) -> String {
    let mut text = header(enrolled);
    text.push_str(&format!(
        "username   {}\ntoken      {}\nclient id  {}\n",
        enrolled.identity.username(),
        enrolled.token.expose(),
        enrolled.identity.client_id_rule(),
    ));
    text
}

fn header(enrolled: &Enrolled) -> String {
    let replaced = if enrolled.replaced {
        " (its previous token no longer works)"
    } else {
        ""
    };
    format!(
        "enrolled {}{replaced}\n\
         The token below is shown only now and stored nowhere; enrol again to replace it.\n",
        enrolled.identity
    )
}

/// What `identities` prints: one line per identity, no secret.
pub fn list_text(rows: &[IdentityRow]) -> String {
    if rows.is_empty() {
        return "no identities\n".to_owned();
    }
    let mut text = format!(
        "{:<48}  {:<8}  {:<20}  revoked\n",
        "username", "kind", "enrolled"
    );
    for row in rows {
        let revoked = row.revoked_at.map_or_else(|| "no".to_owned(), clock);
        text.push_str(&format!(
            "{:<48}  {:<8}  {:<20}  {revoked}\n",
            row.username,
            row.kind,
            clock(row.created_at)
        ));
    }
    text
}

fn clock(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrolled(identity: Identity) -> Enrolled {
        let device_key =
            matches!(identity, Identity::Device { .. }).then(|| DeviceKey::generate().unwrap());
        Enrolled {
            identity,
            token: Token::generate().unwrap(),
            replaced: false,
            device_key,
            integrator_key: None,
        }
    }

    #[test]
    fn the_agent_configuration_holds_the_token_once() {
        let enrolled = enrolled(Identity::Device {
            store: StoreId::parse("shibuya").unwrap(),
            device: DeviceId::parse("pc-01").unwrap(),
        });
        let text = device_enrolment_text(&enrolled, "10.0.0.1:1883", ("c1:abcd", "r1:ef01"));
        assert_eq!(text.matches(enrolled.token.expose()).count(), 1, "{text}");
        let seed = enrolled.device_key.as_ref().unwrap().expose_hex();
        assert!(
            text.contains(&format!("\nMUJIN_AGENT_DEVICE_KEY={seed}\n")),
            "{text}"
        );
        assert_eq!(text.matches(&seed).count(), 1, "{text}");
        for line in [
            "MUJIN_AGENT_USERNAME=device:shibuya:pc-01",
            "MUJIN_AGENT_BROKER=10.0.0.1:1883",
            "MUJIN_AGENT_MANAGEMENT_KEY=c1:abcd",
            "MUJIN_AGENT_ROOT_KEY=r1:ef01",
            "# client id  mujin-agent.shibuya.pc-01",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
        // Sourceable by a shell: every line is a comment or NAME=VALUE.
        for line in text.lines() {
            assert!(
                line.starts_with('#') || line.starts_with("MUJIN_AGENT_"),
                "{line}"
            );
        }
    }

    #[test]
    fn operator_credentials_name_the_client_id_rule() {
        let enrolled = enrolled(Identity::Operator(OperatorId::parse("alice").unwrap()));
        let text = credentials_text(&enrolled);
        assert_eq!(text.matches(enrolled.token.expose()).count(), 1, "{text}");
        assert!(text.contains("username   operator:alice"), "{text}");
        assert!(text.contains("mujin-console.alice.<suffix>"), "{text}");
    }

    #[test]
    fn the_list_shows_revocations() {
        let at = DateTime::from_timestamp(0, 0).unwrap();
        let text = list_text(&[IdentityRow {
            username: "operator:bob".into(),
            kind: "operator".into(),
            created_at: at,
            revoked_at: Some(at),
        }]);
        assert!(text.contains("operator:bob"), "{text}");
        assert!(
            text.contains("1970-01-01T00:00:00Z  1970-01-01T00:00:00Z"),
            "{text}"
        );
        assert_eq!(list_text(&[]), "no identities\n");
    }
}
