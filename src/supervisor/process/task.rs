//! The supervisor task: the state machine that owns one process. It waits on commands,
//! the child's exit, the crash backoff, the readiness probe and builds at once, applies
//! the restart policy, and orchestrates build-then-swap.

use std::io;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::build::{BuildCtx, error_lines, read_tail, run_build};
use super::capture::{
    Captures, Recorded, SpawnFailure, convert_status, end_in_background, release, spawn_recorded,
};
use super::{
    Cmd, ExitInfo, Mode, ProcessError, ProcessSpec, Published, Reply, State, Status, Timing, probe,
};
use crate::config::{Ready, ReadyCheck, RestartPolicy};
use crate::logs::{Actor, EventKind, ExitStatus, InstanceKind, InstanceWriter, Store};
use crate::supervisor::{ports, procgroup};

mod health;

/// Lines read back from an instance that exited, to find its errors and port conflicts.
const EXIT_TAIL: usize = 200;

/// Start the task that owns `spec`, driven by `rx` and publishing on `published`.
pub(super) fn spawn(
    spec: ProcessSpec,
    store: Store,
    mode: watch::Receiver<Mode>,
    timing: Timing,
    rx: mpsc::Receiver<Cmd>,
    published: watch::Sender<Published>,
) {
    let (internal_tx, internal_rx) = mpsc::unbounded_channel();
    let sup = Supervisor {
        spec,
        store,
        mode,
        timing,
        rx,
        internal_tx,
        internal_rx,
        published,
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
}

/// A running instance.
struct Run {
    child: Child,
    pid: u32,
    pgid: u32,
    /// Everything it started (its group, what left the group), for stops.
    scope: procgroup::Scope,
    instance: u64,
    writer: InstanceWriter,
    captures: Captures,
    probe: Option<JoinHandle<()>>,
    started: Instant,
    started_at_ms: i64,
    ready: Option<bool>,
    /// Health checks failed in a row.
    health_failures: u32,
}

/// A build under way.
struct PendingBuild {
    id: u64,
    cancel: Option<oneshot::Sender<bool>>,
    task: JoinHandle<()>,
    waiters: Vec<Reply>,
    /// A restart asked for it (as opposed to a start of a stopped process).
    restart: bool,
    /// The crash policy's restart asked for it (dev mode): the crash count stays.
    crash: bool,
    /// The mode it builds for.
    mode: Mode,
}

enum Internal {
    ProbeReady {
        instance: u64,
    },
    /// A health check of a ready instance: every failure, and the first pass after one.
    Health {
        instance: u64,
        result: Result<(), String>,
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
                Wake::Internal(Internal::Health { instance, result }) => {
                    self.on_health(instance, result).await
                }
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
                    // A start asked for it too: a manual start resets the crash count.
                    build.crash = false;
                    build.waiters.push(reply);
                } else {
                    self.backoff = None;
                    self.crash_count = 0;
                    if self.spec.build.is_some() {
                        self.begin_build(Some(reply), false);
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
                    build.crash = false;
                    build.waiters.push(reply);
                } else if self.spec.build.is_some() {
                    self.begin_build(Some(reply), true);
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
        self.stop_run_then(force).await;
    }

    /// Stop the running instance to start a new one at once. Nothing acts on this exit.
    async fn swap_out_run(&mut self) {
        self.stop_run_then(false).await;
    }

    async fn stop_run_then(&mut self, force: bool) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        if let Some(p) = run.probe.take() {
            p.abort();
        }
        // Seen at once: while the group is stopped and the pipes drain, the process is
        // exiting, never "running" (nobody may attach to it or count it as started).
        self.state = State::Exiting;
        self.publish();
        let (sig, grace) = if force {
            (Signal::SIGKILL, Duration::ZERO)
        } else {
            (self.spec.stop_signal, self.spec.stop_timeout)
        };
        let out = procgroup::stop_group(&mut run.child, &run.scope, sig, grace).await;
        self.stopped(&run, &out.left);
        let status = out.status.map_or(ExitStatus::Unknown, convert_status);
        self.end_run(run, status, false).await;
    }

    /// After a run's stop: release its cgroup, and say what survived it (in the stop's
    /// answer, `last_error`, and as an event).
    fn stopped(&mut self, run: &Run, left: &[procgroup::Member]) {
        release(&run.scope);
        if !left.is_empty() {
            let text = format!("still running after SIGKILL: {}", procgroup::describe(left));
            self.record(Some(run.instance), EventKind::Note { text: text.clone() });
            self.last_error = Some(text);
        }
    }

    /// The leader exited by itself.
    async fn on_exit(&mut self, result: io::Result<std::process::ExitStatus>) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        if let Some(p) = run.probe.take() {
            p.abort();
        }
        // Seen at once: while the group is stopped and the pipes drain, the process is
        // exiting, never "running" (nobody may attach to it or count it as started).
        self.state = State::Exiting;
        self.publish();
        let status = match result {
            Ok(s) => convert_status(s),
            Err(e) => {
                tracing::warn!(process = %self.spec.name, error = %e, "cannot wait for process");
                ExitStatus::Unknown
            }
        };
        // The rest of the group (and what left it) goes with the leader.
        let out = procgroup::stop_group(
            &mut run.child,
            &run.scope,
            self.spec.stop_signal,
            self.spec.stop_timeout,
        )
        .await;
        self.stopped(&run, &out.left);
        let ran = run.started.elapsed();
        self.end_run(run, status.clone(), true).await;

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

    /// After the run's group is gone: drain its output, end its instance, record the exit,
    /// and look at its last lines.
    ///
    /// The end is queued, not waited for: the exit is known at once to status, followers
    /// and the restart policy (the instance's lines stay readable from the ring), and
    /// becomes durable behind its last lines, however slow the disk. The store writes in
    /// order, so a next instance's start is never durable before this end.
    async fn end_run(&mut self, run: Run, status: ExitStatus, by_itself: bool) {
        let Run {
            instance,
            writer,
            captures,
            started,
            ..
        } = run;
        captures.drain().await;
        end_in_background(writer, status.clone(), &self.spec.name);
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
            scope,
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
            true,
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
        let captures = Captures::start(stdout, stderr, &writer, prefix);
        let probe = self.spec.ready.as_ref().map(|ready| {
            let (check, store, tx) = (
                ready.check.clone(),
                self.store.clone(),
                self.internal_tx.clone(),
            );
            let health = ready.health_interval();
            let scope = scope.clone();
            tokio::spawn(async move {
                if !probe::passes(check.clone(), store, instance).await {
                    return;
                }
                let _ = tx.send(Internal::ProbeReady { instance });
                let Some(interval) = health else {
                    return;
                };
                // Then the same check again, every interval, while the run lasts.
                let mut was_ok = true;
                loop {
                    tokio::time::sleep(interval).await;
                    let result = probe::healthy(&check, &scope).await;
                    let ok = result.is_ok();
                    if !ok || !was_ok {
                        let _ = tx.send(Internal::Health { instance, result });
                    }
                    was_ok = ok;
                }
            })
        });
        Ok(Run {
            child,
            pid,
            pgid,
            scope,
            instance,
            writer,
            captures,
            ready: probe.as_ref().map(|_| false),
            probe,
            health_failures: 0,
            started,
            started_at_ms: unix_ms(),
        })
    }

    async fn on_backoff_over(&mut self) {
        self.backoff = None;
        if self.run.is_some() {
            return;
        }
        self.record(
            self.last_instance,
            EventKind::RestartRequested {
                by: Actor::CrashPolicy,
            },
        );
        // In dev mode the crash may be fixed in the source by now: build first (a failed
        // build leaves it failed with the build's first errors, as a failed restart does).
        if *self.mode.borrow() == Mode::Dev && self.spec.build_argv(Mode::Dev).is_some() {
            self.begin_build(None, true);
            if let Some(b) = &mut self.build {
                b.crash = true;
            }
            return;
        }
        self.restarts += 1;
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

    fn begin_build(&mut self, reply: Option<Reply>, restart: bool) {
        let mode = *self.mode.borrow();
        let Some(argv) = self.spec.build_argv(mode) else {
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
            waiters: reply.into_iter().collect(),
            restart,
            crash: false,
            mode,
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
        let now = *self.mode.borrow();
        if result.is_ok() && self.spec.build_argv(now) != self.spec.build_argv(build.mode) {
            // The mode changed while it built (a daemon that starts in release, switched
            // to dev at once): what it built is the other mode's, and this mode's program
            // may not exist yet. Build again; those waiting get that build's answer.
            self.begin_build(None, build.restart);
            if let Some(again) = self.build.as_mut() {
                again.waiters = build.waiters;
                again.crash = build.crash;
            }
            return;
        }
        let reply = match result {
            Ok(()) => {
                self.backoff = None;
                if !build.crash {
                    self.crash_count = 0;
                }
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

fn unix_ms() -> i64 {
    crate::logs::now_us() / 1000
}
