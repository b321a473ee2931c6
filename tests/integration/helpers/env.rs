//! The CLI's test environment: a project and a data directory, `bpm` commands run in
//! them, and the daemons they start stopped at the end.

use std::process::{Command, Output};

use nix::sys::signal::Signal;
use serde_json::Value;

use super::api::process_in;
use super::daemon::{DaemonOf, Dirs, Served};
use super::process::{self, Spawned};

/// A project and a data directory (see [`Dirs::bpm`] for the environment of the `bpm`
/// commands). On drop, stops the daemon named in `daemon.json` (an autostarted one, or
/// one started with [`Env::serve`]) and waits until it is gone.
pub struct Env {
    pub dirs: Dirs,
    pub served: Vec<Served>,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dirs: Dirs::new(),
            served: Vec::new(),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        self.dirs.bpm(args)
    }

    pub fn bpm(&self, args: &[&str]) -> Output {
        process::output(&mut self.cmd(args))
    }

    /// Run a command that must succeed; its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.bpm(args);
        assert!(
            out.status.success(),
            "bpm {args:?} failed ({:?}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[track_caller]
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// A command printing NDJSON (`--json` added), parsed line by line.
    #[track_caller]
    pub fn ndjson(&self, args: &[&str]) -> Vec<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        self.ok(&a)
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON record ({e}): {l}"))
            })
            .collect()
    }

    /// A `bpm` client left running, its output collected; killed on drop.
    pub fn spawn(&self, args: &[&str]) -> Spawned {
        Spawned::new(&mut self.cmd(args), Signal::SIGKILL)
    }

    /// `bpm serve --port 0` of the project, as a child of the test; its pid once it
    /// answers.
    pub fn serve(&mut self) -> u32 {
        let daemon = Served::start(&self.dirs);
        daemon.wait_listening();
        let pid = daemon.pid();
        self.served.push(daemon);
        pid
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.dirs.daemon_pid()
    }

    pub fn write_config(&self, body: &str) {
        self.dirs.write_config(body);
    }

    /// One process of `bpm status --json` (`Null` if there is none of that name).
    pub fn process(&self, name: &str) -> Value {
        process_in(&self.json(&["status"]), name)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // An autostarted daemon; then the served ones (their guards SIGTERM them).
        drop(DaemonOf(self.dirs.data.clone()));
        self.served.clear();
    }
}
