//! Points in time as people and agents write them, in journalctl's and docker's forms:
//! a duration ago (`10m`, `1h30m`, `-10m`, `2 hours ago`), `now`, `today`, `yesterday`,
//! `tomorrow`, Unix seconds (`@1796000000`), or an ISO 8601 time (`2026-11-22T10:00:00Z`,
//! `2026-11-22T10:00` in local time, `2026-11-22`).

use chrono::{DateTime, Days, Local, NaiveDate, NaiveDateTime, TimeZone};

/// What the accepted forms are, for error messages.
pub const FORMS: &str = "a duration ago such as 30s, 10m, 1h30m, -2h or 1d, `today`, `yesterday`, `now`, Unix seconds such as @1796000000, or an ISO 8601 time such as 2026-11-22T10:00:00Z, 2026-11-22T10:00 (local time) or 2026-11-22";

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
    if let Some(secs) = t.strip_prefix('@') {
        let secs: f64 = secs.trim().parse().map_err(|_| bad())?;
        if !secs.is_finite() || secs.abs() > 1e12 {
            return Err(bad());
        }
        return Ok((secs * 1e6) as i64);
    }
    if let Some(us) = named_day(t, now_us) {
        return us.ok_or_else(bad);
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

/// `now`, and local midnight of `today`, `yesterday` and `tomorrow` (as journalctl reads
/// them). `None`: not one of those words.
fn named_day(t: &str, now_us: i64) -> Option<Option<i64>> {
    if t.eq_ignore_ascii_case("now") {
        return Some(Some(now_us));
    }
    let offset: i64 = match t.to_ascii_lowercase().as_str() {
        "today" => 0,
        "yesterday" => -1,
        "tomorrow" => 1,
        _ => return None,
    };
    let today = Local.timestamp_micros(now_us).single()?.date_naive();
    let day = if offset < 0 {
        today.checked_sub_days(Days::new(1))
    } else {
        today.checked_add_days(Days::new(offset as u64))
    };
    Some(day.and_then(|d| d.and_hms_opt(0, 0, 0)).and_then(local_us))
}

/// A duration ago: one or more `<number><unit>` parts (`10m`, `1h30m`, `1h 30m`, `1.5h`),
/// optionally after a `-` (journalctl's `-10m`) or before `ago`. `Some(Some(us))`: a
/// duration; `Some(None)`: numbers with an unknown unit (`10x`); `None`: not a duration
/// at all (a date such as `2026-11-22` starts with digits too).
fn parse_ago(t: &str) -> Option<Option<i64>> {
    let t = t.strip_suffix("ago").unwrap_or(t).trim();
    let t = t.strip_prefix('-').unwrap_or(t).trim_start();
    if !t.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let mut rest = t;
    let mut total = 0.0;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if split == 0 {
            return None;
        }
        let n: f64 = rest[..split].parse().ok()?;
        let after = rest[split..].trim_start();
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, tail) = after.split_at(unit_len);
        let secs = match unit {
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            "w" | "week" | "weeks" => 7.0 * 86400.0,
            "" => return None,
            _ if tail.trim().is_empty() => return Some(None),
            _ => return None,
        };
        total += n * secs;
        rest = tail.trim_start();
    }
    if !total.is_finite() || total > 1e12 {
        return Some(None);
    }
    Some(Some((total * 1e6) as i64))
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
    fn journalctl_and_docker_forms() {
        assert_eq!(parse("1h30m", NOW), Ok(NOW - 5_400_000_000));
        assert_eq!(parse("1h 30m ago", NOW), Ok(NOW - 5_400_000_000));
        assert_eq!(parse("-10m", NOW), Ok(NOW - 600_000_000));
        assert_eq!(parse("2 hours ago", NOW), Ok(NOW - 7_200_000_000));
        assert_eq!(parse("@1796000000", NOW), Ok(1_796_000_000_000_000));
        assert_eq!(parse("now", NOW), Ok(NOW));
        let today = parse("today", NOW).unwrap();
        let yesterday = parse("yesterday", NOW).unwrap();
        let tomorrow = parse("tomorrow", NOW).unwrap();
        assert!(today <= NOW && NOW - today < 86_400_000_000 + 3_600_000_000);
        assert!(yesterday < today && today < tomorrow);
        let midnight = Local.timestamp_micros(today).unwrap();
        assert_eq!(
            midnight.date_naive(),
            Local.timestamp_micros(NOW).unwrap().date_naive()
        );
        assert_eq!(midnight.time(), chrono::NaiveTime::MIN);
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
        for bad in [
            "",
            "yesteryear",
            "10x",
            "1h30x",
            "2026-13-40",
            "m10",
            "@x",
            "@1e300",
            "1e300h",
        ] {
            let e = parse(bad, NOW).unwrap_err();
            assert!(e.contains("10m") && e.contains("ISO 8601"), "{bad}: {e}");
        }
    }
}
