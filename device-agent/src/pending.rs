//! Scans waiting for management's answer: each reading is sent again with the same scan id
//! (2 s after the first send, then at doubling intervals up to 10 s) until a scan result
//! names it, because a scan published while no management worker listens is lost, and
//! management answers a repeated scan id with the same answer. Also tells when a scan has gone
//! unanswered for the offline-after time. Pure: the caller passes the clock and does the IO.

use std::collections::VecDeque;
use std::time::Duration;

use mujin_protocol::message::{OfflineStart, Scan};
use mujin_protocol::ScanId;
use tokio::time::Instant;

/// How many scans may wait for an answer at once; a new reading beyond it gives up the oldest.
pub const MAX_PENDING_SCANS: usize = 8;
/// The wait before the first resend.
pub const FIRST_RESEND: Duration = Duration::from_secs(2);
/// The longest wait between two resends.
pub const MAX_RESEND_INTERVAL: Duration = Duration::from_secs(10);

/// The wait after a resend that waited `previous`: doubled, capped.
pub fn next_interval(previous: Duration) -> Duration {
    previous.saturating_mul(2).min(MAX_RESEND_INTERVAL)
}

/// One scan waiting for its answer.
#[derive(Debug, Clone)]
pub struct PendingScan {
    /// What is sent, again and again (with `offline` once the device started offline).
    pub scan: Scan,
    /// When the reading was first sent (or queued).
    pub since: Instant,
    next_send: Instant,
    interval: Duration,
    /// Whether the offline-after moment was already handed out by [`PendingScans::take_overdue`].
    overdue_handled: bool,
}

/// The scans waiting for an answer, oldest first.
#[derive(Debug)]
pub struct PendingScans {
    scans: VecDeque<PendingScan>,
    offline_after: Duration,
}

impl PendingScans {
    /// `offline_after`: how long a scan may go unanswered before the device checks it offline.
    pub fn new(offline_after: Duration) -> Self {
        Self {
            scans: VecDeque::new(),
            offline_after,
        }
    }

    pub fn len(&self) -> usize {
        self.scans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scans.is_empty()
    }

    /// Adds a reading sent (or queued) at `now`; returns the scan given up to make room. A scan
    /// that reports an offline start is given up last: management must hear of that session.
    pub fn add(&mut self, scan: Scan, now: Instant) -> Option<Scan> {
        let dropped = if self.scans.len() >= MAX_PENDING_SCANS {
            let oldest = self
                .scans
                .iter()
                .position(|pending| pending.scan.offline.is_none())
                .unwrap_or(0);
            self.scans.remove(oldest).map(|pending| pending.scan)
        } else {
            None
        };
        self.scans.push_back(PendingScan {
            scan,
            since: now,
            next_send: now + FIRST_RESEND,
            interval: FIRST_RESEND,
            overdue_handled: false,
        });
        dropped
    }

    /// Removes the scan a result answers; `None` when it was not waiting (answered before,
    /// given up, or from before a restart).
    pub fn answer(&mut self, scan_id: ScanId) -> Option<PendingScan> {
        let index = self
            .scans
            .iter()
            .position(|pending| pending.scan.scan_id == scan_id)?;
        self.scans.remove(index)
    }

    pub fn get(&self, scan_id: ScanId) -> Option<&PendingScan> {
        self.scans
            .iter()
            .find(|pending| pending.scan.scan_id == scan_id)
    }

    /// Every waiting scan, oldest first.
    pub fn scans(&self) -> impl Iterator<Item = &Scan> {
        self.scans.iter().map(|pending| &pending.scan)
    }

    /// Marks a scan as reporting an offline start; it is sent at once by the caller, so its next
    /// resend comes one interval after `now`. Returns the scan to send.
    pub fn set_offline(
        &mut self,
        scan_id: ScanId,
        offline: OfflineStart,
        now: Instant,
    ) -> Option<Scan> {
        let pending = self
            .scans
            .iter_mut()
            .find(|pending| pending.scan.scan_id == scan_id)?;
        pending.scan.offline = Some(offline);
        pending.next_send = now + pending.interval;
        Some(pending.scan.clone())
    }

