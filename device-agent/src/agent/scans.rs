//! The agent's reactions around scans: a reading becomes a pending scan sent until answered;
//! a scan unanswered for the offline-after time is checked against the store's trust list and
//! may start a provisional session; management's answer settles that session.

use chrono::Utc;
use mujin_protocol::message::{
    decode, encode, Decision, OfflineStart, Scan, ScanResult, StopCause, MAX_PAYLOAD_BYTES,
};
use mujin_protocol::signed::verify_trust_list;
use mujin_protocol::topic::{self, DeviceChannel};
use mujin_protocol::trust::TrustList;
use mujin_protocol::{ScanId, SessionId, TicketId};
use tokio::time::Instant;

use super::Agent;
use crate::offline::{
    decide_offline_start, is_newer, merge, Merge, OfflineDecision, OfflineFacts, Provisional,
};
use crate::screen;

impl Agent {
    /// When the next resend or offline-after moment is due, if any scan waits.
    pub(crate) fn pending_deadline(&self) -> Option<Instant> {
        self.pending.next_deadline()
    }

    /// Publishes one scan, stamped with the time of this sending and signed (management refuses
    /// a scan sent too long ago: a replay); a scan that cannot be queued now is sent again later
    /// anyway.
    fn send_scan(&self, scan: &Scan) {
        if !self.connected {
            return;
        }
        let mut scan = scan.clone();
        scan.sent_at = Some(Utc::now());
        self.sign(&mut scan);
        let topic = topic::device(&self.store, &self.device, DeviceChannel::Scan);
        if let Err(err) = self.link.publish(topic, DeviceChannel::Scan, encode(&scan)) {
            tracing::warn!(%err, scan_id = %scan.scan_id, "scan not queued; it is sent again later");
        }
    }

    /// Sends every waiting scan (after a (re)connection).
    pub(super) fn send_pending_scans(&self) {
        for scan in self.pending.scans() {
            self.send_scan(scan);
        }
    }

    pub(crate) fn on_scanned(&mut self, ticket: String) {
        if self.repeats.is_repeat(&ticket, Instant::now()) {
            tracing::debug!("the same code read again at once; not a new scan");
            return;
        }
        let scan = scan_message(ScanId::random(), ticket);
        if let Some(dropped) = self.pending.add(scan.clone(), Instant::now()) {
            tracing::warn!(
                scan_id = %dropped.scan_id,
                "too many scans wait for an answer; the oldest one is no longer sent"
            );
        }
        self.send_scan(&scan);
        screen::show(&screen::scanned(scan.scan_id));
        screen::show(screen::CHECKING);
    }

    /// Resends what is due and checks offline the scans unanswered for too long.
    pub(crate) fn on_scans_due(&mut self) {
        let now = Instant::now();
        // First the offline checks: a scan that starts offline is sent at once with it.
        for scan_id in self.pending.take_overdue(now) {
            self.on_unanswered(scan_id, now);
        }
        for scan in self.pending.take_resends(now) {
            tracing::debug!(scan_id = %scan.scan_id, connected = self.connected, "scan unanswered; sending it again");
            self.send_scan(&scan);
        }
    }

    /// Management did not answer `scan_id` within the offline-after time.
    fn on_unanswered(&mut self, scan_id: ScanId, now: Instant) {
        let Some(ticket) = self
            .pending
            .get(scan_id)
            .map(|pending| pending.scan.ticket.clone())
        else {
            return;
        };
        let facts = OfflineFacts {
            running: self.supervisor.running_session().is_some(),
            trust: self.trust.as_ref(),
            started: &self.started_tickets,
            store: &self.store,
            device: &self.device,
        };
        match decide_offline_start(&facts, &ticket, Utc::now()) {
            OfflineDecision::Unavailable(why) => {
                tracing::warn!(%scan_id, ?why, "management does not answer; no offline start");
                screen::show(screen::NOT_ANSWERING);
            }
            OfflineDecision::Refused(refusal) => {
                tracing::info!(%scan_id, reason = %refusal.reason, detail = %refusal.detail, "ticket refused offline");
                screen::show(&screen::refused_offline(refusal.reason));
                screen::show(screen::NOT_ANSWERING);
            }
            OfflineDecision::Start {
                ticket_id,
                lease_until,
                lease,
            } => self.start_offline(scan_id, ticket_id, lease_until, lease, now),
        }
    }

    /// Starts the program provisionally for the ticket of `scan_id` and reports it with the scan.
    fn start_offline(
        &mut self,
        scan_id: ScanId,
        ticket_id: TicketId,
        lease_until: chrono::DateTime<Utc>,
        lease: std::time::Duration,
        now: Instant,
    ) {
        let session_id = SessionId::random();
        if let Err(err) = self.supervisor.start(session_id, lease) {
            tracing::error!(%err, %scan_id, "program did not start offline");
            screen::show(screen::NOT_ANSWERING);
            return;
        }
        self.supervisor.mark_provisional();
        self.started_tickets.remember(ticket_id);
        self.provisional = Some(Provisional {
            scan_id,
            session_id,
        });
        tracing::warn!(%scan_id, %session_id, %ticket_id, ?lease, "management does not answer; program started offline");
        let offline = OfflineStart {
            session_id,
            started_at: self.supervisor.started_at().unwrap_or_else(Utc::now),
            lease_until,
        };
        if let Some(scan) = self.pending.set_offline(scan_id, offline, now) {
            self.send_scan(&scan);
        }
        self.report_state();
        screen::show(&screen::started_offline(session_id, lease_until));
    }

