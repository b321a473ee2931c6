//! The operations layer: every verb the daemon offers, in one place, for every front end
//! (MCP, the local API for the CLI and TUI). Front ends translate requests into these
//! calls and results into their own formats; no logic lives in them. Requests and
//! answers are the types of [`crate::protocol`].
//!
//! - this module: the shared state ([`Ops`]), finding processes, start, stop, restart,
//!   mode, shutdown.
//! - `status`: status reports, also offline from the store alone.
//! - `logs`: reads and searches.
//! - `pages`: log reads as NDJSON records, page by page.
//! - `follow`: the follow stream's state machine.

mod follow;
mod logs;
mod many;
mod pages;
mod status;

pub use follow::MAX_FOLLOWERS;
pub use logs::read_logs;
pub use many::merge as merge_logs;
pub use pages::MAX_STREAMS;
pub use pages::{LogStream, PAGE_LINES, ndjson};
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
    Mode, ProcessError, ProcessHandle, ProcessSpec, ReadyOutcome, State, Status, Timing,
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
    /// Too many requests of this kind at once; try again later.
    #[error("{0}")]
    Busy(String),
}

/// A process as the daemon manages it.
struct Managed {
    handle: ProcessHandle,
    spec: ProcessSpec,
    /// Started at run time (not from `.mcp-run`); persisted in the store.
    runtime: bool,
}

/// What is persisted of a runtime process, so it is still listed after a restart.
/// JSON in the store's `processes` table; fields added later have defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuntimeSpec {
    pub name: String,
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// Runtime processes restart `never` unless the caller chose otherwise.
    #[serde(default = "never")]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub ready: Option<crate::config::Ready>,
}

fn never() -> RestartPolicy {
    RestartPolicy::Never
}

/// How long a start waits, without a readiness check, to see the process stay up.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(1);
/// How long a start waits for a process's readiness check by default.
pub const DEFAULT_READY_WAIT: Duration = Duration::from_secs(30);
/// Time allowed for the spawn itself before the settle time starts.
const SPAWN_ALLOWANCE: Duration = Duration::from_secs(5);

