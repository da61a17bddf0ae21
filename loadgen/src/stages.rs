//! Where an accepted scan's time goes inside management: its own metrics
//! (`mujin_scan_stage_seconds` on `GET /metrics`, see docs/metrics.md) read just before a
//! step's first scan and after its last answer, like the CPU probe, give the mean of each stage
//! over the phase. Means, not percentiles, because they add up: the stages' means sum to
//! management's mean part of a scan → start, and what the device measured beyond that is the
//! broker's two hops and the clients on either side. Each stage's p99, estimated from the
//! histogram's buckets, tells which stage the tail comes from.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use mujin_management::metrics::ScanStages;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::floor::Floor;
use crate::stats::Percentiles;

/// The metric management times the stages with.
const METRIC: &str = "mujin_scan_stage_seconds";
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Scrapes one management worker's metrics endpoint.
#[derive(Debug, Clone)]
pub struct StageProbe {
    address: SocketAddr,
}

/// Each stage's running sum (seconds), count and cumulative buckets (upper bound in seconds,
/// count at or below it), in the order of [`ScanStages::NAMES`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageTotals {
    sums: [f64; 8],
    counts: [u64; 8],
    buckets: [Vec<(f64, u64)>; 8],
}

/// The mean of each stage over a phase, per scan whose start went out with its answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageMeans {
    /// Scans timed in the phase.
    pub scans: u64,
    /// In the order of [`ScanStages::NAMES`].
    pub stages: Vec<StageMean>,
    /// Their sum: management's mean part, from receiving the scan to handing over its start.
    pub total_us: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageMean {
    pub stage: String,
    pub mean_us: f64,
    /// Estimated from the buckets (linear within the bucket that holds it); `None` when it
    /// lies beyond the last finite bucket.
    pub p99_us: Option<f64>,
    /// The phase's cumulative buckets (upper bound in seconds, count), for pooling phases.
    #[serde(skip)]
    buckets: Vec<(f64, u64)>,
}

impl StageMean {
    fn new(stage: &str, mean_us: f64, buckets: Vec<(f64, u64)>) -> StageMean {
        StageMean {
            stage: stage.to_owned(),
            mean_us,
            p99_us: quantile_us(&buckets, 0.99),
            buckets,
        }
    }
}

/// The `quantile` of what cumulative `buckets` counted, in µs: linear between the bounds of the
/// bucket that holds it (from 0 for the first); `None` without counts or beyond the last finite
/// bound.
fn quantile_us(buckets: &[(f64, u64)], quantile: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = quantile * total as f64;
    let mut below = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            if !bound.is_finite() {
                return None;
            }
            let within = (count - below.1) as f64;
            let share = if within > 0.0 {
                (rank - below.1 as f64) / within
            } else {
                1.0
            };
            return Some((below.0 + (bound - below.0) * share) * 1e6);
        }
        below = (bound, count);
    }
    None
}

impl StageProbe {
    pub fn new(address: SocketAddr) -> StageProbe {
        StageProbe { address }
    }

    /// The stages' totals now.
    pub async fn read(&self) -> anyhow::Result<StageTotals> {
        let text = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(self.address))
            .await
            .with_context(|| format!("{} did not answer within 5 s", self.address))??;
        Ok(StageTotals::parse(&text))
    }
}

/// The body of `GET /metrics`.
async fn scrape(address: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot connect to management's metrics at {address}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: mujin\r\nConnection: close\r\n\r\n")
        .await
        .context("cannot ask for the metrics")?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .context("cannot read the metrics")?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("not an HTTP response from {address}");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "management's metrics answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(body.to_owned())
}

impl StageTotals {
    /// Reads the stages' `_sum` and `_count` series from an OpenMetrics text; a stage that is
    /// missing reads as 0.
    pub fn parse(text: &str) -> StageTotals {
        let mut totals = StageTotals::default();
        for (index, stage) in ScanStages::NAMES.iter().enumerate() {
            let labels = format!("{{stage=\"{stage}\"}} ");
            let value = |suffix: &str| {
                let prefix = format!("{METRIC}_{suffix}{labels}");
                text.lines()
                    .find_map(|line| line.strip_prefix(&prefix))
                    .and_then(|value| value.trim().parse::<f64>().ok())
            };
            totals.sums[index] = value("sum").unwrap_or(0.0);
            totals.counts[index] = value("count").map_or(0, |count| count as u64);
            let bucket = format!("{METRIC}_bucket{{le=\"");
            let of_stage = format!("\",stage=\"{stage}\"}} ");
            totals.buckets[index] = text
                .lines()
                .filter_map(|line| {
                    let (bound, count) = line.strip_prefix(&bucket)?.split_once(&of_stage)?;
                    let bound = if bound == "+Inf" {
                        f64::INFINITY
                    } else {
                        bound.parse().ok()?
                    };
                    Some((bound, count.trim().parse::<f64>().ok()? as u64))
                })
                .collect();
        }
        totals
    }

