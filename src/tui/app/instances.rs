//! Which process and which of its instances the output shows: selecting a process,
//! walking its runs and builds (`[`, `]`, `b`), and keeping up with new instances the
//! status or the follow stream announce.

use super::{App, Cmd};
use crate::protocol::{InstanceSummary, State, StatusReport};

impl App {
    /// Select a process (by position) and start showing its newest run.
    pub(super) fn select(&mut self, i: usize) -> Vec<Cmd> {
        let Some(name) = self.processes().get(i).map(|p| p.status.name.clone()) else {
            return Vec::new();
        };
        if self.selected.as_deref() == Some(&name) && self.out.process.as_deref() == Some(&name) {
            return Vec::new();
        }
        self.selected = Some(name.clone());
        self.out.process = Some(name);
        self.out.build = false;
        self.out.runs.clear();
        self.out.builds.clear();
        self.out.instance = None;
        self.out.reset();
        self.show_newest()
    }

    /// Show the newest instance of the kind in view, live.
    pub(super) fn show_newest(&mut self) -> Vec<Cmd> {
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

    pub(super) fn tail_cmd(&self, id: u64) -> Cmd {
        Cmd::Tail {
            name: self.out.process.clone().unwrap_or_default(),
            build: self.out.build,
            instance: id,
            tail: (self.height * 2).max(100),
            epoch: self.out.epoch,
        }
    }

    /// Read the instance lists again (a new instance, or one that ended).
    pub(super) fn instances_cmd(&self) -> Option<Cmd> {
        Some(Cmd::Instances {
            name: self.out.process.clone()?,
            epoch: self.out.epoch,
        })
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

    /// `[` (earlier) and `]` (later): the neighbouring instance of the kind in view.
    pub(super) fn step_instance(&mut self, d: i64) -> Vec<Cmd> {
        let n = self.out.list().len();
        if n == 0 {
            return Vec::new();
        }
        let pos = self.out.summary().map_or(n - 1, |(i, _)| i) as i64;
        let next = (pos + d).clamp(0, n as i64 - 1) as usize;
        if next as i64 == pos {
            let what = if self.out.build { "build" } else { "run" };
            let msg = if d < 0 {
                format!("this is the oldest {what} kept")
            } else {
                format!("this is the newest {what}")
            };
            self.say(msg, false);
            return Vec::new();
        }
        self.show_instance(next)
    }

    /// `b`: the builds instead of the runs, and back.
    pub(super) fn toggle_builds(&mut self) -> Vec<Cmd> {
        if self.out.process.is_none() {
            return Vec::new();
        }
        self.out.build = !self.out.build;
        self.show_newest()
    }

    /// A new status: keep the selection, and notice new runs and builds of the
    /// selected process.
    pub(super) fn take_status(&mut self, r: StatusReport) -> Vec<Cmd> {
        self.report = r;
        let Some((_, p)) = self.current() else {
            if self.report.processes.is_empty() {
                self.selected = None;
                return Vec::new();
            }
            return self.select(0);
        };
        let building = p.status.building || p.status.state == State::Building;
        let has_run = p.status.instance.is_some();
        // A new run the follow stream has not announced yet (or offline): refresh the
        // instance lists.
        let newest = self.out.runs.last().map(|s| s.id);
        let stale = has_run && p.status.instance != newest;
        // A restart that builds: show the build as it happens.
        let to_build = self
            .busy
            .as_deref()
            .is_some_and(|b| b.starts_with("restarting"))
            && building
            && !self.out.build;
        // Nothing followed (no run yet, or a build that ended): follow again once there
        // is something new.
        let refollow = self.conn.online()
            && self.out.live
            && !self.out.streaming
            && if self.out.build { building } else { has_run };
        if to_build {
            self.auto_build = true;
            self.out.build = true;
            self.show_newest()
        } else if refollow {
            self.show_newest()
        } else if stale {
            self.instances_cmd().into_iter().collect()
        } else {
            Vec::new()
        }
    }

    /// The instance lists of the process shown.
    pub(super) fn take_instances(
        &mut self,
        runs: Vec<InstanceSummary>,
        builds: Vec<InstanceSummary>,
    ) -> Vec<Cmd> {
        let mut cmds = Vec::new();
        self.out.runs = runs;
        self.out.builds = builds;
        if self.out.live && self.out.instance.is_none() {
            let newest = self.out.list().last().map(|s| s.id);
            self.out.instance = newest;
            cmds.extend(self.recount());
            if !self.conn.online()
                && let Some(id) = newest
            {
                cmds.push(self.tail_cmd(id));
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
        cmds
    }
}
