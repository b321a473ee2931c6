//! Process groups: start a command in a group of its own and stop the whole group.
//!
//! Development commands are rarely one process: `npm run dev` starts a shell that starts
//! node that starts esbuild. Signalling only the pid we spawned leaves the rest running
//! (and holding the port), so every managed command gets its own process group and every
//! stop addresses the group. A group is not a wall, though: whatever calls `setsid` leaves
//! it, so a stop addresses a [`Scope`]: the group plus what left it (found through a
//! cgroup, an environment marker or the parent chain, see `scope`).
//!
//! A pid alone does not identify a process for long: the kernel reuses pids (`pid_max` is
//! often 32768). Wherever a pid outlives our ownership of the `Child` (records kept for
//! crash recovery), it is paired with the kernel's start time of the process, and nothing
//! is signalled unless both still match. A group outlives its leader (a wrapper killed by
//! SIGPIPE leaves its server running), and its id stays its own while it has a live
//! member (Linux gives no new process a pid that is a live group's id), so a dead
//! daemon's groups are found by id, bounded by the leader's start time.
//!
//! Liveness of a group deliberately ignores zombies. A member that has exited but not yet
//! been reaped holds no memory, no files and no sockets, and whether it is reaped promptly
//! depends on whoever its parent is (often an init process that reaps lazily), not on us.
//! Our own leader is the exception: the caller owns its `Child`, so it is reaped here.

use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getpgrp};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

pub use super::scope::{Member, Scope, describe};
use tokio::time::{Instant, sleep};

/// The variables systemd sets for the daemon that its processes must not inherit (a
/// process that sets them itself, through its spec, still gets them).
const DAEMON_ONLY_ENV: [&str; 4] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
];

/// How often stops look at the group again. Short enough that a stop is not noticeably
/// slower than the process's own exit, long enough not to matter as load.
const POLL: Duration = Duration::from_millis(10);

/// How long to wait for a SIGKILLed group to disappear before giving up on it. Only a
/// process stuck in an uninterruptible kernel wait (a hung network filesystem) survives
/// SIGKILL for long; the supervisor must not hang with it.
const KILL_WAIT_LIMIT: Duration = Duration::from_secs(10);

/// SIGKILL is sent again this often while waiting, in case a member was mid-fork when the
/// first one was delivered.
const KILL_RESEND: Duration = Duration::from_millis(100);

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnSpec {
    /// Program and arguments; the program is looked up on `PATH` unless it contains a `/`.
    pub argv: Vec<String>,
    /// Working directory of the process.
    pub cwd: PathBuf,
    /// Variables set on top of the environment inherited from the daemon.
    pub env: Vec<(String, String)>,
}

/// A started process and what identifies it.
#[derive(Debug)]
pub struct Spawned {
    /// The leader of the group; the caller owns it and must eventually reap it
    /// ([`stop_group`] does).
    pub child: Child,
    pub pid: u32,
    /// Always equal to `pid`: the process leads a group of its own.
    pub pgid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot). Together with `pid` it
    /// identifies the process across daemon restarts; 0 if `/proc` could not be read.
    pub start_time: u64,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

/// Why a command could not be started. The message is meant for the user as is.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start a process in {}: the command is empty", cwd.display())]
    EmptyCommand { cwd: PathBuf },
    #[error("cannot start `{program}` in {}: {reason}{hint}", cwd.display())]
    Os {
        program: String,
        cwd: PathBuf,
        /// The OS error in words, without Rust's "(os error N)" suffix.
        reason: String,
        /// A guess at the cause, with a leading space, or empty.
        hint: &'static str,
        #[source]
        source: io::Error,
    },
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every member was gone within the grace period after the first signal (or was gone
    /// already).
    Exited,
    /// Something was still running when the grace period ran out, and SIGKILL ended it.
    Killed,
    /// Something survived SIGKILL for ten seconds (a process stuck in the kernel).
    /// It was SIGKILLed and will die when the kernel lets it; the stop gave up waiting.
    Unkillable,
}

