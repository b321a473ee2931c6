//! The terminal front end: `bpm tui` (and `bpm-tui [URL]`), a live dashboard of the
//! daemon and its processes that also serves post-crash investigation.
//!
//! Like the CLI it holds no logic of its own: it talks to the daemon through
//! [`crate::client`] with the types of [`crate::protocol`] (the local socket, or
//! `--url http://HOST:PORT` with `BPM_TOKEN`), and with no daemon running it reads the
//! store read-only through the same functions the daemon calls (`daemon::ops`).
//!
//! - [`app`]: the state, and what keys and answers do to it (pure, tested without a
//!   terminal).
//! - [`ui`]: drawing the state with ratatui.
//! - [`ansi`]: process output's SGR colours as ratatui styles.
//! - this module: the terminal (raw mode, alternate screen, restored on exit, on panic
//!   and on SIGTERM), the event loop (what answers a key is drawn at once; the follow
//!   stream's lines at most ~30 frames a second, every record that arrived in between
//!   taken in at once) and the commands' calls.

pub mod ansi;
pub mod app;
pub mod ui;

#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratatui::crossterm::{self, event::Event};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::client::{self, Client, ClientError, Target};
use crate::daemon::ops;
use crate::logs::Store;
use crate::protocol::{FollowQuery, LogQuery, LogResult, StartRequest, StatusReport};
use app::{App, Cmd, Conn, Msg};

/// `bpm tui`'s arguments.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TuiArgs {
    /// A daemon elsewhere: http://HOST:PORT (its token from BPM_TOKEN). Default: the local
    /// daemon of the data directory, over its socket.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The daemon's data directory (default: $BPM_HOME, the nearest project's .bpm, else ~/.local/state/bpm).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// The shortest time between two frames (~30 a second).
const FRAME: Duration = Duration::from_millis(33);
/// How often the status is read.
const REFRESH: Duration = Duration::from_secs(1);
/// A store opened for offline reads is closed after this long unused, so that a daemon
/// starting meanwhile can take it.
const STORE_IDLE: Duration = Duration::from_secs(2);

