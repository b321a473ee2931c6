//! Which daemons run on this machine for this user: each running daemon leaves a small
//! file (its [`DaemonInfo`], named by its pid) in a registry directory, and removes it at
//! shutdown. `bpm daemons` lists them; an entry whose daemon is gone (killed, so it could
//! not remove it) is pruned when listed.
//!
//! The registry lives in the user's runtime directory (`$XDG_RUNTIME_DIR/bpm`, which the
//! system empties at logout and reboot), else in `daemons/` of the per-user data home
//! (`$XDG_STATE_HOME/bpm`, else `~/.local/state/bpm`). Either way it is mode 0700.

use std::io;
use std::path::{Path, PathBuf};

use super::{DaemonInfo, SOCKET_FILE, files, read_daemon_info};

/// The registry directory of this user (see the module's documentation).
pub fn default_dir() -> PathBuf {
    dir_from(
        std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        std::env::var_os("XDG_STATE_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

/// [`default_dir`] with the environment passed in. Empty or relative variables count as
/// unset, as the XDG spec requires.
pub fn dir_from(
    xdg_runtime_dir: Option<&std::ffi::OsStr>,
    xdg_state_home: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
) -> PathBuf {
    if let Some(run) = xdg_runtime_dir.map(Path::new).filter(|p| p.is_absolute()) {
        return run.join("bpm");
    }
    crate::config::data_dir_from(None, None, None, xdg_state_home, home).join("daemons")
}

/// A daemon's entry in the registry, removed when dropped (at shutdown, also after an
/// error).
#[derive(Debug)]
pub struct Registered {
    path: PathBuf,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Add `info` (this daemon) to the registry in `dir`, creating it (mode 0700) when needed.
/// Written under a temporary name, then renamed, so a reader never sees half an entry.
pub fn register(dir: &Path, info: &DaemonInfo) -> io::Result<Registered> {
    files::create_private_dir(dir)?;
    let path = dir.join(format!("{}.json", info.pid));
    let tmp = dir.join(format!(".{}.json.tmp", info.pid));
    let bytes = serde_json::to_vec_pretty(info).map_err(io::Error::other)?;
    files::write_private(&tmp, &bytes)?;
    std::fs::rename(&tmp, &path)?;
    Ok(Registered { path })
}

/// The daemons registered in `dir` that still run, ordered by data directory. An entry is
/// kept when its daemon's local socket accepts a connection and the `daemon.json` of its
/// data directory names the same pid; any other entry (its daemon was killed, or its pid
/// was reused) is removed. A missing registry is an empty list.
pub fn list(dir: &Path) -> io::Result<Vec<DaemonInfo>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let info = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<DaemonInfo>(&b).ok())
            .filter(|i| i.pid == pid && runs(i));
        match info {
            Some(i) => found.push(i),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    found.sort_by(|a, b| a.data_dir.cmp(&b.data_dir));
    Ok(found)
}

/// Whether the daemon `info` describes still serves: its socket accepts a connection and
/// its data directory still names it.
fn runs(info: &DaemonInfo) -> bool {
    std::os::unix::net::UnixStream::connect(info.data_dir.join(SOCKET_FILE)).is_ok()
        && read_daemon_info(&info.data_dir).is_some_and(|d| d.pid == info.pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn runtime_dir_first_then_state_home() {
        let d = dir_from(
            Some(OsStr::new("/run/user/1000")),
            Some(OsStr::new("/s")),
            Some(OsStr::new("/home/me")),
        );
        assert_eq!(d, Path::new("/run/user/1000/bpm"));
        let d = dir_from(Some(OsStr::new("relative")), Some(OsStr::new("/s")), None);
        assert_eq!(d, Path::new("/s/bpm/daemons"));
        let d = dir_from(Some(OsStr::new("")), None, Some(OsStr::new("/home/me")));
        assert_eq!(d, Path::new("/home/me/.local/state/bpm/daemons"));
    }

    /// An entry whose daemon does not answer is pruned; a registry that does not exist
    /// lists nothing.
    #[test]
    fn dead_entries_are_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = tmp.path().join("reg");
        assert!(list(&reg).unwrap().is_empty());
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let info = DaemonInfo {
            pid: std::process::id(),
            port: 1,
            data_dir: data.clone(),
            project_dir: tmp.path().to_path_buf(),
            token: false,
            token_file: None,
        };
        let entry = register(&reg, &info).unwrap();
        let file = reg.join(format!("{}.json", info.pid));
        assert!(file.exists());
        // No socket and no daemon.json: not a running daemon.
        assert!(list(&reg).unwrap().is_empty());
        assert!(!file.exists(), "the dead entry was removed");
        drop(entry);

        // A listening socket and a daemon.json naming the pid: listed.
        let _sock = std::os::unix::net::UnixListener::bind(data.join(SOCKET_FILE)).unwrap();
        std::fs::write(
            data.join(super::super::DAEMON_FILE),
            serde_json::to_vec(&info).unwrap(),
        )
        .unwrap();
        let entry = register(&reg, &info).unwrap();
        assert_eq!(list(&reg).unwrap(), vec![info.clone()]);
        drop(entry);
        assert!(
            !file.exists(),
            "dropping the registration removes its entry"
        );
        assert_eq!(
            std::fs::metadata(&reg).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    use std::os::unix::fs::PermissionsExt as _;
}
