//! `bpm status`, and the one-shot verbs: `start`, `stop`, `restart`, `mode`.

use std::io::Write as _;
use std::process::ExitCode;

use serde::Serialize;

use super::{Common, Source, api_error, connect, print_json, read_source};
use crate::daemon::ops;
use crate::protocol::{
    InstanceSummary, LogLine, LogQuery, Mode, ProcessReport, State, Status, StatusReport,
    human_duration,
};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// One process: with its instances, recent events and last lines.
    #[arg(add = super::complete::process_names())]
    pub name: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

/// `start` and `restart`: one process, or `--all`.
#[derive(clap::Args, Debug)]
pub struct ManyArgs {
    /// The process: its name, or the pid of its running instance.
    #[arg(required_unless_present = "all", add = super::complete::process_names())]
    pub name: Option<String>,
    /// Every process (start: each configured one that does not run; restart: each one
    /// that runs).
    #[arg(long, conflicts_with = "name")]
    pub all: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// The process: its name, or the pid of its running instance.
    #[arg(required_unless_present = "all", add = super::complete::process_names())]
    pub name: Option<String>,
    /// Every process that runs (or is starting, building or waiting to restart).
    #[arg(long, conflicts_with = "name")]
    pub all: bool,
    /// Kill at once (SIGKILL to the whole group), without the grace period.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug)]
pub struct ModeArgs {
    /// Switch to this mode (dev or release); without it, print the current one.
    pub mode: Option<Mode>,
    #[command(flatten)]
    pub common: Common,
}

pub fn main(args: StatusArgs) -> ExitCode {
    super::execute(status(args))
}

/// What `bpm status [NAME] --json` prints: the status report, and with a name the
/// process's instances.
#[derive(Serialize)]
struct StatusOutput {
    #[serde(flatten)]
    report: StatusReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    instances: Option<Vec<InstanceSummary>>,
    /// With a name: the last lines of its newest run, as `systemctl status` ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_lines: Option<Vec<LogLine>>,
}

/// How many lines `bpm status NAME` ends with.
const LAST_LINES: usize = 10;

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let source = read_source(&args.common).await?;
    if let Source::Empty(t) = &source {
        // Nothing ever ran here: an empty status, not a failure (unless a name was asked).
        if args.name.is_some() {
            return Err(Source::nothing_here(t));
        }
        eprintln!(
            "bpm: no daemon runs for {} and nothing has run with it yet",
            t.data_dir.display()
        );
        let empty = StatusOutput {
            report: StatusReport::empty(),
            instances: None,
            last_lines: None,
        };
        if args.common.json {
            print_json(&empty)?;
        } else {
            print_report(&empty, true, args.common.color())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = match &source {
        Source::Daemon(c) => c.status(args.name.as_deref()).await.map_err(api_error)?,
        Source::Store(t, store) => {
            let store = store.clone();
            let project = t.project_dir.clone();
            let name = args.name.clone();
            tokio::task::spawn_blocking(move || {
                let config = match &project {
                    Some(dir) => crate::config::Config::load(dir).ok().flatten(),
                    None => None,
                }
                .unwrap_or_else(|| crate::config::Config::default_for(std::path::Path::new("/")));
                ops::offline_status(&store, &config, name.as_deref())
            })
            .await??
        }
        Source::Empty(_) => unreachable!("handled above"),
    };
    let mut out = StatusOutput {
        report,
        instances: None,
        last_lines: None,
    };
    if args.name.is_some()
        && let Some(name) = out.report.processes.first().map(|p| p.status.name.clone())
    {
        let instances = LogQuery {
            all_instances: true,
            tail: Some(0),
            ..Default::default()
        };
        let last = LogQuery {
            tail: Some(LAST_LINES),
            ..Default::default()
        };
        let (instances, last) = match &source {
            Source::Daemon(c) => (
                c.logs(&name, &instances).await.ok(),
                c.logs(&name, &last).await.ok(),
            ),
            Source::Store(_, store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || {
                    (
                        ops::read_logs(&store, &name, &instances).ok(),
                        ops::read_logs(&store, &name, &last).ok(),
                    )
                })
                .await?
            }
            Source::Empty(_) => (None, None),
        };
        out.instances = Some(instances.map(|r| r.instances).unwrap_or_default());
        out.last_lines = Some(last.map(|r| r.lines).unwrap_or_default());
    }
    if args.common.json {
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_report(
        &out,
        matches!(source, Source::Store(..)),
        args.common.color(),
    )?;
    Ok(ExitCode::SUCCESS)
}

const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// The state as a short word for the table, and its colour.
fn state_text(s: &State) -> (String, &'static str) {
    match s {
        State::Running | State::Ready => (s.to_string(), GREEN),
        State::Starting | State::Building | State::Exiting => (s.to_string(), YELLOW),
        State::Stopped => (s.to_string(), ""),
        State::Backoff { until_unix_ms } => {
            let left = until_unix_ms - chrono::Utc::now().timestamp_millis();
            (format!("backoff {}s", (left.max(0) + 999) / 1000), YELLOW)
        }
        State::Exited { status } => (
            format!("exited ({status})"),
            if status.success() { "" } else { RED },
        ),
        State::Failed { .. } => ("failed".into(), RED),
        State::Unhealthy { .. } => ("unhealthy".into(), RED),
    }
}

fn print_report(o: &StatusOutput, offline: bool, color: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let report = &o.report;
    let procs = &report.processes;
    if offline {
        writeln!(out, "no daemon running (read from the store)")?;
    } else {
        writeln!(
            out,
            "mode {}, daemon pid {}",
            report.mode, report.daemon_pid
        )?;
    }
    if procs.is_empty() {
        writeln!(out, "no processes; start one with `bpm run -- CMD...`")?;
        return Ok(());
    }
    let rows: Vec<[String; 8]> = procs
        .iter()
        .map(|p: &ProcessReport| {
            [
                p.status.name.clone(),
                state_text(&p.status.state).0,
                p.status.pid.map_or("-".into(), |x| x.to_string()),
                p.uptime_seconds.map_or("-".into(), human_duration),
                p.status.restarts.to_string(),
                p.run_instances.to_string(),
                match (&p.url, p.ports.as_slice()) {
                    (Some(url), _) => url.clone(),
                    // Found through /proc: unknown, not "none", elsewhere than Linux.
                    (None, []) if !crate::platform::FULL => "?".into(),
                    (None, []) => "-".into(),
                    (None, ports) => ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                },
                p.argv.join(" "),
            ]
        })
        .collect();
    let header = [
        "NAME", "STATE", "PID", "UPTIME", "RESTARTS", "RUNS", "LISTENS", "COMMAND",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String], colors: Option<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = if i + 1 == cells.len() {
                0
            } else {
                widths[i] + 2 - c.chars().count()
            };
            match (i, colors) {
                (1, Some(col)) if color && !col.is_empty() => {
                    s.push_str(&format!("{col}{c}{RESET}"))
                }
                _ => s.push_str(c),
            }
            s.push_str(&" ".repeat(pad));
        }
        s.trim_end().to_owned()
    };
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    if color {
        writeln!(out, "{BOLD}{}{RESET}", line(&head, None))?;
    } else {
        writeln!(out, "{}", line(&head, None))?;
    }
    for (p, r) in procs.iter().zip(&rows) {
        writeln!(out, "{}", line(r, Some(state_text(&p.status.state).1)))?;
    }
    // The evidence of a failing health check.
    for p in procs {
        if let State::Unhealthy { .. } = &p.status.state {
            writeln!(out, "{}: {}", p.status.name, p.status.state)?;
        }
    }
    if let Some(why) = crate::platform::unavailable("LISTENS (which ports a process listens on)") {
        writeln!(out, "{why}")?;
    }
    if let (Some(p), Some(inst)) = (procs.first(), &o.instances) {
        if let Some(e) = &p.status.last_error {
            writeln!(out, "\nlast error: {e}")?;
        }
        writeln!(
            out,
            "\ninstances (newest last; address them with --instance):"
        )?;
        let n = inst.len() as i64;
        for (i, m) in inst.iter().enumerate() {
            let state = match (&m.exit, &m.ended) {
                (Some(e), _) => e.to_string(),
                (None, None) => "running".into(),
                (None, Some(_)) => "ended".into(),
            };
            writeln!(
                out,
                "  {:>3}  #{:<5} pid {:<8} {}  {} lines  {}",
                i as i64 - n,
                m.number,
                m.pid.map_or("-".into(), |x| x.to_string()),
                m.started,
                m.lines,
                state
            )?;
        }
        writeln!(out, "\nrecent events:")?;
        for e in &p.recent_events {
            writeln!(out, "  {}  {}", e.at, e.line())?;
        }
        if let Some(lines) = o.last_lines.as_ref().filter(|l| !l.is_empty()) {
            writeln!(out, "\nlast lines:")?;
            for l in lines {
                let text = if color || !l.text.contains('\x1b') {
                    l.text.clone()
                } else {
                    strip_ansi_escapes::strip_str(&l.text)
                };
                writeln!(out, "  {}  {text}", l.ts)?;
            }
        }
    }
    Ok(())
}

