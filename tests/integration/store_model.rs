//! Model-based property test of the log store.
//!
//! Random sequences of operations (begin, append, seal, finish, flush, close and reopen)
//! run against a real store and against a deliberately simple in-memory model (a Vec of
//! lines per instance, framed byte by byte). Every query (read windows with filters,
//! resolve, instance lists, search with context and limits) must answer exactly as the
//! model does: while instances are live (ring + store) and after a reopen (store alone).
//! The ring is tiny and lines are short so that eviction and continuation lines happen
//! all the time. Retention is out of the model (its limits are huge), except for the
//! separate `keep_instances` property at the end.
//!
//! `PROPTEST_CASES` sets the number of cases (default 64).

use std::path::{Path, PathBuf};

use bpm::logs::{
    ExitStatus, Filter, InstanceKind, InstanceMeta, InstanceWriter, Limits, Line, SpawnInfo, Store,
    StoreError, StoreOptions, Stream, Window,
};
use bpm::search::{self, Query};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use regex::bytes::Regex;

use crate::helpers::{tempdir, wait_for};

const MAX_LINE: usize = 64;
/// Fake timestamps start here and only ever grow a little.
const T0: i64 = 1_000_000_000_000;
/// Timestamps at or above this are real clock readings: the final lines emitted by
/// `finish`, which stamps them with the current time.
const REAL: i64 = 1_500_000_000_000_000;
const PROCS: [&str; 3] = ["web", "api", "db"];
const PATTERNS: &[&str] = &[
    "a",
    "err",
    "^a",
    "b$",
    "^$",
    "x+y",
    "^err.*[0-9]$",
    "L{8}",
    r"(?-u)\xff",
    r"\r$",
    "^L",
];

fn options() -> StoreOptions {
    StoreOptions {
        limits: Limits {
            keep_instances: 100_000,
            keep_builds: 100_000,
            max_bytes: 1 << 40,
        },
        store_max_bytes: 1 << 40,
        ring_max_lines: 6,
        ring_max_bytes: 200,
        max_line: MAX_LINE,
        ..StoreOptions::default()
    }
}

// ---- the model ----

/// A line as the model sees it. `ts` is `None` for lines stamped with the real clock
/// (emitted by `finish`): later than every fake timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MLine {
    instance: u64,
    seq: u64,
    ts: Option<i64>,
    stream: Stream,
    cont: bool,
    bytes: Vec<u8>,
}

fn from_store(l: &Line) -> MLine {
    MLine {
        instance: l.instance,
        seq: l.seq,
        ts: (l.ts_us < REAL).then_some(l.ts_us),
        stream: l.stream,
        cont: l.continuation,
        bytes: l.bytes.clone(),
    }
}

#[derive(Default)]
struct MFramer {
    partial: Vec<u8>,
    /// A piece of the pending line was already emitted.
    continuing: bool,
}

struct MInstance {
    id: u64,
    process: &'static str,
    kind: InstanceKind,
    lines: Vec<MLine>,
    framers: [MFramer; 2],
    /// `None` while live.
    exit: Option<ExitStatus>,
    writer: Option<InstanceWriter>,
}

impl MInstance {
    fn push(&mut self, stream: Stream, ts: Option<i64>, cont: bool, bytes: &[u8]) {
        let seq = self.lines.len() as u64;
        self.lines.push(MLine {
            instance: self.id,
            seq,
            ts,
            stream,
            cont,
            bytes: bytes.to_vec(),
        });
    }

    /// A complete line (or the final one): cut into pieces of MAX_LINE bytes.
    fn emit_line(&mut self, stream: Stream, ts: Option<i64>, line: &[u8]) {
        let mut cont = self.framers[stream as usize].continuing;
        if line.is_empty() {
            // An empty line is a line, unless it is the empty rest of a cut line.
            if !cont {
                self.push(stream, ts, false, b"");
            }
        }
        for piece in line.chunks(MAX_LINE) {
            self.push(stream, ts, cont, piece);
            cont = true;
        }
        self.framers[stream as usize].continuing = false;
    }

