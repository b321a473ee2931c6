//! CLI benchmarks: whole commands of the real release binary, each beside its baseline in
//! the same run.
//!
//! - `bpm logs NAME --grep RE` over a 1,000,000-line instance (through the daemon, and
//!   read-only from the store with no daemon) vs `grep -E RE` on the same text in a flat
//!   file. Target: at most 2x.
//! - `bpm status` with 20 running processes vs spawning `/bin/true`. Target: under 10 ms.
//! - `bpm logs NAME > /dev/null` of a 2,000,000-line instance (`seq 1 2000000`): wall
//!   time and the peak RSS of the CLI and of the daemon (started fresh for the read), vs
//!   the same with the binary named by `BPM_BASELINE` (an earlier build), when set.
//!   Targets: each RSS under 64 MiB, time at most 1.5x the baseline's.
//!
//! `cargo bench --bench cli [grep|status|logs-all]` (no name: all);
//! `BPM_BENCH_QUICK=1` uses 100,000 lines.

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BPM: &str = env!("CARGO_BIN_EXE_bpm");
const PATTERN: &str = "panic|timed out";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median wall time of `runs` runs of a command, its stdout read through a pipe (as a
/// user's terminal or pipe would; grep would stop early writing to /dev/null).
fn time(runs: usize, mut make: impl FnMut() -> Command) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..runs {
        let mut c = make();
        c.stdout(Stdio::piped()).stderr(Stdio::null());
        let t = Instant::now();
        let out = c.output().unwrap();
        times.push(t.elapsed());
        assert!(out.status.success(), "{c:?} failed");
        bytes = out.stdout.len();
    }
    (median(times), bytes)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn serve(project: &Path, data: &Path) -> Daemon {
    serve_with(BPM, project, data)
}

fn serve_with(bin: &str, project: &Path, data: &Path) -> Daemon {
    let child = Command::new(bin)
        .args(["serve", "--port", "0", "--no-prefix", "--data-dir"])
        .arg(data)
        .arg(project)
        .env("BPM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while bpm::daemon::read_daemon_info(data).is_none_or(|i| i.pid != pid)
        || !data.join("bpm.sock").exists()
    {
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon(child)
}

fn bpm(data: &Path, args: &[&str]) -> Command {
    bpm_with(BPM, data, args)
}

fn bpm_with(bin: &str, data: &Path, args: &[&str]) -> Command {
    // The options go right after the subcommand (before `run`'s `--`).
    let mut c = Command::new(bin);
    c.arg(args[0])
        .arg("--data-dir")
        .arg(data)
        .arg("--no-autostart")
        .args(&args[1..])
        // Belt and braces: whatever goes wrong, never the default data dir or port.
        .env("BPM_HOME", data)
        .env("BPM_PORT", "0")
        .env("NO_COLOR", "1");
    c
}

/// `VmHWM` of a process in KiB, sampled until it exits (the last sample is its peak).
fn sample_peak(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Some(hwm) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
        {
            peak = peak.max(hwm);
            std::thread::sleep(Duration::from_millis(2));
        }
        peak
    })
}

/// `bpm logs big > /dev/null` with `bin` (its daemon started fresh): the median wall
/// time of `runs`, the CLI's and the daemon's peak RSS (MiB) over them.
fn logs_all(bin: &str, project: &Path, data: &Path, runs: usize) -> (Duration, f64, f64) {
    let daemon = serve_with(bin, project, data);
    let mut times = Vec::new();
    let mut cli_peak = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let mut child = bpm_with(bin, data, &["logs", "big"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let peak = sample_peak(child.id());
        assert!(child.wait().unwrap().success());
        times.push(t.elapsed());
        cli_peak = cli_peak.max(peak.join().unwrap());
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.0.id())).unwrap();
    let daemon_peak: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    (
        median(times),
        cli_peak as f64 / 1024.0,
        daemon_peak as f64 / 1024.0,
    )
}

/// `seq 1 LINES` run as `big` by `bin`'s daemon in `data`, every line stored.
fn ingest_seq(bin: &str, project: &Path, data: &Path, lines: u64) {
    let _daemon = serve_with(bin, project, data);
    let st = bpm_with(
        bin,
        data,
        &["run", "--name", "big", "--", "seq", "1", &lines.to_string()],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .status()
    .unwrap();
    assert!(st.success());
    let out = bpm_with(bin, data, &["logs", "big", "--tail", "1"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        lines.to_string()
    );
}

fn bench_logs_all(dir: &Path, quick: bool) {
    let lines: u64 = if quick { 200_000 } else { 2_000_000 };
    let runs = 3;
    let project = dir.join("project-all");
    std::fs::create_dir_all(&project).unwrap();
    // Each binary reads a store it wrote (an earlier build may not read a newer schema).
    let data = dir.join("data-all");
    ingest_seq(BPM, &project, &data, lines);
    println!("== bpm logs NAME > /dev/null, {lines} lines (seq), median of {runs} runs");
    let (t, cli, daemon) = logs_all(BPM, &project, &data, runs);
    println!(
        "bpm logs (this build):          {}  peak RSS: CLI {cli:.1} MiB, daemon {daemon:.1} MiB (targets < 64 MiB each)",
        ms(t)
    );
    match std::env::var("BPM_BASELINE") {
        Ok(base) => {
            let data = dir.join("data-all-baseline");
            ingest_seq(&base, &project, &data, lines);
            let (bt, bcli, bdaemon) = logs_all(&base, &project, &data, runs);
            println!(
                "bpm logs (BPM_BASELINE):        {}  peak RSS: CLI {bcli:.1} MiB, daemon {bdaemon:.1} MiB",
                ms(bt)
            );
            println!(
                "time ratio {:.2}x (target <= 1.5x); RSS ratio CLI {:.3}x, daemon {:.3}x",
                t.as_secs_f64() / bt.as_secs_f64(),
                cli / bcli,
                daemon / bdaemon
            );
        }
        Err(_) => println!("(set BPM_BASELINE to an earlier bpm binary to compare)"),
    }
}

fn main() {
    let quick = std::env::var_os("BPM_BENCH_QUICK").is_some();
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |n: &str| filter.is_empty() || filter.iter().any(|f| n.contains(f.as_str()));
    if want("logs-all") {
        let dir = tempfile::tempdir().unwrap();
        bench_logs_all(dir.path(), quick);
    }
    if !want("grep") && !want("status") {
        return;
    }
    let lines: usize = if quick { 100_000 } else { 1_000_000 };
    let runs = 11;
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&project).unwrap();

    // Log-like lines; one in 10,000 matches.
    let flat = dir.path().join("flat.log");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&flat).unwrap());
        for i in 0..lines {
            if i % 10_000 == 5_000 {
                writeln!(
                    f,
                    "2024-05-01T12:{:02}:{:02}.{:03}Z ERROR worker {} panic: request {i} timed out after 30s",
                    i / 60_000 % 60,
                    i / 1000 % 60,
                    i % 1000,
                    i % 16
                )
                .unwrap();
            } else {
                writeln!(
                    f,
                    "2024-05-01T12:{:02}:{:02}.{:03}Z INFO  http GET /api/items/{} 200 in {} ms (worker {})",
                    i / 60_000 % 60,
                    i / 1000 % 60,
                    i % 1000,
                    i % 977,
                    i % 89,
                    i % 16
                )
                .unwrap();
            }
        }
    }
    let size = std::fs::metadata(&flat).unwrap().len();
    println!(
        "== {lines} lines ({:.1} MiB), pattern `{PATTERN}`, median of {runs} runs",
        size as f64 / (1 << 20) as f64
    );

    let daemon = serve(&project, &data);
    let t = Instant::now();
    let st = bpm(&data, &["run", "--name", "big", "--", "cat"])
        .arg(&flat)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    println!(
        "bpm run -- cat (ingest + follow to the end): {}",
        ms(t.elapsed())
    );

    let grep = || {
        let mut c = Command::new("grep");
        c.arg("-E").arg(PATTERN).arg(&flat);
        c
    };
    let (base, base_bytes) = time(runs, grep);
    let (online, online_bytes) = time(runs, || bpm(&data, &["logs", "big", "--grep", PATTERN]));
    assert_eq!(
        online_bytes, base_bytes,
        "bpm and grep print the same lines"
    );
    println!("grep -E (baseline):             {}", ms(base));
    println!(
        "bpm logs --grep (daemon):       {}  ratio {:.2}x",
        ms(online),
        online.as_secs_f64() / base.as_secs_f64()
    );

    // No daemon: the same command reads the store directly.
    drop(daemon);
    let (offline, offline_bytes) = time(runs, || bpm(&data, &["logs", "big", "--grep", PATTERN]));
    assert_eq!(offline_bytes, base_bytes);
    println!(
        "bpm logs --grep (no daemon):    {}  ratio {:.2}x",
        ms(offline),
        offline.as_secs_f64() / base.as_secs_f64()
    );

    // bpm status with 20 running processes.
    let project = dir.path().join("project20");
    let data = dir.path().join("data20");
    std::fs::create_dir_all(&project).unwrap();
    let mut config = String::new();
    for i in 0..20 {
        config.push_str(&format!(
            "[process.p{i:02}]\ncommand = [\"sh\", \"-c\", \"echo started; exec sleep 600\"]\n"
        ));
    }
    std::fs::write(project.join(".mcp-run"), config).unwrap();
    let _daemon = serve(&project, &data);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = bpm(&data, &["status"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if text.matches(" running ").count() == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "20 processes did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let runs = 31;
    let (truth, _) = time(runs, || Command::new("true"));
    let (status, _) = time(runs, || bpm(&data, &["status"]));
    let (status_json, _) = time(runs, || bpm(&data, &["status", "--json"]));
    println!("== bpm status, 20 running processes, median of {runs} runs");
    println!("spawn /bin/true (baseline):     {}", ms(truth));
    println!("bpm status:                     {}", ms(status));
    println!("bpm status --json:              {}", ms(status_json));
}
