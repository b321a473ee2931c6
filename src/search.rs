//! Search: a query becomes matching lines, over the ring and the store.
//!
//! The order is fixed: filter (stream, time) -> match -> context -> head/tail limit. The
//! regex runs over a whole block's newline-separated data at once, as grep runs over a
//! file, and only lines with a candidate match are decoded; a candidate that spans a
//! newline is re-checked on its own line, so the answer is exactly "the lines that match".

use std::collections::VecDeque;
use std::ops::{ControlFlow, Range};

use regex::bytes::{Regex, RegexBuilder};

use crate::logs::block::LineMeta;
use crate::logs::filter::BlockFilter;
use crate::logs::{BlockView, Filter, Line, Store, StoreError, Verdict};

mod literals;
pub use literals::Need;

/// What to look for.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// A regex (the `regex` crate's syntax). Matched against each line on its own.
    pub pattern: String,
    pub case_insensitive: bool,
    /// Lines of context before and after each match (overlapping windows are merged).
    pub context: usize,
    /// Keep only the first N result lines (after context).
    pub head: Option<usize>,
    /// Keep only the last N result lines (after context). Ignored when `head` is set.
    pub tail: Option<usize>,
    pub filter: Filter,
}

/// One line of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub line: Line,
    /// The line matched (rather than being context).
    pub matched: bool,
}

