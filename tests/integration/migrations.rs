//! Stores written by earlier schema versions stay readable; stores written by later ones are
//! refused without being touched.
//!
//! `migrations/fixtures/vN.redb` is a frozen store written by schema version N (by the
//! ignored generators below; run one only to create a fixture for a new version, never to
//! rewrite an existing one). Versions 4 and 5 (block filters) are in `migrations_filters.rs`.

use std::path::{Path, PathBuf};

use bpm::logs::{
    Actor, EventKind, ExitStatus, Filter, InstanceKind, Line, SCHEMA_VERSION, SpawnInfo, Store,
    StoreError, StoreOptions, Stream, Window,
};

use crate::helpers::store::read_texts;
use crate::helpers::tempdir;

/// Line timestamps of the fixture: fixed, so the test can check them exactly.
pub(crate) const TS: i64 = 1_700_000_000_000_000;

pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations/fixtures")
        .join(name)
}

/// Writes `migrations/fixtures/v1.redb`. Run with
/// `cargo test --test integration -- --ignored --exact migrations::generate_v1_fixture`.
#[test]
#[ignore = "writes the frozen v1 fixture; run once, by hand"]
fn generate_v1_fixture() {
    assert_eq!(SCHEMA_VERSION, 1, "this generator writes a version 1 store");
    let path = fixture("v1.redb");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    let store = Store::open(
        &path,
        StoreOptions {
            max_line: 16,
            ..StoreOptions::default()
        },
    )
    .unwrap()
    .store;
    store.put_process("web", b"web spec v1".to_vec()).unwrap();
    store
        .put_process("worker", b"worker spec v1".to_vec())
        .unwrap();
    let spawn = SpawnInfo {
        pid: Some(4242),
        pgid: Some(4242),
        start_time: Some(99),
        argv: vec!["npm".into(), "run".into(), "dev".into()],
        cwd: "/srv/web".into(),
    };

    // #1: web run, with stderr, a continuation, invalid UTF-8 and CRLF.
    let w = store
        .begin_instance("web", InstanceKind::Run, spawn.clone())
        .unwrap();
    assert_eq!(w.id(), 1);
    w.append_at(Stream::Stdout, b"listening :8080\n", TS);
    w.append_at(Stream::Stderr, b"warn: slow start\n", TS + 1);
    w.append_at(Stream::Stdout, b"0123456789abcdefXYZ\n", TS + 2);
    w.append_at(Stream::Stdout, b"bad \xff\xfe bytes\n", TS + 3);
    w.append_at(Stream::Stderr, b"crlf\r\n", TS + 4);
    store.record(
        Some("web"),
        Some(1),
        EventKind::Note {
            text: "hello from v1".into(),
        },
    );
    w.finish(ExitStatus::Code(0)).unwrap();

    // #2: web build.
    let w = store
        .begin_instance("web", InstanceKind::Build, SpawnInfo::default())
        .unwrap();
    w.append_at(Stream::Stdout, b"compiling\n", TS + 10);
    w.append_at(Stream::Stderr, b"warning: unused\n", TS + 11);
    w.finish(ExitStatus::Code(0)).unwrap();

    // #3: web run, killed.
    let w = store
        .begin_instance("web", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    w.append_at(Stream::Stdout, b"second run\n", TS + 20);
    store.record(
        Some("web"),
        Some(3),
        EventKind::StopRequested { by: Actor::Cli },
    );
    w.finish(ExitStatus::Signal(15)).unwrap();

    // #4: worker run, with a final line without newline.
    let w = store
        .begin_instance("worker", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    w.append_at(Stream::Stdout, b"working\nno newline", TS + 30);
    w.finish(ExitStatus::Code(1)).unwrap();
    store.record(
        Some("worker"),
        Some(4),
        EventKind::CrashDetected {
            status: ExitStatus::Code(1),
            crash_count: 2,
        },
    );

    // #5: worker build, failed.
    let w = store
        .begin_instance("worker", InstanceKind::Build, SpawnInfo::default())
        .unwrap();
    w.append_at(Stream::Stderr, b"error: boom\n", TS + 40);
    w.finish(ExitStatus::Code(101)).unwrap();
    store.record(None, None, EventKind::DaemonStopped);
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

fn line(seq: u64, ts: i64, stream: Stream, cont: bool, bytes: &[u8]) -> Line {
    Line {
        instance: 1,
        seq,
        ts_us: ts,
        stream,
        continuation: cont,
        bytes: bytes.to_vec(),
    }
}

fn copy_fixture(dir: &Path) -> PathBuf {
    let path = dir.join("logs.redb");
    std::fs::copy(fixture("v1.redb"), &path).unwrap();
    path
}

/// A copy of the v1 fixture, opened (the copy's directory goes with it).
fn open_fixture_copy() -> (tempfile::TempDir, bpm::logs::Opened) {
    let dir = tempdir();
    let path = copy_fixture(dir.path());
    let opened = Store::open(&path, StoreOptions::default()).unwrap();
    (dir, opened)
}

#[test]
fn the_v1_fixture_opens_cleanly_with_its_processes() {
    let (_dir, opened) = open_fixture_copy();
    assert!(!opened.unclean, "the fixture was closed cleanly");
    assert!(opened.interrupted.is_empty());
    assert!(opened.moved_aside.is_none());
    let store = opened.store;

    assert_eq!(store.process_names().unwrap(), ["web", "worker"]);
    assert_eq!(
        store.processes().unwrap(),
        [
            ("web".to_owned(), b"web spec v1".to_vec()),
            ("worker".to_owned(), b"worker spec v1".to_vec())
        ]
    );
    store.close().unwrap();
}

#[test]
fn the_v1_fixture_keeps_its_instances_and_their_metadata() {
    let (_dir, opened) = open_fixture_copy();
    let store = opened.store;
    let ids = |p, k| -> Vec<(u64, Option<ExitStatus>)> {
        store
            .instances(p, k)
            .unwrap()
            .into_iter()
            .map(|m| (m.id, m.exit))
            .collect()
    };
    use ExitStatus::{Code, Signal};
    assert_eq!(
        ids("web", InstanceKind::Run),
        [(1, Some(Code(0))), (3, Some(Signal(15)))]
    );
    assert_eq!(ids("web", InstanceKind::Build), [(2, Some(Code(0)))]);
    assert_eq!(ids("worker", InstanceKind::Run), [(4, Some(Code(1)))]);
    assert_eq!(ids("worker", InstanceKind::Build), [(5, Some(Code(101)))]);

    let m = store.resolve("web", InstanceKind::Run, 0).unwrap();
    assert_eq!(m.process, "web");
    assert_eq!(m.kind, InstanceKind::Run);
    assert_eq!(m.next_seq, 6);
    assert_eq!(m.first_seq, 0);
    assert_eq!(m.dropped_lines, 0);
    assert!(m.stored_bytes > 0);
    assert!(m.ended_us.is_some_and(|e| e >= m.started_us));
    assert_eq!(
        m.spawn,
        SpawnInfo {
            pid: Some(4242),
            pgid: Some(4242),
            start_time: Some(99),
            argv: vec!["npm".into(), "run".into(), "dev".into()],
            cwd: "/srv/web".into(),
        }
    );

    store.close().unwrap();
}

#[test]
fn the_v1_fixture_keeps_every_line_exactly() {
    let (_dir, opened) = open_fixture_copy();
    let store = opened.store;
    let all = store
        .read(1, Window::Head(usize::MAX), &Filter::default())
        .unwrap();
    assert_eq!(
        all,
        [
            line(0, TS, Stream::Stdout, false, b"listening :8080"),
            line(1, TS + 1, Stream::Stderr, false, b"warn: slow start"),
            line(2, TS + 2, Stream::Stdout, false, b"0123456789abcdef"),
            line(3, TS + 2, Stream::Stdout, true, b"XYZ"),
            line(4, TS + 3, Stream::Stdout, false, b"bad \xff\xfe bytes"),
            line(5, TS + 4, Stream::Stderr, false, b"crlf"),
        ]
    );
    let errs = store
        .read(
            1,
            Window::Tail(10),
            &Filter {
                stream: Some(Stream::Stderr),
                ..Filter::default()
            },
        )
        .unwrap();
    assert_eq!(errs.iter().map(|l| l.seq).collect::<Vec<_>>(), [1, 5]);
    let texts = |id| read_texts(&store, id, Window::Head(100));
    assert_eq!(texts(2), ["compiling", "warning: unused"]);
    assert_eq!(texts(3), ["second run"]);
    assert_eq!(texts(4), ["working", "no newline"]);
    assert_eq!(texts(5), ["error: boom"]);

    store.close().unwrap();
}

#[test]
fn the_v1_fixture_keeps_its_events() {
    let (_dir, opened) = open_fixture_copy();
    let store = opened.store;
    use ExitStatus::Code;
    let kinds = |p| -> Vec<(Option<String>, Option<u64>, EventKind)> {
        store
            .events(p, 100)
            .unwrap()
            .into_iter()
            .map(|e| (e.process, e.instance, e.kind))
            .collect()
    };
    let note = (
        Some("web".to_owned()),
        Some(1),
        EventKind::Note {
            text: "hello from v1".into(),
        },
    );
    let stop = (
        Some("web".to_owned()),
        Some(3),
        EventKind::StopRequested { by: Actor::Cli },
    );
    let crash = (
        Some("worker".to_owned()),
        Some(4),
        EventKind::CrashDetected {
            status: Code(1),
            crash_count: 2,
        },
    );
    let stopped = (None, None, EventKind::DaemonStopped);
    assert_eq!(kinds(Some("web")), [note.clone(), stop.clone()]);
    assert_eq!(kinds(Some("worker")), std::slice::from_ref(&crash));
    assert_eq!(kinds(None), [note, stop, crash, stopped]);

    store.close().unwrap();
}

#[test]
fn a_migrated_store_goes_on_numbering_instances() {
    let (_dir, opened) = open_fixture_copy();
    let store = opened.store;
    // New instances continue the numbering.
    let w = store
        .begin_instance("web", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    assert_eq!(w.id(), 6);
    w.append(Stream::Stdout, b"new\n");
    w.finish(ExitStatus::Code(0)).unwrap();
    assert_eq!(store.resolve("web", InstanceKind::Run, -1).unwrap().id, 6);
    store.close().unwrap();
}

#[test]
fn a_store_from_a_newer_bpm_is_refused_and_left_untouched() {
    let dir = tempdir();
    let path = copy_fixture(dir.path());
    {
        const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();

    let err = Store::open(&path, StoreOptions::default())
        .err()
        .expect("a version 99 store must be refused");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            StoreError::TooNew {
                found: 99,
                supported: SCHEMA_VERSION,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("99"), "{msg}");
    assert!(
        msg.contains(&format!("reads up to {SCHEMA_VERSION}")),
        "{msg}"
    );
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the file was changed"
    );

    let err = Store::open_read_only(&path)
        .err()
        .expect("refused read-only too");
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the file was changed"
    );
    // Nothing was moved aside either.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["logs.redb"]);
}

/// Writes `migrations/fixtures/v2.redb`. Run with
/// `cargo test --test migrations -- --ignored generate_v2_fixture`.
#[test]
#[ignore = "writes the frozen v2 fixture; run once, by hand"]
fn generate_v2_fixture() {
    assert_eq!(SCHEMA_VERSION, 2, "this generator writes a version 2 store");
    let path = fixture("v2.redb");
    let _ = std::fs::remove_file(&path);
    let store = Store::open(&path, StoreOptions::default()).unwrap().store;
    let w = store
        .begin_instance("web", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    assert_eq!(w.id(), 1);
    w.append_at(Stream::Stdout, b"before the disk filled up\n", TS);
    store.record(
        None,
        None,
        EventKind::StoreFailed {
            error: "No space left on device (os error 28)".into(),
            lines_pending: 12,
        },
    );
    store.record(Some("web"), Some(1), EventKind::LinesDropped { count: 7 });
    store.record(
        None,
        None,
        EventKind::StoreRecovered {
            failed_for_ms: 1500,
            lines_dropped: 7,
            attempts: 6,
        },
    );
    w.append_at(Stream::Stdout, b"after it healed\n", TS + 1);
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

#[test]
fn the_v2_fixture_reads_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs.redb");
    std::fs::copy(fixture("v2.redb"), &path).unwrap();
    let opened = Store::open(&path, StoreOptions::default()).unwrap();
    assert!(!opened.unclean);
    assert!(opened.moved_aside.is_none());
    let store = opened.store;
    // Migrated to version 3: its one run is web's #1.
    assert_eq!(numbers(&store, "web", InstanceKind::Run), [(1, 1)]);
    let texts: Vec<_> = store
        .read(1, Window::Head(10), &Filter::default())
        .unwrap()
        .iter()
        .map(|l| (l.ts_us, l.text().into_owned()))
        .collect();
    assert_eq!(
        texts,
        [
            (TS, "before the disk filled up".to_owned()),
            (TS + 1, "after it healed".to_owned())
        ]
    );
    let kinds: Vec<_> = store
        .events(None, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::StoreFailed {
                error: "No space left on device (os error 28)".into(),
                lines_pending: 12,
            },
            EventKind::LinesDropped { count: 7 },
            EventKind::StoreRecovered {
                failed_for_ms: 1500,
                lines_dropped: 7,
                attempts: 6,
            },
        ]
    );
    store.close().unwrap();
}

/// The numbers of a process's instances of one kind, oldest first.
fn numbers(store: &Store, process: &str, kind: InstanceKind) -> Vec<(u64, u64)> {
    store
        .instances(process, kind)
        .unwrap()
        .iter()
        .map(|m| (m.id, m.number))
        .collect()
}

#[test]
fn a_v1_store_gets_its_instances_numbered_per_process_by_order() {
    let (_dir, opened) = open_fixture_copy();
    let store = opened.store;
    // The fixture: #1 web run, #2 web build, #3 web run, #4 worker run, #5 worker build.
    assert_eq!(numbers(&store, "web", InstanceKind::Run), [(1, 1), (3, 2)]);
    assert_eq!(numbers(&store, "web", InstanceKind::Build), [(2, 1)]);
    assert_eq!(numbers(&store, "worker", InstanceKind::Run), [(4, 1)]);
    assert_eq!(numbers(&store, "worker", InstanceKind::Build), [(5, 1)]);
    // New instances go on from there, per process and kind.
    let w = store
        .begin_instance("web", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    w.finish(ExitStatus::Code(0)).unwrap();
    assert_eq!(
        store
            .resolve_number("web", InstanceKind::Run, 3)
            .unwrap()
            .id,
        6
    );
    assert_eq!(store.instance(6).unwrap().number, 3);
    store.close().unwrap();
}

/// Writes `migrations/fixtures/v3.redb`. Run with
/// `cargo test --test integration -- --ignored --exact migrations::generate_v3_fixture`.
#[test]
#[ignore = "writes the frozen v3 fixture; run once, by hand"]
fn generate_v3_fixture() {
    assert_eq!(SCHEMA_VERSION, 3, "this generator writes a version 3 store");
    let path = fixture("v3.redb");
    let _ = std::fs::remove_file(&path);
    let store = Store::open(&path, StoreOptions::default()).unwrap().store;
    // Two runs kept of `web`: retention removes its first two of four.
    store.set_limits(
        "web",
        bpm::logs::Limits {
            keep_instances: 2,
            ..bpm::logs::Limits::default()
        },
    );
    for (i, process) in ["web", "api", "web", "web", "api", "web"]
        .iter()
        .enumerate()
    {
        let w = store
            .begin_instance(process, InstanceKind::Run, SpawnInfo::default())
            .unwrap();
        w.append_at(Stream::Stdout, format!("{process} {i}\n").as_bytes(), TS);
        w.finish(ExitStatus::Code(0)).unwrap();
        store.flush().unwrap();
    }
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

#[test]
fn the_v3_fixture_keeps_its_numbers_after_retention() {
    let dir = tempdir();
    let path = dir.path().join("logs.redb");
    std::fs::copy(fixture("v3.redb"), &path).unwrap();
    let store = Store::open(&path, StoreOptions::default()).unwrap().store;
    // web: ids 1, 3, 4, 6 were its runs #1..#4; retention kept the last two.
    assert_eq!(numbers(&store, "web", InstanceKind::Run), [(4, 3), (6, 4)]);
    assert_eq!(numbers(&store, "api", InstanceKind::Run), [(2, 1), (5, 2)]);
    let text = |id| read_texts(&store, id, Window::Head(1));
    assert_eq!(text(4), ["web 3"]);
    // A number is never given twice, also after its instance was removed.
    let w = store
        .begin_instance("web", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    w.finish(ExitStatus::Code(0)).unwrap();
    assert_eq!(store.instance(7).unwrap().number, 5);
    let err = store
        .resolve_number("web", InstanceKind::Run, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no run #1") && err.contains("#3..#5"), "{err}");
    store.close().unwrap();
}