/// The result of [`stop_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutcome {
    pub ending: Ending,
    /// The leader's exit status; `None` only if it could not be reaped (an `Unkillable`
    /// leader, or an error from the wait itself).
    pub status: Option<ExitStatus>,
    /// What still ran when the stop gave up (`Unkillable` only).
    pub left: Vec<Member>,
}

/// How [`stop_orphan`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanOutcome {
    /// Nothing of the scope runs (the leader is gone or only its zombie is left, and no
    /// other member runs): nothing was touched.
    NotRunning,
    /// The leader's pid belongs to a different process now (its start time differs) and
    /// nothing else of the scope runs: nothing was touched.
    PidReused,
    /// Members were found and exited within the grace period after `sig`.
    Exited,
    /// Members were found and had to be SIGKILLed.
    Killed,
    /// Members were found, SIGKILLed, and one still ran after ten seconds.
    Unkillable,
}

/// The result of [`stop_orphan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanReport {
    pub outcome: OrphanOutcome,
    /// Every process that was signalled.
    pub stopped: Vec<Member>,
}

impl OrphanOutcome {
    /// Whether something of the recorded scope was still there and was signalled.
    pub fn found(self) -> bool {
        matches!(self, Self::Exited | Self::Killed | Self::Unkillable)
    }
}

/// Start `spec` as the leader of a new process group, stdin from `/dev/null`, stdout and
/// stderr piped.
///
/// The `Child` is not killed on drop: the daemon decides when processes stop, and a
/// dropped handle (a panicking task) must not take a user's server down with it.
pub fn spawn(spec: &SpawnSpec) -> Result<Spawned, SpawnError> {
    let Some((program, args)) = spec.argv.split_first() else {
        return Err(SpawnError::EmptyCommand {
            cwd: spec.cwd.clone(),
        });
    };
    // Held from before the fork until the leader is registered, so that the reaper never
    // takes the exit status of a leader that died at once (see `reaper`).
    let mut leaders = super::reaper::LEADERS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut command = Command::new(program);
    // What systemd told the daemon is the daemon's alone: a child that wrote to the
    // notify socket would speak for it (a server of its own would try to).
    for var in DAEMON_ONLY_ENV {
        command.env_remove(var);
    }
    let mut child = command
        .args(args)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // 0: a new group whose id is the child's pid, set between fork and exec so no
        // grandchild can be started outside it.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|source| os_error(program, spec, source))?;

    let (Some(pid), Some(stdout), Some(stderr)) =
        (child.id(), child.stdout.take(), child.stderr.take())
    else {
        // Cannot happen for a freshly spawned child with piped output; do not leave a
        // process behind that nobody tracks if it ever does.
        let _ = child.start_kill();
        return Err(os_error(
            program,
            spec,
            io::Error::other("the new process has no pid or output pipes"),
        ));
    };
    // The child cannot have been reaped yet (nothing has polled it), so even if it already
    // exited its /proc entry is still there as a zombie and the start time is readable.
    let start_time = proc_start_time(pid).unwrap_or_else(|| {
        tracing::warn!(
            pid,
            "cannot read the start time of a new process from /proc"
        );
        0
    });
    leaders.insert(pid, start_time);
    drop(leaders);
    Ok(Spawned {
        child,
        pid,
        pgid: pid,
        start_time,
        stdout,
        stderr,
    })
}

fn os_error(program: &str, spec: &SpawnSpec, source: io::Error) -> SpawnError {
    let reason = match source.raw_os_error() {
        Some(code) => Errno::from_raw(code).desc().to_string(),
        None => source.to_string(),
    };
    // The kernel says ENOENT both for a missing program and for a missing working
    // directory; tell them apart so the user looks in the right place.
    let hint = match source.kind() {
        io::ErrorKind::NotFound if !spec.cwd.is_dir() => " (the working directory does not exist)",
        io::ErrorKind::NotFound if program.contains('/') => " (check the path to the program)",
        io::ErrorKind::NotFound => " (is it installed and on PATH?)",
        io::ErrorKind::PermissionDenied => {
            " (is the program executable and the working directory accessible?)"
        }
        _ => "",
    };
    SpawnError::Os {
        program: program.to_string(),
        cwd: spec.cwd.clone(),
        reason,
        hint,
        source,
    }
}

