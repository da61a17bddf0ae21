//! Usage reports: sessions, minutes used, no-shows and refusals by reason, per store, device
//! and day, computed in one SQL query and printed as an aligned table or as CSV.
//!
//! Where each figure comes from:
//! - sessions and minutes: the `sessions` table, counted on the day a session started; the
//!   minutes run from its start to its end (to now while it is still open), all on that day;
//! - no-shows: bookings given up because nobody scanned them (`reservations.cancel_reason =
//!   'no_show'`), counted on the day the booking started;
//! - refusals: the `scan_rejected` entries of the audit log (`events`), by reason, on the day
//!   of the refusal. Every decided refusal is there once per scan id; refusals answered without
//!   a decision (floods, unauthenticated scans) are logged at a limited rate, so they count
//!   what the log holds, not every message refused.
//!
//! Days are calendar days in a time zone (UTC unless asked), which PostgreSQL resolves, so any
//! zone name it knows works.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::Pool;
use mujin_protocol::message::RejectReason;
use mujin_protocol::{DeviceId, StoreId};
use tokio_postgres::error::SqlState;

/// What one row of a report stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Grouping {
    /// One row per day, store and device.
    Day,
    /// One row per device over the whole period.
    Device,
    /// One row per store over the whole period.
    Store,
}

impl Grouping {
    fn as_str(self) -> &'static str {
        match self {
            Grouping::Day => "day",
            Grouping::Device => "device",
            Grouping::Store => "store",
        }
    }
}

/// The report asked for. Missing dates default to the last seven days up to today.
#[derive(Debug, Clone)]
pub struct ReportQuery {
    /// First day (inclusive).
    pub from: Option<NaiveDate>,
    /// Last day (inclusive).
    pub to: Option<NaiveDate>,
    /// The time zone days are counted in (a PostgreSQL zone name such as `UTC`, `Asia/Tokyo`).
    pub time_zone: String,
    pub store: Option<StoreId>,
    pub device: Option<DeviceId>,
    pub by: Grouping,
}

/// Why a report cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the period is empty: --from {from} is after --to {to}")]
    EmptyRange { from: NaiveDate, to: NaiveDate },
    #[error("unknown time zone {0:?} (use a name such as UTC or Asia/Tokyo)")]
    UnknownTimeZone(String),
    #[error("no store {0} is registered")]
    UnknownStore(StoreId),
    #[error("no device {device} is registered{}", store.as_ref().map(|store| format!(" in store {store}")).unwrap_or_default())]
    UnknownDevice {
        store: Option<StoreId>,
        device: DeviceId,
    },
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// One row of a report: usage of one day, store and device (or of a device or store over the
/// period, see [`Grouping`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub day: Option<NaiveDate>,
    pub store: String,
    pub device: Option<String>,
    pub sessions: i64,
    /// Seconds of use of the sessions started in this row.
    pub seconds_used: i64,
    pub no_shows: i64,
    /// Refusals by reason (only reasons that occurred).
    pub refusals: BTreeMap<String, i64>,
}

impl UsageRow {
    fn refused(&self) -> i64 {
        self.refusals.values().sum()
    }
}

/// A report: the resolved period and its rows, ordered by day, store and device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub time_zone: String,
    pub by: Grouping,
    pub rows: Vec<UsageRow>,
}

/// One line of the query: the figures of one key, or the refusals of one reason for that key.
#[derive(Debug, Clone)]
struct FactRow {
    day: Option<NaiveDate>,
    store: String,
    device: Option<String>,
    reason: Option<String>,
    sessions: i64,
    seconds_used: i64,
    no_shows: i64,
    refusals: i64,
}

/// Every usage fact as (store, device, time, sessions, seconds, no-shows, refusal reason), then
/// grouped by the key the grouping asks for and by reason, so one query gives the whole report.
const USAGE_SQL: &str = "
WITH bounds AS (
    SELECT ($1::date)::timestamp AT TIME ZONE $3::text AS lo,
           ($2::date + 1)::timestamp AT TIME ZONE $3::text AS hi
),
facts AS (
    SELECT s.store_id, s.device_id, s.started_at AS at, 1 AS sessions,
           extract(epoch FROM coalesce(s.ended_at, greatest($6::timestamptz, s.started_at))
                              - s.started_at) AS seconds,
           0 AS no_shows, NULL::text AS reason
      FROM sessions s
    UNION ALL
    SELECT r.store_id, r.device_id, lower(r.period), 0, 0, 1, NULL
      FROM reservations r
     WHERE r.cancel_reason = 'no_show'
    UNION ALL
    SELECT e.store_id, e.device_id, e.at, 0, 0, 0, coalesce(e.body->>'reason', 'unknown')
      FROM events e
     WHERE e.kind = 'scan_rejected'
)
SELECT CASE WHEN $7::text = 'day' THEN (f.at AT TIME ZONE $3::text)::date END AS day,
       f.store_id,
       CASE WHEN $7::text <> 'store' THEN f.device_id END AS device_id,
       f.reason,
       sum(f.sessions)::bigint,
       round(sum(f.seconds))::bigint,
       sum(f.no_shows)::bigint,
       count(*)
  FROM facts f, bounds b
 WHERE f.at >= b.lo AND f.at < b.hi
   AND ($4::text IS NULL OR f.store_id = $4::text)
   AND ($5::text IS NULL OR f.device_id = $5::text)
 GROUP BY 1, 2, 3, 4
 ORDER BY 1, 2, 3, 4 NULLS FIRST";

