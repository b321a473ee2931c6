//! What the tools return: structured results (with their schemas) and the readable text
//! beside them, sized for a context window.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::Serialize;

use crate::logs::{InstanceKind, Stream};
use crate::protocol::{
    InstanceSummary, LogLine, LogResult, ProcessReport, StartResult, Status, StatusReport,
    human_duration,
};

/// Default cap on the text of one answer.
pub const DEFAULT_BYTES: usize = 32 * 1024;
/// The most an agent may ask for with `max_bytes`.
pub const MAX_BYTES: usize = 1024 * 1024;
/// A single line longer than this is cut (minified bundles, base64 blobs).
pub const MAX_LINE_BYTES: usize = 2000;

/// The answer of `search_logs` and `search_build_log`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LogsOutput {
    pub process: String,
    /// "run" for search_logs, "build" for search_build_log.
    pub kind: InstanceKind,
    /// The instances read (one, or every kept one with all_instances).
    pub instances: Vec<InstanceSummary>,
    /// The lines, oldest first. `seq` numbers a line within its instance: pass it as
    /// `around_line` to see what surrounds it.
    pub lines: Vec<LogLine>,
    /// Lines that matched the pattern (without a pattern: lines in range).
    pub matched: u64,
    /// Result lines left out by head/tail (default: the last 200).
    pub omitted_by_limit: u64,
    /// Result lines left out to keep the answer under max_bytes.
    pub omitted_by_size: u64,
    /// Lines cut short because they were longer than 2000 bytes.
    pub truncated_lines: u64,
    /// How to see what was left out, when something was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Shape a log result for an agent: strip ANSI codes, cut very long lines, then keep
/// the newest (tail) or oldest (head) lines that fit in `max_bytes`.
pub fn logs_output(
    mut r: LogResult,
    kind: InstanceKind,
    keep_ansi: bool,
    max_bytes: usize,
    from_head: bool,
) -> LogsOutput {
    let mut truncated = 0;
    for l in &mut r.lines {
        if !keep_ansi && l.text.contains('\x1b') {
            l.text = strip_ansi_escapes::strip_str(&l.text);
        }
        if l.text.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !l.text.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = l.text.len() - cut;
            l.text.truncate(cut);
            let _ = write!(l.text, " …[{rest} more bytes]");
            truncated += 1;
        }
    }
    let cost = |l: &LogLine| l.text.len() + 16;
    let mut kept_bytes = 0;
    let mut keep = 0;
    let order: Box<dyn Iterator<Item = &LogLine>> = if from_head {
        Box::new(r.lines.iter())
    } else {
        Box::new(r.lines.iter().rev())
    };
    for l in order {
        if kept_bytes + cost(l) > max_bytes && keep > 0 {
            break;
        }
        kept_bytes += cost(l);
        keep += 1;
    }
    let by_size = (r.lines.len() - keep) as u64;
    if from_head {
        r.lines.truncate(keep);
    } else {
        r.lines.drain(..r.lines.len() - keep);
    }
    let hint = (r.omitted > 0 || by_size > 0).then(|| {
        let left = r.omitted + by_size;
        let (side, first) = if from_head {
            ("later", r.lines.last())
        } else {
            ("earlier", r.lines.first())
        };
        let mut h = format!("{left} {side} result lines are not shown.");
        if let Some(l) = first {
            let _ = write!(
                h,
                " See more with around_line={} (and context_lines), a narrower pattern, since/until, or a larger {}{}.",
                l.seq,
                if from_head { "head" } else { "tail" },
                if by_size > 0 { " with max_bytes" } else { "" }
            );
        }
        h
    });
    LogsOutput {
        process: r.process,
        kind,
        instances: r.instances,
        lines: r.lines,
        matched: r.matched,
        omitted_by_limit: r.omitted,
        omitted_by_size: by_size,
        truncated_lines: truncated,
        hint,
    }
}

