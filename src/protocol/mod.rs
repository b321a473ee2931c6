//! The local API's messages: every request and answer between the daemon and its front
//! ends (the CLI, the `bpm mcp` bridge, the TUI, scripts), as one set of types used in
//! both directions, as pueue's `message` module does.
//!
//! The daemon's handlers deserialize the requests and serialize the answers; the
//! [`crate::client`] does the reverse with the very same types, so a field renamed here is
//! renamed on both sides. Query strings are written and read by serde
//! (`serde_urlencoded`), never by hand. The MCP tools return the same answers as their
//! structured content, so these types also give the tools' output schemas.
//!
//! Input is validated here, once ([`LogQuery::validate`], [`StartRequest::wait`]), for
//! every front end; defaults live here as constants.
//!
//! - this module: the requests, their checks and the defaults;
//! - `check`: reading numbers and patterns with errors that name the field and range;
//! - `answers`: what the daemon answers (status, logs, follow records, start results).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::config::{Ready, ReadyCheck, RestartPolicy};
pub use crate::logs::{ExitStatus, InstanceKind, StoreHealth, Stream};
pub use crate::supervisor::process::{Mode, State, Status};

/// The version of the JSON shapes documented in `docs/schemas/` (the CLI's `--json`,
/// the API's answers, the NDJSON records): raised when a field is removed or changes
/// meaning; new fields do not raise it.
pub const SCHEMA_VERSION: u32 = 1;

/// Lines a log read returns when it asks for neither a head nor a tail.
pub const DEFAULT_TAIL: usize = 200;
/// Lines of backlog `bpm logs --follow` shows before the live lines.
pub const DEFAULT_FOLLOW_TAIL: u64 = 10;
/// The longest readiness wait a start or restart may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The longest search pattern, in bytes.
pub const MAX_PATTERN: usize = 4096;
/// The most lines a head or a tail may ask for.
pub const MAX_LINES: usize = 1_000_000;
/// The most context lines a read may ask for on each side.
pub const MAX_CONTEXT: usize = 10_000;

mod answers;
mod check;

pub use answers::*;
use check::*;
pub use check::{check_pattern, pattern_excerpt};

/// Which streams a read wants: stdout, stderr, or both (the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamFilter {
    #[default]
    Both,
    Stdout,
    Stderr,
}

impl StreamFilter {
    /// The one stream wanted, or `None` for both.
    pub fn only(self) -> Option<Stream> {
        match self {
            StreamFilter::Both => None,
            StreamFilter::Stdout => Some(Stream::Stdout),
            StreamFilter::Stderr => Some(Stream::Stderr),
        }
    }

    pub fn is_both(&self) -> bool {
        *self == StreamFilter::Both
    }
}

impl FromStr for StreamFilter {
    type Err = String;
    /// Case-insensitive; an empty value means both.
    fn from_str(s: &str) -> Result<StreamFilter, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "both" => Ok(StreamFilter::Both),
            "stdout" | "out" => Ok(StreamFilter::Stdout),
            "stderr" | "err" => Ok(StreamFilter::Stderr),
            other => Err(format!(
                "unknown stream `{other}`; use stdout, stderr or both"
            )),
        }
    }
}

impl fmt::Display for StreamFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamFilter::Both => "both",
            StreamFilter::Stdout => "stdout",
            StreamFilter::Stderr => "stderr",
        })
    }
}

