//! The daemon: [`run`] opens the store, recovers from an unclean predecessor, binds the
//! listeners, supervises the processes, and on shutdown stops them all and closes the
//! store. `bpm serve` calls it; tests call it in-process.

pub mod conn;
pub mod files;
pub mod guard;
pub mod http;
pub mod hygiene;
pub mod notify;
pub mod ops;
pub mod peer;
pub mod registry;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ProcessKind};
use crate::logs::{Actor, EventKind, InstanceKind, Store, StoreError, StoreOptions};
use crate::supervisor::process::{Mode, ProcessSpec};
use crate::supervisor::{cargo, cgroup, procgroup, reaper, scope};
use ops::{Ops, RuntimeSpec};

/// The store's file name inside the data directory.
pub const STORE_FILE: &str = "logs.redb";
/// Where a running daemon says who it is (pid, port), inside the data directory.
pub const DAEMON_FILE: &str = "daemon.json";
/// The local API's Unix socket (mode 0600), inside the data directory.
pub const SOCKET_FILE: &str = "bpm.sock";

/// How to run the daemon.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The project directory (its `.mcp-run`, if any, is loaded).
    pub dir: PathBuf,
    /// `--data-dir`; else the rules of [`config::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// `--port`: this port or an error. Else the config's `mcp_port`, or a free port when
    /// that one is taken (another daemon's). 0 picks a free port.
    pub port: Option<u16>,
    /// Copy process output to stdout with `[name]` prefixes (the systemd journal).
    pub passthrough: Option<bool>,
    pub store: StoreOptions,
    /// `--listen`: the address of the TCP listener (default 127.0.0.1). Another than a
    /// loopback address needs `token`.
    pub listen: Option<std::net::IpAddr>,
    /// The bearer token every TCP request must carry (`--token-file`, `BPM_TOKEN`).
    pub token: Option<String>,
    /// The file `token` was read from, if any: named in `daemon.json` so that `bpm setup`
    /// can tell where it is (the token itself is never written there).
    pub token_file: Option<PathBuf>,
    /// How long an idle MCP session lives (default [`crate::mcp::DEFAULT_SESSION_IDLE`]).
    pub mcp_session_idle: Option<Duration>,
    /// How long a connection may wait before sending a request (default
    /// [`conn::IDLE_TIMEOUT`]).
    pub conn_idle: Option<Duration>,
    /// How long a follow stream stays silent before its heartbeat (default
    /// [`http::HEARTBEAT`]).
    pub follow_heartbeat: Option<Duration>,
    /// The registry of running daemons to enter this one in (see [`registry`]); `bpm
    /// serve` gives [`registry::default_dir`], a daemon run in-process none.
    pub registry: Option<PathBuf>,
}

/// Who a running daemon is, as written to `daemon.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonInfo {
    pub pid: u32,
    pub port: u16,
    pub data_dir: PathBuf,
    pub project_dir: PathBuf,
    /// Whether TCP requests need a bearer token (`--token-file`, `BPM_TOKEN`).
    #[serde(default)]
    pub token: bool,
    /// The file the token was read from, if it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// Read a running daemon's `daemon.json`.
