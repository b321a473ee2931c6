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
//! - `exec`: the app's commands carried out as tasks, their answers sent back.
//! - `source`: the daemon, or with none running the store read-only.
//! - this module: the terminal (raw mode, alternate screen, restored on exit, on panic
//!   and on SIGTERM) and the event loop (what answers a key is drawn at once; the follow
//!   stream's lines at most ~30 frames a second, every record that arrived in between
//!   taken in at once; each frame one synchronized update).

pub mod ansi;
pub mod app;
mod exec;
mod source;
pub mod ui;

#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ratatui::crossterm::{self, event::Event};
use tokio::sync::mpsc::unbounded_channel;

use app::{App, Cmd, Msg};
use exec::Exec;
use source::Source;

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
    let mut exec = Exec::new(source, tx);
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
                exec.close_idle();
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