/// Run the TUI until `q`; the terminal is restored whatever happens.
pub fn main(args: TuiArgs) -> ExitCode {
    let source = match Source::new(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bpm: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bpm: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
    let result = rt.block_on(run(source));
    restore();
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raw mode, the alternate screen, mouse reports, no cursor.
fn enter() -> std::io::Result<()> {
    crossterm::terminal::enable_raw_mode()?;
    crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::EnterAlternateScreen,
        crossterm::event::EnableMouseCapture,
        crossterm::cursor::Hide
    )
}

/// Back to the terminal as it was (safe to call more than once).
fn restore() {
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::event::DisableMouseCapture,
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = std::io::stdout().flush();
}

async fn run(source: Source) -> anyhow::Result<()> {
    enter()?;
    let backend = ratatui::backend::CrosstermBackend::new(std::io::stdout());
    // No `clear()`: the alternate screen starts empty, and a clear asks the terminal
    // where its cursor is (a terminal that does not answer would stall us).
    let mut terminal = ratatui::Terminal::new(backend)?;
    let mut app = App::new(std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()));
    let size = terminal.size()?;
    app.height = ui::output_height(size.width, size.height);

    // Terminal events come from a thread of their own (crossterm's read blocks).
    let (ev_tx, mut ev_rx) = unbounded_channel::<Event>();
    std::thread::spawn(move || {
        while let Ok(ev) = crossterm::event::read() {
            if ev_tx.send(ev).is_err() {
                break;
            }
        }
    });
    let (tx, mut rx) = unbounded_channel::<Msg>();
    let mut exec = Exec {
        source,
        tx,
        follow: None,
        filter: None,
        status_busy: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_draw: Option<Instant> = None;
    let mut dirty = true;
    loop {
        let mut cmds: Vec<Cmd> = Vec::new();
        let next_draw = last_draw.map_or_else(Instant::now, |t| t + FRAME);
        // Drawn at once: what answers a key (and the first lines of an empty panel).
        // Only the follow stream's flow of lines waits for the next frame.
        let mut urgent = false;
        tokio::select! {
            ev = ev_rx.recv() => match ev {
                Some(Event::Key(k)) => {
                    urgent = true;
                    cmds.extend(app.key(k));
                }
                Some(Event::Mouse(m)) => cmds.extend(app.mouse(m)),
                Some(Event::Resize(w, h)) => {
                    app.height = ui::output_height(w, h);
                    terminal.autoresize()?;
                }
                Some(_) => {}
                None => app.quit = true,
            },
            msg = rx.recv() => {
                if let Some(m) = msg {
                    urgent |= is_urgent(&m, &app);
                    cmds.extend(app.update(m));
                    // Everything else that arrived meanwhile, in one go (one frame).
                    let mut n = 0;
                    while let Ok(m) = rx.try_recv() {
                        urgent |= is_urgent(&m, &app);
                        cmds.extend(app.update(m));
                        n += 1;
                        if n > 10_000 {
                            break;
                        }
                    }
                }
            }
            _ = tick.tick() => {
                cmds.push(Cmd::Status);
                exec.source.close_idle();
            }
            _ = term.recv() => app.quit = true,
            _ = hup.recv() => app.quit = true,
            _ = int.recv() => app.quit = true,
            _ = tokio::time::sleep_until(next_draw.into()), if dirty => {}
        }
        if app.quit {
            break;
        }
        for c in cmds {
            exec.run(c, &app);
        }
        if let Some(c) = app.wants() {
            exec.run(c, &app);
        }
        dirty = true;
        if urgent || last_draw.is_none_or(|t| t.elapsed() >= FRAME) {
            app.now_ms = chrono::Utc::now().timestamp_millis();
            // One synchronized update per frame: the terminal shows it whole (and a
            // reader of the terminal's output can count frames).
            crossterm::queue!(
                terminal.backend_mut(),
                crossterm::terminal::BeginSynchronizedUpdate
            )?;
            terminal.draw(|f| ui::draw(f, &app))?;
            crossterm::execute!(
                terminal.backend_mut(),
                crossterm::terminal::EndSynchronizedUpdate
            )?;
            last_draw = Some(Instant::now());
            dirty = false;
        }
    }
    exec.stop_follow();
    exec.stop_filter();
    Ok(())
}

/// Whether an answer is drawn at once. Only the flow of followed lines (of the output,
/// or of the filter's matches) waits for the next frame, except the first lines of an
/// empty panel.
fn is_urgent(m: &Msg, app: &App) -> bool {
    match m {
        Msg::Follow { .. } => app.out.lines.is_empty(),
        Msg::FilterFollow { .. } => false,
        _ => true,
    }
}

/// Where answers come from: the daemon, else (locally) the store read-only.
#[derive(Clone)]
struct Source {
    client: Client,
    /// The local data directory; `None` for a daemon elsewhere (no store to read).
    local: Option<Target>,
    /// The store opened for offline reads, and when it was last used.
    store: Arc<Mutex<Option<(Store, Instant)>>>,
}

impl Source {
    fn new(args: &TuiArgs) -> Result<Source, String> {
        let (client, local) = match &args.url {
            Some(url) => {
                let token = std::env::var("BPM_TOKEN")
                    .ok()
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty());
                (Client::remote(url, token).map_err(|e| e.to_string())?, None)
            }
            None => {
                let opts = client::DaemonOptions::new(args.data_dir.clone(), false);
                let target = client::locate(opts.data_dir.as_deref(), &opts.cwd);
                (Client::new(target.clone()), Some(target))
            }
        };
        Ok(Source {
            client,
            local,
            store: Arc::new(Mutex::new(None)),
        })
    }

    /// The store, opened read-only (blocking).
    fn open_store(&self) -> Result<Option<Store>, String> {
        let Some(t) = &self.local else {
            return Ok(None);
        };
        let mut held = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, used)) = held.as_mut() {
            *used = Instant::now();
            return Ok(Some(s.clone()));
        }
        if !t.store().exists() {
            return Ok(None);
        }
        let s = Store::open_read_only(&t.store()).map_err(|e| e.to_string())?;
        *held = Some((s.clone(), Instant::now()));
        Ok(Some(s))
    }

    fn close_idle(&self) {
        let mut held = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if held
            .as_ref()
            .is_some_and(|(_, used)| used.elapsed() > STORE_IDLE)
        {
            *held = None;
        }
    }

    fn close_store(&self) {
        *self.store.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// A log read: from the daemon when connected, else from the store.
    async fn logs(&self, online: bool, name: &str, q: LogQuery) -> Result<LogResult, String> {
        if online {
            return self.client.logs(name, &q).await.map_err(|e| e.to_string());
        }
        let this = self.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || match this.open_store()? {
            Some(store) => ops::read_logs(&store, &name, &q).map_err(|e| e.to_string()),
            None => Err("no daemon, and no store to read".to_owned()),
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The status: the daemon's; else, once, the store's (it cannot change without a
    /// daemon); else why there is none.
    async fn status(&self, was: &Conn) -> Vec<Msg> {
        match self.client.status(None).await {
            Ok(r) => {
                self.close_store();
                let mut out = Vec::new();
                if !was.online() {
                    out.push(Msg::Conn(Conn::Online {
                        address: self.client.address(),
                    }));
                }
                out.push(Msg::Status(r));
                out
            }
            Err(e) if matches!(was, Conn::Offline { .. }) && e.not_sent() => Vec::new(),
            Err(e) => {
                let lost = was.online();
                let this = self.clone();
                let offline = tokio::task::spawn_blocking(move || this.offline_status()).await;
                match offline {
                    Ok(Ok(Some((store, report)))) => vec![
                        Msg::Conn(Conn::Offline { store, lost }),
                        Msg::Status(report),
                    ],
                    Ok(Ok(None)) => vec![
                        Msg::Conn(Conn::Disconnected {
                            address: self.client.address(),
                            error: short_error(&e),
                        }),
                        Msg::Status(StatusReport::empty()),
                    ],
                    Ok(Err(why)) => vec![Msg::Conn(Conn::Disconnected {
                        address: self.client.address(),
                        error: why,
                    })],
                    Err(j) => vec![Msg::Error(j.to_string())],
                }
            }
        }
    }

    /// The status the store alone tells (blocking); `None` without a local store.
    fn offline_status(&self) -> Result<Option<(String, StatusReport)>, String> {
        let Some(t) = &self.local else {
            return Ok(None);
        };
        let Some(store) = self.open_store()? else {
            return Ok(None);
        };
        let config = t
            .project_dir
            .as_deref()
            .and_then(|d| crate::config::Config::load(d).ok().flatten())
            .unwrap_or_else(|| crate::config::Config::default_for(std::path::Path::new("/")));
        let r = ops::offline_status(&store, &config, None).map_err(|e| e.to_string())?;
        Ok(Some((t.store().display().to_string(), r)))
    }
}

fn short_error(e: &ClientError) -> String {
    match e {
        ClientError::NotRunning { .. } => "no daemon answers".to_owned(),
        e => e.to_string(),
    }
}

/// Carries out commands: each call is a task whose answer comes back as a [`Msg`].
struct Exec {
    source: Source,
    tx: UnboundedSender<Msg>,
    follow: Option<tokio::task::JoinHandle<()>>,
    /// The filter's search and its follow stream of matches.
    filter: Option<tokio::task::JoinHandle<()>>,
    status_busy: Arc<std::sync::atomic::AtomicBool>,
}

impl Exec {
    fn stop_follow(&mut self) {
        if let Some(h) = self.follow.take() {
            h.abort();
        }
    }

    fn stop_filter(&mut self) {
        if let Some(h) = self.filter.take() {
            h.abort();
        }
    }

    fn run(&mut self, cmd: Cmd, app: &App) {
        let tx = self.tx.clone();
        let src = self.source.clone();
        let online = app.conn.online();
        let send = move |m: Msg| {
            let _ = tx.send(m);
        };
        match cmd {
            Cmd::Status => {
                use std::sync::atomic::Ordering;
                if self.status_busy.swap(true, Ordering::AcqRel) {
                    return;
                }
                let busy = self.status_busy.clone();
                let was = app.conn.clone();
                tokio::spawn(async move {
                    for m in src.status(&was).await {
                        send(m);
                    }
                    busy.store(false, Ordering::Release);
                });
            }
            Cmd::Unfollow => self.stop_follow(),
            Cmd::Follow {
                name,
                build,
                tail,
                epoch,
            } => {
                self.stop_follow();
                self.follow = Some(tokio::spawn(async move {
                    let q = FollowQuery {
                        build,
                        tail: Some(tail),
                        ..Default::default()
                    };
                    match src.client.follow(&name, &q).await {
                        Ok(mut stream) => loop {
                            match stream.next().await {
                                Ok(Some(records)) => send(Msg::Follow { epoch, records }),
                                _ => {
                                    send(Msg::FollowEnded { epoch });
                                    break;
                                }
                            }
                        },
                        // No run yet (a process that never started): nothing to follow.
                        Err(ClientError::Api { status: 404, .. }) => {
                            send(Msg::FollowEnded { epoch })
                        }
                        Err(e) => send(Msg::Error(e.to_string())),
                    }
                }));
            }
            Cmd::Instances { name, epoch } => {
                tokio::spawn(async move {
                    let list = |build| LogQuery {
                        all_instances: true,
                        build,
                        tail: Some(0),
                        ..Default::default()
                    };
                    let runs = src.logs(online, &name, list(false)).await;
                    let builds = src.logs(online, &name, list(true)).await;
                    send(Msg::Instances {
                        epoch,
                        runs: runs.map(|r| r.instances).unwrap_or_default(),
                        builds: builds.map(|r| r.instances).unwrap_or_default(),
                    });
                });
            }
            Cmd::Tail {
                name,
                build,
                instance,
                tail,
                epoch,
            } => {
                tokio::spawn(async move {
                    let q = LogQuery {
                        instance: Some(instance),
                        build,
                        tail: Some(tail),
                        ..Default::default()
                    };
                    match src.logs(online, &name, q).await {
                        Ok(r) => send(Msg::Lines {
                            epoch,
                            range: None,
                            lines: r.lines,
                        }),
                        Err(e) => send(Msg::Error(e)),
                    }
                });
            }
            Cmd::Range {
                name,
                build,
                instance,
                from,
                to,
                epoch,
            } => {
                tokio::spawn(async move {
                    let q = LogQuery {
                        instance: Some(instance),
                        build,
                        from_seq: Some(from),
                        to_seq: Some(to),
                        all: true,
                        ..Default::default()
                    };
                    match src.logs(online, &name, q).await {
                        Ok(r) => send(Msg::Lines {
                            epoch,
                            range: Some((from, to)),
                            lines: r.lines,
                        }),
                        Err(e) => send(Msg::Error(e)),
                    }
                });
            }
            Cmd::Find {
                name,
                build,
                instance,
                pattern,
                from,
                forward,
                epoch,
            } => {
                tokio::spawn(async move {
                    let q = |from_seq, to_seq| LogQuery {
                        pattern: Some(pattern.clone()),
                        instance: Some(instance),
                        build,
                        from_seq,
                        to_seq,
                        head: forward.then_some(1),
                        tail: (!forward).then_some(1),
                        ..Default::default()
                    };
                    let (first, wrap) = if forward {
                        (q(Some(from), None), q(None, Some(from)))
                    } else {
                        (q(None, Some(from)), q(Some(from), None))
                    };
                    let seq = |r: Result<LogResult, String>| {
                        r.map(|r| r.lines.iter().find(|l| l.matched).map(|l| l.seq))
                    };
                    let found = match seq(src.logs(online, &name, first).await) {
                        Ok(Some(s)) => Ok((Some(s), false)),
                        Ok(None) => seq(src.logs(online, &name, wrap).await).map(|s| (s, true)),
                        Err(e) => Err(e),
                    };
                    match found {
                        Ok((seq, wrapped)) => send(Msg::Found {
                            epoch,
                            seq,
                            wrapped,
                        }),
                        Err(e) => send(Msg::Error(e)),
                    }
                });
            }
            Cmd::Count {
                name,
                build,
                instance,
                pattern,
                epoch,
            } => {
                tokio::spawn(async move {
                    let q = LogQuery {
                        pattern: Some(pattern),
                        instance: Some(instance),
                        build,
                        tail: Some(0),
                        ..Default::default()
                    };
                    if let Ok(r) = src.logs(online, &name, q).await {
                        send(Msg::Counted {
                            epoch,
                            matched: r.matched,
                        });
                    }
                });
            }
            Cmd::Filter {
                name,
                build,
                instance,
                pattern,
                live,
                epoch,
                generation,
            } => {
                self.stop_filter();
                self.filter = Some(tokio::spawn(async move {
                    // The stream of new matches is opened first, from the instance's
                    // end as it is then; the search after it reads to that end and
                    // maybe beyond, so no match falls between the two (the app drops
                    // the ones both bring).
                    let mut stream = None;
                    if live {
                        let q = FollowQuery {
                            instance: Some(instance),
                            build,
                            tail: Some(0),
                            pattern: Some(pattern.clone()),
                            ..Default::default()
                        };
                        stream = src.client.follow(&name, &q).await.ok();
                    }
                    let q = LogQuery {
                        pattern: Some(pattern),
                        instance: Some(instance),
                        build,
                        tail: Some(app::FILTER_LINES),
                        ..Default::default()
                    };
                    match src.logs(online, &name, q).await {
                        Ok(r) => send(Msg::Filtered {
                            epoch,
                            generation,
                            lines: r.lines,
                            matched: r.matched,
                        }),
                        Err(e) => send(Msg::Error(e)),
                    }
                    let Some(mut stream) = stream else {
                        send(Msg::FilterEnded { epoch, generation });
                        return;
                    };
                    while let Ok(Some(records)) = stream.next().await {
                        send(Msg::FilterFollow {
                            epoch,
                            generation,
                            records,
                        });
                    }
                    send(Msg::FilterEnded { epoch, generation });
                }));
            }
            Cmd::Unfilter => self.stop_filter(),
            Cmd::Restart(name) => {
                tokio::spawn(async move {
                    send(started(src.client.restart(&name).await, "restarted"));
                });
            }
            Cmd::Start(name) => {
                tokio::spawn(async move {
                    let req = StartRequest {
                        name: Some(name),
                        ..Default::default()
                    };
                    send(started(src.client.start(&req).await, "started"));
                });
            }
            Cmd::Stop(name) => {
                tokio::spawn(async move {
                    send(match src.client.stop(&name, false).await {
                        Ok(s) => Msg::Done {
                            text: format!("stopped {}", s.name),
                            error: false,
                        },
                        Err(e) => Msg::Done {
                            text: e.to_string(),
                            error: true,
                        },
                    });
                });
            }
        }
    }
}

/// What a start or restart's answer says in the status panel (an error when the process
/// did not come up).
fn started(r: Result<crate::protocol::StartResult, crate::client::ClientError>, verb: &str) -> Msg {
    match r {
        Ok(r) => Msg::Done {
            error: r.readiness.as_ref().is_some_and(|x| x.failed()),
            text: r.message(verb),
        },
        Err(e) => Msg::Done {
            text: e.to_string(),
            error: true,
        },
    }
}