/// The lines found, and what was left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchResult {
    pub hits: Vec<Hit>,
    /// Lines that matched, in total.
    pub matched: u64,
    /// Result lines (matches and context) before the head/tail limit.
    pub total: u64,
    /// Result lines left out by the limit: `total - hits.len()`.
    pub omitted: u64,
    /// Lines that could not be searched: they are in blocks damaged on disk.
    pub unreadable_lines: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// `pattern` is the pattern's beginning only (see [`crate::protocol::pattern_excerpt`]).
    #[error(
        "bad regex `{pattern}`: {message}\n(fix the pattern, or escape special characters such as ( [ . * with a backslash)"
    )]
    BadRegex { pattern: String, message: String },
    #[error("the pattern is {len} bytes long; at most {max} are allowed (it begins `{excerpt}`)", max = crate::protocol::MAX_PATTERN)]
    TooLong { len: usize, excerpt: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The most memory a compiled pattern may take (the regex crate's default is 10 MiB).
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The most memory a pattern's lazy DFA may take per search (default 2 MiB).
const DFA_SIZE_LIMIT: usize = 1 << 20;

/// Compile a pattern as search uses it: `^` and `$` match at line boundaries. At most
/// [`crate::protocol::MAX_PATTERN`] bytes, compiled within small memory limits; errors
/// show the pattern's beginning only.
pub fn compile(pattern: &str, case_insensitive: bool) -> Result<Regex, SearchError> {
    if pattern.len() > crate::protocol::MAX_PATTERN {
        return Err(SearchError::TooLong {
            len: pattern.len(),
            excerpt: crate::protocol::pattern_excerpt(pattern),
        });
    }
    RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .multi_line(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(DFA_SIZE_LIMIT)
        .build()
        .map_err(|e| SearchError::BadRegex {
            pattern: crate::protocol::pattern_excerpt(pattern),
            message: match e {
                regex::Error::Syntax(m) => m,
                regex::Error::CompiledTooBig(limit) => {
                    format!("it compiles to more than {limit} bytes; use a simpler pattern")
                }
                e => e.to_string(),
            },
        })
}

/// Search `instances` (in the order given) and return the result lines in that order.
/// Context never crosses from one instance into another.
pub fn search(store: &Store, instances: &[u64], q: &Query) -> Result<SearchResult, SearchError> {
    search_in(store, instances, q, 0..u64::MAX, false)
}

/// [`search`] reading every block in the range, as if no block had a filter: what a
/// filtered search must answer exactly (tests and benches compare the two).
#[doc(hidden)]
pub fn search_without_filters(
    store: &Store,
    instances: &[u64],
    q: &Query,
) -> Result<SearchResult, SearchError> {
    let out = Collector::new(q.head, q.tail);
    search_into(store, instances, q, 0..u64::MAX, false, out, false)
}

/// [`search`] over the lines whose sequence numbers are in `seqs` only: the blocks before
/// the range are not read, nor those after it. Lines outside the range are neither
/// matched nor context. With a head, the search stops once the head is complete (the
/// next match after a line is found without reading to the end), so `matched`, `total`
/// and `omitted` count up to there only.
pub fn search_seqs(
    store: &Store,
    instances: &[u64],
    q: &Query,
    seqs: Range<u64>,
) -> Result<SearchResult, SearchError> {
    search_in(store, instances, q, seqs, true)
}

/// [`search_seqs`] handing each result line to `sink` as it is found instead of keeping
/// them, so memory stays flat however many lines match (the tail is ignored: the lines
/// come in order). `sink` breaks to stop the search. The result has no hits, and its
/// counts go up to where the search stopped.
pub fn search_each(
    store: &Store,
    instances: &[u64],
    q: &Query,
    seqs: Range<u64>,
    sink: &mut dyn FnMut(Hit) -> ControlFlow<()>,
) -> Result<SearchResult, SearchError> {
    let mut out = Collector::new(q.head, None);
    out.sink = Some(sink);
    search_into(store, instances, q, seqs, true, out, true)
}

fn search_in(
    store: &Store,
    instances: &[u64],
    q: &Query,
    seqs: Range<u64>,
    stop_at_head: bool,
) -> Result<SearchResult, SearchError> {
    search_into(
        store,
        instances,
        q,
        seqs,
        stop_at_head,
        Collector::new(q.head, q.tail),
        true,
    )
}

fn search_into(
    store: &Store,
    instances: &[u64],
    q: &Query,
    seqs: Range<u64>,
    stop_at_head: bool,
    mut out: Collector<'_>,
    use_filters: bool,
) -> Result<SearchResult, SearchError> {
    let re = compile(&q.pattern, q.case_insensitive)?;
    let verdict = block_verdict(q, use_filters);
    let work = |view: BlockView<'_>, search: bool| {
        if search {
            candidate_lines(&re, view.data)
        } else {
            Vec::new()
        }
    };
    let mut unreadable_lines = 0;
    for &id in instances {
        let mut s = Searcher {
            q,
            id,
            seqs: seqs.clone(),
            prev_tail: VecDeque::new(),
            last_emitted: None,
            after_left: 0,
            out: &mut out,
        };
        unreadable_lines += store.scan_for_search(
            id,
            seqs.clone(),
            &verdict,
            q.context,
            &work,
            &mut |view, starts| {
                if view.first_seq >= seqs.end {
                    return ControlFlow::Break(());
                }
                s.block(view, starts);
                // A head already filled (with no context owed) needs no further block.
                if s.out.stopped || stop_at_head && !s.out.wants() && s.after_left == 0 {
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            },
        )?;
        // The head is complete: the next instances need not even be opened.
        if out.stopped || stop_at_head && !out.wants() {
            break;
        }
    }
    Ok(SearchResult {
        unreadable_lines,
        ..out.finish()
    })
}

/// What a search makes of a stored block from its filter: outside the time range it is
/// skipped; when the filter rules out the pattern's required literals it cannot match.
/// With context and a stream or time filter, the lines around a match are the nearest
/// lines that pass the filter, which may be anywhere: every block in the range is read.
fn block_verdict(
    q: &Query,
    use_filters: bool,
) -> impl Fn(&BlockFilter<'_>) -> Verdict + Sync + use<> {
    let need = Need::of(&q.pattern, q.case_insensitive);
    let prune =
        use_filters && need != Need::Anything && (q.context == 0 || q.filter == Filter::default());
    let (since, until) = (q.filter.since_us, q.filter.until_us);
    move |f: &BlockFilter<'_>| {
        if use_filters && !f.overlaps(since, until) {
            Verdict::Skip
        } else if prune && !need.eval(&mut |lit| f.may_contain(lit)) {
            Verdict::NoMatch
        } else {
            Verdict::Read
        }
    }
}

/// Keeps the head or tail of the result lines (or hands them to a sink), and counts them
/// all.
struct Collector<'a> {
    head: Option<usize>,
    tail: Option<usize>,
    hits: VecDeque<Hit>,
    /// Result lines kept or handed over.
    kept: usize,
    matched: u64,
    total: u64,
    /// Where result lines go instead of `hits`.
    sink: Option<&'a mut dyn FnMut(Hit) -> ControlFlow<()>>,
    /// The sink said stop.
    stopped: bool,
}

impl Collector<'_> {
    fn new(head: Option<usize>, tail: Option<usize>) -> Self {
        Collector {
            head,
            tail: if head.is_some() { None } else { tail },
            hits: VecDeque::new(),
            kept: 0,
            matched: 0,
            total: 0,
            sink: None,
            stopped: false,
        }
    }

    /// Whether a further result line would be kept; lets callers skip copying it.
    fn wants(&self) -> bool {
        !self.stopped && self.head.is_none_or(|h| self.kept < h) && self.tail != Some(0)
    }

    fn push(&mut self, make: impl FnOnce() -> Line, matched: bool) {
        self.total += 1;
        self.matched += u64::from(matched);
        if !self.wants() {
            return;
        }
        self.kept += 1;
        let hit = Hit {
            line: make(),
            matched,
        };
        if let Some(sink) = &mut self.sink {
            self.stopped = sink(hit).is_break();
            return;
        }
        self.hits.push_back(hit);
        if let Some(t) = self.tail
            && self.hits.len() > t
        {
            self.hits.pop_front();
        }
    }

    fn finish(self) -> SearchResult {
        let sent = if self.sink.is_some() {
            self.kept
        } else {
            self.hits.len()
        };
        let hits: Vec<Hit> = self.hits.into();
        SearchResult {
            omitted: self.total - sent as u64,
            hits,
            matched: self.matched,
            total: self.total,
            unreadable_lines: 0,
        }
    }
}

