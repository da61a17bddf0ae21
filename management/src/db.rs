//! The PostgreSQL connection pool and the schema migrations (refinery, embedded at build time).

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

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

impl WorkError {
    /// Whether trying again later can succeed: the database was unreachable, restarting or
    /// overloaded, or the transaction lost a race. Anything else (a value PostgreSQL refuses, a
    /// constraint no retry will satisfy) is permanent and must not block the work behind it.
    pub fn is_transient(&self) -> bool {
        match self {
            WorkError::Pool(_) => true,
            WorkError::Postgres(error) => match error.as_db_error() {
                // Not an answer from the server: the connection broke.
                None => true,
                Some(db) => {
                    let class = &db.code().code()[..2];
                    // 08 connection, 40 rollback (serialization, deadlock), 53 resources,
                    // 57 operator intervention (shutdown), 58 system error.
                    matches!(class, "08" | "40" | "53" | "57" | "58")
                }
            },
        }
    }
}

/// A transaction whose `BEGIN` goes out together with its first statements and whose `COMMIT`
/// goes out together with its last ones (tokio-postgres sends the requests of futures polled
/// together without waiting for their answers): two round trips fewer than
/// `Client::transaction`, each one a wake-up of both processes.
///
/// Statements sent together with [`PipelinedTx::commit`] must be prepared already (see
/// [`CachedStatements`]): one still being prepared would run after the `COMMIT`, outside the
/// transaction. Dropped before its commit succeeded (an error, a dropped future), it sends
/// `ROLLBACK` before its connection goes back to the pool.
pub struct PipelinedTx {
    client: Option<deadpool_postgres::Object>,
    committed: bool,
}

impl PipelinedTx {
    pub fn new(client: deadpool_postgres::Object) -> Self {
        Self {
            client: Some(client),
            committed: false,
        }
    }

    /// The connection, for the transaction's statements (with the pool's statement cache).
    pub fn client(&self) -> &deadpool_postgres::Object {
        self.client
            .as_ref()
            .expect("the connection is held until the transaction is dropped")
    }

    /// Sends `BEGIN`; poll it before (or together with, first) the transaction's statements.
    pub async fn begin(&self) -> Result<(), tokio_postgres::Error> {
        self.client().batch_execute("BEGIN").await
    }

    /// Sends `COMMIT`; poll it together with, last, the statements it closes, and call
    /// [`PipelinedTx::committed`] once all of them succeeded. After a failed statement
    /// PostgreSQL turns the `COMMIT` into a rollback.
    pub async fn commit(&self) -> Result<(), tokio_postgres::Error> {
        self.client().batch_execute("COMMIT").await
    }

    /// The `COMMIT` and every statement before it succeeded: nothing to roll back.
    pub fn committed(mut self) {
        self.committed = true;
    }
}

impl Drop for PipelinedTx {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if self.committed {
            return;
        }
        // The connection goes back to the pool only once the rollback has run (it follows
        // whatever was sent before it on the same connection); without a runtime to run it,
        // never.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(error) = client.batch_execute("ROLLBACK").await {
                        tracing::warn!(%error, "cannot roll back; closing the connection");
                        drop(deadpool_postgres::Object::take(client));
                    }
                });
            }
            Err(_) => drop(deadpool_postgres::Object::take(client)),
        }
    }
}

/// Text from a device made safe to store: PostgreSQL refuses NUL characters, and nothing
/// longer than `max` characters is kept.
pub fn clean_text(text: &str, max: usize) -> String {
    text.chars().filter(|c| *c != '\0').take(max).collect()
}

/// Statements prepared once per connection and then reused (deadpool's per-connection cache):
/// a plain `execute("…")` prepares the statement again every time, one more round trip to
/// PostgreSQL and one more parse and plan per statement, on every scan, ack and state.
pub trait CachedStatements: deadpool_postgres::GenericClient {
    fn cached_execute<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.execute(&statement, params).await
        }
    }

    fn cached_query<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.query(&statement, params).await
        }
    }

    fn cached_query_one<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Row, tokio_postgres::Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.query_one(&statement, params).await
        }
    }

    fn cached_query_opt<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>, tokio_postgres::Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            let statement = self.prepare_cached(sql).await?;
            self.query_opt(&statement, params).await
        }
    }
}

impl<C: deadpool_postgres::GenericClient> CachedStatements for C {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_text_loses_nul_characters_and_excess_length() {
        assert_eq!(clean_text("MJ1:\0AB\0C", 100), "MJ1:ABC");
        assert_eq!(clean_text("abcdef", 3), "abc");
    }
}
