//! TUI benchmarks: the real release binary in a pseudo-terminal, its screen read back
//! with `vt100`.
//!
//! Against a daemon with 20 processes, one of whose run has 1,000,000 lines (selected
//! first):
//! - Time to the first full frame (every panel drawn, the instance's last line shown),
//!   from the spawn of `bpm tui`, vs its baseline `bpm status` + `bpm logs NAME -n 50`
//!   one after the other. Target: under 50 ms.
//! - `g` / `G`: the top and the bottom of the million-line run, from the key to the
//!   screen showing it. Target: under 20 ms each.
//! - The TUI's memory (VmHWM, the peak resident set, and VmRSS from /proc) after
//!   scrolling to the top and back, a search and the filter. Target: under 30 MiB.
//!
//! Following a process that prints 10,000 lines a second, each with the time it was
//! printed, over a 10 s window:
//! - the TUI's CPU (utime + stime from /proc/PID/stat): target at most 10% of a core;
//! - frames a second (each frame is one synchronized update, `ESC[?2026h`, counted in
//!   the pty's output): target at most 30;
//! - how old the newest line on screen is: when a frame has been drawn (the frame's
//!   arrival time minus the newest printed time it shows), and at any moment (sampled
//!   every 2 ms, so a frame's wait counts too): target under 50 ms.
//!
//! `cargo bench --bench tui`; `BPM_BENCH_QUICK=1` uses 100,000 lines and a 4 s window;
//! `BPM_BENCH_SHOW=1` prints each screen measured and every sample.

use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// `bpm tui` in a 100x30 pseudo-terminal; its screen, its frames, and (while
/// `recording`) the age of the newest printed time each frame shows.
struct Tui {
    child: Kill,
    master: std::fs::File,
    screen: Arc<Mutex<vt100::Parser>>,
    frames: Arc<AtomicU64>,
    recording: Arc<AtomicBool>,
    ages: Arc<Mutex<Vec<Duration>>>,
}

