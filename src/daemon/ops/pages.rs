//! Log reads as a stream of records ([`FollowRecord`]: an instance, its lines, its end),
//! read from the store page by page by sequence ranges, so memory stays flat whatever the
//! size of the instances: `GET /api/logs/NAME` with `Accept: application/x-ndjson`, and
//! `bpm logs` (through the daemon, or over the store opened read-only).
//!
//! A read without a head or a tail (every line), or with a head, streams: lines are read
//! [`PAGE_LINES`] sequence numbers at a time, searches hand each result line on as they
//! find it. A tail longer than a page without a pattern is found by counting backwards,
//! then streamed. A tail of matches, a short one, or the lines around one line, is read
//! whole first (at most [`crate::protocol::MAX_LINES`] lines) and then sent in pages.

use std::ops::ControlFlow;

use bytes::Bytes;

use super::logs::{read_logs, resolve_instances};
use super::{OpError, Ops};
use crate::logs::{Filter, InstanceKind, InstanceMeta, Store, Window};
use crate::protocol::{FollowRecord, LogLine, LogQuery};
use crate::search::{self, Query};

/// Records per page: what is read (and held) at once.
pub const PAGE_LINES: usize = 4096;

/// Pages of NDJSON waiting for a slow client, besides the one being read.
const PAGES_AHEAD: usize = 2;

/// Streamed reads served at once. Each holds a blocking thread while its client reads
/// (a slow one holds it longest); past this many, a read is refused with a message
/// rather than taking threads from the store and the supervisor.
pub const MAX_STREAMS: usize = 64;

/// A log read ready to stream: the query checked, its instances resolved.
pub struct LogStream {
    name: String,
    query: LogQuery,
    metas: Vec<InstanceMeta>,
    /// The process's newest instance of the kind read: an older one that ended was
    /// replaced (its exit record says `restarted`).
    newest: Option<u64>,
}

/// Collects records into pages and hands each full one on.
struct Pager<'a> {
    buf: Vec<FollowRecord>,
    page: &'a mut dyn FnMut(Vec<FollowRecord>) -> ControlFlow<()>,
}

impl Pager<'_> {
    fn push(&mut self, r: FollowRecord) -> ControlFlow<()> {
        self.buf.push(r);
        if self.buf.len() >= PAGE_LINES {
            return self.flush();
        }
        ControlFlow::Continue(())
    }

    fn flush(&mut self) -> ControlFlow<()> {
        if self.buf.is_empty() {
            return ControlFlow::Continue(());
        }
        (self.page)(std::mem::take(&mut self.buf))
    }
}

fn exit_record(meta: &InstanceMeta, newest: Option<u64>) -> Option<FollowRecord> {
    meta.exit.clone().map(|status| FollowRecord::Exit {
        instance: meta.id,
        status,
        restarted: newest.is_some_and(|n| n > meta.id),
    })
}

impl LogStream {
    /// Check the query and resolve its instances: every error a read can answer with
    /// comes from here, before the first record (blocking).
    pub fn plan(store: &Store, name: &str, query: LogQuery) -> Result<LogStream, OpError> {
        query.validate().map_err(OpError::BadRequest)?;
        if let Some(p) = query.pattern() {
            search::compile(p, query.case_insensitive)?;
        }
        let metas = resolve_instances(store, name, &query)?;
        let kind = if query.build {
            InstanceKind::Build
        } else {
            InstanceKind::Run
        };
        let newest = store.instances(name, kind)?.last().map(|m| m.id);
        Ok(LogStream {
            name: name.to_owned(),
            query,
            metas,
            newest,
        })
    }

    /// Read the records and hand them to `page`, a page at a time (at most
    /// [`PAGE_LINES`] records each), in order; `page` breaks to stop (blocking).
    pub fn run(
        &self,
        store: &Store,
        page: &mut dyn FnMut(Vec<FollowRecord>) -> ControlFlow<()>,
    ) -> Result<(), OpError> {
        let mut pager = Pager {
            buf: Vec::new(),
            page,
        };
        let q = &self.query;
        match (q.effective_tail(), q.around, q.pattern()) {
            (Some(t), None, None) if t > PAGE_LINES => self.tail_streamed(store, &mut pager, t)?,
            (None, None, _) => self.streamed(store, &mut pager)?,
            _ => self.bounded(store, &mut pager)?,
        }
        let _ = pager.flush();
        Ok(())
    }