/// The fields of `/proc/<pid>/stat` that bpm uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: R, S, D, Z, T, ...
    pub state: char,
    /// Field 4.
    pub ppid: u32,
    /// Field 5.
    pub pgrp: u32,
    /// Field 6.
    pub session: u32,
    /// Field 22, clock ticks since boot.
    pub start_time: u64,
}

/// Parse the contents of `/proc/<pid>/stat`.
///
/// Field 2 is the command name in parentheses, and the name is chosen by the process: it
/// can contain spaces and parentheses. Only the last `)` reliably ends it.
pub(crate) fn parse_stat(content: &str) -> Option<ProcStat> {
    let close = content.rfind(')')?;
    // After the name, fields start at field 3.
    let mut fields = content.get(close + 1..)?.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?; // field 4
    let pgrp = fields.next()?.parse().ok()?; // field 5
    let session = fields.next()?.parse().ok()?; // field 6
    let start_time = fields.nth(15)?.parse().ok()?; // field 22
    Some(ProcStat {
        state,
        ppid,
        pgrp,
        session,
        start_time,
    })
}

/// Read and parse `/proc/<pid>/stat`; `None` if there is no such process (or no `/proc`).
pub(crate) fn read_stat(pid: u32) -> Option<ProcStat> {
    if pid == 0 {
        return None;
    }
    let content = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&content)
}

/// When the process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), or `None` if there is no such process.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    read_stat(pid).map(|s| s.start_time)
}

/// The group as a signal target, refusing the ids that would not mean "one managed
/// group": 0 (our own group), 1 (init), out-of-range values, and our own group by number.
/// A bad record must never turn a stop into killing the daemon.
fn target_group(pgid: u32) -> Option<Pid> {
    let raw = i32::try_from(pgid).ok().filter(|&p| p > 1)?;
    let pid = Pid::from_raw(raw);
    (pid != getpgrp()).then_some(pid)
}

/// Whether any process of the group is still running.
///
/// The kernel's answer (`kill(-pgid, 0)`, where EPERM also means "exists") counts zombies
/// as members, so when it says yes, `/proc` is asked whether any member is not a zombie.
/// Our own group and invalid ids are reported as not alive: they are never a target.
pub fn group_alive(pgid: u32) -> bool {
    let Some(target) = target_group(pgid) else {
        return false;
    };
    match killpg(target, None) {
        Err(Errno::ESRCH) => false,
        // Unreadable /proc: trust the kernel's answer.
        Ok(()) | Err(_) => live_member_in_proc(pgid).unwrap_or(true),
    }
}

/// Whether `/proc` lists a non-zombie process in group `pgid`; `None` if `/proc` cannot be
/// listed.
fn live_member_in_proc(pgid: u32) -> Option<bool> {
    let entries = std::fs::read_dir("/proc").ok()?;
    Some(entries.flatten().any(|entry| {
        entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
            .and_then(read_stat)
            .is_some_and(|s| s.pgrp == pgid && !matches!(s.state, 'Z' | 'X'))
    }))
}

