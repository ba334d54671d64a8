//! The `timestamp` of Chat messages, presence and read receipts: ISO 8601 with an offset, in
//! UTC, to the millisecond: `2026-05-01T12:34:56.789+00:00`.
//!
//! Millisecond precision and an explicit `+00:00` make the text valid both as ISO 8601 / RFC 3339
//! and as ECMAScript's date-time string format, so `new Date(timestamp)` and Python's
//! `datetime.fromisoformat(timestamp)` both read it (and the latter gives an aware datetime).
//!
//! Formatted from `SystemTime` here rather than with a date crate: the only calendar work is
//! days-since-epoch → (year, month, day), Howard Hinnant's `civil_from_days`, a dozen lines
//! checked below against dates computed independently. (`time` 0.3.55 would also raise the
//! crate's minimum Rust version.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The current time as a protocol timestamp.
pub fn now() -> String {
    // A clock before 1970 is a broken host; the epoch is as good an answer as any.
    format(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

/// Formats a time given as the duration since the Unix epoch.
pub fn format(since_epoch: Duration) -> String {
    let seconds = since_epoch.as_secs();
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01.
///
/// Shifts the epoch to 0000-03-01 so that leap days fall at the end of a year, then splits into
/// 400-year eras (146,097 days), years of the era, and a March-based day of year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64, millis: u32) -> String {
        format(Duration::new(seconds, millis * 1_000_000))
    }

    #[test]
    fn formats_known_instants() {
        // Expected values computed with Python's datetime.fromtimestamp(s, timezone.utc).
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005+00:00");
        assert_eq!(at(1_709_251_199, 999), "2024-02-29T23:59:59.999+00:00");
        assert_eq!(at(1_735_689_599, 120), "2024-12-31T23:59:59.120+00:00");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000+00:00");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000+00:00");
    }

    #[test]
    fn consecutive_days_are_consecutive_dates() {
        let days_in = |year: u64, month: u64| match month {
            2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut expected = (1970, 1, 1);
        for days in 0..200_000 {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            let (year, month, day) = expected;
            expected = if day < days_in(year, month) {
                (year, month, day + 1)
            } else if month < 12 {
                (year, month + 1, 1)
            } else {
                (year + 1, 1, 1)
            };
        }
    }

    #[test]
    fn now_has_the_protocol_shape() {
        let text = now();
        assert_eq!(text.len(), "2026-05-01T12:34:56.789+00:00".len(), "{text}");
        assert!(text.ends_with("+00:00") && text.as_bytes()[10] == b'T', "{text}");
    }
}