pub fn read_daemon_info(data_dir: &Path) -> Option<DaemonInfo> {
    let text = std::fs::read_to_string(data_dir.join(DAEMON_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Run the daemon until `shutdown` resolves. `on_ready` is called once the listeners are
/// bound (before any process is built or started), with who the daemon is.
///
/// The phases, in order: load the config, open the store, bind the listeners, register
/// the processes, serve; then recovery and autostart run in the background. One
/// cancellation token is the root of everything that must end at shutdown (both servers,
/// the MCP sessions' event streams, follow streams, the background tasks); cancelling it
/// is the first step of the shutdown, stopping the processes the second, closing the
/// store the last.
pub async fn run(
    opts: Options,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&DaemonInfo),
) -> anyhow::Result<()> {
    crate::platform::warn_at_start();
    let setup = Setup::load(&opts)?;
    let opened = open_store(&setup, &opts).await?;
    let store = opened.store.clone();
    let nofile = conn::raise_nofile();
    let limits = conn::Limits::for_nofile(nofile, opts.conn_idle.unwrap_or(conn::IDLE_TIMEOUT));
    let bound = bind(&setup, &opts).await?;
    let registered = opts.registry.as_deref().and_then(|dir| {
        registry::register(dir, &bound.info)
            .map_err(|e| {
                tracing::warn!(
                    "cannot enter this daemon in the registry {} (`bpm daemons` will not list it): {e}",
                    dir.display()
                )
            })
            .ok()
    });
    let cancel = CancellationToken::new();
    store.record(
        None,
        None,
        EventKind::DaemonStarted {
            pid: bound.info.pid,
        },
    );
    let ops = register(&setup, &opts, store.clone(), cancel.child_token()).await?;
    let servers = serve(&ops, &opts, limits, bound.tcp, bound.unix, &cancel)?;

    // Ready once the listeners are bound, never after the builds.
    notify::ready();
    on_ready(&bound.info);

    // Recovery and autostart in the background, so the daemon answers at once.
    let background = [
        tokio::spawn(until_cancelled(
            cancel.child_token(),
            recover_and_autostart(ops.clone(), opened.interrupted, opened.unclean),
        )),
        tokio::spawn(until_cancelled(
            cancel.child_token(),
            mode_timer(ops.clone()),
        )),
        tokio::spawn(until_cancelled(cancel.child_token(), observer(ops.clone()))),
        tokio::spawn(until_cancelled(cancel.child_token(), notify::watchdog())),
    ];

    shutdown.await;
    tracing::info!("shutting down: stopping every process");
    notify::stopping();
    cancel.cancel();
    ops.shutdown_all().await;
    for task in servers.into_iter().chain(background) {
        let _ = task.await;
    }
    let _ = std::fs::remove_file(setup.data_dir.join(SOCKET_FILE));
    store.record(None, None, EventKind::DaemonStopped);
    let _ = std::fs::remove_file(setup.data_dir.join(DAEMON_FILE));
    drop(registered);
    tokio::task::spawn_blocking(move || {
        store.flush()?;
        store.close()
    })
    .await??;
    Ok(())
}

/// Take over the process-wide duties of a supervisor, before [`run`]: become the child
/// subreaper of the supervised processes and reap what they leave behind (until the
/// runtime ends), and give each process a cgroup of its own where the daemon can create
/// cgroups. `bpm serve` calls it; a daemon run in-process by a test leaves its host
/// process alone. Must be called within a tokio runtime.
pub fn take_over_process_tree() -> tokio::task::JoinHandle<()> {
    if let Err(e) = reaper::become_subreaper() {
        tracing::warn!(error = %e, "cannot become the child subreaper");
    }
    match cgroup::enable() {
        Ok(root) => tracing::info!("each process gets a cgroup in {}", root.display()),
        Err(why) => tracing::info!(
            "no cgroups ({why}): processes are tracked by process group, environment and parent"
        ),
    }
    tokio::spawn(reaper::run())
}

/// Run `fut` until it ends or `cancel` fires.
async fn until_cancelled(cancel: CancellationToken, fut: impl Future<Output = ()>) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = fut => {}
    }
}

/// What the daemon serves: the project, its config, the data directory.
struct Setup {
    dir: PathBuf,
    config: Config,
    data_dir: PathBuf,
}

