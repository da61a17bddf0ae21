//! `mujin-management report`: usage per store, device and day as a table or CSV.

use chrono::{NaiveDate, Utc};
use clap::{Args, ValueEnum};
use mujin_protocol::{DeviceId, StoreId};

use super::ready_pool;
use crate::reports::{self, Grouping, ReportQuery};

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns for a terminal, with a total line.
    Table,
    /// Comma-separated values with a header line, for a spreadsheet or a script.
    Csv,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// First day of the period (YYYY-MM-DD, inclusive); default six days before --to.
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub from: Option<NaiveDate>,
    /// Last day of the period (YYYY-MM-DD, inclusive); default today.
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub to: Option<NaiveDate>,
    /// Only this store.
    #[arg(long, value_parser = StoreId::parse)]
    pub store: Option<StoreId>,
    /// Only this device (of --store, or of any store).
    #[arg(long, value_parser = DeviceId::parse)]
    pub device: Option<DeviceId>,
    /// One row per day and device, per device, or per store.
    #[arg(long, value_enum, default_value_t = Grouping::Day)]
    pub by: Grouping,
    /// How to print the report.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// The time zone days are counted in (e.g. Asia/Tokyo).
    #[arg(long, value_name = "ZONE", default_value = "UTC")]
    pub tz: String,
}

/// A day as `YYYY-MM-DD`.
fn parse_date(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|error| format!("{text:?} is not a date like 2025-03-01 ({error})"))
}

pub(super) async fn report(database_url: &str, args: &ReportArgs) -> anyhow::Result<()> {
    let pool = ready_pool(database_url).await?;
    let query = ReportQuery {
        from: args.from,
        to: args.to,
        time_zone: args.tz.clone(),
        store: args.store.clone(),
        device: args.device.clone(),
        by: args.by,
    };
    let report = reports::usage(&pool, &query, Utc::now()).await?;
    match args.format {
        ReportFormat::Table => print!("{}", reports::as_table(&report)),
        ReportFormat::Csv => {
            print!("{}", reports::as_csv(&report)?);
            if report.rows.is_empty() {
                // stdout stays a valid (header-only) CSV file.
                eprintln!(
                    "no usage from {} to {} ({})",
                    report.from, report.to, report.time_zone
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_strictly() {
        assert_eq!(
            parse_date("2025-03-01"),
            Ok(NaiveDate::from_ymd_opt(2025, 3, 1).unwrap())
        );
        assert!(parse_date("2025-13-01").unwrap_err().contains("2025-13-01"));
        assert!(parse_date("01/03/2025").is_err());
        assert!(parse_date("2025-02-30").is_err());
    }
}
