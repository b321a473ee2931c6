//! The filter file beside the store is advisory: damaged, cut short, of another store, or
//! impossible to write, it costs searches reads, never a wrong answer, and it is built
//! again once it can be. The store goes on as if it did not exist.

use std::path::Path;
use std::time::Duration;

use bpm::logs::{
    ExitStatus, InstanceKind, SpawnInfo, Store, StoreOptions, Stream, filter_file_path,
};
use bpm::search::{self, Query};

use crate::helpers::tempdir;

const CATCH_UP: Duration = Duration::from_secs(60);
const RUNS: u64 = 3;
const LINES: u64 = 20_000;

fn opts() -> StoreOptions {
    StoreOptions {
        filter_idle: Duration::from_millis(50),
        ..StoreOptions::default()
    }
}

/// Lines with a rare marker every 5,000 lines, in `RUNS` instances of enough blocks.
fn fill(store: &Store) -> Vec<u64> {
    let mut ids = Vec::new();
    for run in 0..RUNS {
        let w = store
            .begin_instance("web", InstanceKind::Run, SpawnInfo::default())
            .unwrap();
        let mut text = String::new();
        for i in 0..LINES {
            if i % 5000 == 4999 {
                text.push_str(&format!("{run} {i} ERROR needle-xyzzy refused\n"));
            } else {
                text.push_str(&format!(
                    "{run} {i} INFO request handled path=/api/items/{} took={}ms\n",
                    i * 7 % 1009,
                    i % 97
                ));
            }
        }
        w.append(Stream::Stdout, text.as_bytes());
        ids.push(w.id());
        w.finish(ExitStatus::Code(0)).unwrap();
    }
    store.flush().unwrap();
    ids
}

/// Searches answer exactly as a scan of every block, and find what was written.
fn exact(store: &Store, ids: &[u64]) {
    for (pattern, expect) in [
        ("needle-xyzzy", RUNS * LINES / 5000),
        ("NEEDLE.*refused", 0),
        ("took=96ms", RUNS * (LINES / 97 + 1)),
        ("xyzzy-needle", 0),
    ] {
        let q = Query {
            pattern: pattern.into(),
            ..Query::default()
        };
        let filtered = search::search(store, ids, &q).unwrap();
        let full = search::search_without_filters(store, ids, &q).unwrap();
        assert_eq!(filtered, full, "`{pattern}`");
        if pattern != "took=96ms" {
            assert_eq!(filtered.matched, expect, "`{pattern}`");
        } else {
            assert!(filtered.matched > 0);
        }
    }
}

fn all_filtered(store: &Store) {
    assert!(store.wait_for_filters(CATCH_UP), "the builder caught up");
    let s = store.block_stats().unwrap();
    assert!(s.blocks > 10, "{s:?}");
    assert_eq!(s.filtered_blocks, s.blocks, "{s:?}");
}

#[derive(Clone, Copy, Debug)]
enum Harm {
    /// Zeros over the second half of the file.
    Zeros,
    /// Cut to a third of its length.
    Truncated,
    /// Another store's filter file in its place.
    OtherStore,
}

fn harm(file: &Path, how: Harm, other: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(file).unwrap().len();
    match how {
        Harm::Zeros => {
            let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
            f.seek(SeekFrom::Start(len / 2)).unwrap();
            f.write_all(&vec![0; (len - len / 2) as usize]).unwrap();
            f.sync_all().unwrap();
        }
        Harm::Truncated => {
            let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
            f.set_len(len / 3).unwrap();
        }
        Harm::OtherStore => {
            std::fs::copy(other, file).unwrap();
        }
    }
}

#[test]
fn a_harmed_filter_file_is_built_again_and_searches_stay_exact() {
    for how in [Harm::Zeros, Harm::Truncated, Harm::OtherStore] {
        let dir = tempdir();
        // Another store with the same instance ids and other lines.
        let other = dir.path().join("other.redb");
        {
            let store = Store::open(&other, opts()).unwrap().store;
            let w = store
                .begin_instance("web", InstanceKind::Run, SpawnInfo::default())
                .unwrap();
            w.append(Stream::Stdout, "nothing to see\n".repeat(50_000).as_bytes());
            w.finish(ExitStatus::Code(0)).unwrap();
            store.flush().unwrap();
            assert!(store.wait_for_filters(CATCH_UP));
            store.close().unwrap();
        }
        let path = dir.path().join("logs.redb");
        let file = filter_file_path(&path);
        let store = Store::open(&path, opts()).unwrap().store;
        let ids = fill(&store);
        all_filtered(&store);
        exact(&store, &ids);
        store.close().unwrap();
        drop(store);

        harm(&file, how, &filter_file_path(&other));
        let store = Store::open(&path, opts()).unwrap().store;
        exact(&store, &ids);
        all_filtered(&store);
        exact(&store, &ids);
        store.close().unwrap();
        eprintln!("{how:?}: built again, searches exact");
    }
}

/// A filter file that cannot be made (its name is taken by a directory) leaves the store
/// as it is: lines are stored, searches read every block; once the name is free again the
/// filters are built.
#[test]
fn a_filter_file_that_cannot_be_written_does_not_touch_the_store() {
    let dir = tempdir();
    let path = dir.path().join("logs.redb");
    let file = filter_file_path(&path);
    std::fs::create_dir(&file).unwrap();
    let store = Store::open(&path, opts()).unwrap().store;
    let ids = fill(&store);
    assert!(store.health().writable);
    assert_eq!(store.dropped_lines(), 0);
    assert!(store.filters_pending().unwrap() >= RUNS * LINES);
    assert!(!store.wait_for_filters(Duration::from_millis(300)));
    exact(&store, &ids);
    assert_eq!(store.block_stats().unwrap().filtered_blocks, 0);
    std::fs::remove_dir(&file).unwrap();
    all_filtered(&store);
    exact(&store, &ids);
    store.close().unwrap();
}

/// Instance ids are never given twice, also once retention removed the newest instance
/// and the store was reopened: the filter file (and clients) name instances by id.
#[test]
fn an_instance_id_is_never_given_twice() {
    let dir = tempdir();
    let path = dir.path().join("logs.redb");
    let store = Store::open(&path, opts()).unwrap().store;
    let w = store
        .begin_instance("gone", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    let removed = w.id();
    w.append(Stream::Stdout, b"soon gone\n");
    w.finish(ExitStatus::Code(0)).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(store.remove_logs("gone"))
        .unwrap();
    store.close().unwrap();
    drop(store);
    let store = Store::open(&path, opts()).unwrap().store;
    let w = store
        .begin_instance("new", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    assert!(w.id() > removed, "id {} given again", w.id());
    w.finish(ExitStatus::Code(0)).unwrap();
    store.close().unwrap();
}