impl Setup {
    fn load(opts: &Options) -> anyhow::Result<Setup> {
        let dir = std::path::absolute(&opts.dir).with_context(|| {
            format!(
                "cannot resolve the project directory {}",
                opts.dir.display()
            )
        })?;
        let config = match Config::load(&dir)? {
            Some(c) => c,
            None => Config::default_for(&dir),
        };
        let has_config = dir.join(config::CONFIG_FILE).is_file();
        let data_dir = config::data_dir(
            opts.data_dir.as_deref(),
            has_config.then_some(dir.as_path()),
        );
        files::create_private_dir(&data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        // Before anything is created in it (see `files`): the directory first, then what
        // an older daemon (or another program) left readable by others.
        let restricted = files::restrict(&data_dir).with_context(|| {
            format!(
                "cannot make the data directory {} private (mode 0700, its files 0600)",
                data_dir.display()
            )
        })?;
        for r in restricted {
            tracing::warn!("{r}");
        }
        Ok(Setup {
            dir,
            config,
            data_dir,
        })
    }
}

/// Open the store (in a blocking task), saying who holds it when another daemon does,
/// and recording it when an unreadable store was moved aside.
async fn open_store(setup: &Setup, opts: &Options) -> anyhow::Result<crate::logs::Opened> {
    let path = setup.data_dir.join(STORE_FILE);
    let store_opts = StoreOptions {
        store_max_bytes: setup.config.store_max_bytes,
        ..opts.store.clone()
    };
    // A new store is created under the umask; the directory (0700 already) keeps it
    // private until it is made 0600 right after.
    let opened = tokio::task::spawn_blocking({
        let path = path.clone();
        move || {
            let opened = Store::open(&path, store_opts);
            if opened.is_ok() {
                files::restrict_path(&path)?;
            }
            Ok::<_, std::io::Error>(opened)
        }
    })
    .await?
    .with_context(|| {
        format!(
            "cannot make the store {} private (mode 0600)",
            path.display()
        )
    })?;
    let opened = match opened {
        Ok(o) => o,
        Err(StoreError::Locked { .. }) => {
            let who = read_daemon_info(&setup.data_dir)
                .map(|i| format!(" (pid {}, port {})", i.pid, i.port))
                .unwrap_or_default();
            anyhow::bail!(
                "another bpm daemon{who} already runs with the data directory {}; use it (`bpm status`), stop it, or pass another --data-dir",
                setup.data_dir.display()
            );
        }
        Err(e) => return Err(e.into()),
    };
    if let Some((from, to)) = &opened.moved_aside {
        opened.store.record(
            None,
            None,
            EventKind::Note {
                text: format!(
                    "the store {} could not be opened; it was moved aside to {} and a new one started",
                    from.display(),
                    to.display()
                ),
            },
        );
    }
    Ok(opened)
}

/// The bound listeners, and who the daemon is (written to `daemon.json`).
struct Bound {
    tcp: TcpListener,
    unix: tokio::net::UnixListener,
    info: DaemonInfo,
}

/// Bind the TCP listener (refusing a non-loopback address without a token) and the
/// local socket, and write `daemon.json`.
async fn bind(setup: &Setup, opts: &Options) -> anyhow::Result<Bound> {
    let port = opts.port.unwrap_or(setup.config.mcp_port);
    let listen = listen_addr(opts);
    if !listen.is_loopback() && token(opts).is_none() {
        anyhow::bail!(
            "refusing to listen on {listen} without a token: anyone who can reach it could run commands as you; pass --token-file FILE (or set BPM_TOKEN), or listen on 127.0.0.1"
        );
    }
    let tcp = match TcpListener::bind((listen, port)).await {
        Ok(l) => l,
        // Only a port asked for explicitly must be this one: another daemon (of another
        // project) may hold the configured one, and the local socket is what the CLI uses.
        Err(e) if opts.port.is_none() && e.kind() == std::io::ErrorKind::AddrInUse => {
            let l = TcpListener::bind((listen, 0))
                .await
                .with_context(|| format!("cannot listen on {listen} on any port"))?;
            tracing::warn!(
                "port {port} is taken (by another daemon or program); listening on port {} instead (recorded in {})",
                l.local_addr()?.port(),
                setup.data_dir.join(DAEMON_FILE).display()
            );
            l
        }
        Err(e) => {
            let way_out = if opts.port.is_some() {
                "given by --port (or BPM_PORT); pass another port, 0 for a free one, or no --port to take the configured one or else a free one"
            } else {
                "the configured mcp_port; set another in .mcp-run or pass --port"
            };
            return Err(e).with_context(|| format!("cannot listen on {listen}:{port}, {way_out}"));
        }
    };
    let unix = bind_socket(&setup.data_dir.join(SOCKET_FILE))?;
    let info = DaemonInfo {
        pid: std::process::id(),
        port: tcp.local_addr()?.port(),
        data_dir: setup.data_dir.clone(),
        project_dir: setup.dir.clone(),
        token: token(opts).is_some(),
        token_file: token(opts).and(opts.token_file.clone()),
    };
    files::write_private(
        &setup.data_dir.join(DAEMON_FILE),
        &serde_json::to_vec_pretty(&info)?,
    )?;
    Ok(Bound { tcp, unix, info })
}

fn listen_addr(opts: &Options) -> std::net::IpAddr {
    opts.listen.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())
}

fn token(opts: &Options) -> Option<String> {
    opts.token.clone().filter(|t| !t.trim().is_empty())
}

/// The operations layer with every process registered: the configured ones, then the
/// runtime ones an earlier daemon persisted. Nothing is started yet.
async fn register(
    setup: &Setup,
    opts: &Options,
    store: Store,
    closing: CancellationToken,
) -> anyhow::Result<Ops> {
    let config = &setup.config;
    let passthrough = opts.passthrough.unwrap_or(config.prefix_output);
    let ops = Ops::new(store.clone(), config.clone(), passthrough, closing);
    for (name, pc) in &config.processes {
        let mut spec = ProcessSpec::from_config(pc, passthrough);
        if pc.kind == ProcessKind::Rust {
            let (target, bin) = cargo::locate_binary(&pc.cwd)
                .await
                .map_err(|e| anyhow::anyhow!("process `{name}` (type = \"rust\"): {e}"))?;
            spec = cargo::rust_spec(spec, &target, &bin);
        }
        debug_assert_eq!(&spec.name, name);
        ops.add(spec, false);
        store.set_limits(
            name,
            crate::logs::Limits {
                keep_instances: pc.keep_instances,
                keep_builds: pc.keep_builds,
                max_bytes: pc.max_bytes,
            },
        );
    }
    let persisted = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.processes()).await??
    };
    for (name, bytes) in persisted {
        if config.processes.contains_key(&name) {
            continue;
        }
        match serde_json::from_slice::<RuntimeSpec>(&bytes) {
            Ok(spec) => {
                ops.add(ops::runtime_process_spec(&spec, passthrough), true);
            }
            Err(e) => tracing::warn!("ignoring the stored process `{name}`: {e}"),
        }
    }
    Ok(ops)
}

