//! The store under real faults: a full disk, files cut or damaged on disk, and two starts
//! in a row. Each test makes the fault happen for real (a small tmpfs that fills up,
//! bytes overwritten in the file) and checks what the store promises: it heals by itself,
//! it says what it could not store, and it never destroys the evidence.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bpm::logs::{
    EventKind, ExitStatus, Filter, InstanceKind, SpawnInfo, Store, StoreOptions, Stream, Window,
};

use crate::helpers::store::texts;
use crate::helpers::wait_for_within;

/// Wait until `cond` holds, failing the test with `what` after `secs` seconds.
#[track_caller]
fn wait_until(what: &str, secs: u64, cond: impl FnMut() -> bool) {
    wait_for_within(what, Duration::from_secs(secs), cond);
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fill the file system holding `dir` with one file; returns it (remove it to free space).
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xAAu8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Smaller writes, so that no page is left.
    let small = [0xAAu8; 512];
    while f.write(&small).is_ok_and(|n| n > 0) {}
    let _ = f.sync_all();
    path
}

/// Lines "n <seq> <padding>" for seqs `from..to`: each line says which line it is.
fn numbered(from: u64, to: u64) -> Vec<u8> {
    let mut out = String::new();
    for i in from..to {
        out.push_str(&format!("n {i} {}\n", "z".repeat((i % 97) as usize)));
    }
    out.into_bytes()
}

/// Every stored line of `id` says its own sequence number.
fn check_numbered(store: &Store, id: u64) -> Vec<u64> {
    let lines = store
        .read(id, Window::Head(usize::MAX), &Filter::default())
        .unwrap();
    let mut seqs = Vec::new();
    for l in &lines {
        let text = l.text();
        let n: u64 = text.split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(n, l.seq, "line {} reads {text:?}", l.seq);
        seqs.push(l.seq);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "lines out of order");
    seqs
}

fn fast_retry() -> StoreOptions {
    StoreOptions {
        commit_interval: Duration::from_millis(20),
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..StoreOptions::default()
    }
}