    /// A tail, or the lines around one line: read whole, then sent.
    fn bounded(&self, store: &Store, pager: &mut Pager<'_>) -> Result<(), OpError> {
        let r = read_logs(store, &self.name, &self.query)?;
        let mut lines = r.lines.into_iter().peekable();
        for (k, m) in self.metas.iter().enumerate() {
            if pager.push(FollowRecord::instance(m, k > 0)).is_break() {
                return Ok(());
            }
            while let Some(l) = lines.next_if(|l| l.instance == m.id) {
                if pager.push(FollowRecord::Line(l)).is_break() {
                    return Ok(());
                }
            }
            if let Some(exit) = exit_record(m, self.newest)
                && pager.push(exit).is_break()
            {
                return Ok(());
            }
        }
        Ok(())
    }

    /// A long tail without a pattern: where it starts in each instance is found by
    /// counting lines backwards a page at a time, then its lines are read forwards from
    /// there. The tail is read twice, and held a page at a time.
    fn tail_streamed(
        &self,
        store: &Store,
        pager: &mut Pager<'_>,
        tail: usize,
    ) -> Result<(), OpError> {
        let filter = self.filter();
        let seqs = self.seqs();
        // Where the tail starts in each instance, newest first; `None`: none of its lines.
        let mut starts = vec![None; self.metas.len()];
        let mut left = tail;
        for (k, m) in self.metas.iter().enumerate().rev() {
            if left == 0 {
                break;
            }
            let from = seqs.start.max(m.first_seq);
            let mut at = seqs.end.min(m.next_seq);
            let mut start = at;
            while at > from && left > 0 {
                let begin = at.saturating_sub(PAGE_LINES as u64).max(from);
                let lines = store.read(
                    m.id,
                    Window::Seqs {
                        from: begin,
                        to: at,
                    },
                    &filter,
                )?;
                if lines.len() >= left {
                    start = lines[lines.len() - left].seq;
                    left = 0;
                } else {
                    left -= lines.len();
                    start = begin;
                }
                at = begin;
            }
            starts[k] = Some(start);
        }
        for (k, m) in self.metas.iter().enumerate() {
            if pager.push(FollowRecord::instance(m, k > 0)).is_break() {
                return Ok(());
            }
            if let Some(start) = starts[k] {
                let to = seqs.end.min(m.next_seq);
                let mut all = usize::MAX;
                if send_lines(store, pager, m.id, start..to, &filter, &mut all)?.is_break() {
                    return Ok(());
                }
            }
            if let Some(exit) = exit_record(m, self.newest)
                && pager.push(exit).is_break()
            {
                return Ok(());
            }
        }
        Ok(())
    }

    fn filter(&self) -> Filter {
        let q = &self.query;
        Filter {
            stream: q.stream.only(),
            since_us: q.since_us,
            until_us: q.until_us,
        }
    }

    fn seqs(&self) -> std::ops::Range<u64> {
        let q = &self.query;
        q.from_seq.unwrap_or(0)..q.to_seq.unwrap_or(u64::MAX)
    }

