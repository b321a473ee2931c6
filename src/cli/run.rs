//! `bpm run`: start a command through the daemon (or attach to the same command already
//! running in the same directory), show its backlog, follow it, and on Ctrl+C ask
//! whether to stop it or leave it running. With `--detach`, answer once it is ready (or
//! has stayed up for the settle time) and leave it running, like `docker run -d`.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use super::UsageError;
use super::logs::Render;
use super::{Common, api_error, connect};
use crate::protocol::{
    ExitStatus, FollowQuery, FollowRecord, RestartPolicy, StartRequest, StartResult, Status,
};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The process's name (default: derived from the command, e.g. npm-run-dev).
    #[arg(long)]
    pub name: Option<String>,
    /// Run in this directory (default: the current one).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// If the same command already runs here, restart it instead of attaching.
    #[arg(long)]
    pub replace: bool,
    /// When to restart it after it exits: never (the default, like a command in a
    /// terminal), on-failure, or always.
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<RestartPolicy>,
    /// Set an environment variable for the process (repeatable), on top of this
    /// shell's environment, which the process gets too.
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Start it (or find it running), wait until it is ready or has stayed up for the
    /// settle time, print where it runs, and return: it keeps running.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// With --detach: how long to wait, in seconds (for the readiness check, or to see
    /// it stay up; default 30 with a check, else 1).
    #[arg(long, value_name = "SECONDS", requires = "detach")]
    pub wait: Option<f64>,
    /// Ready once 127.0.0.1:PORT accepts connections.
    #[arg(long, value_name = "PORT", conflicts_with_all = ["ready_url", "ready_log"])]
    pub ready_port: Option<u16>,
    /// Ready once a GET of this http:// URL answers.
    #[arg(long, value_name = "URL", conflicts_with = "ready_log")]
    pub ready_url: Option<String>,
    /// Ready once a line of output matches this regex.
    #[arg(long, value_name = "RE")]
    pub ready_log: Option<String>,
    /// Lines of backlog to show when attaching.
    #[arg(
        short = 'n',
        long = "lines",
        value_name = "LINES",
        default_value_t = 10
    )]
    pub lines: u64,
    /// Prefix each line with its time (UTC).
    #[arg(long, short = 't')]
    pub timestamps: bool,
    #[command(flatten)]
    pub common: Common,
    /// The command and its arguments, passed through exactly.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

pub fn main(args: RunArgs) -> ExitCode {
    super::execute(run(args))
}

/// `K=V` for `--env`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not K=V; e.g. --env PORT=3001")),
    }
}