#[test]
fn a_full_disk_heals_by_itself_and_counts_what_it_dropped() {
    if !is_root() {
        println!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let Some(fs) = Tmpfs::mount("8m") else {
        println!("skipped: could not mount a tmpfs");
        return;
    };
    let path = fs.path().join("logs.redb");
    let store = Store::open(
        &path,
        StoreOptions {
            // Small, so that the outage outgrows it and the oldest lines are given up.
            queue_max_bytes: 1 << 20,
            ..fast_retry()
        },
    )
    .unwrap()
    .store;
    assert!(store.health().writable);
    let w = store
        .begin_instance("chatty", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    let id = w.id();
    w.append(Stream::Stdout, &numbered(0, 1000));
    store.flush().unwrap();
    let durable_before = 1000;

    let filler = fill(fs.path());
    // Append until the store notices the full disk (a group needs new pages soon).
    let mut next = durable_before;
    wait_until("the store reports the disk full", 30, || {
        w.append(Stream::Stdout, &numbered(next, next + 2000));
        next += 2000;
        let _ = store.flush();
        !store.health().writable
    });
    let h = store.health();
    assert!(h.last_error.is_some(), "{h:?}");
    assert!(h.failing_since_us.is_some(), "{h:?}");
    assert!(h.lines_not_stored > 0, "{h:?}");
    // Flushes answer at once with an error; they do not hang.
    let err = store.flush().unwrap_err();
    assert!(err.to_string().contains("could not write"), "{err}");

    // Much more than the memory budget while the disk is full: the oldest are given up.
    for _ in 0..20 {
        w.append(Stream::Stdout, &numbered(next, next + 5000));
        next += 5000;
        w.seal();
    }
    wait_until("lines are given up beyond the budget", 30, || {
        store.health().lines_dropped > 0
    });
    let h = store.health();
    assert!(!h.writable);
    assert_eq!(h.lines_dropped, store.dropped_lines());
    // The ring still answers with the newest lines while the disk is full.
    let tail = store.read(id, Window::Tail(1), &Filter::default());
    if let Ok(tail) = tail {
        assert_eq!(tail[0].seq, next - 1);
    }

    // Space comes back: storing resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    wait_until("the store heals", 30, || store.health().writable);
    let h = store.health();
    assert_eq!(h.lines_not_stored, 0, "{h:?}");
    assert!(h.failing_since_us.is_none(), "{h:?}");
    assert_eq!(h.recoveries, 1, "{h:?}");
    w.append(Stream::Stdout, &numbered(next, next + 100));
    next += 100;
    w.finish(ExitStatus::Code(0)).unwrap();
    let dropped = store.dropped_lines();
    assert!(dropped > 0);

    let verify = |store: &Store| {
        let m = store.instance(id).unwrap();
        assert_eq!(m.next_seq, next);
        assert_eq!(m.dropped_lines, dropped, "{m:?}");
        let seqs = check_numbered(store, id);
        // Everything not counted as dropped is there...
        assert_eq!(seqs.len() as u64, next - dropped);
        // ...including every line reported durable before the disk filled up, and the
        // lines after it healed.
        assert_eq!(
            seqs[..durable_before as usize],
            (0..durable_before).collect::<Vec<_>>()
        );
        assert_eq!(*seqs.last().unwrap(), next - 1);
        let events = store.events(None, 1000).unwrap();
        let kinds: Vec<_> = events.iter().map(|e| &e.kind).collect();
        assert!(
            kinds
                .iter()
                .any(|k| matches!(k, EventKind::StoreFailed { .. })),
            "{kinds:?}"
        );
        assert!(
            kinds.iter().any(|k| matches!(
                k,
                // Lines may also be dropped before they reach the writer (its queue full).
                EventKind::StoreRecovered { lines_dropped, .. } if *lines_dropped > 0 && *lines_dropped <= dropped
            )),
            "{kinds:?}"
        );
        let counted: u64 = events
            .iter()
            .filter(|e| e.instance == Some(id))
            .filter_map(|e| match e.kind {
                EventKind::LinesDropped { count } => Some(count),
                _ => None,
            })
            .sum();
        assert_eq!(counted, dropped);
    };
    verify(&store);
    store.close().unwrap();
    drop(store);
    let store = Store::open(&path, StoreOptions::default()).unwrap().store;
    verify(&store);
    store.close().unwrap();
}

#[test]
fn two_quick_opens_of_unreadable_files_keep_both_aside_copies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs.redb");
    let first = b"the first damaged store".repeat(100);
    let second = b"the second damaged store".repeat(100);

    std::fs::write(&path, &first).unwrap();
    let opened = Store::open(&path, StoreOptions::default()).unwrap();
    let (_, aside1) = opened.moved_aside.clone().expect("moved aside");
    opened.store.close().unwrap();
    drop(opened);

    // Within the same second: the aside name would be the same.
    std::fs::write(&path, &second).unwrap();
    let opened = Store::open(&path, StoreOptions::default()).unwrap();
    let (_, aside2) = opened.moved_aside.clone().expect("moved aside");
    opened.store.close().unwrap();

    assert_ne!(aside1, aside2);
    assert_eq!(std::fs::read(&aside1).unwrap(), first);
    assert_eq!(std::fs::read(&aside2).unwrap(), second);
    // Nothing else was left behind (no temporary store).
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn a_store_cut_inside_its_header_is_moved_aside() {
    for len in [9u64, 100, 319] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.redb");
        {
            let store = Store::open(&path, StoreOptions::default()).unwrap().store;
            let w = store
                .begin_instance("old", InstanceKind::Run, SpawnInfo::default())
                .unwrap();
            w.append(Stream::Stdout, b"old line\n");
            w.finish(ExitStatus::Code(0)).unwrap();
            store.close().unwrap();
        }
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len).unwrap();
        drop(f);
        let cut = std::fs::read(&path).unwrap();

        let opened = Store::open(&path, StoreOptions::default())
            .unwrap_or_else(|e| panic!("cut to {len} bytes: {e}"));
        let (from, to) = opened.moved_aside.clone().expect("moved aside");
        assert_eq!(from, path);
        assert_eq!(
            std::fs::read(&to).unwrap(),
            cut,
            "the aside copy is the cut file"
        );
        let note = opened.notes.join("\n");
        assert!(note.contains(&path.display().to_string()), "{note}");
        assert!(note.contains(&to.display().to_string()), "{note}");

        let store = opened.store;
        let w = store
            .begin_instance("new", InstanceKind::Run, SpawnInfo::default())
            .unwrap();
        let id = w.id();
        w.append(Stream::Stdout, b"new line\n");
        w.finish(ExitStatus::Code(0)).unwrap();
        store.close().unwrap();
        drop(store);
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        assert!(store.moved_aside.is_none());
        let lines = store
            .store
            .read(id, Window::Head(10), &Filter::default())
            .unwrap();
        assert_eq!(texts(&lines), ["new line"]);
        store.store.close().unwrap();
    }
}

