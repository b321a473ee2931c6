//! A process's output on its way into the store: spawning a command with its store
//! instance begun, capturing its pipes (and copying them to the daemon's stdout when asked)
//! and draining them at exit. What a run and a build have in common.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::logs::{ExitStatus, InstanceKind, InstanceWriter, SpawnInfo, Store, Stream};
use crate::supervisor::{cgroup, procgroup, scope};

/// Size of the buffer each capture task reads into.
const READ_BUF: usize = 64 * 1024;

/// How long to wait for the pipes to reach EOF once the scope is gone. Only a process that
/// left it unseen (`setsid` with a cleared environment, then re-parented, without a
/// cgroup) and kept the pipe can hold them open that long; its output after that is not
/// captured.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// A process spawned into its own group, with its store instance begun.
pub(super) struct Recorded {
    pub(super) child: Child,
    pub(super) pid: u32,
    pub(super) pgid: u32,
    /// Everything the command started, for stops.
    pub(super) scope: procgroup::Scope,
    pub(super) stdout: tokio::process::ChildStdout,
    pub(super) stderr: tokio::process::ChildStderr,
    pub(super) writer: InstanceWriter,
}

pub(super) enum SpawnFailure {
    /// The command could not be started (the message names program and directory).
    Spawn(String),
    /// It started, but the store refused the instance; the group was killed.
    Record(String),
}

/// Spawn `argv` in its own process group and begin its instance in the store: what a run
/// and a build have in common.
///
/// With `track`, what the command starts is tracked beyond its group: it runs with the
/// process's marker in its environment and in a cgroup of its own where the daemon can
/// create one, so its stops reach descendants that called `setsid`. Runs are tracked;
/// builds are not, so that a build's shared servers (an sccache or gradle daemon started
/// on first use) outlive the build as their authors intend.
pub(super) async fn spawn_recorded(
    store: &Store,
    name: &str,
    kind: InstanceKind,
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    track: bool,
) -> Result<Recorded, SpawnFailure> {
    let marker = track.then(|| scope::marker(store.path(), name));
    let mut env = env.to_vec();
    if let Some(m) = &marker {
        env.push((scope::MARKER_VAR.to_owned(), m.clone()));
    }
    let procgroup::Spawned {
        mut child,
        pid,
        pgid,
        start_time,
        stdout,
        stderr,
    } = procgroup::spawn(&procgroup::SpawnSpec {
        argv: argv.to_vec(),
        cwd: cwd.to_owned(),
        env,
    })
    .map_err(|e| SpawnFailure::Spawn(e.to_string()))?;
    let cgroup = if track && start_time != 0 {
        cgroup::adopt(pid, start_time)
    } else {
        None
    };
    let scope = procgroup::Scope {
        pgid: Some(pgid),
        start_time,
        marker,
        cgroup,
    };
    let info = SpawnInfo {
        pid: Some(pid),
        pgid: Some(pgid),
        start_time: Some(start_time),
        argv: argv.to_vec(),
        cwd: cwd.display().to_string(),
    };
    match store.begin_instance(name, kind, info) {
        Ok(writer) => Ok(Recorded {
            child,
            pid,
            pgid,
            scope,
            stdout,
            stderr,
            writer,
        }),
        Err(e) => {
            procgroup::stop_group(&mut child, &scope, Signal::SIGKILL, Duration::ZERO).await;
            release(&scope);
            Err(SpawnFailure::Record(e.to_string()))
        }
    }
}

/// After a stop: remove the scope's cgroup (empty by then).
pub(super) fn release(scope: &procgroup::Scope) {
    if let Some(dir) = &scope.cgroup {
        cgroup::remove(dir);
    }
}

/// The capture of a process's two pipes.
pub(super) struct Captures {
    tasks: Vec<JoinHandle<()>>,
    /// Cancelled once the process group is gone: read the rest without waiting for room.
    draining: CancellationToken,
}

