//! Scanning an instance for a search: stored blocks whose filter rules them out are not
//! read at all, the others are decompressed and searched on a small pool ([`pool`]), and
//! the results come back in block order, with the ring's newest blocks after them.
//!
//! Which blocks are read is decided by the caller, block by block, from the block's
//! filter record in the filter file ([`Verdict`], `filter_file.rs`); a block without a
//! record (not built yet, no usable file, a damaged record, a stale one) is always read. Context lines need the
//! blocks around a match: a block that cannot match is still read when it is within
//! `context` lines of one that may.
//!
//! A damaged store is handled as [`Store::scan_blocks`] handles it: at the first error the
//! scan goes on with that walk from where it was, which skips and counts damaged blocks.

use std::collections::VecDeque;
use std::ops::{ControlFlow, Range};
use std::sync::atomic::Ordering;

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable};

use super::block::{self, BlockView};
use super::filter::BlockFilter;
use super::filter_file::{self, FilterState};
use super::schema::BLOCKS;
use super::writer::no_panic;
use super::{Store, StoreError, damage, pool};

/// What a search makes of a stored block, from its filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No line of it counts (outside the time range): not even as context.
    Skip,
    /// No line of it can match; its lines may be context.
    NoMatch,
    /// It may hold a match.
    Read,
}

/// A block to read: its key, and whether to search it (or only keep it for context).
struct Job {
    first: u64,
    search: bool,
}

/// One stored block in key order, as the filters describe it.
#[derive(Clone, Copy)]
struct Entry {
    first: u64,
    /// Lines, when its filter says.
    count: Option<u32>,
    verdict: Verdict,
}

type Blocks = ReadOnlyTable<(u64, u64), &'static [u8]>;

