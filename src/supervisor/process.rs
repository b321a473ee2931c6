//! The supervision of one process.
//!
//! Built like watchexec's `Job`: one tokio task per process owns all of its state (the
//! child, its capture tasks, the crash count, the pending backoff, the pending build) and
//! is driven by messages from cloneable [`ProcessHandle`]s. Nothing else touches that
//! state, so nothing races it and no lock is held across an `.await`. The task waits on
//! everything at once with `tokio::select!`: a command, the child's exit, the end of a
//! backoff wait, a readiness probe, a build. A restart requested during a backoff wait
//! therefore acts at once, and a stop cancels the pending restart.
//!
//! The task publishes its [`Status`] on a `watch` channel after every change, so
//! [`ProcessHandle::status`] and [`ProcessHandle::wait_ready`] never queue behind a slow
//! operation (a stop waiting out its grace period).
//!
//! Order at exit, so that nothing is lost and nothing is acted upon too early: the leader
//! is reaped, the rest of its group is stopped (like systemd's control-group kill mode),
//! both pipes are drained to EOF, the instance is finished in the store (durable), and
//! only then is the exit recorded and the restart policy applied.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{ProcessConfig, Ready, ReadyCheck, RestartPolicy};
use crate::logs::{
    Actor, EventKind, ExitStatus, Filter, InstanceKind, InstanceWriter, SpawnInfo, Store, Stream,
    Window,
};
use crate::supervisor::{ports, procgroup};

/// Size of the buffer each capture task reads into.
const READ_BUF: usize = 64 * 1024;

/// How long to wait for the pipes to reach EOF once the group is gone. Only a process that
/// left the group (`setsid`) and kept the pipe can hold them open that long; its output
/// after that is not captured.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Lines read back from an instance that exited, to find its errors and port conflicts.
const EXIT_TAIL: usize = 200;

/// Lines read back from a failed build to find its errors.
const BUILD_TAIL: usize = 5000;

/// How many error lines are returned as evidence.
const MAX_ERROR_LINES: usize = 20;

/// How often TCP and HTTP readiness probes try again.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// How long capture waits for the store's writer before letting lines drop from the store.
const ROOM_WAIT: Duration = Duration::from_secs(1);

/// Whether runs and builds in `dir` go through direnv: the project has a `.envrc` and
/// `direnv` is installed.
pub fn uses_direnv(dir: &Path) -> bool {
    dir.join(".envrc").is_file()
        && std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join("direnv").is_file()))
}

/// How long one probe attempt may take.
const PROBE_ATTEMPT_LIMIT: Duration = Duration::from_secs(2);

/// The daemon's mode (DESIGN.md section 2): how crashes are waited out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A fixed wait ([`Timing::dev_crash_wait`]) so the developer can investigate.
    Dev,
    /// Backoff from [`Timing::backoff_initial`], times 1.5 per crash, up to
    /// [`Timing::backoff_max`].
    Release,
}

/// The durations of the restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub dev_crash_wait: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A run at least this long resets the crash count.
    pub stable_run: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            dev_crash_wait: Duration::from_secs(120),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            stable_run: Duration::from_secs(60),
        }
    }
}

impl Timing {
    pub fn from_config(config: &crate::config::Config) -> Timing {
        Timing {
            dev_crash_wait: config.dev_crash_wait,
            backoff_initial: config.release_backoff_initial,
            backoff_max: config.release_backoff_max,
            stable_run: config.stable_run,
        }
    }

    /// How long to wait before restarting after crash number `crash_count` (1-based).
    pub fn crash_wait(&self, mode: Mode, crash_count: u32) -> Duration {
        match mode {
            Mode::Dev => self.dev_crash_wait,
            Mode::Release => {
                let n = crash_count.saturating_sub(1).min(1000) as i32;
                let secs = self.backoff_initial.as_secs_f64() * 1.5f64.powi(n);
                let max = self.backoff_max.as_secs_f64();
                Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
            }
        }
    }
}

/// What to run and how to supervise it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    pub name: String,
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    /// Variables set on top of the daemon's environment.
    pub env: Vec<(String, String)>,
    /// A build command run, in `cwd`, before a start and on every restart (build-then-swap).
    pub build: Option<Vec<String>>,
    pub restart: RestartPolicy,
    pub stop_signal: Signal,
    /// Grace period between `stop_signal` and SIGKILL.
    pub stop_timeout: Duration,
    pub ready: Option<Ready>,
    /// Also copy every output line to the daemon's stdout, prefixed with `[name] `.
    pub passthrough: bool,
    /// What runs and builds instead in release mode (cargo's `--release` binary).
    pub release: Option<Variant>,
    /// Run and build through `direnv exec CWD` (the project has a `.envrc`).
    pub direnv: bool,
}

/// A mode-specific command and build.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub argv: Vec<String>,
    pub build: Option<Vec<String>>,
}

impl ProcessSpec {
    /// The command to run in `mode`.
    pub fn run_argv(&self, mode: Mode) -> Vec<String> {
        let argv = match (&self.release, mode) {
            (Some(v), Mode::Release) => &v.argv,
            _ => &self.argv,
        };
        self.wrap(argv)
    }

    /// The build command for `mode`, if the process has one.
    pub fn build_argv(&self, mode: Mode) -> Option<Vec<String>> {
        let build = match (&self.release, mode) {
            (Some(v), Mode::Release) => v.build.as_ref(),
            _ => self.build.as_ref(),
        };
        build.map(|b| self.wrap(b))
    }

