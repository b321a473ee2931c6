//! The `bpm` binary: argument parsing and dispatch only; exit codes 0 ok, 1 failure, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

use bpm::cli::{help, logs::LogsArgs, run::RunArgs, status};
use clap::{CommandFactory as _, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bpm",
    version,
    about = "A process manager for the age of AI coding agents: supervised processes whose output survives the process, the daemon and a reboot.",
    after_help = help::TOP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: supervise the processes of DIR's .mcp-run and record their output.
    #[command(after_help = help::SERVE)]
    Serve {
        /// The project directory (its .mcp-run is loaded when present).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The HTTP port on 127.0.0.1, an error when taken (default: the config's mcp_port,
        /// else 8947, or a free port when that one is taken; 0 picks one).
        #[arg(long)]
        port: Option<u16>,
        /// Where the store lives (default: $BPM_HOME, DIR/.bpm for a project, else ~/.local/state/bpm).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Copy process output to stdout with [name] prefixes even when stdout is not a
        /// terminal or the journal (the default there: only the daemon's own messages).
        #[arg(long, conflicts_with = "no_prefix")]
        prefix: bool,
        /// Do not copy process output to stdout with [name] prefixes.
        #[arg(long)]
        no_prefix: bool,
        /// The address to listen on (default 127.0.0.1). Any other than loopback needs a
        /// token.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::IpAddr>,
        /// Require `Authorization: Bearer <token>` on every HTTP request, with the token
        /// read from FILE (or from the BPM_TOKEN environment variable).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Expire MCP sessions idle for this many seconds (default: a day).
        #[arg(long, value_name = "SECONDS", hide = true)]
        mcp_session_idle: Option<f64>,
    },
    /// Serve the MCP tools over stdio (for clients that launch a command), bridged to the
    /// running daemon, which is started when none runs. Logs go to stderr only.
    #[command(after_help = help::MCP)]
    Mcp {
        /// The daemon's data directory (default: $BPM_HOME, the nearest project's .bpm,
        /// else ~/.local/state/bpm).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Do not start a daemon when none runs.
        #[arg(long)]
        no_autostart: bool,
    },
    /// Print how to connect an agent (claude, cursor, vscode, codex, gemini) to the running
    /// daemon (its port and token, from its data directory); --apply adds it to each
    /// client whose command is on PATH.
    Setup(bpm::mcp::setup::SetupArgs),
    /// Run a command through the daemon and follow it (or attach if it already runs here).
    #[command(after_help = help::RUN)]
    Run(RunArgs),
    /// Start a process by name.
    #[command(after_help = help::START)]
    Start(status::ManyArgs),
    /// Stop a process (its whole process group).
    #[command(after_help = help::STOP)]
    Stop(status::StopArgs),
    /// Restart a process (rebuild first if it has a build step).
    #[command(after_help = help::RESTART)]
    Restart(status::ManyArgs),
    /// Remove a stopped process started with a command from the list (its logs stay
    /// unless --logs).
    #[command(after_help = help::RM)]
    Rm(status::RmArgs),
    /// Print or switch the daemon's mode.
    #[command(after_help = help::MODE)]
    Mode(status::ModeArgs),
    /// The processes and their state; with NAME, its instances, recent events and last
    /// lines.
    #[command(visible_aliases = ["ls", "ps"], after_help = help::STATUS)]
    Status(status::StatusArgs),
    /// Read, search or follow a process's output, also of earlier runs and without a daemon.
    #[command(after_help = help::LOGS)]
    Logs(LogsArgs),
    /// A live dashboard of the daemon and its processes in the terminal (with no daemon
    /// running: the store, read-only, for post-crash investigation).
    #[command(after_help = help::TUI)]
    Tui(bpm::tui::TuiArgs),
    /// The bpm daemons of this user running on this machine: pid, HTTP port, project and
    /// data directory.
    #[command(after_help = help::DAEMONS)]
    Daemons(bpm::cli::daemons::DaemonsArgs),
    /// Install the global daemon or a project's as a systemd service (user unit by default),
    /// remove it, or show its state.
    #[command(after_help = help::SERVICE)]
    Service(bpm::cli::service::ServiceArgs),
    /// Print bpm's man page (roff), e.g. `bpm man > ~/.local/share/man/man1/bpm.1`.
    Man,
    /// Print a shell completion script (it completes commands, options and process
    /// names); e.g. `bpm completions bash >> ~/.bashrc`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    // `COMPLETE=bash bpm ...`: the shell asks for completions (see `bpm completions`).
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    let cli = match Cli::try_parse().or_else(expand_shorthand) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // Logs go to stderr: stdout carries process output (and the MCP protocol in `bpm mcp`).
    let default_level = match cli.command {
        Command::Serve { .. } => "info",
        // The terminal is the TUI's screen: a log line would tear it.
        Command::Tui(_) => "off",
        _ => "warn",
    };
    // Escape codes only for a terminal: not in daemon.log, journald or a pipe.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BPM_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    let result = match cli.command {
        Command::Serve {
            dir,
            port,
            data_dir,
            prefix,
            no_prefix,
            listen,
            token_file,
            mcp_session_idle,
        } => read_token(token_file.as_deref()).and_then(|token| {
            // Before anything else opens a descriptor.
            bpm::daemon::hygiene::close_inherited_fds();
            let passthrough = if prefix {
                Some(true)
            } else if no_prefix || !bpm::daemon::hygiene::stdout_is_read() {
                Some(false)
            } else {
                None // the config's prefix_output
            };
            let token_file = token_file.filter(|_| token.is_some());
            serve(bpm::daemon::Options {
                dir,
                data_dir,
                port,
                passthrough,
                store: Default::default(),
                listen,
                token,
                token_file,
                mcp_session_idle: mcp_session_idle.map(std::time::Duration::from_secs_f64),
                conn_idle: None,
                follow_heartbeat: None,
                registry: Some(bpm::daemon::registry::default_dir()),
            })
        }),
        Command::Mcp {
            data_dir,
            no_autostart,
        } => {
            let opts = bpm::client::DaemonOptions::new(data_dir, !no_autostart);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(bpm::mcp::bridge::serve_stdio(opts)))
        }
        Command::Setup(a) => return bpm::mcp::setup::main(a),
        Command::Run(a) => return bpm::cli::run::main(a),
        Command::Start(a) => return status::start(a),
        Command::Stop(a) => return status::stop(a),
        Command::Restart(a) => return status::restart(a),
        Command::Rm(a) => return status::remove(a),
        Command::Mode(a) => return status::mode(a),
        Command::Status(a) => return status::main(a),
        Command::Logs(a) => return bpm::cli::logs::main(a),
        Command::Tui(a) => return bpm::tui::main(a),
        Command::Daemons(a) => return bpm::cli::daemons::main(a),
        Command::Service(a) => return bpm::cli::service::main(a),
        Command::Man => {
            let mut page = Vec::new();
            return match clap_mangen::Man::new(Cli::command()).render(&mut page) {
                Ok(()) => {
                    let _ = std::io::Write::write_all(&mut std::io::stdout(), &page);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bpm: cannot render the man page: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Completions { shell } => {
            // Generated into memory first: a closed pipe (`bpm completions zsh | head`) is
            // not an error.
            let script =
                bpm::cli::complete::registration(&shell.to_string()).unwrap_or_else(|| {
                    let mut script = Vec::new();
                    clap_complete::generate(shell, &mut Cli::command(), "bpm", &mut script);
                    script
                });
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            return ExitCode::SUCCESS;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `bpm npm run dev` as `bpm run -- npm run dev`, `bpm DIR` as `bpm serve DIR`. Any
/// other unknown first word keeps clap's error, with its "did you mean" suggestion.
fn expand_shorthand(e: clap::Error) -> Result<Cli, clap::Error> {
    if e.kind() != clap::error::ErrorKind::InvalidSubcommand {
        return Err(e);
    }
    let words: Vec<_> = std::env::args_os().skip(1).collect();
    if let Some(argv) = bpm::cli::shorthand::expand(&words) {
        return Cli::try_parse_from(argv);
    }
    let mut e = e;
    let mut tips = match e.get(clap::error::ContextKind::Suggested) {
        Some(clap::error::ContextValue::StyledStrs(t)) => t.clone(),
        _ => Vec::new(),
    };
    tips.push(
        format!(
            "it is not a program on PATH or a directory either; to run a command: bpm run -- {}",
            words
                .first()
                .map_or(String::new(), |w| w.to_string_lossy().into_owned())
        )
        .into(),
    );
    e.insert(
        clap::error::ContextKind::Suggested,
        clap::error::ContextValue::StyledStrs(tips),
    );
    Err(e)
}

/// The bearer token: from `--token-file`, else `BPM_TOKEN`.
fn read_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", f.display()))?;
        let token = text.trim().to_owned();
        if token.is_empty() {
            anyhow::bail!(
                "the token file {} is empty; put a long random string in it (e.g. `openssl rand -hex 32 > {}`)",
                f.display(),
                f.display()
            );
        }
        return Ok(Some(token));
    }
    Ok(std::env::var("BPM_TOKEN")
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}

fn serve(opts: bpm::daemon::Options) -> anyhow::Result<()> {
    bpm::platform::limit_malloc_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let host = opts
            .listen
            .filter(|ip| !ip.is_loopback())
            .map_or_else(|| "127.0.0.1".to_owned(), |ip| ip.to_string());
        // Reaps until the runtime ends, so also while the processes are stopped.
        let _reaper = bpm::daemon::take_over_process_tree();
        bpm::daemon::run(opts, shutdown, |info| {
            let cap = std::env::var("BPM_LOG_MAX_BYTES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(bpm::daemon::hygiene::OWN_LOG_MAX_BYTES);
            if let Some(log) = bpm::daemon::hygiene::OwnLog::of(&info.data_dir, cap) {
                log.watch(std::time::Duration::from_secs(1));
            }
            eprintln!(
                "bpm: daemon pid {} listening on http://{host}:{} (data in {})\n{}",
                info.pid,
                info.port,
                info.data_dir.display(),
                bpm::mcp::setup::short(info.port)
            );
        })
        .await
    })
}