/// Computes the report of `query` as of `now` (open sessions count their minutes up to now).
pub async fn usage(
    pool: &Pool,
    query: &ReportQuery,
    now: DateTime<Utc>,
) -> Result<UsageReport, ReportError> {
    let client = pool.get().await?;
    let today = today_in(&client, &query.time_zone, now).await?;
    let to = query.to.unwrap_or(today);
    let from = query.from.unwrap_or_else(|| to - chrono::Duration::days(6));
    if from > to {
        return Err(ReportError::EmptyRange { from, to });
    }
    check_filters(&client, query.store.as_ref(), query.device.as_ref()).await?;
    let store = query.store.as_ref().map(StoreId::as_str);
    let device = query.device.as_ref().map(DeviceId::as_str);
    let rows = client
        .query(
            USAGE_SQL,
            &[
                &from,
                &to,
                &query.time_zone,
                &store,
                &device,
                &now,
                &query.by.as_str(),
            ],
        )
        .await?;
    let facts = rows.iter().map(|row| FactRow {
        day: row.get(0),
        store: row.get(1),
        device: row.get(2),
        reason: row.get(3),
        sessions: row.get(4),
        seconds_used: row.get(5),
        no_shows: row.get(6),
        refusals: row.get(7),
    });
    Ok(UsageReport {
        from,
        to,
        time_zone: query.time_zone.clone(),
        by: query.by,
        rows: pivot(facts),
    })
}

/// Today's date in `time_zone`, which also checks that PostgreSQL knows the zone.
async fn today_in(
    client: &deadpool_postgres::Client,
    time_zone: &str,
    now: DateTime<Utc>,
) -> Result<NaiveDate, ReportError> {
    match client
        .query_one(
            "SELECT ($1::timestamptz AT TIME ZONE $2::text)::date",
            &[&now, &time_zone],
        )
        .await
    {
        Ok(row) => Ok(row.get(0)),
        Err(error) if error.code() == Some(&SqlState::INVALID_PARAMETER_VALUE) => {
            Err(ReportError::UnknownTimeZone(time_zone.to_owned()))
        }
        Err(error) => Err(error.into()),
    }
}

/// Refuses a store or device filter that names nothing registered (a typo would otherwise
/// look like a period without use).
async fn check_filters(
    client: &deadpool_postgres::Client,
    store: Option<&StoreId>,
    device: Option<&DeviceId>,
) -> Result<(), ReportError> {
    if let Some(store) = store {
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM stores WHERE store_id = $1)",
                &[&store.as_str()],
            )
            .await?;
        if !row.get::<_, bool>(0) {
            return Err(ReportError::UnknownStore(store.clone()));
        }
    }
    if let Some(device) = device {
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM devices
                                 WHERE device_id = $1 AND ($2::text IS NULL OR store_id = $2))",
                &[&device.as_str(), &store.map(StoreId::as_str)],
            )
            .await?;
        if !row.get::<_, bool>(0) {
            return Err(ReportError::UnknownDevice {
                store: store.cloned(),
                device: device.clone(),
            });
        }
    }
    Ok(())
}

/// Folds the query's lines (ordered by key) into one row per key.
fn pivot(facts: impl IntoIterator<Item = FactRow>) -> Vec<UsageRow> {
    let mut rows: Vec<UsageRow> = Vec::new();
    for fact in facts {
        let same_key = rows.last().is_some_and(|row| {
            row.day == fact.day && row.store == fact.store && row.device == fact.device
        });
        if !same_key {
            rows.push(UsageRow {
                day: fact.day,
                store: fact.store.clone(),
                device: fact.device.clone(),
                sessions: 0,
                seconds_used: 0,
                no_shows: 0,
                refusals: BTreeMap::new(),
            });
        }
        let Some(row) = rows.last_mut() else {
            continue;
        };
        match fact.reason {
            Some(reason) => *row.refusals.entry(reason).or_default() += fact.refusals,
            None => {
                row.sessions += fact.sessions;
                row.seconds_used += fact.seconds_used;
                row.no_shows += fact.no_shows;
            }
        }
    }
    rows
}

