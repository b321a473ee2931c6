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
        let _turn = self.search_turn(query.pattern().is_some()).await?;
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || read_logs(&store, &name, &query))
            .await
            .map_err(|e| OpError::BadRequest(e.to_string()))?
    }
}

impl Ops {
    /// A turn among the [`MAX_SEARCHES`] searches that run at once (none needed when
    /// `searching` is false): waits up to [`SEARCH_WAIT`], then refuses.
    pub(super) async fn search_turn(
        &self,
        searching: bool,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, OpError> {
        if !searching {
            return Ok(None);
        }
        let permit = tokio::time::timeout(SEARCH_WAIT, self.inner.searches.clone().acquire_owned())
            .await
            .map_err(|_| {
                OpError::Busy(format!(
                    "{MAX_SEARCHES} searches are running and this one waited {}s for its turn; try again",
                    SEARCH_WAIT.as_secs()
                ))
            })?
            .map_err(|e| OpError::Busy(e.to_string()))?;
        Ok(Some(permit))
    }
}

/// The blocking part of [`Ops::logs`]: resolve the instances, then read or search. Also
/// what the CLI calls on a read-only store when no daemon runs.
pub fn read_logs(store: &Store, name: &str, req: &LogQuery) -> Result<LogResult, OpError> {
    req.validate().map_err(OpError::BadRequest)?;
    let (head, tail) = (req.head, req.effective_tail());
    let metas = resolve_instances(store, name, req)?;
    let seqs = req.from_seq.unwrap_or(0)..req.to_seq.unwrap_or(u64::MAX);
    let ranged = req.from_seq.is_some() || req.to_seq.is_some();
    let filter = Filter {
        stream: req.stream.only(),
        since_us: req.since_us,
        until_us: req.until_us,
    };
    let ids: Vec<u64> = metas.iter().map(|m| m.id).collect();
    let (lines, matched, omitted) = match req.pattern() {
        Some(p) => {
            let q = Query {
                pattern: p.to_owned(),
                case_insensitive: req.case_insensitive,
                context: req.context,
                head,
                tail,
                filter,
            };
            let r = if ranged {
                search::search_seqs(store, &ids, &q, seqs)?
            } else {
                search::search(store, &ids, &q)?
            };
            let lines = r
                .hits
                .into_iter()
                .map(|h| LogLine::new(h.line, h.matched))
                .collect();
            (lines, r.matched, r.omitted)
        }
        None if ranged => {
            // A range of lines: read in chunks from the end the head or tail is taken at,
            // so a short read of a long instance never reads the rest.
            let mut out: Vec<Line> = Vec::new();
            for m in &metas {
                out.extend(read_range(store, m, seqs.clone(), head, tail, &filter)?);
            }
            if let Some(h) = head {
                out.truncate(h);
            } else if let Some(t) = tail
                && out.len() > t
            {
                out.drain(..out.len() - t);
            }
            let n = out.len() as u64;
            let lines = out.into_iter().map(|l| LogLine::new(l, false)).collect();
            (lines, n, 0)
        }
        None => {
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

/// The instances a query reads, oldest first: one by its number or index, or every
/// retained one.
pub(super) fn resolve_instances(
    store: &Store,
    name: &str,
    req: &LogQuery,
) -> Result<Vec<InstanceMeta>, OpError> {
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
    } else if let Some(id) = req.instance {
        let meta = store.instance(id)?;
        if meta.process != name || meta.kind != kind {
            return Err(OpError::BadRequest(format!(
                "instance #{id} is not one of {name}'s {}; list them with `bpm status {name}`",
                if req.build { "builds" } else { "runs" }
            )));
        }
        vec![meta]
    } else if let Some(n) = req.number {
        vec![store.resolve_number(name, kind, n)?]
    } else {
        vec![store.resolve(name, kind, req.index.unwrap_or(-1))?]
    };
    Ok(metas)
}

/// The lines of one instance with sequence numbers in `seqs`, oldest first: the first
/// `head` of them, else the last `tail`, else all. Reads chunk by chunk from the end the
/// limit is taken at, and stops once it has enough.
fn read_range(
    store: &Store,
    meta: &InstanceMeta,
    seqs: std::ops::Range<u64>,
    head: Option<usize>,
    tail: Option<usize>,
    filter: &Filter,
) -> Result<Vec<Line>, OpError> {
    let from = seqs.start.max(meta.first_seq);
    let to = seqs.end.min(meta.next_seq);
    if from >= to {
        return Ok(Vec::new());
    }
    let read = |from: u64, to: u64| store.read(meta.id, Window::Seqs { from, to }, filter);
    match (head, tail) {
        (Some(h), _) => {
            let mut out = Vec::new();
            let mut at = from;
            let chunk = (h as u64).clamp(256, 1 << 16);
            while at < to && out.len() < h {
                let end = at.saturating_add(chunk).min(to);
                out.extend(read(at, end)?);
                at = end;
            }
            out.truncate(h);
            Ok(out)
        }
        (None, Some(t)) => {
            let mut parts: Vec<Vec<Line>> = Vec::new();
            let mut got = 0;
            let mut at = to;
            let chunk = (t as u64).clamp(256, 1 << 16);
            while at > from && got < t {
                let start = at.saturating_sub(chunk).max(from);
                let part = read(start, at)?;
                got += part.len();
                parts.push(part);
                at = start;
            }
            let mut out: Vec<Line> = parts.into_iter().rev().flatten().collect();
            if out.len() > t {
                out.drain(..out.len() - t);
            }
            Ok(out)
        }
        (None, None) => Ok(read(from, to)?),
    }
}