impl<'de> Deserialize<'de> for StreamFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StreamFilter, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl From<Option<Stream>> for StreamFilter {
    fn from(s: Option<Stream>) -> StreamFilter {
        match s {
            None => StreamFilter::Both,
            Some(Stream::Stdout) => StreamFilter::Stdout,
            Some(Stream::Stderr) => StreamFilter::Stderr,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A log read or search over one process's instances (`GET /api/logs/NAME?...`, the
/// parameters of `search_logs`, `bpm logs`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogQuery {
    /// Only lines matching this regex (none or empty: every line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub case_insensitive: bool,
    /// Lines of context around each match; with `around`, on each side of that line.
    #[serde(
        default,
        deserialize_with = "de_context",
        skip_serializing_if = "is_zero"
    )]
    pub context: usize,
    /// Only the first N result lines.
    #[serde(
        default,
        deserialize_with = "de_head",
        skip_serializing_if = "Option::is_none"
    )]
    pub head: Option<usize>,
    /// Only the last N result lines.
    #[serde(
        default,
        deserialize_with = "de_tail",
        skip_serializing_if = "Option::is_none"
    )]
    pub tail: Option<usize>,
    /// Every result line: neither a head nor the default tail.
    #[serde(default, skip_serializing_if = "is_false")]
    pub all: bool,
    /// -1 the newest instance (default), -2 the one before, 0 the oldest retained.
    #[serde(
        default,
        deserialize_with = "de_index",
        skip_serializing_if = "Option::is_none"
    )]
    pub index: Option<i64>,
    /// Every retained instance, oldest first.
    #[serde(default, skip_serializing_if = "is_false")]
    pub all_instances: bool,
    /// The build instances instead of the runs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub build: bool,
    #[serde(default, skip_serializing_if = "StreamFilter::is_both")]
    pub stream: StreamFilter,
    /// Only lines read at or after this time (Unix microseconds).
    #[serde(
        default,
        deserialize_with = "de_since",
        skip_serializing_if = "Option::is_none"
    )]
    pub since_us: Option<i64>,
    /// Only lines read before this time (Unix microseconds).
    #[serde(
        default,
        deserialize_with = "de_until",
        skip_serializing_if = "Option::is_none"
    )]
    pub until_us: Option<i64>,
    /// Without a pattern: the lines around this sequence number (`context` on each side),
    /// the line itself marked as matched.
    #[serde(
        default,
        deserialize_with = "de_around",
        skip_serializing_if = "Option::is_none"
    )]
    pub around: Option<u64>,
    /// One instance by its internal id instead of an index; it must be one of this
    /// process's instances of the kind asked for (runs, or builds with `build`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<u64>,
    /// One instance by its number among the process's runs (or builds): 3 for `#3`.
    #[serde(
        default,
        deserialize_with = "de_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub number: Option<u64>,
    /// Only lines whose sequence number is at least this (reads and searches of one
    /// range of a long instance, without reading the rest); head and tail apply within.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_seq: Option<u64>,
    /// Only lines whose sequence number is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_seq: Option<u64>,
}

impl LogQuery {
    /// The pattern, if it filters anything.
    pub fn pattern(&self) -> Option<&str> {
        self.pattern.as_deref().filter(|p| !p.is_empty())
    }

    /// The tail in effect: the one asked for, else [`DEFAULT_TAIL`] unless the query asks
    /// for a head, for everything, or for the lines around one line.
    pub fn effective_tail(&self) -> Option<usize> {
        match (self.head, self.tail) {
            (None, None) if !self.all && self.around.is_none() => Some(DEFAULT_TAIL),
            (_, t) => t,
        }
    }

    /// Whether the combination makes sense; the error says what to pass instead. Every
    /// front end's query goes through here (the daemon calls it for each read).
    pub fn validate(&self) -> Result<(), String> {
        check_pattern("the pattern", self.pattern.as_deref())?;
        for (field, n) in [("head", self.head), ("tail", self.tail)] {
            if let Some(n) = n
                && n > MAX_LINES
            {
                return Err(format!(
                    "{field} must be a whole number from 0 to {MAX_LINES}, not `{n}`"
                ));
            }
        }
        if self.context > MAX_CONTEXT {
            return Err(format!(
                "context must be a whole number from 0 to {MAX_CONTEXT}, not `{}`",
                self.context
            ));
        }
        if self.head.is_some() && self.tail.is_some() {
            return Err("pass a head or a tail, not both".into());
        }
        if self.all && (self.head.is_some() || self.tail.is_some()) {
            return Err(
                "`all` reads every line; it cannot be combined with a head or a tail".into(),
            );
        }
        if self.all_instances && self.index.is_some() {
            return Err(
                "pass an index (one instance) or all_instances (every kept one), not both".into(),
            );
        }
        let chosen = [
            self.instance.is_some(),
            self.number.is_some(),
            self.index.is_some(),
            self.all_instances,
        ];
        if chosen.iter().filter(|c| **c).count() > 1 {
            return Err(
                "pass a run number (#3), an index (-2) or all_instances, only one of them".into(),
            );
        }
        if self.around.is_some() && (self.from_seq.is_some() || self.to_seq.is_some()) {
            return Err("`around` reads the lines around one line; it cannot be combined with from_seq/to_seq".into());
        }
        if let (Some(f), Some(t)) = (self.from_seq, self.to_seq)
            && f > t
        {
            return Err("`from_seq` is after `to_seq`: nothing can match; swap them".into());
        }
        if self.around.is_some() && self.pattern().is_some() {
            return Err("reading the lines around one line cannot be combined with a pattern; drop one (context lines around matches come with a pattern and a context)".into());
        }
        if let (Some(s), Some(u)) = (self.since_us, self.until_us)
            && s > u
        {
            return Err("`since` is after `until`: nothing can match; swap them".into());
        }
        Ok(())
    }
}