/// Serve the JSON API and MCP on both listeners until `cancel` fires (then shut down
/// gracefully). The Unix socket serves the same app without the guard: its file mode is
/// its access control. Each listener holds at most `limits` connections ([`conn`]).
fn serve(
    ops: &Ops,
    opts: &Options,
    limits: conn::Limits,
    tcp: TcpListener,
    unix: tokio::net::UnixListener,
    cancel: &CancellationToken,
) -> anyhow::Result<[tokio::task::JoinHandle<()>; 2]> {
    let mcp = crate::mcp::http_app(
        ops.clone(),
        Some(
            opts.mcp_session_idle
                .unwrap_or(crate::mcp::DEFAULT_SESSION_IDLE),
        ),
        // Ends the MCP sessions' open event streams, which graceful shutdown would wait on.
        cancel.child_token(),
    );
    // Nesting at `/mcp` serves `/mcp/` too.
    let heartbeat = opts.follow_heartbeat.unwrap_or(http::HEARTBEAT);
    let local_app = http::router(ops.clone(), heartbeat).nest_service("/mcp", mcp);
    let guard = guard::Guard::new(
        listen_addr(opts),
        tcp.local_addr()?.port(),
        token(opts),
        ops.config().allowed_origins.clone(),
    );
    // The guard needs to know who is connecting (`ConnectInfo<Peer>`, given by
    // `conn::serve`).
    let tcp_app = local_app
        .clone()
        .layer(axum::middleware::from_fn_with_state(guard, guard::guard));
    tracing::debug!(?limits, "connection limits");
    let local = tokio::spawn(conn::serve(
        unix,
        local_app,
        limits.unix,
        limits.idle,
        cancel.clone(),
        |_, _| None,
    ));
    let tcp = tokio::spawn(conn::serve(
        tcp,
        tcp_app,
        limits.tcp,
        limits.idle,
        cancel.clone(),
        |io: &tokio::net::TcpStream, remote: &std::net::SocketAddr| {
            // Small answers go out at once (no Nagle wait for the client's ACK).
            let _ = io.set_nodelay(true);
            // Without our own address the client's socket cannot be found: the uid is
            // then unknown and the guard refuses what would need it.
            let local = io
                .local_addr()
                .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
            Some(peer::Peer::new(local, *remote))
        },
    ));
    Ok([local, tcp])
}

/// Bind the local API's socket, readable and writable by its owner only. A socket file
/// left by a daemon that died is stale (this daemon holds the store's lock, so no other
/// daemon serves this data directory) and is replaced.
fn bind_socket(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()));
        }
    }
    // No window in which the socket is open to others: create it under a strict umask.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener =
        bound.with_context(|| format!("cannot listen on the socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict the socket {}", path.display()))?;
    Ok(listener)
}