    fn wrap(&self, argv: &[String]) -> Vec<String> {
        if self.direnv {
            let mut v = vec![
                "direnv".to_owned(),
                "exec".to_owned(),
                self.cwd.display().to_string(),
            ];
            v.extend(argv.iter().cloned());
            v
        } else {
            argv.to_vec()
        }
    }

    /// The spec of a configured process. For `type = "rust"` the argv is only known once
    /// cargo has built the binary: `argv` is then just `config.args`, and the caller
    /// is expected to put the executable in front.
    pub fn from_config(config: &ProcessConfig, passthrough: bool) -> ProcessSpec {
        ProcessSpec {
            name: config.name.clone(),
            argv: config.command.iter().chain(&config.args).cloned().collect(),
            cwd: config.cwd.clone(),
            env: config
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            build: config.build.clone(),
            restart: config.restart,
            stop_signal: config.stop_signal.signal(),
            stop_timeout: config.stop_timeout,
            ready: config.ready.clone(),
            passthrough,
            release: None,
            direnv: uses_direnv(&config.cwd),
        }
    }
}

/// Where a process is in its life.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Never started, or stopped on request.
    Stopped,
    /// Running, its readiness check has not passed yet.
    Starting,
    /// Running, without a readiness check.
    Running,
    /// Running, its readiness check passed.
    Ready,
    /// Crashed; restarts at `until_unix_ms` unless told otherwise.
    Backoff { until_unix_ms: i64 },
    /// Nothing runs and a build is under way (while an old instance runs during a
    /// build-then-swap, the state is that instance's and [`Status::building`] is set).
    Building,
    /// Exited by itself and the restart policy does not restart it.
    Exited {
        #[serde(serialize_with = "crate::logs::serialize_display")]
        #[schemars(with = "String")]
        status: ExitStatus,
    },
    /// Could not be started (the command or its build failed).
    Failed { error: String },
}

impl State {
    /// Whether an instance is running.
    pub fn is_running(&self) -> bool {
        matches!(self, State::Starting | State::Running | State::Ready)
    }
}

/// A snapshot of a supervised process.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Status {
    pub name: String,
    pub state: State,
    pub pid: Option<u32>,
    pub pgid: Option<u32>,
    /// When the running instance started (Unix ms).
    pub started_at: Option<i64>,
    /// Restarts since the supervisor started (requested or by the crash policy).
    pub restarts: u32,
    /// Consecutive crashes; reset by a stable run and by a manual start or restart.
    pub crash_count: u32,
    /// How the last instance ended, e.g. "exit code 1" or "killed by signal 9".
    #[serde(serialize_with = "crate::logs::serialize_display_opt")]
    #[schemars(with = "Option<String>")]
    pub last_exit: Option<ExitStatus>,
    /// The newest run instance: the running one, else the one that ran last.
    pub instance: Option<u64>,
    /// Whether the readiness check passed; `None` without a check or when nothing runs.
    pub ready: Option<bool>,
    /// A build is under way.
    pub building: bool,
    pub last_error: Option<String>,
}

/// Why a request failed. Messages are meant for the user as they are.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {name}: {message}")]
    Spawn { name: String, message: String },
    #[error("the build of {name} failed ({}); the old instance keeps running if there was one{}",
        code.map_or_else(|| "killed or not started".to_string(), |c| format!("exit code {c}")),
        if first_errors.is_empty() { String::new() } else { format!(":\n{}", first_errors.join("\n")) })]
    BuildFailed {
        name: String,
        code: Option<i32>,
        first_errors: Vec<String>,
    },
    #[error("the request for {name} was cancelled by a stop")]
    Cancelled { name: String },
    #[error("the supervisor of {name} has shut down")]
    Gone { name: String },
}

/// The answer of [`ProcessHandle::wait_ready`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReadyOutcome {
    /// The readiness check passed (immediately, for a process without one).
    Ready,
    /// Still not ready at the timeout; the process keeps running.
    Slow,
    /// The instance exited before it was ready.
    Exited {
        status: ExitStatus,
        first_error_lines: Vec<String>,
    },
    /// Could not be started.
    Failed { error: String },
    /// Nothing runs (stopped).
    NotRunning,
}

/// How the last run ended, for [`ReadyOutcome::Exited`].
#[derive(Debug, Clone, PartialEq)]
struct ExitInfo {
    instance: u64,
    status: ExitStatus,
    first_error_lines: Vec<String>,
}

/// What the task publishes.
#[derive(Debug, Clone)]
struct Published {
    status: Status,
    last_exit: Option<ExitInfo>,
    /// The supervisor task has ended.
    gone: bool,
}

type Reply = oneshot::Sender<Result<Status, ProcessError>>;

