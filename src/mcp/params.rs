//! The tools' parameters, as agents send them. Forgiving in what they accept (numbers and
//! booleans sent as strings, a command as one string), strict about what they do not know
//! (an unknown parameter is an error naming the ones that exist: nothing is silently
//! ignored).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetStatusParams {
    /// Narrow the report to one process: its name, or the pid of its running instance.
    /// Omit for every process.
    #[serde(default)]
    pub process: Option<String>,
}

/// A command: an argv array (exact), or one string (split on spaces; run through `sh -c`
/// when it uses shell syntax such as pipes, quotes or `&&`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CommandParam {
    Argv(Vec<String>),
    Line(String),
}

impl CommandParam {
    pub fn into_argv(self) -> Vec<String> {
        match self {
            CommandParam::Argv(v) => v,
            CommandParam::Line(s) => {
                let shell = s.chars().any(|c| "|&;<>()$`\\\"'*?[]#~=%{}".contains(c));
                if shell {
                    vec!["sh".into(), "-c".into(), s]
                } else {
                    s.split_whitespace().map(str::to_owned).collect()
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartParams {
    /// A process to start: a name from get_status (configured in .mcp-run, or started
    /// earlier with a command); "*" starts every configured process that does not run. With `command`, the name to give the new process
    /// (default: derived from the command, e.g. `npm-run-dev`).
    #[serde(default)]
    pub name: Option<String>,
    /// A command to run as a new supervised process, e.g. ["npm", "run", "dev"] or
    /// "npm run dev". If the same command already runs in the same directory, that
    /// process is returned instead of starting a duplicate.
    #[serde(default)]
    pub command: Option<CommandParam>,
    /// The working directory for `command` (absolute, or relative to the project
    /// directory; default: the project directory).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables for `command`, e.g. {"PORT": "3001"}.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// How long to wait before answering: up to this many seconds for the readiness
    /// check, or, for a process without one, this long to see that it stays up. A
    /// process that exits before that is a failed start (an error with its exit status
    /// and last lines). Default: 30 with a readiness check, else 1. 0 answers at once.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    #[schemars(with = "Option<f64>")]
    pub wait_seconds: Option<f64>,
    /// For a new `command`: when to restart it after it exits. Default "never" (like a
    /// command in a terminal); "on-failure" restarts after a non-zero exit or a signal;
    /// "always" after any exit.
    #[serde(default)]
    pub restart_policy: Option<crate::config::RestartPolicy>,
    /// For a new `command`: it is ready once 127.0.0.1:PORT accepts connections.
    #[serde(default, deserialize_with = "lenient::opt_u16")]
    #[schemars(with = "Option<u16>")]
    pub ready_port: Option<u16>,
    /// For a new `command`: it is ready once a GET of this http:// URL answers 2xx/3xx.
    #[serde(default)]
    pub ready_url: Option<String>,
    /// For a new `command`: it is ready once a line of its output matches this regex.
    #[serde(default)]
    pub ready_log: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopParams {
    /// The process to stop: its name, or the pid of its running instance; "*" stops
    /// every process that runs.
    pub process: String,
    /// Kill at once (SIGKILL to the whole process group) instead of the stop signal and
    /// its grace period. Default false.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    #[schemars(with = "Option<bool>")]
    pub force: Option<bool>,
    /// Also remove it from the list (only a process started with a command; its logs
    /// stay searchable until retention removes them). Default false.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    #[schemars(with = "Option<bool>")]
    pub remove: Option<bool>,
    /// With `remove`: also delete its stored logs now. Default false.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    #[schemars(with = "Option<bool>")]
    pub remove_logs: Option<bool>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartParams {
    /// The process to restart: its name, or the pid of its running instance; "*"
    /// restarts every process that runs.
    pub process: String,
    /// Wait up to this many seconds for readiness after the restart. Default 30 for a
    /// process with a readiness check, else 0.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    #[schemars(with = "Option<f64>")]
    pub wait_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchLogsParams {
    /// The process: its name (see get_status), or the pid of its running instance. Omit
    /// it (or pass "*") to search every process at once: lines interleaved by time, each
    /// naming its process.
    #[serde(default)]
    pub process: Option<String>,
    /// A regular expression (Rust regex syntax, like `grep -E`), matched per line. Omit
    /// it to get the last lines instead.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Lines to show before and after each match (like `grep -C`). With `around_line`,
    /// the lines on each side (default 20).
    #[serde(default, deserialize_with = "lenient::opt_usize")]
    #[schemars(with = "Option<u64>")]
    pub context_lines: Option<usize>,
    /// Return only the first N result lines (oldest first).
    #[serde(default, deserialize_with = "lenient::opt_usize")]
    #[schemars(with = "Option<u64>")]
    pub head: Option<usize>,
    /// Return only the last N result lines. Default: the last 200 lines, and never more
    /// than about 32 KB of text unless `max_bytes` says otherwise.
    #[serde(default, deserialize_with = "lenient::opt_usize")]
    #[schemars(with = "Option<u64>")]
    pub tail: Option<usize>,
    /// Which instance: -1 the newest (the current run, default), -2 the one before it
    /// (e.g. the run that crashed before a restart), 0 the oldest kept, 1 the next; or
    /// "#3", the process's third run (the numbers the answers show).
    #[serde(default, deserialize_with = "lenient::opt_index")]
    #[schemars(with = "Option<IndexSchema>")]
    pub index: Option<Index>,
    /// Search every kept instance, oldest first, instead of one.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    #[schemars(with = "Option<bool>")]
    pub all_instances: Option<bool>,
    /// Which output stream: "stdout", "stderr" or "both" (default).
    #[serde(default)]
    pub stream: Option<crate::protocol::StreamFilter>,
    /// Only lines printed at or after this time: a duration ago such as "10m", "2h",
    /// "1d", or an ISO 8601 time such as "2026-11-22T10:00:00Z".
    #[serde(default)]
    pub since: Option<String>,
    /// Only lines printed before this time (same forms as `since`).
    #[serde(default)]
    pub until: Option<String>,
    /// Match the pattern ignoring case. Default false.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    #[schemars(with = "Option<bool>")]
    pub case_insensitive: Option<bool>,
    /// Without a pattern: the lines around this line number (the `seq` of a line in an
    /// earlier answer), `context_lines` on each side.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    #[schemars(with = "Option<u64>")]
    pub around_line: Option<u64>,
    /// Keep ANSI colour codes in the text (they are stripped by default).
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    #[schemars(with = "Option<bool>")]
    pub keep_ansi: Option<bool>,
    /// The most text to return, in bytes (default 32768; at most 1048576).
    #[serde(default, deserialize_with = "lenient::opt_usize")]
    #[schemars(with = "Option<u64>")]
    pub max_bytes: Option<usize>,
}

/// Parse a tool's arguments, turning serde's message into one an agent can act on.
pub fn parse<T: serde::de::DeserializeOwned + Default>(
    tool: &str,
    args: Option<serde_json::Map<String, Value>>,
) -> Result<T, String> {
    let Some(args) = args else {
        return serde_json::from_value(Value::Object(Default::default()))
            .map_err(|e| format!("{tool}: {e}"));
    };
    serde_json::from_value(Value::Object(args)).map_err(|e| {
        let e = e.to_string();
        let e = e
            .strip_suffix(" at line 0 column 0")
            .unwrap_or(&e)
            .to_owned();
        if e.starts_with("missing field") {
            format!("{tool}: {e}: it is required")
        } else if e.contains("data did not match any variant") {
            format!(
                "{tool}: `command` must be an array of strings such as [\"npm\", \"run\", \"dev\"] or one string such as \"npm run dev\""
            )
        } else {
            format!("{tool}: {e}")
        }
    })
}

/// Deserializers that take a number or a boolean also when it is sent as a string.
pub mod lenient {
    use super::*;

    fn value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        Ok(Option::<Value>::deserialize(d)?.filter(|v| !v.is_null()))
    }

    fn bad<E: serde::de::Error>(what: &str, v: &Value) -> E {
        E::custom(format!("expected {what}, got {v}"))
    }

    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let Some(v) = value(d)? else { return Ok(None) };
        let n = match &v {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        n.map(Some)
            .ok_or_else(|| bad("an integer such as -1 or \"-1\"", &v))
    }

    pub fn opt_index<'de, D: Deserializer<'de>>(d: D) -> Result<Option<super::Index>, D::Error> {
        let Some(v) = value(d)? else { return Ok(None) };
        let n = match &v {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .map(super::Index::Relative),
            Value::String(s) => match s.trim().strip_prefix('#') {
                Some(n) => n
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .map(super::Index::Number),
                None => s.trim().parse().ok().map(super::Index::Relative),
            },
            _ => None,
        };
        n.map(Some).ok_or_else(|| {
            bad(
                "an index such as -1 (the newest) or -2, or a run number such as \"#3\"",
                &v,
            )
        })
    }

    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let Some(v) = value(d)? else { return Ok(None) };
        let n = match &v {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            }),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        n.map(Some)
            .ok_or_else(|| bad("a non-negative integer such as 5 or \"5\"", &v))
    }

    pub fn opt_u16<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
        match opt_u64(d)? {
            None => Ok(None),
            Some(n) => u16::try_from(n).map(Some).map_err(|_| {
                serde::de::Error::custom(format!("expected a port from 1 to 65535, got {n}"))
            }),
        }
    }

    pub fn opt_usize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        Ok(opt_u64(d)?.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
    }

    pub fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let Some(v) = value(d)? else { return Ok(None) };
        let n = match &v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        n.filter(|f| f.is_finite() && *f >= 0.0)
            .map(Some)
            .ok_or_else(|| bad("a number of seconds such as 10 or \"10\"", &v))
    }

    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        let Some(v) = value(d)? else { return Ok(None) };
        let b = match &v {
            Value::Bool(b) => Some(*b),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Some(true),
                "false" | "0" | "no" => Some(false),
                _ => None,
            },
            Value::Number(n) => n.as_u64().filter(|n| *n <= 1).map(|n| n == 1),
            _ => None,
        };
        b.map(Some).ok_or_else(|| bad("true or false", &v))
    }
}

/// `index`: relative (-1 the newest) or a process's run number (`#3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Index {
    Relative(i64),
    Number(u64),
}

