//! Process probes and guards: whether a pid runs, signals, children whose output is
//! collected as it comes, and cleanup that happens also when a test panics.

use std::io::BufRead as _;
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{umask_shared, wait_for};

/// Whether `pid` runs: it exists and is not a zombie (exited, not yet reaped) or dead.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`; comm may hold spaces and parentheses, so the last `)`.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
}

/// Send `sig` to `pid`; fails the test if it cannot be sent.
#[track_caller]
pub fn signal(pid: u32, sig: Signal) {
    if let Err(e) = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig) {
        panic!("cannot send {sig} to pid {pid}: {e}");
    }
}

/// Send `sig` to `pid` if it still runs, for cleanup (no failure if it is gone).
pub fn signal_if_alive(pid: u32, sig: Signal) {
    if alive(pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
    }
}

/// Wait until `pid` no longer runs.
#[track_caller]
pub fn wait_gone(what: &str, pid: u32) {
    wait_for(what, || !alive(pid));
}

/// SIGTERM `pid` (a process this test started, directly or not) and wait until it is
/// gone; SIGKILL it if it outlasts the deadline. Returns whether SIGTERM sufficed.
pub fn terminate(pid: u32) -> bool {
    signal_if_alive(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        if Instant::now() > deadline {
            signal_if_alive(pid, Signal::SIGKILL);
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Spawn `cmd` (under the umask guard, see [`super::umask_shared`]).
pub fn spawn(cmd: &mut Command) -> Child {
    let _umask = umask_shared();
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"))
}

/// Run `cmd` to its end and collect its output (under the umask guard).
pub fn output(cmd: &mut Command) -> Output {
    // The guard only covers the fork: hold it while spawning, not while waiting.
    let child = spawn(
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    child.wait_with_output().unwrap()
}

/// The start time of `pid` (field 22 of `/proc/PID/stat`, in clock ticks since boot):
/// with the pid, it names one process even after the pid is reused.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the comm: field 3 (state) is the first, so field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// SIGKILLs a process, or a whole process group, on drop if it still runs (the same
/// process: its start time is checked, so a reused pid is left alone): for what a test
/// leaves behind on purpose (an orphan of a killed daemon), in case the test fails before
/// the orphan is cleaned up.
pub struct KillOnDrop {
    pid: u32,
    start: Option<u64>,
    group: bool,
}

impl KillOnDrop {
    pub fn process(pid: u32) -> KillOnDrop {
        KillOnDrop {
            pid,
            start: start_time(pid),
            group: false,
        }
    }
    /// The group whose leader is `pgid`.
    pub fn group(pgid: u32) -> KillOnDrop {
        KillOnDrop {
            pid: pgid,
            start: start_time(pgid),
            group: true,
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.pid as i32);
        match start_time(self.pid) {
            // The same leader: its process, or its group.
            now @ Some(_) if now == self.start => {
                if self.group {
                    let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
                } else {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                }
            }
            // The leader is gone but its group may live on; a group id is not reused
            // while the group has members, so this reaches only what is left of it.
            None if self.group && self.start.is_some() => {
                let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
            }
            // Gone, or the pid now names another process.
            _ => {}
        }
    }
}

/// A child of the test, SIGKILLed and reaped on drop if it still runs.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A child of the test whose stdout and stderr are collected as they come. On drop, if it
/// still runs, it gets `stop_with` (then SIGKILL if it outlasts the deadline) and is
/// reaped.
pub struct Spawned {
    child: Option<Child>,
    stop_with: Signal,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Spawned {
    /// Spawn `cmd` with stdout and stderr piped and collected.
    pub fn new(cmd: &mut Command, stop_with: Signal) -> Spawned {
        let mut child = spawn(
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped()),
        );
        let collect = |r: Box<dyn std::io::Read + Send>| {
            let buf = Arc::new(Mutex::new(String::new()));
            let b = buf.clone();
            let reader = std::thread::spawn(move || {
                for line in std::io::BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    let mut b = b.lock().unwrap();
                    b.push_str(&line);
                    b.push('\n');
                }
            });
            (buf, reader)
        };
        let (out, r1) = collect(Box::new(child.stdout.take().unwrap()));
        let (err, r2) = collect(Box::new(child.stderr.take().unwrap()));
        Spawned {
            child: Some(child),
            stop_with,
            out,
            err,
            readers: vec![r1, r2],
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not yet waited for").id()
    }

    /// Its stdout so far.
    pub fn out(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Its stderr so far.
    pub fn err(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Wait until its stdout contains `needle`.
    #[track_caller]
    pub fn wait_out(&self, what: &str, needle: &str) {
        wait_for(what, || self.out().contains(needle));
    }

    /// Wait until its stderr contains `needle`.
    #[track_caller]
    pub fn wait_err(&self, what: &str, needle: &str) {
        wait_for(what, || self.err().contains(needle));
    }

    /// Its exit status, if it has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .expect("not yet waited for")
            .try_wait()
            .unwrap()
    }

    /// Wait until it exits.
    #[track_caller]
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_for("the process to exit", || self.try_wait())
    }

    /// Send `sig` to it.
    #[track_caller]
    pub fn signal(&self, sig: Signal) {
        signal(self.pid(), sig);
    }

    /// Wait for its end and return its whole output, for a process expected to exit by
    /// itself.
    #[track_caller]
    pub fn wait_with_output(mut self) -> (ExitStatus, String, String) {
        let status = self.wait_exit();
        // Its pipes close when it (and anything that inherited them) is gone.
        wait_for("the end of its output", || {
            self.readers.iter().all(|r| r.is_finished())
        });
        (status, self.out(), self.err())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let pid = child.id();
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), self.stop_with);
            let deadline = Instant::now() + Duration::from_secs(20);
            while let Ok(None) = child.try_wait() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.wait();
    }
}
