//! Daemon benchmarks against the real `bpm serve` binary, each beside its baseline.
//!
//! `cargo bench --bench daemon` (it builds the release binary first). Measures: a child
//! printing 2,000,000 lines of 100 bytes until its last line is durable, against the same
//! child writing to a file (and fsync); `seq 1 2000000` through bpm with every line
//! stored; restart of `python3 -m http.server` until the port accepts again, against
//! starting it directly; the daemon's RSS idle and its peak during the flood; and daemon
//! start until the listener accepts, on an empty store; and daemon start until systemd
//! would get `READY=1` (a datagram on a `NOTIFY_SOCKET` the bench binds) with a 1 GiB
//! store; and the daemon's peak RSS while 20 processes print 10,000 lines/s each and
//! searches run against them (`load`; `BPM_BENCH_LOAD_SECS`, default 30; `BPM_BASELINE`
//! runs the same load on another build).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bpm_binary() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "bpm"])
        .status()
        .unwrap();
    assert!(status.success());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release/bpm")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn http(port: u16, method: &str, path: &str, body: &str) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

struct Daemon {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Daemon {
    fn start(bin: &Path, project: &Path) -> (Daemon, Duration) {
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let t = Instant::now();
        let child = Command::new(bin)
            .args([
                "serve",
                "--no-prefix",
                "--port",
                &port.to_string(),
                "--data-dir",
            ])
            .arg(data.path())
            .arg(project)
            .env("BPM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(10, || TcpStream::connect(("127.0.0.1", port)).ok());
        let bound = t.elapsed();
        (
            Daemon {
                child,
                port,
                _data: data,
            },
            bound,
        )
    }

    fn rss_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// Start `argv` as a runtime process and wait until it has exited, all durable.
    fn run_to_exit(&self, name: &str, argv: &[&str]) -> Duration {
        let body = serde_json::json!({ "name": name, "command": argv }).to_string();
        let t = Instant::now();
        let r = http(self.port, "POST", "/api/start", &body);
        assert!(r["status"].is_object(), "{r}");
        wait_for(600, || {
            let s = http(self.port, "GET", &format!("/api/status/{name}"), "");
            (s["processes"][0]["state"]["exited"].is_object()).then_some(())
        });
        t.elapsed()
    }

    fn stop(self) {
        drop(self);
    }
}

/// A daemon is stopped (with its processes) even when a measurement panics.
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// A child printing 2,000,000 lines of 100 bytes (99 + newline).
fn flood() -> String {
    format!("yes {} | head -n 2000000", "0".repeat(99))
}

/// A store of at least 1 GiB in `data` (pseudo-random hex lines, which LZ4 cannot
/// shrink much), through the store API; its size.
fn big_store(data: &Path) -> u64 {
    use bpm::logs::{ExitStatus, InstanceKind, Limits, SpawnInfo, Store, StoreOptions, Stream};
    let opts = StoreOptions {
        limits: Limits {
            keep_instances: 1000,
            keep_builds: 10,
            max_bytes: 8 << 30,
        },
        store_max_bytes: 16 << 30,
        ..StoreOptions::default()
    };
    let path = data.join("logs.redb");
    let store = Store::open(&path, opts).unwrap().store;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunk = Vec::with_capacity(64 * 1024);
    'runs: for run in 0.. {
        let w = store
            .begin_instance("big", InstanceKind::Run, SpawnInfo::default())
            .unwrap();
        for _ in 0..1000 {
            chunk.clear();
            while chunk.len() < 64 * 1024 - 100 {
                for _ in 0..12 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    write!(chunk, "{x:016x}").unwrap();
                }
                chunk.push(b'\n');
            }
            w.wait_for_room_blocking(Duration::from_secs(5));
            w.append(Stream::Stdout, &chunk);
        }
        w.finish(ExitStatus::Code(0)).unwrap();
        store.flush().unwrap();
        if run % 4 == 3 && std::fs::metadata(&path).unwrap().len() >= 1 << 30 {
            break 'runs;
        }
    }
    store.close().unwrap();
    std::fs::metadata(&path).unwrap().len()
}

/// `bpm serve` on `data` with systemd's `NOTIFY_SOCKET`: the time until `READY=1`.
fn start_to_ready(bin: &Path, project: &Path, data: &Path) -> Duration {
    let sock_path = data.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let t = Instant::now();
    let mut child = Command::new(bin)
        .args(["serve", "--no-prefix", "--port", "0", "--data-dir"])
        .arg(data)
        .arg(project)
        .env("BPM_LOG", "warn")
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let ready = loop {
        let n = sock.recv(&mut buf).expect("READY=1 within 30 s");
        if buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1") {
            break t.elapsed();
        }
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    child.wait().unwrap();
    ready
}

