//! The filter (`&`): only the lines that match the search. Its lines come from the
//! daemon's search of the whole instance shown (the newest [`FILTER_LINES`] matches),
//! then, while that instance is live, from a follow stream of its matching lines, so
//! new matches scroll in as they are printed. Esc (or `&` again) leaves it.

use std::collections::VecDeque;

use super::{App, Cmd, Prompt};
use crate::protocol::{FollowRecord, LogLine};

/// Matches a filter view holds (the newest ones).
pub const FILTER_LINES: usize = 5_000;

/// The filter view: only matching lines.
#[derive(Clone, Debug, Default)]
pub struct FilterView {
    /// The instance whose matches are held (`None` until read).
    pub instance: Option<u64>,
    /// Which read this is: answers to an earlier one (another pattern or instance) are
    /// dropped.
    pub generation: u64,
    /// The newest matches, oldest first; at most [`FILTER_LINES`].
    pub lines: VecDeque<LogLine>,
    /// Matching lines in the instance (more than held when over [`FILTER_LINES`]).
    pub matched: u64,
    /// Index of the first line shown; `None`: the end (new matches scroll in).
    pub top: Option<usize>,
    /// The search's answer has not come yet.
    pub loading: bool,
    /// New matches are followed as they are printed.
    pub live: bool,
}

impl FilterView {
    /// A live match: appended unless the search's answer already had it.
    fn push(&mut self, l: LogLine) {
        if self.lines.back().is_some_and(|b| b.seq >= l.seq) {
            return;
        }
        self.lines.push_back(l);
        self.matched += 1;
        if self.lines.len() > FILTER_LINES {
            self.lines.pop_front();
            // Keep a scrolled-back view on the same lines.
            if let Some(t) = &mut self.top {
                *t = t.saturating_sub(1);
            }
        }
    }
}

impl App {
    /// `&`: the filter on (with the search's pattern, or one typed now), or off.
    pub(super) fn toggle_filter(&mut self) -> Vec<Cmd> {
        if self.out.filter.is_some() {
            return self.leave_filter();
        }
        if self.out.search.is_none() {
            self.prompt = Some(Prompt {
                text: String::new(),
                filter: true,
            });
            return Vec::new();
        }
        self.out.filter = Some(FilterView::default());
        self.reload_filter()
    }

    /// `f` in the filter: hold the view where it is, or follow the newest matches again.
    pub(super) fn pause_filter(&mut self) {
        let h = self.height;
        if let Some(f) = &mut self.out.filter {
            f.top = match f.top {
                Some(_) => None,
                None => Some(f.lines.len().saturating_sub(h)),
            };
        }
    }

    /// The filter off; its follow stream ends.
    pub(super) fn leave_filter(&mut self) -> Vec<Cmd> {
        let Some(f) = self.out.filter.take() else {
            return Vec::new();
        };
        // The filter counted the matches as they came: the search's count is as new.
        if let Some(s) = &mut self.out.search
            && f.instance == self.out.instance
            && !f.loading
        {
            s.matches = Some(f.matched);
        }
        vec![Cmd::Unfilter]
    }

    /// Read the filter's matches again (a new pattern).
    pub(super) fn reload_filter(&mut self) -> Vec<Cmd> {
        if let Some(f) = &mut self.out.filter {
            f.instance = None;
        }
        self.filter_wants().into_iter().collect()
    }

    /// The read the filter needs: the matches of the instance shown, when it holds
    /// another instance's (or none yet).
    pub(super) fn filter_wants(&mut self) -> Option<Cmd> {
        let id = self.out.instance?;
        let name = self.out.process.clone()?;
        let pattern = self.out.search.as_ref()?.pattern.clone();
        let live = self.out.live && self.conn.online();
        let f = self.out.filter.as_mut()?;
        if f.instance == Some(id) {
            return None;
        }
        *f = FilterView {
            instance: Some(id),
            generation: f.generation + 1,
            loading: true,
            live,
            ..FilterView::default()
        };
        Some(Cmd::Filter {
            name,
            build: self.out.build,
            instance: id,
            pattern,
            live,
            epoch: self.out.epoch,
            generation: f.generation,
        })
    }

    /// The filter's answers are for the view and the read in effect.
    fn filter_for(&mut self, epoch: u64, generation: u64) -> Option<&mut FilterView> {
        if epoch != self.out.epoch {
            return None;
        }
        self.out
            .filter
            .as_mut()
            .filter(|f| f.generation == generation)
    }

    /// The search's answer: the newest matches, and how many there are in all.
    pub(super) fn take_filtered(
        &mut self,
        epoch: u64,
        generation: u64,
        lines: Vec<LogLine>,
        matched: u64,
    ) {
        if let Some(f) = self.filter_for(epoch, generation) {
            f.lines = lines.into();
            f.matched = matched;
            f.loading = false;
        }
    }

    /// Matches printed since the search: appended (the search read them, or the
    /// stream brings them, never both).
    pub(super) fn take_filter_follow(
        &mut self,
        epoch: u64,
        generation: u64,
        records: Vec<FollowRecord>,
    ) {
        let Some(f) = self.filter_for(epoch, generation) else {
            return;
        };
        for r in records {
            // Another instance's matches (a restart) come with their own read, once
            // the output shows that instance.
            if let FollowRecord::Line(l) = r
                && Some(l.instance) == f.instance
            {
                f.push(l);
            }
        }
    }

    /// The filter's follow stream ended (the instance ended, or the daemon went away).
    pub(super) fn filter_ended(&mut self, epoch: u64, generation: u64) {
        if let Some(f) = self.filter_for(epoch, generation) {
            f.live = false;
        }
    }
}