/// Send `sig` to every process of the group. A group that no longer exists is not an
/// error: the goal of every caller is that it does not run.
pub fn signal_group(pgid: u32, sig: Signal) -> nix::Result<()> {
    let target = target_group(pgid).ok_or(Errno::EINVAL)?;
    match killpg(target, sig) {
        Err(Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// Stop everything `scope` finds, led by `child`: send `sig` to the group and every other
/// member of the scope (what called `setsid`, what its cgroup holds), wait up to `grace`
/// for all of it to be gone and the leader to be reaped, then SIGKILL and wait again (up
/// to ten seconds).
///
/// The leader may have exited long before (its grandchildren kept running in the group);
/// the rest of the scope is stopped all the same.
pub async fn stop_group(
    child: &mut Child,
    scope: &Scope,
    sig: Signal,
    grace: Duration,
) -> StopOutcome {
    let mut leader = Leader {
        child,
        status: None,
        lost: false,
    };
    let mut tracked = Tracked::new(scope, true);
    if leader.reaped() && tracked.gone() {
        return leader.outcome(Ending::Exited, Vec::new());
    }
    tracked.signal(sig);
    if sig != Signal::SIGKILL {
        // A stopped process (SIGSTOP, a debugger) would only see the signal once
        // continued: continue it, as systemd does, so that it can exit cleanly now.
        tracked.resume();
    }
    let deadline = Instant::now() + grace;
    // Most processes exit within milliseconds of the signal: poll fast at first (a
    // restart's downtime includes this wait), then settle at POLL.
    let mut poll = Duration::from_millis(1);
    while Instant::now() < deadline {
        sleep(poll).await;
        poll = (poll * 2).min(POLL);
        if leader.reaped() && tracked.gone() {
            return leader.outcome(Ending::Exited, Vec::new());
        }
    }

    let deadline = Instant::now() + KILL_WAIT_LIMIT;
    let mut next_kill = Instant::now();
    loop {
        if Instant::now() >= next_kill {
            tracked.signal(Signal::SIGKILL);
            // The leader directly too, in case it moved itself out of the group.
            if !leader.reaped() {
                let _ = leader.child.start_kill();
            }
            next_kill += KILL_RESEND;
        }
        sleep(POLL).await;
        if leader.reaped() && tracked.gone() {
            return leader.outcome(Ending::Killed, Vec::new());
        }
        if Instant::now() >= deadline {
            let left = tracked.left();
            tracing::warn!(
                pgid = scope.pgid,
                left = %describe(&left),
                "processes still running after SIGKILL"
            );
            return leader.outcome(Ending::Unkillable, left);
        }
    }
}

/// The group leader during a stop.
struct Leader<'a> {
    child: &'a mut Child,
    status: Option<ExitStatus>,
    /// Waiting for it failed (someone else reaped it): it is gone, its status unknown.
    lost: bool,
}

impl Leader<'_> {
    /// Reap the leader if it has exited; whether it has been.
    fn reaped(&mut self) -> bool {
        if self.status.is_none() && !self.lost {
            match self.child.try_wait() {
                Ok(status) => self.status = status,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot wait for process group leader");
                    self.lost = true;
                }
            }
        }
        self.status.is_some() || self.lost
    }

    fn outcome(&self, ending: Ending, left: Vec<Member>) -> StopOutcome {
        StopOutcome {
            ending,
            status: self.status,
            left,
        }
    }
}

/// What a stop signals and waits for: the scope's group (as a whole, with `killpg`, when
/// the group is known to be ours), its cgroup, and every other member found.
struct Tracked<'a> {
    scope: &'a Scope,
    /// Whether `killpg` may address the group: it is provably the recorded one.
    whole_group: bool,
    /// Members found so far (pid and start time, so a reused pid is never signalled).
    known: Vec<Member>,
    /// The last signal sent, for members found later.
    sent: Option<Signal>,
}

impl<'a> Tracked<'a> {
    fn new(scope: &'a Scope, whole_group: bool) -> Self {
        Tracked {
            scope,
            whole_group: whole_group && scope.pgid.is_some(),
            known: Vec::new(),
            sent: None,
        }
    }

    /// Look for members again; the new ones get the signal sent so far. Whether any was
    /// found.
    fn refresh(&mut self) -> bool {
        let mut new = Vec::new();
        for m in self.scope.members() {
            if !self
                .known
                .iter()
                .any(|k| k.pid == m.pid && k.start_time == m.start_time)
            {
                new.push(m);
            }
        }
        if let Some(sig) = self.sent {
            for m in &new {
                signal_member(m, sig);
            }
        }
        let found = !new.is_empty();
        self.known.extend(new);
        found
    }

    fn signal(&mut self, sig: Signal) {
        self.sent = Some(sig);
        self.refresh();
        if self.whole_group
            && let Some(pgid) = self.scope.pgid
            && let Err(e) = signal_group(pgid, sig)
        {
            tracing::warn!(pgid, %sig, error = %e, "cannot signal process group");
        }
        if sig == Signal::SIGKILL
            && let Some(dir) = &self.scope.cgroup
        {
            super::cgroup::kill(dir);
        }
        for m in &self.known {
            signal_member(m, sig);
        }
    }

