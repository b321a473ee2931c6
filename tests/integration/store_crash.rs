//! Unclean shutdown with a real process: a child appends numbered lines and reports each
//! line number it has seen made durable by `flush()`; the parent SIGKILLs it mid-stream
//! and reopens the store. Everything reported durable must be there, in order, without a
//! gap, and the instance must come back as interrupted.
//!
//! The child is this very test binary, re-executed with `--exact store_crash::crash_child`:
//! that test does nothing unless `BPM_CRASH_CHILD` names a store path (set on the child
//! only, never in this process).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bpm::logs::{ExitStatus, Filter, InstanceKind, SpawnInfo, Store, StoreOptions, Stream, Window};

use crate::helpers::process::{ChildGuard, spawn};
use crate::helpers::tempdir;

const CHILD_ENV: &str = "BPM_CRASH_CHILD";
const MODE_ENV: &str = "BPM_CRASH_MODE";
/// Marks the child's reports among libtest's own output.
const REPORT: &str = "crash-report: ";

/// Not a test of its own: the body of the child process. Returns at once when run as part
/// of the suite.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let flood = std::env::var(MODE_ENV).as_deref() == Ok("flood");
    let store = Store::open(Path::new(&path), StoreOptions::default())
        .unwrap()
        .store;
    let w = store
        .begin_instance("crashy", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{REPORT}instance {}", w.id()).unwrap();
    out.flush().unwrap();
    let (batch, flush_every) = if flood { (500, 20_000) } else { (1, 25) };
    let mut next = 0u64;
    loop {
        let mut text = String::new();
        for _ in 0..batch {
            text.push_str(&format!(
                "line {next} {}\n",
                "x".repeat((next % 40) as usize)
            ));
            next += 1;
        }
        w.append(Stream::Stdout, text.as_bytes());
        if next.is_multiple_of(flush_every) {
            store.flush().unwrap();
            writeln!(out, "{REPORT}durable {}", next - 1).unwrap();
            out.flush().unwrap();
        }
        if !flood {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

/// The libtest name of [`crash_child`] in this binary (`store_crash::crash_child`).
fn child_test() -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::crash_child")
}

/// What the child said: its instance, and the highest line number it saw made durable.
#[derive(Default)]
struct Reports {
    instance: Option<u64>,
    durable: Option<u64>,
    flushes: usize,
}

impl Reports {
    fn take(&mut self, line: &str) {
        // libtest may print "test crash_child ... " on the same line first.
        let Some((_, line)) = line.split_once(REPORT) else {
            return;
        };
        if let Some(id) = line.strip_prefix("instance ") {
            self.instance = Some(id.parse().unwrap());
        } else if let Some(n) = line.strip_prefix("durable ") {
            let n: u64 = n.parse().unwrap();
            assert!(self.durable.is_none_or(|d| n > d), "reports grow");
            self.durable = Some(n);
            self.flushes += 1;
        }
    }
}

/// A store whose writer was SIGKILLed mid-stream, and what the writer had reported.
struct Crashed {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    instance: u64,
    /// The highest line number reported durable.
    durable: u64,
    flushes: usize,
}

fn crash_and_recover(mode: &str, min_flushes: usize) {
    let crashed = kill_mid_stream(mode, min_flushes);
    check_recovery(mode, &crashed);
}

/// Run the child in `mode` until it reported `min_flushes` flushes, then SIGKILL it.
fn kill_mid_stream(mode: &str, min_flushes: usize) -> Crashed {
    let dir = tempdir();
    let path = dir.path().join("logs.redb");
    let mut child = ChildGuard(spawn(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &child_test(), "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .env(MODE_ENV, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    ));
    // (If this test fails before it kills the child, the guard does.)
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut r = Reports::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while r.flushes < min_flushes {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => r.take(&line),
            Err(e) => panic!(
                "the child reported only {} flushes in time ({e})",
                r.flushes
            ),
        }
    }
    // Kill it somewhere in the middle of appending and committing: it appends on for a
    // moment past its last report. This sleep is the scenario, not a wait for anything.
    std::thread::sleep(Duration::from_millis(30));
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "{status:?}");
    reader.join().unwrap();
    // Reports that were printed before the kill count too.
    for line in rx.try_iter() {
        r.take(&line);
    }
    let instance = r.instance.expect("the child named its instance");
    let durable = r.durable.expect("some flush was reported");
    Crashed {
        _dir: dir,
        path,
        instance,
        durable,
        flushes: r.flushes,
    }
}

/// Everything reported durable is there, in order and without a gap; the instance is
/// interrupted; the store goes on and then closes cleanly.
fn check_recovery(mode: &str, crashed: &Crashed) {
    let Crashed {
        path,
        instance,
        durable,
        flushes,
        ..
    } = crashed;
    let (path, instance, durable) = (path.as_path(), *instance, *durable);
    let t = Instant::now();
    let opened = Store::open(path, StoreOptions::default()).unwrap();
    let reopen = t.elapsed();
    let file_bytes = std::fs::metadata(path).unwrap().len();
    println!(
        "{mode}: reopened after SIGKILL in {reopen:?} ({file_bytes} bytes, {} lines reported durable after {flushes} flushes)",
        durable + 1
    );
    assert!(opened.unclean, "the kill must be noticed");
    assert!(opened.moved_aside.is_none());
    let m = opened
        .interrupted
        .iter()
        .find(|m| m.id == instance)
        .unwrap_or_else(|| panic!("#{instance} not in {:?}", opened.interrupted));
    assert_eq!(m.exit, Some(ExitStatus::Unknown));
    assert!(m.ended_us.is_some());

    let store = opened.store;
    let lines = store
        .read(instance, Window::Head(usize::MAX), &Filter::default())
        .unwrap();
    assert!(
        lines.len() as u64 > durable,
        "{} lines kept, {} reported durable",
        lines.len(),
        durable + 1
    );
    for (i, l) in lines.iter().enumerate() {
        let i = i as u64;
        assert_eq!(l.seq, i, "no gap");
        let want = format!("line {i} {}", "x".repeat((i % 40) as usize));
        assert_eq!(l.text(), want);
    }
    let meta = store.resolve("crashy", InstanceKind::Run, -1).unwrap();
    assert_eq!(meta.id, instance);
    assert_eq!(meta.next_seq, lines.len() as u64);
    // The recovered store is usable and closes cleanly.
    let w = store
        .begin_instance("crashy", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    w.append(Stream::Stdout, b"after the crash\n");
    w.finish(ExitStatus::Code(0)).unwrap();
    store.close().unwrap();
    let opened = Store::open(path, StoreOptions::default()).unwrap();
    assert!(!opened.unclean && opened.interrupted.is_empty());
    opened.store.close().unwrap();
}

#[test]
fn sigkill_while_appending_slowly_loses_nothing_flushed() {
    crash_and_recover("slow", 20);
}

#[test]
fn sigkill_during_a_flood_loses_nothing_flushed() {
    crash_and_recover("flood", 5);
}
