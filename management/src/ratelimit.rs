//! Per-device scan rate limit: a token bucket per device, so a scanner stuck on repeat or a
//! device flooding scans cannot hold up the worker or fill the database. Pure: the caller
//! passes the clock. Each worker keeps its own buckets (with N workers a device gets up to N
//! times the rate), in memory.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// How many scans a device may send in a burst.
pub const BURST: u32 = 10;
/// How often a device regains one scan.
pub const REFILL: Duration = Duration::from_secs(1);
/// A bucket untouched this long is full again and forgotten.
const IDLE: Duration = Duration::from_secs(60);

/// What the limiter says about one scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; `first` is true for the first refusal since the device was last allowed
    /// (so one event is recorded per flood, not one per scan).
    Limited {
        first: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    limited: bool,
}

/// The buckets of every device seen recently.
#[derive(Debug)]
pub struct ScanLimiter<K> {
    buckets: HashMap<K, Bucket>,
    burst: u32,
    refill: Duration,
    last_sweep: Option<Instant>,
}

impl<K: std::hash::Hash + Eq + Clone> Default for ScanLimiter<K> {
    fn default() -> Self {
        Self::new(BURST, REFILL)
    }
}

impl<K: std::hash::Hash + Eq + Clone> ScanLimiter<K> {
    pub fn new(burst: u32, refill: Duration) -> Self {
        Self {
            buckets: HashMap::new(),
            burst: burst.max(1),
            refill: refill.max(Duration::from_millis(1)),
            last_sweep: None,
        }
    }

    /// Takes one scan of `device` at `now`.
    pub fn check(&mut self, device: &K, now: Instant) -> Verdict {
        self.sweep(now);
        let burst = f64::from(self.burst);
        let bucket = self.buckets.entry(device.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
            limited: false,
        });
        let gained =
            now.saturating_duration_since(bucket.at).as_secs_f64() / self.refill.as_secs_f64();
        bucket.tokens = (bucket.tokens + gained).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.limited = false;
            Verdict::Allowed
        } else {
            let first = !bucket.limited;
            bucket.limited = true;
            Verdict::Limited { first }
        }
    }

    /// Forgets buckets idle long enough to be full again (at most once a minute).
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < IDLE)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.buckets
            .retain(|_, bucket| now.saturating_duration_since(bucket.at) < IDLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_one_scan_per_refill() {
        let mut limiter = ScanLimiter::new(5, Duration::from_secs(1));
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.check(&"pc-01", start), Verdict::Allowed);
        }
        assert_eq!(
            limiter.check(&"pc-01", start),
            Verdict::Limited { first: true }
        );
        assert_eq!(
            limiter.check(&"pc-01", start + Duration::from_millis(500)),
            Verdict::Limited { first: false }
        );
        // Another device has its own bucket.
        assert_eq!(limiter.check(&"pc-02", start), Verdict::Allowed);
        // A second later one more scan passes, and the next refusal is a new flood.
        let later = start + Duration::from_millis(1_100);
        assert_eq!(limiter.check(&"pc-01", later), Verdict::Allowed);
        assert_eq!(
            limiter.check(&"pc-01", later),
            Verdict::Limited { first: true }
        );
    }

    #[test]
    fn a_flood_gets_the_refill_rate_and_no_more() {
        let mut limiter = ScanLimiter::new(5, Duration::from_secs(1));
        let start = Instant::now();
        // 100 scans a second for 10 seconds.
        let allowed = (0..1_000)
            .filter(|i| {
                let now = start + Duration::from_millis(i * 10);
                limiter.check(&"pc-01", now) == Verdict::Allowed
            })
            .count();
        assert!((14..=16).contains(&allowed), "{allowed}");
    }

    #[test]
    fn idle_buckets_are_forgotten() {
        let mut limiter = ScanLimiter::new(5, Duration::from_secs(1));
        let start = Instant::now();
        for device in 0..1_000 {
            limiter.check(&device, start);
        }
        limiter.check(&0, start + IDLE + Duration::from_secs(1));
        assert_eq!(limiter.buckets.len(), 1);
    }
}
