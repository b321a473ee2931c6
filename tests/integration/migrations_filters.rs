//! Schema versions 4 and 5: block filters in the store (4), then in a file of their own
//! beside it (5). See `migrations.rs` for the fixtures' rules.

use std::time::Duration;

use bpm::logs::{
    ExitStatus, InstanceKind, SCHEMA_VERSION, SpawnInfo, Store, StoreOptions, Stream,
    filter_file_path,
};
use redb::{ReadableDatabase, ReadableTable, TableHandle};

use crate::helpers::tempdir;
use crate::migrations::{TS, fixture};

const CATCH_UP: Duration = Duration::from_secs(60);

/// Writes `migrations/fixtures/v4.redb`. Run with
/// `cargo test --test integration -- --ignored --exact migrations::generate_v4_fixture`.
#[test]
#[ignore = "writes the frozen v4 fixture; run once, by hand"]
fn generate_v4_fixture() {
    assert_eq!(SCHEMA_VERSION, 4, "this generator writes a version 4 store");
    let path = fixture("v4.redb");
    let _ = std::fs::remove_file(&path);
    let store = Store::open(
        &path,
        StoreOptions {
            block_filters: true,
            ..StoreOptions::default()
        },
    )
    .unwrap()
    .store;
    let w = store
        .begin_instance("web", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    // Three blocks: the marker in the middle one only, one line coloured.
    for block in 0..3u64 {
        let mut text = String::new();
        for i in 0..1200u64 {
            let n = block * 1200 + i;
            if block == 1 && i == 600 {
                text.push_str("ERROR \x1b[31mneedle\x1b[0m-xyzzy db:5432\n");
            } else {
                text.push_str(&format!("{n:08} INFO request handled path=/api/items\n"));
            }
        }
        w.append_at(Stream::Stdout, text.as_bytes(), TS + block as i64);
        w.seal();
    }
    w.finish(ExitStatus::Code(0)).unwrap();
    store.flush().unwrap();
    store.close().unwrap();
    drop(store);

    let mut db = redb::Database::create(&path).unwrap();
    while db.compact().unwrap() {}
    drop(db);
    println!(
        "wrote {} ({} bytes)",
        path.display(),
        std::fs::metadata(&path).unwrap().len()
    );
}

/// Writes `migrations/fixtures/v5.redb`. Run with
/// `cargo test --test integration -- --ignored --exact migrations_filters::generate_v5_fixture`.
#[test]
#[ignore = "writes the frozen v5 fixture; run once, by hand"]
fn generate_v5_fixture() {
    assert_eq!(SCHEMA_VERSION, 5, "this generator writes a version 5 store");
    let path = fixture("v5.redb");
    let _ = std::fs::remove_file(&path);
    let store = Store::open(&path, StoreOptions::default()).unwrap().store;
    let mut ids = Vec::new();
    // Two runs; the first is removed, so the store marks ids as given past the last one
    // it keeps. Three blocks in the second, the marker in the middle one only.
    for run in 0..2u64 {
        let w = store
            .begin_instance("web", InstanceKind::Run, SpawnInfo::default())
            .unwrap();
        ids.push(w.id());
        for block in 0..3u64 {
            let mut text = String::new();
            for i in 0..1200u64 {
                let n = block * 1200 + i;
                if run == 1 && block == 1 && i == 600 {
                    text.push_str("ERROR \x1b[31mneedle\x1b[0m-xyzzy db:5432\n");
                } else {
                    text.push_str(&format!("{n:08} INFO request handled path=/api/items\n"));
                }
            }
            w.append_at(Stream::Stdout, text.as_bytes(), TS + block as i64);
            w.seal();
        }
        w.finish(ExitStatus::Code(0)).unwrap();
    }
    store.set_limits(
        "web",
        bpm::logs::Limits {
            keep_instances: 1,
            ..bpm::logs::Limits::default()
        },
    );
    store.flush().unwrap();
    assert!(store.wait_for_filters(CATCH_UP));
    store.close().unwrap();
    drop(store);
    let _ = std::fs::remove_file(filter_file_path(&path));

    let mut db = redb::Database::create(&path).unwrap();
    while db.compact().unwrap() {}
    drop(db);
    println!(
        "wrote {} ({} bytes)",
        path.display(),
        std::fs::metadata(&path).unwrap().len()
    );
}

fn search_texts(store: &Store, id: u64, pattern: &str, case_insensitive: bool) -> Vec<String> {
    let q = bpm::search::Query {
        pattern: pattern.into(),
        case_insensitive,
        ..Default::default()
    };
    let found = bpm::search::search(store, &[id], &q).unwrap();
    assert_eq!(
        found,
        bpm::search::search_without_filters(store, &[id], &q).unwrap()
    );
    found
        .hits
        .iter()
        .map(|h| h.line.text().into_owned())
        .collect()
}

/// The names of the store's tables and its `meta` entries.
fn tables_and_meta(path: &std::path::Path) -> (Vec<String>, Vec<(String, u64)>) {
    let db = redb::ReadOnlyDatabase::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let tables = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_owned())
        .collect();
    let meta = txn
        .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
        .unwrap()
        .iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.value().to_owned(), v.value())
        })
        .collect();
    (tables, meta)
}

