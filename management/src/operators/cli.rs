//! The `mujin-management` subcommands that manage operators: `operator-add` (creates the
//! operator's key pair, writes the private key to a file only the owner can read and keeps only
//! the public key), `operator-role`, `operator-revoke` and `operators`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::Utc;
use clap::Subcommand;
use deadpool_postgres::Pool;
use mujin_protocol::signed;
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::{KeyId, OperatorId};

use super::{OperatorRecord, Role};

/// The operator subcommands (flattened into the command line's).
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Add an operator: create its key pair, write the private key to a file (mode 0600, never
    /// printed; give it to the operator for `mujin-console --operator-key`) and keep only the
    /// public key.
    OperatorAdd {
        #[arg(long, value_parser = OperatorId::parse)]
        operator: OperatorId,
        /// viewer (snapshot queries only), operator (also force stop, extend, service state,
        /// cancel, walk-in tickets) or admin (everything).
        #[arg(long, value_parser = Role::parse)]
        role: Role,
        /// Where to write the private key [default: <data-dir>/operators/<operator>.pk8].
        #[arg(long)]
        key_out: Option<PathBuf>,
    },
    /// Change an operator's role (takes effect with its next request).
    OperatorRole {
        #[arg(long, value_parser = OperatorId::parse)]
        operator: OperatorId,
        #[arg(long, value_parser = Role::parse)]
        role: Role,
    },
    /// Revoke an operator: its requests are refused from now on.
    OperatorRevoke {
        #[arg(long, value_parser = OperatorId::parse)]
        operator: OperatorId,
    },
    /// List operators: id, role, key id, created, revoked.
    Operators,
}

/// Runs one operator subcommand.
pub async fn execute(
    pool: &Pool,
    data_dir: &Path,
    command: &OperatorCommand,
) -> anyhow::Result<()> {
    match command {
        OperatorCommand::OperatorAdd {
            operator,
            role,
            key_out,
        } => {
            let path = key_out
                .clone()
                .unwrap_or_else(|| default_key_path(data_dir, operator));
            let key = write_new_key(&path)?;
            let public = key.public_key();
            if let Err(error) = super::add(pool, operator, *role, &public, Utc::now()).await {
                // Nobody could use a key whose operator was never added.
                let _ = fs::remove_file(&path);
                return Err(error.into());
            }
            println!(
                "added operator {operator} ({role}, key {}); its private key is in {} \
                 (give it to the operator; it is not kept anywhere else)",
                public.key_id,
                path.display()
            );
            Ok(())
        }
        OperatorCommand::OperatorRole { operator, role } => {
            let previous = super::set_role(pool, operator, *role).await?;
            println!("operator {operator} is now {role} (was {previous})");
            Ok(())
        }
        OperatorCommand::OperatorRevoke { operator } => {
            let at = super::revoke(pool, operator, Utc::now()).await?;
            println!(
                "operator {operator} revoked at {}; its requests are refused from now on",
                super::time(at)
            );
            Ok(())
        }
        OperatorCommand::Operators => {
            print!("{}", list_text(&super::list(pool).await?));
            Ok(())
        }
    }
}

/// `<data-dir>/operators/<operator>.pk8`.
pub fn default_key_path(data_dir: &Path, operator: &OperatorId) -> PathBuf {
    data_dir.join("operators").join(format!("{operator}.pk8"))
}

/// Creates a new operator key and writes its PKCS#8 document to `path` (never over an existing
/// file), readable by the owner only.
pub fn write_new_key(path: &Path) -> anyhow::Result<SigningKey> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {}", dir.display()))?;
        }
    }
    let placeholder = KeyId::parse("op").expect("a valid key id");
    let (_, pkcs8) = SigningKey::generate(placeholder).context("cannot generate a key")?;
    let key = signed::operator_key(&pkcs8).context("cannot read the generated key")?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the key file {}", path.display()))?;
    file.write_all(&pkcs8)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the key file {}", path.display()))?;
    Ok(key)
}

/// The `operators` listing.
pub fn list_text(operators: &[OperatorRecord]) -> String {
    if operators.is_empty() {
        return "no operators\n".to_owned();
    }
    let mut text = String::new();
    for record in operators {
        let revoked = match record.revoked_at {
            Some(at) => format!("  revoked {}", super::time(at)),
            None => String::new(),
        };
        text.push_str(&format!(
            "{:<20} {:<8} {}  created {}{revoked}\n",
            record.operator.as_str(),
            record.role.as_str(),
            record.key.key_id,
            super::time(record.created_at),
        ));
    }
    text
}
