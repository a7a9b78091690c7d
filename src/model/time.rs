//! RFC 3339 parsing and formatting in milliseconds since the Unix epoch.
//!
//! Every time inside Cohort is an `i64` of milliseconds since the epoch, UTC.
//! Input accepts `Z` or an offset, with or without fractional seconds
//! (INGEST.md); output is always UTC with millisecond precision.
//!
//! One range holds for every time Cohort stores, however it was derived
//! (`timestamp`, `receivedAt`, `receivedAt - (sentAt - originalTimestamp)`,
//! a timestamp trait in RFC 3339 or epoch milliseconds): the years 0000 to
//! 9999 in UTC, [`MIN_TIME_MS`] to [`MAX_TIME_MS`], the years an RFC 3339
//! timestamp can write.

use chrono::{DateTime, SecondsFormat, Utc};

/// The earliest time Cohort stores: `0000-01-01T00:00:00.000Z`.
pub const MIN_TIME_MS: i64 = -62_167_219_200_000;

/// The latest time Cohort stores: `9999-12-31T23:59:59.999Z`.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// The range of stored times in words, for error messages.
pub const TIME_RANGE: &str = "0000-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z";

/// True when `ms` lies in the range every stored time must be in.
pub fn time_in_range(ms: i64) -> bool {
    (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms)
}

/// A time that may lie outside the stored range, in words: its year in UTC
/// (`a time in the year -7973`), or its milliseconds when even that is out
/// of reach.
pub fn describe_time_ms(ms: i64) -> String {
    use chrono::Datelike;
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => format!("a time in the year {}", t.year()),
        None => format!("{ms} ms since the epoch"),
    }
}

/// True when `text` is RFC 3339 whatever its year (so that a time refused
/// by [`parse_rfc3339_ms`] can be called out of range rather than not RFC
/// 3339).
pub fn is_rfc3339(text: &str) -> bool {
    DateTime::parse_from_rfc3339(text.trim()).is_ok()
}

/// Parses an RFC 3339 timestamp into milliseconds since the epoch.
/// Fractions finer than a millisecond are truncated toward the past.
/// Returns `None` for text that is not RFC 3339, or whose offset moves it
/// out of [`MIN_TIME_MS`]..=[`MAX_TIME_MS`] in UTC.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let parsed = DateTime::parse_from_rfc3339(text.trim()).ok()?;
    Some(parsed.timestamp_millis()).filter(|ms| time_in_range(*ms))
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with milliseconds
/// (`2026-03-31T23:59:59.000Z`). Out-of-range values are clamped to the
/// representable range rather than panicking.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(if ms < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    });
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_zulu_offsets_and_fractions() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339_ms("2026-01-01T00:00:00.123456Z"), Some(1_767_225_600_123));
        assert_eq!(parse_rfc3339_ms("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn the_range_is_the_years_0000_to_9999_in_utc() {
        assert_eq!(parse_rfc3339_ms("0000-01-01T00:00:00Z"), Some(MIN_TIME_MS));
        assert_eq!(parse_rfc3339_ms("9999-12-31T23:59:59.999Z"), Some(MAX_TIME_MS));
        assert_eq!(parse_rfc3339_ms("0000-01-01T00:00:00+00:01"), None);
        assert_eq!(parse_rfc3339_ms("9999-12-31T23:59:59-00:01"), None);
        assert!(!time_in_range(MIN_TIME_MS - 1) && !time_in_range(MAX_TIME_MS + 1));
    }

    #[test]
    fn formats_round_trip() {
        for ms in [0i64, 1, -1, 1_767_225_600_123, -86_400_000 * 365] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        }
    }
}
