//! RFC 3339 timestamps: writing epoch milliseconds as
//! `YYYY-MM-DDTHH:MM:SS.mmmZ`, and parsing the `--now` flag.
//!
//! Hand-written (Howard Hinnant's civil-calendar algorithms) because the
//! generator formats one timestamp per message and must stay fast and free of
//! heavy dependencies.

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of the civil date `y-m-d` (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 }; // March-based month [0, 11]
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month, day)` of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[inline]
fn push2(out: &mut Vec<u8>, v: u32) {
    out.push(b'0' + (v / 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

/// Appends `ts_ms` (milliseconds since the Unix epoch, UTC) to `out` as an
/// RFC 3339 timestamp with millisecond precision, e.g.
/// `2026-11-01T00:00:00.000Z`. Years outside 0..=9999 are clamped to that
/// range's digits, which the generator never produces.
pub fn write_rfc3339_ms(ts_ms: i64, out: &mut Vec<u8>) {
    let days = ts_ms.div_euclid(DAY_MS);
    let ms_of_day = ts_ms.rem_euclid(DAY_MS) as u32;
    let (y, m, d) = civil_from_days(days);
    let y = y.clamp(0, 9999) as u32;
    push2(out, y / 100);
    push2(out, y % 100);
    out.push(b'-');
    push2(out, m);
    out.push(b'-');
    push2(out, d);
    out.push(b'T');
    let secs = ms_of_day / 1000;
    push2(out, secs / 3600);
    out.push(b':');
    push2(out, secs / 60 % 60);
    out.push(b':');
    push2(out, secs % 60);
    out.push(b'.');
    let ms = ms_of_day % 1000;
    out.push(b'0' + (ms / 100) as u8);
    push2(out, ms % 100);
    out.push(b'Z');
}

/// `ts_ms` as an RFC 3339 string (see [`write_rfc3339_ms`]).
pub fn format_rfc3339_ms(ts_ms: i64) -> String {
    let mut out = Vec::with_capacity(24);
    write_rfc3339_ms(ts_ms, &mut out);
    // The writer emits ASCII digits and separators only.
    String::from_utf8(out).unwrap_or_default()
}

/// Parses an RFC 3339 timestamp (`Z` or a `±HH:MM` offset, optional
/// fractional seconds, `T`, `t` or a space between date and time) into
/// milliseconds since the Unix epoch. Fractional digits beyond milliseconds
/// are truncated. A bare integer is taken as epoch milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().map_err(|e| format!("bad epoch milliseconds {s:?}: {e}"));
    }
    let err = |what: &str| format!("bad RFC 3339 timestamp {s:?}: {what}");
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<u32, String> {
        let part = b.get(from..from + len).ok_or_else(|| err("too short"))?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(err("expected digits"));
        }
        Ok(part.iter().fold(0u32, |acc, &c| acc * 10 + u32::from(c - b'0')))
    };
    let sep = |at: usize, allowed: &[u8]| -> Result<(), String> {
        match b.get(at) {
            Some(c) if allowed.contains(c) => Ok(()),
            _ => Err(err("unexpected separator")),
        }
    };
    let year = num(0, 4)?;
    sep(4, b"-")?;
    let month = num(5, 2)?;
    sep(7, b"-")?;
    let day = num(8, 2)?;
    sep(10, b"Tt ")?;
    let hour = num(11, 2)?;
    sep(13, b":")?;
    let minute = num(14, 2)?;
    sep(16, b":")?;
    let second = num(17, 2)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(err("field out of range"));
    }
    let mut pos = 19;
    let mut millis = 0i64;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        while b.get(pos).is_some_and(u8::is_ascii_digit) {
            if pos - start < 3 {
                millis = millis * 10 + i64::from(b[pos] - b'0');
            }
            pos += 1;
        }
        if pos == start {
            return Err(err("empty fraction"));
        }
        for _ in (pos - start)..3 {
            millis *= 10;
        }
    }
    let offset_min: i64 = match b.get(pos) {
        Some(b'Z' | b'z') if pos + 1 == b.len() => 0,
        Some(&c @ (b'+' | b'-')) if pos + 6 == b.len() => {
            sep(pos + 3, b":")?;
            let m = i64::from(num(pos + 1, 2)? * 60 + num(pos + 4, 2)?);
            if c == b'+' {
                m
            } else {
                -m
            }
        }
        _ => return Err(err("expected Z or an offset at the end")),
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_min * 60;
    Ok(secs * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339_ms(1_793_491_200_000), "2026-11-01T00:00:00.000Z");
        assert_eq!(format_rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_what_it_formats_and_offsets() {
        for ts in [0, 1, 999, 951_782_400_123, 1_793_491_199_999, -86_400_001] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ts)), Ok(ts));
        }
        assert_eq!(parse_rfc3339_ms("2026-11-01T00:00:00Z"), Ok(1_793_491_200_000));
        assert_eq!(parse_rfc3339_ms("2026-11-01T01:00:00+01:00"), Ok(1_793_491_200_000));
        assert_eq!(parse_rfc3339_ms("2026-10-31t23:00:00.5-01:00"), Ok(1_793_491_200_500));
        assert_eq!(parse_rfc3339_ms("2026-11-01T00:00:00.123456Z"), Ok(1_793_491_200_123));
        assert_eq!(parse_rfc3339_ms("1793491200000"), Ok(1_793_491_200_000));
        for bad in ["", "2026-11-01", "2026-13-01T00:00:00Z", "2026-11-01T00:00:00", "x"] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for z in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