/// What waiting found, with the holder of the port when the output says the port was
/// taken.
fn readiness(o: ReadyOutcome) -> Readiness {
    match o {
        ReadyOutcome::Ready => Readiness::Ready,
        ReadyOutcome::Slow => Readiness::Slow,
        ReadyOutcome::Exited {
            status,
            first_error_lines,
        } => {
            let port_holder = first_error_lines
                .iter()
                .find_map(|l| crate::supervisor::ports::detect_port_conflict(l))
                .map(
                    |port| match port.and_then(crate::supervisor::ports::describe_holder) {
                        Some(h) => format!("port {} is held by {h}", port.unwrap_or_default()),
                        None => match port {
                            Some(p) => format!("port {p} was taken"),
                            None => "its port was taken".to_owned(),
                        },
                    },
                );
            Readiness::Exited {
                status,
                first_error_lines,
                port_holder,
            }
        }
        ReadyOutcome::Failed { error } => Readiness::Failed { error },
        ReadyOutcome::NotRunning => Readiness::NotRunning,
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
    /// Where running processes listen (see [`Ops::observe`]). A std lock: held only to
    /// copy or replace the map.
    observed: Mutex<status::Observed>,
    /// The last histories status read from the store (see `status.rs`).
    histories: Mutex<status::HistoryCache>,
    /// Cancelled when the daemon shuts down, so that open `follow` streams end (the HTTP
    /// server's graceful shutdown waits for them). A child of the daemon's token.
    closing: CancellationToken,
    /// Searches running at once (see `logs.rs`).
    searches: Arc<tokio::sync::Semaphore>,
    /// Follow streams open at once (see `follow.rs`).
    followers: Arc<tokio::sync::Semaphore>,
    /// Streamed log reads at once (see `pages.rs`).
    streams: Arc<tokio::sync::Semaphore>,
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
                histories: Mutex::default(),
                start_lock: tokio::sync::Mutex::new(()),
                // Starts in release: after a boot nobody is developing yet.
                mode: watch::channel(Mode::Release).0,
                last_agent_activity: Mutex::new(Instant::now()),
                started: Instant::now(),
                closing,
                observed: Mutex::default(),
                searches: Arc::new(tokio::sync::Semaphore::new(logs::MAX_SEARCHES)),
                followers: Arc::new(tokio::sync::Semaphore::new(follow::MAX_FOLLOWERS)),
                streams: Arc::new(tokio::sync::Semaphore::new(pages::MAX_STREAMS)),
            }),
        }
    }

    /// The processes, read-locked (held only to look up or copy, never across an
    /// `.await`).
    fn procs(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Managed>> {
        self.inner
            .processes
            .read()
            .unwrap_or_else(|p| p.into_inner())
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
        let procs = self.procs();
        procs.keys().cloned().collect()
    }

    /// Find a process by name, or by the pid of its running instance.
    fn find(&self, name_or_pid: &str) -> Result<(String, ProcessHandle), OpError> {
        let procs = self.procs();
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
        let procs = self.procs();
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
    /// returns that process (never another one than an explicitly named one). Answers
    /// once the process is ready, or has stayed up for the settle time, or has failed:
    /// see [`StartResult::readiness`].
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
                let _guard = self.inner.start_lock.lock().await;
                self.find_or_define(&req, argv)?
            }
        };
        if !already {
            handle.start(by).await?;
        }
        let readiness = if already {
            None
        } else {
            self.await_ready(&name, &handle, wait).await
        };
        self.observe(Some(&name)).await;
        let status = handle.status_now();
        let (ports, url) = self.observed().where_(&status);
        Ok(StartResult {
            status,
            cwd: self.cwd_of(&name),
            name,
            already_running: already,
            readiness,
            ports,
            url,
        })
    }

    /// The process a start of `argv` means: a live twin (same command and directory)
    /// to attach to, else a stopped twin to start again, else a new runtime process
    /// (`req.name`, or one derived from the command). A name never resolves to a
    /// process with another name.
    fn find_or_define(
        &self,
        req: &StartRequest,
        argv: &[String],
    ) -> Result<(String, ProcessHandle, bool), OpError> {
        if argv.is_empty() || argv[0].is_empty() {
            return Err(OpError::BadRequest(
                "the command is empty; pass the program and its arguments, e.g. [\"npm\", \"run\", \"dev\"]".into(),
            ));
        }
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
        let fits = |name: &str| req.name.as_deref().is_none_or(|w| w == name);
        let twins = self.same_command(argv, &cwd);
        if let Some((name, handle)) = twins
            .iter()
            .find(|(n, h)| fits(n) && h.status_now().state.is_running())
        {
            return Ok((name.clone(), handle.clone(), true));
        }
        if let Some((name, handle)) = twins.iter().find(|(n, _)| fits(n)) {
            return Ok((name.clone(), handle.clone(), false));
        }
        let name = self.new_name(req.name.as_deref(), argv)?;
        let spec = RuntimeSpec {
            name: name.clone(),
            argv: argv.to_vec(),
            cwd,
            env: req.env.clone(),
            restart: req.restart.unwrap_or(RestartPolicy::Never),
            ready: req.ready().map_err(OpError::BadRequest)?,
        };
        self.inner
            .store
            .put_process(&name, serde_json::to_vec(&spec).expect("serializable"))?;
        let handle = self.add(runtime_process_spec(&spec, self.inner.passthrough), true);
        Ok((name, handle, false))
    }

    /// Wait as a start or restart asked (`wait`: the readiness timeout, or the settle
    /// time of a process without a check; zero: not at all; none: the defaults).
    async fn await_ready(
        &self,
        name: &str,
        handle: &ProcessHandle,
        wait: Option<Duration>,
    ) -> Option<Readiness> {
        let has_check = self.spec_of(name).is_some_and(|s| s.ready.is_some());
        let (timeout, settle) = match (wait, has_check) {
            (Some(w), _) if w.is_zero() => return None,
            (Some(w), true) => (w, Duration::ZERO),
            (Some(w), false) => (w + SPAWN_ALLOWANCE, w),
            (None, true) => (DEFAULT_READY_WAIT, Duration::ZERO),
            (None, false) => (DEFAULT_SETTLE + SPAWN_ALLOWANCE, DEFAULT_SETTLE),
        };
        Some(readiness(handle.wait_ready(timeout, settle).await))
    }

    fn spec_of(&self, name: &str) -> Option<ProcessSpec> {
        let procs = self.procs();
        procs.get(name).map(|m| m.spec.clone())
    }

    fn cwd_of(&self, name: &str) -> PathBuf {
        self.spec_of(name).map(|s| s.cwd).unwrap_or_default()
    }

    /// The processes (runtime or configured) defined as `argv` in `cwd`.
    fn same_command(&self, argv: &[String], cwd: &std::path::Path) -> Vec<(String, ProcessHandle)> {
        let procs = self.procs();
        procs
            .iter()
            .filter(|(_, m)| m.spec.argv == argv && m.spec.cwd == cwd)
            .map(|(n, m)| (n.clone(), m.handle.clone()))
            .collect()
    }

    /// A name for a new runtime process: the one asked for (a stopped runtime process of
    /// that name is replaced by the new definition; its runs stay searchable under the
    /// name), else one derived from the command, made unique.
    fn new_name(&self, wanted: Option<&str>, argv: &[String]) -> Result<String, OpError> {
        if let Some(w) = wanted {
            if !crate::config::is_valid_process_name(w) {
                return Err(OpError::BadRequest(format!(
                    "`{w}` is not a valid process name: use letters, digits, '.', '_' and '-'"
                )));
            }
            let existing = {
                let procs = self.procs();
                procs
                    .get(w)
                    .map(|m| (m.runtime, m.handle.status_now(), m.spec.argv.join(" ")))
            };
            match existing {
                None => {}
                Some((false, _, _)) => {
                    return Err(OpError::BadRequest(format!(
                        "`{w}` is a process of the project's .mcp-run; start it by name without a command, or pick another name"
                    )));
                }
                Some((true, status, cmd))
                    if !matches!(
                        status.state,
                        State::Stopped | State::Exited { .. } | State::Failed { .. }
                    ) =>
                {
                    return Err(OpError::BadRequest(format!(
                        "a process named `{w}` is {} with another command (`{cmd}`); pick another name, or stop `{w}` first to reuse the name",
                        status.state
                    )));
                }
                Some((true, _, _)) => self.forget(w),
            }
            return Ok(w.to_owned());
        }
        let names = self.names();
        let base = derive_name(argv);
        let mut name = base.clone();
        let mut n = 2;
        while names.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        Ok(name)
    }

    /// Take a process out of the list (its supervisor ends; it is not running).
    fn forget(&self, name: &str) {
        let removed = self
            .inner
            .processes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(m) = removed {
            tokio::spawn(async move { m.handle.shutdown().await });
        }
    }

    /// Remove a runtime process that is not running from the list (and from the store's
    /// list, so it does not come back after a daemon restart). Its logs stay until
    /// retention removes them, unless `logs`: then they are deleted before this returns.
    pub async fn remove(&self, process: &str, logs: bool) -> Result<(), OpError> {
        let (name, handle) = self.find(process)?;
        let runtime = {
            let procs = self.procs();
            procs.get(&name).is_some_and(|m| m.runtime)
        };
        if !runtime {
            return Err(OpError::BadRequest(format!(
                "`{name}` is a process of the project's .mcp-run; remove it from the file instead"
            )));
        }
        let state = handle.status_now().state;
        if !matches!(
            state,
            State::Stopped | State::Exited { .. } | State::Failed { .. }
        ) {
            return Err(OpError::BadRequest(format!(
                "`{name}` is {state}; stop it first (`bpm stop {name}`), then remove it"
            )));
        }
        let store = self.inner.store.clone();
        let key = name.clone();
        tokio::task::spawn_blocking(move || store.remove_process(&key))
            .await
            .map_err(|e| OpError::BadRequest(e.to_string()))??;
        self.forget(&name);
        if logs {
            self.inner.store.remove_logs(&name).await?;
        }
        Ok(())
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

    /// Restart (build-then-swap where there is a build step), then wait as
    /// [`Ops::start`] does. An agent's restart switches the daemon to dev mode.
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
        handle.restart(by).await?;
        let readiness = self.await_ready(&name, &handle, wait).await;
        self.observe(Some(&name)).await;
        let status = handle.status_now();
        let (ports, url) = self.observed().where_(&status);
        Ok(StartResult {
            cwd: self.cwd_of(&name),
            name,
            already_running: false,
            status,
            readiness,
            ports,
            url,
        })
    }

    /// Wait until everything captured so far is durable in the store.
    pub async fn flush(&self) -> Result<(), OpError> {
        Ok(self.inner.store.flush_async().await?)
    }

    /// Stop every process (in parallel, each with its grace period).
    pub async fn shutdown_all(&self) {
        self.inner.closing.cancel();
        let handles: Vec<ProcessHandle> = {
            let procs = self.procs();
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
        let procs = self.procs();
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
        restart: spec.restart,
        stop_signal: nix::sys::signal::Signal::SIGTERM,
        stop_timeout: Duration::from_secs(5),
        ready: spec.ready.clone(),
        passthrough,
        release: None,
        direnv: crate::supervisor::process::uses_direnv(&spec.cwd),
    }
}

