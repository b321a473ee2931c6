//! Everything one started command consists of, found again from `/proc` (and its cgroup,
//! where there is one), including what left its process group.
//!
//! A process group holds a command only as long as nothing in it calls `setsid` or
//! `setpgid`, and a group whose leader died cannot be recognised by the leader's pid any
//! more. A [`Scope`] is everything that identifies the command's processes:
//!
//! - its process group (only members that started at or after the leader: Linux does not
//!   give a new process a pid that is still a live group's id, so a group id with a live
//!   member that started after the recorded leader is still the recorded group);
//! - its cgroup, where the daemon could create one ([`super::cgroup`]);
//! - the marker in its environment ([`MARKER_VAR`]), inherited by every descendant that
//!   does not clear its environment, across `setsid`, double forks and re-parenting;
//! - the descendants (by parent pid) of all of the above.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::procgroup::{ProcStat, parse_stat};

/// The environment variable that marks every process started for a supervised process.
/// Its value names the store (a hash of its path) and the process, so that a daemon
/// finds what it, or a predecessor on the same store, started for that process, and
/// nothing else.
pub const MARKER_VAR: &str = "BPM_SCOPE";

/// The marker value for process `name` of the store at `store_path`.
pub fn marker(store_path: &Path, name: &str) -> String {
    // FNV-1a: stable across builds and versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in store_path.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}/{name}")
}

/// How to find the processes of one started command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The process group (the leader's pid); `None` when the group id cannot be trusted to
    /// be ours (the leader's pid belongs to another process now).
    pub pgid: Option<u32>,
    /// The leader's start time (clock ticks since boot): nothing that started earlier is
    /// a member.
    pub start_time: u64,
    /// The value of [`MARKER_VAR`] given to the command, if any.
    pub marker: Option<String>,
    /// The command's own cgroup, if it has one.
    pub cgroup: Option<PathBuf>,
}

/// A process found in a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub pid: u32,
    pub start_time: u64,
    /// The kernel's command name (field 2 of `/proc/<pid>/stat`).
    pub comm: String,
}

impl Member {
    /// Whether the process is still the one found and still running (a zombie is not).
    pub fn running(&self) -> bool {
        super::procgroup::read_stat(self.pid)
            .is_some_and(|s| s.start_time == self.start_time && !is_dead(s.state))
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.comm)
    }
}

/// "pid 1 (a), pid 2 (b)".
pub fn describe(members: &[Member]) -> String {
    members
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_dead(state: char) -> bool {
    matches!(state, 'Z' | 'X')
}

/// One running process as `/proc` shows it.
struct Proc {
    stat: ProcStat,
    comm: String,
}

/// Every running (not zombie) process, by pid. Empty if `/proc` cannot be listed.
fn running_processes() -> HashMap<u32, Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let content = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let stat = parse_stat(&content)?;
            let comm = content
                .split_once('(')
                .and_then(|(_, rest)| rest.rsplit_once(')'))
                .map_or_else(String::new, |(c, _)| c.to_owned());
            (!is_dead(stat.state)).then_some((pid, Proc { stat, comm }))
        })
        .collect()
}

/// Whether `/proc/<pid>/environ` holds `var=value`.
fn has_env(pid: u32, var: &str, value: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let wanted = format!("{var}={value}");
    environ.split(|&b| b == 0).any(|e| e == wanted.as_bytes())
}

impl Scope {
    /// The running processes of the scope, never the daemon itself nor init.
    pub fn members(&self) -> Vec<Member> {
        let all = running_processes();
        let me = std::process::id();
        let in_cgroup: HashSet<u32> = self
            .cgroup
            .as_deref()
            .map(super::cgroup::procs)
            .unwrap_or_default()
            .into_iter()
            .collect();
        // Only what started after the leader can belong to it.
        let candidates: HashMap<u32, &Proc> = all
            .iter()
            .filter(|(pid, p)| **pid > 1 && **pid != me && p.stat.start_time >= self.start_time)
            .map(|(pid, p)| (*pid, p))
            .collect();
        let mut found: HashSet<u32> = candidates
            .iter()
            .filter(|(pid, p)| {
                Some(p.stat.pgrp) == self.pgid
                    || in_cgroup.contains(pid)
                    || self
                        .marker
                        .as_deref()
                        .is_some_and(|m| has_env(**pid, MARKER_VAR, m))
            })
            .map(|(pid, _)| *pid)
            .collect();
        // Descendants of members are members (whatever they did to their environment).
        loop {
            let more: Vec<u32> = candidates
                .iter()
                .filter(|(pid, p)| !found.contains(pid) && found.contains(&p.stat.ppid))
                .map(|(pid, _)| *pid)
                .collect();
            if more.is_empty() {
                break;
            }
            found.extend(more);
        }
        let mut members: Vec<Member> = found
            .into_iter()
            .map(|pid| {
                let p = candidates[&pid];
                Member {
                    pid,
                    start_time: p.stat.start_time,
                    comm: p.comm.clone(),
                }
            })
            .collect();
        members.sort_by_key(|m| m.pid);
        members
    }
}

/// The running descendants of `pid` (by parent pid), not `pid` itself.
pub(crate) fn descendants(pid: u32) -> Vec<u32> {
    let all = running_processes();
    let mut found: HashSet<u32> = HashSet::from([pid]);
    loop {
        let more: Vec<u32> = all
            .iter()
            .filter(|(p, proc)| !found.contains(p) && found.contains(&proc.stat.ppid))
            .map(|(p, _)| *p)
            .collect();
        if more.is_empty() {
            break;
        }
        found.extend(more);
    }
    found.remove(&pid);
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_depends_on_store_and_name() {
        let a = marker(Path::new("/a/logs.redb"), "web");
        assert_eq!(a, marker(Path::new("/a/logs.redb"), "web"));
        assert_ne!(a, marker(Path::new("/b/logs.redb"), "web"));
        assert_ne!(a, marker(Path::new("/a/logs.redb"), "api"));
        assert!(a.ends_with("/web"));
    }

    #[test]
    fn members_never_include_the_caller() {
        let me = std::process::id();
        let own = super::super::procgroup::read_stat(me).unwrap();
        let scope = Scope {
            pgid: Some(own.pgrp),
            start_time: 0,
            marker: None,
            cgroup: None,
        };
        assert!(scope.members().iter().all(|m| m.pid != me && m.pid != 1));
    }
}
