//! The operations layer: every verb the daemon offers, in one place, for every front end
//! (MCP, the local API for the CLI and TUI). Front ends translate requests into these
//! calls and results into their own formats; no logic lives in them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{Config, RestartPolicy};
use crate::logs::{
    Actor, Event, EventKind, ExitStatus, Filter, InstanceKind, InstanceMeta, Line, Store,
    StoreError, Stream, Window,
};
use crate::search::{self, Query, SearchError};
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

/// A request to start a process.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StartRequest {
    /// A configured or known process; with `command`, the name to give it.
    pub name: Option<String>,
    /// A command to run as a new runtime process.
    pub command: Option<Vec<String>>,
    pub cwd: Option<PathBuf>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Wait this long for readiness and return evidence.
    pub wait: Option<Duration>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct StartResult {
    pub name: String,
    /// It was running already (the same command in the same directory).
    pub already_running: bool,
    pub status: Status,
    pub readiness: Option<Readiness>,
}

/// What waiting for readiness found.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Readiness {
    Ready,
    /// Not ready yet at the timeout; the process keeps running.
    Slow,
    Exited {
        status: String,
        first_error_lines: Vec<String>,
    },
    Failed {
        error: String,
    },
    NotRunning,
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
                status: status.to_string(),
                first_error_lines,
            },
            ReadyOutcome::Failed { error } => Readiness::Failed { error },
            ReadyOutcome::NotRunning => Readiness::NotRunning,
        }
    }
}

/// One process in a status report.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ProcessReport {
    #[serde(flatten)]
    pub status: Status,
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub runtime: bool,
    pub uptime_seconds: Option<f64>,
    pub run_instances: usize,
    pub build_instances: usize,
    pub recent_events: Vec<EventReport>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct EventReport {
    pub at: String,
    pub instance: Option<u64>,
    pub what: String,
}

