//! The TUI's state and what keys and answers do to it: pure functions, testable without
//! a terminal or a daemon. A key or an answer changes the [`App`] and returns the
//! [`Cmd`]s to carry out (calls to the daemon or the store); their answers come back as
//! [`Msg`]s. Nothing here waits or does input/output.
//!
//! The output panel never holds a whole instance: [`Output`] keeps a window of lines
//! (contiguous by sequence number) around what is shown, fed by the follow stream at the
//! live end and by range reads ([`Cmd::Range`]) anywhere else.

use std::collections::VecDeque;

use crossterm_keys::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};

use crate::protocol::{
    ExitStatus, FollowRecord, InstanceSummary, LogLine, ProcessReport, State, StatusReport,
};

mod keys;

/// The key types, re-exported so that tests build key events without naming crossterm.
pub mod crossterm_keys {
    pub use ratatui::crossterm::event::{
        KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind,
    };
}

/// The most lines the output panel keeps in memory (a window of an instance).
pub const CACHE_LINES: usize = 20_000;
/// Matches a filter view shows (the newest ones).
pub const FILTER_LINES: usize = 5_000;

/// How the TUI reaches the daemon, as the status panel says it.
#[derive(Clone, Debug, PartialEq)]
pub enum Conn {
    Connecting,
    Online {
        address: String,
    },
    /// No daemon answers; what is shown was read from the store, read-only.
    Offline {
        store: String,
        /// A daemon answered before and went away.
        lost: bool,
    },
    /// No daemon answers and there is nothing to read (no store, or a remote daemon).
    Disconnected {
        address: String,
        error: String,
    },
}

