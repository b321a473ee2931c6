//! `bpm status`, and the one-shot verbs: `start`, `stop`, `restart`, `mode`.

use std::io::Write as _;
use std::process::ExitCode;

use serde_json::{Value, json};

use super::{Common, Source, call, client, enc, print_json, read_source};
use crate::daemon::ops;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// One process: with its instances and recent events.
    pub name: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug)]
pub struct NameArgs {
    /// The process: its name, or the pid of its running instance.
    pub name: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// The process: its name, or the pid of its running instance.
    pub name: String,
    /// Kill at once (SIGKILL to the whole group), without the grace period.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ModeArg {
    Dev,
    Release,
}

#[derive(clap::Args, Debug)]
pub struct ModeArgs {
    /// Switch to this mode; without it, print the current one.
    #[arg(value_enum)]
    pub mode: Option<ModeArg>,
    #[command(flatten)]
    pub common: Common,
}

pub fn main(args: StatusArgs) -> ExitCode {
    super::execute(status(args))
}

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
        let empty = json!({ "mode": "release", "daemon_pid": 0, "daemon_uptime_seconds": 0.0, "processes": [] });
        if args.common.json {
            print_json(&empty)?;
        } else {
            print_report(&empty, false, true)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut report = match &source {
        Source::Daemon(t) => {
            let path = match &args.name {
                Some(n) => format!("/api/status/{}", enc(n)),
                None => "/api/status".to_owned(),
            };
            call(t, "GET", &path, None).await?
        }
        Source::Store(t, store) => {
            let store = store.clone();
            let project = t.project_dir.clone();
            let name = args.name.clone();
            let r = tokio::task::spawn_blocking(move || {
                let config = match &project {
                    Some(dir) => crate::config::Config::load(dir).ok().flatten(),
                    None => None,
                }
                .unwrap_or_else(|| crate::config::Config::default_for(std::path::Path::new("/")));
                ops::offline_status(&store, &config, name.as_deref())
            })
            .await??;
            serde_json::to_value(r)?
        }
        Source::Empty(_) => unreachable!("handled above"),
    };
    if let Some(name) = &args.name {
        let name = report["processes"][0]["name"]
            .as_str()
            .unwrap_or(name)
            .to_owned();
        let req = ops::LogRequest {
            process: name.clone(),
            all_instances: true,
            tail: Some(0),
            ..Default::default()
        };
        let instances = match &source {
            Source::Daemon(t) => call(
                t,
                "GET",
                &format!("/api/logs/{}?all_instances=true&tail=0", enc(&name)),
                None,
            )
            .await
            .ok()
            .map(|v| v["instances"].clone()),
            Source::Store(_, store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || ops::read_logs(&store, &name, &req))
                    .await?
                    .ok()
                    .and_then(|r| serde_json::to_value(r.instances).ok())
            }
            Source::Empty(_) => None,
        };
        report["instances"] = instances.unwrap_or_else(|| json!([]));
    }
    if args.common.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_report(
        &report,
        args.name.is_some(),
        matches!(source, Source::Store(..)),
    )?;
    Ok(ExitCode::SUCCESS)
}

const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// The state as a word, and its colour.
fn state_text(p: &Value) -> (String, &'static str) {
    let state = &p["state"];
    if let Some(s) = state.as_str() {
        let color = match s {
            "running" | "ready" => GREEN,
            "starting" | "building" => YELLOW,
            _ => "",
        };
        return (s.to_owned(), color);
    }
    if let Some(b) = state.get("backoff") {
        let left = b["until_unix_ms"].as_i64().unwrap_or(0) - chrono::Utc::now().timestamp_millis();
        return (format!("backoff {}s", (left.max(0) + 999) / 1000), YELLOW);
    }
    if let Some(e) = state.get("exited") {
        let st = exit_text(&e["status"]);
        let color = if st == "exit 0" || st == "exit code 0" {
            ""
        } else {
            RED
        };
        return (format!("exited ({st})"), color);
    }
    if state.get("failed").is_some() {
        return ("failed".into(), RED);
    }
    (state.to_string(), "")
}

/// An exit status as the API gives it: `{"Code":3}`, `{"Signal":9}`, `"Unknown"`, or
/// already as text.
fn exit_text(v: &Value) -> String {
    if let Some(text) = v.as_str().filter(|t| *t != "Unknown") {
        text.to_owned()
    } else if let Some(c) = v.get("Code") {
        format!("exit {c}")
    } else if let Some(s) = v.get("Signal") {
        format!("signal {s}")
    } else if v.is_null() {
        "-".into()
    } else {
        "unknown".into()
    }
}