/// Programs that run something else: the name comes from what they run.
const RUNNERS: &[&str] = &[
    "python", "python3", "node", "npx", "pnpx", "bunx", "uvx", "deno", "ruby", "perl", "php", "sh",
    "bash", "zsh", "dash", "env", "exec", "nohup",
];

/// How long a derived name may grow; it is cut at a word boundary.
const NAME_MAX: usize = 24;

/// A short process name from a command, cut at word boundaries: `npm run dev` ->
/// `npm-run-dev`, `npx vite` -> `vite`, `python3 -m http.server 8080` ->
/// `http-server-8080`. Options are left out.
pub fn derive_name(argv: &[String]) -> String {
    let mut words: Vec<&str> = Vec::new();
    for a in argv {
        // A shell script's words count as words.
        words.extend(a.split_whitespace());
    }
    let base = |w: &str| w.rsplit('/').next().unwrap_or(w).to_owned();
    let mut words: Vec<String> = words
        .into_iter()
        .filter(|w| !w.starts_with('-'))
        .map(|w| {
            let cleaned: String = base(w)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            cleaned
                .split('-')
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join("-")
        })
        .filter(|w| !w.is_empty())
        .collect();
    while words.len() > 1
        && RUNNERS
            .iter()
            .any(|r| words[0] == *r || words[0].starts_with(&format!("{r}-")))
    {
        words.remove(0);
    }
    let mut name = String::new();
    for w in words {
        let grown = if name.is_empty() {
            w.clone()
        } else {
            format!("{name}-{w}")
        };
        if grown.len() > NAME_MAX {
            if name.is_empty() {
                name = w.chars().take(NAME_MAX).collect();
            }
            break;
        }
        name = grown;
    }
    let name = name.trim_matches('-').to_owned();
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
        assert_eq!(n(&["npx", "vite"]), "vite");
        assert_eq!(
            n(&["/usr/bin/python3", "-m", "http.server", "8000"]),
            "http-server-8000"
        );
        assert_eq!(
            n(&[
                "python3",
                "-m",
                "http.server",
                "48992",
                "--bind",
                "127.0.0.1"
            ]),
            "http-server-48992",
            "cut at a word boundary"
        );
        assert_eq!(n(&["sh", "-c", "echo hi && sleep 1"]), "echo-hi-sleep-1");
        assert_eq!(n(&["cargo", "run", "--release"]), "cargo-run");
        assert_eq!(n(&["--"]), "process");
        assert_eq!(n(&["sh"]), "sh");
        assert_eq!(n(&["x".repeat(40).as_str()]).len(), 24);
    }
}
