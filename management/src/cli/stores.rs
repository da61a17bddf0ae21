//! The store, device and booking commands: `device-add`, `devices`, `store-settings` and
//! `reserve`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Args;
use mujin_protocol::{DeviceId, StoreId};

use super::{key_dir, ready_pool, GlobalArgs};
use crate::{booking, qr, ticket_keys};

#[derive(Debug, Args)]
pub struct StoreSettingsArgs {
    #[arg(long, value_parser = StoreId::parse)]
    pub store: StoreId,
    /// Minutes before the end of a session its customer is warned (0: no warning).
    #[arg(long)]
    pub warn_minutes: Option<i32>,
    /// Seconds after its start a booking nobody scanned frees the device (no-show).
    #[arg(long)]
    pub no_show_grace_secs: Option<i32>,
    /// Let the store's devices start a provisional session on their own check of a ticket
    /// when management does not answer (`on` or `off`; off for new stores).
    #[arg(long, value_parser = parse_on_off)]
    pub offline_start: Option<bool>,
}

#[derive(Debug, Args)]
pub struct ReserveArgs {
    #[arg(long, value_parser = StoreId::parse)]
    pub store: StoreId,
    #[arg(long, value_parser = DeviceId::parse)]
    pub device: DeviceId,
    /// Start of the booking: `now`, `+10m`, `+30s`, `+2h` or an RFC 3339 time.
    #[arg(long, default_value = "now")]
    pub from: String,
    /// Length of the booking in minutes.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=24 * 60), conflicts_with = "seconds")]
    pub minutes: Option<u32>,
    /// Length of the booking in seconds (for short demos and tests).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=24 * 3600))]
    pub seconds: Option<u32>,
    /// Also write the QR code as a PNG image.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Print only the ticket text (no QR code), for scripts.
    #[arg(long)]
    pub quiet: bool,
}

/// Parses a booking start: `now`, `+<n>s|m|h`, or RFC 3339.
pub fn parse_start(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if text == "now" {
        return Ok(now);
    }
    if let Some(offset) = text.strip_prefix('+') {
        let split = offset.len().saturating_sub(1);
        let (amount, unit) = offset.split_at(split);
        let amount: i64 = amount
            .parse()
            .with_context(|| format!("bad offset {text:?}"))?;
        let seconds = match unit {
            "s" => amount,
            "m" => amount * 60,
            "h" => amount * 3600,
            _ => bail!("bad offset {text:?}: use s, m or h, e.g. +10m"),
        };
        return Ok(now + chrono::Duration::seconds(seconds));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .with_context(|| format!("{text:?} is not `now`, `+10m` or an RFC 3339 time"))
}

pub(super) async fn add_device(
    database_url: &str,
    store: &StoreId,
    device: &DeviceId,
    name: &str,
) -> anyhow::Result<()> {
    let pool = ready_pool(database_url).await?;
    booking::add_device(&pool, store, device, name).await?;
    println!("registered device {store}/{device}");
    Ok(())
}

pub(super) async fn list_devices(database_url: &str) -> anyhow::Result<()> {
    let pool = ready_pool(database_url).await?;
    for (store, device) in booking::list_devices(&pool).await? {
        println!("{store}/{device}");
    }
    Ok(())
}

pub(super) async fn store_settings(
    database_url: &str,
    args: &StoreSettingsArgs,
) -> anyhow::Result<()> {
    let pool = ready_pool(database_url).await?;
    let change = booking::StoreSettingsChange {
        warn_minutes: args.warn_minutes,
        no_show_grace_seconds: args.no_show_grace_secs,
        offline_start: args.offline_start,
    };
    let store = &args.store;
    let settings = booking::update_store_settings(&pool, store, change).await?;
    println!(
        "store {store}: warn {} min before the end, no-show after {} s, offline start {}",
        settings.warn_minutes,
        settings.no_show_grace_seconds,
        if settings.offline_start { "on" } else { "off" }
    );
    Ok(())
}

pub(super) async fn reserve(
    global: &GlobalArgs,
    database_url: &str,
    args: &ReserveArgs,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let starts_at = parse_start(&args.from, now)?;
    let length = match (args.minutes, args.seconds) {
        (Some(minutes), _) => i64::from(minutes) * 60,
        (None, Some(seconds)) => i64::from(seconds),
        (None, None) => bail!("give the booking length with --minutes N (or --seconds N)"),
    };
    let ends_at = starts_at + chrono::Duration::seconds(length);
    let pool = ready_pool(database_url).await?;
    let keys = ticket_keys::open(
        &pool,
        &key_dir(&global.data_dir),
        &global.seed_key_id(),
        now,
    )
    .await?;
    let booking = booking::reserve(
        &pool,
        &keys.signing,
        &args.store,
        &args.device,
        starts_at,
        ends_at,
        now,
    )
    .await?;
    if args.quiet {
        println!("{}", booking.ticket);
    } else {
        println!("{}", qr::terminal(&booking.ticket)?);
        println!("ticket   {}", booking.claims.ticket_id);
        println!(
            "device   {}/{}",
            booking.claims.store, booking.claims.device
        );
        println!(
            "window   {} → {}",
            booking.claims.not_before.to_rfc3339(),
            booking.claims.not_after.to_rfc3339()
        );
        println!("text     {}", booking.ticket);
    }
    if let Some(path) = &args.png {
        qr::write_png(&booking.ticket, path)?;
        if !args.quiet {
            println!("png      {}", path.display());
        }
    }
    Ok(())
}

/// `on`/`off` (also `true`/`false`, `yes`/`no`) for a switch.
fn parse_on_off(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("expected on or off, not {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_parse() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("OFF"), Ok(false));
        assert!(parse_on_off("maybe").unwrap_err().contains("maybe"));
    }

    #[test]
    fn booking_starts_parse() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        assert_eq!(parse_start("now", now).unwrap(), now);
        assert_eq!(
            parse_start("+10m", now).unwrap(),
            now + chrono::Duration::minutes(10)
        );
        assert_eq!(
            parse_start("+30s", now).unwrap(),
            now + chrono::Duration::seconds(30)
        );
        assert_eq!(
            parse_start("+2h", now).unwrap(),
            now + chrono::Duration::hours(2)
        );
        assert_eq!(
            parse_start("2030-01-01T10:00:00+09:00", now).unwrap(),
            DateTime::parse_from_rfc3339("2030-01-01T01:00:00Z").unwrap()
        );
        assert!(parse_start("+10x", now).is_err());
        assert!(parse_start("tomorrow", now).is_err());
    }
}
