//! `--since` / `--until` values: a duration back from now (`90s`, `10m`, `2h`, `1d`,
//! `1w`) or a time (`2024-05-01T10:00:00Z`, `2024-05-01T10:00:00+02:00`, local
//! `2024-05-01T10:00:00` or `2024-05-01 10:00`, or a local date `2024-05-01`).

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone as _};

/// What the error message lists as accepted.
pub const ACCEPTED: &str = "a duration back from now (30s, 10m, 2h, 1d, 1w) or a time (2024-05-01T10:00:00Z, 2024-05-01T10:00:00+02:00, 2024-05-01 10:00 local, 2024-05-01)";

/// Microseconds since the Unix epoch that `text` means, `now_us` being now.
pub fn parse(text: &str, now_us: i64) -> Result<i64, String> {
    let t = text.trim();
    let bad = || format!("cannot read the time `{text}`: use {ACCEPTED}");
    if let Some(unit_at) = t.find(|c: char| !c.is_ascii_digit() && c != '.')
        && unit_at > 0
    {
        let (num, unit) = t.split_at(unit_at);
        let secs = match unit {
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "w" | "week" | "weeks" => 604_800.0,
            _ => f64::NAN,
        };
        if let Ok(n) = num.parse::<f64>()
            && secs.is_finite()
        {
            return Ok(now_us - (n * secs * 1e6) as i64);
        }
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
            return local(naive).ok_or_else(bad);
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return local(date.and_hms_opt(0, 0, 0).expect("midnight")).ok_or_else(bad);
    }
    Err(bad())
}

fn local(naive: NaiveDateTime) -> Option<i64> {
    Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        let now = 1_000_000_000_000_000;
        assert_eq!(parse("10m", now), Ok(now - 600_000_000));
        assert_eq!(parse("2h", now), Ok(now - 7_200_000_000));
        assert_eq!(parse("1.5s", now), Ok(now - 1_500_000));
        assert_eq!(
            parse("2024-05-01T10:00:00Z", now),
            Ok(1_714_557_600_000_000)
        );
        assert_eq!(
            parse("2024-05-01T12:00:00+02:00", now),
            Ok(1_714_557_600_000_000)
        );
        assert!(parse("2024-05-01", now).is_ok());
        assert!(parse("2024-05-01 10:00", now).is_ok());
        let err = parse("yesterday", now).unwrap_err();
        assert!(err.contains("`yesterday`") && err.contains("10m"), "{err}");
        assert!(parse("10x", now).is_err());
    }
}