/// The per-instance state of a search as it walks the blocks in order.
struct Searcher<'a, 'b> {
    q: &'a Query,
    id: u64,
    /// Only lines with these sequence numbers count.
    seqs: Range<u64>,
    /// The last `context` accepted lines of the previous blocks, for before-context.
    prev_tail: VecDeque<Line>,
    last_emitted: Option<u64>,
    /// After-context lines still owed from the last match.
    after_left: usize,
    out: &'a mut Collector<'b>,
}

impl Searcher<'_, '_> {
    /// Take in the next block, given the starts of its candidate lines
    /// ([`candidate_lines`], computed on the pool).
    fn block(&mut self, view: BlockView<'_>, starts: Vec<usize>) {
        let ctx = self.q.context;
        let in_range = self.seqs.start <= view.first_seq
            && view.first_seq + view.count as u64 <= self.seqs.end;
        let trivial_filter = self.q.filter == Filter::default() && in_range;
        let seqs = self.seqs.clone();
        if starts.is_empty() && self.after_left == 0 && (ctx == 0 || view.count == 0) {
            return;
        }
        let metas: Vec<LineMeta> = view.metas().collect();
        let mut matches: Vec<usize> = starts
            .iter()
            .map(|&off| metas.partition_point(|m| (m.offset as usize) <= off) - 1)
            .collect();
        matches.dedup();
        let seq_of = |i: usize| view.first_seq + i as u64;
        let accepted = |i: usize| {
            trivial_filter || (seqs.contains(&seq_of(i)) && self.q.filter.accepts(&metas[i]))
        };
        if !trivial_filter {
            matches.retain(|&i| accepted(i));
        }

        let mut i = 0usize; // next line index not yet considered for after-context
        let mut mi = 0usize; // next match
        loop {
            // Owed after-context, up to the next match.
            let next_match = matches.get(mi).copied().unwrap_or(metas.len());
            while self.after_left > 0 && i < next_match {
                if accepted(i) {
                    self.emit(&view, &metas, i, false);
                    self.after_left -= 1;
                }
                i += 1;
            }
            let Some(&j) = matches.get(mi) else { break };
            mi += 1;
            // Before-context: the nearest accepted lines before j not yet emitted.
            if ctx > 0 {
                let mut before = Vec::new();
                let mut k = j;
                while before.len() < ctx && k > 0 {
                    k -= 1;
                    if self.last_emitted.is_some_and(|e| seq_of(k) <= e) {
                        break;
                    }
                    if accepted(k) {
                        before.push(k);
                    }
                }
                let need = ctx - before.len();
                if need > 0 && k == 0 {
                    let from_prev: Vec<Line> = self
                        .prev_tail
                        .iter()
                        .rev()
                        .filter(|l| self.last_emitted.is_none_or(|e| l.seq > e))
                        .take(need)
                        .cloned()
                        .collect();
                    for l in from_prev.into_iter().rev() {
                        self.last_emitted = Some(l.seq);
                        self.out.push(|| l, false);
                    }
                }
                for &k in before.iter().rev() {
                    self.emit(&view, &metas, k, false);
                }
            }
            self.emit(&view, &metas, j, true);
            self.after_left = ctx;
            i = j + 1;
        }
        if ctx > 0 {
            // Remember the block's last accepted lines for the next block's first match.
            let mut tail: Vec<Line> = Vec::new();
            for k in (0..metas.len()).rev() {
                if tail.len() >= ctx {
                    break;
                }
                if accepted(k) {
                    tail.push(view.line(k as u32, &metas[k], self.id));
                }
            }
            if tail.len() < ctx {
                // A short block: keep the older lines too.
                let keep = ctx - tail.len();
                let old: Vec<Line> = self.prev_tail.iter().rev().take(keep).cloned().collect();
                tail.extend(old);
            }
            tail.reverse();
            self.prev_tail = tail.into();
        }
    }

