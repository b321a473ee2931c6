//! The command-line front end: `bpm run`, `start`/`stop`/`restart`, `mode`, `status`,
//! `logs`. No business logic: every verb is a typed call to the daemon's local API
//! ([`crate::client`]), or, for `status` and `logs` when no daemon runs, the same
//! operations ([`crate::daemon::ops`]) over the store opened read-only.
//!
//! - [`run`]: `bpm run`: start or attach, follow, the Ctrl+C prompt.
//! - [`logs`]: `bpm logs`, and the follow stream's rendering shared with `run`.
//! - [`status`]: `bpm status`, and `start`/`stop`/`restart`/`mode`.
//! - [`many`]: `bpm logs a b`, `bpm logs --all`: several processes interleaved.
//! - [`shorthand`]: `bpm npm run dev`, `bpm DIR`.
//! - [`complete`]: shell completion, process names included.
//! - [`daemons`]: `bpm daemons`, the running daemons of this user.
//! - [`service`]: `bpm service install|uninstall|status`, a systemd unit for a daemon.
//! - [`help`]: the environment variables and examples each command's `--help` ends with.
//! - `--since`/`--until` values are read by [`crate::timespec`].

pub mod complete;
pub mod daemons;
pub mod help;
pub mod logs;
pub mod many;
pub mod run;
pub mod service;
pub mod shorthand;
pub mod status;

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::client::{self, Client, ClientError, DaemonOptions, Target};

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
    /// Colour and the processes' own escape codes: auto (on a terminal, unless NO_COLOR
    /// is set), always, or never (escape codes are taken out, also of JSON).
    #[arg(long, value_name = "WHEN", default_value_t = clap::ColorChoice::Auto)]
    pub color: clap::ColorChoice,
}

impl Common {
    /// Whether to colour stdout (see `--color`).
    pub fn color(&self) -> bool {
        match self.color {
            clap::ColorChoice::Always => true,
            clap::ColorChoice::Never => false,
            clap::ColorChoice::Auto => color_stdout(),
        }
    }

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
            // A closed pipe (`bpm logs --json | head -1`) is how a reader says "enough".
            let broken_pipe = |c: &(dyn std::error::Error + 'static)| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                    || c.downcast_ref::<serde_json::Error>()
                        .is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
            };
            if e.chain().any(broken_pipe) {
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

/// A failed call to the daemon as the CLI reports it: bad input the daemon refused (a bad
/// regex, an instance out of range, a bad value) is a usage error (exit 2).
fn api_error(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Api {
            status: 400,
            message,
        } => UsageError(message).into(),
        e => e.into(),
    }
}

/// The daemon for a command that needs one (started when none runs, unless
/// `--no-autostart`).
async fn connect(common: &Common) -> anyhow::Result<Client> {
    Ok(Client::connect(&common.daemon_options()).await?)
}

/// Where a read (`status`, `logs`) is answered.
enum Source {
    Daemon(Client),
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
            return Ok(Source::Daemon(Client::new(target)));
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
fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}