/// The readable form of a log answer: a header per instance, then one line per line:
/// `  1041  text` for context, `> 1042  text` for a match, stderr lines marked `[err]`.
pub fn logs_text(o: &LogsOutput, pattern: Option<&str>) -> String {
    let mut out = String::new();
    let what = match pattern {
        Some(p) => format!(
            "{} line{} matching `{p}`",
            o.matched,
            if o.matched == 1 { "" } else { "s" }
        ),
        None => format!(
            "{} line{}",
            o.matched,
            if o.matched == 1 { "" } else { "s" }
        ),
    };
    let _ = writeln!(out, "{} {}: {what}", o.process, o.kind.noun());
    let mut current = None;
    for l in &o.lines {
        // Several processes interleaved: each line names its process instead of headers.
        let name = match &l.process {
            Some(p) => format!("[{p}] "),
            None => {
                if current != Some(l.instance) {
                    current = Some(l.instance);
                    if let Some(i) = o.instances.iter().find(|i| i.id == l.instance) {
                        let _ = writeln!(out, "--- {}", instance_line(i));
                    }
                }
                String::new()
            }
        };
        let _ = writeln!(
            out,
            "{}{:>6}{} {name}{}{}",
            if l.matched { ">" } else { " " },
            l.seq,
            if l.continuation { "+" } else { " " },
            if l.stream == Stream::Stderr {
                "[err] "
            } else {
                ""
            },
            l.text
        );
    }
    if o.lines.is_empty() {
        for i in &o.instances {
            let _ = writeln!(out, "--- {}", instance_line(i));
        }
        out.push_str("(no lines)\n");
    }
    if let Some(h) = &o.hint {
        let _ = writeln!(out, "{h}");
    }
    out
}

fn instance_line(i: &InstanceSummary) -> String {
    let mut s = format!("{} #{} started {}", i.kind.noun(), i.number, i.started);
    if let Some(pid) = i.pid {
        let _ = write!(s, ", pid {pid}");
    }
    match (&i.ended, &i.exit) {
        (Some(_), Some(exit)) => {
            let _ = write!(s, ", ended: {exit}");
        }
        (Some(e), None) => {
            let _ = write!(s, ", ended {e}");
        }
        (None, _) => s.push_str(", still running"),
    }
    let _ = write!(s, ", {} lines", i.lines);
    if i.dropped > 0 {
        let _ = write!(s, " ({} not stored)", i.dropped);
    }
    s
}

/// One line per process, then recent events (all of them for a single process).
pub fn status_text(r: &StatusReport, single: bool) -> String {
    let mut out = format!(
        "mode: {} (daemon pid {}, up {})\n",
        r.mode,
        r.daemon_pid,
        human_duration(r.daemon_uptime_seconds)
    );
    if let Some(problem) = r.store.problem() {
        let _ = writeln!(out, "store: {problem}");
    }
    if r.processes.is_empty() {
        out.push_str("no processes: start one with the start tool and a command\n");
    }
    for p in &r.processes {
        out.push_str(&process_line(p));
        out.push('\n');
        let events = if single {
            &p.recent_events[..]
        } else {
            &p.recent_events[p.recent_events.len().saturating_sub(1)..]
        };
        for e in events {
            let _ = writeln!(out, "    {} {}", e.at, e.line());
        }
    }
    out
}

fn process_line(p: &ProcessReport) -> String {
    let s = &p.status;
    let mut line = format!("{}: {}", s.name, s.state);
    if s.building {
        line.push_str(", building");
    }
    if let Some(n) = p.run_number {
        let _ = write!(line, ", run #{n}");
    }
    if let Some(pid) = s.pid {
        let _ = write!(line, ", pid {pid}");
    }
    if let Some(up) = p.uptime_seconds {
        let _ = write!(line, ", up {}", human_duration(up));
    }
    if !p.ports.is_empty() {
        let ports: Vec<String> = p.ports.iter().map(u16::to_string).collect();
        let _ = write!(line, ", listening on {}", ports.join(", "));
    }
    if let Some(url) = &p.url {
        let _ = write!(line, ", {url}");
    }
    if s.restarts > 0 {
        let _ = write!(line, ", {} restarts", s.restarts);
    }
    if s.crash_count > 0 {
        let _ = write!(line, ", {} crashes in a row", s.crash_count);
    }
    if let Some(e) = &s.last_exit {
        let _ = write!(line, ", last exit: {e}");
    }
    let _ = write!(
        line,
        ", {} runs / {} builds kept; `{}`",
        p.run_instances,
        p.build_instances,
        p.argv.join(" ")
    );
    line
}

