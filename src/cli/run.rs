//! `bpm run`: start a command through the daemon (or attach to the same command already
//! running in the same directory), show its backlog, follow it, and on Ctrl+C ask
//! whether to stop it or leave it running.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use super::logs::Render;
use super::{Common, api_error, connect};
use crate::protocol::{ExitStatus, FollowQuery, FollowRecord, StartRequest, Status};

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
    pub restart: bool,
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

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.common).await?;
    let cwd = match &args.cwd {
        Some(d) => std::path::absolute(d)?,
        None => std::env::current_dir()?,
    };
    let req = StartRequest {
        name: args.name.clone(),
        command: Some(args.command.clone()),
        cwd: Some(cwd.clone()),
        ..Default::default()
    };
    let mut r = client.start(&req).await.map_err(api_error)?;
    let name = r.name.clone();
    let attached = r.already_running;
    let mut tail = None;
    if attached && args.restart {
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
        color: super::color_stdout(),
        highlight: None,
        json: args.common.json,
    };
    let mut pid = r.status.pid;
    let mut records = client.follow(&name, &query).await.map_err(api_error)?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
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
                    "Stop {name}{}? [y/N] ",
                    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
                );
                let answer = tokio::task::spawn_blocking(move || ask(&question)).await?;
                if answer == Some(true) {
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

/// Ask on the terminal and read one keypress (raw mode, no Enter needed). `Some(true)`
/// for y/Y; `None` without a terminal.
fn ask(question: &str) -> Option<bool> {
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
    let yes = matches!(read, Ok(1)) && (key[0] == b'y' || key[0] == b'Y');
    let _ = writeln!(tty, "{}", if yes { "y" } else { "n" });
    Some(yes)
}