    /// Byte by byte: a newline ends a line (minus a `\r` right before it); a pending line
    /// that grows past MAX_LINE gives out its first MAX_LINE bytes at once.
    fn feed(&mut self, stream: Stream, bytes: &[u8], ts: i64) {
        for &b in bytes {
            let s = stream as usize;
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.framers[s].partial);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.emit_line(stream, Some(ts), &line);
            } else {
                self.framers[s].partial.push(b);
                if self.framers[s].partial.len() > MAX_LINE {
                    let piece: Vec<u8> = self.framers[s].partial.drain(..MAX_LINE).collect();
                    let cont = self.framers[s].continuing;
                    self.push(stream, Some(ts), cont, &piece);
                    self.framers[s].continuing = true;
                }
            }
        }
    }

    fn finish_streams(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut self.framers[stream as usize].partial);
            if !line.is_empty() {
                self.emit_line(stream, None, &line);
            }
            self.framers[stream as usize].continuing = false;
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct FilterSpec {
    stream: Option<bool>,
    since: Option<i64>,
    until: Option<i64>,
}

impl FilterSpec {
    fn filter(&self) -> Filter {
        Filter {
            stream: self
                .stream
                .map(|e| if e { Stream::Stderr } else { Stream::Stdout }),
            since_us: self.since.map(|t| T0 + t),
            until_us: self.until.map(|t| T0 + t),
        }
    }
    fn accepts(&self, l: &MLine) -> bool {
        let f = self.filter();
        f.stream.is_none_or(|s| s == l.stream)
            && f.since_us.is_none_or(|t| l.ts.is_none_or(|ts| ts >= t))
            && f.until_us.is_none_or(|t| l.ts.is_some_and(|ts| ts <= t))
    }
}

#[derive(Clone, Copy, Debug)]
enum Win {
    Tail(usize),
    Head(usize),
    Seqs(u64, u64),
}

#[derive(Clone, Debug)]
enum Op {
    Begin {
        process: usize,
        build: bool,
    },
    Append {
        inst: usize,
        stderr: bool,
        chunk: Vec<u8>,
        dt: i64,
    },
    Seal {
        inst: usize,
    },
    Finish {
        inst: usize,
        code: i32,
    },
    Flush,
    /// Close and reopen; with `finish_live`, live instances are finished first, otherwise
    /// they are left live and come back as interrupted.
    Reopen {
        finish_live: bool,
    },
    Read {
        inst: usize,
        win: Win,
        filter: FilterSpec,
    },
    Resolve {
        process: usize,
        build: bool,
        index: i64,
    },
    Search {
        insts: Vec<usize>,
        pattern: usize,
        context: usize,
        head: Option<usize>,
        tail: Option<usize>,
        filter: FilterSpec,
    },
}

// ---- strategies ----

fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "err", "x", "y", "xxy", "ab", "err 1", "7", " "])
            .prop_map(|s| s.as_bytes().to_vec()),
        4 => Just(b"\n".to_vec()),
        2 => Just(b"\r\n".to_vec()),
        1 => Just(b"\r".to_vec()),
        // A full-length line whose "\r\n" may be split across two reads.
        1 => Just([vec![b'L'; MAX_LINE], b"\r".to_vec()].concat()),
        1 => prop::sample::select(vec![vec![0xffu8], vec![0xc3], vec![0xfe, 0xff, b'b']]),
        2 => prop_oneof![
            // Right at the cut points, and anywhere.
            prop::sample::select(vec![MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, 2 * MAX_LINE]),
            1..3 * MAX_LINE,
        ]
        .prop_map(|n| {
            (0..n)
                .map(|i| if i % 10 == 9 { b'0' + (i / 10 % 10) as u8 } else { b'L' })
                .collect()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..8),
    ]
}

fn chunk() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(fragment(), 0..8).prop_map(|v| v.concat())
}

fn filter_spec() -> impl Strategy<Value = FilterSpec> {
    let t = || prop::option::weighted(0.3, 0..30i64);
    (prop::option::weighted(0.4, any::<bool>()), t(), t()).prop_map(|(stream, since, until)| {
        FilterSpec {
            stream,
            since,
            until,
        }
    })
}

