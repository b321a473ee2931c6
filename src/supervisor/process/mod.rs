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
//! is reaped, the rest of its scope is stopped (its group and what left it: like
//! systemd's control-group kill mode), both pipes are drained to EOF, the instance is
//! finished in the store (durable), and only then is the exit recorded and the restart
//! policy applied.
//!
//! This file holds the handle and its messages; the task is in `task`, what it reports in
//! `status`, what it runs in `spec`, and the task's helpers in `capture` (output into the
//! store), `probe` (readiness) and `build`.

mod build;
mod capture;
mod probe;
mod spec;
mod status;
mod task;

pub use build::error_lines;
pub use probe::{http_ok, tcp_open};
pub use spec::{ProcessSpec, Timing, Variant, uses_direnv};
pub use status::{Mode, ProcessError, ReadyOutcome, State, Status};

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::logs::{Actor, ExitStatus, Store};

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
        task::spawn(spec, store, mode, timing, rx, pub_tx);
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

    /// Cancel a build under way (a restart's build-then-swap, or a start's build); the
    /// running instance, if any, keeps running. Callers waiting on it get `Cancelled`.
    pub async fn cancel_build(&self, by: Actor) -> Result<Status, ProcessError> {
        self.request(|reply| Cmd::CancelBuild { by, reply }).await
    }

    /// The latest status. Never waits for a command in progress.
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

    /// Wait until the running instance is ready (its readiness check passed; without a
    /// check, it stayed up for `settle`), it exits, or `timeout` passes
    /// ([`ReadyOutcome::Slow`]: the process keeps running). During a build, waits for the
    /// build and the start after it.
    pub async fn wait_ready(&self, timeout: Duration, settle: Duration) -> ReadyOutcome {
        let mut rx = self.published.clone();
        let mut target: Option<u64> = None;
        // Without a readiness check: when the instance has stayed up long enough.
        let mut settled_at: Option<tokio::time::Instant> = None;
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
                    // The instance we waited for exited and a new one started.
                    let replaced = target.is_some() && target != instance;
                    match &p.status.state {
                        State::Starting | State::Running if replaced => return exited(),
                        State::Starting => target = instance,
                        State::Running => {
                            target = instance;
                            if settle.is_zero() {
                                return ReadyOutcome::Ready;
                            }
                            settled_at.get_or_insert_with(|| tokio::time::Instant::now() + settle);
                        }
                        State::Ready if replaced => return exited(),
                        State::Ready => return ReadyOutcome::Ready,
                        // The end is being recorded: what it was comes next. An
                        // unhealthy instance was ready, but is not now: it may recover.
                        State::Building | State::Exiting | State::Unhealthy { .. } => {}
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
                let changed = match settled_at {
                    Some(at) => tokio::select! {
                        r = rx.changed() => r,
                        _ = tokio::time::sleep_until(at) => return ReadyOutcome::Ready,
                    },
                    None => rx.changed().await,
                };
                if changed.is_err() {
                    return ReadyOutcome::NotRunning;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(ReadyOutcome::Slow)
    }
}
