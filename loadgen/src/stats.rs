//! Latency samples and their percentiles (exact: every sample is kept, the runs are small
//! enough), in milliseconds for the report.

use std::time::Duration;

use serde::Serialize;

/// Latencies recorded in microseconds.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    micros: Vec<u64>,
}

impl Samples {
    pub fn record(&mut self, latency: Duration) {
        self.micros
            .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records a latency that may be negative (a stop that came before its booked end counts
    /// as zero lateness).
    pub fn record_signed_ms(&mut self, millis: f64) {
        let micros = (millis.max(0.0) * 1000.0).round();
        self.micros.push(micros as u64);
    }

    pub fn extend(&mut self, other: &Samples) {
        self.micros.extend_from_slice(&other.micros);
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// The summary of what was recorded.
    pub fn percentiles(&self) -> Percentiles {
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        let at = |quantile: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            // Nearest rank: the smallest sample with at least `quantile` of them at or below it.
            let rank = (quantile * sorted.len() as f64).ceil() as usize;
            let index = rank.clamp(1, sorted.len()) - 1;
            sorted[index] as f64 / 1000.0
        };
        Percentiles {
            count: sorted.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: sorted.last().map_or(0.0, |max| *max as f64 / 1000.0),
            mean_ms: if sorted.is_empty() {
                0.0
            } else {
                sorted.iter().sum::<u64>() as f64 / sorted.len() as f64 / 1000.0
            },
        }
    }
}

/// p50, p90, p99, max and mean of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The mean, for adding up parts (percentiles do not add up).
    pub mean_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples = Samples::default();
        for millis in 1..=100 {
            samples.record(Duration::from_millis(millis));
        }
        let summary = samples.percentiles();
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50_ms, 50.0);
        assert_eq!(summary.p90_ms, 90.0);
        assert_eq!(summary.p99_ms, 99.0);
        assert_eq!(summary.max_ms, 100.0);
        assert_eq!(summary.mean_ms, 50.5);
    }

    #[test]
    fn no_samples_give_zeros() {
        assert_eq!(Samples::default().percentiles(), Percentiles::default());
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let mut samples = Samples::default();
        samples.record(Duration::from_micros(1500));
        let summary = samples.percentiles();
        assert_eq!(
            (summary.p50_ms, summary.p99_ms, summary.max_ms),
            (1.5, 1.5, 1.5)
        );
    }

    #[test]
    fn early_stops_count_as_on_time() {
        let mut samples = Samples::default();
        samples.record_signed_ms(-20.0);
        samples.record_signed_ms(12.5);
        let summary = samples.percentiles();
        assert_eq!((summary.p50_ms, summary.max_ms), (0.0, 12.5));
    }
}