    /// Continue what is stopped, without changing the signal new members get.
    fn resume(&self) {
        if self.whole_group
            && let Some(pgid) = self.scope.pgid
        {
            let _ = signal_group(pgid, Signal::SIGCONT);
        }
        for m in &self.known {
            signal_member(m, Signal::SIGCONT);
        }
    }

    /// Whether nothing of the scope runs any more. The cheap checks first (the group, the
    /// known members, the cgroup); only when they all say "gone" is `/proc` searched for
    /// members not known yet.
    fn gone(&mut self) -> bool {
        let group = self.whole_group && self.scope.pgid.is_some_and(group_alive);
        let cgroup = self
            .scope
            .cgroup
            .as_deref()
            .is_some_and(|d| !super::cgroup::procs(d).is_empty());
        if group || cgroup || self.known.iter().any(Member::running) {
            return false;
        }
        !self.refresh()
    }

    /// What still runs.
    fn left(&mut self) -> Vec<Member> {
        self.refresh();
        self.known.iter().filter(|m| m.running()).cloned().collect()
    }
}

/// Signal one member, unless its pid is another process's now or it is gone.
fn signal_member(m: &Member, sig: Signal) {
    if !m.running() {
        return;
    }
    if let Ok(raw) = i32::try_from(m.pid)
        && raw > 1
    {
        let _ = nix::sys::signal::kill(Pid::from_raw(raw), sig);
    }
}

