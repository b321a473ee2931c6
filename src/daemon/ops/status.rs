//! Status reports: the daemon's, and the one the store alone gives when no daemon runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{OpError, Ops, RuntimeSpec};
use crate::config::Config;
use crate::logs::{ExitStatus, InstanceKind, Store, StoreError};
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
            store: self.inner.store.health(),
            processes,
        })
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
        processes.push(process_report(store, status, argv, cwd, runtime)?);
    }
    Ok(StatusReport {
        processes,
        ..StatusReport::empty()
    })
}
