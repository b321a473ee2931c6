//! TUI benchmarks: the real release binary in a pseudo-terminal, its screen read back
//! with `vt100`, against a daemon with 20 processes, one of whose run has 1,000,000
//! lines (selected first).
//!
//! - Time to the first full frame (every panel drawn, the instance's last line shown),
//!   from the spawn of `bpm tui`, vs its baseline `bpm status` + `bpm logs NAME -n 50`
//!   one after the other. Target: under 50 ms.
//! - `g` / `G`: the top and the bottom of the million-line run, from the key to the
//!   screen showing it. Target: under 20 ms each.
//!
//! `cargo bench --bench tui`; `BPM_BENCH_QUICK=1` uses 100,000 lines; `BPM_BENCH_SHOW=1`
//! prints each screen measured and every sample.

use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BPM: &str = env!("CARGO_BIN_EXE_bpm");

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn bpm(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BPM);
    c.arg(args[0])
        .arg("--data-dir")
        .arg(data)
        .args(&args[1..])
        .env("BPM_HOME", data)
        .env("BPM_PORT", "0")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    c
}

/// `bpm tui` in a 100x30 pseudo-terminal; its screen.
struct Tui {
    child: Kill,
    master: std::fs::File,
    screen: Arc<Mutex<vt100::Parser>>,
}

impl Tui {
    fn start(data: &Path) -> Tui {
        let pty = nix::pty::openpty(
            Some(&nix::pty::Winsize {
                ws_row: 30,
                ws_col: 100,
                ws_xpixel: 0,
                ws_ypixel: 0,
            }),
            None,
        )
        .unwrap();
        let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        let child = Command::new("setsid")
            .arg("-c")
            .arg(BPM)
            .args(["tui", "--data-dir"])
            .arg(data)
            .env("TERM", "xterm-256color")
            .stdin(slave(&pty.slave))
            .stdout(slave(&pty.slave))
            .stderr(slave(&pty.slave))
            .spawn()
            .unwrap();
        drop(pty.slave);
        let master = std::fs::File::from(pty.master);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(
            30.try_into().unwrap(),
            100.try_into().unwrap(),
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
            child: Kill(child),
            master,
            screen,
        }
    }

    /// How long until the screen satisfies `f` (polled every 0.2 ms).
    fn until(&self, start: Instant, f: impl Fn(&str) -> bool) -> Duration {
        loop {
            let text = self.screen.lock().unwrap().screen().contents();
            if f(&text) {
                if std::env::var_os("BPM_BENCH_SHOW").is_some() {
                    eprintln!("{text}");
                }
                return start.elapsed();
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{text}");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn key(&mut self, k: &str) -> Instant {
        let t = Instant::now();
        self.master.write_all(k.as_bytes()).unwrap();
        t
    }
}

fn main() {
    let quick = std::env::var_os("BPM_BENCH_QUICK").is_some();
    let lines: u64 = if quick { 100_000 } else { 1_000_000 };
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&project).unwrap();
    let mut config = format!(
        "[process.a-big]\ncommand = [\"sh\", \"-c\", \"seq 1 {lines}; echo end-of-big; exec sleep 600\"]\n"
    );
    for i in 1..20 {
        config.push_str(&format!(
            "[process.p{i:02}]\ncommand = [\"sh\", \"-c\", \"echo started; exec sleep 600\"]\n"
        ));
    }
    std::fs::write(project.join(".mcp-run"), config).unwrap();
    let daemon = Kill(
        Command::new(BPM)
            .args(["serve", "--port", "0", "--no-prefix", "--data-dir"])
            .arg(&data)
            .arg(&project)
            .env("BPM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = bpm(&data, &["logs", "a-big", "-n", "1"]).output().unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("end-of-big") {
            break;
        }
        assert!(Instant::now() < deadline, "the big run did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("== 20 processes, the selected run {lines} lines; median of runs");

    let runs = 7;
    let mut base = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        assert!(bpm(&data, &["status"]).output().unwrap().status.success());
        assert!(
            bpm(&data, &["logs", "a-big", "-n", "50"])
                .output()
                .unwrap()
                .status
                .success()
        );
        base.push(t.elapsed());
    }
    println!(
        "bpm status + bpm logs -n 50 (baseline): {}",
        ms(median(base))
    );

    let mut first = Vec::new();
    let (mut top, mut bottom) = (Vec::new(), Vec::new());
    // Lines of the output panel, not the command line in the details panel.
    let last = format!("│ {lines} ");
    for _ in 0..runs {
        let t = Instant::now();
        let mut tui = Tui::start(&data);
        first.push(tui.until(t, |s| {
            s.contains("│ end-of-big") && s.contains("p18") && s.contains("agent idle")
        }));
        for _ in 0..3 {
            let t = tui.key("g");
            top.push(tui.until(t, |s| {
                s.contains("│ 1 ") && s.contains("│ 2 ") && s.contains("line 1 of")
            }));
            let t = tui.key("G");
            bottom.push(tui.until(t, |s| {
                s.contains(&last) && s.contains("│ end-of-big") && s.contains("follow")
            }));
        }
        tui.key("q");
        let _ = tui.child.0.wait();
    }
    if std::env::var_os("BPM_BENCH_SHOW").is_some() {
        eprintln!("first {first:?}\ntop {top:?}\nbottom {bottom:?}");
    }
    println!(
        "bpm tui, first full frame:              {}  (target < 50 ms)",
        ms(median(first))
    );
    println!(
        "g (top of the run):                     {}  (target < 20 ms)",
        ms(median(top))
    );
    println!(
        "G (bottom of the run):                  {}  (target < 20 ms)",
        ms(median(bottom))
    );
    drop(daemon);
}
