//! The output panel's window of lines: one instance of the selected process, held in
//! memory only around what is shown, fed by the follow stream at the live end and by
//! range reads anywhere else.

use std::collections::VecDeque;

use super::filter::FilterView;
use super::search::Search;
use super::{App, Cmd};
use crate::protocol::{ExitStatus, FollowRecord, InstanceSummary, LogLine};

/// The most lines the output panel keeps in memory (a window of an instance).
pub const CACHE_LINES: usize = 20_000;

/// The output panel: one instance of the selected process, and the window of its lines
/// held in memory.
#[derive(Clone, Debug, Default)]
pub struct Output {
    pub process: Option<String>,
    /// Viewing builds instead of runs.
    pub build: bool,
    pub runs: Vec<InstanceSummary>,
    pub builds: Vec<InstanceSummary>,
    /// The instance shown (its stable number); `None` until known.
    pub instance: Option<u64>,
    /// The instance shown is the newest of its kind, fed by the follow stream.
    pub live: bool,
    /// A follow stream was asked for and has not ended.
    pub streaming: bool,
    /// Sequence numbers of the instance's lines: `first..end`.
    pub first: u64,
    pub end: u64,
    /// Lines in memory: `start..start + lines.len()`.
    pub lines: VecDeque<LogLine>,
    pub start: u64,
    /// Keep the view at the end (new lines scroll in).
    pub follow: bool,
    /// First line shown when not following.
    pub top: u64,
    /// Lines before this are hidden (`c`).
    pub cleared: u64,
    /// Bumped whenever what is shown changes identity (process, instance).
    pub epoch: u64,
    /// A range read under way.
    pub wanted: Option<(u64, u64)>,
    /// How the instance ended, when it has (from the follow stream or its summary).
    pub ended: Option<ExitStatus>,
    pub search: Option<Search>,
    /// Only the lines matching the search (`&`), in place of the window.
    pub filter: Option<FilterView>,
}

impl Output {
    /// The instances of the kind shown, oldest first.
    pub fn list(&self) -> &[InstanceSummary] {
        if self.build { &self.builds } else { &self.runs }
    }

    /// The instance shown, as summarized, and its position in [`Self::list`].
    pub fn summary(&self) -> Option<(usize, &InstanceSummary)> {
        let id = self.instance?;
        self.list().iter().enumerate().find(|(_, s)| s.id == id)
    }

    /// The sequence numbers shown in a panel of `h` lines: `from..to`.
    pub fn visible(&self, h: usize) -> (u64, u64) {
        let lo = self.first.max(self.cleared).min(self.end);
        let h = h as u64;
        let bottom = self.end.saturating_sub(h).max(lo);
        let from = if self.follow {
            bottom
        } else {
            self.top.clamp(lo, bottom)
        };
        (from, (from + h).min(self.end))
    }

    /// A line held in memory.
    pub fn line(&self, seq: u64) -> Option<&LogLine> {
        let i = seq.checked_sub(self.start)?;
        self.lines.get(usize::try_from(i).ok()?)
    }

    fn has(&self, from: u64, to: u64) -> bool {
        from >= to || (from >= self.start && to <= self.start + self.lines.len() as u64)
    }

    /// Take lines in: appended when they continue the window, merged when they overlap
    /// it, else they replace it. Keeps at most [`CACHE_LINES`], dropping from the end
    /// farther from what is shown.
    pub(super) fn take(&mut self, lines: Vec<LogLine>, h: usize) {
        let Some(first) = lines.first().map(|l| l.seq) else {
            return;
        };
        let last = lines.last().map_or(first, |l| l.seq);
        let cur_end = self.start + self.lines.len() as u64;
        if self.lines.is_empty() || first > cur_end || last + 1 < self.start {
            self.lines = lines.into();
            self.start = first;
        } else {
            for l in lines {
                let end = self.start + self.lines.len() as u64;
                if l.seq == end {
                    self.lines.push_back(l);
                } else if l.seq + 1 == self.start {
                    self.lines.push_front(l);
                    self.start -= 1;
                } else if l.seq >= self.start && l.seq < end {
                    // Already held (a read racing the follow stream).
                } else if l.seq < self.start {
                    // Before the window with a gap: only reached for unordered input.
                    self.start = l.seq;
                    self.lines = VecDeque::from([l]);
                } else {
                    self.lines.clear();
                    self.start = l.seq;
                    self.lines.push_back(l);
                }
            }
        }
        self.end = self.end.max(self.start + self.lines.len() as u64);
        self.trim(h);
    }