/// What `start` and `restart` return.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StartOutput {
    /// One sentence: what happened.
    pub message: String,
    #[serde(flatten)]
    pub result: StartResult,
    /// With `"*"`: the other processes acted on (the fields above are the first one's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<StartResult>,
}

/// What `stop` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StopOutput {
    pub message: String,
    pub status: Status,
    /// With `"*"`: the other processes stopped (`status` is the first one's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<Status>,
}

pub fn stop_message(s: &Status, was_pid: Option<u32>) -> String {
    match (was_pid, &s.last_exit) {
        (Some(pid), Some(exit)) => format!("stopped {} (pid {pid}, {exit})", s.name),
        (Some(pid), None) => format!("stopped {} (pid {pid})", s.name),
        (None, _) => format!("{} was not running; it is {}", s.name, s.state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, text: &str) -> LogLine {
        LogLine {
            process: None,
            instance: 1,
            seq,
            ts: String::new(),
            ts_us: 0,
            stream: Stream::Stdout,
            matched: false,
            continuation: false,
            text: text.into(),
        }
    }

    fn result(lines: Vec<LogLine>, omitted: u64) -> LogResult {
        LogResult {
            process: "api".into(),
            instances: vec![],
            matched: lines.len() as u64 + omitted,
            lines,
            omitted,
        }
    }

    #[test]
    fn strips_ansi_and_cuts_long_lines() {
        let long = "x".repeat(5000);
        let o = logs_output(
            result(
                vec![line(0, "\x1b[31merror\x1b[0m: boom"), line(1, &long)],
                0,
            ),
            InstanceKind::Run,
            false,
            DEFAULT_BYTES,
            false,
        );
        assert_eq!(o.lines[0].text, "error: boom");
        assert!(o.lines[1].text.starts_with(&"x".repeat(2000)));
        assert!(o.lines[1].text.ends_with("…[3000 more bytes]"));
        assert_eq!(o.truncated_lines, 1);
        assert!(o.hint.is_none());
        let kept = logs_output(
            result(vec![line(0, "\x1b[31mred\x1b[0m")], 0),
            InstanceKind::Run,
            true,
            DEFAULT_BYTES,
            false,
        );
        assert_eq!(kept.lines[0].text, "\x1b[31mred\x1b[0m");
    }

    #[test]
    fn the_byte_cap_keeps_the_newest_lines_and_says_how_to_see_more() {
        let lines: Vec<LogLine> = (0..1000).map(|i| line(i, &"y".repeat(100))).collect();
        let o = logs_output(result(lines, 50), InstanceKind::Run, false, 4096, false);
        assert_eq!(o.lines.len(), 35); // 35 * 116 bytes <= 4096
        assert_eq!(o.lines.last().unwrap().seq, 999);
        assert_eq!(o.omitted_by_size, 965);
        assert_eq!(o.omitted_by_limit, 50);
        let hint = o.hint.unwrap();
        assert!(hint.starts_with("1015 earlier result lines"), "{hint}");
        assert!(hint.contains("around_line=965"), "{hint}");

        let lines: Vec<LogLine> = (0..1000).map(|i| line(i, &"y".repeat(100))).collect();
        let o = logs_output(result(lines, 0), InstanceKind::Run, false, 4096, true);
        assert_eq!(o.lines.first().unwrap().seq, 0);
        assert!(o.hint.unwrap().contains("later"));
    }
}
