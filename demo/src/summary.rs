//! The end-of-run summary of a headless demo, read from the database (the record of what
//! really happened), and its text form.

use std::fmt;
use std::time::Duration;

use mujin_management::db::DbPool;

/// A session counts as stopped on time when it ended at most this long after its booking.
pub const ON_TIME_SECONDS: i64 = 2;

/// What happened during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub duration: Duration,
    pub sessions_started: i64,
    pub stopped_on_time: i64,
    pub stopped_late: i64,
    pub still_running: i64,
    /// Each refusal reason with its count, in the order they first happened.
    pub refusals: Vec<(String, i64)>,
}

impl Summary {
    pub fn scans_refused(&self) -> i64 {
        self.refusals.iter().map(|(_, count)| count).sum()
    }
}

/// Waits (at most `deadline`) until management has closed every session whose booking has
/// ended, so the summary does not count a stop that is merely a moment away. Returns whether
/// it did.
pub async fn wait_for_due_stops(pool: &DbPool, deadline: Duration) -> anyhow::Result<bool> {
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        let client = pool.get().await?;
        let due: i64 = client
            .query_one(
                "SELECT count(*) FROM sessions WHERE ended_at IS NULL AND lease_until <= now()",
                &[],
            )
            .await?
            .get(0);
        drop(client);
        if due == 0 {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= give_up {
            tracing::warn!(due, "sessions past their booking are still open");
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads the summary of a run that lasted `duration`.
pub async fn collect(pool: &DbPool, duration: Duration) -> anyhow::Result<Summary> {
    let client = pool.get().await?;
    let sessions = client
        .query_one(
            "SELECT count(*),
                    count(*) FILTER (WHERE ended_at IS NOT NULL
                                     AND ended_at - lease_until <= make_interval(secs => $1)),
                    count(*) FILTER (WHERE ended_at IS NOT NULL
                                     AND ended_at - lease_until > make_interval(secs => $1)),
                    count(*) FILTER (WHERE ended_at IS NULL)
             FROM sessions",
            &[&(ON_TIME_SECONDS as f64)],
        )
        .await?;
    let refusals = client
        .query(
            "SELECT reason, count(*) FROM scans WHERE NOT accepted
             GROUP BY reason ORDER BY min(decided_at), reason",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
        .collect();
    Ok(Summary {
        duration,
        sessions_started: sessions.get(0),
        stopped_on_time: sessions.get(1),
        stopped_late: sessions.get(2),
        still_running: sessions.get(3),
        refusals,
    })
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "mujin demo summary ({} s)", self.duration.as_secs())?;
        writeln!(f, "  sessions started:         {}", self.sessions_started)?;
        writeln!(
            f,
            "  sessions stopped on time: {}   (stop within {ON_TIME_SECONDS} s of the booking end)",
            self.stopped_on_time
        )?;
        writeln!(f, "  sessions stopped late:    {}", self.stopped_late)?;
        writeln!(f, "  sessions still running:   {}", self.still_running)?;
        writeln!(f, "  scans refused:            {}", self.scans_refused())?;
        if self.refusals.is_empty() {
            return Ok(());
        }
        let reasons: Vec<String> = self
            .refusals
            .iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        writeln!(f, "    {}", reasons.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_reads_like_a_report() {
        let summary = Summary {
            duration: Duration::from_secs(30),
            sessions_started: 6,
            stopped_on_time: 5,
            stopped_late: 0,
            still_running: 1,
            refusals: vec![
                ("malformed_ticket".into(), 1),
                ("too_early".into(), 1),
                ("wrong_device".into(), 1),
                ("already_used".into(), 2),
            ],
        };
        assert_eq!(
            summary.to_string(),
            "mujin demo summary (30 s)\n\
             \x20 sessions started:         6\n\
             \x20 sessions stopped on time: 5   (stop within 2 s of the booking end)\n\
             \x20 sessions stopped late:    0\n\
             \x20 sessions still running:   1\n\
             \x20 scans refused:            5\n\
             \x20   malformed_ticket 1, too_early 1, wrong_device 1, already_used 2\n"
        );
    }

    #[test]
    fn a_run_without_refusals_has_no_reason_line() {
        let summary = Summary {
            duration: Duration::from_secs(5),
            sessions_started: 0,
            stopped_on_time: 0,
            stopped_late: 0,
            still_running: 0,
            refusals: Vec::new(),
        };
        let text = summary.to_string();
        assert!(text.ends_with("  scans refused:            0\n"), "{text}");
    }
}
