//! Daemons under test, each with its own temporary project and data directories, on
//! 127.0.0.1 port 0, stopped with its processes when its guard drops (also when the test
//! panics):
//!
//! - [`InProcess`]: `bpm::daemon::run` on a runtime of its own, in this process.
//! - [`Served`]: the real binary, `bpm serve`, as a child of the test.
//! - [`DaemonOf`]: whatever daemon a data directory's `daemon.json` names (one that a
//!   `bpm` command autostarted).

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

use nix::sys::signal::Signal;

use super::api::Api;
use super::process::{Spawned, terminate};
use super::{DEADLINE, tempdir, umask_exclusive, wait_for};

/// The `bpm` binary of this build.
pub const BPM: &str = env!("CARGO_BIN_EXE_bpm");

/// A project directory and a data directory, in one temporary directory.
pub struct Dirs {
    root: tempfile::TempDir,
    pub project: PathBuf,
    pub data: PathBuf,
    /// `XDG_RUNTIME_DIR` of its `bpm` commands: the registry of running daemons is in it.
    pub runtime: PathBuf,
}

impl Dirs {
    pub fn new() -> Dirs {
        let root = tempdir();
        let project = root.path().join("project");
        let data = root.path().join("data");
        std::fs::create_dir(&project).unwrap();
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(root.path().join("state")).unwrap();
        let runtime = root.path().join("runtime");
        std::fs::create_dir(&runtime).unwrap();
        Dirs {
            root,
            project,
            data,
            runtime,
        }
    }

    /// Write the project's `.mcp-run`.
    pub fn write_config(&self, body: &str) {
        std::fs::write(self.project.join(".mcp-run"), body).unwrap();
    }

    /// `bpm ARGS` run in the project, for the daemon of the data directory:
    /// `BPM_HOME` is the data directory and `BPM_PORT=0` (an autostarted daemon never takes
    /// the default port).
    pub fn bpm(&self, args: &[&str]) -> Command {
        let mut c = bpm_command(self);
        c.args(args)
            .current_dir(&self.project)
            .env("BPM_HOME", &self.data)
            .env("BPM_PORT", "0");
        c
    }

    /// The pid in the data directory's `daemon.json`, if any.
    pub fn daemon_pid(&self) -> Option<u32> {
        bpm::daemon::read_daemon_info(&self.data).map(|i| i.pid)
    }
}

/// The `bpm` binary with an environment of its own: nothing of the test process's
/// environment that bpm (or a `cargo` it runs) reads gets through, except what is set
/// here or by the caller. `XDG_STATE_HOME` and `XDG_RUNTIME_DIR` point into `dirs`, so
/// that even a command that finds no other data directory stays inside the test's
/// directories, and daemons enter themselves in a registry of the test's own.
pub fn bpm_command(dirs: &Dirs) -> Command {
    let mut c = Command::new(BPM);
    bpm_env(&mut c, dirs);
    c
}

/// The environment of [`bpm_command`], for a command that runs `bpm` in the end.
fn bpm_env(c: &mut Command, dirs: &Dirs) {
    for var in [
        "BPM_HOME",
        "BPM_PORT",
        "BPM_TOKEN",
        "BPM_UPDATE_SNAPSHOTS",
        // A `cargo build` by the daemon builds into the project, not the target directory
        // of the build running these tests.
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        c.env_remove(var);
    }
    c.env("BPM_LOG", "warn")
        .env("NO_COLOR", "1")
        .env("XDG_STATE_HOME", dirs.root.path().join("state"))
        .env("XDG_RUNTIME_DIR", &dirs.runtime)
        .stdin(Stdio::null());
}

/// `bpm serve` of a project (the real binary), a child of the test. SIGTERMed on drop,
/// which stops its processes.
pub struct Served {
    proc: Spawned,
    data: PathBuf,
}

impl Served {
    /// Start `bpm serve --port 0` for `dirs`; see [`Self::api`] to wait until it answers.
    pub fn start(dirs: &Dirs) -> Served {
        Served::start_with(dirs, &[])
    }

    /// [`Self::start`] with more environment variables for the daemon.
    pub fn start_with(dirs: &Dirs, env: &[(&str, &str)]) -> Served {
        Served::start_args(dirs, env, &["--port", "0"])
    }

    /// `bpm serve ARGS --no-prefix --data-dir DATA PROJECT`, with more environment
    /// variables for the daemon.
    pub fn start_args(dirs: &Dirs, env: &[(&str, &str)], args: &[&str]) -> Served {
        let mut cmd = bpm_command(dirs);
        cmd.envs(env.iter().copied());
        cmd.arg("serve")
            .args(args)
            .args(["--no-prefix", "--data-dir"])
            .arg(&dirs.data)
            .arg(&dirs.project);
        Served {
            proc: Spawned::new(&mut cmd, Signal::SIGTERM),
            data: dirs.data.clone(),
        }
    }

    /// Its stderr so far.
    pub fn err(&self) -> String {
        self.proc.err()
    }

