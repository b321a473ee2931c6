//! A cgroup v2 per supervised process, where the daemon may create them: nothing leaves a
//! cgroup by calling `setsid` or double-forking, so killing the cgroup stops everything
//! the command started.
//!
//! The cgroups live in a `bpm` sub-tree of the daemon's own cgroup (which is what
//! systemd's `Delegate=yes` hands over; root can also do it wherever cgroup v2 is
//! mounted writable). Each is named after its leader's pid and start time, which
//! identifies the process for the whole boot, so the next daemon finds the cgroup of an
//! instance its predecessor left behind from what the store recorded.
//!
//! Without cgroups (an ordinary user outside a delegated sub-tree, cgroup v1 only) the
//! fallback is [`super::scope`]: process group, environment marker and parent chain.
//!
//! A process is moved into its cgroup right after it is spawned (std cannot spawn into a
//! cgroup, and bpm has no unsafe code for a `pre_exec` hook); whatever it forked in that
//! moment is moved after it, until nothing is left outside.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The environment variable that turns cgroups off (`BPM_NO_CGROUP=1`): the fallback is
/// then used even where cgroups would work.
pub const DISABLE_VAR: &str = "BPM_NO_CGROUP";

/// The `bpm` sub-tree, once [`enable`] succeeded.
static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Find the daemon's own cgroup v2 and create the `bpm` sub-tree in it; from then on,
/// [`adopt`] puts processes into cgroups of their own. The sub-tree's path, or why not.
pub fn enable() -> Result<PathBuf, String> {
    if let Some(root) = ROOT.get() {
        return Ok(root.clone());
    }
    if std::env::var_os(DISABLE_VAR).is_some_and(|v| !v.is_empty() && v != "0") {
        return Err(format!("{DISABLE_VAR} is set"));
    }
    let own = own_cgroup().ok_or("no cgroup v2 hierarchy is mounted for this process")?;
    let root = own.join("bpm");
    match std::fs::create_dir(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", root.display())),
    }
    // Writable for processes too (not only for directories)?
    let probe = root.join(format!("probe-{}", std::process::id()));
    let _ = std::fs::create_dir(&probe);
    let usable = std::fs::OpenOptions::new()
        .write(true)
        .open(probe.join("cgroup.procs"))
        .is_ok();
    let _ = std::fs::remove_dir(&probe);
    if !usable {
        return Err(format!("cannot move processes into {}", root.display()));
    }
    Ok(ROOT.get_or_init(|| root).clone())
}

/// The directory of this process's cgroup in the cgroup v2 hierarchy, from
/// `/proc/self/cgroup` ("0::/path") and `/proc/self/mountinfo` (where cgroup2 is
/// mounted, and which part of the hierarchy the mount shows).
fn own_cgroup() -> Option<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_ascii_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = left.split_ascii_whitespace().collect();
        let (mount_root, mount_point) = (*fields.get(3)?, *fields.get(4)?);
        let rel = Path::new(path).strip_prefix(mount_root).ok()?;
        Some(Path::new(mount_point).join(rel))
    })
}

/// The cgroup of the process `pid` that started at `start_time`, whether or not it exists.
pub fn path_for(pid: u32, start_time: u64) -> Option<PathBuf> {
    Some(ROOT.get()?.join(format!("{pid}-{start_time}")))
}

/// The cgroup of a recorded process, if the daemon uses cgroups and it is still there.
pub fn existing(pid: u32, start_time: u64) -> Option<PathBuf> {
    path_for(pid, start_time).filter(|p| p.is_dir())
}

/// Create the cgroup of the freshly spawned `pid` and move it there, then whatever it
/// has forked meanwhile. `None` (after saying why) when it cannot be done: the process
/// then runs without one.
pub fn adopt(pid: u32, start_time: u64) -> Option<PathBuf> {
    let dir = path_for(pid, start_time)?;
    let result = (|| {
        std::fs::create_dir(&dir)?;
        move_into(&dir, pid)?;
        // What it forked before it was moved is still outside; what those fork now is
        // born outside too. Repeat until nothing is left outside (bounded: a fork bomb
        // is stopped by its group anyway).
        for _ in 0..8 {
            let inside: std::collections::HashSet<u32> = procs(&dir).into_iter().collect();
            let outside: Vec<u32> = super::scope::descendants(pid)
                .into_iter()
                .filter(|p| !inside.contains(p))
                .collect();
            if outside.is_empty() {
                break;
            }
            for p in outside {
                // It may have exited meanwhile.
                let _ = move_into(&dir, p);
            }
        }
        io::Result::Ok(())
    })();
    match result {
        Ok(()) => Some(dir),
        Err(e) => {
            tracing::warn!(pid, error = %e, "cannot put the process into a cgroup of its own");
            let _ = std::fs::remove_dir(&dir);
            None
        }
    }
}

fn move_into(dir: &Path, pid: u32) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
}

/// The pids in the cgroup (zombies are not listed); empty if it is gone.
pub fn procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILL everything in the cgroup: `cgroup.kill` (Linux 5.14), else each pid in turn.
pub fn kill(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for pid in procs(dir) {
        if let Ok(raw) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(raw),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Remove the cgroup once it is empty (an error otherwise, and harmless).
pub fn remove(dir: &Path) {
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::debug!(dir = %dir.display(), error = %e, "cannot remove cgroup");
    }
}