/// The start of a synchronized update: one per frame.
const FRAME_START: &[u8] = b"\x1b[?2026h";
/// Its end: the frame is complete on the terminal.
const FRAME_END: &[u8] = b"\x1b[?2026l";

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
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
        // `setsid -c` execs `bpm` in place (no fork): the child's pid is the TUI's.
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
        let frames = Arc::new(AtomicU64::new(0));
        let recording = Arc::new(AtomicBool::new(false));
        let ages = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let (feed, counted, rec, aged) = (
            screen.clone(),
            frames.clone(),
            recording.clone(),
            ages.clone(),
        );
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            // The end of the previous read, for a marker cut in two.
            let mut tail: Vec<u8> = Vec::new();
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut parser = feed.lock().unwrap();
                parser.process(&buf[..n]);
                tail.extend_from_slice(&buf[..n]);
                counted.fetch_add(count(&tail, FRAME_START) as u64, Ordering::Relaxed);
                let ended = count(&tail, FRAME_END) > 0;
                let keep = tail.len().saturating_sub(FRAME_START.len() - 1);
                tail.drain(..keep);
                if ended && rec.load(Ordering::Relaxed) {
                    let newest = newest_printed(&parser.screen().contents());
                    if let Some(t) = newest {
                        aged.lock()
                            .unwrap()
                            .push(Duration::from_micros(now_us().saturating_sub(t)));
                    }
                }
            }
        });
        Tui {
            child: Kill(child),
            master,
            screen,
            frames,
            recording,
            ages,
        }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
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
    if let Ok(rate) = std::env::var("BPM_BENCH_PRINTER") {
        printer(rate.parse().expect("BPM_BENCH_PRINTER: lines a second"));
    }
    let quick = std::env::var_os("BPM_BENCH_QUICK").is_some();
    big_run(quick);
    following(quick);
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The newest printed time (`t=MICROS`) among the lines on a screen.
fn newest_printed(screen: &str) -> Option<u64> {
    screen
        .match_indices("t=")
        .filter_map(|(i, _)| {
            let digits: String = screen[i + 2..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .max()
}

/// This binary as the followed process: `rate` lines a second (`tick SEQ t=MICROS`,
/// the time each is printed), written every millisecond, until its output is closed.
fn printer(rate: u64) -> ! {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while n < due {
            if writeln!(out, "tick {n:08} t={}", now_us()).is_err() {
                std::process::exit(0);
            }
            n += 1;
        }
        if out.flush().is_err() {
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A daemon serving `config` in a new temporary directory (kept while it runs).
fn serve(config: &str) -> (tempfile::TempDir, std::path::PathBuf, Kill) {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&project).unwrap();
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
    (dir, data, daemon)
}

/// Wait until `bpm logs NAME -n 1` prints something containing `needle`.
fn wait_logs(data: &Path, name: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = bpm(data, &["logs", name, "-n", "1"]).output().unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} did not print {needle}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A value in kB from /proc/PID/status (`VmHWM`, `VmRSS`).
fn proc_kb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// CPU time used by a process so far (utime + stime), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command's name (in parentheses, maybe with spaces): fields 3 onwards.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
    let ticks = f[11] + f[12];
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// 20 processes, one with a run of a million lines: first frame, `g`/`G`, memory.
fn big_run(quick: bool) {
    let lines: u64 = if quick { 100_000 } else { 1_000_000 };
    let mut config = format!(
        "[process.a-big]\ncommand = [\"sh\", \"-c\", \"seq 1 {lines}; echo end-of-big; exec sleep 600\"]\n"
    );
    for i in 1..20 {
        config.push_str(&format!(
            "[process.p{i:02}]\ncommand = [\"sh\", \"-c\", \"echo started; exec sleep 600\"]\n"
        ));
    }
    let (_dir, data, daemon) = serve(&config);
    wait_logs(&data, "a-big", "end-of-big");
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
    let mut memory = None;
    for run in 0..runs {
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
        if run == 0 {
            memory = Some(tui_memory(&mut tui, lines));
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
    if let Some((hwm, rss)) = memory {
        println!(
            "memory after g, G, a search, a filter:  peak {}, now {}  (target < 30 MiB)",
            mib(hwm),
            mib(rss)
        );
    }
    drop(daemon);
}

/// The TUI's peak and current resident memory (kB) after it has been to the top of the
/// run and back, searched it (a match near the top and one near the end), and filtered
/// it (every tenth line matches: more matches than the filter holds).
fn tui_memory(tui: &mut Tui, lines: u64) -> (u64, u64) {
    let pid = tui.pid();
    let t = tui.key("g");
    tui.until(t, |s| s.contains("line 1 of"));
    let t = tui.key("G");
    tui.until(t, |s| s.contains("│ end-of-big"));
    let t = tui.key("/^17$\r");
    // The match is marked `▶`.
    tui.until(t, |s| s.contains("1 matching lines") && s.contains("│▶17 "));
    let near_end = lines - 3;
    let t = tui.key(&format!("/^{near_end}$\r"));
    tui.until(t, |s| {
        s.contains("1 matching lines") && s.contains(&format!("│▶{near_end} "))
    });
    let t = tui.key("/0$\r&");
    tui.until(t, |s| s.contains("&/0$ · ") && s.contains("matching lines"));
    let t = tui.key("g");
    tui.until(t, |s| s.contains("&/0$ · ") && s.contains(" of "));
    let t = tui.key("\x1b\x1bG");
    tui.until(t, |s| s.contains("│ end-of-big") && !s.contains("&/0$"));
    (proc_kb(pid, "VmHWM"), proc_kb(pid, "VmRSS"))
}

/// One process printing 10,000 lines a second, followed: the TUI's CPU, its frames a
/// second, and the age of the newest line each frame shows.
fn following(quick: bool) {
    let rate = 10_000;
    let window = Duration::from_secs(if quick { 4 } else { 10 });
    let exe = std::env::current_exe().unwrap();
    let config = format!(
        "[process.fast]\ncommand = [\"env\", \"BPM_BENCH_PRINTER={rate}\", {:?}]\n",
        exe.display().to_string()
    );
    let (_dir, data, daemon) = serve(&config);
    wait_logs(&data, "fast", "tick");
    println!("== following a process that prints {rate} lines/s, over {window:?}");
    let tui = Tui::start(&data);
    let t = Instant::now();
    tui.until(t, |s| s.contains("│ tick ") && s.contains("follow"));
    // Settled: the backlog drawn, the stream flowing.
    std::thread::sleep(Duration::from_secs(2));
    let printed = |s: &str| -> u64 {
        s.lines()
            .filter_map(|l| {
                let i = l.find("tick ")?;
                l[i + 5..].split(' ').next()?.parse().ok()
            })
            .max()
            .unwrap_or(0)
    };
    let pid = tui.pid();
    let daemon_pid = daemon.0.id();
    let seq0 = printed(&tui.screen.lock().unwrap().screen().contents());
    let (cpu0, dcpu0, frames0) = (
        cpu_time(pid),
        cpu_time(daemon_pid),
        tui.frames.load(Ordering::Relaxed),
    );
    tui.recording.store(true, Ordering::Relaxed);
    let t = Instant::now();
    // Meanwhile, how old the newest line on screen is at any moment (every 2 ms).
    let mut stale = Vec::new();
    while t.elapsed() < window {
        let screen = tui.screen.lock().unwrap().screen().contents();
        if let Some(newest) = newest_printed(&screen) {
            stale.push(Duration::from_micros(now_us().saturating_sub(newest)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    tui.recording.store(false, Ordering::Relaxed);
    let elapsed = t.elapsed().as_secs_f64();
    let frames = tui.frames.load(Ordering::Relaxed) - frames0;
    let cpu = (cpu_time(pid) - cpu0).as_secs_f64() / elapsed;
    let dcpu = (cpu_time(daemon_pid) - dcpu0).as_secs_f64() / elapsed;
    let seq1 = printed(&tui.screen.lock().unwrap().screen().contents());
    let mut ages = tui.ages.lock().unwrap().clone();
    ages.sort();
    stale.sort();
    let pct = |v: &[Duration], p: f64| v[((v.len() - 1) as f64 * p) as usize];
    if std::env::var_os("BPM_BENCH_SHOW").is_some() {
        eprintln!("ages {ages:?}");
    }
    println!(
        "lines shown a second:                   {:.0}  (printed {rate})",
        (seq1 - seq0) as f64 / elapsed
    );
    println!(
        "TUI CPU:                                {:.1}% of a core  (target <= 10%; the daemon: {:.1}%)",
        cpu * 100.0,
        dcpu * 100.0
    );
    println!(
        "frames a second:                        {:.1}  (target <= 30)",
        frames as f64 / elapsed
    );
    println!(
        "newest line on screen, age at a frame:  median {}, p95 {}, max {}  ({} frames)",
        ms(pct(&ages, 0.5)),
        ms(pct(&ages, 0.95)),
        ms(pct(&ages, 1.0)),
        ages.len()
    );
    println!(
        "newest line on screen, age at any time: median {}, p95 {}, max {}  (target < 50 ms; {} samples)",
        ms(pct(&stale, 0.5)),
        ms(pct(&stale, 0.95)),
        ms(pct(&stale, 1.0)),
        stale.len()
    );
    drop(tui);
    drop(daemon);
}