enum Cmd {
    Start {
        by: Actor,
        reply: Reply,
    },
    Stop {
        by: Actor,
        force: bool,
        reply: Reply,
    },
    Restart {
        by: Actor,
        reply: Reply,
    },
    CancelBuild {
        by: Actor,
        reply: Reply,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A cloneable handle on one process's supervisor task.
#[derive(Clone)]
pub struct ProcessHandle {
    name: String,
    tx: mpsc::Sender<Cmd>,
    published: watch::Receiver<Published>,
}

impl std::fmt::Debug for ProcessHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ProcessHandle {
    /// Start the supervisor task of `spec` (the process itself is not started). Must be
    /// called within a tokio runtime. When every handle is dropped, the task stops the
    /// process as [`Self::shutdown`] would.
    pub fn spawn_supervisor(
        spec: ProcessSpec,
        store: Store,
        mode: watch::Receiver<Mode>,
        timing: Timing,
    ) -> ProcessHandle {
        let (tx, rx) = mpsc::channel(64);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let initial = Published {
            status: Status {
                name: spec.name.clone(),
                state: State::Stopped,
                pid: None,
                pgid: None,
                started_at: None,
                restarts: 0,
                crash_count: 0,
                last_exit: None,
                instance: None,
                ready: None,
                building: false,
                last_error: None,
            },
            last_exit: None,
            gone: false,
        };
        let (pub_tx, pub_rx) = watch::channel(initial);
        let name = spec.name.clone();
        let sup = Supervisor {
            spec,
            store,
            mode,
            timing,
            rx,
            internal_tx,
            internal_rx,
            published: pub_tx,
            run: None,
            state: State::Stopped,
            restarts: 0,
            crash_count: 0,
            last_exit: None,
            last_exit_info: None,
            last_instance: None,
            last_error: None,
            backoff: None,
            build: None,
            next_build_id: 0,
        };
        tokio::spawn(sup.run_loop());
        ProcessHandle {
            name,
            tx,
            published: pub_rx,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn gone(&self) -> ProcessError {
        ProcessError::Gone {
            name: self.name.clone(),
        }
    }

    async fn request(&self, make: impl FnOnce(Reply) -> Cmd) -> Result<Status, ProcessError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Start the process (building it first if it has a build step). Returns the status
    /// once it is spawned, without waiting for readiness; if it already runs, returns its
    /// status. During a crash backoff, starts it at once.
    pub async fn start(&self, by: Actor) -> Result<Status, ProcessError> {
        self.request(|reply| Cmd::Start { by, reply }).await
    }

    /// Stop the process: the stop signal to its whole group, SIGKILL after the grace
    /// period (at once with `force`). Returns once the whole group is gone. Cancels a
    /// pending crash restart and a build under way.
    pub async fn stop(&self, by: Actor, force: bool) -> Result<Status, ProcessError> {
        self.request(|reply| Cmd::Stop { by, force, reply }).await
    }

    /// Restart the process. With a build step: build while the old instance keeps
    /// running, and swap only if the build succeeds. Never counted as a crash.
    pub async fn restart(&self, by: Actor) -> Result<Status, ProcessError> {
        self.request(|reply| Cmd::Restart { by, reply }).await
    }

    /// The latest status. Never waits for a command in progress.
    /// Cancel a build under way (a restart's build-then-swap, or a start's build); the
    /// running instance, if any, keeps running. Callers waiting on it get `Cancelled`.
    pub async fn cancel_build(&self, by: Actor) -> Result<Status, ProcessError> {
        self.request(|reply| Cmd::CancelBuild { by, reply }).await
    }

    pub async fn status(&self) -> Status {
        self.status_now()
    }

    /// [`Self::status`] for synchronous callers.
    pub fn status_now(&self) -> Status {
        self.published.borrow().status.clone()
    }

    /// Stop the process (with its grace period) and end the supervisor task.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Wait until the running instance is ready (its readiness check passed; at once
    /// without a check), it exits, or `timeout` passes ([`ReadyOutcome::Slow`]: the
    /// process keeps running). During a build, waits for the build and the start after it.
    pub async fn wait_ready(&self, timeout: Duration) -> ReadyOutcome {
        let mut rx = self.published.clone();
        let mut target: Option<u64> = None;
        let wait = async {
            loop {
                {
                    let p = rx.borrow_and_update();
                    let exited = || match &p.last_exit {
                        Some(e) => ReadyOutcome::Exited {
                            status: e.status.clone(),
                            first_error_lines: e.first_error_lines.clone(),
                        },
                        None => ReadyOutcome::NotRunning,
                    };
                    let instance = p.status.instance;
                    match &p.status.state {
                        State::Starting => {
                            if target.is_none() {
                                target = instance;
                            } else if target != instance {
                                // The instance we waited for exited and a new one started.
                                return exited();
                            }
                        }
                        State::Running | State::Ready => {
                            if target.is_some() && target != instance {
                                return exited();
                            }
                            return ReadyOutcome::Ready;
                        }
                        State::Building => {}
                        State::Backoff { .. } | State::Exited { .. } => return exited(),
                        State::Failed { error } => {
                            return ReadyOutcome::Failed {
                                error: error.clone(),
                            };
                        }
                        State::Stopped => return ReadyOutcome::NotRunning,
                    }
                    if p.gone {
                        return ReadyOutcome::NotRunning;
                    }
                }
                if rx.changed().await.is_err() {
                    return ReadyOutcome::NotRunning;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(ReadyOutcome::Slow)
    }
}

/// A running instance.
struct Run {
    child: Child,
    pid: u32,
    pgid: u32,
    instance: u64,
    writer: InstanceWriter,
    captures: Vec<JoinHandle<()>>,
    probe: Option<JoinHandle<()>>,
    started: Instant,
    started_at_ms: i64,
    ready: Option<bool>,
}

/// A build under way.
struct PendingBuild {
    id: u64,
    cancel: Option<oneshot::Sender<bool>>,
    task: JoinHandle<()>,
    waiters: Vec<Reply>,
    /// A restart asked for it (as opposed to a start of a stopped process).
    restart: bool,
}

enum Internal {
    ProbeReady {
        instance: u64,
    },
    BuildDone {
        id: u64,
        result: Result<(), ProcessError>,
    },
}

enum Wake {
    Cmd(Option<Cmd>),
    Exited(io::Result<std::process::ExitStatus>),
    BackoffOver,
    Internal(Internal),
}

/// The task that owns one process.
struct Supervisor {
    spec: ProcessSpec,
    store: Store,
    mode: watch::Receiver<Mode>,
    timing: Timing,
    rx: mpsc::Receiver<Cmd>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    published: watch::Sender<Published>,
    run: Option<Run>,
    state: State,
    restarts: u32,
    crash_count: u32,
    last_exit: Option<ExitStatus>,
    last_exit_info: Option<ExitInfo>,
    last_instance: Option<u64>,
    last_error: Option<String>,
    /// When the pending crash restart is due.
    backoff: Option<Instant>,
    build: Option<PendingBuild>,
    next_build_id: u64,
}

impl Supervisor {
    async fn run_loop(mut self) {
        loop {
            let wake = {
                let Supervisor {
                    rx,
                    run,
                    backoff,
                    internal_rx,
                    ..
                } = &mut self;
                let deadline = *backoff;
                tokio::select! {
                    cmd = rx.recv() => Wake::Cmd(cmd),
                    status = wait_child(run.as_mut()) => Wake::Exited(status),
                    _ = sleep_until_opt(deadline) => Wake::BackoffOver,
                    Some(msg) = internal_rx.recv() => Wake::Internal(msg),
                }
            };
            match wake {
                Wake::Cmd(Some(Cmd::Shutdown { reply })) => {
                    self.stop_everything(Actor::Daemon, false).await;
                    self.finish_task();
                    let _ = reply.send(());
                    return;
                }
                Wake::Cmd(None) => {
                    // Every handle is gone: nobody could ever stop it.
                    self.stop_everything(Actor::Daemon, false).await;
                    self.finish_task();
                    return;
                }
                Wake::Cmd(Some(cmd)) => self.on_command(cmd).await,
                Wake::Exited(status) => self.on_exit(status).await,
                Wake::BackoffOver => self.on_backoff_over().await,
                Wake::Internal(Internal::ProbeReady { instance }) => self.on_ready(instance),
                Wake::Internal(Internal::BuildDone { id, result }) => {
                    self.on_build_done(id, result).await
                }
            }
            self.publish();
        }
    }

    fn status(&self) -> Status {
        let run = self.run.as_ref();
        Status {
            name: self.spec.name.clone(),
            state: self.state.clone(),
            pid: run.map(|r| r.pid),
            pgid: run.map(|r| r.pgid),
            started_at: run.map(|r| r.started_at_ms),
            restarts: self.restarts,
            crash_count: self.crash_count,
            last_exit: self.last_exit.clone(),
            instance: run.map(|r| r.instance).or(self.last_instance),
            ready: run.and_then(|r| r.ready),
            building: self.build.is_some(),
            last_error: self.last_error.clone(),
        }
    }

    fn publish(&self) {
        let status = self.status();
        let last_exit = self.last_exit_info.clone();
        self.published.send_modify(|p| {
            p.status = status;
            p.last_exit = last_exit;
        });
    }

    /// Answer a request, publishing first so that the caller's next
    /// [`ProcessHandle::status`] already shows the result.
    fn reply(&self, reply: Reply, result: Result<Status, ProcessError>) {
        self.publish();
        let _ = reply.send(result);
    }

    fn finish_task(&self) {
        self.publish();
        self.published.send_modify(|p| p.gone = true);
    }

    fn record(&self, instance: Option<u64>, kind: EventKind) {
        self.store.record(Some(&self.spec.name), instance, kind);
    }

    async fn on_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Start { by, reply } => {
                tracing::debug!(process = %self.spec.name, ?by, "start requested");
                if self.run.is_some() {
                    self.reply(reply, Ok(self.status()));
                } else if let Some(build) = &mut self.build {
                    build.waiters.push(reply);
                } else {
                    self.backoff = None;
                    self.crash_count = 0;
                    if self.spec.build.is_some() {
                        self.begin_build(reply, false);
                    } else {
                        let result = self.spawn_run().await.map(|()| self.status());
                        self.reply(reply, result);
                    }
                }
            }
            Cmd::Restart { by, reply } => {
                self.record(
                    self.run.as_ref().map(|r| r.instance),
                    EventKind::RestartRequested { by },
                );
                if let Some(build) = &mut self.build {
                    build.restart = true;
                    build.waiters.push(reply);
                } else if self.spec.build.is_some() {
                    self.begin_build(reply, true);
                } else {
                    self.backoff = None;
                    self.crash_count = 0;
                    self.swap_out_run().await;
                    self.restarts += 1;
                    let result = self.spawn_run().await.map(|()| self.status());
                    self.reply(reply, result);
                }
            }
            Cmd::Stop { by, force, reply } => {
                self.stop_everything(by, force).await;
                self.reply(reply, Ok(self.status()));
            }
            Cmd::CancelBuild { by, reply } => {
                if self.cancel_build(false).await {
                    self.record(
                        self.run.as_ref().map(|r| r.instance),
                        EventKind::Note {
                            text: format!("build cancelled by {by:?}"),
                        },
                    );
                    if matches!(self.state, State::Building) {
                        self.state = State::Stopped;
                    }
                }
                self.reply(reply, Ok(self.status()));
            }
            Cmd::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    /// Cancel a build and a pending restart, stop the running instance; state Stopped.
    async fn stop_everything(&mut self, by: Actor, force: bool) {
        self.record(
            self.run.as_ref().map(|r| r.instance),
            EventKind::StopRequested { by },
        );
        self.backoff = None;
        self.cancel_build(force).await;
        self.stop_run(force).await;
        self.state = State::Stopped;
    }

    /// Stop a build under way (its process group); its waiters get `Cancelled`. A running
    /// instance is left alone. Whether there was one.
    async fn cancel_build(&mut self, force: bool) -> bool {
        let Some(mut build) = self.build.take() else {
            return false;
        };
        if let Some(cancel) = build.cancel.take() {
            let _ = cancel.send(force);
        }
        let _ = (&mut build.task).await;
        for w in build.waiters {
            let _ = w.send(Err(ProcessError::Cancelled {
                name: self.spec.name.clone(),
            }));
        }
        true
    }

    /// Stop the running instance, if any, on our own initiative: never a crash.
    async fn stop_run(&mut self, force: bool) {
        self.stop_run_then(force, false).await;
    }

    /// Stop the running instance to start a new one at once: its end becomes durable in
    /// the background (its lines stay readable from the ring meanwhile), so the commit's
    /// fsync does not add to the restart's downtime. Nothing acts on this exit.
    async fn swap_out_run(&mut self) {
        self.stop_run_then(false, true).await;
    }

    async fn stop_run_then(&mut self, force: bool, defer_finish: bool) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        if let Some(p) = run.probe.take() {
            p.abort();
        }
        let (sig, grace) = if force {
            (Signal::SIGKILL, Duration::ZERO)
        } else {
            (self.spec.stop_signal, self.spec.stop_timeout)
        };
        let out = procgroup::stop_group(&mut run.child, run.pgid, sig, grace).await;
        let status = out.status.map_or(ExitStatus::Unknown, convert_status);
        self.end_run(run, status, false, defer_finish).await;
    }

    /// The leader exited by itself.
    async fn on_exit(&mut self, result: io::Result<std::process::ExitStatus>) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        if let Some(p) = run.probe.take() {
            p.abort();
        }
        let status = match result {
            Ok(s) => convert_status(s),
            Err(e) => {
                tracing::warn!(process = %self.spec.name, error = %e, "cannot wait for process");
                ExitStatus::Unknown
            }
        };
        // The rest of the group goes with the leader.
        procgroup::stop_group(
            &mut run.child,
            run.pgid,
            self.spec.stop_signal,
            self.spec.stop_timeout,
        )
        .await;
        let ran = run.started.elapsed();
        self.end_run(run, status.clone(), true, false).await;

        if ran >= self.timing.stable_run {
            self.crash_count = 0;
        }
        let restart = match self.spec.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !status.success(),
            RestartPolicy::Never => false,
        };
        if restart {
            self.crash_count = self.crash_count.saturating_add(1);
            let instance = self.last_instance;
            self.record(
                instance,
                EventKind::CrashDetected {
                    status,
                    crash_count: self.crash_count,
                },
            );
            let mode = *self.mode.borrow();
            let wait = self.timing.crash_wait(mode, self.crash_count);
            self.record(
                instance,
                EventKind::BackoffWait {
                    seconds: wait.as_secs_f64(),
                },
            );
            self.backoff = Some(Instant::now() + wait);
            self.state = State::Backoff {
                until_unix_ms: unix_ms() + wait.as_millis() as i64,
            };
        } else {
            self.state = State::Exited { status };
        }
    }

    /// After the run's group is gone: drain its output, make it durable, record the exit,
    /// and look at its last lines.
    async fn end_run(&mut self, run: Run, status: ExitStatus, by_itself: bool, defer_finish: bool) {
        let Run {
            instance,
            writer,
            captures,
            started,
            ..
        } = run;
        drain(captures).await;
        let finish = {
            let (name, status) = (self.spec.name.clone(), status.clone());
            async move {
                if let Err(e) = writer.finish_async(status).await {
                    tracing::warn!(process = %name, error = %e, "cannot finish instance");
                }
            }
        };
        if defer_finish {
            tokio::spawn(finish);
        } else {
            finish.await;
        }
        self.record(
            Some(instance),
            EventKind::Exited {
                status: status.clone(),
                duration_ms: started.elapsed().as_millis() as u64,
            },
        );
        let tail = read_tail(&self.store, instance, EXIT_TAIL).await;
        if by_itself {
            let conflict = tail
                .iter()
                .rev()
                .take(50)
                .find_map(|l| ports::detect_port_conflict(l));
            if let Some(port) = conflict {
                self.last_error = Some(match port {
                    Some(p) => format!("port {p} is already in use"),
                    None => "address already in use".to_string(),
                });
                if let Some(port) = port {
                    let holder = tokio::task::spawn_blocking(move || ports::describe_holder(port))
                        .await
                        .ok()
                        .flatten();
                    if let Some(h) = &holder {
                        self.last_error = Some(format!("port {port} is already in use by {h}"));
                    }
                    self.record(Some(instance), EventKind::PortConflict { port, holder });
                }
            }
        }
        self.last_exit = Some(status.clone());
        self.last_instance = Some(instance);
        self.last_exit_info = Some(ExitInfo {
            instance,
            status,
            first_error_lines: error_lines(&tail),
        });
    }

    /// Spawn a new run instance. On failure the state is `Failed`.
    async fn spawn_run(&mut self) -> Result<(), ProcessError> {
        debug_assert!(self.run.is_none());
        match self.try_spawn().await {
            Ok(run) => {
                self.state = if run.ready.is_some() {
                    State::Starting
                } else {
                    State::Running
                };
                self.last_instance = Some(run.instance);
                self.run = Some(run);
                self.publish();
                Ok(())
            }
            Err(message) => {
                self.last_error = Some(message.clone());
                self.state = State::Failed {
                    error: message.clone(),
                };
                Err(ProcessError::Spawn {
                    name: self.spec.name.clone(),
                    message,
                })
            }
        }
    }

    async fn try_spawn(&mut self) -> Result<Run, String> {
        // A readiness port that is already taken: say who holds it instead of starting
        // a process that can only fail with "address in use".
        if let Some(Ready {
            check: ReadyCheck::Tcp { port },
            ..
        }) = &self.spec.ready
        {
            let port = *port;
            let taken = tokio::task::spawn_blocking(move || {
                ports::port_in_use(port).then(|| ports::describe_holder(port))
            })
            .await
            .ok()
            .flatten();
            if let Some(holder) = taken {
                self.record(
                    None,
                    EventKind::PortConflict {
                        port,
                        holder: holder.clone(),
                    },
                );
                return Err(format!(
                    "port {port} is already in use{}; stop that process or change the port",
                    holder.map(|h| format!(" by {h}")).unwrap_or_default()
                ));
            }
        }
        let cwd = self.spec.cwd.display().to_string();
        let argv = self.spec.run_argv(*self.mode.borrow());
        let Recorded {
            child,
            pid,
            pgid,
            stdout,
            stderr,
            writer,
        } = spawn_recorded(
            &self.store,
            &self.spec.name,
            InstanceKind::Run,
            &argv,
            &self.spec.cwd,
            &self.spec.env,
        )
        .await
        .map_err(|e| match e {
            SpawnFailure::Spawn(m) => m,
            SpawnFailure::Record(m) => format!("cannot record its output: {m}"),
        })?;
        let started = Instant::now();
        let instance = writer.id();
        self.record(Some(instance), EventKind::Spawned { pid, argv, cwd });
        let prefix = self.spec.passthrough.then(|| self.spec.name.clone());
        let captures = vec![
            capture(stdout, Stream::Stdout, writer.clone(), prefix.clone()),
            capture(stderr, Stream::Stderr, writer.clone(), prefix),
        ];
        let probe = self.spec.ready.as_ref().map(|ready| {
            tokio::spawn(probe(
                ready.check.clone(),
                self.store.clone(),
                instance,
                self.internal_tx.clone(),
            ))
        });
        Ok(Run {
            child,
            pid,
            pgid,
            instance,
            writer,
            captures,
            ready: probe.as_ref().map(|_| false),
            probe,
            started,
            started_at_ms: unix_ms(),
        })
    }

    async fn on_backoff_over(&mut self) {
        self.backoff = None;
        if self.run.is_some() {
            return;
        }
        self.restarts += 1;
        self.record(
            self.last_instance,
            EventKind::RestartRequested {
                by: Actor::CrashPolicy,
            },
        );
        if let Err(e) = self.spawn_run().await {
            tracing::warn!(error = %e, "crash restart failed");
        }
    }

    fn on_ready(&mut self, instance: u64) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        if run.instance != instance || run.ready == Some(true) {
            return;
        }
        run.ready = Some(true);
        self.state = State::Ready;
        self.record(Some(instance), EventKind::Ready);
    }

    fn begin_build(&mut self, reply: Reply, restart: bool) {
        let Some(argv) = self.spec.build_argv(*self.mode.borrow()) else {
            return;
        };
        let id = self.next_build_id;
        self.next_build_id += 1;
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let ctx = BuildCtx {
            store: self.store.clone(),
            name: self.spec.name.clone(),
            argv,
            cwd: self.spec.cwd.clone(),
            env: self.spec.env.clone(),
            stop_signal: self.spec.stop_signal,
            stop_timeout: self.spec.stop_timeout,
            passthrough: self.spec.passthrough,
        };
        let internal = self.internal_tx.clone();
        let task = tokio::spawn(async move {
            let result = run_build(ctx, cancel_rx).await;
            let _ = internal.send(Internal::BuildDone { id, result });
        });
        self.build = Some(PendingBuild {
            id,
            cancel: Some(cancel_tx),
            task,
            waiters: vec![reply],
            restart,
        });
        if self.run.is_none() && self.backoff.is_none() {
            self.state = State::Building;
        }
    }

    async fn on_build_done(&mut self, id: u64, result: Result<(), ProcessError>) {
        if self.build.as_ref().is_none_or(|b| b.id != id) {
            return; // cancelled meanwhile
        }
        let Some(build) = self.build.take() else {
            return;
        };
        let reply = match result {
            Ok(()) => {
                self.backoff = None;
                self.crash_count = 0;
                let had_run = self.run.is_some();
                self.swap_out_run().await;
                if had_run || build.restart {
                    self.restarts += 1;
                }
                self.spawn_run().await.map(|()| self.status())
            }
            Err(e) => {
                self.last_error = Some(e.to_string());
                if self.run.is_none() && self.backoff.is_none() {
                    self.state = State::Failed {
                        error: e.to_string(),
                    };
                }
                Err(e)
            }
        };
        for w in build.waiters {
            self.reply(w, reply.clone());
        }
    }
}

/// Wait for the child to exit; never, if there is none. Cancel safe.
async fn wait_child(run: Option<&mut Run>) -> io::Result<std::process::ExitStatus> {
    match run {
        Some(run) => run.child.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn convert_status(s: std::process::ExitStatus) -> ExitStatus {
    match (s.code(), s.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(sig)) => ExitStatus::Signal(sig),
        (None, None) => ExitStatus::Unknown,
    }
}

fn unix_ms() -> i64 {
    crate::logs::now_us() / 1000
}

/// Copy one pipe into the instance until EOF.
/// A process spawned into its own group, with its store instance begun.
struct Recorded {
    child: Child,
    pid: u32,
    pgid: u32,
    stdout: tokio::process::ChildStdout,
    stderr: tokio::process::ChildStderr,
    writer: InstanceWriter,
}

enum SpawnFailure {
    /// The command could not be started (the message names program and directory).
    Spawn(String),
    /// It started, but the store refused the instance; the group was killed.
    Record(String),
}

/// Spawn `argv` in its own process group and begin its instance in the store: what a run
/// and a build have in common.
async fn spawn_recorded(
    store: &Store,
    name: &str,
    kind: InstanceKind,
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
) -> Result<Recorded, SpawnFailure> {
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
        env: env.to_vec(),
    })
    .map_err(|e| SpawnFailure::Spawn(e.to_string()))?;
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
            stdout,
            stderr,
            writer,
        }),
        Err(e) => {
            procgroup::stop_group(&mut child, pgid, Signal::SIGKILL, Duration::ZERO).await;
            Err(SpawnFailure::Record(e.to_string()))
        }
    }
}

