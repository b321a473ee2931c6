//! The command-line front end: `bpm run`, `start`/`stop`/`restart`, `mode`, `status`,
//! `logs`. No business logic: every verb is a call to the daemon's local API
//! ([`client`]), or, for `status` and `logs` when no daemon runs, the same operations
//! ([`crate::daemon::ops`]) over the store opened read-only.
//!
//! - [`client`]: the local API's client (reused by other front ends).
//! - [`run`]: `bpm run`: start or attach, follow, the Ctrl+C prompt.
//! - [`logs`]: `bpm logs`, and the follow stream's rendering shared with `run`.
//! - [`status`]: `bpm status`, and `start`/`stop`/`restart`/`mode`.
//! - `--since`/`--until` values are read by [`crate::timespec`].

pub mod client;
pub mod logs;
pub mod run;
pub mod status;

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use client::{DaemonOptions, Target};

/// Options every daemon-facing command takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Common {
    /// The daemon's data directory (default: $BPM_HOME, the nearest project's .bpm, else ~/.local/state/bpm).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Do not start a daemon when none runs.
    #[arg(long)]
    pub no_autostart: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Common {
    fn daemon_options(&self) -> DaemonOptions {
        DaemonOptions::new(self.data_dir.clone(), !self.no_autostart)
    }
}

/// Bad input: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Run a command's future on a small runtime and map its outcome to an exit code:
/// its own code, 2 for a [`UsageError`], 1 for any other error, 0 for a closed pipe
/// (`bpm logs web | head`).
pub fn execute(f: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bpm: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(f);
    // Streams being read must not hold the runtime open.
    rt.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("bpm: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Whether to colour what goes to stdout: a terminal, and `NO_COLOR` unset or empty.
pub fn color_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A call to the daemon that answered with an error: its message, as a usage error for
/// a 400 (bad regex, instance out of range, bad value) and a failure otherwise.
fn api_error(status: u16, body: &[u8]) -> anyhow::Error {
    let msg = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    if status == 400 {
        UsageError(msg).into()
    } else {
        anyhow::anyhow!(msg)
    }
}

/// Call the daemon and return its JSON answer, or its error.
async fn call(
    target: &Target,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let (headers, bytes): (&[(&str, &str)], Vec<u8>) = match body {
        Some(b) => (
            &[("content-type", "application/json")],
            serde_json::to_vec(&b)?,
        ),
        None => (&[], Vec::new()),
    };
    let resp = client::request(&target.socket(), method, path, headers, bytes).await?;
    let status = resp.status;
    let bytes = resp.bytes().await?;
    if status != 200 {
        return Err(api_error(status, &bytes));
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// Where a read (`status`, `logs`) is answered.
enum Source {
    Daemon(Target),
    /// No daemon runs: the store, opened read-only.
    Store(Target, crate::logs::Store),
    /// No daemon runs, and nothing ever ran with this data directory.
    Empty(Target),
}

impl Source {
    /// The error for a read that needs logs when there are none.
    fn nothing_here(target: &Target) -> anyhow::Error {
        anyhow::anyhow!(
            "no bpm daemon runs for the data directory {}, and it has no log store yet (nothing has run with it); start something with `bpm run -- CMD...`, or pass the --data-dir that was used",
            target.data_dir.display()
        )
    }
}

/// The daemon if one answers, else the store read-only (said on stderr), else
/// [`Source::Empty`]. Reads never start a daemon.
async fn read_source(common: &Common) -> anyhow::Result<Source> {
    let opts = common.daemon_options();
    let target = client::locate(opts.data_dir.as_deref(), &opts.cwd);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if client::answers(&target.socket()).await {
            return Ok(Source::Daemon(target));
        }
        let path = target.store();
        if !path.exists() {
            return Ok(Source::Empty(target));
        }
        match crate::logs::Store::open_read_only(&path) {
            Ok(store) => {
                eprintln!(
                    "bpm: no daemon is running; reading the store {} directly (read-only)",
                    path.display()
                );
                return Ok(Source::Store(target, store));
            }
            // A daemon holds the store but does not answer yet (it is starting).
            Err(crate::logs::StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Print a JSON document on stdout.
fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Percent-encode a query value or path segment.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