    /// Management's answer to a scan: it stops the resends, settles a provisional session and
    /// is shown to the customer once.
    pub(super) async fn on_scan_result(&mut self, result: ScanResult) {
        if self.pending.answer(result.scan_id).is_some() {
            tracing::debug!(scan_id = %result.scan_id, "scan answered");
        }
        if let Decision::Accepted { ticket_id, .. } = &result.decision {
            self.started_tickets.remember(*ticket_id);
        }
        if self.first_answer(result.scan_id) {
            screen::show(&screen::scan_result(&result));
        } else {
            tracing::debug!(scan_id = %result.scan_id, "scan answered again; already shown");
        }
        let decision = merge(
            self.provisional.as_ref(),
            self.supervisor.running_session(),
            &result,
            Utc::now(),
        );
        match decision {
            Merge::Nothing => {}
            Merge::Confirm { session_id, lease } => {
                self.provisional = None;
                self.supervisor.confirm(session_id);
                self.supervisor.set_lease(lease);
                tracing::info!(%session_id, ?lease, "offline session confirmed by management");
                self.report_state();
            }
            Merge::Refuse { reason } => {
                tracing::warn!(%reason, "offline session refused by management; stopping it");
                self.stop(StopCause::Refused).await;
            }
        }
    }

    /// Keeps the store's newest trust list signed with the root key; without the root key,
    /// none (a list anyone could publish must not let tickets start sessions offline).
    pub(super) fn on_trust_list(&mut self, payload: &[u8]) {
        let Some(key) = &self.root_key else {
            tracing::debug!("no --root-key: ignoring the trust list");
            return;
        };
        let decoded = decode::<TrustList>(payload);
        if let Ok(list) = &decoded {
            if let Err(err) = verify_trust_list(key, list, &self.store) {
                tracing::warn!(issued_at = %list.issued_at, %err, "trust list not signed with the root key for this store; ignoring it");
                return;
            }
        }
        match decoded {
            Ok(list) if is_newer(self.trust.as_ref(), &list) => {
                tracing::info!(
                    issued_at = %list.issued_at,
                    offline_start = list.offline_start,
                    keys = list.keys.len(),
                    refused = list.refused_tickets.len(),
                    "trust list"
                );
                self.trust = Some(list);
            }
            Ok(list) => {
                tracing::debug!(issued_at = %list.issued_at, "ignoring an older trust list")
            }
            Err(err) => tracing::warn!(%err, "ignoring an invalid trust list"),
        }
    }
}

/// Builds the scan message, cutting the ticket text until the payload fits the size every
/// mujin part accepts (escaped control characters can make the JSON much longer than the text),
/// with room for the sending time and signature each sending adds.
pub(crate) fn scan_message(scan_id: ScanId, mut ticket: String) -> Scan {
    loop {
        let scan = Scan {
            sent_at: None,
            signature: None,
            scan_id,
            ticket,
            read_at: Utc::now(),
            offline: None,
        };
        if sent_size(&scan) <= MAX_PAYLOAD_BYTES || scan.ticket.is_empty() {
            return scan;
        }
        ticket = scan.ticket;
        let mut cut = ticket.len() / 2;
        while !ticket.is_char_boundary(cut) {
            cut -= 1;
        }
        ticket.truncate(cut);
    }
}

/// The size of `scan` as sent: with a sending time and a signature (an Ed25519 signature in hex
/// under a device key id).
fn sent_size(scan: &Scan) -> usize {
    let placeholder = mujin_protocol::signed::Signature {
        key_id: mujin_protocol::KeyId::parse(&format!("dv{}", "0".repeat(14)))
            .expect("dv and 14 hex digits make a valid key id"),
        sig: "0".repeat(128),
    };
    encode(&Scan {
        sent_at: Some(Utc::now()),
        signature: Some(placeholder),
        offline: Some(OfflineStart {
            session_id: SessionId::random(),
            started_at: Utc::now(),
            lease_until: Utc::now(),
        }),
        ..scan.clone()
    })
    .len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_always_fit_in_a_payload() {
        let ticket = "\u{1}".repeat(crate::scanner::MAX_LINE_BYTES);
        let scan = scan_message(ScanId::random(), ticket);
        assert!(sent_size(&scan) <= MAX_PAYLOAD_BYTES);
        let key = mujin_protocol::device_auth::DeviceKey::generate().unwrap();
        let mut sent = scan.clone();
        sent.sent_at = Some(Utc::now());
        sent.offline = Some(OfflineStart {
            session_id: SessionId::random(),
            started_at: Utc::now(),
            lease_until: Utc::now(),
        });
        key.sign(
            &"shibuya".parse().unwrap(),
            &"pc-01".parse().unwrap(),
            &mut sent,
        );
        assert!(encode(&sent).len() <= MAX_PAYLOAD_BYTES);
        assert!(!scan.ticket.is_empty());

        let plain = "MJ1:ABC".to_owned();
        assert_eq!(scan_message(ScanId::random(), plain.clone()).ticket, plain);
    }
}