fn main() {
    let bin = bpm_binary();
    let project = tempfile::tempdir().unwrap();
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |n: &str| filter.is_empty() || filter.iter().any(|f| n.contains(f.as_str()));

    if want("start") {
        let mut starts = Vec::new();
        for _ in 0..5 {
            let (d, bound) = Daemon::start(&bin, project.path());
            starts.push(bound);
            d.stop();
        }
        println!(
            "{:<52} {:>10}   (target < 100 ms; includes process exec)",
            "daemon start until the listener accepts",
            ms(median(starts))
        );
    }

    if want("ready") {
        let data = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let size = big_store(data.path());
        eprintln!(
            "(a {:.2} GiB store written in {:.0} s)",
            size as f64 / f64::from(1 << 30),
            t.elapsed().as_secs_f64()
        );
        let empty = tempfile::tempdir().unwrap();
        let mut big = Vec::new();
        let mut small = Vec::new();
        for _ in 0..5 {
            big.push(start_to_ready(&bin, project.path(), data.path()));
            small.push(start_to_ready(&bin, project.path(), empty.path()));
        }
        let (b, e) = (median(big), median(small));
        println!(
            "{:<52} {:>10}   empty store {:>10}   ratio {:.2}x (target < 50 ms)",
            "daemon start until READY=1, 1 GiB store",
            ms(b),
            ms(e),
            b.as_secs_f64() / e.as_secs_f64()
        );
    }

    if want("flood") {
        let (d, _) = Daemon::start(&bin, project.path());
        std::thread::sleep(Duration::from_millis(500));
        let idle = d.rss_kib("VmRSS:");
        let mut ours = Vec::new();
        let mut base = Vec::new();
        for i in 0..3 {
            let out = project.path().join("flood.txt");
            let t = Instant::now();
            let st = Command::new("sh")
                .args(["-c", &format!("{} > {}", flood(), out.display())])
                .status()
                .unwrap();
            assert!(st.success());
            std::fs::File::open(&out).unwrap().sync_all().unwrap();
            base.push(t.elapsed());
            assert_eq!(std::fs::metadata(&out).unwrap().len(), 200_000_000);
            std::fs::remove_file(&out).unwrap();

            let name = format!("flood{i}");
            ours.push(d.run_to_exit(&name, &["sh", "-c", &flood()]));
            let logs = http(d.port, "GET", &format!("/api/logs/{name}?tail=1"), "");
            assert_eq!(logs["lines"][0]["seq"], 1_999_999, "{logs}");
            assert_eq!(logs["instances"][0]["lines"], 2_000_000, "{logs}");
            assert_eq!(
                logs["instances"][0]["dropped"], 0,
                "every line stored: {logs}"
            );
        }
        let peak = d.rss_kib("VmHWM:");
        let (o, b) = (median(ours), median(base));
        println!(
            "{:<52} {:>10}   child > file + fsync {:>10}   ratio {:.2}x (target <= 1.3x)",
            "flood: 2,000,000 x 100 B lines until durable",
            ms(o),
            ms(b),
            o.as_secs_f64() / b.as_secs_f64()
        );
        let t = d.run_to_exit("seq", &["seq", "1", "2000000"]);
        let logs = http(d.port, "GET", "/api/logs/seq?tail=1", "");
        assert_eq!(logs["lines"][0]["text"], "2000000");
        println!(
            "{:<52} {:>10}   lines: {} of 2000000, dropped: {}",
            "seq 1 2000000 through bpm",
            ms(t),
            logs["instances"][0]["lines"],
            logs["instances"][0]["dropped"]
        );
        println!(
            "{:<52} {:>7} MiB   peak during the floods {:.1} MiB (targets 15 / 64 MiB)",
            "daemon RSS idle",
            format!("{:.1}", idle as f64 / 1024.0),
            peak as f64 / 1024.0
        );
        d.stop();
    }

    if want("load") {
        load(&bin, project.path());
        // The same load on a build to compare with (`BPM_BASELINE=/path/to/bpm`).
        if let Some(base) = std::env::var_os("BPM_BASELINE") {
            println!("  baseline {}:", Path::new(&base).display());
            load(Path::new(&base), project.path());
        }
    }

    if want("restart") {
        let (d, _) = Daemon::start(&bin, project.path());
        let port = free_port();
        let argv = [
            "python3",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ];
        let accepts = || TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ());
        // Floor: start the command directly until the port accepts.
        let mut floor = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let mut c = Command::new(argv[0])
                .args(&argv[1..])
                .current_dir(project.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            wait_for(10, accepts);
            floor.push(t.elapsed());
            c.kill().unwrap();
            c.wait().unwrap();
            wait_for(10, || accepts().is_none().then_some(()));
        }
        let body = serde_json::json!({ "name": "http", "command": argv }).to_string();
        http(d.port, "POST", "/api/start", &body);
        wait_for(10, accepts);
        let mut ours = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            http(d.port, "POST", "/api/restart/http", "");
            wait_for(10, accepts);
            ours.push(t.elapsed());
        }
        let (o, f) = (median(ours), median(floor));
        println!(
            "{:<52} {:>10}   direct start {:>10}   over the floor {} (target <= 20 ms)",
            "restart python3 -m http.server until it accepts",
            ms(o),
            ms(f),
            ms(o.saturating_sub(f))
        );
        d.stop();
    }
}

