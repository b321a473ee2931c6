//! The daemon as a child subreaper: a supervised process's descendants whose parent dies
//! (a daemonizing server, a wrapper that exits) are re-parented to the daemon instead of
//! init, so they stay in view, and the daemon reaps them when they exit.
//!
//! Reaping must never take an exit status that someone else waits for: tokio waits for
//! each supervised leader by pid, and `Command::output` (cargo metadata) for its own
//! child. So nothing here waits for "any child". A zombie child is reaped only when it is
//! none of those:
//!
//! - not in the daemon's own process group and session (where the daemon's plain
//!   commands run; supervised processes lead groups of their own);
//! - not a supervised leader: [`procgroup::spawn`](super::procgroup::spawn) registers
//!   each leader while it holds [`LEADERS`]'s lock from before the fork, and the reaper
//!   decides under the same lock, so a leader that dies at once is never mistaken for an
//!   inherited process.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::{Pid, getpgrp, getpid, getsid};

use super::procgroup::{ProcStat, parse_stat};

/// Supervised leaders that are (or were) our children: pid -> start time.
pub(super) static LEADERS: Mutex<BTreeMap<u32, u64>> = Mutex::new(BTreeMap::new());

/// How often to look for inherited zombies without a SIGCHLD (signals coalesce, and a
/// SIGCHLD may arrive while a scan runs).
const SWEEP: Duration = Duration::from_secs(2);

/// Make this process the child subreaper of its descendants.
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Reap inherited children as they exit, until the future is dropped.
pub async fn run() {
    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGCHLD; reaping every {SWEEP:?}");
            None
        }
    };
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        match &mut sigchld {
            Some(s) => {
                tokio::select! {
                    _ = s.recv() => {}
                    _ = sweep.tick() => {}
                }
            }
            None => {
                sweep.tick().await;
            }
        }
        let _ = tokio::task::spawn_blocking(reap_inherited).await;
    }
}

/// Reap every zombie child that nobody else waits for; how many.
pub fn reap_inherited() -> usize {
    let me = getpid().as_raw() as u32;
    let own_group = getpgrp().as_raw() as u32;
    let own_session = getsid(None).map_or(0, |s| s.as_raw() as u32);
    let zombies: Vec<(u32, ProcStat)> = zombie_children(me)
        .into_iter()
        .filter(|(_, s)| !(s.pgrp == own_group && s.session == own_session))
        .collect();
    if zombies.is_empty() {
        return 0;
    }
    let mut leaders = LEADERS.lock().unwrap_or_else(|e| e.into_inner());
    // Forget leaders that are gone (tokio reaped them) or whose pid is another
    // process's now.
    leaders.retain(|pid, start| {
        super::procgroup::read_stat(*pid).is_some_and(|s| s.start_time == *start)
    });
    let mut reaped = 0;
    for (pid, stat) in zombies {
        if leaders.get(&pid) == Some(&stat.start_time) {
            continue;
        }
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG;
        if waitid(Id::Pid(Pid::from_raw(pid as i32)), flags).is_ok() {
            tracing::debug!(pid, "reaped an inherited process");
            reaped += 1;
        }
    }
    reaped
}

/// The zombies whose parent is `me`.
fn zombie_children(me: u32) -> Vec<(u32, ProcStat)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
            (stat.ppid == me && stat.state == 'Z').then_some((pid, stat))
        })
        .collect()
}