    fn emit(&mut self, view: &BlockView<'_>, metas: &[LineMeta], i: usize, matched: bool) {
        let seq = view.first_seq + i as u64;
        if self.last_emitted.is_some_and(|e| seq <= e) {
            return;
        }
        self.last_emitted = Some(seq);
        let id = self.id;
        self.out
            .push(|| view.line(i as u32, &metas[i], id), matched);
    }
}

/// Offsets of the starts of the lines in `data` that match `re` on their own, as the
/// line reads on a terminal: a line with escape codes (colours, cursor moves) is matched
/// without them, so `Local:.*5173` finds vite's coloured `➜  Local:   http://...:5173/`.
fn candidate_lines(re: &Regex, data: &[u8]) -> Vec<usize> {
    let raw = raw_candidate_lines(re, data);
    if memchr::memchr(ESC, data).is_none() {
        return raw;
    }
    // Lines with escape codes are decided on their stripped text instead.
    let mut coloured = Vec::new();
    let mut searched_to = 0;
    for esc in memchr::memchr_iter(ESC, data) {
        if esc < searched_to {
            continue;
        }
        let ls = memchr::memrchr(b'\n', &data[..esc]).map_or(0, |p| p + 1);
        let le = memchr::memchr(b'\n', &data[esc..]).map_or(data.len(), |p| esc + p);
        coloured.push(ls);
        searched_to = le + 1;
    }
    let mut out: Vec<usize> = raw
        .into_iter()
        .filter(|ls| coloured.binary_search(ls).is_err())
        .collect();
    for &ls in &coloured {
        let le = memchr::memchr(b'\n', &data[ls..]).map_or(data.len(), |p| ls + p);
        if re.is_match(&strip_ansi_escapes::strip(&data[ls..le])) {
            out.push(ls);
        }
    }
    out.sort_unstable();
    out
}

const ESC: u8 = 0x1b;

/// Whether one line matches `re` as it reads on a terminal (see [`candidate_lines`]).
pub fn line_matches(re: &Regex, line: &[u8]) -> bool {
    if memchr::memchr(ESC, line).is_some() {
        re.is_match(&strip_ansi_escapes::strip(line))
    } else {
        re.is_match(line)
    }
}

/// [`candidate_lines`] on the raw bytes.
fn raw_candidate_lines(re: &Regex, data: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let Some(m) = re.find_at(data, pos) else {
            break;
        };
        let start = m.start().min(data.len().saturating_sub(1));
        let ls = memchr::memrchr(b'\n', &data[..start]).map_or(0, |p| p + 1);
        let ls = ls.max(pos);
        let le = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |p| start + p);
        if m.end() <= le || re.is_match(&data[ls..le]) {
            out.push(ls);
        }
        pos = le + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(re: &str, data: &[u8]) -> Vec<usize> {
        candidate_lines(&compile(re, false).unwrap(), data)
    }

    #[test]
    fn coloured_lines_match_as_they_read_on_a_terminal() {
        let data = b"plain Local: 1\n\x1b[32m\xe2\x9e\x9c\x1b[39m  \x1b[1mLocal\x1b[22m:   http://localhost:\x1b[1m48996\x1b[22m/\nLocal: 48996 plain\n";
        let second = data.iter().position(|&b| b == b'\n').unwrap() + 1;
        let third = second + data[second..].iter().position(|&b| b == b'\n').unwrap() + 1;
        assert_eq!(lines_of("Local:.*48996", data), vec![second, third]);
        assert_eq!(lines_of("Local", data), vec![0, second, third]);
        // The escape codes themselves are not text.
        assert_eq!(lines_of("32m", data), Vec::<usize>::new());
        assert_eq!(lines_of("plain", data), vec![0, third]);
        assert!(line_matches(
            &compile("Local:.*48996", false).unwrap(),
            &data[second..third - 1]
        ));
    }
}
