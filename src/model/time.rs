//! RFC 3339 parsing and formatting in milliseconds since the Unix epoch.
//!
//! Every time inside Cohort is an `i64` of milliseconds since the epoch, UTC.
//! Input accepts `Z` or an offset, with or without fractional seconds
//! (INGEST.md); output is always UTC with millisecond precision.

use chrono::{DateTime, SecondsFormat, Utc};

/// Parses an RFC 3339 timestamp into milliseconds since the epoch.
/// Fractions finer than a millisecond are truncated toward the past.
/// Returns `None` for text that is not RFC 3339.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let parsed = DateTime::parse_from_rfc3339(text.trim()).ok()?;
    Some(parsed.timestamp_millis())
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
    fn formats_round_trip() {
        for ms in [0i64, 1, -1, 1_767_225_600_123, -86_400_000 * 365] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        }
    }
}