/// How `index` is described in the input schema: an integer, or a string "#N".
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Only its schema is used.
enum IndexSchema {
    Relative(i64),
    Number(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Option<serde_json::Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    #[test]
    fn numbers_and_booleans_as_strings() {
        let p: SearchLogsParams = parse(
            "search_logs",
            args(json!({"process": "api", "tail": "5", "index": "-2", "case_insensitive": "true", "context_lines": 3})),
        )
        .unwrap();
        assert_eq!(p.tail, Some(5));
        assert_eq!(p.index, Some(Index::Relative(-2)));
        assert_eq!(p.case_insensitive, Some(true));
        assert_eq!(p.context_lines, Some(3));
    }

    #[test]
    fn unknown_and_missing_parameters_are_errors() {
        let e = parse::<SearchLogsParams>("search_logs", args(json!({"process": "a", "lines": 5})))
            .unwrap_err();
        assert!(
            e.contains("unknown field `lines`") && e.contains("tail"),
            "{e}"
        );
        let e = parse::<StopParams>("stop", None).unwrap_err();
        assert!(e.contains("missing field `process`"), "{e}");
        let e =
            parse::<SearchLogsParams>("search_logs", args(json!({"process": "a", "tail": "x"})))
                .unwrap_err();
        assert!(e.contains("expected a non-negative integer"), "{e}");
    }

    #[test]
    fn commands_as_string_or_argv() {
        let p: StartParams = parse("start", args(json!({"command": "npm run dev"}))).unwrap();
        assert_eq!(p.command.unwrap().into_argv(), ["npm", "run", "dev"]);
        let p: StartParams = parse(
            "start",
            args(json!({"command": "make && ./serve | tee log"})),
        )
        .unwrap();
        assert_eq!(
            p.command.unwrap().into_argv(),
            ["sh", "-c", "make && ./serve | tee log"]
        );
        let p: StartParams = parse("start", args(json!({"command": ["echo", "a b"]}))).unwrap();
        assert_eq!(p.command.unwrap().into_argv(), ["echo", "a b"]);
        let e = parse::<StartParams>("start", args(json!({"command": 5}))).unwrap_err();
        assert!(e.contains("array of strings"), "{e}");
    }
}
