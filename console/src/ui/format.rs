//! Short text forms shared by the views: clock times, countdowns, ages and short ids.

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use mujin_protocol::{SessionId, TicketId};

/// `HH:MM:SS` in the operator's time zone.
pub fn clock(at: DateTime<Utc>, utc_offset: FixedOffset) -> String {
    at.with_timezone(&utc_offset).format("%H:%M:%S").to_string()
}

/// Hours and minutes, e.g. `10:30`.
pub fn hour_minute(at: DateTime<Utc>, utc_offset: FixedOffset) -> String {
    at.with_timezone(&utc_offset).format("%H:%M").to_string()
}

/// Time left of a lease: `59:07`, `1:02:03`, or `-00:12` once overdue.
pub fn countdown(left: TimeDelta) -> String {
    let sign = if left < TimeDelta::zero() { "-" } else { "" };
    let total = left.num_seconds().unsigned_abs();
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    if hours > 0 {
        format!("{sign}{hours}:{minutes:02}:{seconds:02}")
    } else {
        format!("{sign}{minutes:02}:{seconds:02}")
    }
}

/// How long ago, in the largest whole unit: `4s`, `12m`, `3h`, `2d`.
pub fn age(elapsed: TimeDelta) -> String {
    // A message stamped slightly after the last tick is simply "now".
    let seconds = elapsed.num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}

/// The first 8 hex digits of a session id, enough to tell sessions apart on screen.
pub fn short_session(session_id: SessionId) -> String {
    session_id.to_string().chars().take(8).collect()
}

/// The first 8 hex digits of a ticket id.
pub fn short_ticket(ticket_id: TicketId) -> String {
    ticket_id.to_string().chars().take(8).collect()
}

/// A duration in milliseconds as `1h02m`, `59m07s` or `12s`.
pub fn duration_ms(ms: u64) -> String {
    let total = ms / 1000;
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

/// A text bar of `width` cells, `fraction` (0..=1) of them full: `████░░`.
pub fn bar(fraction: f64, width: usize) -> String {
    let full = (fraction.clamp(0.0, 1.0) * width as f64).round() as usize;
    let mut text = "█".repeat(full);
    text.push_str(&"░".repeat(width - full));
    text
}

/// The part of a session still to run, 0..=1.
pub fn fraction_left(
    started_at: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> f64 {
    let total = (lease_until - started_at).num_milliseconds();
    if total <= 0 {
        return 0.0;
    }
    ((lease_until - now).num_milliseconds() as f64 / total as f64).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countdowns_read_like_clocks() {
        assert_eq!(countdown(TimeDelta::seconds(3547)), "59:07");
        assert_eq!(countdown(TimeDelta::seconds(3723)), "1:02:03");
        assert_eq!(countdown(TimeDelta::zero()), "00:00");
        assert_eq!(countdown(TimeDelta::seconds(-12)), "-00:12");
        // Part of a second left still shows as the whole second being counted down.
        assert_eq!(countdown(TimeDelta::milliseconds(59_500)), "00:59");
    }

    #[test]
    fn ages_use_one_unit() {
        assert_eq!(age(TimeDelta::seconds(-2)), "0s");
        assert_eq!(age(TimeDelta::seconds(59)), "59s");
        assert_eq!(age(TimeDelta::seconds(61)), "1m");
        assert_eq!(age(TimeDelta::hours(5)), "5h");
        assert_eq!(age(TimeDelta::days(3)), "3d");
    }

    #[test]
    fn durations_and_short_ids() {
        assert_eq!(duration_ms(3_720_000), "1h02m");
        assert_eq!(duration_ms(427_000), "7m07s");
        assert_eq!(duration_ms(999), "0s");
        let id = SessionId::parse("1b4e28ba-2fa1-11d2-883f-0016d3cca427").unwrap();
        assert_eq!(short_session(id), "1b4e28ba");
    }

    #[test]
    fn bars_fill_with_the_time_left() {
        assert_eq!(bar(0.5, 6), "███░░░");
        assert_eq!(bar(-1.0, 3), "░░░");
        assert_eq!(bar(2.0, 3), "███");
        let start = DateTime::parse_from_rfc3339("2025-06-01T10:00:00Z")
            .unwrap()
            .to_utc();
        let end = start + TimeDelta::hours(1);
        assert_eq!(
            fraction_left(start, end, start + TimeDelta::minutes(15)),
            0.75
        );
        assert_eq!(fraction_left(start, end, end + TimeDelta::minutes(1)), 0.0);
        assert_eq!(fraction_left(end, start, start), 0.0);
    }
}