    /// [`Self::start`] with a limit on open files (`ulimit -n`): `soft` and `hard`.
    pub fn start_with_nofile(dirs: &Dirs, soft: u64, hard: u64) -> Served {
        let mut cmd = Command::new("sh");
        bpm_env(&mut cmd, dirs);
        cmd.arg("-c")
            .arg(format!(
                "ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" \"$@\""
            ))
            .arg(BPM)
            .args(["serve", "--port", "0", "--no-prefix", "--data-dir"])
            .arg(&dirs.data)
            .arg(&dirs.project);
        Served {
            proc: Spawned::new(&mut cmd, Signal::SIGTERM),
            data: dirs.data.clone(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Wait until this daemon listens on TCP and on its socket; its TCP port.
    #[track_caller]
    pub fn wait_listening(&self) -> u16 {
        let pid = self.pid();
        wait_for("the daemon to listen", || {
            let info = bpm::daemon::read_daemon_info(&self.data)?;
            (info.pid == pid && self.data.join(bpm::daemon::SOCKET_FILE).exists())
                .then_some(info.port)
        })
    }

    /// A client of its JSON API, once it listens.
    #[track_caller]
    pub fn api(&self) -> Api {
        Api::new(self.wait_listening())
    }

    #[track_caller]
    pub fn signal(&self, sig: Signal) {
        self.proc.signal(sig);
    }

    /// SIGKILL it (its processes are left running) and reap it.
    #[track_caller]
    pub fn kill(&mut self) {
        self.proc.signal(Signal::SIGKILL);
        self.proc.wait_exit();
    }

    /// SIGTERM it (it stops its processes) and wait for its exit status.
    #[track_caller]
    pub fn terminate(&mut self) -> ExitStatus {
        self.proc.signal(Signal::SIGTERM);
        self.proc.wait_exit()
    }

    /// For a daemon expected to exit by itself: its exit status and stderr.
    #[track_caller]
    pub fn wait_failure(self) -> (ExitStatus, String) {
        let (status, _, err) = self.proc.wait_with_output();
        (status, err)
    }
}

/// Stops the daemon named in a data directory's `daemon.json` on drop (SIGTERM, and waits
/// until it is gone): for daemons a `bpm` command autostarted.
pub struct DaemonOf(pub PathBuf);

impl DaemonOf {
    /// Stop it now; its pid, if one was recorded.
    pub fn stop(&self) -> Option<u32> {
        let info = bpm::daemon::read_daemon_info(&self.0)?;
        terminate(info.pid);
        Some(info.pid)
    }
}

impl Drop for DaemonOf {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Options for an in-process daemon of `dirs`: port 0, no passthrough.
pub fn options(dirs: &Dirs) -> bpm::daemon::Options {
    bpm::daemon::Options {
        dir: dirs.project.clone(),
        data_dir: Some(dirs.data.clone()),
        port: Some(0),
        passthrough: Some(false),
        ..Default::default()
    }
}

/// `bpm::daemon::run` in this process, on a runtime (and thread) of its own, so that
/// stopping it on drop works from sync and async tests alike, also when they panic.
pub struct InProcess {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    /// Start a daemon with `opts` and wait until it listens.
    pub fn start(opts: bpm::daemon::Options) -> InProcess {
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // The daemon changes the umask while it binds its socket, before it is ready.
        let umask = umask_exclusive();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(bpm::daemon::run(
                opts,
                async move {
                    let _ = stop_rx.await;
                },
                move |info| {
                    let _ = port_tx.send(info.port);
                },
            ))
        });
        let port = port_rx.recv_timeout(DEADLINE);
        drop(umask);
        let port = match port {
            Ok(port) => port,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let e = thread.join().unwrap().err();
                panic!("the in-process daemon failed to start: {e:?}");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("timed out after {DEADLINE:?} waiting for the in-process daemon to listen")
            }
        };
        InProcess {
            port,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn api(&self) -> Api {
        Api::new(self.port)
    }

    /// Its MCP endpoint.
    pub fn mcp_url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// Stop it (its processes too) and check it ended without an error.
    pub async fn shutdown(mut self) {
        let done = self.stop_and_join();
        tokio::task::spawn_blocking(done)
            .await
            .unwrap()
            .expect("the daemon ran and stopped without an error");
    }

    /// Ask it to stop; a function that waits for its end.
    fn stop_and_join(&mut self) -> impl FnOnce() -> anyhow::Result<()> + Send + 'static {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let thread = self.thread.take();
        move || match thread {
            Some(t) => t.join().expect("the daemon thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        // Also after a panic: stop its processes and wait for that, whatever the outcome.
        let _ = self.stop_and_join()();
    }
}

/// Wait until every line the daemon on `port` captured so far is durable (before a
/// SIGKILL whose survivors a test counts).
pub fn flushed(api: &Api) {
    let (code, body) = api.post("/api/flush", None);
    assert_eq!(code, 200, "flush: {body}");
}