fn capture<R>(
    mut pipe: R,
    stream: Stream,
    writer: InstanceWriter,
    prefix: Option<String>,
) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; READ_BUF];
        let mut pass = prefix.map(Passthrough::new);
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    writer.append(stream, &buf[..n]);
                    // A child printing faster than the disk writes is slowed down (as a
                    // file would slow it) rather than losing lines; after a second of a
                    // stalled disk the store drops lines instead, and says so.
                    writer.wait_for_room(ROOM_WAIT).await;
                    if let Some(p) = &mut pass {
                        p.feed(&buf[..n]);
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

/// Wait for the capture tasks to reach EOF (bounded: see [`DRAIN_LIMIT`]).
async fn drain(captures: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + DRAIN_LIMIT;
    for mut task in captures {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            tracing::warn!("output pipe still open after the process group is gone");
            task.abort();
        }
    }
}

/// The last `n` lines of an instance, as text.
async fn read_tail(store: &Store, instance: u64, n: usize) -> Vec<String> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        store
            .read(instance, Window::Tail(n), &Filter::default())
            .map(|lines| lines.iter().map(|l| l.text().into_owned()).collect())
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default()
}

/// The lines that look like errors (contain "error", any case), at most 20; if none do,
/// the last 20 lines.
pub fn error_lines(lines: &[String]) -> Vec<String> {
    let errors: Vec<String> = lines
        .iter()
        .filter(|l| l.to_ascii_lowercase().contains("error"))
        .take(MAX_ERROR_LINES)
        .cloned()
        .collect();
    if errors.is_empty() {
        lines[lines.len().saturating_sub(MAX_ERROR_LINES)..].to_vec()
    } else {
        errors
    }
}

