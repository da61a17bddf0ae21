//! The customer-facing "screen": the agent's stdout, one line per thing the customer should
//! read. Logs go to stderr, never here.

use std::io::Write;

use chrono::SecondsFormat;
use mujin_protocol::message::{Decision, ScanResult};
use mujin_protocol::ScanId;

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

/// The line shown when the lease ran out and the agent stopped the program by itself.
pub const LEASE_ENDED: &str = "LEASE ENDED";

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
    use chrono::DateTime;
    use mujin_protocol::message::RejectReason;
    use mujin_protocol::{SessionId, TicketId};

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
}