/// A child printing `rate` lines/s of log-like text (about 90 bytes) for `secs` seconds,
/// paced by the clock in batches every 10 ms, then its count as the last line.
fn paced_printer(rate: u32, secs: u32) -> String {
    format!(
        r#"import sys, time
rate, secs = {rate}, {secs}
t0 = time.monotonic(); n = 0
while True:
    el = time.monotonic() - t0
    if el >= secs: break
    due = int(el * rate)
    while n < due:
        sys.stdout.write("%.6f INFO req id=%08d path=/api/items/%d status=%d took %dms\n" % (time.time(), n, n % 977, 200 + (n % 7 == 0) * 300, n % 1000))
        n += 1
    sys.stdout.flush()
    time.sleep(0.01)
print("printed", n, flush=True)
"#
    )
}

/// Peak daemon RSS under 20 processes x 10,000 lines/s with searches running beside them,
/// the searches' latency, and every line accounted for.
fn load(bin: &Path, project: &Path) {
    const PROCS: usize = 20;
    const RATE: u32 = 10_000;
    let secs: u32 = std::env::var("BPM_BENCH_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let (d, _) = Daemon::start(bin, project);
    let script = paced_printer(RATE, secs);
    for i in 0..PROCS {
        let body = serde_json::json!({
            "name": format!("p{i:02}"),
            // Its name as an (unused) argument: twenty distinct commands, which builds
            // that attach a start to a running twin also start twenty processes.
            "command": ["python3", "-c", &script, format!("p{i:02}")],
            "wait_seconds": 0,
        })
        .to_string();
        let r = http(d.port, "POST", "/api/start", &body);
        assert!(r["status"].is_object(), "{r}");
    }
    let t = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (searches, peak_sampled) = std::thread::scope(|scope| {
        let searcher = scope.spawn(|| {
            let mut took = Vec::new();
            let mut i = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let q = if i % 2 == 0 {
                    "pattern=status%3D500&tail=200"
                } else {
                    "pattern=id%3D0000%5Cd%7B4%7D%20&tail=200"
                };
                let s = Instant::now();
                let r = http(
                    d.port,
                    "GET",
                    &format!("/api/logs/p{:02}?{q}", i % PROCS),
                    "",
                );
                took.push(s.elapsed());
                assert!(r["lines"].is_array(), "{r}");
                i += 1;
            }
            took
        });
        let mut peak = 0;
        while t.elapsed() < Duration::from_secs(u64::from(secs) + 2) {
            peak = peak.max(d.rss_kib("VmRSS:"));
            std::thread::sleep(Duration::from_millis(100));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (searcher.join().unwrap(), peak)
    });
    // Every printer's last line says how many it printed; the store must hold them all.
    let (mut printed, mut stored, mut dropped) = (0u64, 0u64, 0u64);
    for i in 0..PROCS {
        let name = format!("p{i:02}");
        let logs = wait_for(120, || {
            let l = http(d.port, "GET", &format!("/api/logs/{name}?tail=1"), "");
            let last = l["lines"][0]["text"].as_str()?.to_owned();
            last.starts_with("printed ").then_some((l, last))
        });
        printed += logs.1["printed ".len()..].parse::<u64>().unwrap() + 1;
        stored += logs.0["instances"][0]["lines"].as_u64().unwrap();
        dropped += logs.0["instances"][0]["dropped"].as_u64().unwrap();
    }
    let hwm = d.rss_kib("VmHWM:");
    let mut took = searches;
    took.sort();
    let pct = |p: f64| took[((took.len() - 1) as f64 * p) as usize];
    println!(
        "{:<52} {:>7} MiB   (sampled {:.1} MiB; target <= 83 MB, the figure before paged reads)",
        format!("daemon peak RSS, {PROCS} x {RATE} lines/s for {secs} s + searches"),
        format!("{:.1}", hwm as f64 / 1024.0),
        peak_sampled as f64 / 1024.0
    );
    println!(
        "{:<52} {:>10}   p99 {}   ({} searches)",
        "  search (tail 200 of a growing process) p50",
        ms(pct(0.5)),
        ms(pct(0.99)),
        took.len()
    );
    println!(
        "{:<52} {:>10}   stored {stored}, dropped {dropped}, lost {}",
        "  lines printed",
        printed,
        printed.saturating_sub(stored)
    );
    d.stop();
}
