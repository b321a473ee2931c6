//! Reading the numbers and patterns of requests: every bad value is an error that names
//! the field and what it accepts (a 400 at the API), never a panic or a silent clamp.

use super::*;

/// A pattern's beginning, for messages (never the whole of a huge one).
pub fn pattern_excerpt(p: &str) -> String {
    const SHOWN: usize = 40;
    match p.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &p[..end]),
        None => p.to_owned(),
    }
}

/// A pattern short enough to compile: at most [`MAX_PATTERN`] bytes.
pub fn check_pattern(field: &str, p: Option<&str>) -> Result<(), String> {
    match p {
        Some(p) if p.len() > MAX_PATTERN => Err(format!(
            "{field} is {} bytes long; at most {MAX_PATTERN} are allowed (it begins `{}`)",
            p.len(),
            pattern_excerpt(p)
        )),
        _ => Ok(()),
    }
}

/// Whole numbers of query strings, checked: a bad one is an error naming the field and
/// the range allowed (`serde_urlencoded` alone would say "invalid digit found in string").
mod num {
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{Error, Visitor};

    pub fn bounded<'de, D: Deserializer<'de>>(
        d: D,
        field: &'static str,
        min: i128,
        max: i128,
    ) -> Result<i128, D::Error> {
        struct V {
            field: &'static str,
            min: i128,
            max: i128,
        }
        impl V {
            fn check<E: Error>(
                &self,
                n: Option<i128>,
                shown: &dyn fmt::Display,
            ) -> Result<i128, E> {
                match n {
                    Some(n) if (self.min..=self.max).contains(&n) => Ok(n),
                    _ => Err(E::custom(format!(
                        "{} must be a whole number from {} to {}, not `{shown}`",
                        self.field, self.min, self.max
                    ))),
                }
            }
        }
        impl Visitor<'_> for V {
            type Value = i128;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "{}: a whole number from {} to {}",
                    self.field, self.min, self.max
                )
            }
            fn visit_i64<E: Error>(self, n: i64) -> Result<i128, E> {
                self.check(Some(n.into()), &n)
            }
            fn visit_u64<E: Error>(self, n: u64) -> Result<i128, E> {
                self.check(Some(n.into()), &n)
            }
            fn visit_f64<E: Error>(self, n: f64) -> Result<i128, E> {
                let whole = (n.fract() == 0.0 && n.abs() < 1e30).then_some(n as i128);
                self.check(whole, &n)
            }
            fn visit_str<E: Error>(self, s: &str) -> Result<i128, E> {
                let shown: String = s.chars().take(40).collect();
                self.check(s.trim().parse().ok(), &shown)
            }
        }
        d.deserialize_any(V { field, min, max })
    }
}

pub(super) fn de_port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    num::bounded(d, "ready_port", 1, 65535).map(|n| Some(n as u16))
}

/// `wait_seconds`: any number; its range is checked by [`wait_duration`].
pub(super) fn de_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => Ok(n.as_f64()),
        serde_json::Value::Null => Ok(None),
        other => Err(D::Error::custom(format!(
            "wait_seconds must be a number of seconds from 0 to {}, not `{}`",
            MAX_WAIT.as_secs(),
            other.to_string().chars().take(40).collect::<String>()
        ))),
    }
}

pub(super) fn de_head<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    num::bounded(d, "head", 0, MAX_LINES as i128).map(|n| Some(n as usize))
}

pub(super) fn de_tail<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    num::bounded(d, "tail", 0, MAX_LINES as i128).map(|n| Some(n as usize))
}

pub(super) fn de_follow_tail<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u64>, D::Error> {
    num::bounded(d, "tail", 0, MAX_LINES as i128).map(|n| Some(n as u64))
}

pub(super) fn de_context<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    num::bounded(d, "context", 0, MAX_CONTEXT as i128).map(|n| n as usize)
}

pub(super) fn de_index<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    num::bounded(d, "index", -1_000_000_000, 1_000_000_000).map(|n| Some(n as i64))
}

pub(super) fn de_instance<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    num::bounded(d, "instance", 0, i64::MAX.into()).map(|n| Some(n as u64))
}

pub(super) fn de_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    num::bounded(d, "number", 1, i64::MAX.into()).map(|n| Some(n as u64))
}

pub(super) fn de_around<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    num::bounded(d, "around", 0, i64::MAX.into()).map(|n| Some(n as u64))
}

pub(super) fn de_since<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    num::bounded(d, "since_us", i64::MIN.into(), i64::MAX.into()).map(|n| Some(n as i64))
}

pub(super) fn de_until<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    num::bounded(d, "until_us", i64::MIN.into(), i64::MAX.into()).map(|n| Some(n as i64))
}