/// A request to follow a process's output (`GET /api/follow/NAME?...`): NDJSON
/// [`FollowRecord`]s for as long as the client reads them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FollowQuery {
    /// Begin with this instance (its stable number); else with `index`.
    #[serde(
        default,
        deserialize_with = "de_instance",
        skip_serializing_if = "Option::is_none"
    )]
    pub instance: Option<u64>,
    /// Begin with the process's run (or build) of this number: 3 for `#3`.
    #[serde(
        default,
        deserialize_with = "de_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub number: Option<u64>,
    /// -1 the newest instance (default), -2 the one before, 0 the oldest retained.
    #[serde(
        default,
        deserialize_with = "de_index",
        skip_serializing_if = "Option::is_none"
    )]
    pub index: Option<i64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub build: bool,
    /// Lines of backlog before the live lines (the instance's last lines); none: all.
    #[serde(
        default,
        deserialize_with = "de_follow_tail",
        skip_serializing_if = "Option::is_none"
    )]
    pub tail: Option<u64>,
    #[serde(default, skip_serializing_if = "StreamFilter::is_both")]
    pub stream: StreamFilter,
    /// Only lines matching this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub case_insensitive: bool,
}

impl FollowQuery {
    /// Whether the query can be followed; the error says what to pass instead.
    pub fn validate(&self) -> Result<(), String> {
        check_pattern("the pattern", self.pattern.as_deref())?;
        if let Some(t) = self.tail
            && t > MAX_LINES as u64
        {
            return Err(format!(
                "tail must be a whole number from 0 to {MAX_LINES}, not `{t}`"
            ));
        }
        Ok(())
    }
}

/// A request to start a process (`POST /api/start`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StartRequest {
    /// A configured or known process; with `command`, the name to give it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A command to run as a new runtime process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// How long to wait before answering: for the readiness check, or, without one,
    /// for the process to stay up (the settle time). 0: answer at once. Default: 30 s
    /// with a readiness check, else 1 s.
    #[serde(
        default,
        deserialize_with = "de_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub wait_seconds: Option<f64>,
    /// For a new runtime process: when to restart it (default `never`, like a command in
    /// a terminal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    /// For a new runtime process: ready once 127.0.0.1:PORT accepts connections.
    #[serde(
        default,
        deserialize_with = "de_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub ready_port: Option<u16>,
    /// For a new runtime process: ready once a GET of this http:// URL answers 2xx/3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_url: Option<String>,
    /// For a new runtime process: ready once a line of output matches this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_log: Option<String>,
}

impl StartRequest {
    /// The wait asked for, checked: a number of seconds from 0 to an hour; `Some(ZERO)`
    /// means "do not wait", `None` "the default".
    pub fn wait(&self) -> Result<Option<Duration>, String> {
        wait_duration(self.wait_seconds)
    }

    /// The ad-hoc readiness check asked for (at most one), checked.
    pub fn ready(&self) -> Result<Option<Ready>, String> {
        let check = match (&self.ready_port, &self.ready_url, &self.ready_log) {
            (None, None, None) => return Ok(None),
            (Some(port), None, None) => ReadyCheck::Tcp { port: *port },
            (None, Some(url), None) => {
                if !url.starts_with("http://") {
                    return Err(format!(
                        "ready_url `{url}` is not an http:// URL; e.g. http://127.0.0.1:5173/"
                    ));
                }
                ReadyCheck::Http { url: url.clone() }
            }
            (None, None, Some(re)) => {
                check_pattern("ready_log", Some(re))?;
                crate::search::compile(re, false)
                    .map_err(|e| format!("ready_log is not a valid regex: {e}"))?;
                ReadyCheck::Log {
                    pattern: re.clone(),
                }
            }
            _ => return Err("pass one readiness check: ready_port, ready_url or ready_log".into()),
        };
        Ok(Some(Ready::new(check)))
    }
}

/// A readiness wait in seconds, checked: finite, not negative, at most [`MAX_WAIT`].
/// Zero means "do not wait".
pub fn wait_duration(seconds: Option<f64>) -> Result<Option<Duration>, String> {
    match seconds {
        None => Ok(None),
        Some(s) if !s.is_finite() || s < 0.0 => Err(format!(
            "wait_seconds must be a number of seconds from 0 to {}, not {s}",
            MAX_WAIT.as_secs()
        )),
        Some(0.0) => Ok(Some(Duration::ZERO)),
        Some(s) => Ok(Some(Duration::from_secs_f64(s.min(MAX_WAIT.as_secs_f64())))),
    }
}