#[test]
fn the_v4_fixture_loses_its_filter_table_and_gets_a_filter_file() {
    let dir = tempdir();
    let path = dir.path().join("logs.redb");
    std::fs::copy(fixture("v4.redb"), &path).unwrap();
    let (tables, _) = tables_and_meta(&path);
    assert!(tables.iter().any(|t| t == "block_filters"), "{tables:?}");
    let store = Store::open(&path, StoreOptions::default()).unwrap().store;
    assert!(store.wait_for_filters(CATCH_UP));
    let stats = store.block_stats().unwrap();
    assert_eq!((stats.blocks, stats.filtered_blocks), (3, 3), "{stats:?}");
    assert!(stats.filter_bytes * 10 <= stats.block_bytes, "{stats:?}");
    let marker = ["ERROR \x1b[31mneedle\x1b[0m-xyzzy db:5432"];
    assert_eq!(search_texts(&store, 1, "needle-xyzzy", false), marker);
    assert_eq!(search_texts(&store, 1, "NEEDLE-XYZ", true), marker);
    assert_eq!(
        search_texts(&store, 1, "00001799 INFO", false),
        ["00001799 INFO request handled path=/api/items"]
    );
    assert!(search_texts(&store, 1, "xyzzy-needle", false).is_empty());
    store.close().unwrap();
    drop(store);
    let (tables, meta) = tables_and_meta(&path);
    assert!(!tables.iter().any(|t| t == "block_filters"), "{tables:?}");
    let get = |k: &str| meta.iter().find(|(m, _)| m == k).map(|(_, v)| *v);
    assert_eq!(get("schema_version"), Some(5));
    assert!(get("store_id").is_some_and(|id| id != 0), "{meta:?}");
    assert!(filter_file_path(&path).exists());
}

#[test]
fn the_v5_fixture_reads_exactly_and_keeps_its_id() {
    let dir = tempdir();
    let path = dir.path().join("logs.redb");
    std::fs::copy(fixture("v5.redb"), &path).unwrap();
    let (tables, meta) = tables_and_meta(&path);
    assert!(!tables.iter().any(|t| t == "block_filters"), "{tables:?}");
    let get = |k: &str| meta.iter().find(|(m, _)| m == k).map(|(_, v)| *v);
    let id = get("store_id").expect("a store id");
    assert_eq!(get("next_instance"), Some(3));
    let store = Store::open(&path, StoreOptions::default()).unwrap().store;
    // Run 1 was removed by retention; its id is not given again.
    let kept = store.instances("web", InstanceKind::Run).unwrap();
    assert_eq!(kept.iter().map(|m| m.id).collect::<Vec<_>>(), [2]);
    assert!(
        store.wait_for_filters(CATCH_UP),
        "filters built for the fixture"
    );
    let stats = store.block_stats().unwrap();
    assert_eq!((stats.blocks, stats.filtered_blocks), (3, 3), "{stats:?}");
    assert_eq!(
        search_texts(&store, 2, "needle-xyzzy", false),
        ["ERROR \x1b[31mneedle\x1b[0m-xyzzy db:5432"]
    );
    let w = store
        .begin_instance("web", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    assert_eq!(w.id(), 3);
    w.finish(ExitStatus::Code(0)).unwrap();
    store.close().unwrap();
    drop(store);
    assert_eq!(
        tables_and_meta(&path)
            .1
            .iter()
            .find(|(m, _)| m == "store_id")
            .map(|(_, v)| *v),
        Some(id)
    );
}

#[test]
fn blocks_from_before_version_5_get_filters_in_the_background() {
    let dir = tempdir();
    let path = dir.path().join("logs.redb");
    std::fs::copy(fixture("v3.redb"), &path).unwrap();
    let store = Store::open(&path, StoreOptions::default()).unwrap().store;
    let before = store.block_stats().unwrap();
    assert!(before.blocks > 0);
    assert_eq!(search_texts(&store, 4, "WEB 3", true), ["web 3"]);
    assert!(store.wait_for_filters(CATCH_UP));
    let after = store.block_stats().unwrap();
    assert_eq!(after.filtered_blocks, after.blocks, "{after:?}");
    assert_eq!(search_texts(&store, 4, "WEB 3", true), ["web 3"]);
    // New blocks get filters too.
    let w = store
        .begin_instance("web", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    let id = w.id();
    w.append_at(Stream::Stdout, b"after the migration\n", TS);
    w.finish(ExitStatus::Code(0)).unwrap();
    store.flush().unwrap();
    assert!(store.wait_for_filters(CATCH_UP));
    let last = store.block_stats().unwrap();
    assert_eq!(last.filtered_blocks, after.filtered_blocks + 1);
    assert_eq!(
        search_texts(&store, id, "migration", false),
        ["after the migration"]
    );
    store.close().unwrap();
}