struct BuildCtx {
    store: Store,
    name: String,
    argv: Vec<String>,
    cwd: PathBuf,
    env: Vec<(String, String)>,
    stop_signal: Signal,
    stop_timeout: Duration,
    passthrough: bool,
}

/// Run a build as a build instance. `cancel` carries `force`.
async fn run_build(ctx: BuildCtx, cancel: oneshot::Receiver<bool>) -> Result<(), ProcessError> {
    let started = Instant::now();
    let failed = |code: Option<i32>, first_errors: Vec<String>| ProcessError::BuildFailed {
        name: ctx.name.clone(),
        code,
        first_errors,
    };
    ctx.store.record(
        Some(&ctx.name),
        None,
        EventKind::BuildStarted {
            argv: ctx.argv.clone(),
        },
    );
    let finished = |ok: bool| {
        ctx.store.record(
            Some(&ctx.name),
            None,
            EventKind::BuildFinished {
                ok,
                duration_ms: started.elapsed().as_millis() as u64,
            },
        );
    };
    let Recorded {
        mut child,
        pid: _,
        pgid,
        stdout,
        stderr,
        writer,
    } = match spawn_recorded(
        &ctx.store,
        &ctx.name,
        InstanceKind::Build,
        &ctx.argv,
        &ctx.cwd,
        &ctx.env,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            finished(false);
            let message = match e {
                SpawnFailure::Spawn(m) => m,
                SpawnFailure::Record(m) => format!("cannot record the build: {m}"),
            };
            return Err(failed(None, vec![message]));
        }
    };
    let instance = writer.id();
    let prefix = ctx.passthrough.then(|| format!("{} build", ctx.name));
    let captures = vec![
        capture(stdout, Stream::Stdout, writer.clone(), prefix.clone()),
        capture(stderr, Stream::Stderr, writer.clone(), prefix),
    ];
    let cancelled = tokio::select! {
        _ = child.wait() => None,
        force = cancel => Some(force.unwrap_or(false)),
    };
    let (sig, grace) = match cancelled {
        Some(true) => (Signal::SIGKILL, Duration::ZERO),
        _ => (ctx.stop_signal, ctx.stop_timeout),
    };
    let out = procgroup::stop_group(&mut child, pgid, sig, grace).await;
    let status = out.status.map_or(ExitStatus::Unknown, convert_status);
    drain(captures).await;
    if let Err(e) = writer.finish_async(status.clone()).await {
        tracing::warn!(process = %ctx.name, error = %e, "cannot finish build instance");
    }
    let ok = cancelled.is_none() && status.success();
    finished(ok);
    if cancelled.is_some() {
        return Err(ProcessError::Cancelled { name: ctx.name });
    }
    if ok {
        return Ok(());
    }
    let tail = read_tail(&ctx.store, instance, BUILD_TAIL).await;
    let code = match status {
        ExitStatus::Code(c) => Some(c),
        _ => None,
    };
    Err(failed(code, error_lines(&tail)))
}