/// Lines "n <seq> <hex noise>" that do not compress, so that blocks fill the file.
fn noisy(seed: u64, from: u64, to: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = String::new();
    for i in from..to {
        out.push_str(&format!("n {i} "));
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push_str(&format!("{x:016x}"));
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// Write 1 MiB of zeros into the middle of the file at `path`, page aligned.
fn damage(path: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(path).unwrap().len();
    assert!(len > 4 << 20, "the store is {len} bytes");
    let at = (len / 2) & !4095;
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&vec![0u8; 1 << 20]).unwrap();
    f.sync_all().unwrap();
}

/// Read every instance in full: each line is what was written, and every line is either
/// read or counted unreadable. Returns the ids of the instances with unreadable lines.
fn read_all(store: &Store, ids: &[u64], lines: u64) -> Vec<u64> {
    let mut damaged = Vec::new();
    for &id in ids {
        let r = store
            .read_report(id, Window::Head(usize::MAX), &Filter::default())
            .unwrap_or_else(|e| panic!("instance {id}: {e}"));
        for l in &r.lines {
            let text = l.text();
            let n: u64 = text.split(' ').nth(1).unwrap().parse().unwrap();
            assert_eq!(n, l.seq, "instance {id} line {} reads {text:?}", l.seq);
        }
        assert_eq!(
            r.lines.len() as u64 + r.unreadable_lines,
            lines,
            "instance {id}: every line is read or counted unreadable"
        );
        let tail = store
            .read_report(id, Window::Tail(10), &Filter::default())
            .unwrap_or_else(|e| panic!("instance {id}: {e}"));
        assert!(tail.lines.len() <= 10);
        if r.unreadable_lines > 0 {
            damaged.push(id);
        }
    }
    damaged
}

/// The disk goes bad under a running store: 1 MiB of its pages turn to zeros. Reads skip
/// the damaged blocks with a count instead of panicking, retention removes the damaged
/// instances without walking their blocks, and the writer goes on writing.
#[test]
fn a_store_damaged_inside_its_pages_keeps_its_readable_history() {
    const LINES: u64 = 1500;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs.redb");
    let procs = ["p0", "p1", "p2", "p3"];
    let mut ids = Vec::new();
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap().store;
        for i in 0..40u64 {
            let w = store
                .begin_instance(
                    procs[i as usize % 4],
                    InstanceKind::Run,
                    SpawnInfo::default(),
                )
                .unwrap();
            ids.push(w.id());
            w.append(Stream::Stdout, &noisy(i, 0, LINES));
            w.finish(ExitStatus::Code(0)).unwrap();
        }
        // With the filters built (their file is beside the store, which looks the same).
        store.flush().unwrap();
        assert!(store.wait_for_filters(std::time::Duration::from_secs(60)));
        store.close().unwrap();
    }
    let store = Store::open(
        &path,
        StoreOptions {
            // A small page cache, so that reads go to the (damaged) file.
            cache_bytes: 64 << 10,
            ..StoreOptions::default()
        },
    )
    .unwrap()
    .store;
    damage(&path);

    let damaged = read_all(&store, &ids, LINES);
    assert!(
        damaged.len() < ids.len(),
        "undamaged instances read in full"
    );
    assert!(
        !damaged.is_empty(),
        "the damage hit no block: the test proves nothing"
    );

    let q = bpm::search::Query {
        pattern: "^n 7".into(),
        ..Default::default()
    };
    let found = bpm::search::search(&store, &ids, &q).unwrap();
    assert!(found.matched > 0);
    assert!(found.unreadable_lines > 0, "{found:?}");

    // Retention removes the damaged instances (all but the newest of each process).
    let limits = bpm::logs::Limits {
        keep_instances: 1,
        ..Default::default()
    };
    for p in procs {
        store.set_limits(p, limits);
    }
    // Something to write wakes retention up.
    let w = store
        .begin_instance("after", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    let after = w.id();
    w.append(Stream::Stdout, b"written after the damage\n");
    w.finish(ExitStatus::Code(0)).unwrap();
    wait_until("retention removes the old instances", 30, || {
        procs.iter().all(|p| {
            store
                .instances(p, InstanceKind::Run)
                .is_ok_and(|l| l.len() == 1)
        })
    });
    // The writer keeps writing.
    let w = store
        .begin_instance("after", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    let again = w.id();
    w.append(Stream::Stdout, b"and again\n");
    w.finish(ExitStatus::Code(0)).unwrap();
    store.flush().unwrap();
    assert!(store.health().writable, "{:?}", store.health());
    for (id, text) in [(after, "written after the damage"), (again, "and again")] {
        let lines = store
            .read(id, Window::Head(10), &Filter::default())
            .unwrap();
        assert_eq!(texts(&lines), [text]);
    }
    let removed: Vec<u64> = store
        .events(None, 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::RetentionRemoved { instance, .. } => Some(instance),
            _ => None,
        })
        .collect();
    let newest = &ids[ids.len() - 4..];
    for id in damaged.iter().filter(|id| !newest.contains(id)) {
        assert!(removed.contains(id), "damaged #{id} removed: {removed:?}");
    }
    store.close().unwrap();
    drop(store);

    // Opened again, the damage is found on open only by redb's debug builds (which walk
    // every page when opening): then the file is moved aside, and stays readable offline.
    let opened = Store::open(&path, StoreOptions::default()).unwrap();
    let damaged_file = match &opened.moved_aside {
        None => path.clone(),
        Some((_, aside)) => {
            let debug_build = cfg!(debug_assertions);
            assert!(debug_build, "{:?}", opened.notes);
            aside.clone()
        }
    };
    opened.store.close().unwrap();
    drop(opened);
    let survivors: Vec<u64> = newest.to_vec();
    let ro = Store::open_read_only(&damaged_file).unwrap();
    read_all(&ro, &survivors, LINES);
}

/// A damaged file read offline (`bpm logs` without a daemon) answers, never panics.
#[test]
fn a_damaged_store_read_offline_does_not_panic() {
    const LINES: u64 = 1500;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs.redb");
    let mut ids = Vec::new();
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap().store;
        for i in 0..40u64 {
            let w = store
                .begin_instance(
                    &format!("p{}", i % 4),
                    InstanceKind::Run,
                    SpawnInfo::default(),
                )
                .unwrap();
            ids.push(w.id());
            w.append(Stream::Stdout, &noisy(i, 0, LINES));
            w.finish(ExitStatus::Code(0)).unwrap();
        }
        // With the filters built (their file is beside the store, which looks the same).
        store.flush().unwrap();
        assert!(store.wait_for_filters(std::time::Duration::from_secs(60)));
        store.close().unwrap();
    }
    damage(&path);
    let ro = Store::open_read_only(&path).unwrap();
    let damaged = read_all(&ro, &ids, LINES);
    assert!(
        damaged.len() < ids.len(),
        "undamaged instances read in full"
    );
    assert!(
        !damaged.is_empty(),
        "the damage hit no block: the test proves nothing"
    );
    assert_eq!(ro.instances("p0", InstanceKind::Run).unwrap().len(), 10);
}