    /// The means over what was timed since `before`; `None` when no scan was.
    pub fn since(&self, before: &StageTotals) -> Option<StageMeans> {
        // Every stage is timed once per scan: the first stage's count is the scans'.
        let scans = self.counts[0].checked_sub(before.counts[0])?;
        if scans == 0 {
            return None;
        }
        let stages: Vec<StageMean> = ScanStages::NAMES
            .iter()
            .enumerate()
            .map(|(index, stage)| {
                let mean_us = (self.sums[index] - before.sums[index]).max(0.0) * 1e6 / scans as f64;
                let buckets = self.buckets[index]
                    .iter()
                    .map(|&(bound, count)| {
                        let earlier = before.buckets[index]
                            .iter()
                            .find(|(b, _)| *b == bound)
                            .map_or(0, |(_, c)| *c);
                        (bound, count.saturating_sub(earlier))
                    })
                    .collect();
                StageMean::new(stage, mean_us, buckets)
            })
            .collect();
        Some(StageMeans {
            scans,
            total_us: stages.iter().map(|stage| stage.mean_us).sum(),
            stages,
        })
    }
}

impl StageMeans {
    /// Both phases as one: each stage's mean weighted by the scans timed in each.
    pub fn pooled(&self, other: &StageMeans) -> StageMeans {
        let scans = self.scans + other.scans;
        let weighted =
            |a: f64, b: f64| (a * self.scans as f64 + b * other.scans as f64) / scans.max(1) as f64;
        let stages: Vec<StageMean> = self
            .stages
            .iter()
            .zip(&other.stages)
            .map(|(a, b)| {
                let buckets = a
                    .buckets
                    .iter()
                    .zip(&b.buckets)
                    .map(|(&(bound, x), &(_, y))| (bound, x + y))
                    .collect();
                StageMean::new(&a.stage, weighted(a.mean_us, b.mean_us), buckets)
            })
            .collect();
        StageMeans {
            scans,
            total_us: stages.iter().map(|stage| stage.mean_us).sum(),
            stages,
        }
    }
}