    /// The next moment something is due: a resend or an offline-after moment.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.scans
            .iter()
            .flat_map(|pending| {
                let overdue =
                    (!pending.overdue_handled).then(|| pending.since + self.offline_after);
                [Some(pending.next_send), overdue]
            })
            .flatten()
            .min()
    }

    /// The scans that went unanswered for the offline-after time by `now`, each handed out once.
    pub fn take_overdue(&mut self, now: Instant) -> Vec<ScanId> {
        let offline_after = self.offline_after;
        self.scans
            .iter_mut()
            .filter(|pending| !pending.overdue_handled && now >= pending.since + offline_after)
            .map(|pending| {
                pending.overdue_handled = true;
                pending.scan.scan_id
            })
            .collect()
    }

    /// The scans due to be sent again at `now`; their next resend is scheduled from `now`.
    pub fn take_resends(&mut self, now: Instant) -> Vec<Scan> {
        self.scans
            .iter_mut()
            .filter(|pending| now >= pending.next_send)
            .map(|pending| {
                pending.interval = next_interval(pending.interval);
                pending.next_send = now + pending.interval;
                pending.scan.clone()
            })
            .collect()
    }
}

/// The default window within which a reading of the same text as the previous one is the
/// scanner repeating itself (a code held in front of it, a stuck trigger), not a new attempt.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(3);

/// Drops a scanner's repeats: the same text read again within the window of its last reading.
/// Each repeat restarts the window, so a scanner stuck on one code sends it once.
#[derive(Debug)]
pub struct RepeatFilter {
    window: Duration,
    last: Option<(String, Instant)>,
}

impl Default for RepeatFilter {
    fn default() -> Self {
        Self::new(REPEAT_WINDOW)
    }
}

impl RepeatFilter {
    /// A filter with this window; a zero window lets every reading through.
    pub fn new(window: Duration) -> Self {
        Self { window, last: None }
    }