    /// Every line, or a head: read page by page.
    fn streamed(&self, store: &Store, pager: &mut Pager<'_>) -> Result<(), OpError> {
        let q = &self.query;
        let filter = self.filter();
        let seqs = self.seqs();
        let mut left = q.head.unwrap_or(usize::MAX);
        for (k, m) in self.metas.iter().enumerate() {
            if left == 0 {
                break;
            }
            if pager.push(FollowRecord::instance(m, k > 0)).is_break() {
                return Ok(());
            }
            let from = seqs.start.max(m.first_seq);
            let to = seqs.end.min(m.next_seq);
            match q.pattern() {
                Some(pattern) => {
                    let sq = Query {
                        pattern: pattern.to_owned(),
                        case_insensitive: q.case_insensitive,
                        context: q.context,
                        head: q.head.map(|_| left),
                        tail: None,
                        filter,
                    };
                    let mut flow = ControlFlow::Continue(());
                    let r = search::search_each(store, &[m.id], &sq, from..to, &mut |hit| {
                        flow = pager.push(FollowRecord::Line(LogLine::new(hit.line, hit.matched)));
                        flow
                    })?;
                    if flow.is_break() {
                        return Ok(());
                    }
                    left = left.saturating_sub((r.total - r.omitted) as usize);
                }
                None => {
                    if send_lines(store, pager, m.id, from..to, &filter, &mut left)?.is_break() {
                        return Ok(());
                    }
                }
            }
            // An instance cut short by the head has not ended as far as this read goes.
            if (q.head.is_none() || left > 0)
                && let Some(exit) = exit_record(m, self.newest)
                && pager.push(exit).is_break()
            {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Read instance `id`'s lines in `seqs` a page at a time and hand at most `left` of them
/// to `pager` (counting `left` down). Breaks when the pager does.
fn send_lines(
    store: &Store,
    pager: &mut Pager<'_>,
    id: u64,
    seqs: std::ops::Range<u64>,
    filter: &Filter,
    left: &mut usize,
) -> Result<ControlFlow<()>, OpError> {
    let mut at = seqs.start;
    while at < seqs.end && *left > 0 {
        let end = at.saturating_add(PAGE_LINES as u64).min(seqs.end);
        for l in store.read(id, Window::Seqs { from: at, to: end }, filter)? {
            if *left == 0 {
                break;
            }
            *left -= 1;
            if pager
                .push(FollowRecord::Line(LogLine::new(l, false)))
                .is_break()
            {
                return Ok(ControlFlow::Break(()));
            }
        }
        at = end;
    }
    Ok(ControlFlow::Continue(()))
}

/// Records as NDJSON: one JSON object per line.
pub fn ndjson(records: &[FollowRecord]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(records.len() * 160);
    for r in records {
        serde_json::to_writer(&mut buf, r).expect("records serialize");
        buf.push(b'\n');
    }
    buf
}

impl Ops {
    /// [`Ops::logs`] as NDJSON records, read and sent a page at a time: a client that
    /// reads slowly holds at most a few pages; one that goes away stops the read. Errors
    /// of the query come before the stream; a store error during it ends the stream with
    /// an error (the body is cut, so the client sees it was incomplete). A search holds
    /// its turn among [`super::logs::MAX_SEARCHES`] only while it reads, not while it
    /// waits for the client.
    pub async fn logs_stream(
        &self,
        process: &str,
        query: LogQuery,
    ) -> Result<impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static, OpError>
    {
        query.validate().map_err(OpError::BadRequest)?;
        let (name, _) = self.find_or_stored(process).await?;
        let streaming = self
            .inner
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                OpError::Busy(format!(
                    "{MAX_STREAMS} log reads are streaming, the most the daemon serves at once; \
                 try again when one ends, or read fewer lines (--tail N)"
                ))
            })?;
        let searching = query.pattern().is_some();
        let mut turn = self.search_turn(searching).await?;
        let store = self.inner.store.clone();
        let plan = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || LogStream::plan(&store, &name, query))
                .await
                .map_err(|e| OpError::BadRequest(e.to_string()))??
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(PAGES_AHEAD);
        let searches = self.inner.searches.clone();
        let closing = self.inner.closing.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            // Given back when the read ends, however it ends.
            let _streaming = streaming;
            let r = plan.run(&store, &mut |page| {
                if closing.is_cancelled() {
                    return ControlFlow::Break(());
                }
                let bytes = Bytes::from(ndjson(&page));
                drop(page);
                // Other searches may run while this one waits for its client.
                turn = None;
                if tx.blocking_send(Ok(bytes)).is_err() {
                    return ControlFlow::Break(());
                }
                if searching {
                    match runtime.block_on(searches.clone().acquire_owned()) {
                        Ok(p) => turn = Some(p),
                        Err(_) => return ControlFlow::Break(()),
                    }
                }
                ControlFlow::Continue(())
            });
            if let Err(e) = r {
                tracing::warn!(error = %e, "a streamed log read failed");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        });
        Ok(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }
}
