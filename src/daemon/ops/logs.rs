//! Reads and searches of a process's logs.

use std::time::Duration;

use super::{OpError, Ops};
use crate::logs::{Filter, InstanceKind, InstanceMeta, Line, Store, Window};
use crate::protocol::{InstanceSummary, LogLine, LogQuery, LogResult};
use crate::search::{self, Query};

/// Searches (reads with a pattern) that run at once; more wait their turn.
pub const MAX_SEARCHES: usize = 4;
/// How long a search waits for its turn before it is refused.
const SEARCH_WAIT: Duration = Duration::from_secs(30);

impl Ops {
    /// Read or search a process's logs (a name, or the pid of its running instance). At
    /// most [`MAX_SEARCHES`] searches run at once.
    pub async fn logs(&self, process: &str, query: LogQuery) -> Result<LogResult, OpError> {
        query.validate().map_err(OpError::BadRequest)?;
        let (name, _) = self.find_or_stored(process).await?;
        let _turn = match query.pattern() {
            Some(_) => Some(
                tokio::time::timeout(SEARCH_WAIT, self.inner.searches.clone().acquire_owned())
                    .await
                    .map_err(|_| {
                        OpError::Busy(format!(
                            "{MAX_SEARCHES} searches are running and this one waited {}s for its turn; try again",
                            SEARCH_WAIT.as_secs()
                        ))
                    })?
                    .map_err(|e| OpError::Busy(e.to_string()))?,
            ),
            None => None,
        };
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || read_logs(&store, &name, &query))
            .await
            .map_err(|e| OpError::BadRequest(e.to_string()))?
    }
}

/// The blocking part of [`Ops::logs`]: resolve the instances, then read or search. Also
/// what the CLI calls on a read-only store when no daemon runs.
pub fn read_logs(store: &Store, name: &str, req: &LogQuery) -> Result<LogResult, OpError> {
    req.validate().map_err(OpError::BadRequest)?;
    let (head, tail) = (req.head, req.effective_tail());
    let kind = if req.build {
        InstanceKind::Build
    } else {
        InstanceKind::Run
    };
    let metas: Vec<InstanceMeta> = if req.all_instances {
        let all = store.instances(name, kind)?;
        if all.is_empty() {
            // Let resolve produce the explanatory error.
            vec![store.resolve(name, kind, -1)?]
        } else {
            all
        }
    } else {
        vec![store.resolve(name, kind, req.index.unwrap_or(-1))?]
    };
    let filter = Filter {
        stream: req.stream.only(),
        since_us: req.since_us,
        until_us: req.until_us,
    };
    let ids: Vec<u64> = metas.iter().map(|m| m.id).collect();
    let (lines, matched, omitted) = match req.pattern() {
        Some(p) => {
            let r = search::search(
                store,
                &ids,
                &Query {
                    pattern: p.to_owned(),
                    case_insensitive: req.case_insensitive,
                    context: req.context,
                    head,
                    tail,
                    filter,
                },
            )?;
            let lines = r
                .hits
                .into_iter()
                .map(|h| LogLine::new(h.line, h.matched))
                .collect();
            (lines, r.matched, r.omitted)
        }
        _ => {
            // No pattern: the tail (or head) of the instance(s), or the lines around one.
            let mut out: Vec<Line> = Vec::new();
            let mut total = 0u64;
            for m in &metas {
                let window = match (req.around, head, tail) {
                    (Some(seq), _, _) => Window::Seqs {
                        from: seq.saturating_sub(req.context as u64),
                        to: seq.saturating_add(req.context as u64 + 1),
                    },
                    (None, Some(h), _) => Window::Head(h),
                    (None, None, Some(t)) => Window::Tail(t),
                    (None, None, None) => Window::Tail(usize::MAX),
                };
                let lines = store.read(m.id, window, &filter)?;
                total += if req.around.is_some() {
                    lines.len() as u64
                } else {
                    store.count(m, &filter)?.max(lines.len() as u64)
                };
                out.extend(lines);
            }
            if let Some(h) = head {
                out.truncate(h);
            } else if let Some(t) = tail
                && out.len() > t
            {
                out.drain(..out.len() - t);
            }
            let omitted = total.saturating_sub(out.len() as u64);
            let lines = out
                .into_iter()
                .map(|l| {
                    let marked = req.around == Some(l.seq);
                    LogLine::new(l, marked)
                })
                .collect();
            (lines, total, omitted)
        }
    };
    Ok(LogResult {
        process: name.to_owned(),
        instances: metas.iter().map(InstanceSummary::from).collect(),
        lines,
        matched,
        omitted,
    })
}
