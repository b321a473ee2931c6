//! Status reports: the daemon's, and the one the store alone gives when no daemon runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{OpError, Ops, RuntimeSpec};
use crate::config::Config;
use crate::logs::{ExitStatus, Filter, History, Store, StoreError, Window};
use crate::protocol::{EventReport, ProcessReport, StatusReport};
use crate::supervisor::process::{ProcessHandle, ProcessSpec, State, Status};

impl Ops {
    pub async fn status(&self, process: Option<&str>) -> Result<StatusReport, OpError> {
        // Resolve a pid to its name first: `find` takes the lock itself.
        let only = process
            .map(|p| self.find(p))
            .transpose()?
            .map(|(name, _)| name);
        let selected: Vec<(String, ProcessHandle, ProcessSpec, bool)> = {
            let procs = self.procs();
            procs
                .iter()
                .filter(|(n, _)| only.as_ref().is_none_or(|o| o == *n))
                .map(|(n, m)| (n.clone(), m.handle.clone(), m.spec.clone(), m.runtime))
                .collect()
        };
        let observed = self.observed();
        let names: Vec<String> = selected.iter().map(|(n, ..)| n.clone()).collect();
        let histories = self.histories(names).await?;
        let processes = selected
            .into_iter()
            .zip(histories)
            .map(|((_, handle, spec, runtime), history)| {
                let mut r =
                    process_report(handle.status_now(), history, spec.argv, spec.cwd, runtime);
                (r.ports, r.url) = observed.where_(&r.status);
                r
            })
            .collect();
        Ok(StatusReport {
            mode: self.mode(),
            daemon_pid: std::process::id(),
            daemon_uptime_seconds: self.inner.started.elapsed().as_secs_f64(),
            agent_idle_seconds: self.since_agent_activity().as_secs_f64(),
            store: self.inner.store.health(),
            processes,
        })
    }
}

