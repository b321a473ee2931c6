//! The operations layer: every verb the daemon offers, in one place, for every front end
//! (MCP, the local API for the CLI and TUI). Front ends translate requests into these
//! calls and results into their own formats; no logic lives in them. Requests and
//! answers are the types of [`crate::protocol`].
//!
//! - this module: the shared state ([`Ops`]), finding processes, start, stop, restart,
//!   mode, shutdown.
//! - `status`: status reports, also offline from the store alone.
//! - `logs`: reads and searches.
//! - `follow`: the follow stream's state machine.

mod follow;
mod logs;
mod status;

pub use logs::read_logs;
pub use status::offline_status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RestartPolicy};
use crate::logs::{Actor, EventKind, Store, StoreError};
use crate::protocol::{Readiness, StartRequest, StartResult};
use crate::search::SearchError;
use crate::supervisor::process::{
    Mode, ProcessError, ProcessHandle, ProcessSpec, ReadyOutcome, Status, Timing,
};

/// Why an operation failed. Each message names the problem and what would work.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("no process named `{name}`; {}", if known.is_empty() { "no processes are known yet: start one with a command".to_owned() } else { format!("known: {}", known.join(", ")) })]
    UnknownProcess { name: String, known: Vec<String> },
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// A process as the daemon manages it.
struct Managed {
    handle: ProcessHandle,
    spec: ProcessSpec,
    /// Started at run time (not from `.mcp-run`); persisted in the store.
    runtime: bool,
}

/// What is persisted of a runtime process, so it is still listed after a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuntimeSpec {
    pub name: String,
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
}

impl From<ReadyOutcome> for Readiness {
    fn from(o: ReadyOutcome) -> Readiness {
        match o {
            ReadyOutcome::Ready => Readiness::Ready,
            ReadyOutcome::Slow => Readiness::Slow,
            ReadyOutcome::Exited {
                status,
                first_error_lines,
            } => Readiness::Exited {
                status,
                first_error_lines,
            },
            ReadyOutcome::Failed { error } => Readiness::Failed { error },
            ReadyOutcome::NotRunning => Readiness::NotRunning,
        }
    }
}

/// The daemon's shared state and its verbs. Cheap to clone.
#[derive(Clone)]
pub struct Ops {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: Config,
    timing: Timing,
    passthrough: bool,
    /// A std lock: held only to look up or insert a handle, never across an `.await`.
    processes: RwLock<BTreeMap<String, Managed>>,
    /// Serializes runtime starts so two agents starting the same command get one process.
    start_lock: tokio::sync::Mutex<()>,
    mode: watch::Sender<Mode>,
    last_agent_activity: Mutex<Instant>,
    started: Instant,
    /// Cancelled when the daemon shuts down, so that open `follow` streams end (the HTTP
    /// server's graceful shutdown waits for them). A child of the daemon's token.
    closing: CancellationToken,
}

