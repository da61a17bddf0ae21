//! The PostgreSQL connection pool and the schema migrations (refinery, embedded at build time).

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

pub use deadpool_postgres::Pool as DbPool;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Why the database could not be reached or prepared.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    BadUrl(#[source] tokio_postgres::Error),
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
    #[error("cannot get a database connection: {0}")]
    Connect(#[from] deadpool_postgres::PoolError),
    #[error("database migration failed: {0}")]
    Migrate(#[from] refinery::Error),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

/// A pool over `url` (a libpq-style string or a `postgres://` URL). Waits at most a few
/// seconds for a connection so a database outage is an error, not a hang.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, DbError> {
    let config: tokio_postgres::Config = url.parse().map_err(DbError::BadUrl)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|err| DbError::Pool(err.to_string()))
}

/// Brings the schema up to date.
pub async fn migrate(pool: &Pool) -> Result<(), DbError> {
    let mut connection = pool.get().await?;
    let client: &mut tokio_postgres::Client = &mut connection;
    let report = embedded::migrations::runner().run_async(client).await?;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "applied database migration");
    }
    Ok(())
}

/// The SQLSTATE of a PostgreSQL error, if it is one.
pub fn sql_state(error: &tokio_postgres::Error) -> Option<&tokio_postgres::error::SqlState> {
    error.as_db_error().map(|db| db.code())
}

/// Work that needs the database could not be done right now (it is unreachable or failed);
/// the caller retries later.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}
