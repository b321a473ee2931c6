//! Points in time as people and agents write them: `10m` (ago), `2h`, `1d`, `30s`, or an
//! ISO 8601 time (`2026-11-22T10:00:00Z`, `2026-11-22T10:00` in local time, `2026-11-22`).

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone};

/// What the accepted forms are, for error messages.
pub const FORMS: &str = "a duration ago such as 30s, 10m, 2h or 1d, or an ISO 8601 time such as 2026-11-22T10:00:00Z, 2026-11-22T10:00 (local time) or 2026-11-22";

/// Parse `text` into Unix microseconds; durations count back from `now_us`.
pub fn parse(text: &str, now_us: i64) -> Result<i64, String> {
    let t = text.trim();
    let bad = || format!("cannot read the time `{text}`: use {FORMS}");
    if t.is_empty() {
        return Err(bad());
    }
    if let Some(us) = parse_ago(t) {
        return Ok(now_us - us.ok_or_else(bad)?);
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.timestamp_micros());
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, fmt) {
            return local_us(naive).ok_or_else(bad);
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return local_us(date.and_hms_opt(0, 0, 0).ok_or_else(bad)?).ok_or_else(bad);
    }
    Err(bad())
}

/// `10m`, `2h ago`, `1.5h`: `Some(Some(us))`; a number with an unknown unit: `Some(None)`;
/// not a duration at all: `None`.
fn parse_ago(t: &str) -> Option<Option<i64>> {
    let t = t.strip_suffix("ago").unwrap_or(t).trim_end();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    if split == 0 {
        return None;
    }
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86400.0,
        "w" | "week" | "weeks" => 7.0 * 86400.0,
        // `2026-11-22` starts with digits too: only claim it when it looks like a duration.
        u if u.chars().all(|c| c.is_ascii_alphabetic()) => return Some(None),
        _ => return None,
    };
    Some(Some((n * secs * 1e6) as i64))
}

fn local_us(naive: NaiveDateTime) -> Option<i64> {
    Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;

    #[test]
    fn durations_count_back_from_now() {
        assert_eq!(parse("10m", NOW), Ok(NOW - 600_000_000));
        assert_eq!(parse("2h", NOW), Ok(NOW - 7_200_000_000));
        assert_eq!(parse("1d", NOW), Ok(NOW - 86_400_000_000));
        assert_eq!(parse("30s ago", NOW), Ok(NOW - 30_000_000));
        assert_eq!(parse("1.5h", NOW), Ok(NOW - 5_400_000_000));
        assert_eq!(parse(" 5 min ", NOW), Ok(NOW - 300_000_000));
    }

    #[test]
    fn iso_times() {
        assert_eq!(
            parse("2026-11-22T10:00:00Z", NOW),
            Ok(DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
                .unwrap()
                .timestamp_micros())
        );
        assert_eq!(
            parse("2026-11-22T10:00:00+01:00", NOW),
            parse("2026-11-22T09:00:00Z", NOW)
        );
        let local = parse("2026-11-22T10:00", NOW).unwrap();
        assert_eq!(parse("2026-11-22 10:00:00", NOW), Ok(local));
        assert!(parse("2026-11-22", NOW).unwrap() < local);
    }

    #[test]
    fn bad_times_name_the_forms() {
        for bad in ["", "yesterday", "10x", "2026-13-40", "m10"] {
            let e = parse(bad, NOW).unwrap_err();
            assert!(e.contains("10m") && e.contains("ISO 8601"), "{bad}: {e}");
        }
    }
}