impl Ops {
    pub(crate) fn new(
        store: Store,
        config: Config,
        passthrough: bool,
        closing: CancellationToken,
    ) -> Ops {
        Ops {
            inner: Arc::new(Inner {
                store,
                timing: Timing::from_config(&config),
                config,
                passthrough,
                processes: RwLock::new(BTreeMap::new()),
                start_lock: tokio::sync::Mutex::new(()),
                // Starts in release: after a boot nobody is developing yet.
                mode: watch::channel(Mode::Release).0,
                last_agent_activity: Mutex::new(Instant::now()),
                started: Instant::now(),
                closing,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn mode(&self) -> Mode {
        *self.inner.mode.borrow()
    }

    /// Register a process (its supervisor starts idle).
    pub(crate) fn add(&self, spec: ProcessSpec, runtime: bool) -> ProcessHandle {
        let handle = ProcessHandle::spawn_supervisor(
            spec.clone(),
            self.inner.store.clone(),
            self.inner.mode.subscribe(),
            self.inner.timing,
        );
        self.inner
            .processes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                spec.name.clone(),
                Managed {
                    handle: handle.clone(),
                    spec,
                    runtime,
                },
            );
        handle
    }

    fn names(&self) -> Vec<String> {
        let procs = self
            .inner
            .processes
            .read()
            .unwrap_or_else(|p| p.into_inner());
        procs.keys().cloned().collect()
    }

    /// Find a process by name, or by the pid of its running instance.
    fn find(&self, name_or_pid: &str) -> Result<(String, ProcessHandle), OpError> {
        let procs = self
            .inner
            .processes
            .read()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(m) = procs.get(name_or_pid) {
            return Ok((name_or_pid.to_owned(), m.handle.clone()));
        }
        if let Ok(pid) = name_or_pid.parse::<u32>() {
            for (name, m) in procs.iter() {
                if m.handle.status_now().pid == Some(pid) {
                    return Ok((name.clone(), m.handle.clone()));
                }
            }
        }
        Err(OpError::UnknownProcess {
            name: name_or_pid.to_owned(),
            known: procs.keys().cloned().collect(),
        })
    }

    /// Like [`Ops::find`], but a process the store still has logs of (removed from the
    /// config since) is found too, without a handle.
    async fn find_or_stored(
        &self,
        name_or_pid: &str,
    ) -> Result<(String, Option<ProcessHandle>), OpError> {
        match self.find(name_or_pid) {
            Ok((name, handle)) => Ok((name, Some(handle))),
            Err(e) => {
                let store = self.inner.store.clone();
                let known = tokio::task::spawn_blocking(move || store.process_names())
                    .await
                    .map_err(|e| OpError::BadRequest(e.to_string()))??;
                if known.iter().any(|k| k == name_or_pid) {
                    Ok((name_or_pid.to_owned(), None))
                } else {
                    Err(e)
                }
            }
        }
    }

    /// A process's current status, without touching the store.
    pub fn status_now(&self, name_or_pid: &str) -> Result<Status, OpError> {
        Ok(self.find(name_or_pid)?.1.status_now())
    }

    /// Whether a process has a build step (rebuilt on a mode switch).
    pub fn has_build(&self, name: &str) -> bool {
        let procs = self
            .inner
            .processes
            .read()
            .unwrap_or_else(|p| p.into_inner());
        procs.get(name).is_some_and(|m| m.spec.build.is_some())
    }

    /// An agent did something: the dev-mode timer starts over.
    pub fn agent_activity(&self) {
        *self
            .inner
            .last_agent_activity
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn since_agent_activity(&self) -> Duration {
        self.inner
            .last_agent_activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// Switch the daemon's mode; later builds and crash waits follow it (the mode timer
    /// rebuilds what runs when it switches back to release).
    pub async fn set_mode(&self, mode: Mode, by: Actor) -> Result<Mode, OpError> {
        let from = self.mode();
        if from == mode {
            return Ok(mode);
        }
        self.inner.mode.send_replace(mode);
        self.inner.store.record(
            None,
            None,
            EventKind::ModeSwitched {
                from: from.to_string(),
                to: mode.to_string(),
                by,
            },
        );
        Ok(mode)
    }

    /// Start a configured or known process by name, or a new runtime process from a
    /// command. Idempotent: the same command in the same directory already running
    /// returns that process.
    pub async fn start(&self, req: StartRequest, by: Actor) -> Result<StartResult, OpError> {
        let wait = req.wait().map_err(OpError::BadRequest)?;
        let (name, handle, already) = match &req.command {
            None => {
                let Some(name) = &req.name else {
                    return Err(OpError::BadRequest(
                        "start needs a process name, or a command to run".into(),
                    ));
                };
                let (name, handle) = self.find(name)?;
                let already = handle.status_now().state.is_running();
                (name, handle, already)
            }
            Some(argv) => {
                if argv.is_empty() || argv[0].is_empty() {
                    return Err(OpError::BadRequest(
                        "the command is empty; pass the program and its arguments, e.g. [\"npm\", \"run\", \"dev\"]".into(),
                    ));
                }
                let _guard = self.inner.start_lock.lock().await;
                let cwd = match &req.cwd {
                    Some(c) if c.is_absolute() => c.clone(),
                    Some(c) => self.inner.config.dir.join(c),
                    None => self.inner.config.dir.clone(),
                };
                if !cwd.is_dir() {
                    return Err(OpError::BadRequest(format!(
                        "the working directory {} does not exist",
                        cwd.display()
                    )));
                }
                match self.find_same(argv, &cwd) {
                    Some((name, handle)) if handle.status_now().state.is_running() => {
                        (name, handle, true)
                    }
                    // Not running: start it again, unless the caller names another process.
                    Some((name, handle))
                        if req.name.as_deref().is_none_or(|wanted| wanted == name) =>
                    {
                        (name, handle, false)
                    }
                    _ => {
                        let name = self.unique_name(req.name.as_deref(), argv)?;
                        let spec = RuntimeSpec {
                            name: name.clone(),
                            argv: argv.clone(),
                            cwd: cwd.clone(),
                            env: req.env.clone(),
                        };
                        self.inner
                            .store
                            .put_process(&name, serde_json::to_vec(&spec).expect("serializable"))?;
                        let handle =
                            self.add(runtime_process_spec(&spec, self.inner.passthrough), true);
                        (name, handle, false)
                    }
                }
            }
        };
        let status = if already {
            handle.status_now()
        } else {
            handle.start(by).await?
        };
        let readiness = match wait {
            Some(t) if !already || status.ready != Some(true) => {
                Some(handle.wait_ready(t).await.into())
            }
            _ => None,
        };
        Ok(StartResult {
            status: handle.status_now(),
            name,
            already_running: already,
            readiness,
        })
    }

    /// The runtime or configured process running `argv` in `cwd`, if any.
    fn find_same(&self, argv: &[String], cwd: &std::path::Path) -> Option<(String, ProcessHandle)> {
        let procs = self
            .inner
            .processes
            .read()
            .unwrap_or_else(|p| p.into_inner());
        procs
            .iter()
            .find(|(_, m)| m.spec.argv == argv && m.spec.cwd == cwd)
            .map(|(n, m)| (n.clone(), m.handle.clone()))
    }

    fn unique_name(&self, wanted: Option<&str>, argv: &[String]) -> Result<String, OpError> {
        let names = self.names();
        if let Some(w) = wanted {
            if !crate::config::is_valid_process_name(w) {
                return Err(OpError::BadRequest(format!(
                    "`{w}` is not a valid process name: use letters, digits, '.', '_' and '-'"
                )));
            }
            if names.iter().any(|n| n == w) {
                return Err(OpError::BadRequest(format!(
                    "a process named `{w}` already exists with another command or directory; pick another name, or stop and reuse `{w}`"
                )));
            }
            return Ok(w.to_owned());
        }
        let base = derive_name(argv);
        let mut name = base.clone();
        let mut n = 2;
        while names.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        Ok(name)
    }

    pub async fn stop(&self, process: &str, force: bool, by: Actor) -> Result<Status, OpError> {
        let (_, handle) = self.find(process)?;
        Ok(handle.stop(by, force).await?)
    }

    /// Cancel a build under way; what runs keeps running.
    pub async fn cancel_build(&self, process: &str, by: Actor) -> Result<Status, OpError> {
        let (_, handle) = self.find(process)?;
        Ok(handle.cancel_build(by).await?)
    }

    /// Restart (build-then-swap where there is a build step). An agent's restart switches
    /// the daemon to dev mode.
    pub async fn restart(
        &self,
        process: &str,
        by: Actor,
        wait: Option<Duration>,
    ) -> Result<StartResult, OpError> {
        let (name, handle) = self.find(process)?;
        if by == Actor::Mcp {
            self.set_mode(Mode::Dev, Actor::Mcp).await?;
        }
        let status = handle.restart(by).await?;
        let readiness = match wait {
            Some(t) => Some(handle.wait_ready(t).await.into()),
            None => None,
        };
        Ok(StartResult {
            name,
            already_running: false,
            status: if readiness.is_some() {
                handle.status_now()
            } else {
                status
            },
            readiness,
        })
    }

    /// Stop every process (in parallel, each with its grace period).
    pub async fn shutdown_all(&self) {
        self.inner.closing.cancel();
        let handles: Vec<ProcessHandle> = {
            let procs = self
                .inner
                .processes
                .read()
                .unwrap_or_else(|p| p.into_inner());
            procs.values().map(|m| m.handle.clone()).collect()
        };
        let mut set = tokio::task::JoinSet::new();
        for h in handles {
            set.spawn(async move { h.shutdown().await });
        }
        while set.join_next().await.is_some() {}
    }

    /// Processes and whether they should start with the daemon.
    pub(crate) fn handles(&self) -> Vec<(String, ProcessHandle)> {
        let procs = self
            .inner
            .processes
            .read()
            .unwrap_or_else(|p| p.into_inner());
        procs
            .iter()
            .map(|(n, m)| (n.clone(), m.handle.clone()))
            .collect()
    }
}

/// The spec of a runtime process.
pub fn runtime_process_spec(spec: &RuntimeSpec, passthrough: bool) -> ProcessSpec {
    ProcessSpec {
        name: spec.name.clone(),
        argv: spec.argv.clone(),
        cwd: spec.cwd.clone(),
        env: spec.env.clone(),
        build: None,
        restart: RestartPolicy::OnFailure,
        stop_signal: nix::sys::signal::Signal::SIGTERM,
        stop_timeout: Duration::from_secs(5),
        ready: None,
        passthrough,
        release: None,
        direnv: crate::supervisor::process::uses_direnv(&spec.cwd),
    }
}

/// A process name from a command: `npm run dev` -> `npm-run-dev`.
pub fn derive_name(argv: &[String]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (i, a) in argv.iter().enumerate() {
        let a = if i == 0 {
            a.rsplit('/').next().unwrap_or(a)
        } else {
            a.as_str()
        };
        let cleaned: String = a
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let cleaned = cleaned.trim_matches('-').to_owned();
        if !cleaned.is_empty() {
            parts.push(cleaned);
        }
    }
    let mut name = parts.join("-");
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    if name.len() > 40 {
        name.truncate(40);
        name = name.trim_end_matches('-').to_owned();
    }
    if name.is_empty() {
        "process".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_commands() {
        let n = |v: &[&str]| derive_name(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(n(&["npm", "run", "dev"]), "npm-run-dev");
        assert_eq!(
            n(&["/usr/bin/python3", "-m", "http.server", "8000"]),
            "python3-m-http.server-8000"
        );
        assert_eq!(
            n(&["sh", "-c", "echo hi && sleep 1"]),
            "sh-c-echo-hi-sleep-1"
        );
        assert_eq!(n(&["--"]), "process");
    }
}