/// " (pid N)" when the process runs.
fn pid(status: &Status) -> String {
    status
        .pid
        .map(|p| format!(" (pid {p})"))
        .unwrap_or_default()
}

pub fn start(args: ManyArgs) -> ExitCode {
    super::execute(async move {
        let client = connect(&args.common).await?;
        let names = targets(&client, args.name.as_deref(), |p| {
            !p.runtime && !p.status.state.is_live()
        })
        .await?;
        let mut code = ExitCode::SUCCESS;
        for name in names {
            let req = crate::protocol::StartRequest {
                name: Some(name),
                ..Default::default()
            };
            let r = client.start(&req).await.map_err(api_error)?;
            if args.common.json {
                print_json(&r)?;
            } else if r.already_running {
                eprintln!("bpm: {} already runs{}", r.name, pid(&r.status));
            } else {
                eprintln!("bpm: {}", r.message("started"));
            }
            if outcome(&r) != ExitCode::SUCCESS {
                code = ExitCode::FAILURE;
            }
        }
        Ok(code)
    })
}

/// The processes a verb acts on: `name`, or with `--all` (`name` is `None`) every
/// process `pick` accepts, in the status's order (said on stderr when there is none).
async fn targets(
    client: &crate::client::Client,
    name: Option<&str>,
    pick: impl Fn(&ProcessReport) -> bool,
) -> anyhow::Result<Vec<String>> {
    if let Some(n) = name {
        return Ok(vec![n.to_owned()]);
    }
    let report = client.status(None).await.map_err(api_error)?;
    let names: Vec<String> = report
        .processes
        .iter()
        .filter(|p| pick(p))
        .map(|p| p.status.name.clone())
        .collect();
    if names.is_empty() {
        eprintln!("bpm: --all: no process to act on");
    }
    Ok(names)
}