impl From<&Event> for EventReport {
    fn from(e: &Event) -> EventReport {
        EventReport {
            at: format_ts(e.ts_us),
            instance: e.instance,
            what: describe(&e.kind),
        }
    }
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct StatusReport {
    pub mode: Mode,
    pub daemon_pid: u32,
    pub daemon_uptime_seconds: f64,
    /// Seconds since an agent last called a tool (dev mode ends after dev_timeout_hours).
    pub agent_idle_seconds: f64,
    pub processes: Vec<ProcessReport>,
}

/// A log read or search (the parameters of `search_logs`).
#[derive(Clone, Debug, Default)]
pub struct LogRequest {
    pub process: String,
    pub pattern: Option<String>,
    pub case_insensitive: bool,
    pub context: usize,
    pub head: Option<usize>,
    pub tail: Option<usize>,
    /// -1 the newest instance (default), -2 the one before, 0 the oldest retained.
    pub index: Option<i64>,
    pub all_instances: bool,
    pub build: bool,
    pub stream: Option<Stream>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    /// Without a pattern: the lines around this sequence number (`context` on each side),
    /// the line itself marked as matched.
    pub around: Option<u64>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct LogLine {
    pub instance: u64,
    pub seq: u64,
    pub ts: String,
    pub stream: Stream,
    pub matched: bool,
    pub continuation: bool,
    pub text: String,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct LogResult {
    pub process: String,
    pub instances: Vec<InstanceSummary>,
    pub lines: Vec<LogLine>,
    /// Lines that matched the pattern in total (no pattern: lines read).
    pub matched: u64,
    /// Result lines left out by the head/tail limit.
    pub omitted: u64,
}

/// A request to follow a process's output (`bpm logs --follow`, `bpm run`).
#[derive(Clone, Debug, Default)]
pub struct FollowRequest {
    pub process: String,
    /// Begin with this instance (its stable number); else with `index`.
    pub instance: Option<u64>,
    /// -1 the newest instance (default), -2 the one before, 0 the oldest retained.
    pub index: Option<i64>,
    pub build: bool,
    /// Lines of backlog before the live lines (the instance's last lines); `None`: all.
    pub tail: Option<u64>,
    pub stream: Option<Stream>,
    /// Only lines matching this regex.
    pub pattern: Option<String>,
    pub case_insensitive: bool,
}

/// One record of a follow stream, in order.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FollowRecord {
    /// Following this instance from now on. `switch`: it replaced the one followed before
    /// (a restart, or a start after an exit).
    Instance {
        process: String,
        instance: u64,
        pid: Option<u32>,
        started: String,
        switch: bool,
    },
    Line(LogLine),
    /// The followed instance ended and all its lines were sent. `restarted`: a restart
    /// already replaced it (an `Instance` record follows at once); otherwise it exited or
    /// was stopped, and the stream goes on only if the process runs again.
    Exit {
        instance: u64,
        status: String,
        code: Option<i32>,
        signal: Option<i32>,
        restarted: bool,
    },
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct InstanceSummary {
    pub id: u64,
    pub kind: InstanceKind,
    pub started: String,
    pub ended: Option<String>,
    pub exit: Option<String>,
    pub pid: Option<u32>,
    pub lines: u64,
    /// Lines that never reached the store (the writer fell behind); 0 normally.
    pub dropped: u64,
}

impl From<&InstanceMeta> for InstanceSummary {
    fn from(m: &InstanceMeta) -> InstanceSummary {
        InstanceSummary {
            id: m.id,
            kind: m.kind,
            started: format_ts(m.started_us),
            ended: m.ended_us.map(format_ts),
            exit: m.exit.as_ref().map(ToString::to_string),
            pid: m.spawn.pid,
            lines: m.next_seq - m.first_seq,
            dropped: m.dropped_lines,
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
    /// Set when the daemon shuts down, so that open `follow` streams end (the HTTP
    /// server's graceful shutdown waits for them).
    closing: watch::Sender<bool>,
}

impl Ops {
    pub(crate) fn new(store: Store, config: Config, passthrough: bool) -> Ops {
        Ops {
            inner: Arc::new(Inner {
                store,
                timing: Timing::from_config(&config),
                config,
                passthrough,
                processes: RwLock::new(BTreeMap::new()),
                start_lock: tokio::sync::Mutex::new(()),
                // Starts in release: the boot scenario (DESIGN.md section 2).
                mode: watch::channel(Mode::Release).0,
                last_agent_activity: Mutex::new(Instant::now()),
                started: Instant::now(),
                closing: watch::channel(false).0,
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
                from: mode_name(from).into(),
                to: mode_name(mode).into(),
                by,
            },
        );
        Ok(mode)
    }

    pub async fn status(&self, process: Option<&str>) -> Result<StatusReport, OpError> {
        // Resolve a pid to its name first: `find` takes the lock itself.
        let only = process
            .map(|p| self.find(p))
            .transpose()?
            .map(|(name, _)| name);
        let selected: Vec<(String, ProcessHandle, ProcessSpec, bool)> = {
            let procs = self
                .inner
                .processes
                .read()
                .unwrap_or_else(|p| p.into_inner());
            procs
                .iter()
                .filter(|(n, _)| only.as_ref().is_none_or(|o| o == *n))
                .map(|(n, m)| (n.clone(), m.handle.clone(), m.spec.clone(), m.runtime))
                .collect()
        };
        let store = self.inner.store.clone();
        let processes = tokio::task::spawn_blocking(move || {
            selected
                .into_iter()
                .map(|(_, handle, spec, runtime)| {
                    process_report(&store, handle.status_now(), spec.argv, spec.cwd, runtime)
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await
        .map_err(|e| OpError::BadRequest(e.to_string()))??;
        Ok(StatusReport {
            mode: self.mode(),
            daemon_pid: std::process::id(),
            daemon_uptime_seconds: self.inner.started.elapsed().as_secs_f64(),
            agent_idle_seconds: self.since_agent_activity().as_secs_f64(),
            processes,
        })
    }

    /// Start a configured or known process by name, or a new runtime process from a
    /// command. Idempotent: the same command in the same directory already running
    /// returns that process.
    pub async fn start(&self, req: StartRequest, by: Actor) -> Result<StartResult, OpError> {
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
        let readiness = match req.wait {
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

    /// Read or search a process's logs.
    pub async fn logs(&self, req: LogRequest) -> Result<LogResult, OpError> {
        let (name, _) = self.find_or_stored(&req.process).await?;
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || read_logs(&store, &name, &req))
            .await
            .map_err(|e| OpError::BadRequest(e.to_string()))?
    }

    /// Follow a process's output: the backlog of an instance, its live lines, its end, and
    /// then the next instance when the process runs again (a restart, a crash restart, a
    /// start), for as long as the stream is polled or until the daemon shuts down. Errors
    /// (unknown process, bad regex, instance out of range) come before the stream.
    pub async fn follow(
        &self,
        req: FollowRequest,
    ) -> Result<impl futures_util::Stream<Item = Vec<FollowRecord>> + Send + 'static, OpError> {
        // A process only the store knows is followed to the end of its last instance.
        let (name, handle) = self.find_or_stored(&req.process).await?;
        let re = match &req.pattern {
            Some(p) if !p.is_empty() => Some(search::compile(p, req.case_insensitive)?),
            _ => None,
        };
        let kind = if req.build {
            InstanceKind::Build
        } else {
            InstanceKind::Run
        };
        let store = self.inner.store.clone();
        let meta = {
            let (store, name, req) = (store.clone(), name.clone(), req.clone());
            tokio::task::spawn_blocking(move || match req.instance {
                Some(id) => store.instance(id),
                None => store.resolve(&name, kind, req.index.unwrap_or(-1)),
            })
            .await
            .map_err(|e| OpError::BadRequest(e.to_string()))??
        };
        let from = match req.tail {
            Some(n) => meta.next_seq.saturating_sub(n).max(meta.first_seq),
            None => meta.first_seq,
        };
        let f = Follow {
            closing: self.inner.closing.subscribe(),
            handle,
            follower: store.follow(meta.id, from),
            store,
            name,
            kind,
            stream: req.stream,
            re,
            current: meta.id,
            phase: Phase::Lines,
        };
        let first = f.instance_record(&meta, false);
        Ok(futures_util::stream::unfold(
            (f, Some(first)),
            |(mut f, first)| async move {
                let mut out: Vec<FollowRecord> = first.into_iter().collect();
                if f.next(&mut out).await || !out.is_empty() {
                    Some((out, (f, None)))
                } else {
                    None
                }
            },
        ))
    }

    /// Stop every process (in parallel, each with its grace period).
    pub async fn shutdown_all(&self) {
        self.inner.closing.send_replace(true);
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

/// The blocking part of [`Ops::logs`]: resolve the instances, then read or search.
pub fn read_logs(store: &Store, name: &str, req: &LogRequest) -> Result<LogResult, OpError> {
    let kind = if req.build {
        InstanceKind::Build
    } else {
        InstanceKind::Run
    };
    let metas: Vec<InstanceMeta> = if req.all_instances {
        let all = store.instances(name, kind)?;
        if all.is_empty() {
            // Let resolve produce the explanatory error.
            vec![store.resolve(name, kind, -1)?]
        } else {
            all
        }
    } else {
        vec![store.resolve(name, kind, req.index.unwrap_or(-1))?]
    };
    let filter = Filter {
        stream: req.stream,
        since_us: req.since_us,
        until_us: req.until_us,
    };
    let ids: Vec<u64> = metas.iter().map(|m| m.id).collect();
    let (lines, matched, omitted) = match &req.pattern {
        Some(p) if !p.is_empty() => {
            let r = search::search(
                store,
                &ids,
                &Query {
                    pattern: p.clone(),
                    case_insensitive: req.case_insensitive,
                    context: req.context,
                    head: req.head,
                    tail: req.tail,
                    filter,
                },
            )?;
            let lines = r
                .hits
                .into_iter()
                .map(|h| log_line(h.line, h.matched))
                .collect();
            (lines, r.matched, r.omitted)
        }
        _ => {
            // No pattern: the tail (or head) of the instance(s), or the lines around one.
            let mut out: Vec<Line> = Vec::new();
            let mut total = 0u64;
            for m in &metas {
                let window = match (req.around, req.head, req.tail) {
                    (Some(seq), _, _) => Window::Seqs {
                        from: seq.saturating_sub(req.context as u64),
                        to: seq.saturating_add(req.context as u64 + 1),
                    },
                    (None, Some(h), _) => Window::Head(h),
                    (None, None, Some(t)) => Window::Tail(t),
                    (None, None, None) => Window::Tail(usize::MAX),
                };
                let lines = store.read(m.id, window, &filter)?;
                total += if req.around.is_some() {
                    lines.len() as u64
                } else {
                    store.count(m, &filter)?.max(lines.len() as u64)
                };
                out.extend(lines);
            }
            if let Some(h) = req.head {
                out.truncate(h);
            } else if let Some(t) = req.tail
                && out.len() > t
            {
                out.drain(..out.len() - t);
            }
            let omitted = total.saturating_sub(out.len() as u64);
            let lines = out
                .into_iter()
                .map(|l| {
                    let marked = req.around == Some(l.seq);
                    log_line(l, marked)
                })
                .collect();
            (lines, total, omitted)
        }
    };
    Ok(LogResult {
        process: name.to_owned(),
        instances: metas.iter().map(InstanceSummary::from).collect(),
        lines,
        matched,
        omitted,
    })
}

/// Where a follow stream is.
enum Phase {
    /// Sending the current instance's lines.
    Lines,
    /// The instance ended; waiting for the supervisor to say what comes next.
    Ended,
    /// The end was reported; waiting for the process to run again.
    Waiting,
    Done,
}

/// The state of one follow stream (see [`Ops::follow`]).
struct Follow {
    store: Store,
    /// `None` for a process only the store knows (no supervisor): the stream ends with
    /// its instance.
    handle: Option<ProcessHandle>,
    name: String,
    kind: InstanceKind,
    stream: Option<Stream>,
    re: Option<regex::bytes::Regex>,
    current: u64,
    follower: crate::logs::Follower,
    phase: Phase,
    closing: watch::Receiver<bool>,
}

/// How often a follow stream looks at the supervisor's status right after an instance
/// ended (a restart's new instance comes within milliseconds)...
const FOLLOW_POLL: Duration = Duration::from_millis(20);
/// ...and while it waits for an exited or stopped process to run again.
const FOLLOW_IDLE_POLL: Duration = Duration::from_millis(100);

impl Follow {
    fn instance_record(&self, meta: &InstanceMeta, switch: bool) -> FollowRecord {
        FollowRecord::Instance {
            process: self.name.clone(),
            instance: meta.id,
            pid: meta.spawn.pid,
            started: format_ts(meta.started_us),
            switch,
        }
    }

    /// Append the next records to `out`, waiting until there are some. False once the
    /// stream is over.
    async fn next(&mut self, out: &mut Vec<FollowRecord>) -> bool {
        loop {
            match self.phase {
                Phase::Done => return false,
                Phase::Lines => match self.follower.next_batch(4096).await {
                    Ok(Some(lines)) => {
                        for l in lines {
                            if self.stream.is_some_and(|s| s != l.stream) {
                                continue;
                            }
                            if let Some(re) = &self.re
                                && !re.is_match(&l.bytes)
                            {
                                continue;
                            }
                            out.push(FollowRecord::Line(log_line(l, self.re.is_some())));
                        }
                        if !out.is_empty() {
                            return true;
                        }
                    }
                    Ok(None) => self.phase = Phase::Ended,
                    Err(e) => {
                        tracing::warn!(process = %self.name, error = %e, "follow stopped");
                        self.phase = Phase::Done;
                    }
                },
                Phase::Ended | Phase::Waiting => {
                    let Some(handle) = &self.handle else {
                        if matches!(self.phase, Phase::Ended) {
                            out.push(self.exit_record(false).await);
                        }
                        self.phase = Phase::Done;
                        return true;
                    };
                    let status = handle.status_now();
                    let newer = status.instance.filter(|&i| i > self.current);
                    let newer = match self.kind {
                        InstanceKind::Run => newer,
                        // Builds are not in the status: a build stream ends with its build.
                        InstanceKind::Build => None,
                    };
                    if let Some(next) = newer {
                        if matches!(self.phase, Phase::Ended) {
                            out.push(self.exit_record(true).await);
                        }
                        let store = self.store.clone();
                        let meta = tokio::task::spawn_blocking(move || store.instance(next)).await;
                        let Ok(Ok(meta)) = meta else {
                            self.phase = Phase::Done;
                            return true;
                        };
                        out.push(self.instance_record(&meta, true));
                        self.current = next;
                        self.follower = self.store.follow(next, meta.first_seq);
                        self.phase = Phase::Lines;
                        return true;
                    }
                    let settled = !status.state.is_running() || self.kind == InstanceKind::Build;
                    if matches!(self.phase, Phase::Ended) && settled {
                        out.push(self.exit_record(false).await);
                        self.phase = if self.kind == InstanceKind::Build {
                            Phase::Done
                        } else {
                            Phase::Waiting
                        };
                        return true;
                    }
                    if *self.closing.borrow() {
                        self.phase = Phase::Done;
                        return !out.is_empty();
                    }
                    let poll = if matches!(self.phase, Phase::Waiting) {
                        FOLLOW_IDLE_POLL
                    } else {
                        FOLLOW_POLL
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = self.closing.wait_for(|c| *c) => {}
                    }
                }
            }
        }
    }

    async fn exit_record(&self, restarted: bool) -> FollowRecord {
        let store = self.store.clone();
        let id = self.current;
        let exit = tokio::task::spawn_blocking(move || store.instance(id))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|m| m.exit);
        let (code, signal) = match &exit {
            Some(ExitStatus::Code(c)) => (Some(*c), None),
            Some(ExitStatus::Signal(s)) => (None, Some(*s)),
            _ => (None, None),
        };
        FollowRecord::Exit {
            instance: id,
            status: exit.map_or_else(|| "unknown".to_owned(), |e| e.to_string()),
            code,
            signal,
            restarted,
        }
    }
}

/// One process's report: its status as given, and what the store knows of it (instance
/// counts, recent events). Blocking (store reads). Shared by the daemon's status and the
/// offline one.
fn process_report(
    store: &Store,
    status: Status,
    argv: Vec<String>,
    cwd: PathBuf,
    runtime: bool,
) -> Result<ProcessReport, StoreError> {
    let runs = store.instances(&status.name, InstanceKind::Run)?.len();
    let builds = store.instances(&status.name, InstanceKind::Build)?.len();
    let events = store.events(Some(&status.name), 5)?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    Ok(ProcessReport {
        uptime_seconds: status
            .started_at
            .filter(|_| status.state.is_running())
            .map(|t| (now_ms - t) as f64 / 1000.0),
        status,
        argv,
        cwd,
        runtime,
        run_instances: runs,
        build_instances: builds,
        recent_events: events.iter().map(EventReport::from).collect(),
    })
}

/// The status as the store alone tells it, when no daemon runs (post-crash
/// investigation): the configured processes, the persisted runtime ones, and any other
/// process the store has logs of; none is running. `daemon_pid` is 0 and the mode is the
/// one a daemon starts in. Blocking.
pub fn offline_status(
    store: &Store,
    config: &Config,
    process: Option<&str>,
) -> Result<StatusReport, OpError> {
    let mut known: BTreeMap<String, (Vec<String>, PathBuf, bool)> = BTreeMap::new();
    for (name, pc) in &config.processes {
        let argv = pc.command.iter().chain(&pc.args).cloned().collect();
        known.insert(name.clone(), (argv, pc.cwd.clone(), false));
    }
    for (name, bytes) in store.processes()? {
        if let Ok(spec) = serde_json::from_slice::<RuntimeSpec>(&bytes) {
            known.entry(name).or_insert((spec.argv, spec.cwd, true));
        }
    }
    for name in store.process_names()? {
        known
            .entry(name)
            .or_insert((Vec::new(), PathBuf::new(), true));
    }
    if let Some(p) = process
        && !known.contains_key(p)
    {
        return Err(OpError::UnknownProcess {
            name: p.to_owned(),
            known: known.keys().cloned().collect(),
        });
    }
    let mut processes = Vec::new();
    for (name, (argv, cwd, runtime)) in known {
        if process.is_some_and(|p| p != name) {
            continue;
        }
        let last = store.instances(&name, InstanceKind::Run)?.pop();
        // An instance the store still has as live was cut short by the daemon's death.
        let last_exit = last
            .as_ref()
            .map(|m| m.exit.clone().unwrap_or(ExitStatus::Unknown));
        let status = Status {
            name,
            state: match &last_exit {
                Some(status) => crate::supervisor::process::State::Exited {
                    status: status.clone(),
                },
                None => crate::supervisor::process::State::Stopped,
            },
            pid: None,
            pgid: None,
            started_at: None,
            restarts: 0,
            crash_count: 0,
            last_exit,
            instance: last.as_ref().map(|m| m.id),
            ready: None,
            building: false,
            last_error: None,
        };
        processes.push(process_report(store, status, argv, cwd, runtime)?);
    }
    Ok(StatusReport {
        mode: Mode::Release,
        daemon_pid: 0,
        daemon_uptime_seconds: 0.0,
        agent_idle_seconds: 0.0,
        processes,
    })
}

fn log_line(l: Line, matched: bool) -> LogLine {
    LogLine {
        instance: l.instance,
        seq: l.seq,
        ts: format_ts(l.ts_us),
        stream: l.stream,
        matched,
        continuation: l.continuation,
        text: l.text().into_owned(),
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

pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Dev => "dev",
        Mode::Release => "release",
    }
}

pub fn format_ts(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| us.to_string())
}

/// One line describing an event, for status reports.
pub fn describe(kind: &EventKind) -> String {
    match kind {
        EventKind::Spawned { pid, argv, .. } => format!("spawned pid {pid}: {}", argv.join(" ")),
        EventKind::Exited {
            status,
            duration_ms,
        } => format!(
            "exited ({status}) after {:.1}s",
            *duration_ms as f64 / 1000.0
        ),
        EventKind::CrashDetected {
            status,
            crash_count,
        } => format!("crash #{crash_count} ({status})"),
        EventKind::BackoffWait { seconds } => format!("waiting {seconds:.1}s before restarting"),
        EventKind::RestartRequested { by } => format!("restart requested by {by:?}"),
        EventKind::StopRequested { by } => format!("stop requested by {by:?}"),
        EventKind::BuildStarted { argv } => format!("build started: {}", argv.join(" ")),
        EventKind::BuildFinished { ok, duration_ms } => format!(
            "build {} in {:.1}s",
            if *ok { "succeeded" } else { "failed" },
            *duration_ms as f64 / 1000.0
        ),
        EventKind::ModeSwitched { from, to, by } => format!("mode {from} -> {to} by {by:?}"),
        EventKind::DaemonStarted { pid } => format!("daemon started (pid {pid})"),
        EventKind::DaemonStopped => "daemon stopped".into(),
        EventKind::RecoveredUncleanShutdown => "recovered from an unclean daemon shutdown".into(),
        EventKind::OrphanKilled { pid, pgid } => {
            format!("stopped orphan process group {pgid} (pid {pid}) left by the previous daemon")
        }
        EventKind::LinesDropped { count } => {
            format!("{count} lines were not stored (the store fell behind)")
        }
        EventKind::RetentionRemoved { instance, why, .. } => {
            format!("retention removed instance #{instance}: {why}")
        }
        EventKind::PortConflict { port, holder } => format!(
            "port {port} is in use{}",
            holder
                .as_ref()
                .map(|h| format!(" by {h}"))
                .unwrap_or_default()
        ),
        EventKind::Ready => "ready".into(),
        EventKind::Note { text } => text.clone(),
        EventKind::StoreFailed { .. } | EventKind::StoreRecovered { .. } => {
            kind.store_text().unwrap_or_default()
        }
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