/// After an unclean death: stop what the old daemon's processes left running, say so,
/// then start what should run.
///
/// For each instance that never ended: its group (whether or not its leader survived;
/// members must have started at or after the recorded leader), its cgroup, and for a run
/// whatever carries its marker (see [`procgroup::stop_orphan`]). Each group found is
/// recorded as `OrphanKilled`, with a note listing the processes.
async fn recover_and_autostart(
    ops: Ops,
    interrupted: Vec<crate::logs::InstanceMeta>,
    unclean: bool,
) {
    let store = ops.store().clone();
    if unclean {
        store.record(None, None, EventKind::RecoveredUncleanShutdown);
    }
    let mut was_running: Vec<String> = Vec::new();
    for m in &interrupted {
        if m.kind == InstanceKind::Run {
            was_running.push(m.process.clone());
        }
        let (Some(pid), Some(pgid), Some(start)) = (m.spawn.pid, m.spawn.pgid, m.spawn.start_time)
        else {
            continue;
        };
        // Stop it as its config says, if it is still configured.
        let (sig, grace) = ops.config().processes.get(&m.process).map_or(
            (nix::sys::signal::Signal::SIGTERM, Duration::from_secs(5)),
            |p| (p.stop_signal.signal(), p.stop_timeout),
        );
        let scope = procgroup::Scope {
            pgid: Some(pgid),
            start_time: start,
            marker: (m.kind == InstanceKind::Run).then(|| scope::marker(store.path(), &m.process)),
            cgroup: cgroup::existing(pid, start),
        };
        let report = procgroup::stop_orphan(pid, &scope, sig, grace).await;
        if report.outcome.found() {
            let list = procgroup::describe(&report.stopped);
            tracing::warn!(
                "stopped process group {pgid} (pid {pid}, `{}`) left by the previous daemon: {list}",
                m.process
            );
            store.record(
                Some(&m.process),
                Some(m.id),
                EventKind::OrphanKilled { pid, pgid },
            );
            store.record(
                Some(&m.process),
                Some(m.id),
                EventKind::Note {
                    text: format!(
                        "left by the previous daemon and stopped ({:?}): {list}",
                        report.outcome
                    ),
                },
            );
        }
        if let Some(dir) = &scope.cgroup {
            cgroup::remove(dir);
        }
    }
    let autostart: Vec<String> = ops
        .config()
        .processes
        .values()
        .filter(|p| p.autostart)
        .map(|p| p.name.clone())
        .collect();
    for (name, handle) in ops.handles() {
        // Configured processes start as configured; runtime ones come back if they were
        // running when the daemon died (a restart of the machine included).
        let start = autostart.contains(&name)
            || (!ops.config().processes.contains_key(&name) && was_running.contains(&name));
        if start {
            let by = Actor::Daemon;
            tokio::spawn(async move {
                if let Err(e) = handle.start(by).await {
                    tracing::error!("{e}");
                }
            });
        }
    }
}

/// Where the processes listen (ports, printed URLs), looked at every few seconds so that
/// status answers never wait for /proc.
async fn observer(ops: Ops) {
    loop {
        ops.observe(None).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Back to release mode after `dev_timeout` without agent activity (only agents keep dev
/// mode alive: reads from the TUI or CLI do not count);
/// processes with a build step are rebuilt in release.
async fn mode_timer(ops: Ops) {
    let timeout = ops.config().dev_timeout;
    let tick = (timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(60));
    loop {
        tokio::time::sleep(tick).await;
        if ops.mode() == Mode::Dev && ops.since_agent_activity() >= timeout {
            let _ = ops.set_mode(Mode::Release, Actor::ModeSwitch).await;
            for (name, handle) in ops.handles() {
                if ops.has_build(&name)
                    && handle.status_now().state.is_running()
                    && let Err(e) = handle.restart(Actor::ModeSwitch).await
                {
                    tracing::error!("{e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::Store;

    /// An agent's restart switches to dev; after `dev_timeout` without agent activity the
    /// daemon switches back to release by itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn modes_follow_agent_activity() {
        let dir = tempfile::tempdir().unwrap();
        let text = "dev_timeout_hours = 0.0002\n[process.w]\ncommand = [\"sleep\", \"30\"]\n";
        let config = Config::parse(text, &dir.path().join(".mcp-run"), dir.path()).unwrap();
        let store = Store::open(&dir.path().join("s.redb"), StoreOptions::default())
            .unwrap()
            .store;
        let ops = Ops::new(
            store.clone(),
            config.clone(),
            false,
            CancellationToken::new(),
        );
        ops.add(
            ProcessSpec::from_config(&config.processes["w"], false),
            false,
        );
        assert_eq!(ops.mode(), Mode::Release, "starts in release");
        ops.restart("w", Actor::Cli, None).await.unwrap();
        assert_eq!(
            ops.mode(),
            Mode::Release,
            "a human's restart does not switch"
        );
        ops.agent_activity();
        ops.restart("w", Actor::Mcp, None).await.unwrap();
        assert_eq!(ops.mode(), Mode::Dev);
        let timer = tokio::spawn(mode_timer(ops.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while ops.mode() != Mode::Release {
            assert!(
                std::time::Instant::now() < deadline,
                "never went back to release"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        timer.abort();
        ops.shutdown_all().await;
        store.flush_async().await.unwrap();
        let switches: Vec<_> = store
            .events(None, 100)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::ModeSwitched { to, by, .. } => Some((to, by)),
                _ => None,
            })
            .collect();
        assert_eq!(
            switches,
            [
                ("dev".to_owned(), Actor::Mcp),
                ("release".to_owned(), Actor::ModeSwitch)
            ]
        );
    }
}