impl Conn {
    pub fn online(&self) -> bool {
        matches!(self, Conn::Online { .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    List,
    Output,
}

/// The last action's result, for the status panel.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub text: String,
    pub error: bool,
}

/// What a key or an answer asks to be done. `epoch` tags reads of the output panel: an
/// answer for another generation (the selection or instance changed since) is dropped.
#[derive(Clone, Debug, PartialEq)]
pub enum Cmd {
    /// Read the status now (besides the periodic refresh).
    Status,
    /// Read a process's instance lists (runs and builds).
    Instances {
        name: String,
        epoch: u64,
    },
    /// Follow the newest instance (of runs, or builds) live, from its last `tail` lines,
    /// replacing any other follow stream.
    Follow {
        name: String,
        build: bool,
        tail: u64,
        epoch: u64,
    },
    /// Stop following.
    Unfollow,
    /// The last `tail` lines of an instance that is not live.
    Tail {
        name: String,
        build: bool,
        instance: u64,
        tail: usize,
        epoch: u64,
    },
    /// Lines `from <= seq < to` of an instance.
    Range {
        name: String,
        build: bool,
        instance: u64,
        from: u64,
        to: u64,
        epoch: u64,
    },
    /// The next match of `pattern` at or after `from` (`forward`), else the last before
    /// `from`; wrapping around the instance when there is none.
    Find {
        name: String,
        build: bool,
        instance: u64,
        pattern: String,
        from: u64,
        forward: bool,
        epoch: u64,
    },
    /// How many lines of the instance match.
    Count {
        name: String,
        build: bool,
        instance: u64,
        pattern: String,
        epoch: u64,
    },
    /// The newest [`FILTER_LINES`] matching lines.
    Filter {
        name: String,
        build: bool,
        instance: u64,
        pattern: String,
        epoch: u64,
    },
    Restart(String),
    Stop(String),
    Start(String),
}

/// What comes back.
#[derive(Clone, Debug)]
pub enum Msg {
    Conn(Conn),
    Status(StatusReport),
    Instances {
        epoch: u64,
        runs: Vec<InstanceSummary>,
        builds: Vec<InstanceSummary>,
    },
    Follow {
        epoch: u64,
        records: Vec<FollowRecord>,
    },
    /// The follow stream ended (the daemon went away, or the instance only the store
    /// knows reached its end).
    FollowEnded {
        epoch: u64,
    },
    Lines {
        epoch: u64,
        /// The range asked for (none for a tail).
        range: Option<(u64, u64)>,
        lines: Vec<LogLine>,
    },
    Found {
        epoch: u64,
        seq: Option<u64>,
        wrapped: bool,
    },
    Counted {
        epoch: u64,
        matched: u64,
    },
    Filtered {
        epoch: u64,
        lines: Vec<LogLine>,
        matched: u64,
    },
    /// A start, stop or restart finished: what to say, and whether it failed.
    Done {
        text: String,
        error: bool,
    },
    /// A read failed.
    Error(String),
}

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

/// The filter view: only matching lines.
#[derive(Clone, Debug, Default)]
pub struct FilterView {
    pub lines: Vec<LogLine>,
    pub matched: u64,
    /// Index of the first line shown; `None`: the end.
    pub top: Option<usize>,
    pub loading: bool,
}

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
    fn take(&mut self, lines: Vec<LogLine>, h: usize) {
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
                    let mut front: VecDeque<LogLine> = VecDeque::new();
                    front.push_back(l);
                    self.start = front[0].seq;
                    self.lines = front;
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

    /// Forget the lines and the instance (another process or instance is shown).
    fn reset(&mut self) {
        self.epoch += 1;
        self.clear_lines();
        self.follow = true;
        self.filter = None;
    }

    /// Forget the lines (a new instance follows in the same stream).
    fn clear_lines(&mut self) {
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

/// The whole TUI's state.
#[derive(Debug)]
pub struct App {
    pub conn: Conn,
    pub report: StatusReport,
    /// The selected process, by name (a selection survives refreshes and reordering).
    pub selected: Option<String>,
    pub focus: Focus,
    pub notice: Option<Notice>,
    /// An action under way ("restarting web").
    pub busy: Option<String>,
    /// A stop waiting for `y`.
    pub confirm: Option<String>,
    /// The output switched to the builds by itself for a restart under way (and goes
    /// back to the runs when it succeeds).
    pub auto_build: bool,
    /// The search being typed.
    pub prompt: Option<String>,
    pub help: bool,
    pub timestamps: bool,
    pub color: bool,
    pub out: Output,
    /// Lines the output panel shows (set from the terminal's size).
    pub height: usize,
    /// Now, in Unix ms (for countdowns); set by the event loop, fixed in tests.
    pub now_ms: i64,
    pub quit: bool,
}

impl App {
    pub fn new(color: bool) -> App {
        App {
            conn: Conn::Connecting,
            report: StatusReport::empty(),
            selected: None,
            focus: Focus::List,
            notice: None,
            busy: None,
            confirm: None,
            auto_build: false,
            prompt: None,
            help: false,
            timestamps: false,
            color,
            out: Output {
                follow: true,
                ..Output::default()
            },
            height: 20,
            now_ms: 0,
            quit: false,
        }
    }

    pub fn processes(&self) -> &[ProcessReport] {
        &self.report.processes
    }

    /// The selected process's report and its position.
    pub fn current(&self) -> Option<(usize, &ProcessReport)> {
        let name = self.selected.as_deref()?;
        self.processes()
            .iter()
            .enumerate()
            .find(|(_, p)| p.status.name == name)
    }

    fn say(&mut self, text: impl Into<String>, error: bool) {
        self.notice = Some(Notice {
            text: text.into(),
            error,
        });
    }

    /// Select a process (by position) and start showing its newest run.
    fn select(&mut self, i: usize) -> Vec<Cmd> {
        let Some(name) = self.processes().get(i).map(|p| p.status.name.clone()) else {
            return Vec::new();
        };
        if self.selected.as_deref() == Some(&name) && self.out.process.as_deref() == Some(&name) {
            return Vec::new();
        }
        self.selected = Some(name.clone());
        self.out.process = Some(name.clone());
        self.out.build = false;
        self.out.runs.clear();
        self.out.builds.clear();
        self.out.instance = None;
        self.out.reset();
        self.show_newest()
    }

    /// Show the newest instance of the kind in view, live.
    fn show_newest(&mut self) -> Vec<Cmd> {
        let Some(name) = self.out.process.clone() else {
            return Vec::new();
        };
        self.out.reset();
        self.out.live = true;
        let epoch = self.out.epoch;
        let build = self.out.build;
        self.out.instance = self.out.list().last().map(|s| s.id);
        let mut cmds = vec![Cmd::Instances {
            name: name.clone(),
            epoch,
        }];
        cmds.extend(self.recount());
        self.out.streaming = self.conn.online();
        if self.conn.online() {
            cmds.push(Cmd::Follow {
                name,
                build,
                tail: (self.height as u64 * 2).max(100),
                epoch,
            });
        } else {
            cmds.push(Cmd::Unfollow);
            // Offline: the newest instance's tail, once the list says which it is.
            if let Some(id) = self.out.instance {
                cmds.push(self.tail_cmd(id));
            }
        }
        cmds
    }

    fn tail_cmd(&self, id: u64) -> Cmd {
        Cmd::Tail {
            name: self.out.process.clone().unwrap_or_default(),
            build: self.out.build,
            instance: id,
            tail: (self.height * 2).max(100),
            epoch: self.out.epoch,
        }
    }

    /// Show the instance at `pos` of the list in view (not live unless it is the newest).
    fn show_instance(&mut self, pos: usize) -> Vec<Cmd> {
        let n = self.out.list().len();
        if pos + 1 >= n {
            return self.show_newest();
        }
        let Some(s) = self.out.list().get(pos).cloned() else {
            return Vec::new();
        };
        self.out.reset();
        self.out.live = false;
        self.out.streaming = false;
        self.out.instance = Some(s.id);
        self.out.ended = s.exit.clone();
        let mut cmds = vec![Cmd::Unfollow, self.tail_cmd(s.id)];
        cmds.extend(self.recount());
        cmds
    }

    /// Count the search's matches in the instance shown (after it changed).
    fn recount(&self) -> Option<Cmd> {
        let s = self.out.search.as_ref()?;
        Some(Cmd::Count {
            name: self.out.process.clone()?,
            build: self.out.build,
            instance: self.out.instance?,
            pattern: s.pattern.clone(),
            epoch: self.out.epoch,
        })
    }

    /// What the view needs read: the lines shown that are not in memory (with a margin).
    pub fn wants(&mut self) -> Option<Cmd> {
        let o = &self.out;
        if o.filter.is_some() {
            return None;
        }
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

    /// Take an answer in; the commands it leads to.
    pub fn update(&mut self, msg: Msg) -> Vec<Cmd> {
        let mut cmds = Vec::new();
        match msg {
            Msg::Conn(c) => {
                let was_online = self.conn.online();
                let now_online = c.online();
                self.conn = c;
                if was_online != now_online && self.out.process.is_some() {
                    // Reconnected (or lost): follow again, or read from the store instead.
                    self.out.runs.clear();
                    self.out.builds.clear();
                    cmds.extend(self.show_newest());
                }
            }
            Msg::Status(r) => {
                self.report = r;
                let still_there = self.current().is_some();
                if !still_there {
                    if !self.report.processes.is_empty() {
                        cmds.extend(self.select(0));
                    } else {
                        self.selected = None;
                    }
                } else if let Some((_, p)) = self.current() {
                    let building = p.status.building || p.status.state == State::Building;
                    let has_run = p.status.instance.is_some();
                    // A new run the follow stream has not announced yet (or offline):
                    // refresh the instance lists.
                    let newest = self.out.runs.last().map(|s| s.id);
                    let stale = has_run && p.status.instance != newest;
                    // A restart that builds: show the build as it happens.
                    let to_build = self
                        .busy
                        .as_deref()
                        .is_some_and(|b| b.starts_with("restarting"))
                        && building
                        && !self.out.build;
                    // Nothing followed (no run yet, or a build that ended): follow again
                    // once there is something new.
                    let refollow = self.conn.online()
                        && self.out.live
                        && !self.out.streaming
                        && if self.out.build { building } else { has_run };
                    if to_build {
                        self.auto_build = true;
                        self.out.build = true;
                        cmds.extend(self.show_newest());
                    } else if refollow {
                        cmds.extend(self.show_newest());
                    } else if stale && let Some(name) = self.out.process.clone() {
                        cmds.push(Cmd::Instances {
                            name,
                            epoch: self.out.epoch,
                        });
                    }
                }
            }
            Msg::Instances {
                epoch,
                runs,
                builds,
            } => {
                if epoch != self.out.epoch {
                    return cmds;
                }
                self.out.runs = runs;
                self.out.builds = builds;
                if self.out.live {
                    let newest = self.out.list().last().map(|s| s.id);
                    if self.out.instance.is_none() {
                        self.out.instance = newest;
                        cmds.extend(self.recount());
                        if !self.conn.online()
                            && let Some(id) = newest
                        {
                            cmds.push(self.tail_cmd(id));
                        }
                    }
                }
                if let Some((ended, exit, lines)) = self
                    .out
                    .summary()
                    .map(|(_, s)| (s.ended.is_some(), s.exit.clone(), s.lines))
                {
                    if ended {
                        self.out.ended = exit;
                    }
                    // Lines counted: the extent of an instance not yet read.
                    if self.out.end == 0 && self.out.lines.is_empty() && !self.out.live {
                        self.out.end = lines;
                    }
                }
            }
            Msg::Follow { epoch, records } => {
                if epoch != self.out.epoch {
                    return cmds;
                }
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
                                if let Some(name) = self.out.process.clone() {
                                    cmds.push(Cmd::Instances {
                                        name,
                                        epoch: self.out.epoch,
                                    });
                                }
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
                            if let Some(name) = self.out.process.clone() {
                                cmds.push(Cmd::Instances {
                                    name,
                                    epoch: self.out.epoch,
                                });
                            }
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
            }
            Msg::FollowEnded { epoch } => {
                if epoch == self.out.epoch {
                    self.out.streaming = false;
                }
            }
            Msg::Lines {
                epoch,
                range,
                lines,
            } => {
                if epoch != self.out.epoch {
                    return cmds;
                }
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
                        self.out.take(lines, self.height);
                    }
                    Some((from, to)) => {
                        // Lines missing at the start of a range: the instance's head
                        // was cut by retention.
                        let got_from = lines.first().map_or(to, |l| l.seq);
                        if from <= self.out.first && got_from > self.out.first {
                            self.out.first = got_from.min(self.out.end);
                        }
                        self.out.take(lines, self.height);
                    }
                }
            }
            Msg::Found {
                epoch,
                seq,
                wrapped,
            } => {
                if epoch != self.out.epoch {
                    return cmds;
                }
                let Some(s) = &mut self.out.search else {
                    return cmds;
                };
                match seq {
                    Some(seq) => {
                        s.current = Some(seq);
                        let pattern = s.pattern.clone();
                        self.out.follow = false;
                        self.out.top = seq.saturating_sub(self.height as u64 / 3);
                        if wrapped {
                            self.say(format!("/{pattern}: search wrapped around"), false);
                        }
                    }
                    None => {
                        let p = s.pattern.clone();
                        self.say(format!("/{p}: no line matches"), true);
                    }
                }
            }
            Msg::Counted { epoch, matched } => {
                if epoch == self.out.epoch
                    && let Some(s) = &mut self.out.search
                {
                    s.matches = Some(matched);
                }
            }
            Msg::Filtered {
                epoch,
                lines,
                matched,
            } => {
                if epoch == self.out.epoch
                    && let Some(f) = &mut self.out.filter
                {
                    f.lines = lines;
                    f.matched = matched;
                    f.loading = false;
                }
            }
            Msg::Done { text, error } => {
                self.busy = None;
                self.say(text, error);
                cmds.push(Cmd::Status);
                // Built and restarted: back to the runs (a failed build stays in view,
                // its errors on screen).
                if std::mem::take(&mut self.auto_build) && !error && self.out.build {
                    self.out.build = false;
                    cmds.extend(self.show_newest());
                }
            }
            Msg::Error(e) => {
                self.out.wanted = None;
                self.say(e, true);
            }
        }
        cmds
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Mode, Status, Stream};

    pub fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    fn code(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn proc(name: &str, state: State) -> ProcessReport {
        ProcessReport {
            status: Status {
                name: name.into(),
                state,
                pid: Some(42),
                pgid: Some(42),
                started_at: None,
                restarts: 0,
                crash_count: 0,
                last_exit: None,
                instance: Some(1),
                ready: None,
                building: false,
                last_error: None,
            },
            argv: vec!["sleep".into(), "1".into()],
            cwd: "/".into(),
            runtime: true,
            uptime_seconds: Some(5.0),
            run_instances: 1,
            run_number: Some(1),
            build_instances: 0,
            ports: Vec::new(),
            url: None,
            recent_events: vec![],
        }
    }

    fn line(seq: u64) -> LogLine {
        LogLine {
            process: None,
            instance: 1,
            seq,
            ts: "2026-01-01T00:00:00.000Z".into(),
            ts_us: 0,
            stream: Stream::Stdout,
            matched: false,
            continuation: false,
            text: format!("line {seq}"),
        }
    }

    fn online_app() -> App {
        let mut app = App::new(false);
        app.height = 10;
        app.update(Msg::Conn(Conn::Online {
            address: "sock".into(),
        }));
        app
    }

    fn report(procs: Vec<ProcessReport>) -> StatusReport {
        StatusReport {
            mode: Mode::Dev,
            processes: procs,
            ..StatusReport::empty()
        }
    }

    #[test]
    fn the_first_status_selects_and_follows_the_first_process() {
        let mut app = online_app();
        let cmds = app.update(Msg::Status(report(vec![
            proc("api", State::Running),
            proc("web", State::Running),
        ])));
        assert_eq!(app.selected.as_deref(), Some("api"));
        assert!(
            cmds.iter()
                .any(|c| matches!(c, Cmd::Follow { name, .. } if name == "api"))
        );
        let cmds = app.key(key('j'));
        assert_eq!(app.selected.as_deref(), Some("web"));
        assert!(
            cmds.iter()
                .any(|c| matches!(c, Cmd::Follow { name, .. } if name == "web"))
        );
        // At the end of the list, j does nothing.
        assert!(app.key(code(KeyCode::Down)).is_empty());
        app.key(key('k'));
        assert_eq!(app.selected.as_deref(), Some("api"));
    }

    #[test]
    fn stop_asks_first_and_restart_does_not() {
        let mut app = online_app();
        app.update(Msg::Status(report(vec![proc("api", State::Running)])));
        assert!(app.key(key('s')).is_empty());
        assert_eq!(app.confirm.as_deref(), Some("api"));
        assert!(
            app.key(key('n')).is_empty(),
            "anything but y keeps it running"
        );
        app.key(key('s'));
        assert_eq!(app.key(key('y')), vec![Cmd::Stop("api".into())]);
        app.update(Msg::Done {
            text: "stopped".into(),
            error: false,
        });
        assert_eq!(app.key(key('r')), vec![Cmd::Restart("api".into())]);
        assert_eq!(app.busy.as_deref(), Some("restarting api"));
    }

    #[test]
    fn offline_the_store_is_read_only() {
        let mut app = App::new(false);
        app.update(Msg::Conn(Conn::Offline {
            store: "s".into(),
            lost: false,
        }));
        app.update(Msg::Status(report(vec![proc("api", State::Stopped)])));
        assert!(app.key(key('r')).is_empty());
        assert!(app.notice.as_ref().unwrap().error);
    }

    #[test]
    fn live_lines_stream_in_and_scrolling_back_reads_ranges() {
        let mut app = online_app();
        app.update(Msg::Status(report(vec![proc("api", State::Running)])));
        let epoch = app.out.epoch;
        let mut records = vec![FollowRecord::Instance {
            process: "api".into(),
            instance: 1,
            number: 1,
            pid: None,
            started: String::new(),
            started_us: 0,
            switch: false,
            ended_us: None,
            exit: None,
        }];
        records.extend((999_000..1_000_000).map(|s| FollowRecord::Line(line(s))));
        app.update(Msg::Follow { epoch, records });
        assert_eq!(app.out.end, 1_000_000);
        assert_eq!(app.out.visible(10), (999_990, 1_000_000));
        assert!(app.wants().is_none(), "the end is in memory");
        // The top of a million-line instance is read as a range, not the whole.
        app.key(key('g'));
        let Some(Cmd::Range { from, to, .. }) = app.wants() else {
            panic!("a range read")
        };
        assert_eq!((from, to), (0, 30));
        assert!(app.wants().is_none(), "asked once");
        app.update(Msg::Lines {
            epoch,
            range: Some((0, 30)),
            lines: (0..30).map(line).collect(),
        });
        assert_eq!(app.out.line(0).unwrap().text, "line 0");
        // Live lines keep coming while the top is shown; G goes back to them.
        app.update(Msg::Follow {
            epoch,
            records: vec![FollowRecord::Line(line(1_000_000))],
        });
        assert_eq!(app.out.end, 1_000_001);
        assert_eq!(app.out.visible(10), (0, 10));
        app.key(key('G'));
        assert!(app.out.follow);
        assert!(matches!(
            app.wants(),
            Some(Cmd::Range { to: 1_000_001, .. })
        ));
    }

    #[test]
    fn the_window_in_memory_is_bounded() {
        let mut app = online_app();
        app.update(Msg::Status(report(vec![proc("api", State::Running)])));
        let epoch = app.out.epoch;
        for chunk in 0..10u64 {
            let records = (chunk * 10_000..(chunk + 1) * 10_000)
                .map(|s| FollowRecord::Line(line(s)))
                .collect();
            app.out.instance = Some(1);
            app.update(Msg::Follow { epoch, records });
        }
        assert!(app.out.lines.len() <= CACHE_LINES);
        assert_eq!(app.out.end, 100_000);
        assert_eq!(app.out.line(99_999).unwrap().seq, 99_999);
    }

    #[test]
    fn a_restart_shows_the_new_instance() {
        let mut app = online_app();
        app.update(Msg::Status(report(vec![proc("api", State::Running)])));
        let epoch = app.out.epoch;
        let inst = |id, switch| FollowRecord::Instance {
            process: "api".into(),
            instance: id,
            number: id,
            pid: None,
            started: String::new(),
            started_us: 0,
            switch,
            ended_us: None,
            exit: None,
        };
        app.update(Msg::Follow {
            epoch,
            records: vec![inst(1, false), FollowRecord::Line(line(0))],
        });
        let mut l = line(0);
        l.instance = 2;
        l.text = "new".into();
        let cmds = app.update(Msg::Follow {
            epoch,
            records: vec![
                FollowRecord::Exit {
                    instance: 1,
                    status: ExitStatus::Signal(15),
                    restarted: true,
                },
                inst(2, true),
                FollowRecord::Line(l),
            ],
        });
        assert_eq!(app.out.instance, Some(2));
        assert_eq!(app.out.epoch, epoch, "the same stream goes on");
        assert_eq!(app.out.line(0).unwrap().text, "new");
        assert!(cmds.iter().any(|c| matches!(c, Cmd::Instances { .. })));
    }

    #[test]
    fn search_jumps_to_matches_and_filter_lists_them() {
        let mut app = online_app();
        app.update(Msg::Status(report(vec![proc("api", State::Running)])));
        app.out.instance = Some(1);
        app.out.end = 1000;
        app.key(key('/'));
        for c in "boot".chars() {
            app.key(key(c));
        }
        let cmds = app.key(code(KeyCode::Enter));
        assert!(cmds.iter().any(|c| matches!(
            c,
            Cmd::Find {
                forward: false,
                from: 1000,
                ..
            }
        )));
        assert!(cmds.iter().any(|c| matches!(c, Cmd::Count { .. })));
        let epoch = app.out.epoch;
        app.update(Msg::Found {
            epoch,
            seq: Some(7),
            wrapped: false,
        });
        assert!(!app.out.follow);
        assert_eq!(app.out.visible(10).0, 4);
        let cmds = app.key(key('n'));
        assert!(matches!(
            cmds[..],
            [Cmd::Find {
                from: 8,
                forward: true,
                ..
            }]
        ));
        let cmds = app.key(key('N'));
        assert!(matches!(
            cmds[..],
            [Cmd::Find {
                from: 7,
                forward: false,
                ..
            }]
        ));
        let cmds = app.key(key('&'));
        assert!(matches!(cmds[..], [Cmd::Filter { .. }]));
        app.key(code(KeyCode::Esc));
        assert!(app.out.filter.is_none());
        // A bad regex is said, not searched.
        app.key(key('/'));
        app.key(key('('));
        assert!(app.key(code(KeyCode::Enter)).is_empty());
        assert!(app.notice.as_ref().unwrap().error);
    }

    #[test]
    fn brackets_walk_the_instances_and_b_the_builds() {
        let mut app = online_app();
        app.update(Msg::Status(report(vec![proc("api", State::Running)])));
        let epoch = app.out.epoch;
        let summary = |id| InstanceSummary {
            number: id,
            id,
            kind: crate::protocol::InstanceKind::Run,
            started: "2026-01-01T00:00:00.000Z".into(),
            ended: None,
            exit: None,
            pid: None,
            lines: 10,
            dropped: 0,
        };
        app.update(Msg::Instances {
            epoch,
            runs: vec![summary(3), summary(5)],
            builds: vec![],
        });
        assert_eq!(app.out.instance, Some(5));
        let cmds = app.key(key('['));
        assert_eq!(app.out.instance, Some(3));
        assert!(!app.out.live);
        assert!(
            cmds.iter()
                .any(|c| matches!(c, Cmd::Tail { instance: 3, .. }))
        );
        assert!(app.key(key('[')).is_empty(), "the oldest kept");
        let cmds = app.key(key(']'));
        assert!(app.out.live);
        assert!(
            cmds.iter()
                .any(|c| matches!(c, Cmd::Follow { build: false, .. }))
        );
        let cmds = app.key(key('b'));
        assert!(app.out.build);
        assert!(
            cmds.iter()
                .any(|c| matches!(c, Cmd::Follow { build: true, .. }))
        );
    }

    #[test]
    fn a_restart_that_builds_shows_the_build_and_then_the_new_run() {
        let mut app = online_app();
        app.update(Msg::Status(report(vec![proc("api", State::Running)])));
        app.key(key('r'));
        let mut p = proc("api", State::Running);
        p.status.building = true;
        let cmds = app.update(Msg::Status(report(vec![p])));
        assert!(app.out.build && app.auto_build);
        assert!(
            cmds.iter()
                .any(|c| matches!(c, Cmd::Follow { build: true, .. }))
        );
        let cmds = app.update(Msg::Done {
            text: "restarted api".into(),
            error: false,
        });
        assert!(!app.out.build);
        assert!(
            cmds.iter()
                .any(|c| matches!(c, Cmd::Follow { build: false, .. }))
        );
        // A failed build stays in view.
        app.key(key('r'));
        let mut p = proc("api", State::Building);
        p.status.building = true;
        app.update(Msg::Status(report(vec![p])));
        app.update(Msg::Done {
            text: "the build of api failed".into(),
            error: true,
        });
        assert!(app.out.build);
    }

    #[test]
    fn help_and_quit() {
        let mut app = online_app();
        app.key(key('?'));
        assert!(app.help);
        app.key(key('x'));
        assert!(!app.help);
        app.key(key('q'));
        assert!(app.quit);
    }
}