/// What the process gets: this shell's environment, then `--env` on top.
fn environment(extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    env.extend(extra.iter().cloned());
    env.into_iter().collect()
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Before anything is printed: a Ctrl+C from then on gets the question.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let client = connect(&args.common).await?;
    let cwd = match &args.cwd {
        Some(d) => std::path::absolute(d)?,
        None => std::env::current_dir()?,
    };
    let req = StartRequest {
        name: args.name.clone(),
        command: Some(args.command.clone()),
        cwd: Some(cwd.clone()),
        env: environment(&args.env),
        // Following shows what happens; only a detached run waits for the truth first.
        wait_seconds: if args.detach { args.wait } else { Some(0.0) },
        restart: args.restart,
        ready_port: args.ready_port,
        ready_url: args.ready_url.clone(),
        ready_log: args.ready_log.clone(),
    };
    let mut r = client.start(&req).await.map_err(api_error)?;
    let name = r.name.clone();
    let attached = r.already_running;
    if args.detach {
        if attached && args.replace {
            r = client.restart(&name).await.map_err(api_error)?;
        }
        return detached(&args, &r);
    }
    let mut tail = None;
    if attached && args.replace {
        r = client.restart(&name).await.map_err(api_error)?;
        note(&args, &format!("restarted {name}{}", pid_text(&r.status)));
    } else if attached {
        tail = Some(args.lines);
        note(
            &args,
            &format!(
                "attached to {name}{}: the same command already runs in {}",
                pid_text(&r.status),
                cwd.display()
            ),
        );
    } else {
        note(&args, &format!("started {name}{}", pid_text(&r.status)));
    }
    let query = FollowQuery {
        instance: r.status.instance,
        tail,
        ..Default::default()
    };
    let render = Render {
        timestamps: args.timestamps,
        color: args.common.color(),
        highlight: None,
        json: args.common.json,
    };
    let mut pid = r.status.pid;
    let mut records = client.follow(&name, &query).await.map_err(api_error)?;
    loop {
        tokio::select! {
            batch = records.next() => {
                let Some(batch) = batch? else {
                    note(&args, "the daemon stopped");
                    return Ok(ExitCode::FAILURE);
                };
                render.records(&batch, true)?;
                for rec in &batch {
                    match rec {
                        FollowRecord::Instance { pid: p, .. } => pid = *p,
                        FollowRecord::Exit { status, restarted: false, .. } => {
                            return Ok(ExitCode::from(exit_code(status)));
                        }
                        _ => {}
                    }
                }
            }
            _ = sigint.recv() => {
                let question = format!(
                    "Stop `{}` ({name}{})? [y/N] ",
                    shell_words(&args.command),
                    pid.map(|p| format!(", pid {p}")).unwrap_or_default()
                );
                // y, or a second Ctrl+C (as `npm run dev` and `docker compose up` stop).
                let answer = tokio::task::spawn_blocking(move || ask(&question)).await?;
                if matches!(answer, Some(Answer::Yes | Answer::Interrupt)) {
                    client.stop(&name, false).await.map_err(api_error)?;
                    note(&args, &format!("stopped {name}"));
                    return Ok(ExitCode::from(130));
                }
                note(
                    &args,
                    &format!("detached; {name} keeps running (`bpm logs -f {name}` follows it, `bpm stop {name}` stops it)"),
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// Report a detached start: where it runs, or why it did not start (exit 1).
fn detached(args: &RunArgs, r: &StartResult) -> anyhow::Result<ExitCode> {
    let failed = r.readiness.as_ref().is_some_and(|x| x.failed());
    if args.common.json {
        super::print_json(r)?;
    } else if failed {
        eprintln!("bpm: {}", r.message("started"));
    } else {
        println!("{}", r.message("started"));
    }
    if failed {
        return Ok(ExitCode::FAILURE);
    }
    if args.wait.is_some_and(|w| w < 0.0) {
        return Err(UsageError("--wait takes a number of seconds".into()).into());
    }
    Ok(ExitCode::SUCCESS)
}

fn note(args: &RunArgs, text: &str) {
    if !args.common.json {
        eprintln!("bpm: {text}");
    }
}

fn pid_text(status: &Status) -> String {
    status
        .pid
        .map(|p| format!(" (pid {p})"))
        .unwrap_or_default()
}

/// The exit code that passes a process's end through: its code, 128+N for signal N, 1
/// when unknown.
fn exit_code(status: &ExitStatus) -> u8 {
    match status {
        ExitStatus::Code(c) => (c & 0xff) as u8,
        ExitStatus::Signal(s) => (128 + s).clamp(0, 255) as u8,
        ExitStatus::Unknown => 1,
    }
}

/// The key pressed at the Ctrl+C question.
#[derive(Debug, PartialEq)]
enum Answer {
    Yes,
    No,
    /// Ctrl+C again: raw mode reads it as a byte rather than a signal.
    Interrupt,
}

/// Ask on the terminal and read one keypress (raw mode, no Enter needed); `None`
/// without a terminal.
fn ask(question: &str) -> Option<Answer> {
    use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    let saved = tcgetattr(&tty).ok()?;
    let _ = write!(tty, "\r\n{question}");
    let _ = tty.flush();
    let mut raw = saved.clone();
    cfmakeraw(&mut raw);
    tcsetattr(&tty, SetArg::TCSANOW, &raw).ok()?;
    let mut key = [0u8; 1];
    let read = tty.read(&mut key);
    let _ = tcsetattr(&tty, SetArg::TCSANOW, &saved);
    let answer = match (read, key[0]) {
        (Ok(1), b'y' | b'Y') => Answer::Yes,
        (Ok(1), 0x03) => Answer::Interrupt,
        _ => Answer::No,
    };
    let _ = writeln!(
        tty,
        "{}",
        match answer {
            Answer::Yes => "y",
            Answer::Interrupt => "^C",
            Answer::No => "n",
        }
    );
    Some(answer)
}

/// A command line as a person would type it: words with spaces or quotes quoted.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