    fn trim(&mut self, h: usize) {
        if self.lines.len() <= CACHE_LINES {
            return;
        }
        let (from, _) = self.visible(h);
        let excess = self.lines.len() - CACHE_LINES;
        let mid = self.start + self.lines.len() as u64 / 2;
        if from >= mid {
            self.lines.drain(..excess);
            self.start += excess as u64;
        } else {
            self.lines.truncate(CACHE_LINES);
        }
    }

    /// Forget the lines and the instance (another process or instance is shown). A
    /// filter stays on; it is read again for what is shown next.
    pub(super) fn reset(&mut self) {
        self.epoch += 1;
        self.clear_lines();
        self.follow = true;
    }

    /// Forget the lines (a new instance follows in the same stream).
    pub(super) fn clear_lines(&mut self) {
        self.lines.clear();
        self.start = 0;
        self.first = 0;
        self.end = 0;
        self.top = 0;
        self.cleared = 0;
        self.wanted = None;
        self.ended = None;
        if let Some(s) = &mut self.search {
            s.matches = None;
            s.current = None;
        }
    }
}

impl App {
    /// What the view needs read: the lines shown that are not in memory (with a margin),
    /// or the filter's matches for an instance it has not read yet.
    pub fn wants(&mut self) -> Option<Cmd> {
        if self.out.filter.is_some() {
            return self.filter_wants();
        }
        let o = &self.out;
        let (id, name) = (o.instance?, o.process.clone()?);
        let (from, to) = o.visible(self.height);
        if o.has(from, to) {
            return None;
        }
        let h = self.height.max(1) as u64;
        let lo = o.first.max(o.cleared);
        let want = (from.saturating_sub(h * 2).max(lo), (to + h * 2).min(o.end));
        if let Some((wf, wt)) = o.wanted
            && wf <= from
            && wt >= to
        {
            return None;
        }
        self.out.wanted = Some(want);
        Some(Cmd::Range {
            name,
            build: self.out.build,
            instance: id,
            from: want.0,
            to: want.1,
            epoch: self.out.epoch,
        })
    }

    /// The follow stream's records: lines of the instance shown, a new instance (a
    /// restart, in the same stream), its end.
    pub(super) fn take_follow(&mut self, records: Vec<FollowRecord>) -> Vec<Cmd> {
        let mut cmds = Vec::new();
        let mut batch: Vec<LogLine> = Vec::new();
        for r in records {
            match r {
                FollowRecord::Instance { instance, .. } => {
                    if !batch.is_empty() {
                        self.out.take(std::mem::take(&mut batch), self.height);
                    }
                    if self.out.instance != Some(instance) {
                        if self.out.instance.is_some() {
                            // A restart: the new instance starts empty; the same
                            // stream goes on.
                            self.out.clear_lines();
                        }
                        self.out.instance = Some(instance);
                        cmds.extend(self.recount());
                        cmds.extend(self.instances_cmd());
                    }
                }
                FollowRecord::Line(l) => {
                    if Some(l.instance) == self.out.instance {
                        batch.push(l);
                    }
                }
                FollowRecord::Exit {
                    status, instance, ..
                } if Some(instance) == self.out.instance => {
                    if !batch.is_empty() {
                        self.out.take(std::mem::take(&mut batch), self.height);
                    }
                    self.out.ended = Some(status);
                    cmds.extend(self.instances_cmd());
                }
                FollowRecord::Exit { .. } => {}
            }
        }
        if !batch.is_empty() {
            // Live lines join the window only where it reaches the end.
            let at_end = self.out.lines.is_empty()
                || self.out.start + self.out.lines.len() as u64 >= self.out.end;
            if at_end {
                self.out.take(batch, self.height);
            } else if let Some(l) = batch.last() {
                self.out.end = self.out.end.max(l.seq + 1);
            }
        }
        cmds
    }

    /// The answer of a [`Cmd::Tail`] (`range` none) or a [`Cmd::Range`].
    pub(super) fn take_lines(&mut self, range: Option<(u64, u64)>, lines: Vec<LogLine>) {
        if self.out.wanted == range {
            self.out.wanted = None;
        }
        match range {
            None => {
                // A tail: its last line is the instance's end.
                if let Some(l) = lines.last() {
                    self.out.end = self.out.end.max(l.seq + 1);
                    let count = self.out.summary().map_or(0, |(_, s)| s.lines);
                    self.out.first = self.out.end.saturating_sub(count);
                }
            }
            Some((from, to)) => {
                // Lines missing at the start of a range: the instance's head was cut
                // by retention.
                let got_from = lines.first().map_or(to, |l| l.seq);
                if from <= self.out.first && got_from > self.out.first {
                    self.out.first = got_from.min(self.out.end);
                }
            }
        }
        self.out.take(lines, self.height);
    }
}