/// The report's tables: for each rate, the device's mean scan → start, management's stages,
/// their sum, and the rest (the broker and the clients); each stage's p99 next to the
/// device's; then what the floor holds of it.
pub fn markdown(
    out: &mut String,
    by_rate: &[(f64, &Percentiles, &StageMeans)],
    floor: &Floor,
) -> std::fmt::Result {
    if by_rate.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\nWhere the time goes (means per scan, µs: at the device, and management's own stages from its `mujin_scan_stage_seconds` over the same scan phase; means because they add up):\n"
    )?;
    let names = ScanStages::NAMES.join(" | ");
    let dashes = "---|".repeat(ScanStages::NAMES.len());
    writeln!(
        out,
        "| offered rate | scans timed | at the device | {names} | in management | broker and clients |\n|---|---|---|{dashes}---|---|"
    )?;
    for (rate, device, means) in by_rate {
        let device_us = device.mean_ms * 1000.0;
        let stages: Vec<String> = means
            .stages
            .iter()
            .map(|stage| format!("{:.0}", stage.mean_us))
            .collect();
        writeln!(
            out,
            "| {rate:.0}/s | {} | {device_us:.0} | {} | {:.0} | {:.0} |",
            means.scans,
            stages.join(" | "),
            means.total_us,
            device_us - means.total_us
        )?;
    }
    writeln!(
        out,
        "\nTheir tails (p99 of each stage, µs, estimated from the histogram's buckets; \">250000\" beyond the last one), next to the device's p99:\n"
    )?;
    writeln!(
        out,
        "| offered rate | at the device | {names} |\n|---|---|{dashes}"
    )?;
    for (rate, device, means) in by_rate {
        let stages: Vec<String> = means
            .stages
            .iter()
            .map(|stage| {
                stage
                    .p99_us
                    .map_or(">250000".into(), |us| format!("{us:.0}"))
            })
            .collect();
        writeln!(
            out,
            "| {rate:.0}/s | {:.0} | {} |",
            device.p99_ms * 1000.0,
            stages.join(" | ")
        )?;
    }
    writeln!(
        out,
        "\nThe floor holds one MQTT round trip ({:.0} µs at p50: the scan's hop to management and the start's back, \"broker and clients\" above) and one durable insert ({:.0} µs: \"write\" above, whose statements commit with it). Not in the floor: the read before the write (\"connect\" and \"read\"), the signatures (\"authenticate\" and \"verify_ticket\" check the device's and the ticket's, \"sign\" signs the start and the desired state; the virtual device signs its scan, and an agent would also verify the start), and handing messages between tasks (\"queued\", \"publish\").",
        floor.mqtt_round_trip.p50_ms * 1000.0,
        floor.durable_insert.p50_ms * 1000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(sums: [f64; 8], count: u64) -> String {
        let mut text = String::from("# HELP mujin_scan_stage_seconds Where …\n");
        for (stage, sum) in ScanStages::NAMES.iter().zip(sums) {
            text.push_str(&format!(
                "{METRIC}_sum{{stage=\"{stage}\"}} {sum}\n{METRIC}_count{{stage=\"{stage}\"}} {count}\n\
                 {METRIC}_bucket{{le=\"0.0005\",stage=\"{stage}\"}} {}\n\
                 {METRIC}_bucket{{le=\"0.001\",stage=\"{stage}\"}} {count}\n\
                 {METRIC}_bucket{{le=\"+Inf\",stage=\"{stage}\"}} {count}\n",
                count / 2
            ));
        }
        text.push_str("mujin_scan_to_start_seconds_sum 9.5\n# EOF\n");
        text
    }

    #[test]
    fn each_stage_is_read_from_its_sum_and_count() {
        let mut sums = [0.0; 8];
        sums[4] = 0.25;
        let totals = StageTotals::parse(&exposition(sums, 1000));
        assert_eq!(totals.counts, [1000; 8]);
        assert_eq!(totals.sums[4], 0.25);
        assert_eq!(
            totals.buckets[7],
            [(0.0005, 500), (0.001, 1000), (f64::INFINITY, 1000)]
        );
        assert_eq!(StageTotals::parse("# EOF\n"), StageTotals::default());
    }

    #[test]
    fn a_quantile_is_interpolated_within_its_bucket() {
        let buckets = [(0.0005, 500), (0.001, 1000), (f64::INFINITY, 1000)];
        let p99 = quantile_us(&buckets, 0.99).unwrap();
        assert!((p99 - 990.0).abs() < 1e-6, "{p99}");
        let p10 = quantile_us(&buckets, 0.10).unwrap();
        assert!(
            (p10 - 100.0).abs() < 1e-6,
            "from 0 in the first bucket: {p10}"
        );
        let beyond = [(0.001, 10), (f64::INFINITY, 1000)];
        assert_eq!(
            quantile_us(&beyond, 0.99),
            None,
            "past the last finite bound"
        );
        assert_eq!(quantile_us(&[(0.001, 0), (f64::INFINITY, 0)], 0.99), None);
        assert_eq!(quantile_us(&[], 0.99), None);
    }

    #[test]
    fn the_means_are_over_the_scans_timed_since_and_add_up() {
        let before = StageTotals::parse(&exposition([1.0; 8], 100));
        let mut sums = [1.0; 8];
        sums[4] = 1.0 + 0.05; // read: 50 ms over 200 scans
        sums[5] = 1.0 + 0.08; // write: 80 ms
        let after = StageTotals::parse(&exposition(sums, 300));
        let means = after.since(&before).unwrap();
        assert_eq!(means.scans, 200);
        assert_eq!(means.stages[4].stage, "read");
        assert!((means.stages[4].mean_us - 250.0).abs() < 1e-6);
        assert!((means.stages[5].mean_us - 400.0).abs() < 1e-6);
        assert!(means.stages[0].mean_us.abs() < 1e-9);
        assert!((means.total_us - 650.0).abs() < 1e-6);
        assert_eq!(means.stages[4].buckets[0], (0.0005, 100), "150 − 50");
        let p99 = means.stages[4].p99_us.unwrap();
        assert!((p99 - 990.0).abs() < 1e-6, "{p99}");
        assert_eq!(before.since(&before), None, "nothing timed");
        assert_eq!(before.since(&after), None, "a restarted worker");
        let later = StageTotals::parse(&exposition([1.0 + 0.06; 8], 400));
        let pooled = means.pooled(&later.since(&after).unwrap());
        assert_eq!(pooled.scans, 300);
        // read: (250 µs × 200 + 100 µs × 100) / 300.
        assert!(
            (pooled.stages[4].mean_us - 200.0).abs() < 1e-6,
            "{pooled:?}"
        );
        assert_eq!(pooled.stages[4].buckets[1], (0.001, 300), "buckets add up");
    }

    #[test]
    fn the_table_splits_the_device_mean_into_management_and_the_rest() {
        let before = StageTotals::parse(&exposition([0.0; 8], 0));
        let after = StageTotals::parse(&exposition([0.0001; 8], 1));
        let means = after.since(&before).unwrap();
        let mut out = String::new();
        let device = Percentiles {
            mean_ms: 2.0,
            p99_ms: 3.5,
            ..Percentiles::default()
        };
        markdown(&mut out, &[(500.0, &device, &means)], &Floor::default()).unwrap();
        assert!(
            out.contains(
                "| 500/s | 1 | 2000 | 100 | 100 | 100 | 100 | 100 | 100 | 100 | 100 | 800 | 1200 |"
            ),
            "{out}"
        );
        assert!(
            out.contains("| queued | authenticate | verify_ticket |"),
            "{out}"
        );
        // One scan at most 1 ms in each stage, none of them over 0.5 ms: its p99 is interpolated.
        assert!(
            out.contains("| 500/s | 3500 | 995 | 995 | 995 | 995 | 995 | 995 | 995 | 995 |"),
            "{out}"
        );
        let mut empty = String::new();
        markdown(&mut empty, &[], &Floor::default()).unwrap();
        assert!(empty.is_empty());
    }
}
