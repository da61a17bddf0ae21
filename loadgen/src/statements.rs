//! What the database spent a scan phase on, statement by statement: PostgreSQL's
//! `pg_stat_statements` (loaded by the bench's private cluster), reset just before a step's
//! first scan and read when its last is answered, like the CPU probe.

use deadpool_postgres::Pool;
use serde::Serialize;

/// How many statements the report lists (the rest is in the totals).
const TOP: usize = 12;
/// Statements are shown up to this many characters.
const SHOWN_CHARS: usize = 110;

/// Reads `pg_stat_statements` of the bench's database.
#[derive(Debug, Clone)]
pub struct StatementProbe {
    pool: Pool,
}

/// One statement's share of a scan phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatementCost {
    /// The statement, normalized by PostgreSQL ($n for constants), whitespace folded.
    pub statement: String,
    pub calls: u64,
    /// Execution time inside the server (planning not included).
    pub total_ms: f64,
}

/// What the database executed over a scan phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatementCosts {
    /// Scans answered in the phase: the "per authorization" divisor.
    pub answered_scans: usize,
    pub calls: u64,
    pub total_ms: f64,
    /// The statements that took the most time, most first.
    pub top: Vec<StatementCost>,
}

impl StatementCosts {
    /// Builds the totals and the top list from every statement's cost.
    pub fn new(mut all: Vec<StatementCost>, answered_scans: usize) -> StatementCosts {
        all.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        StatementCosts {
            answered_scans,
            calls: all.iter().map(|s| s.calls).sum(),
            total_ms: all.iter().map(|s| s.total_ms).sum(),
            top: all.into_iter().take(TOP).collect(),
        }
    }

    /// Calls per answered scan.
    pub fn calls_per_scan(&self, calls: u64) -> f64 {
        calls as f64 / self.answered_scans.max(1) as f64
    }

    /// Microseconds per answered scan.
    pub fn us_per_scan(&self, total_ms: f64) -> f64 {
        total_ms * 1000.0 / self.answered_scans.max(1) as f64
    }
}

impl StatementProbe {
    /// Creates the extension in the pool's database; `None` (with a warning) when the server
    /// did not load the module.
    pub async fn new(pool: &Pool) -> Option<StatementProbe> {
        let created = async {
            let client = pool.get().await?;
            client
                .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .await?;
            anyhow::Ok(())
        }
        .await;
        match created {
            Ok(()) => Some(StatementProbe { pool: pool.clone() }),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "no statement statistics");
                None
            }
        }
    }

    /// Forgets everything counted so far.
    pub async fn reset(&self) -> anyhow::Result<()> {
        let client = self.pool.get().await?;
        client
            .batch_execute("SELECT pg_stat_statements_reset()")
            .await?;
        Ok(())
    }

    /// Every statement of this database counted since the last reset (not the probe's own).
    pub async fn read(&self, answered_scans: usize) -> anyhow::Result<StatementCosts> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT s.query, s.calls, s.total_exec_time
                 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
                 WHERE d.datname = current_database() AND s.query NOT LIKE '%pg_stat_statements%'",
                &[],
            )
            .await?;
        let all = rows
            .iter()
            .map(|row| StatementCost {
                statement: shown(row.get(0)),
                calls: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                total_ms: row.get(2),
            })
            .collect();
        Ok(StatementCosts::new(all, answered_scans))
    }
}

/// A statement on one line, shortened.
fn shown(statement: &str) -> String {
    let folded = statement.split_whitespace().collect::<Vec<_>>().join(" ");
    match folded.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &folded[..cut]),
        None => folded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(statement: &str, calls: u64, total_ms: f64) -> StatementCost {
        StatementCost {
            statement: statement.into(),
            calls,
            total_ms,
        }
    }

    #[test]
    fn statements_are_ranked_by_time_and_counted_per_scan() {
        let costs = StatementCosts::new(
            vec![cost("COMMIT", 400, 80.0), cost("SELECT 1", 200, 120.0)],
            200,
        );
        assert_eq!(costs.top[0].statement, "SELECT 1");
        assert_eq!(costs.calls, 600);
        assert_eq!(costs.calls_per_scan(costs.top[1].calls), 2.0);
        assert_eq!(costs.us_per_scan(costs.total_ms), 1000.0);
    }

    #[test]
    fn statements_are_shown_on_one_shortened_line() {
        assert_eq!(shown("SELECT a,\n       b\n  FROM t"), "SELECT a, b FROM t");
        let long = "x".repeat(200);
        assert_eq!(shown(&long).chars().count(), SHOWN_CHARS + 1);
    }
}