impl Ops {
    /// The processes' histories, from the store, or from the last read while the store
    /// has not changed since (agents poll status; most polls find nothing new, and then
    /// answer without a blocking thread or a read transaction).
    async fn histories(&self, names: Vec<String>) -> Result<Vec<History>, OpError> {
        let generation = self.inner.store.generation();
        if let Some(hit) = self.cache().get(generation, &names) {
            return Ok(hit);
        }
        let store = self.inner.store.clone();
        let (names, histories) = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let histories = store.histories(&refs, RECENT_EVENTS)?;
            Ok::<_, StoreError>((names, histories))
        })
        .await
        .map_err(|e| OpError::BadRequest(e.to_string()))??;
        self.cache().put(generation, &names, &histories);
        Ok(histories)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HistoryCache> {
        self.inner
            .histories
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Histories read at one store generation ([`Store::generation`]), by process name.
#[derive(Default)]
pub(crate) struct HistoryCache {
    generation: u64,
    by_name: std::collections::HashMap<String, History>,
}

impl HistoryCache {
    fn get(&self, generation: u64, names: &[String]) -> Option<Vec<History>> {
        if generation != self.generation {
            return None;
        }
        names.iter().map(|n| self.by_name.get(n).cloned()).collect()
    }

    /// Keeps what was read at `generation`; what was kept of an older one goes.
    fn put(&mut self, generation: u64, names: &[String], histories: &[History]) {
        if generation < self.generation {
            return;
        }
        if generation > self.generation {
            self.by_name.clear();
            self.generation = generation;
        }
        for (n, h) in names.iter().zip(histories) {
            self.by_name.insert(n.clone(), h.clone());
        }
    }
}

/// How many recent events a process's report lists.
const RECENT_EVENTS: usize = 5;

/// One process's report: its status as given, and what the store knows of it (see
/// [`History`]). Shared by the daemon's status and the offline one.
fn process_report(
    status: Status,
    history: History,
    argv: Vec<String>,
    cwd: PathBuf,
    runtime: bool,
) -> ProcessReport {
    let now_ms = chrono::Utc::now().timestamp_millis();
    ProcessReport {
        uptime_seconds: status
            .started_at
            .filter(|_| status.state.is_running())
            .map(|t| (now_ms - t) as f64 / 1000.0),
        status,
        argv,
        cwd,
        runtime,
        run_instances: history.runs,
        run_number: history.last_run.map(|m| m.number),
        build_instances: history.builds,
        ports: Vec::new(),
        url: None,
        recent_events: history.events.iter().map(EventReport::from).collect(),
    }
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
    known.retain(|name, _| process.is_none_or(|p| p == name));
    let names: Vec<&str> = known.keys().map(String::as_str).collect();
    let histories = store.histories(&names, RECENT_EVENTS)?;
    let mut processes = Vec::new();
    for ((name, (argv, cwd, runtime)), history) in known.into_iter().zip(histories) {
        let last = history.last_run.clone();
        // An instance the store still has as live was cut short by the daemon's death.
        let last_exit = last
            .as_ref()
            .map(|m| m.exit.clone().unwrap_or(ExitStatus::Unknown));
        let status = Status {
            name,
            state: match &last_exit {
                Some(status) => State::Exited {
                    status: status.clone(),
                },
                None => State::Stopped,
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
        processes.push(process_report(status, history, argv, cwd, runtime));
    }
    Ok(StatusReport {
        processes,
        ..StatusReport::empty()
    })
}

/// Where each running process listens: ports and the URL it printed, refreshed in the
/// background ([`Ops::observe`]) so that status never waits for /proc.
#[derive(Clone, Debug, Default)]
pub(crate) struct Observed {
    by_name: std::collections::HashMap<String, Seen>,
}

#[derive(Clone, Debug, Default)]
struct Seen {
    instance: u64,
    ports: Vec<u16>,
    url: Option<String>,
}

impl Observed {
    /// What was seen of the running instance `status` describes.
    pub(crate) fn where_(&self, status: &Status) -> (Vec<u16>, Option<String>) {
        match self.by_name.get(&status.name) {
            Some(s) if status.state.is_running() && Some(s.instance) == status.instance => {
                (s.ports.clone(), s.url.clone())
            }
            _ => (Vec::new(), None),
        }
    }
}

/// How many of an instance's first lines are searched for the URL it announces.
const URL_LINES: usize = 200;

impl Ops {
    pub(crate) fn observed(&self) -> Observed {
        self.inner
            .observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Look at where the running processes (or just `only`) listen, and remember it.
    pub async fn observe(&self, only: Option<&str>) {
        let running: Vec<(String, u32, u64)> = self
            .handles()
            .into_iter()
            .filter(|(n, _)| only.is_none_or(|o| o == n))
            .filter_map(|(n, h)| {
                let s = h.status_now();
                Some((n, s.pgid.filter(|_| s.state.is_running())?, s.instance?))
            })
            .collect();
        let before = self.observed();
        let store = self.inner.store.clone();
        let seen = tokio::task::spawn_blocking(move || {
            let listening = crate::supervisor::ports::listening_sockets();
            running
                .into_iter()
                .map(|(name, pgid, instance)| {
                    let known = before
                        .by_name
                        .get(&name)
                        .filter(|s| s.instance == instance)
                        .and_then(|s| s.url.clone());
                    let url = known.or_else(|| {
                        store
                            .read(instance, Window::Head(URL_LINES), &Filter::default())
                            .ok()?
                            .iter()
                            .find_map(|l| crate::supervisor::ports::printed_url(&l.text()))
                    });
                    let ports = crate::supervisor::ports::group_ports(pgid, &listening);
                    (
                        name,
                        Seen {
                            instance,
                            ports,
                            url,
                        },
                    )
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut observed = self
            .inner
            .observed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if only.is_none() {
            observed.by_name.clear();
        }
        observed.by_name.extend(seen);
    }
}
