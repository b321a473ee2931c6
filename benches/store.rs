//! Log store benchmarks, each side by side with its baseline in the same run.
//!
//! `cargo bench --bench store` prints one row per measurement with the ratio to its
//! baseline. Sizes follow the issue: 2,000,000 lines of 100 bytes for ingest, 8-byte lines
//! for the tiny-line rate, a 1,000,000-line (100 MB) instance for tail and search, and a
//! 1 GiB store for reopen after SIGKILL. `BPM_BENCH_QUICK=1` runs at a tenth of the size.
//!
//! These are macro benchmarks (one run takes seconds), so instead of criterion's sampling
//! each is run a few times and the median is reported.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bpm::logs::{
    ExitStatus, Filter, InstanceKind, Limits, SpawnInfo, Store, StoreOptions, Stream, Window,
};
use bpm::search::{self, Query};

const CHILD_ENV: &str = "BPM_BENCH_REOPEN_CHILD";

fn scale() -> usize {
    if std::env::var_os("BPM_BENCH_QUICK").is_some() {
        10
    } else {
        1
    }
}

fn big_options() -> StoreOptions {
    StoreOptions {
        limits: Limits {
            keep_instances: 1000,
            keep_builds: 10,
            max_bytes: 8 << 30,
        },
        store_max_bytes: 16 << 30,
        // `BPM_BENCH_FILTERS=0|1`: without or with the filter builder running beside the
        // store (default: as the store does by default). Ingest is timed until durable
        // either way; with filters, the time the builder then takes is reported apart.
        block_filters: filters_on(),
        ..StoreOptions::default()
    }
}

fn filters_on() -> bool {
    std::env::var("BPM_BENCH_FILTERS").map_or(StoreOptions::default().block_filters, |v| v != "0")
}

/// With filters on: wait for the builder to give every block its filter (outside the
/// timed part), and return how long that took from the end of ingest.
fn wait_filters(store: &Store) -> Option<Duration> {
    if !filters_on() {
        return None;
    }
    let (d, ok) = time(|| store.wait_for_filters(Duration::from_secs(600)));
    assert!(ok, "the filter builder did not catch up");
    Some(d)
}

fn remove_store(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(bpm::logs::filter_file_path(path));
}

fn report_filters(label: &str, builds: &[Duration], text_bytes: usize) {
    if builds.is_empty() {
        println!("{label:<44} filters off (BPM_BENCH_FILTERS=0)");
        return;
    }
    let d = median(builds.to_vec());
    println!(
        "{label:<44} {:>12}   {:.0} MB/s of text, after ingest (incl. the writer's quiet time)",
        ms(d),
        text_bytes as f64 / d.as_secs_f64() / 1e6
    );
}

