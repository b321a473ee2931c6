//! The TUI's state and what keys and answers do to it: pure functions, testable without
//! a terminal or a daemon. A key or an answer changes the [`App`] and returns the
//! [`Cmd`]s to carry out (calls to the daemon or the store); their answers come back as
//! [`Msg`]s. Nothing here waits or does input/output.
//!
//! - [`output`]: the output panel's window of one instance's lines (never the whole
//!   instance), fed by the follow stream at the live end and by range reads elsewhere.
//! - [`instances`]: the selected process, and which of its runs or builds is shown.
//! - [`search`]: `/`, `n`, `N` through the daemon's search of the whole instance.
//! - [`filter`]: `&`, only the matching lines, followed live.
//! - `keys`: what keys and the mouse do.

use crossterm_keys::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};

use crate::protocol::{FollowRecord, InstanceSummary, LogLine, ProcessReport, StatusReport};

mod filter;
mod instances;
mod keys;
mod output;
mod search;
#[cfg(test)]
mod tests;

pub use filter::{FILTER_LINES, FilterView};
pub use output::{CACHE_LINES, Output};
pub use search::Search;

/// The key types, re-exported so that tests build key events without naming crossterm.
pub mod crossterm_keys {
    pub use ratatui::crossterm::event::{
        KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind,
    };
}

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

/// A pattern being typed: for a search (`/`), or for the filter (`&` with no search).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prompt {
    pub text: String,
    pub filter: bool,
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
    /// The newest [`FILTER_LINES`] matching lines; then, when `live`, the matching lines
    /// as they are printed, until [`Cmd::Unfilter`] or the next `Filter`.
    Filter {
        name: String,
        build: bool,
        instance: u64,
        pattern: String,
        live: bool,
        epoch: u64,
        generation: u64,
    },
    /// Stop following the filter's matches.
    Unfilter,
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
    /// The filter's search: the newest matches, and how many match in all.
    Filtered {
        epoch: u64,
        generation: u64,
        lines: Vec<LogLine>,
        matched: u64,
    },
    /// Matches printed since the filter's search.
    FilterFollow {
        epoch: u64,
        generation: u64,
        records: Vec<FollowRecord>,
    },
    FilterEnded {
        epoch: u64,
        generation: u64,
    },
    /// A start, stop or restart finished: what to say, and whether it failed.
    Done {
        text: String,
        error: bool,
    },
    /// A read failed.
    Error(String),
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
    /// The pattern being typed.
    pub prompt: Option<Prompt>,
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

    /// Take an answer in; the commands it leads to. Answers about the output panel
    /// carry the epoch they were asked in, and are dropped when it has moved on.
    pub fn update(&mut self, msg: Msg) -> Vec<Cmd> {
        let now = self.out.epoch;
        let current = |epoch: u64| epoch == now;
        match msg {
            Msg::Conn(c) => {
                let was_online = self.conn.online();
                self.conn = c;
                if was_online != self.conn.online() && self.out.process.is_some() {
                    // Reconnected (or lost): follow again, or read from the store instead.
                    self.out.runs.clear();
                    self.out.builds.clear();
                    return self.show_newest();
                }
            }
            Msg::Status(r) => return self.take_status(r),
            Msg::Instances {
                epoch,
                runs,
                builds,
            } if current(epoch) => return self.take_instances(runs, builds),
            Msg::Follow { epoch, records } if current(epoch) => return self.take_follow(records),
            Msg::FollowEnded { epoch } if current(epoch) => self.out.streaming = false,
            Msg::Lines {
                epoch,
                range,
                lines,
            } if current(epoch) => self.take_lines(range, lines),
            Msg::Found {
                epoch,
                seq,
                wrapped,
            } if current(epoch) => self.take_found(seq, wrapped),
            Msg::Counted { epoch, matched } if current(epoch) => {
                if let Some(s) = &mut self.out.search {
                    s.matches = Some(matched);
                }
            }
            Msg::Filtered {
                epoch,
                generation,
                lines,
                matched,
            } => self.take_filtered(epoch, generation, lines, matched),
            Msg::FilterFollow {
                epoch,
                generation,
                records,
            } => self.take_filter_follow(epoch, generation, records),
            Msg::FilterEnded { epoch, generation } => self.filter_ended(epoch, generation),
            Msg::Done { text, error } => {
                self.busy = None;
                self.say(text, error);
                let mut cmds = vec![Cmd::Status];
                // Built and restarted: back to the runs (a failed build stays in view,
                // its errors on screen).
                if std::mem::take(&mut self.auto_build) && !error && self.out.build {
                    self.out.build = false;
                    cmds.extend(self.show_newest());
                }
                return cmds;
            }
            Msg::Error(e) => {
                self.out.wanted = None;
                self.say(e, true);
            }
            // An answer for what is no longer shown.
            _ => {}
        }
        Vec::new()
    }
}