/// The refusal reasons that occurred in `rows`, in the protocol's order, then any reason this
/// version does not know (from a newer worker) by name.
fn reasons_in(rows: &[UsageRow]) -> Vec<String> {
    let mut seen: Vec<String> = rows
        .iter()
        .flat_map(|row| row.refusals.keys().cloned())
        .collect();
    seen.sort_by_key(|reason| (reason_rank(reason), reason.clone()));
    seen.dedup();
    seen
}

fn reason_rank(reason: &str) -> usize {
    RejectReason::ALL
        .iter()
        .position(|known| known.as_str() == reason)
        .unwrap_or(RejectReason::ALL.len())
}

/// Minutes with one decimal, from seconds.
fn minutes(seconds: i64) -> String {
    format!("{:.1}", seconds as f64 / 60.0)
}

/// The key columns a grouping shows.
fn key_headers(by: Grouping) -> &'static [&'static str] {
    match by {
        Grouping::Day => &["day", "store", "device"],
        Grouping::Device => &["store", "device"],
        Grouping::Store => &["store"],
    }
}

fn key_cells(row: &UsageRow, by: Grouping) -> Vec<String> {
    let device = || row.device.clone().unwrap_or_else(|| "-".to_owned());
    match by {
        Grouping::Day => vec![
            row.day
                .map_or_else(|| "-".to_owned(), |day| day.to_string()),
            row.store.clone(),
            device(),
        ],
        Grouping::Device => vec![row.store.clone(), device()],
        Grouping::Store => vec![row.store.clone()],
    }
}

/// The figures of a row: sessions, minutes, no-shows, refused, then one per reason.
fn figure_cells(row: &UsageRow, reasons: &[String]) -> Vec<String> {
    let mut cells = vec![
        row.sessions.to_string(),
        minutes(row.seconds_used),
        row.no_shows.to_string(),
        row.refused().to_string(),
    ];
    cells.extend(
        reasons
            .iter()
            .map(|reason| row.refusals.get(reason).copied().unwrap_or(0).to_string()),
    );
    cells
}

/// The sum of all rows, for the table's last line.
fn total(rows: &[UsageRow]) -> UsageRow {
    let mut total = UsageRow {
        day: None,
        store: "total".to_owned(),
        device: None,
        sessions: 0,
        seconds_used: 0,
        no_shows: 0,
        refusals: BTreeMap::new(),
    };
    for row in rows {
        total.sessions += row.sessions;
        total.seconds_used += row.seconds_used;
        total.no_shows += row.no_shows;
        for (reason, count) in &row.refusals {
            *total.refusals.entry(reason.clone()).or_default() += count;
        }
    }
    total
}

/// What the report covers, in words.
fn period(report: &UsageReport) -> String {
    format!(
        "from {} to {} ({})",
        report.from, report.to, report.time_zone
    )
}

/// The report as an aligned table: keys left-aligned, figures right-aligned, one column per
/// refusal reason that occurred, and a total line when there is more than one row.
pub fn as_table(report: &UsageReport) -> String {
    if report.rows.is_empty() {
        return format!("no usage {}\n", period(report));
    }
    let reasons = reasons_in(&report.rows);
    let keys = key_headers(report.by);
    let mut header: Vec<String> = keys.iter().map(|key| (*key).to_owned()).collect();
    header.extend(["sessions", "minutes", "no-shows", "refused"].map(str::to_owned));
    header.extend(reasons.iter().cloned());
    let mut lines = vec![header];
    for row in &report.rows {
        let mut cells = key_cells(row, report.by);
        cells.extend(figure_cells(row, &reasons));
        lines.push(cells);
    }
    if report.rows.len() > 1 {
        let mut cells = vec![String::new(); keys.len()];
        cells[0] = "total".to_owned();
        cells.extend(figure_cells(&total(&report.rows), &reasons));
        lines.push(cells);
    }
    let mut text = format!("usage {}, by {}\n", period(report), report.by.as_str());
    text.push_str(&align(&lines, keys.len()));
    text
}

