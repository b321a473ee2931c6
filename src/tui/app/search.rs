//! `/`, `n`, `N`: a regex searched through the whole instance shown by the daemon's
//! search (or the store's, offline), not only through the lines in memory. The view
//! jumps to each match; the matches on screen are highlighted.

use super::{App, Cmd};

/// The search in effect.
#[derive(Clone, Debug)]
pub struct Search {
    pub pattern: String,
    /// For highlighting; `None` when the pattern is not a valid regex.
    pub re: Option<regex::Regex>,
    /// Matching lines in the instance, once counted.
    pub matches: Option<u64>,
    /// The match jumped to last.
    pub current: Option<u64>,
    pub forward: bool,
}

impl App {
    /// A pattern typed after `/` (or `&`): search it, and jump to the nearest match
    /// (the newest when following, else the next one below the view). With the filter
    /// on, the filter shows the new pattern's matches instead.
    pub(super) fn start_search(&mut self, pattern: String) -> Vec<Cmd> {
        if pattern.is_empty() {
            self.out.search = None;
            return self.leave_filter();
        }
        let re = match regex::RegexBuilder::new(&pattern).multi_line(true).build() {
            Ok(re) => re,
            Err(e) => {
                self.say(format!("bad regex: {e}"), true);
                return Vec::new();
            }
        };
        let forward = !self.out.follow;
        self.out.search = Some(Search {
            pattern,
            re: Some(re),
            matches: None,
            current: None,
            forward,
        });
        let mut cmds: Vec<Cmd> = self.recount().into_iter().collect();
        if self.out.filter.is_some() {
            cmds.extend(self.reload_filter());
            return cmds;
        }
        let (from, _) = self.out.visible(self.height);
        let from = if forward { from } else { self.out.end };
        cmds.extend(self.find(from, forward));
        cmds
    }

    /// Count the search's matches in the instance shown (after it changed).
    pub(super) fn recount(&self) -> Option<Cmd> {
        let s = self.out.search.as_ref()?;
        Some(Cmd::Count {
            name: self.out.process.clone()?,
            build: self.out.build,
            instance: self.out.instance?,
            pattern: s.pattern.clone(),
            epoch: self.out.epoch,
        })
    }

    fn find(&self, from: u64, forward: bool) -> Vec<Cmd> {
        let (Some(id), Some(name), Some(s)) = (
            self.out.instance,
            self.out.process.clone(),
            self.out.search.as_ref(),
        ) else {
            return Vec::new();
        };
        vec![Cmd::Find {
            name,
            build: self.out.build,
            instance: id,
            pattern: s.pattern.clone(),
            from,
            forward,
            epoch: self.out.epoch,
        }]
    }

    /// `n` (newer) and `N` (older): the next match from the last one (or the view).
    pub(super) fn find_next(&mut self, forward: bool) -> Vec<Cmd> {
        let Some(s) = &self.out.search else {
            self.say("no search: type / and a pattern", false);
            return Vec::new();
        };
        if self.out.filter.is_some() {
            // Every line in the filter matches: n and N page through them.
            let page = self.height.saturating_sub(1).max(1) as i64;
            self.scroll(if forward { page } else { -page });
            return Vec::new();
        }
        let (from_view, _) = self.out.visible(self.height);
        let from = match (s.current, forward) {
            (Some(c), true) => c + 1,
            (Some(c), false) => c,
            (None, true) => from_view,
            (None, false) => self.out.end,
        };
        self.find(from, forward)
    }

    /// Where the next match is (a [`Cmd::Find`]'s answer): show it a third down the
    /// panel.
    pub(super) fn take_found(&mut self, seq: Option<u64>, wrapped: bool) {
        let Some(s) = &mut self.out.search else {
            return;
        };
        let pattern = s.pattern.clone();
        match seq {
            Some(seq) => {
                s.current = Some(seq);
                self.out.follow = false;
                self.out.top = seq.saturating_sub(self.height as u64 / 3);
                if wrapped {
                    self.say(format!("/{pattern}: search wrapped around"), false);
                }
            }
            None => self.say(format!("/{pattern}: no line matches"), true),
        }
    }
}
