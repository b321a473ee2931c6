//! What a long-running daemon owes the machine it runs on: it passes none of the
//! descriptors it inherited on to its children, copies process output to its stdout
//! only where someone reads it, and keeps its own log (`daemon.log`) to a size cap.

use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

/// The default cap of `daemon.log`; one older file (`daemon.log.1`) is kept beside it.
pub const OWN_LOG_MAX_BYTES: u64 = 10 << 20;

/// Mark every descriptor above stderr close-on-exec: whatever the shell or the program
/// that started the daemon left open (a pipe, a terminal, a lock) must not reach the
/// processes it runs, where it could keep a pipe open or a file locked for days.
/// Call before anything else opens descriptors of its own (they are close-on-exec
/// anyway in Rust).
#[allow(unsafe_code)]
pub fn close_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: the descriptor was open a moment ago and nothing closes descriptors it
        // does not own this early (one thread); the borrow only changes its flags, and a
        // descriptor gone meanwhile (the read_dir's own) just gives EBADF.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFD) {
            let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
            let _ = fcntl(fd, FcntlArg::F_SETFD(flags));
        }
    }
}

/// Whether process output should be copied to stdout (with `[name]` prefixes) when
/// neither `--prefix` nor `--no-prefix` says: only when someone reads it there, a
/// terminal or the journal (systemd sets `JOURNAL_STREAM`), never into a log file.
pub fn stdout_is_read() -> bool {
    use std::io::IsTerminal as _;
    io::stdout().is_terminal() || std::env::var_os("JOURNAL_STREAM").is_some()
}

/// Keeps `DATA_DIR/daemon.log` under `max_bytes` while it is the daemon's stderr (as
/// for an autostarted daemon): when it grows past the cap, it becomes `daemon.log.1`
/// (replacing the older one) and a new `daemon.log` takes its place as stdout and stderr.
pub struct OwnLog {
    path: PathBuf,
    max_bytes: u64,
}

impl OwnLog {
    /// `None` when stderr is not `data_dir/daemon.log` (a terminal, the journal).
    pub fn of(data_dir: &Path, max_bytes: u64) -> Option<OwnLog> {
        let path = data_dir.join("daemon.log");
        same_file(Std::Err, &path).then_some(OwnLog { path, max_bytes })
    }

    /// Check the size every `every` on a thread of its own, for the life of the process.
    pub fn watch(self, every: Duration) {
        std::thread::Builder::new()
            .name("bpm-own-log".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    if let Err(e) = self.rotate_if_full() {
                        tracing::warn!(log = %self.path.display(), error = %e, "cannot rotate the daemon's log");
                    }
                }
            })
            .ok();
    }

    /// Rotate when full; whether it did.
    pub fn rotate_if_full(&self) -> io::Result<bool> {
        let size = nix::sys::stat::fstat(io::stderr())
            .map_err(io::Error::from)?
            .st_size as u64;
        if size < self.max_bytes || !same_file(Std::Err, &self.path) {
            return Ok(false);
        }
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        let fresh = super::files::open_private_append(&self.path)?;
        if same_file(Std::Out, Path::new(&old)) {
            nix::unistd::dup2_stdout(&fresh)?;
        }
        nix::unistd::dup2_stderr(&fresh)?;
        Ok(true)
    }
}

#[derive(Clone, Copy)]
enum Std {
    Out,
    Err,
}

/// Whether stdout or stderr is the file at `path`.
fn same_file(which: Std, path: &Path) -> bool {
    let st = match which {
        Std::Out => nix::sys::stat::fstat(io::stdout()),
        Std::Err => nix::sys::stat::fstat(io::stderr()),
    };
    let (Ok(st), Ok(meta)) = (st, std::fs::metadata(path)) else {
        return false;
    };
    st.st_dev == meta.dev() && st.st_ino == meta.ino()
}