/// Pads `lines` into columns: the first `left` columns left-aligned, the others right-aligned.
fn align(lines: &[Vec<String>], left: usize) -> String {
    let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            lines
                .iter()
                .filter_map(|line| line.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, &width))| {
                if column < left {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// The report as CSV: the key columns of its grouping, `sessions`, `minutes`, `no_shows`,
/// `refused`, then `refused_<reason>` for every reason mujin knows (the same columns whatever
/// the period, so files of several periods line up), plus any unknown reason that occurred.
/// No total line: a CSV row is one observation.
pub fn as_csv(report: &UsageReport) -> Result<String, csv::Error> {
    let mut reasons: Vec<String> = RejectReason::ALL
        .iter()
        .map(|reason| reason.as_str().to_owned())
        .collect();
    reasons.extend(
        reasons_in(&report.rows)
            .into_iter()
            .filter(|reason| reason_rank(reason) == RejectReason::ALL.len()),
    );
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = key_headers(report.by)
        .iter()
        .map(|key| (*key).to_owned())
        .collect();
    header.extend(["sessions", "minutes", "no_shows", "refused"].map(str::to_owned));
    header.extend(reasons.iter().map(|reason| format!("refused_{reason}")));
    writer.write_record(&header)?;
    for row in &report.rows {
        let mut cells = key_cells(row, report.by);
        if row.device.is_none() && report.by != Grouping::Store {
            // An empty field, not "-", for a machine reading it.
            if let Some(cell) = cells.last_mut() {
                cell.clear();
            }
        }
        cells.extend(figure_cells(row, &reasons));
        writer.write_record(&cells)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|error| csv::Error::from(error.into_error()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> Option<NaiveDate> {
        Some(text.parse().unwrap())
    }

    fn fact(day_text: &str, device: &str, reason: Option<&str>, figures: [i64; 4]) -> FactRow {
        FactRow {
            day: day(day_text),
            store: "shibuya".to_owned(),
            device: Some(device.to_owned()),
            reason: reason.map(str::to_owned),
            sessions: figures[0],
            seconds_used: figures[1],
            no_shows: figures[2],
            refusals: figures[3],
        }
    }

    fn report(rows: Vec<UsageRow>) -> UsageReport {
        UsageReport {
            from: "2025-03-01".parse().unwrap(),
            to: "2025-03-02".parse().unwrap(),
            time_zone: "UTC".to_owned(),
            by: Grouping::Day,
            rows,
        }
    }

    fn sample() -> Vec<UsageRow> {
        pivot([
            fact("2025-03-01", "pc-01", None, [1, 2700, 0, 0]),
            fact("2025-03-01", "pc-01", Some("too_early"), [0, 0, 0, 2]),
            fact("2025-03-01", "pc-02", None, [0, 0, 1, 0]),
            fact("2025-03-01", "pc-02", Some("wrong_device"), [0, 0, 0, 1]),
            fact("2025-03-02", "pc-01", Some("from_the_future"), [0, 0, 0, 1]),
        ])
    }

    #[test]
    fn lines_of_one_key_fold_into_one_row() {
        let rows = sample();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].sessions, 1);
        assert_eq!(rows[0].seconds_used, 2700);
        assert_eq!(rows[0].refusals.get("too_early"), Some(&2));
        assert_eq!(rows[1].no_shows, 1);
        assert_eq!(rows[1].refused(), 1);
        assert_eq!(rows[2].day, day("2025-03-02"));
    }

    #[test]
    fn reasons_follow_the_protocol_order_and_unknown_ones_come_last() {
        assert_eq!(
            reasons_in(&sample()),
            ["wrong_device", "too_early", "from_the_future"]
        );
    }

    #[test]
    fn the_table_is_aligned_with_a_total_line() {
        let text = as_table(&report(sample()));
        let expected = "\
usage from 2025-03-01 to 2025-03-02 (UTC), by day
day         store    device  sessions  minutes  no-shows  refused  wrong_device  too_early  from_the_future
2025-03-01  shibuya  pc-01          1     45.0         0        2             0          2                0
2025-03-01  shibuya  pc-02          0      0.0         1        1             1          0                0
2025-03-02  shibuya  pc-01          0      0.0         0        1             0          0                1
total                               1     45.0         1        4             1          2                1
";
        assert_eq!(text, expected);
    }

    #[test]
    fn an_empty_period_says_so() {
        assert_eq!(
            as_table(&report(Vec::new())),
            "no usage from 2025-03-01 to 2025-03-02 (UTC)\n"
        );
        let csv_text = as_csv(&report(Vec::new())).unwrap();
        assert_eq!(csv_text.lines().count(), 1, "{csv_text}");
    }

    #[test]
    fn csv_has_a_column_for_every_known_reason() {
        let text = as_csv(&report(sample())).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(
            header[..7],
            ["day", "store", "device", "sessions", "minutes", "no_shows", "refused"]
        );
        assert_eq!(header.len(), 7 + RejectReason::ALL.len() + 1);
        assert_eq!(header.last(), Some(&"refused_from_the_future"));
        let first: Vec<&str> = lines.next().unwrap().split(',').collect();
        let too_early = header
            .iter()
            .position(|name| *name == "refused_too_early")
            .unwrap();
        assert_eq!(
            first[..7],
            ["2025-03-01", "shibuya", "pc-01", "1", "45.0", "0", "2"]
        );
        assert_eq!(first[too_early], "2");
    }

    #[test]
    fn minutes_have_one_decimal() {
        assert_eq!(minutes(0), "0.0");
        assert_eq!(minutes(1830), "30.5");
        assert_eq!(minutes(59), "1.0");
    }
}