/// `POST /api/stop/NAME?force=true`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StopQuery {
    /// Skip the grace period: SIGKILL the whole group at once.
    #[serde(default, skip_serializing_if = "is_false")]
    pub force: bool,
}

/// The options of `POST /api/remove/NAME`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoveQuery {
    /// Also delete its stored logs now (otherwise they stay until retention removes them).
    #[serde(default, skip_serializing_if = "is_false")]
    pub logs: bool,
}

/// `GET /api/mode` answers it; `POST /api/mode` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeBody {
    pub mode: Mode,
}

/// The body of every error answer of the local API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong and what would work.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_queries_round_trip_through_a_query_string() {
        let q = LogQuery {
            pattern: Some("a b&c=d/é".into()),
            case_insensitive: true,
            context: 3,
            tail: Some(5),
            index: Some(-2),
            stream: StreamFilter::Stderr,
            since_us: Some(-5),
            ..Default::default()
        };
        let s = serde_urlencoded::to_string(&q).unwrap();
        assert!(!s.contains("head"), "{s}");
        let back: LogQuery = serde_urlencoded::from_str(&s).unwrap();
        assert_eq!(back, q);
        let empty: LogQuery = serde_urlencoded::from_str("").unwrap();
        assert_eq!(empty, LogQuery::default());
        assert_eq!(empty.effective_tail(), Some(DEFAULT_TAIL));
    }

    #[test]
    fn bad_combinations_say_what_to_pass() {
        let both = LogQuery {
            head: Some(1),
            tail: Some(1),
            ..Default::default()
        };
        assert!(both.validate().unwrap_err().contains("not both"));
        let idx = LogQuery {
            index: Some(-1),
            all_instances: true,
            ..Default::default()
        };
        assert!(idx.validate().unwrap_err().contains("all_instances"));
        let times = LogQuery {
            since_us: Some(10),
            until_us: Some(5),
            ..Default::default()
        };
        assert!(times.validate().unwrap_err().contains("swap"));
        assert!(LogQuery::default().validate().is_ok());
    }

    #[test]
    fn streams_parse_in_any_case_and_list_the_choices() {
        assert_eq!("STDERR".parse::<StreamFilter>(), Ok(StreamFilter::Stderr));
        assert_eq!("".parse::<StreamFilter>(), Ok(StreamFilter::Both));
        let e = "sdout".parse::<StreamFilter>().unwrap_err();
        assert!(e.contains("stdout, stderr or both"), "{e}");
        let q: LogQuery = serde_urlencoded::from_str("stream=Stdout").unwrap();
        assert_eq!(q.stream, StreamFilter::Stdout);
    }

    #[test]
    fn waits_are_checked() {
        assert!(wait_duration(Some(-1.0)).is_err());
        assert!(wait_duration(Some(f64::NAN)).is_err());
        assert_eq!(wait_duration(Some(1e300)).unwrap(), Some(MAX_WAIT));
        assert_eq!(wait_duration(Some(0.0)).unwrap(), Some(Duration::ZERO));
        assert_eq!(wait_duration(None).unwrap(), None);
        assert_eq!(
            wait_duration(Some(1.5)).unwrap(),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn exit_statuses_are_typed_on_the_wire() {
        let json = serde_json::to_string(&Some(ExitStatus::Code(3))).unwrap();
        assert_eq!(json, r#"{"code":3}"#);
        let back: ExitStatus = serde_json::from_str(r#"{"signal":9}"#).unwrap();
        assert_eq!(back, ExitStatus::Signal(9));
        assert_eq!(
            serde_json::to_string(&ExitStatus::Unknown).unwrap(),
            r#""unknown""#
        );
    }

    #[test]
    fn times_format_as_chrono_does() {
        for us in [
            0,
            1,
            999,
            1_796_131_973_599_928,
            951_782_400_000_000, // 2000-02-29
            -1,
            -86_400_000_001,
            253_402_300_799_999_999, // 9999-12-31T23:59:59.999
            253_402_300_800_000_000,
            i64::MAX,
        ] {
            let chrono = chrono::DateTime::from_timestamp_micros(us)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .unwrap_or_else(|| us.to_string());
            assert_eq!(format_ts(us), chrono, "{us}");
        }
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human_duration(5.9), "5s");
        assert_eq!(human_duration(185.0), "3m5s");
        assert_eq!(human_duration(7800.0), "2h10m");
        assert_eq!(human_duration(273600.0), "3d4h");
        assert_eq!(human_duration(-1.0), "0s");
    }
}