impl Captures {
    /// Capture stdout and stderr into `writer` (and to the daemon's stdout with a prefix).
    pub(super) fn start(
        stdout: tokio::process::ChildStdout,
        stderr: tokio::process::ChildStderr,
        writer: &InstanceWriter,
        prefix: Option<String>,
    ) -> Captures {
        let draining = CancellationToken::new();
        let tasks = vec![
            capture(
                stdout,
                Stream::Stdout,
                writer.clone(),
                prefix.clone(),
                draining.clone(),
            ),
            capture(
                stderr,
                Stream::Stderr,
                writer.clone(),
                prefix,
                draining.clone(),
            ),
        ];
        Captures { tasks, draining }
    }

    /// Once the process group is gone: read what is left in the pipes until EOF, without
    /// waiting for the store (what is left is at most a pipe's buffer per pipe, unless
    /// something that escaped the group holds a pipe: see [`DRAIN_LIMIT`]).
    pub(super) async fn drain(self) {
        self.draining.cancel();
        let deadline = Instant::now() + DRAIN_LIMIT;
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!("output pipe still open after the process group is gone");
                task.abort();
            }
        }
    }
}

/// Copy one pipe into the instance until EOF.
///
/// Between reads it waits for room in the store's queue: a child printing faster than the
/// disk writes blocks on its pipe (as on a slow file) instead of losing lines. It reads on
/// only when the store is failing or stalled (see [`InstanceWriter::wait_for_room`]), or
/// once `draining` is cancelled. The wait never holds up the supervisor: stops signal the
/// process group, then cancel `draining`.
fn capture<R>(
    mut pipe: R,
    stream: Stream,
    writer: InstanceWriter,
    prefix: Option<String>,
    draining: CancellationToken,
) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let stall_limit = writer.stall_limit();
    tokio::spawn(async move {
        let mut buf = vec![0u8; READ_BUF];
        let mut pass = prefix.map(Passthrough::new);
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    writer.append(stream, &buf[..n]);
                    if let Some(p) = &mut pass {
                        p.feed(&buf[..n]);
                    }
                    if !draining.is_cancelled() {
                        tokio::select! {
                            _ = writer.wait_for_room(stall_limit) => {}
                            _ = draining.cancelled() => {}
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read process output");
                    break;
                }
            }
        }
        if let Some(p) = pass {
            p.finish();
        }
    })
}

/// Copies output lines to the daemon's stdout with a `[name] ` prefix.
struct Passthrough {
    prefix: String,
    partial: Vec<u8>,
}

impl Passthrough {
    fn new(name: String) -> Passthrough {
        Passthrough {
            prefix: format!("[{name}] "),
            partial: Vec::new(),
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.partial.extend_from_slice(bytes);
        let Some(last_nl) = memchr::memrchr(b'\n', &self.partial) else {
            return;
        };
        let mut out = Vec::with_capacity(last_nl + 64);
        for line in self.partial[..last_nl].split(|&b| b == b'\n') {
            out.extend_from_slice(self.prefix.as_bytes());
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        self.partial.drain(..=last_nl);
        let _ = std::io::stdout().lock().write_all(&out);
    }

    fn finish(mut self) {
        if !self.partial.is_empty() {
            self.partial.push(b'\n');
            let rest = std::mem::take(&mut self.partial);
            self.feed(&rest);
        }
    }
}

/// End `writer`'s instance with `status` without waiting for the disk: the exit is known
/// to readers at once, and the end becomes durable behind the lines queued before it (a
/// failure to make it durable is logged; the store's health says more).
pub(super) fn end_in_background(writer: InstanceWriter, status: ExitStatus, name: &str) {
    match writer.end(status) {
        Ok(pending) => {
            let name = name.to_owned();
            tokio::spawn(async move {
                if let Err(e) = pending.durable().await {
                    tracing::warn!(process = %name, error = %e, "cannot store the instance's end");
                }
            });
        }
        Err(e) => tracing::warn!(process = %name, error = %e, "cannot finish instance"),
    }
}

/// The store's form of a process's exit status.
pub(super) fn convert_status(s: std::process::ExitStatus) -> ExitStatus {
    match (s.code(), s.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(sig)) => ExitStatus::Signal(sig),
        (None, None) => ExitStatus::Unknown,
    }
}