    /// Whether `text`, read at `now`, is a repeat of the previous reading.
    pub fn is_repeat(&mut self, text: &str, now: Instant) -> bool {
        let repeat = self.last.as_ref().is_some_and(|(last, at)| {
            last == text && now.saturating_duration_since(*at) < self.window
        });
        match &mut self.last {
            Some((last, at)) if last == text => *at = now,
            _ => self.last = Some((text.to_owned(), now)),
        }
        repeat
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use mujin_protocol::SessionId;

    use super::*;

    fn scan() -> Scan {
        Scan {
            sent_at: None,
            signature: None,
            scan_id: ScanId::random(),
            ticket: "MJ1:TEST".into(),
            read_at: Utc::now(),
            offline: None,
        }
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    fn offline() -> OfflineStart {
        OfflineStart {
            session_id: SessionId::random(),
            started_at: Utc::now(),
            lease_until: Utc::now(),
        }
    }

    #[test]
    fn a_stuck_scanner_sends_its_code_once() {
        let mut filter = RepeatFilter::default();
        let start = Instant::now();
        assert!(!filter.is_repeat("MJ1:A", start));
        // Held in front of the scanner for a minute: every reading within the window of the
        // previous one.
        for second in 1..=60 {
            assert!(filter.is_repeat("MJ1:A", start + secs(second)));
        }
        // Another code is a new reading, and so is the first one again after a pause.
        assert!(!filter.is_repeat("MJ1:B", start + secs(61)));
        assert!(!filter.is_repeat("MJ1:A", start + secs(62)));
        assert!(!filter.is_repeat("MJ1:A", start + secs(62) + REPEAT_WINDOW));

        let mut off = RepeatFilter::new(Duration::ZERO);
        assert!(!off.is_repeat("MJ1:A", start));
        assert!(!off.is_repeat("MJ1:A", start));
    }

    #[test]
    fn intervals_double_up_to_the_cap() {
        let mut interval = FIRST_RESEND;
        let mut seen = vec![interval];
        for _ in 0..5 {
            interval = next_interval(interval);
            seen.push(interval);
        }
        assert_eq!(seen, [2, 4, 8, 10, 10, 10].map(secs));
    }

    #[test]
    fn an_unanswered_scan_is_resent_on_schedule_until_answered() {
        let t0 = Instant::now();
        let mut pending = PendingScans::new(secs(3));
        let first = scan();
        assert!(pending.add(first.clone(), t0).is_none());
        assert_eq!(pending.next_deadline(), Some(t0 + secs(2)));
        assert!(pending
            .take_resends(t0 + Duration::from_millis(1_999))
            .is_empty());

        let mut sent_at = Vec::new();
        let mut now = t0;
        while sent_at.len() < 5 {
            now = pending.next_deadline().unwrap();
            pending.take_overdue(now);
            for resent in pending.take_resends(now) {
                assert_eq!(resent, first);
                sent_at.push(now.duration_since(t0));
            }
        }
        // After 2 s, then 4, 8, 10, 10 s later.
        assert_eq!(sent_at, [2, 6, 14, 24, 34].map(secs));

        assert!(pending.answer(first.scan_id).is_some());
        assert!(pending.answer(first.scan_id).is_none());
        assert!(pending.take_resends(now + secs(60)).is_empty());
        assert_eq!(pending.next_deadline(), None);
    }

    #[test]
    fn the_offline_after_moment_is_handed_out_once() {
        let t0 = Instant::now();
        let mut pending = PendingScans::new(secs(3));
        let first = scan();
        pending.add(first.clone(), t0);
        pending.take_resends(t0 + secs(2));
        assert_eq!(pending.next_deadline(), Some(t0 + secs(3)));
        assert!(pending
            .take_overdue(t0 + Duration::from_millis(2_999))
            .is_empty());
        assert_eq!(pending.take_overdue(t0 + secs(3)), vec![first.scan_id]);
        assert!(pending.take_overdue(t0 + secs(4)).is_empty());
        // Only the resend is left to wait for.
        assert_eq!(pending.next_deadline(), Some(t0 + secs(6)));
    }

    #[test]
    fn an_offline_start_is_sent_with_every_resend() {
        let t0 = Instant::now();
        let mut pending = PendingScans::new(secs(3));
        let first = scan();
        pending.add(first.clone(), t0);
        pending.take_resends(t0 + secs(2));
        assert_eq!(pending.take_overdue(t0 + secs(3)), vec![first.scan_id]);
        let start = offline();
        let marked = pending
            .set_offline(first.scan_id, start.clone(), t0 + secs(3))
            .unwrap();
        assert_eq!(marked.offline.as_ref(), Some(&start));
        assert_eq!(pending.next_deadline(), Some(t0 + secs(7)));
        let resent = pending.take_resends(t0 + secs(7));
        assert_eq!(resent[0].offline, Some(start));
        assert_eq!(resent[0].scan_id, first.scan_id);
    }

    #[test]
    fn the_oldest_scan_is_given_up_but_an_offline_one_last() {
        let t0 = Instant::now();
        let mut pending = PendingScans::new(secs(3));
        let scans: Vec<Scan> = (0..MAX_PENDING_SCANS).map(|_| scan()).collect();
        for scan in &scans {
            assert!(pending.add(scan.clone(), t0).is_none());
        }
        pending.set_offline(scans[0].scan_id, offline(), t0);

        let dropped = pending.add(scan(), t0).unwrap();
        assert_eq!(dropped.scan_id, scans[1].scan_id);
        assert_eq!(pending.len(), MAX_PENDING_SCANS);
        assert!(pending.get(scans[0].scan_id).is_some());
        let dropped = pending.add(scan(), t0).unwrap();
        assert_eq!(dropped.scan_id, scans[2].scan_id);
    }
}
