//! `bpm tui`, the real binary in a real pseudo-terminal (its screen read back with the
//! `vt100` crate), against a real daemon with real processes: keys in, screens out, and
//! the terminal restored at the end.

use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::helpers::daemon::{BPM, Dirs, Served};
use crate::helpers::process::{self, KillOnDrop};
use crate::helpers::wait_for;

const ROWS: u16 = 30;
const COLS: u16 = 100;

/// `bpm tui` in a pseudo-terminal of its own (a new session whose controlling terminal
/// it is, as in a terminal emulator), its output fed to a terminal emulator to read the
/// screen. Killed on drop.
struct Tui {
    child: Child,
    master: std::fs::File,
    screen: Arc<Mutex<vt100::Parser>>,
    _guard: KillOnDrop,
}

impl Tui {
    fn start(dirs: &Dirs) -> Tui {
        let pty = nix::pty::openpty(
            Some(&nix::pty::Winsize {
                ws_row: ROWS,
                ws_col: COLS,
                ws_xpixel: 0,
                ws_ypixel: 0,
            }),
            None,
        )
        .unwrap();
        let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        // `setsid -c`: a new session with the pty as its controlling terminal (the one
        // /dev/tty names), without code of our own between fork and exec.
        let mut cmd = Command::new("setsid");
        cmd.arg("-c")
            .arg(BPM)
            .arg("tui")
            .current_dir(&dirs.project)
            .env_remove("BPM_TOKEN")
            .env_remove("NO_COLOR")
            .env("BPM_HOME", &dirs.data)
            .env("XDG_STATE_HOME", dirs.data.join("state"))
            .env("TERM", "xterm-256color")
            .stdin(slave(&pty.slave))
            .stdout(slave(&pty.slave))
            .stderr(slave(&pty.slave));
        let child = process::spawn(&mut cmd);
        drop(pty.slave);
        let guard = KillOnDrop::process(child.id());
        let master = std::fs::File::from(pty.master);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(
            ROWS.try_into().unwrap(),
            COLS.try_into().unwrap(),
            0,
        )));
        let mut reader = master.try_clone().unwrap();
        let feed = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                feed.lock().unwrap().process(&buf[..n]);
            }
        });
        Tui {
            child,
            master,
            screen,
            _guard: guard,
        }
    }

    fn text(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    fn alternate(&self) -> bool {
        self.screen.lock().unwrap().screen().alternate_screen()
    }

    fn keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Wait until the screen shows what `f` looks for; fail with the screen.
    #[track_caller]
    fn wait<T>(&self, what: &str, mut f: impl FnMut(&str) -> Option<T>) -> T {
        let start = std::time::Instant::now();
        loop {
            let last = self.text();
            if let Some(v) = f(&last) {
                return v;
            }
            assert!(
                start.elapsed() < crate::helpers::DEADLINE,
                "timed out waiting for {what}; the screen:\n{last}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[track_caller]
    fn wait_text(&self, what: &str, needle: &str) {
        self.wait(what, |s| s.contains(needle).then_some(()));
    }
}

/// The first number right after `prefix` on the screen.
fn number_after(screen: &str, prefix: &str) -> Option<u32> {
    screen.match_indices(prefix).find_map(|(i, _)| {
        let digits: String = screen[i + prefix.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

#[test]
fn browse_restart_earlier_runs_search_and_quit() {
    let dirs = Dirs::new();
    // `web` prints a marked line, then enough lines to scroll it far out of view.
    dirs.write_config(concat!(
        "[process.api]\ncommand = [\"sh\", \"-c\", \"echo api up; exec sleep 300\"]\n",
        "[process.web]\ncommand = [\"sh\", \"-c\", ",
        "\"echo needle $$; seq 1 5000; echo last $$; exec sleep 300\"]\n",
    ));
    let mut daemon = Served::start(&dirs);
    daemon.wait_listening();

    let mut tui = Tui::start(&dirs);
    tui.wait_text("the process list", "▶ web");
    assert!(tui.alternate(), "the TUI draws on the alternate screen");
    // Select web (the list is sorted by name): its run's last lines, live.
    tui.keys("j");
    let first = tui.wait("web's last line", |s| {
        s.contains("web · run").then(|| number_after(s, "last "))?
    });

    // Restart it: the new instance's lines replace the old ones.
    tui.keys("r");
    let second = tui.wait("the new instance's last line", |s| {
        number_after(s, "last ").filter(|&p| p != first && s.contains("(2/2)"))
    });
    tui.wait_text("the restart's result", "restarted web");
    // The daemon records who asked.
    let api = daemon.api();
    wait_for("the restart event", || {
        let events = api.process("web")["recent_events"].to_string();
        events
            .contains("restart requested by the TUI")
            .then_some(())
    });

    // `[` shows the previous run, and how it ended.
    tui.keys("[");
    tui.wait("the earlier run", |s| {
        (s.contains("(1/2)") && number_after(s, "last ") == Some(first)).then_some(())
    });
    tui.keys("]");
    tui.wait("the current run again", |s| {
        (s.contains("(2/2)") && number_after(s, "last ") == Some(second)).then_some(())
    });

    // A search finds the line that scrolled out 5,000 lines ago.
    tui.keys("/needle\r");
    tui.wait("the match, far back", |s| {
        (number_after(s, "needle ") == Some(second) && s.contains("1 matching lines")).then_some(())
    });
    tui.keys("G");
    tui.wait_text("the end again", &format!("last {second}"));

    // q leaves the alternate screen and exits cleanly.
    tui.keys("q");
    let status = wait_for("the TUI to exit", || tui.child.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
    tui.wait("the normal screen", |_| (!tui.alternate()).then_some(()));

    // With the daemon gone, the store is read read-only: still browsable.
    daemon.terminate();
    let mut tui = Tui::start(&dirs);
    tui.wait_text("the offline status", "no daemon running");
    tui.keys("j");
    tui.wait("the last run, from the store", |s| {
        (number_after(s, "last ") == Some(second)).then_some(())
    });
    tui.keys("[");
    tui.wait("the earlier run, from the store", |s| {
        (number_after(s, "last ") == Some(first)).then_some(())
    });
    tui.keys("q");
    let status = wait_for("the TUI to exit", || tui.child.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
}

/// The highest number after `prefix` among the output panel's lines.
fn highest_after(screen: &str, prefix: &str) -> Option<u32> {
    screen.lines().filter_map(|l| number_after(l, prefix)).max()
}

#[test]
fn the_filter_shows_only_matches_and_follows_new_ones() {
    let dirs = Dirs::new();
    // An early match far out of view, then a tick every 20 ms with a match every
    // tenth: the filter must find the early one through the store and follow the rest.
    dirs.write_config(concat!(
        "[process.ticker]\ncommand = [\"sh\", \"-c\", ",
        "\"echo early-hit; seq 1 3000; i=0; while :; do i=$((i+1)); echo tick $i; ",
        "[ $((i % 10)) = 0 ] && echo hit $i; sleep 0.02; done\"]\n",
    ));
    let mut daemon = Served::start(&dirs);
    daemon.wait_listening();
    let mut tui = Tui::start(&dirs);
    tui.wait_text("the ticks", "tick ");

    // & with no search asks for the pattern.
    tui.keys("&");
    tui.wait_text("the filter's prompt", "&█");
    tui.keys("hit\r");
    let seen = tui.wait("the matches only, the early one too", |s| {
        let shown = s.contains("early-hit") && s.contains("filter follow");
        (shown && !s.contains("tick ")).then(|| highest_after(s, "hit "))?
    });
    tui.wait_text("the filter's footer", "&/hit · ");
    // New matches scroll in as they are printed; nothing else does.
    tui.wait("a newer match", |s| {
        assert!(!s.contains("tick "), "a line that does not match:\n{s}");
        highest_after(s, "hit ").filter(|&n| n > seen)
    });

    // Esc: every line again, following.
    tui.keys("\x1b");
    tui.wait("every line again", |s| {
        (s.contains("tick ") && !s.contains("&/hit")).then_some(())
    });
    tui.keys("q");
    let status = wait_for("the TUI to exit", || tui.child.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
    daemon.terminate();
}

#[test]
fn sigterm_restores_the_terminal() {
    let dirs = Dirs::new();
    dirs.write_config("");
    let tui = Tui::start(&dirs);
    tui.wait_text("the empty store's status", "no daemon");
    assert!(tui.alternate());
    process::signal(tui.child.id(), nix::sys::signal::Signal::SIGTERM);
    let mut tui = tui;
    let status = wait_for("the TUI to exit", || tui.child.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
    tui.wait("the normal screen", |_| (!tui.alternate()).then_some(()));
}

/// What the TUI's scrolling and `n`/`N` rest on: reads and searches of one range of an
/// instance, addressed by its number, across stored blocks and the live ring.
#[test]
fn log_queries_read_and_search_seq_ranges_of_one_instance() {
    use bpm::daemon::ops::read_logs;
    use bpm::logs::{InstanceKind, SpawnInfo, Stream};
    use bpm::protocol::LogQuery;

    let dir = crate::helpers::tempdir();
    let store = crate::helpers::store::open(&dir.path().join("s.redb"));
    let old = store
        .begin_instance("w", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    old.append(Stream::Stdout, b"old run\n");
    let old_id = old.id();
    drop(old);
    let w = store
        .begin_instance("w", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    let mut text = String::new();
    for i in 0..50_000 {
        text.push_str(&if i % 10_000 == 7 {
            format!("hit {i}\n")
        } else {
            format!("line {i}\n")
        });
    }
    w.append(Stream::Stdout, text.as_bytes());
    store.flush().unwrap();
    let texts = |q: LogQuery| -> Vec<String> {
        read_logs(&store, "w", &q)
            .unwrap()
            .lines
            .into_iter()
            .map(|l| l.text)
            .collect()
    };
    let range = |from, to| LogQuery {
        from_seq: Some(from),
        to_seq: Some(to),
        all: true,
        ..Default::default()
    };
    assert_eq!(
        texts(range(20_000, 20_003)),
        ["line 20000", "line 20001", "line 20002"]
    );
    assert_eq!(texts(range(49_999, 60_000)), ["line 49999"]);
    assert!(texts(range(60_000, 60_001)).is_empty());
    // A head from a point, a tail up to one.
    let head = LogQuery {
        from_seq: Some(100),
        head: Some(2),
        ..Default::default()
    };
    assert_eq!(texts(head), ["line 100", "line 101"]);
    let tail = LogQuery {
        to_seq: Some(100),
        tail: Some(2),
        ..Default::default()
    };
    assert_eq!(texts(tail), ["line 98", "line 99"]);
    // The next match after a line, and the one before it.
    let find = |from: Option<u64>, to: Option<u64>, forward: bool| LogQuery {
        pattern: Some("^hit".into()),
        from_seq: from,
        to_seq: to,
        head: forward.then_some(1),
        tail: (!forward).then_some(1),
        ..Default::default()
    };
    assert_eq!(texts(find(Some(10_008), None, true)), ["hit 20007"]);
    assert_eq!(texts(find(None, Some(20_007), false)), ["hit 10007"]);
    assert!(texts(find(Some(40_008), None, true)).is_empty());
    // An instance by its number, checked against the process.
    let by_id = LogQuery {
        instance: Some(old_id),
        ..Default::default()
    };
    assert_eq!(texts(by_id.clone()), ["old run"]);
    assert!(read_logs(&store, "other", &by_id).is_err());
    let both = LogQuery {
        instance: Some(old_id),
        index: Some(-1),
        ..Default::default()
    };
    assert!(both.validate().is_err());
    drop(w);
    store.close().unwrap();
}

/// `--url`: the client's TCP transport reaches a daemon by its address.
#[test]
fn the_client_reaches_a_daemon_over_tcp() {
    let dirs = Dirs::new();
    dirs.write_config("[process.api]\ncommand = [\"sh\", \"-c\", \"echo hi; exec sleep 300\"]\n");
    let daemon = Served::start(&dirs);
    let port = daemon.wait_listening();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = bpm::client::Client::remote(&format!("http://127.0.0.1:{port}/"), None).unwrap();
    assert_eq!(client.address(), format!("http://127.0.0.1:{port}"));
    let report = rt.block_on(client.status(None)).unwrap();
    assert_eq!(report.processes[0].status.name, "api");
    assert!(rt.block_on(client.answers()));
    assert!(bpm::client::Client::remote("ftp://127.0.0.1:1", None).is_err());
    // Nothing listening: the daemon is not running (not some other error).
    let gone = bpm::client::Client::remote("http://127.0.0.1:1", None).unwrap();
    let e = rt.block_on(gone.status(None)).unwrap_err();
    assert!(e.not_sent(), "{e}");
}