/// Stop what a daemon that died left behind of one started command: the leader `pid`
/// (if it still has the recorded start time), the rest of its group (which survives the
/// leader: a wrapper killed by SIGPIPE leaves its server running), its cgroup, and
/// whatever carries its marker. A pid or a group id that now belongs to an unrelated
/// process is never signalled: a group is only addressed as a whole while the leader is
/// still the recorded process, and every other member must have started at or after the
/// recorded leader and is signalled by pid, its start time checked.
///
/// Same sequence as [`stop_group`]: `sig`, up to `grace`, SIGKILL, wait.
pub async fn stop_orphan(pid: u32, scope: &Scope, sig: Signal, grace: Duration) -> OrphanReport {
    let mut scope = scope.clone();
    // While the recorded leader (even as a zombie) still has its pid, the group id cannot
    // have been given to another group.
    let leader_present = match read_stat(pid) {
        Some(s) if s.start_time != scope.start_time => {
            // The pid was free, so the group was empty, when this process got it: any
            // group with that id now is another one.
            scope.pgid = None;
            false
        }
        Some(_) => true,
        None => false,
    };
    let pid_reused = scope.pgid.is_none();
    let mut tracked = Tracked::new(&scope, leader_present);
    tracked.refresh();
    if tracked.known.is_empty() {
        let outcome = if pid_reused {
            OrphanOutcome::PidReused
        } else {
            OrphanOutcome::NotRunning
        };
        return OrphanReport {
            outcome,
            stopped: Vec::new(),
        };
    }
    tracked.signal(sig);
    let report = |tracked: &Tracked, outcome| OrphanReport {
        outcome,
        stopped: tracked.known.clone(),
    };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        sleep(POLL).await;
        if tracked.gone() {
            return report(&tracked, OrphanOutcome::Exited);
        }
    }

    let deadline = Instant::now() + KILL_WAIT_LIMIT;
    let mut next_kill = Instant::now();
    loop {
        if Instant::now() >= next_kill {
            tracked.signal(Signal::SIGKILL);
            next_kill += KILL_RESEND;
        }
        sleep(POLL).await;
        if tracked.gone() {
            return report(&tracked, OrphanOutcome::Killed);
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                pid,
                left = %describe(&tracked.left()),
                "processes left by the previous daemon still run after SIGKILL"
            );
            return report(&tracked, OrphanOutcome::Unkillable);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use tokio::io::{AsyncBufReadExt, BufReader, Lines};

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn sh(script: &str) -> Spawned {
        spawn(&SpawnSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            cwd: std::env::temp_dir(),
            env: vec![],
        })
        .expect("spawn sh")
    }

    async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
        tokio::time::timeout(TIMEOUT, lines.next_line())
            .await
            .expect("timed out waiting for output")
            .expect("read stdout")
            .expect("stdout closed early")
    }

    /// Whether the process that had `pid` at `start_time` is still running (not a
    /// zombie). The start time guards against the pid having been reused meanwhile.
    fn running(pid: u32, start_time: u64) -> bool {
        read_stat(pid).is_some_and(|s| s.start_time == start_time && s.state != 'Z')
    }

    fn group(pgid: u32) -> Scope {
        Scope {
            pgid: Some(pgid),
            ..Scope::default()
        }
    }

    async fn stop(child: &mut Child, pgid: u32, sig: Signal, grace: Duration) -> StopOutcome {
        tokio::time::timeout(
            TIMEOUT + KILL_WAIT_LIMIT,
            stop_group(child, &group(pgid), sig, grace),
        )
        .await
        .expect("stop_group hung")
    }

    async fn stop_orphan_group(
        pid: u32,
        pgid: u32,
        start_time: u64,
        sig: Signal,
        grace: Duration,
    ) -> OrphanOutcome {
        let scope = Scope {
            pgid: Some(pgid),
            start_time,
            ..Scope::default()
        };
        stop_orphan(pid, &scope, sig, grace).await.outcome
    }

    #[test]
    fn parse_stat_handles_hostile_names() {
        let rest = "S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        for name in ["sh", "a b", "x) S 9 9 (y", ")", "(("] {
            let line = format!("4242 ({name}) {rest}");
            assert_eq!(
                parse_stat(&line),
                Some(ProcStat {
                    state: 'S',
                    ppid: 1,
                    pgrp: 4242,
                    session: 4242,
                    start_time: 987654
                }),
                "{line}"
            );
        }
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[tokio::test]
    async fn spawn_runs_in_own_group_with_env() {
        let mut s = spawn(&SpawnSpec {
            argv: vec!["sh".into(), "-c".into(), "echo \"$BPM_TEST_VAR\"".into()],
            cwd: std::env::temp_dir(),
            env: vec![("BPM_TEST_VAR".into(), "hello there".into())],
        })
        .unwrap();
        assert_eq!(s.pgid, s.pid);
        assert_ne!(s.start_time, 0);
        let mut lines = BufReader::new(s.stdout).lines();
        assert_eq!(next_line(&mut lines).await, "hello there");
        let status = tokio::time::timeout(TIMEOUT, s.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
    }

    #[tokio::test]
    async fn stop_group_kills_leader_and_grandchild() {
        let mut s = sh("sleep 300 & echo $! ; wait");
        let mut lines = BufReader::new(s.stdout).lines();
        let grandchild: u32 = next_line(&mut lines).await.parse().unwrap();
        let gc_start = proc_start_time(grandchild).expect("grandchild runs");
        assert!(running(grandchild, gc_start));
        assert_eq!(read_stat(grandchild).unwrap().pgrp, s.pgid);

        let out = stop(
            &mut s.child,
            s.pgid,
            Signal::SIGTERM,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(out.ending, Ending::Exited);
        assert_eq!(out.status.unwrap().signal(), Some(Signal::SIGTERM as i32));
        assert!(!running(grandchild, gc_start));
        assert!(!group_alive(s.pgid));
    }

    #[tokio::test]
    async fn stop_group_kills_what_ignores_the_signal_after_grace() {
        let mut s = sh(r#"trap "" TERM; echo ready; while :; do sleep 0.05; done"#);
        let mut lines = BufReader::new(s.stdout).lines();
        assert_eq!(next_line(&mut lines).await, "ready");

        let grace = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let out = stop(&mut s.child, s.pgid, Signal::SIGTERM, grace).await;
        assert!(started.elapsed() >= grace);
        assert_eq!(out.ending, Ending::Killed);
        assert_eq!(out.status.unwrap().signal(), Some(Signal::SIGKILL as i32));
        assert!(!group_alive(s.pgid));
    }

    #[tokio::test]
    async fn stop_group_kills_group_whose_leader_exited() {
        let mut s = sh("sleep 300 & echo $!");
        let mut lines = BufReader::new(s.stdout).lines();
        let grandchild: u32 = next_line(&mut lines).await.parse().unwrap();
        let gc_start = proc_start_time(grandchild).expect("grandchild runs");
        let status = tokio::time::timeout(TIMEOUT, s.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
        assert!(group_alive(s.pgid), "the grandchild keeps the group alive");
        assert!(running(grandchild, gc_start));

        let out = stop(
            &mut s.child,
            s.pgid,
            Signal::SIGTERM,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(out.ending, Ending::Exited);
        assert_eq!(out.status, Some(status));
        assert!(!running(grandchild, gc_start));
        assert!(!group_alive(s.pgid));
    }

    #[tokio::test]
    async fn stop_group_of_finished_group_is_immediate() {
        let mut s = sh("exit 3");
        tokio::time::timeout(TIMEOUT, s.child.wait())
            .await
            .unwrap()
            .unwrap();
        let out = stop(
            &mut s.child,
            s.pgid,
            Signal::SIGTERM,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(out.ending, Ending::Exited);
        assert_eq!(out.status.unwrap().code(), Some(3));
    }

    #[test]
    fn proc_start_time_of_self_and_missing() {
        let me = std::process::id();
        let first = proc_start_time(me).expect("own start time");
        assert_eq!(proc_start_time(me), Some(first));
        // Above any possible pid_max (at most 2^22).
        assert_eq!(proc_start_time(i32::MAX as u32), None);
        assert_eq!(proc_start_time(0), None);
    }

    #[test]
    fn own_group_and_init_are_never_targets() {
        let own = getpgrp().as_raw() as u32;
        assert!(!group_alive(own));
        assert_eq!(signal_group(own, Signal::SIGTERM), Err(Errno::EINVAL));
        assert_eq!(signal_group(0, Signal::SIGTERM), Err(Errno::EINVAL));
        assert_eq!(signal_group(1, Signal::SIGTERM), Err(Errno::EINVAL));
    }

    #[tokio::test]
    async fn stop_orphan_group_leaves_a_reused_pid_alone() {
        let mut s = sh("sleep 300");
        let grace = Duration::from_millis(100);
        let out = stop_orphan_group(s.pid, s.pgid, s.start_time + 1, Signal::SIGTERM, grace).await;
        assert_eq!(out, OrphanOutcome::PidReused);
        assert!(!out.found());
        assert!(s.child.try_wait().unwrap().is_none(), "must not be touched");
        assert!(group_alive(s.pgid));

        let out = stop(
            &mut s.child,
            s.pgid,
            Signal::SIGTERM,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(out.ending, Ending::Exited);
    }

    #[tokio::test]
    async fn stop_orphan_group_stops_the_recorded_group() {
        let mut s = sh("sleep 300 & echo $! ; wait");
        let mut lines = BufReader::new(s.stdout).lines();
        let grandchild: u32 = next_line(&mut lines).await.parse().unwrap();
        let gc_start = proc_start_time(grandchild).unwrap();

        let out = tokio::time::timeout(
            TIMEOUT + KILL_WAIT_LIMIT,
            stop_orphan_group(
                s.pid,
                s.pgid,
                s.start_time,
                Signal::SIGTERM,
                Duration::from_secs(5),
            ),
        )
        .await
        .unwrap();
        assert_eq!(out, OrphanOutcome::Exited);
        assert!(out.found());
        assert!(!running(grandchild, gc_start));
        // Still our child here, unlike after a daemon crash: reap it.
        let status = tokio::time::timeout(TIMEOUT, s.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
    }

    #[tokio::test]
    async fn stop_orphan_group_of_missing_pid_is_not_running() {
        let out = stop_orphan_group(
            i32::MAX as u32,
            i32::MAX as u32,
            1,
            Signal::SIGTERM,
            Duration::from_millis(10),
        )
        .await;
        assert_eq!(out, OrphanOutcome::NotRunning);
    }

    #[tokio::test]
    async fn spawn_of_missing_program_says_what_and_where() {
        let cwd = std::env::temp_dir();
        let err = spawn(&SpawnSpec {
            argv: vec!["bpm-test-no-such-program-x7q".into()],
            cwd: cwd.clone(),
            env: vec![],
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot start `bpm-test-no-such-program-x7q` in {}: No such file or directory \
                 (is it installed and on PATH?)",
                cwd.display()
            )
        );
    }

    #[tokio::test]
    async fn spawn_in_missing_directory_blames_the_directory() {
        let cwd = std::env::temp_dir().join("bpm-test-no-such-dir-x7q");
        let err = spawn(&SpawnSpec {
            argv: vec!["sh".into()],
            cwd: cwd.clone(),
            env: vec![],
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("`sh`"), "{err}");
        assert!(err.contains(&cwd.display().to_string()), "{err}");
        assert!(err.contains("working directory does not exist"), "{err}");
    }

    #[tokio::test]
    async fn spawn_of_empty_command_is_an_error() {
        let err = spawn(&SpawnSpec {
            argv: vec![],
            cwd: std::env::temp_dir(),
            env: vec![],
        })
        .unwrap_err();
        assert!(matches!(err, SpawnError::EmptyCommand { .. }));
    }

    /// A grandchild that left the group with `setsid` is found by the marker in its
    /// environment and stopped with the group, at once rather than after the grace period.
    #[tokio::test]
    async fn stop_group_reaches_a_setsid_grandchild_by_its_marker() {
        let marker = format!("test-{}-setsid", std::process::id());
        let mut s = spawn(&SpawnSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "setsid sleep 300 >/dev/null 2>&1 & echo $!; wait".into(),
            ],
            cwd: std::env::temp_dir(),
            env: vec![(super::super::scope::MARKER_VAR.into(), marker.clone())],
        })
        .unwrap();
        let mut lines = BufReader::new(s.stdout).lines();
        let escaped: u32 = next_line(&mut lines).await.parse().unwrap();
        // Not a group leader, so setsid(1) does not fork: the pid is the one that leaves.
        let deadline = std::time::Instant::now() + TIMEOUT;
        while read_stat(escaped).is_none_or(|st| st.session != escaped) {
            assert!(std::time::Instant::now() < deadline, "setsid never ran");
            sleep(POLL).await;
        }
        let scope = Scope {
            pgid: Some(s.pgid),
            start_time: s.start_time,
            marker: Some(marker),
            cgroup: None,
        };
        let found = scope.members();
        assert!(
            found.iter().any(|m| m.pid == escaped),
            "what left with setsid is a member: {found:?}"
        );
        let started = std::time::Instant::now();
        let out = tokio::time::timeout(
            TIMEOUT + KILL_WAIT_LIMIT,
            stop_group(
                &mut s.child,
                &scope,
                Signal::SIGTERM,
                Duration::from_secs(5),
            ),
        )
        .await
        .unwrap();
        assert_eq!(out.ending, Ending::Exited);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(scope.members().is_empty());
    }

    /// A group whose leader is gone is still stopped by id, since it has live members
    /// that started after the recorded leader.
    #[tokio::test]
    async fn stop_orphan_stops_a_group_whose_leader_is_gone() {
        let mut s = sh("sleep 300 & echo $!");
        let mut lines = BufReader::new(s.stdout).lines();
        let grandchild: u32 = next_line(&mut lines).await.parse().unwrap();
        let gc_start = proc_start_time(grandchild).unwrap();
        // The leader exits and is reaped: its pid is free, its group lives on.
        tokio::time::timeout(TIMEOUT, s.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(read_stat(s.pid).is_none());
        let out = stop_orphan_group(
            s.pid,
            s.pgid,
            s.start_time,
            Signal::SIGTERM,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(out, OrphanOutcome::Exited);
        assert!(!running(grandchild, gc_start));
        // Again: nothing is left.
        assert_eq!(
            stop_orphan_group(
                s.pid,
                s.pgid,
                s.start_time,
                Signal::SIGTERM,
                Duration::from_millis(10)
            )
            .await,
            OrphanOutcome::NotRunning
        );
    }
}
