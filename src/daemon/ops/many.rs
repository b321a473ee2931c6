//! Reads and searches over several processes at once (`bpm logs a b`, `bpm logs --all`,
//! `search_logs` without a process): each process is read as one would be, then the
//! lines are interleaved by time, each naming its process, and the head/tail cap
//! applies to the whole.

use super::{OpError, Ops};
use crate::logs::StoreError;
use crate::protocol::{LogLine, LogQuery, LogResult};

/// What a many-process answer names as its process.
pub const EVERY_PROCESS: &str = "*";

impl Ops {
    /// Read or search `names` (every process the daemon knows when empty) as one answer.
    /// A process with nothing stored yet (no runs) is skipped; an unknown name is an
    /// error.
    pub async fn logs_many(&self, names: &[String], query: LogQuery) -> Result<LogResult, OpError> {
        query.validate().map_err(OpError::BadRequest)?;
        let every = names.is_empty();
        let names: Vec<String> = if every {
            self.procs().keys().cloned().collect()
        } else {
            names.to_vec()
        };
        let mut results = Vec::with_capacity(names.len());
        for name in &names {
            match self.logs(name, query.clone()).await {
                Ok(r) => results.push(r),
                // Nothing stored for it yet: nothing to show, not a failure of the whole.
                Err(OpError::Store(StoreError::NoInstances { .. })) if every || names.len() > 1 => {
                }
                Err(e) => return Err(e),
            }
        }
        let label = if every {
            EVERY_PROCESS.to_owned()
        } else {
            names.join(",")
        };
        Ok(merge(label, results, &query))
    }
}

/// Interleave per-process answers by time (then process, then sequence), each line
/// naming its process, and apply the query's head or tail to the whole.
pub fn merge(label: String, results: Vec<LogResult>, query: &LogQuery) -> LogResult {
    let mut lines: Vec<LogLine> = Vec::new();
    let mut instances = Vec::new();
    let (mut matched, mut omitted) = (0, 0);
    for r in results {
        matched += r.matched;
        omitted += r.omitted;
        instances.extend(r.instances);
        lines.extend(r.lines.into_iter().map(|mut l| {
            l.process = Some(r.process.clone());
            l
        }));
    }
    lines.sort_by(|a, b| {
        (a.ts_us, &a.process, a.instance, a.seq).cmp(&(b.ts_us, &b.process, b.instance, b.seq))
    });
    if let Some(head) = query.head {
        omitted += lines.len().saturating_sub(head) as u64;
        lines.truncate(head);
    } else if let Some(tail) = query.effective_tail() {
        let cut = lines.len().saturating_sub(tail);
        omitted += cut as u64;
        lines.drain(..cut);
    }
    LogResult {
        process: label,
        instances,
        lines,
        matched,
        omitted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::Stream;

    fn result(process: &str, lines: &[(i64, u64)]) -> LogResult {
        LogResult {
            process: process.into(),
            instances: Vec::new(),
            lines: lines
                .iter()
                .map(|(ts, seq)| LogLine {
                    process: None,
                    instance: 1,
                    seq: *seq,
                    ts: crate::protocol::format_ts(*ts),
                    ts_us: *ts,
                    stream: Stream::Stdout,
                    matched: false,
                    continuation: false,
                    text: format!("{process}{seq}"),
                })
                .collect(),
            matched: lines.len() as u64,
            omitted: 1,
        }
    }

    #[test]
    fn lines_interleave_by_time_and_the_tail_applies_to_the_whole() {
        let a = result("a", &[(1_000_000, 0), (3_000_000, 1)]);
        let b = result("b", &[(2_000_000, 0), (4_000_000, 1)]);
        let q = LogQuery {
            tail: Some(3),
            ..Default::default()
        };
        let m = merge("*".into(), vec![a, b], &q);
        let texts: Vec<&str> = m.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["b0", "a1", "b1"]);
        assert_eq!(m.lines[0].process.as_deref(), Some("b"));
        assert_eq!((m.matched, m.omitted), (4, 3));
    }
}