impl Store {
    /// Visit the blocks of instance `id` with lines in `seqs`, in order: `work(view,
    /// search)` runs on the pool for each block read (`search` is false for a block read
    /// for context only), then `consume` gets the view and that result, here. Blocks are
    /// chosen by `verdict` (see the module's doc) with `context` lines around matches.
    /// Returns the lines skipped as unreadable.
    pub fn scan_for_search<R: Send>(
        &self,
        id: u64,
        seqs: Range<u64>,
        verdict: &(dyn Fn(&BlockFilter<'_>) -> Verdict + Sync),
        context: usize,
        work: &(dyn Fn(BlockView<'_>, bool) -> R + Sync),
        consume: &mut dyn FnMut(BlockView<'_>, R) -> ControlFlow<()>,
    ) -> Result<u64, StoreError> {
        let ring = self.shared.live(id).map(|l| l.snapshot());
        let ring_start = ring.as_ref().map_or(u64::MAX, |r| r.start_seq);
        let mut unreadable = 0;
        if seqs.start < ring_start {
            let txn = self.shared.db()?.begin_read()?;
            let file = Filters {
                state: &self.shared.filters,
                txn: self.shared.filters.snapshot(),
            };
            let end = seqs.end.min(ring_start);
            let (flow, resume) = stored(
                &txn,
                &file,
                id,
                seqs.start..end,
                verdict,
                context,
                work,
                consume,
            );
            let flow = match (flow, resume) {
                (Err(e), _) if e.is_disk() => return Err(e),
                (Ok(flow), None) => flow,
                // Damage (or a block that does not decode): go on with the walk that
                // skips and counts damaged blocks, from where this one got to.
                (_, resume) => {
                    let from = resume.unwrap_or(seqs.start);
                    let (flow, skipped) = damage::scan(&txn, id, from, end, &mut |view| {
                        // The walk starts at the block holding `from`, which is the last
                        // one consumed when no block starts right after it.
                        if view.end_seq() <= from {
                            return ControlFlow::Continue(());
                        }
                        let r = work(view, true);
                        consume(view, r)
                    })?;
                    unreadable = skipped;
                    flow
                }
            };
            if flow.is_break() {
                return Ok(unreadable);
            }
        }
        if let Some(ring) = &ring {
            for view in ring.views() {
                if view.end_seq() <= seqs.start {
                    continue;
                }
                if view.first_seq >= seqs.end {
                    break;
                }
                let r = work(view, true);
                if consume(view, r).is_break() {
                    break;
                }
            }
        }
        Ok(unreadable)
    }
}

/// The filter file as one search sees it.
struct Filters<'a> {
    state: &'a FilterState,
    /// `None`: no usable file, every block is read.
    txn: Option<ReadTransaction>,
}

/// The stored part of [`Store::scan_for_search`]. On damage, returns the error and the
/// sequence number to go on from (`Some`), having consumed every block before it.
#[allow(clippy::too_many_arguments)]
fn stored<R: Send>(
    txn: &ReadTransaction,
    file: &Filters<'_>,
    id: u64,
    seqs: Range<u64>,
    verdict: &(dyn Fn(&BlockFilter<'_>) -> Verdict + Sync),
    context: usize,
    work: &(dyn Fn(BlockView<'_>, bool) -> R + Sync),
    consume: &mut dyn FnMut(BlockView<'_>, R) -> ControlFlow<()>,
) -> (Result<ControlFlow<()>, StoreError>, Option<u64>) {
    let mut failed: Option<StoreError> = None;
    let mut resume: Option<u64> = None;
    let mut flow = ControlFlow::Continue(());
    // Every line before this was consumed.
    let mut consumed_to: Option<u64> = None;
    let walked = no_panic(|| {
        let blocks: Blocks = txn.open_table(BLOCKS)?;
        // The file's records of this instance, if they count (see `filter_file.rs`).
        let records = file.txn.as_ref().and_then(|f| {
            let started = filter_file::started_us(txn, id)?;
            filter_file::records_of(f, id, started)
        });
        // The block holding the first line asked for.
        let start = blocks
            .range((id, 0)..=(id, seqs.start))?
            .next_back()
            .transpose()?
            .map_or(seqs.start, |(k, _)| k.value().1);
        let mut rows = records.and_then(|t| {
            filter_file::guarded(|| {
                t.range((id, start)..(id, seqs.end))
                    .map_err(filter_file::trouble)
            })
            .ok()
        });
        // The next block with a record. A file that cannot be read on ends the records:
        // the blocks after the last one are all read.
        let mut fetch = || -> Result<Option<Entry>, StoreError> {
            let Some(r) = &mut rows else {
                return Ok(None);
            };
            let next = filter_file::next_record(r, |first, record| {
                match record.and_then(BlockFilter::parse) {
                    Some(f) => Entry {
                        first,
                        count: Some(f.count),
                        verdict: verdict(&f),
                    },
                    // A record that is damaged or of another version: read the block (and
                    // have the builder check the file).
                    None => {
                        file.state.suspect.store(true, Ordering::Relaxed);
                        Entry {
                            first,
                            count: None,
                            verdict: Verdict::Read,
                        }
                    }
                }
            });
            Ok(match next {
                Ok(entry) => entry,
                Err(_) => {
                    file.state.suspect.store(true, Ordering::Relaxed);
                    rows = None;
                    None
                }
            })
        };
        let mut plan = Planner::new(context, start, seqs.end);
        // Make the jobs (reading the stored bytes here, where the transaction is) and
        // run them on the pool.
        let mut error: Option<StoreError> = None;
        let next_job = || -> Option<(u64, bool, Vec<u8>)> {
            loop {
                let job = loop {
                    if let Some(job) = plan.ready.pop_front() {
                        break job;
                    }
                    match plan.next_entry(&blocks, id, &mut fetch) {
                        Ok(Some(e)) => plan.push(e),
                        Ok(None) => {
                            plan.finish();
                            break plan.ready.pop_front()?;
                        }
                        Err(e) => {
                            error = Some(e);
                            return None;
                        }
                    }
                };
                match blocks.get((id, job.first)) {
                    Ok(Some(v)) => return Some((job.first, job.search, v.value().to_vec())),
                    // A record of a block removed since (retention): no lines to read.
                    Ok(None) => continue,
                    Err(e) => {
                        error = Some(e.into());
                        return None;
                    }
                }
            }
        };
        let decode = |(first, search, stored): (u64, bool, Vec<u8>)| {
            let mut buf = Vec::new();
            let raw = match block::stored_raw(first, &stored, &mut buf) {
                Ok(raw) => raw.to_vec(),
                Err(_) => return (first, None),
            };
            let Ok(view) = BlockView::parse(first, &raw) else {
                return (first, None);
            };
            let r = work(view, search);
            (first, Some((raw, r)))
        };
        pool::ordered(pool::threads(), next_job, &decode, |(first, got)| {
            let Some((raw, r)) = got else {
                failed = Some(StoreError::Corrupt("a block does not decode".into()));
                resume = Some(first);
                return ControlFlow::Break(());
            };
            let view = BlockView::parse(first, &raw).expect("parsed on the pool");
            consumed_to = Some(view.end_seq());
            flow = consume(view, r);
            flow
        });
        if let Some(e) = error
            && failed.is_none()
            && flow.is_continue()
        {
            failed = Some(e);
        }
        Ok(())
    });
    let resume = resume.or(consumed_to).unwrap_or(seqs.start);
    match (walked, failed) {
        (Ok(()), None) => (Ok(flow), None),
        (Ok(()), Some(e)) | (Err(e), _) => (Err(e), Some(resume)),
    }
}

/// Decides, block by block in key order, which stored blocks a search reads: those that
/// may match, and for context, the blocks within `context` lines of them.
struct Planner {
    context: usize,
    /// Where the next block is expected to start (blocks between here and the next
    /// filtered one have no filter).
    cursor: u64,
    end: u64,
    /// Blocks without a filter found before `held`.
    gap: VecDeque<u64>,
    held: Option<Entry>,
    /// Every filtered block was fetched.
    rows_done: bool,
    tail_checked: bool,
    /// Blocks that cannot match, kept until it is known whether they are context.
    before: VecDeque<Entry>,
    /// Lines of after-context still owed.
    after_left: usize,
    ready: VecDeque<Job>,
}

impl Planner {
    fn new(context: usize, start: u64, end: u64) -> Planner {
        Planner {
            context,
            cursor: start,
            end,
            gap: VecDeque::new(),
            held: None,
            rows_done: false,
            tail_checked: false,
            before: VecDeque::new(),
            after_left: 0,
            ready: VecDeque::new(),
        }
    }

    /// The next stored block, filtered or not; `fetch` gives the next filtered one.
    fn next_entry(
        &mut self,
        blocks: &Blocks,
        id: u64,
        fetch: &mut dyn FnMut() -> Result<Option<Entry>, StoreError>,
    ) -> Result<Option<Entry>, StoreError> {
        loop {
            if let Some(first) = self.gap.pop_front() {
                return Ok(Some(Entry {
                    first,
                    count: None,
                    verdict: Verdict::Read,
                }));
            }
            if self.held.is_none() && !self.rows_done {
                self.held = fetch()?;
                self.rows_done = self.held.is_none();
            }
            match self.held {
                Some(e) if e.first > self.cursor => {
                    // Blocks without filters may lie between the last one and this one.
                    self.gap = keys(blocks, id, self.cursor..e.first)?;
                    self.cursor = e.first;
                }
                Some(e) => {
                    self.held = None;
                    self.cursor = e.first + u64::from(e.count.unwrap_or(1).max(1));
                    return Ok(Some(e));
                }
                None if !self.tail_checked => {
                    self.tail_checked = true;
                    self.gap = keys(blocks, id, self.cursor..self.end)?;
                }
                None => return Ok(None),
            }
        }
    }

    fn push(&mut self, e: Entry) {
        let lines = e.count.map_or(0, |c| c as usize);
        match e.verdict {
            Verdict::Skip => {}
            Verdict::Read => {
                for b in self.before.drain(..) {
                    self.ready.push_back(Job {
                        first: b.first,
                        search: false,
                    });
                }
                self.ready.push_back(Job {
                    first: e.first,
                    search: true,
                });
                self.after_left = self.context;
            }
            Verdict::NoMatch if self.context == 0 => {}
            Verdict::NoMatch if self.after_left > 0 => {
                self.after_left = self.after_left.saturating_sub(lines);
                self.ready.push_back(Job {
                    first: e.first,
                    search: false,
                });
            }
            Verdict::NoMatch => {
                self.before.push_back(e);
                // Keep just enough blocks to give `context` lines.
                while self.before.len() > 1
                    && self
                        .before
                        .iter()
                        .skip(1)
                        .map(|b| b.count.map_or(0, |c| c as usize))
                        .sum::<usize>()
                        >= self.context
                {
                    self.before.pop_front();
                }
            }
        }
    }

    /// No more stored blocks: the last ones may be context for the ring's first lines.
    fn finish(&mut self) {
        for b in self.before.drain(..) {
            self.ready.push_back(Job {
                first: b.first,
                search: false,
            });
        }
    }
}

/// The keys of an instance's blocks starting in `range`.
fn keys(blocks: &Blocks, id: u64, range: Range<u64>) -> Result<VecDeque<u64>, StoreError> {
    let mut out = VecDeque::new();
    if range.start >= range.end {
        return Ok(out);
    }
    for row in blocks.range((id, range.start)..(id, range.end))? {
        out.push_back(row?.0.value().1);
    }
    Ok(out)
}

/// What the blocks and their filters take in the store. See [`Store::block_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub blocks: u64,
    /// Bytes of the stored (compressed) blocks.
    pub block_bytes: u64,
    /// Records in the filter file, and their bytes.
    pub filtered_blocks: u64,
    pub filter_bytes: u64,
    /// The filter file's size on disk.
    pub filter_file_bytes: u64,
}

impl Store {
    /// Counts and bytes of the stored blocks and of their filter records (walks both:
    /// for benches, tests and diagnostics, not for a hot path).
    pub fn block_stats(&self) -> Result<BlockStats, StoreError> {
        let mut s = no_panic(|| {
            let txn = self.shared.db()?.begin_read()?;
            let mut s = BlockStats::default();
            for row in txn.open_table(BLOCKS)?.iter()? {
                s.blocks += 1;
                s.block_bytes += row?.1.value().len() as u64;
            }
            Ok(s)
        })?;
        (s.filtered_blocks, s.filter_bytes, s.filter_file_bytes) =
            filter_file::stats(&self.shared.filters);
        Ok(s)
    }
}