fn uptime(secs: Option<f64>) -> String {
    let Some(s) = secs else { return "-".into() };
    let s = s as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn print_report(report: &Value, detail: bool, offline: bool) -> anyhow::Result<()> {
    let color = super::color_stdout();
    let mut out = std::io::stdout().lock();
    let empty = Vec::new();
    let procs = report["processes"].as_array().unwrap_or(&empty);
    if offline {
        writeln!(out, "no daemon running (read from the store)")?;
    } else {
        writeln!(
            out,
            "mode {}, daemon pid {}",
            report["mode"].as_str().unwrap_or("?"),
            report["daemon_pid"]
        )?;
    }
    if procs.is_empty() {
        writeln!(out, "no processes; start one with `bpm run -- CMD...`")?;
        return Ok(());
    }
    let rows: Vec<[String; 7]> = procs
        .iter()
        .map(|p| {
            let (state, _) = state_text(p);
            let argv: Vec<&str> = p["argv"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            [
                p["name"].as_str().unwrap_or("?").to_owned(),
                state,
                p["pid"].as_u64().map_or("-".into(), |x| x.to_string()),
                uptime(p["uptime_seconds"].as_f64()),
                p["restarts"].to_string(),
                p["run_instances"].to_string(),
                argv.join(" "),
            ]
        })
        .collect();
    let header = [
        "NAME", "STATE", "PID", "UPTIME", "RESTARTS", "RUNS", "COMMAND",
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
        writeln!(out, "{}", line(r, Some(state_text(p).1)))?;
    }
    if detail && let Some(p) = procs.first() {
        if let Some(e) = p["last_error"].as_str() {
            writeln!(out, "\nlast error: {e}")?;
        }
        writeln!(
            out,
            "\ninstances (newest last; address them with --instance):"
        )?;
        let inst = report["instances"].as_array().unwrap_or(&empty);
        let n = inst.len() as i64;
        for (i, m) in inst.iter().enumerate() {
            let state = match m["exit"].as_str() {
                Some(e) => e.to_owned(),
                None if m["ended"].is_null() => "running".into(),
                None => "ended".into(),
            };
            writeln!(
                out,
                "  {:>3}  #{:<5} pid {:<8} {}  {} lines  {}",
                i as i64 - n,
                m["id"],
                m["pid"].as_u64().map_or("-".into(), |x| x.to_string()),
                m["started"].as_str().unwrap_or(""),
                m["lines"],
                state
            )?;
        }
        writeln!(out, "\nrecent events:")?;
        for e in p["recent_events"].as_array().unwrap_or(&empty) {
            writeln!(
                out,
                "  {}  {}",
                e["at"].as_str().unwrap_or(""),
                e["what"].as_str().unwrap_or("")
            )?;
        }
    }
    Ok(())
}

pub fn start(args: NameArgs) -> ExitCode {
    super::execute(async move {
        let target = client::ensure_daemon(&args.common.daemon_options()).await?;
        let r = call(
            &target,
            "POST",
            "/api/start",
            Some(json!({ "name": args.name })),
        )
        .await?;
        if args.common.json {
            print_json(&r)?;
        } else if r["already_running"] == true {
            eprintln!(
                "bpm: {} already runs{}",
                r["name"].as_str().unwrap_or("?"),
                pid(&r["status"])
            );
        } else {
            eprintln!(
                "bpm: started {}{}",
                r["name"].as_str().unwrap_or("?"),
                pid(&r["status"])
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn stop(args: StopArgs) -> ExitCode {
    super::execute(async move {
        let target = client::ensure_daemon(&args.common.daemon_options()).await?;
        let path = format!(
            "/api/stop/{}{}",
            enc(&args.name),
            if args.force { "?force=true" } else { "" }
        );
        let r = call(&target, "POST", &path, None).await?;
        if args.common.json {
            print_json(&r)?;
        } else {
            eprintln!("bpm: stopped {}", r["name"].as_str().unwrap_or("?"));
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn restart(args: NameArgs) -> ExitCode {
    super::execute(async move {
        let target = client::ensure_daemon(&args.common.daemon_options()).await?;
        let r = call(
            &target,
            "POST",
            &format!("/api/restart/{}", enc(&args.name)),
            None,
        )
        .await?;
        if args.common.json {
            print_json(&r)?;
        } else {
            eprintln!(
                "bpm: restarted {}{}",
                r["name"].as_str().unwrap_or("?"),
                pid(&r["status"])
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn mode(args: ModeArgs) -> ExitCode {
    super::execute(async move {
        let target = client::ensure_daemon(&args.common.daemon_options()).await?;
        let r = match args.mode {
            None => call(&target, "GET", "/api/mode", None).await?,
            Some(m) => {
                let mode = match m {
                    ModeArg::Dev => "dev",
                    ModeArg::Release => "release",
                };
                call(&target, "POST", "/api/mode", Some(json!({ "mode": mode }))).await?
            }
        };
        if args.common.json {
            print_json(&r)?;
        } else {
            println!("{}", r["mode"].as_str().unwrap_or("?"));
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn pid(status: &Value) -> String {
    status["pid"]
        .as_u64()
        .map(|p| format!(" (pid {p})"))
        .unwrap_or_default()
}
