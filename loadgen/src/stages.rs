//! Where an accepted scan's time goes inside management: its own metrics
//! (`mujin_scan_stage_seconds` on `GET /metrics`, see docs/metrics.md) read just before a
//! step's first scan and after its last answer, like the CPU probe, give the mean of each stage
//! over the phase. Means, not percentiles, because they add up: the stages' means sum to
//! management's mean part of a scan → start, and what the device measured beyond that is the
//! broker's two hops and the clients on either side.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use mujin_management::metrics::ScanStages;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::floor::Floor;

/// The metric management times the stages with.
const METRIC: &str = "mujin_scan_stage_seconds";
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Scrapes one management worker's metrics endpoint.
#[derive(Debug, Clone)]
pub struct StageProbe {
    address: SocketAddr,
}

/// Each stage's running sum (seconds) and count, in the order of [`ScanStages::NAMES`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageTotals {
    sums: [f64; 8],
    counts: [u64; 8],
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
            .map(|(index, stage)| StageMean {
                stage: (*stage).to_owned(),
                mean_us: (self.sums[index] - before.sums[index]).max(0.0) * 1e6 / scans as f64,
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
            .map(|(a, b)| StageMean {
                stage: a.stage.clone(),
                mean_us: weighted(a.mean_us, b.mean_us),
            })
            .collect();
        StageMeans {
            scans,
            total_us: stages.iter().map(|stage| stage.mean_us).sum(),
            stages,
        }
    }
}

/// The report's table: for each rate, the device's mean scan → start, management's stages,
/// their sum, and the rest (the broker and the clients); then what the floor holds of it.
pub fn markdown(
    out: &mut String,
    by_rate: &[(f64, f64, &StageMeans)],
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
    for (rate, device_mean_ms, means) in by_rate {
        let device_us = device_mean_ms * 1000.0;
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
                "{METRIC}_sum{{stage=\"{stage}\"}} {sum}\n{METRIC}_count{{stage=\"{stage}\"}} {count}\n{METRIC}_bucket{{le=\"0.001\",stage=\"{stage}\"}} {count}\n"
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
        assert_eq!(StageTotals::parse("# EOF\n"), StageTotals::default());
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
    }

    #[test]
    fn the_table_splits_the_device_mean_into_management_and_the_rest() {
        let before = StageTotals::parse(&exposition([0.0; 8], 0));
        let after = StageTotals::parse(&exposition([0.0001; 8], 1));
        let means = after.since(&before).unwrap();
        let mut out = String::new();
        markdown(&mut out, &[(500.0, 2.0, &means)], &Floor::default()).unwrap();
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
        let mut empty = String::new();
        markdown(&mut empty, &[], &Floor::default()).unwrap();
        assert!(empty.is_empty());
    }
}