fn window() -> impl Strategy<Value = Win> {
    prop_oneof![
        (0..15usize).prop_map(Win::Tail),
        (0..15usize).prop_map(Win::Head),
        (0..40u64, 0..25u64).prop_map(|(from, len)| Win::Seqs(from, from + len)),
        Just(Win::Head(usize::MAX)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let limit = prop::option::weighted(0.4, 0..6usize);
    prop_oneof![
        3 => (0..PROCS.len(), any::<bool>())
            .prop_map(|(process, build)| Op::Begin { process, build }),
        10 => (any::<usize>(), any::<bool>(), chunk(), 0..4i64)
            .prop_map(|(inst, stderr, chunk, dt)| Op::Append { inst, stderr, chunk, dt }),
        3 => any::<usize>().prop_map(|inst| Op::Seal { inst }),
        2 => (any::<usize>(), -1..3i32).prop_map(|(inst, code)| Op::Finish { inst, code }),
        1 => Just(Op::Flush),
        1 => any::<bool>().prop_map(|finish_live| Op::Reopen { finish_live }),
        4 => (any::<usize>(), window(), filter_spec())
            .prop_map(|(inst, win, filter)| Op::Read { inst, win, filter }),
        2 => (0..PROCS.len(), any::<bool>(), -4..4i64)
            .prop_map(|(process, build, index)| Op::Resolve { process, build, index }),
        3 => (
            prop::collection::vec(any::<usize>(), 0..4),
            0..PATTERNS.len(),
            0..4usize,
            limit.clone(),
            limit,
            filter_spec(),
        )
            .prop_map(|(insts, pattern, context, head, tail, filter)| Op::Search {
                insts,
                pattern,
                context,
                head,
                tail,
                filter,
            }),
    ]
}

// ---- the harness ----

struct Harness {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: Option<Store>,
    insts: Vec<MInstance>,
    ts: i64,
}

fn kind_of(build: bool) -> InstanceKind {
    if build {
        InstanceKind::Build
    } else {
        InstanceKind::Run
    }
}

fn open(path: &Path) -> bpm::logs::Opened {
    Store::open(path, options()).unwrap()
}

impl Harness {
    fn new() -> Harness {
        let dir = tempdir();
        let path = dir.path().join("logs.redb");
        let opened = open(&path);
        assert!(!opened.unclean && opened.interrupted.is_empty());
        Harness {
            _dir: dir,
            path,
            store: Some(opened.store),
            insts: Vec::new(),
            ts: 0,
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    fn live_index(&self, pick: usize) -> Option<usize> {
        let live: Vec<usize> = (0..self.insts.len())
            .filter(|&i| self.insts[i].exit.is_none())
            .collect();
        (!live.is_empty()).then(|| live[pick % live.len()])
    }

    fn ids_of(&self, process: &str, kind: InstanceKind) -> Vec<u64> {
        self.insts
            .iter()
            .filter(|m| m.process == process && m.kind == kind)
            .map(|m| m.id)
            .collect()
    }

    fn finish(&mut self, i: usize, code: i32) {
        let m = &mut self.insts[i];
        let w = m.writer.take().unwrap();
        w.finish(ExitStatus::Code(code)).unwrap();
        m.finish_streams();
        m.exit = Some(ExitStatus::Code(code));
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Begin { process, build } => {
                let process = PROCS[*process];
                let kind = kind_of(*build);
                let w = self
                    .store()
                    .begin_instance(process, kind, SpawnInfo::default())
                    .unwrap();
                let id = w.id();
                if let Some(last) = self.insts.last() {
                    prop_assert!(id > last.id, "ids grow: {} after {}", id, last.id);
                }
                self.insts.push(MInstance {
                    id,
                    process,
                    kind,
                    lines: Vec::new(),
                    framers: Default::default(),
                    exit: None,
                    writer: Some(w),
                });
            }
            Op::Append {
                inst,
                stderr,
                chunk,
                dt,
            } => {
                let Some(i) = self.live_index(*inst) else {
                    return Ok(());
                };
                self.ts += dt;
                let stream = if *stderr {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                };
                let m = &mut self.insts[i];
                m.writer
                    .as_ref()
                    .unwrap()
                    .append_at(stream, chunk, T0 + self.ts);
                m.feed(stream, chunk, T0 + self.ts);
                prop_assert_eq!(m.writer.as_ref().unwrap().next_seq(), m.lines.len() as u64);
            }
            Op::Seal { inst } => {
                if let Some(i) = self.live_index(*inst) {
                    self.insts[i].writer.as_ref().unwrap().seal();
                }
            }
            Op::Finish { inst, code } => {
                if let Some(i) = self.live_index(*inst) {
                    self.finish(i, *code);
                }
            }
            Op::Flush => self.store().flush().unwrap(),
            Op::Reopen { finish_live } => self.reopen(*finish_live)?,
            Op::Read { inst, win, filter } => {
                if !self.insts.is_empty() {
                    self.check_read(*inst % self.insts.len(), *win, filter)?;
                }
            }
            Op::Resolve {
                process,
                build,
                index,
            } => self.check_resolve(PROCS[*process], kind_of(*build), *index)?,
            Op::Search {
                insts,
                pattern,
                context,
                head,
                tail,
                filter,
            } => {
                if !self.insts.is_empty() {
                    let picked: Vec<usize> = insts.iter().map(|i| i % self.insts.len()).collect();
                    self.check_search(&picked, PATTERNS[*pattern], *context, *head, *tail, filter)?;
                }
            }
        }
        Ok(())
    }

    fn reopen(&mut self, finish_live: bool) -> Result<(), TestCaseError> {
        let live: Vec<usize> = (0..self.insts.len())
            .filter(|&i| self.insts[i].exit.is_none())
            .collect();
        if finish_live {
            for &i in &live {
                self.finish(i, 0);
            }
        }
        self.store.take().unwrap().close().unwrap();
        let mut interrupted = Vec::new();
        for m in &mut self.insts {
            if m.exit.is_none() {
                // Left live: its complete lines are kept, its unfinished line is lost.
                m.writer = None;
                m.framers = Default::default();
                m.exit = Some(ExitStatus::Unknown);
                interrupted.push(m.id);
            }
        }
        let opened = open(&self.path);
        prop_assert!(!opened.unclean, "closed cleanly");
        let got: Vec<(u64, Option<ExitStatus>)> = opened
            .interrupted
            .iter()
            .map(|m| (m.id, m.exit.clone()))
            .collect();
        let want: Vec<(u64, Option<ExitStatus>)> = interrupted
            .iter()
            .map(|&id| (id, Some(ExitStatus::Unknown)))
            .collect();
        prop_assert_eq!(got, want);
        self.store = Some(opened.store);
        self.check_all()
    }

    /// Every instance in full, and every instance list.
    fn check_all(&self) -> Result<(), TestCaseError> {
        for i in 0..self.insts.len() {
            self.check_read(
                i,
                Win::Head(usize::MAX),
                &FilterSpec {
                    stream: None,
                    since: None,
                    until: None,
                },
            )?;
        }
        // Time windows that cut through the lines, bounds included.
        let (a, b) = (self.ts / 3, self.ts * 2 / 3);
        for (since, until) in [(a, a), (b, b), (a, b)] {
            for i in 0..self.insts.len() {
                let spec = FilterSpec {
                    stream: None,
                    since: Some(since),
                    until: Some(until),
                };
                self.check_read(i, Win::Head(usize::MAX), &spec)?;
            }
        }
        for p in PROCS {
            for kind in [InstanceKind::Run, InstanceKind::Build] {
                self.check_instances(p, kind)?;
            }
        }
        // Every pattern over every instance, with some context.
        let all: Vec<usize> = (0..self.insts.len()).collect();
        let none = FilterSpec {
            stream: None,
            since: None,
            until: None,
        };
        let stdout = FilterSpec {
            stream: Some(false),
            ..none
        };
        for (k, pattern) in PATTERNS.iter().enumerate() {
            let filter = if k % 2 == 0 { &none } else { &stdout };
            self.check_search(&all, pattern, 1 + k % 3, None, None, filter)?;
        }
        Ok(())
    }

    fn check_instances(&self, process: &str, kind: InstanceKind) -> Result<(), TestCaseError> {
        let got: Vec<(u64, bool, Option<ExitStatus>, u64)> = self
            .store()
            .instances(process, kind)
            .unwrap()
            .iter()
            .map(|m| (m.id, m.is_live(), m.exit.clone(), m.next_seq))
            .collect();
        let want: Vec<(u64, bool, Option<ExitStatus>, u64)> = self
            .insts
            .iter()
            .filter(|m| m.process == process && m.kind == kind)
            .map(|m| (m.id, m.exit.is_none(), m.exit.clone(), m.lines.len() as u64))
            .collect();
        prop_assert_eq!(got, want, "instances({}, {:?})", process, kind);
        Ok(())
    }

    fn check_read(&self, i: usize, win: Win, spec: &FilterSpec) -> Result<(), TestCaseError> {
        let m = &self.insts[i];
        let window = match win {
            Win::Tail(n) => Window::Tail(n),
            Win::Head(n) => Window::Head(n),
            Win::Seqs(from, to) => Window::Seqs { from, to },
        };
        let got: Vec<MLine> = self
            .store()
            .read(m.id, window, &spec.filter())
            .unwrap()
            .iter()
            .map(from_store)
            .collect();
        let acc: Vec<MLine> = m
            .lines
            .iter()
            .filter(|l| spec.accepts(l))
            .cloned()
            .collect();
        let want: Vec<MLine> = match win {
            Win::Tail(n) => acc[acc.len().saturating_sub(n)..].to_vec(),
            Win::Head(n) => acc.into_iter().take(n).collect(),
            Win::Seqs(from, to) => acc
                .into_iter()
                .filter(|l| l.seq >= from && l.seq < to)
                .collect(),
        };
        prop_assert_eq!(got, want, "read #{} {:?} {:?}", m.id, win, spec);
        Ok(())
    }

    fn check_resolve(
        &self,
        process: &str,
        kind: InstanceKind,
        index: i64,
    ) -> Result<(), TestCaseError> {
        self.check_instances(process, kind)?;
        let ids = self.ids_of(process, kind);
        let n = ids.len() as i64;
        let i = if index < 0 { n + index } else { index };
        let got = self.store().resolve(process, kind, index);
        match got {
            Ok(meta) => {
                prop_assert!(
                    (0..n).contains(&i),
                    "resolved {} of {}: {:?}",
                    index,
                    n,
                    meta
                );
                prop_assert_eq!(meta.id, ids[i as usize]);
                self.check_meta(&meta)?;
            }
            Err(StoreError::NoInstances { .. }) => prop_assert_eq!(n, 0),
            Err(StoreError::IndexOutOfRange { count, .. }) => {
                prop_assert!(n > 0 && !(0..n).contains(&i));
                prop_assert_eq!(count as i64, n);
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
        Ok(())
    }

    fn check_meta(&self, meta: &InstanceMeta) -> Result<(), TestCaseError> {
        let m = self.insts.iter().find(|m| m.id == meta.id).unwrap();
        prop_assert_eq!(meta.process.as_str(), m.process);
        prop_assert_eq!(meta.kind, m.kind);
        prop_assert_eq!(&meta.exit, &m.exit);
        prop_assert_eq!(meta.is_live(), m.exit.is_none());
        prop_assert_eq!(meta.next_seq, m.lines.len() as u64);
        prop_assert_eq!(meta.first_seq, 0);
        Ok(())
    }

    fn check_search(
        &self,
        picked: &[usize],
        pattern: &str,
        context: usize,
        head: Option<usize>,
        tail: Option<usize>,
        spec: &FilterSpec,
    ) -> Result<(), TestCaseError> {
        let q = Query {
            pattern: pattern.to_owned(),
            case_insensitive: false,
            context,
            head,
            tail,
            filter: spec.filter(),
        };
        let ids: Vec<u64> = picked.iter().map(|&i| self.insts[i].id).collect();
        let r = search::search(self.store(), &ids, &q).unwrap();
        let got: Vec<(MLine, bool)> = r
            .hits
            .iter()
            .map(|h| (from_store(&h.line), h.matched))
            .collect();

        // The model: filter, then match each line on its own, then context, then limit.
        let re = Regex::new(pattern).unwrap();
        let mut all: Vec<(MLine, bool)> = Vec::new();
        let mut matched = 0u64;
        for &i in picked {
            let acc: Vec<&MLine> = self.insts[i]
                .lines
                .iter()
                .filter(|l| spec.accepts(l))
                .collect();
            // A line is matched as it reads on a terminal: with escape codes, on the
            // text without them.
            let reads = |b: &[u8]| {
                if b.contains(&0x1b) {
                    strip_ansi_escapes::strip(b)
                } else {
                    b.to_vec()
                }
            };
            let is: Vec<bool> = acc.iter().map(|l| re.is_match(&reads(&l.bytes))).collect();
            matched += is.iter().filter(|&&b| b).count() as u64;
            for (k, l) in acc.iter().enumerate() {
                let lo = k.saturating_sub(context);
                let hi = (k + context).min(acc.len() - 1);
                if is[k] || (lo..=hi).any(|j| is[j]) {
                    all.push(((*l).clone(), is[k]));
                }
            }
        }
        let total = all.len() as u64;
        let want: Vec<(MLine, bool)> = match (head, tail) {
            (Some(h), _) => all.into_iter().take(h).collect(),
            (None, Some(t)) => all[all.len().saturating_sub(t)..].to_vec(),
            (None, None) => all,
        };
        prop_assert_eq!(
            &got,
            &want,
            "search {:?} in {:?} ctx {} head {:?} tail {:?} {:?}",
            pattern,
            ids,
            context,
            head,
            tail,
            spec
        );
        prop_assert_eq!(r.matched, matched);
        prop_assert_eq!(r.total, total);
        prop_assert_eq!(r.omitted, total - got.len() as u64);
        Ok(())
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_answers_like_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let mut h = Harness::new();
        for op in &ops {
            h.apply(op)?;
        }
        h.check_all()?;
        // And once more from the store alone.
        h.reopen(true)?;
        h.store.take().unwrap().close().unwrap();
    }

    /// Retention by count: after all runs and builds of a process ended, the newest
    /// `keep_instances` runs and `keep_builds` builds are left, in order.
    #[test]
    fn keep_instances_keeps_the_newest(
        keep_runs in 1..4u32,
        keep_builds in 1..3u32,
        kinds in prop::collection::vec(any::<bool>(), 1..10),
    ) {
        let dir = tempdir();
        let store = Store::open(
            &dir.path().join("s.redb"),
            StoreOptions {
                limits: Limits { keep_instances: keep_runs, keep_builds, max_bytes: 1 << 40 },
                ..StoreOptions::default()
            },
        )
        .unwrap()
        .store;
        let (mut runs, mut builds) = (Vec::new(), Vec::new());
        for build in kinds {
            let w = store.begin_instance("p", kind_of(build), SpawnInfo::default()).unwrap();
            w.append(Stream::Stdout, b"hello\n");
            if build { builds.push(w.id()) } else { runs.push(w.id()) }
            w.finish(ExitStatus::Code(0)).unwrap();
        }
        let want_runs = runs[runs.len().saturating_sub(keep_runs as usize)..].to_vec();
        let want_builds = builds[builds.len().saturating_sub(keep_builds as usize)..].to_vec();
        let ids = |kind| -> Vec<u64> {
            store.instances("p", kind).unwrap().iter().map(|m| m.id).collect()
        };
        // Retention runs in the writer after the commits: wait for its effect.
        wait_for(
            &format!("retention to leave the runs {want_runs:?} and the builds {want_builds:?}"),
            || ids(InstanceKind::Run) == want_runs && ids(InstanceKind::Build) == want_builds,
        );
        // The removed instances' lines are gone, the kept ones' are whole.
        for id in runs.iter().chain(&builds) {
            let lines = store.read(*id, Window::Head(10), &Filter::default()).unwrap();
            let kept = want_runs.contains(id) || want_builds.contains(id);
            prop_assert_eq!(lines.len(), usize::from(kept));
        }
        store.close().unwrap();
    }
}
