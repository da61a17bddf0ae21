//! The customer-facing "screen": the agent's stdout, one line per thing the customer should
//! read. Logs go to stderr, never here.

use std::io::Write;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use mujin_protocol::message::{Decision, RejectReason, ScanResult};
use mujin_protocol::{ScanId, SessionId};

/// Writes one line to stdout. A closed or broken stdout must not bring the agent down (the
/// program it supervises still has to be stopped on time), so write errors are only logged.
pub fn show(line: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        tracing::debug!(%err, "cannot write to the screen");
    }
}

/// The line shown once a reading was sent.
pub fn scanned(scan_id: ScanId) -> String {
    format!("SCANNED {scan_id}")
}

/// The line shown while a reading waits for management's answer.
pub const CHECKING: &str = "CHECKING your ticket...";

/// The line shown when management did not answer in time and the device did not start on its
/// own: the reading is still being sent.
pub const NOT_ANSWERING: &str =
    "NOT ANSWERING: the store's system does not answer yet; still trying, please wait.";

/// The line shown when the device started the program on its own check of the ticket.
pub fn started_offline(session_id: SessionId, lease_until: DateTime<Utc>) -> String {
    format!(
        "STARTED OFFLINE: enjoy! session {session_id} until {} (to be confirmed)",
        lease_until.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

/// The line shown when the device's own check of the ticket refused it.
pub fn refused_offline(reason: RejectReason) -> String {
    format!(
        "REFUSED (checked offline, {reason}): {}",
        reason.customer_message()
    )
}

/// The line shown when the lease ran out and the agent stopped the program by itself.
pub const LEASE_ENDED: &str = "LEASE ENDED";

/// The line shown when management warns that the session ends soon: the minutes `left`,
/// rounded up so that "1 min" is never shown with more than a minute left, and the clock time.
pub fn warning(left: Duration, lease_until: DateTime<Utc>) -> String {
    let minutes = left.as_millis().div_ceil(60_000).max(1);
    format!(
        "WARNING: your session ends in {minutes} min (at {})",
        clock_time(lease_until)
    )
}

/// The line shown when the session was extended (or shortened) to `lease_until`.
pub fn extended(lease_until: DateTime<Utc>) -> String {
    format!("EXTENDED until {}", clock_time(lease_until))
}

/// The time of day in UTC, to the nearest second: leases computed on the device are a few
/// milliseconds off the booked end, which must not show as the second before.
pub fn clock_time(at: DateTime<Utc>) -> String {
    at.round_subsecs(0).format("%H:%M:%SZ").to_string()
}

/// The line shown for management's answer to a scan.
pub fn scan_result(result: &ScanResult) -> String {
    match &result.decision {
        Decision::Accepted {
            session_id,
            lease_until,
            ..
        } => format!(
            "ACCEPTED: enjoy! session {session_id} until {}",
            lease_until.to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
        Decision::Rejected { reason, .. } => {
            format!("REFUSED ({reason}): {}", reason.customer_message())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mujin_protocol::TicketId;

    #[test]
    fn offline_lines_say_they_were_checked_offline() {
        assert_eq!(
            refused_offline(RejectReason::Cancelled),
            "REFUSED (checked offline, cancelled): This booking was cancelled."
        );
        let session_id = SessionId::random();
        assert_eq!(
            started_offline(
                session_id,
                DateTime::from_timestamp(1_700_000_000, 0).unwrap()
            ),
            format!(
                "STARTED OFFLINE: enjoy! session {session_id} until 2023-11-14T22:13:20Z \
                 (to be confirmed)"
            )
        );
    }

    #[test]
    fn refusals_show_the_reason_and_the_customer_message() {
        let result = ScanResult {
            scan_id: ScanId::random(),
            decision: Decision::Rejected {
                reason: RejectReason::TooEarly,
                detail: "starts at 10:00".into(),
            },
        };
        assert_eq!(
            scan_result(&result),
            "REFUSED (too_early): Too early: your booking has not started yet."
        );
    }

    #[test]
    fn acceptances_show_the_session_and_its_end() {
        let session_id = SessionId::random();
        let result = ScanResult {
            scan_id: ScanId::random(),
            decision: Decision::Accepted {
                session_id,
                ticket_id: TicketId::random(),
                lease_until: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            },
        };
        assert_eq!(
            scan_result(&result),
            format!("ACCEPTED: enjoy! session {session_id} until 2023-11-14T22:13:20Z")
        );
    }

    #[test]
    fn warnings_round_the_minutes_up_and_show_the_end() {
        let end = DateTime::parse_from_rfc3339("2027-01-15T09:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            warning(Duration::from_millis(300_000), end),
            "WARNING: your session ends in 5 min (at 09:00:00Z)"
        );
        assert_eq!(
            warning(Duration::from_millis(240_001), end),
            "WARNING: your session ends in 5 min (at 09:00:00Z)"
        );
        assert_eq!(
            warning(Duration::ZERO, end),
            "WARNING: your session ends in 1 min (at 09:00:00Z)"
        );
    }

    #[test]
    fn extensions_show_the_new_end_to_the_nearest_second() {
        let end = DateTime::parse_from_rfc3339("2027-01-15T09:29:59.996Z")
            .unwrap()
            .to_utc();
        assert_eq!(extended(end), "EXTENDED until 09:30:00Z");
    }
}