/// `n` log-like lines of exactly 100 bytes (99 + newline); every 100,000th is an error.
fn log_text(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 100);
    for i in 0..n {
        let mut line = if i % 100_000 == 99_999 {
            format!(
                "2026-11-22T04:05:23.{:03}Z ERROR upstream request id={i:08} failed: timeout after 30s",
                i % 1000
            )
        } else {
            format!(
                "2026-11-22T04:05:23.{:03}Z INFO  request id={i:08} path=/api/items/{} status=200 dur={}ms",
                i % 1000,
                i % 977,
                i % 91
            )
        };
        line.truncate(99);
        while line.len() < 99 {
            line.push(' ');
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Append `text` the way capture does: in pipe-sized reads.
fn ingest(store: &Store, name: &str, text: &[u8]) -> u64 {
    let w = store
        .begin_instance(name, InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    let id = w.id();
    for chunk in text.chunks(64 * 1024) {
        // What capture does between reads: a writer that falls behind slows the child
        // down (as a file would) rather than losing lines.
        w.wait_for_room_blocking(Duration::from_secs(5));
        w.append(Stream::Stdout, chunk);
    }
    w.finish(ExitStatus::Code(0)).unwrap();
    assert_eq!(store.dropped_lines(), 0, "the bench must store every line");
    id
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn row(name: &str, ours: Duration, base_name: &str, base: Duration, target: &str) {
    println!(
        "{name:<44} {:>12}   {base_name:<28} {:>12}   ratio {:>6.2}x   (target {target})",
        ms(ours),
        ms(base),
        ours.as_secs_f64() / base.as_secs_f64()
    );
}

fn file_write_fsync(path: &Path, text: &[u8]) -> Duration {
    let (d, ()) = time(|| {
        let mut f = std::fs::File::create(path).unwrap();
        for chunk in text.chunks(64 * 1024) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
    });
    let _ = std::fs::remove_file(path);
    d
}

fn bench_ingest(dir: &Path) {
    let n = 2_000_000 / scale();
    let text = log_text(n);
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let mut ratio_disk = 0.0;
    let mut builds = Vec::new();
    for round in 0..3 {
        base.push(file_write_fsync(&dir.join("flat.log"), &text));
        let path = dir.join(format!("ingest{round}.redb"));
        let store = Store::open(&path, big_options()).unwrap().store;
        let (d, _) = time(|| ingest(&store, "web", &text));
        ours.push(d);
        builds.extend(wait_filters(&store));
        store.close().unwrap();
        ratio_disk = std::fs::metadata(&path).unwrap().len() as f64 / text.len() as f64;
        remove_store(&path);
    }
    row(
        &format!("ingest {n} x 100 B lines until durable"),
        median(ours),
        "file write + fsync",
        median(base),
        "<= 1.5x",
    );
    println!(
        "{:<44} {ratio_disk:>12.3}x of the raw bytes (target <= 1.3x)",
        "disk: store size after ingest"
    );
    report_filters("filters built for the ingested lines", &builds, text.len());

    // The worst case for the disk: lines of noise that do not compress at all.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..n)
        .flat_map(|_| {
            let mut line = String::with_capacity(100);
            while line.len() < 99 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                line.push_str(&format!("{x:016x}"));
            }
            line.truncate(99);
            line.push('\n');
            line.into_bytes()
        })
        .collect();
    let path = dir.join("noise.redb");
    let store = Store::open(&path, big_options()).unwrap().store;
    ingest(&store, "noise", &noise);
    wait_filters(&store);
    store.close().unwrap();
    let ratio = std::fs::metadata(&path).unwrap().len() as f64 / noise.len() as f64;
    remove_store(&path);
    println!(
        "{:<44} {ratio:>12.3}x of the raw bytes (incompressible input)",
        "disk: store size after ingest of noise"
    );
}

fn bench_tiny(dir: &Path) {
    let n = 2_000_000 / scale();
    let text: Vec<u8> = (1..=n)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let mut ours = Vec::new();
    let mut builds = Vec::new();
    for round in 0..3 {
        let path = dir.join(format!("tiny{round}.redb"));
        let store = Store::open(&path, big_options()).unwrap().store;
        let (d, id) = time(|| ingest(&store, "seq", &text));
        assert_eq!(store.instance(id).unwrap().next_seq, n as u64);
        ours.push(d);
        builds.extend(wait_filters(&store));
        store.close().unwrap();
        remove_store(&path);
    }
    let d = median(ours);
    println!(
        "{:<44} {:>12}   {:.2} M lines/s (target >= 4 M lines/s)",
        format!("tiny lines: seq 1 {n} until durable"),
        ms(d),
        n as f64 / d.as_secs_f64() / 1e6
    );
    report_filters("filters built for the tiny lines", &builds, text.len());
}

fn bench_tail_and_search(dir: &Path) {
    let n = 1_000_000 / scale();
    let text = log_text(n);
    let path = dir.join("tail.redb");
    let flat = dir.join("flat.log");
    std::fs::write(&flat, &text).unwrap();

    let store = Store::open(&path, big_options()).unwrap().store;
    // From the ring: a live instance.
    let w = store
        .begin_instance("live", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    for chunk in text.chunks(64 * 1024) {
        w.wait_for_room_blocking(Duration::from_secs(5));
        w.append(Stream::Stdout, chunk);
    }
    store.flush().unwrap();
    assert_eq!(store.dropped_lines(), 0);
    let tail_ring = per_op(1000, || {
        let l = store
            .read(w.id(), Window::Tail(100), &Filter::default())
            .unwrap();
        assert_eq!(l.len(), 100);
    });
    w.finish(ExitStatus::Code(0)).unwrap();
    store.close().unwrap();

    // From the store after reopen (its filters built first: the search is measured alone).
    let store = Store::open(&path, big_options()).unwrap().store;
    wait_filters(&store);
    let id = store.resolve("live", InstanceKind::Run, -1).unwrap().id;
    let tail_store_first = time(|| {
        store
            .read(id, Window::Tail(100), &Filter::default())
            .unwrap()
    })
    .0;
    let tail_store = per_op(1000, || {
        let l = store
            .read(id, Window::Tail(100), &Filter::default())
            .unwrap();
        assert_eq!(l.len(), 100);
    });
    println!(
        "{:<44} {:>12}   (target < 1 ms)",
        format!("tail 100 of {n} lines, from the ring"),
        ms(tail_ring)
    );
    println!(
        "{:<44} {:>12}   first read after reopen {} (target < 1 ms)",
        format!("tail 100 of {n} lines, from the store"),
        ms(tail_store),
        ms(tail_store_first)
    );

    let pattern = "ERROR.*timeout";
    let q = Query {
        pattern: pattern.into(),
        ..Query::default()
    };
    let expect = (n / 100_000) as u64;
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for _ in 0..5 {
        let (d, r) = time(|| search::search(&store, &[id], &q).unwrap());
        assert_eq!(r.matched, expect);
        ours.push(d);
        let (d, out) = time(|| {
            Command::new("grep")
                .args(["-cE", pattern])
                .arg(&flat)
                .output()
                .unwrap()
        });
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expect.to_string()
        );
        base.push(d);
    }
    row(
        &format!("search `{pattern}` over {n} lines"),
        median(ours),
        "grep -cE on a flat file",
        median(base),
        "<= 2x",
    );
    store.close().unwrap();
    remove_store(&path);
    let _ = std::fs::remove_file(&flat);
}

fn per_op(iters: u32, mut f: impl FnMut()) -> Duration {
    f();
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed() / iters
}

/// The child: fill a store to `BPM_BENCH_BYTES`, report, then keep appending until killed.
fn reopen_child(path: &str) {
    let bytes: usize = std::env::var("BPM_BENCH_BYTES").unwrap().parse().unwrap();
    let store = Store::open(Path::new(path), big_options()).unwrap().store;
    let chunk = log_text(100_000);
    let mut i = 0;
    // Fill until the file itself has the size asked for (blocks are stored compressed).
    while std::fs::metadata(path).map_or(0, |m| m.len()) < bytes as u64 {
        let w = store
            .begin_instance(
                &format!("p{}", i % 8),
                InstanceKind::Run,
                SpawnInfo::default(),
            )
            .unwrap();
        for _ in 0..10 {
            for c in chunk.chunks(64 * 1024) {
                w.wait_for_room_blocking(Duration::from_secs(5));
                w.append(Stream::Stdout, c);
            }
        }
        w.finish(ExitStatus::Code(0)).unwrap();
        i += 1;
    }
    let w = store
        .begin_instance("last", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    println!("filled");
    std::io::stdout().flush().unwrap();
    loop {
        for c in chunk.chunks(64 * 1024) {
            w.wait_for_room_blocking(Duration::from_secs(5));
            w.append(Stream::Stdout, c);
        }
    }
}

fn bench_reopen(dir: &Path) {
    let bytes = (1usize << 30) / scale();
    let path = dir.join("big.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, &path)
        .env("BPM_BENCH_BYTES", bytes.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "filled");
    // Let it append (and commit) for a moment, then kill it mid-write.
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let (d, opened) = time(|| Store::open(&path, big_options()).unwrap());
    assert!(opened.unclean);
    println!(
        "{:<44} {:>12}   store file {:.2} GiB (target < 1 s)",
        "reopen after SIGKILL",
        ms(d),
        size as f64 / (1u64 << 30) as f64
    );
    opened.store.close().unwrap();
    remove_store(&path);
}

fn main() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        reopen_child(&path);
        return;
    }
    // `cargo bench` passes `--bench`; a filter argument picks benchmarks by name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let dir = tempfile::tempdir().unwrap();
    if want("ingest") {
        bench_ingest(dir.path());
    }
    if want("tiny") {
        bench_tiny(dir.path());
    }
    if want("tail") || want("search") {
        bench_tail_and_search(dir.path());
    }
    if want("reopen") {
        bench_reopen(dir.path());
    }
}