/// Probe readiness until it passes, then tell the supervisor. Aborted when the run ends.
async fn probe(
    check: ReadyCheck,
    store: Store,
    instance: u64,
    tx: mpsc::UnboundedSender<Internal>,
) {
    let passed = match check {
        ReadyCheck::Log { pattern } => log_matches(&store, instance, &pattern).await,
        ReadyCheck::Tcp { port } => loop {
            if tcp_open(port).await {
                break true;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        },
        ReadyCheck::Http { url } => loop {
            if http_ok(&url).await {
                break true;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        },
    };
    if passed {
        let _ = tx.send(Internal::ProbeReady { instance });
    }
}

/// Whether a line of the instance matches `pattern`; false if the instance ends first.
async fn log_matches(store: &Store, instance: u64, pattern: &str) -> bool {
    let re = match regex::Regex::new(pattern) {
        Ok(re) => re,
        Err(e) => {
            tracing::warn!(pattern, error = %e, "invalid readiness regex");
            return false;
        }
    };
    let mut follower = store.follow(instance, 0);
    loop {
        match follower.next_batch(1024).await {
            Ok(Some(lines)) => {
                if lines.iter().any(|l| re.is_match(&l.text())) {
                    return true;
                }
            }
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow output for readiness");
                return false;
            }
        }
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub async fn tcp_open(port: u16) -> bool {
    matches!(
        tokio::time::timeout(PROBE_ATTEMPT_LIMIT, TcpStream::connect(("127.0.0.1", port))).await,
        Ok(Ok(_))
    )
}

/// Whether a GET of the `http://` URL answers with a 2xx or 3xx status.
pub async fn http_ok(url: &str) -> bool {
    tokio::time::timeout(PROBE_ATTEMPT_LIMIT, http_status(url))
        .await
        .ok()
        .flatten()
        .is_some_and(|code| (200..400).contains(&code))
}

/// The status code of a GET of an `http://` URL, with a plain TCP connection.
async fn http_status(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let addr = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: bpm\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_ascii_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_backoff_grows_by_half_up_to_max() {
        let t = Timing {
            dev_crash_wait: Duration::from_secs(120),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            stable_run: Duration::from_secs(60),
        };
        let secs: Vec<f64> = (1..=4)
            .map(|n| t.crash_wait(Mode::Release, n).as_secs_f64())
            .collect();
        assert_eq!(secs, [1.0, 1.5, 2.25, 3.375]);
        assert_eq!(t.crash_wait(Mode::Release, 100), Duration::from_secs(300));
        assert_eq!(
            t.crash_wait(Mode::Release, u32::MAX),
            Duration::from_secs(300)
        );
        assert_eq!(t.crash_wait(Mode::Dev, 7), Duration::from_secs(120));
    }

    #[test]
    fn error_lines_prefers_errors_else_tail() {
        let lines: Vec<String> = (0..30).map(|i| format!("line {i}")).collect();
        assert_eq!(error_lines(&lines), lines[10..]);
        let mut with = lines.clone();
        with.insert(3, "ERROR: boom".into());
        with.push("error[E0308]: mismatched types".into());
        assert_eq!(
            error_lines(&with),
            ["ERROR: boom", "error[E0308]: mismatched types"]
        );
    }

    #[tokio::test]
    async fn http_status_parses_a_plain_response() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for code in ["204 No Content", "500 Oops"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"GET /health?x=1 HTTP/1.1\r\n"));
                s.write_all(format!("HTTP/1.1 {code}\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/health?x=1");
        assert!(http_ok(&url).await);
        assert!(!http_ok(&url).await);
        server.await.unwrap();
        assert!(!http_ok("https://127.0.0.1:1/").await);
    }
}