/// 1 when the process did not come up (it exited during the wait), else 0.
fn outcome(r: &crate::protocol::StartResult) -> ExitCode {
    if r.readiness.as_ref().is_some_and(|x| x.failed()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// The process: its name.
    #[arg(add = super::complete::process_names())]
    pub name: String,
    /// Also delete its stored logs now (otherwise they stay until retention removes them).
    #[arg(long)]
    pub logs: bool,
    #[command(flatten)]
    pub common: Common,
}

/// `bpm rm NAME [--logs]`.
pub fn remove(args: RmArgs) -> ExitCode {
    super::execute(async move {
        let client = connect(&args.common).await?;
        client
            .remove(&args.name, args.logs)
            .await
            .map_err(api_error)?;
        if args.logs {
            eprintln!("bpm: removed {} and its logs", args.name);
        } else {
            eprintln!(
                "bpm: removed {} from the list (its logs stay until retention removes them; `--logs` deletes them)",
                args.name
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn stop(args: StopArgs) -> ExitCode {
    super::execute(async move {
        let client = connect(&args.common).await?;
        let names = targets(&client, args.name.as_deref(), |p| p.status.state.is_live()).await?;
        // Concurrently: each stop may wait out a grace period.
        let stops = names.iter().map(|n| client.stop(n, args.force));
        for s in futures_util::future::join_all(stops).await {
            let s = s.map_err(api_error)?;
            if args.common.json {
                print_json(&s)?;
            } else {
                eprintln!("bpm: stopped {}", s.name);
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn restart(args: ManyArgs) -> ExitCode {
    super::execute(async move {
        let client = connect(&args.common).await?;
        let names = targets(&client, args.name.as_deref(), |p| p.status.state.is_live()).await?;
        let mut code = ExitCode::SUCCESS;
        for name in names {
            let r = client.restart(&name).await.map_err(api_error)?;
            if args.common.json {
                print_json(&r)?;
            } else {
                eprintln!("bpm: {}", r.message("restarted"));
            }
            if outcome(&r) != ExitCode::SUCCESS {
                code = ExitCode::FAILURE;
            }
        }
        Ok(code)
    })
}

pub fn mode(args: ModeArgs) -> ExitCode {
    super::execute(async move {
        let client = connect(&args.common).await?;
        let mode = match args.mode {
            None => client.mode().await,
            Some(m) => client.set_mode(m).await,
        }
        .map_err(api_error)?;
        if args.common.json {
            print_json(&crate::protocol::ModeBody { mode })?;
        } else {
            println!("{mode}");
        }
        Ok(ExitCode::SUCCESS)
    })
}
