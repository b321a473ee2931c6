//! The log store against a real redb file on disk.

use bpm::logs::{
    EventKind, ExitStatus, Filter, InstanceKind, Limits, SpawnInfo, Store, StoreError,
    StoreOptions, Stream, Window,
};
use bpm::search::{self, Query, SearchError};

use crate::helpers::store::{open, texts};
use crate::helpers::{DEADLINE, tempdir, wait_for};

fn numbered(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn lines_survive_close_and_reopen() {
    let dir = tempdir();
    let path = dir.path().join("logs.redb");
    let store = open(&path);
    let w = store
        .begin_instance("web", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    let id = w.id();
    w.append(Stream::Stdout, &numbered(5000));
    w.append(Stream::Stderr, b"oops\nfinal without newline");
    // Readable before anything is durable: the ring answers.
    let tail = store.read(id, Window::Tail(2), &Filter::default()).unwrap();
    assert_eq!(texts(&tail), ["line 4999", "oops"]);
    w.finish(ExitStatus::Code(3)).unwrap();
    store.close().unwrap();

    let opened = Store::open(&path, StoreOptions::default()).unwrap();
    assert!(!opened.unclean);
    assert!(opened.interrupted.is_empty());
    let store = opened.store;
    let meta = store.resolve("web", InstanceKind::Run, -1).unwrap();
    assert_eq!(meta.id, id);
    assert_eq!(meta.exit, Some(ExitStatus::Code(3)));
    assert_eq!(meta.next_seq, 5002);
    let tail = store.read(id, Window::Tail(3), &Filter::default()).unwrap();
    assert_eq!(texts(&tail), ["line 4999", "oops", "final without newline"]);
    assert_eq!(tail[2].seq, 5001);
    assert_eq!(tail[2].stream, Stream::Stderr);
    let head = store.read(id, Window::Head(2), &Filter::default()).unwrap();
    assert_eq!(texts(&head), ["line 0", "line 1"]);
    let mid = store
        .read(
            id,
            Window::Seqs {
                from: 2500,
                to: 2503,
            },
            &Filter::default(),
        )
        .unwrap();
    assert_eq!(texts(&mid), ["line 2500", "line 2501", "line 2502"]);
    let errs = store
        .read(
            id,
            Window::Tail(10),
            &Filter {
                stream: Some(Stream::Stderr),
                ..Filter::default()
            },
        )
        .unwrap();
    assert_eq!(texts(&errs), ["oops", "final without newline"]);
    store.close().unwrap();
}

#[test]
fn instance_indexes_and_range_errors() {
    let dir = tempdir();
    let store = open(&dir.path().join("s.redb"));
    let mut ids = Vec::new();
    for i in 0..3 {
        let w = store
            .begin_instance("api", InstanceKind::Run, SpawnInfo::default())
            .unwrap();
        w.append(Stream::Stdout, format!("run {i}\n").as_bytes());
        ids.push(w.id());
        w.finish(ExitStatus::Code(i)).unwrap();
    }
    let at = |i| store.resolve("api", InstanceKind::Run, i).unwrap().id;
    assert_eq!(at(-1), ids[2]);
    assert_eq!(at(-2), ids[1]);
    assert_eq!(at(-3), ids[0]);
    assert_eq!(at(0), ids[0]);
    assert_eq!(at(2), ids[2]);
    let err = store.resolve("api", InstanceKind::Run, -4).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::IndexOutOfRange { count: 3, .. }),
        "{msg}"
    );
    assert!(msg.contains("-1..-3") && msg.contains("0..2"), "{msg}");
    let err = store.resolve("apu", InstanceKind::Run, -1).unwrap_err();
    assert!(err.to_string().contains("known processes: api"), "{err}");
    let err = store.resolve("api", InstanceKind::Build, -1).unwrap_err();
    assert!(
        err.to_string().contains("no build instances of `api`"),
        "{err}"
    );
    store.close().unwrap();
}

#[test]
fn search_matches_then_context_then_limit() {
    let dir = tempdir();
    let store = open(&dir.path().join("s.redb"));
    let w = store
        .begin_instance("w", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    // 0..30; "hit" at 5, 7 (overlapping windows), 20 and 29 (at the end).
    let mut text = String::new();
    for i in 0..30 {
        if [5, 7, 20, 29].contains(&i) {
            text.push_str(&format!("hit {i}\n"));
        } else {
            text.push_str(&format!("plain {i}\n"));
        }
    }
    w.append(Stream::Stdout, text.as_bytes());
    let id = w.id();
    let q = |ctx, head, tail| Query {
        pattern: "^hit".into(),
        context: ctx,
        head,
        tail,
        ..Query::default()
    };
    let r = search::search(&store, &[id], &q(2, None, None)).unwrap();
    let seqs: Vec<_> = r.hits.iter().map(|h| (h.line.seq, h.matched)).collect();
    assert_eq!(
        seqs,
        [
            (3, false),
            (4, false),
            (5, true),
            (6, false),
            (7, true),
            (8, false),
            (9, false),
            (18, false),
            (19, false),
            (20, true),
            (21, false),
            (22, false),
            (27, false),
            (28, false),
            (29, true)
        ]
    );
    assert_eq!((r.matched, r.total, r.omitted), (4, 15, 0));
    let r = search::search(&store, &[id], &q(2, Some(4), None)).unwrap();
    assert_eq!(r.hits.len(), 4);
    assert_eq!(r.hits[3].line.seq, 6);
    assert_eq!((r.matched, r.total, r.omitted), (4, 15, 11));
    let r = search::search(&store, &[id], &q(0, None, Some(2))).unwrap();
    assert_eq!(
        texts(&r.hits.iter().map(|h| h.line.clone()).collect::<Vec<_>>()),
        ["hit 20", "hit 29"]
    );
    // Case-insensitive, and over the store after the instance ended.
    w.finish(ExitStatus::Code(0)).unwrap();
    let r = search::search(
        &store,
        &[id],
        &Query {
            pattern: "HIT 2".into(),
            case_insensitive: true,
            ..Query::default()
        },
    )
    .unwrap();
    assert_eq!(r.matched, 2);
    let err = search::search(
        &store,
        &[id],
        &Query {
            pattern: "foo(".into(),
            ..Query::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, SearchError::BadRegex { .. }));
    assert!(err.to_string().contains("foo("), "{err}");
    store.close().unwrap();
}

#[test]
fn a_match_spanning_lines_is_not_a_match() {
    let dir = tempdir();
    let store = open(&dir.path().join("s.redb"));
    let w = store
        .begin_instance("w", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    w.append(Stream::Stdout, b"alpha\nbeta\nalpha beta\n");
    let r = search::search(
        &store,
        &[w.id()],
        &Query {
            pattern: r"alpha\s+beta".into(),
            ..Query::default()
        },
    )
    .unwrap();
    assert_eq!(r.matched, 1);
    assert_eq!(r.hits[0].line.seq, 2);
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_joins_history_and_live_lines_without_gaps() {
    let dir = tempdir();
    let store = open(&dir.path().join("s.redb"));
    let w = store
        .begin_instance("f", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    w.append(Stream::Stdout, &numbered(30_000)); // more than the ring keeps
    let id = w.id();
    let mut follower = store.follow(id, 10);
    let writer = {
        let w = w.clone();
        tokio::task::spawn_blocking(move || {
            for i in 30_000..40_000 {
                w.append(Stream::Stdout, format!("line {i}\n").as_bytes());
            }
            w.finish(ExitStatus::Code(0)).unwrap();
        })
    };
    let follow = async {
        let mut expect = 10u64;
        while let Some(batch) = follower.next_batch(1000).await.unwrap() {
            for l in batch {
                assert_eq!(l.seq, expect);
                assert_eq!(l.text(), format!("line {expect}"));
                expect += 1;
            }
        }
        expect
    };
    let expect = tokio::time::timeout(DEADLINE, follow)
        .await
        .expect("the follow to reach the instance's end in time");
    assert_eq!(expect, 40_000);
    writer.await.unwrap();
    store.close().unwrap();
}

#[test]
fn retention_keeps_the_newest_instances_and_trims_a_huge_one() {
    let dir = tempdir();
    let store = Store::open(
        &dir.path().join("s.redb"),
        StoreOptions {
            limits: Limits {
                keep_instances: 3,
                keep_builds: 1,
                max_bytes: 1 << 20,
            },
            ..StoreOptions::default()
        },
    )
    .unwrap()
    .store;
    let mut ids = Vec::new();
    for i in 0..5 {
        let w = store
            .begin_instance("r", InstanceKind::Run, SpawnInfo::default())
            .unwrap();
        w.append(Stream::Stdout, format!("run {i}\n").as_bytes());
        ids.push(w.id());
        w.finish(ExitStatus::Code(0)).unwrap();
    }
    wait_for("retention to leave 3 runs", || {
        store.instances("r", InstanceKind::Run).unwrap().len() == 3
    });
    let kept: Vec<_> = store
        .instances("r", InstanceKind::Run)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(kept, ids[2..]);
    let ev = store.events(Some("r"), 100).unwrap();
    let removed: Vec<String> = ev
        .iter()
        .filter(|e| matches!(e.kind, EventKind::RetentionRemoved { .. }))
        .map(|e| e.kind.to_string())
        .collect();
    assert_eq!(removed.len(), 2);
    // Named by the run number people know, and by what removed it.
    assert!(
        removed[0].contains(": run #1, by retention: more than 3 run instances"),
        "{removed:?}"
    );

    // One instance alone over max_bytes loses its oldest lines, keeps its newest.
    let w = store
        .begin_instance("big", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    let id = w.id();
    // Incompressible lines (the store compresses blocks): 30,000 x 100 B of noise.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..30_000 {
        let mut line = String::new();
        while line.len() < 96 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            line.push_str(&format!("{x:016x}"));
        }
        line.truncate(99);
        line.push('\n');
        w.append(Stream::Stdout, line.as_bytes());
    }
    w.append(Stream::Stdout, b"the last line\n");
    w.finish(ExitStatus::Code(0)).unwrap();
    wait_for("retention to trim the big instance to 1 MiB", || {
        let m = store.instance(id).unwrap();
        m.first_seq > 0 && m.stored_bytes <= 1 << 20
    });
    let m = store.instance(id).unwrap();
    let tail = store.read(id, Window::Tail(1), &Filter::default()).unwrap();
    assert_eq!(texts(&tail), ["the last line"]);
    let head = store.read(id, Window::Head(1), &Filter::default()).unwrap();
    assert_eq!(head[0].seq, m.first_seq);
    assert!(
        store
            .events(Some("big"), 10)
            .unwrap()
            .iter()
            .any(|e| matches!(
                &e.kind,
                EventKind::RetentionRemoved { why, .. } if why.contains("oldest")
            ))
    );
    store.close().unwrap();
}

#[test]
fn a_full_queue_drops_from_the_store_not_the_ring_and_says_so() {
    let dir = tempdir();
    let store = Store::open(
        &dir.path().join("s.redb"),
        StoreOptions {
            queue_max_bytes: 0,
            ..StoreOptions::default()
        },
    )
    .unwrap()
    .store;
    let w = store
        .begin_instance("d", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    let id = w.id();
    w.append(Stream::Stdout, &numbered(10_000));
    let tail = store.read(id, Window::Tail(1), &Filter::default()).unwrap();
    assert_eq!(texts(&tail), ["line 9999"]);
    w.finish(ExitStatus::Code(0)).unwrap();
    assert_eq!(store.dropped_lines(), 10_000);
    let m = store.instance(id).unwrap();
    assert_eq!(m.dropped_lines, 10_000);
    let ev = store.events(Some("d"), 10).unwrap();
    assert!(
        ev.iter()
            .any(|e| matches!(e.kind, EventKind::LinesDropped { count: 10_000 })),
        "{ev:?}"
    );
    store.close().unwrap();
}

#[test]
fn a_file_that_is_not_a_store_is_moved_aside_not_overwritten() {
    let dir = tempdir();
    let path = dir.path().join("logs.redb");
    let junk = b"this is not a redb file, but somebody's data".repeat(200);
    std::fs::write(&path, &junk).unwrap();
    let opened = Store::open(&path, StoreOptions::default()).unwrap();
    let (from, to) = opened.moved_aside.clone().expect("moved aside");
    assert_eq!(from, path);
    assert_eq!(std::fs::read(&to).unwrap(), junk);
    assert!(
        to.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .contains("corrupt")
    );
    opened.store.close().unwrap();
}

#[test]
fn read_only_open_is_refused_while_a_daemon_holds_the_store() {
    let dir = tempdir();
    let path = dir.path().join("logs.redb");
    let store = open(&path);
    let w = store
        .begin_instance("x", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    w.append(Stream::Stdout, b"hello\n");
    w.finish(ExitStatus::Code(0)).unwrap();
    let err = Store::open_read_only(&path).err().expect("locked");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use by another bpm daemon"));
    let err = Store::open(&path, StoreOptions::default())
        .err()
        .expect("locked");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    store.close().unwrap();
    drop(store);
    let ro = Store::open_read_only(&path).unwrap();
    let m = ro.resolve("x", InstanceKind::Run, -1).unwrap();
    let tail = ro.read(m.id, Window::Tail(5), &Filter::default()).unwrap();
    assert_eq!(texts(&tail), ["hello"]);
    assert!(matches!(
        ro.begin_instance("x", InstanceKind::Run, SpawnInfo::default()),
        Err(StoreError::ReadOnly)
    ));
}

#[test]
fn events_are_kept_per_process() {
    let dir = tempdir();
    let store = open(&dir.path().join("s.redb"));
    store.record(Some("a"), None, EventKind::Note { text: "one".into() });
    store.record(Some("b"), None, EventKind::Note { text: "two".into() });
    store.record(None, None, EventKind::DaemonStopped);
    store.record(
        Some("a"),
        None,
        EventKind::Note {
            text: "three".into(),
        },
    );
    store.flush().unwrap();
    let a: Vec<_> = store
        .events(Some("a"), 10)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        a,
        [
            EventKind::Note { text: "one".into() },
            EventKind::Note {
                text: "three".into()
            }
        ]
    );
    assert_eq!(store.events(None, 10).unwrap().len(), 4);
    assert_eq!(store.events(Some("a"), 1).unwrap().len(), 1);
    store.close().unwrap();
}

/// A status report's history of each process, read in one transaction, says what the
/// separate reads say: committed and just-begun instances, builds apart, recent events.
#[test]
fn histories_agree_with_instances_and_events() {
    let dir = tempdir();
    let store = open(&dir.path().join("s.redb"));
    // Another process's run first, so api's global ids are not its run numbers.
    store
        .begin_instance("other", InstanceKind::Run, SpawnInfo::default())
        .unwrap()
        .finish(ExitStatus::Code(0))
        .unwrap();
    for i in 0..3 {
        let w = store
            .begin_instance("api", InstanceKind::Run, SpawnInfo::default())
            .unwrap();
        w.finish(ExitStatus::Code(i)).unwrap();
    }
    let b = store
        .begin_instance("api", InstanceKind::Build, SpawnInfo::default())
        .unwrap();
    b.finish(ExitStatus::Code(0)).unwrap();
    for i in 0..7 {
        store.record(
            Some("api"),
            None,
            EventKind::Note {
                text: format!("n{i}"),
            },
        );
    }
    // An event about api's second run, which the store knows by another id.
    let second = store.instances("api", InstanceKind::Run).unwrap()[1].id;
    assert_ne!(second, 2);
    store.record(
        Some("api"),
        Some(second),
        EventKind::Note {
            text: "about run 2".into(),
        },
    );
    store.flush().unwrap();
    let before = store.generation();
    // Begun after the flush: live, perhaps not committed yet.
    let live = store
        .begin_instance("web", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    assert_ne!(
        store.generation(),
        before,
        "a new instance is a change status sees"
    );
    let h = store.histories(&["api", "web", "none"], 5).unwrap();
    assert_eq!(h.len(), 3);
    let api_runs = store.instances("api", InstanceKind::Run).unwrap();
    assert_eq!(h[0].runs, 3);
    assert_eq!(h[0].builds, 1);
    assert_eq!(
        h[0].last_run.as_ref().map(|m| m.id),
        api_runs.last().map(|m| m.id)
    );
    assert_eq!(h[0].last_run.as_ref().map(|m| m.number), Some(3));
    assert_eq!(
        h[0].events
            .iter()
            .map(|e| e.event.kind.clone())
            .collect::<Vec<_>>(),
        store
            .events(Some("api"), 5)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect::<Vec<_>>()
    );
    assert_eq!(h[0].events.len(), 5);
    let numbered: Vec<_> = h[0].events.iter().map(|e| e.instance).collect();
    assert_eq!(
        numbered,
        [None, None, None, None, Some((InstanceKind::Run, 2))],
        "only the last event names a run, by its number"
    );
    assert_eq!(h[1].runs, 1);
    assert_eq!(h[1].last_run.as_ref().map(|m| m.id), Some(live.id()));
    assert!(h[1].last_run.as_ref().unwrap().is_live());
    assert_eq!((h[2].runs, h[2].builds, h[2].events.len()), (0, 0, 0));
    assert!(h[2].last_run.is_none());
    let before = store.generation();
    live.finish(ExitStatus::Code(0)).unwrap();
    store.flush().unwrap();
    assert_ne!(store.generation(), before, "an end is a change status sees");
    let again = store.histories(&["web"], 5).unwrap();
    assert_eq!(again[0].runs, 1);
    assert_eq!(
        again[0].last_run.as_ref().unwrap().exit,
        Some(ExitStatus::Code(0))
    );
    store.close().unwrap();
}

/// A follower of a finished instance goes past a gap of lines the store never got (more
/// than one batch of them) to the lines stored after it.
#[test]
fn follow_crosses_a_gap_of_dropped_lines_to_the_end() {
    let dir = tempdir();
    let store = Store::open(
        &dir.path().join("s.redb"),
        StoreOptions {
            queue_max_bytes: 4096,
            ..StoreOptions::default()
        },
    )
    .unwrap()
    .store;
    let w = store
        .begin_instance("g", InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    let id = w.id();
    w.append(Stream::Stdout, b"before\n");
    store.flush().unwrap();
    // Far more than the queue holds at once: most of it is dropped from the store.
    w.append(Stream::Stdout, &numbered(20_000));
    store.flush().unwrap();
    w.append(Stream::Stdout, b"after\n");
    w.finish(ExitStatus::Code(0)).unwrap();
    store.flush().unwrap();
    let dropped = store.instance(id).unwrap().dropped_lines;
    assert!(
        dropped > 5000,
        "the test needs a gap wider than a batch: {dropped}"
    );
    let mut follower = store.follow(id, 0);
    let mut seen = Vec::new();
    let follow = async {
        while let Some(batch) = follower.next_batch(1000).await.unwrap() {
            seen.extend(batch.iter().map(|l| l.text().into_owned()));
        }
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async { tokio::time::timeout(DEADLINE, follow).await })
        .expect("the follow ends");
    assert_eq!(seen.first().map(String::as_str), Some("before"));
    assert_eq!(
        seen.last().map(String::as_str),
        Some("after"),
        "{} lines",
        seen.len()
    );
    assert_eq!(seen.len() as u64, 20_002 - dropped);
    store.close().unwrap();
}

/// A long tail without a pattern is streamed (found by counting backwards, then read
/// forwards): it gives exactly the records of the tail read whole, across instances, with
/// a stream filter, and from a live instance.
#[test]
fn a_streamed_long_tail_is_the_tail_read_whole() {
    use bpm::daemon::ops::{LogStream, PAGE_LINES, read_logs};
    use bpm::protocol::{FollowRecord, LogQuery, StreamFilter};
    let dir = tempdir();
    let store = open(&dir.path().join("s.redb"));
    // Three runs of different lengths, stdout and stderr interleaved unevenly; the last
    // one still running.
    let mut live = None;
    for (run, n) in [3 * PAGE_LINES + 17, 123, 2 * PAGE_LINES + 5]
        .into_iter()
        .enumerate()
    {
        let w = store
            .begin_instance("p", InstanceKind::Run, SpawnInfo::default())
            .unwrap();
        for i in 0..n {
            let stream = if i % 7 == 3 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            w.append(stream, format!("run {run} line {i}\n").as_bytes());
        }
        if run < 2 {
            w.finish(ExitStatus::Code(run as i32)).unwrap();
        } else {
            live = Some(w);
        }
    }
    store.flush().unwrap();
    let lines = |records: &[FollowRecord]| -> Vec<(u64, u64, String)> {
        records
            .iter()
            .filter_map(|r| match r {
                FollowRecord::Line(l) => Some((l.instance, l.seq, l.text.clone())),
                _ => None,
            })
            .collect()
    };
    for stream in [StreamFilter::Both, StreamFilter::Stderr] {
        for tail in [
            PAGE_LINES + 1,
            2 * PAGE_LINES + 5,
            2 * PAGE_LINES + 200,
            100_000,
        ] {
            let q = LogQuery {
                tail: Some(tail),
                all_instances: true,
                stream,
                ..LogQuery::default()
            };
            let whole = read_logs(&store, "p", &q).unwrap();
            let plan = LogStream::plan(&store, "p", q.clone()).unwrap();
            let mut records = Vec::new();
            plan.run(&store, &mut |page| {
                assert!(page.len() <= PAGE_LINES);
                records.extend(page);
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
            let expected: Vec<_> = whole
                .lines
                .iter()
                .map(|l| (l.instance, l.seq, l.text.clone()))
                .collect();
            assert_eq!(lines(&records), expected, "tail {tail}, {stream:?}");
            // Every instance is introduced, and the ended ones end.
            let starts = records
                .iter()
                .filter(|r| matches!(r, FollowRecord::Instance { .. }))
                .count();
            let exits = records
                .iter()
                .filter(|r| matches!(r, FollowRecord::Exit { .. }))
                .count();
            assert_eq!((starts, exits), (3, 2), "tail {tail}, {stream:?}");
        }
    }
    drop(live);
}
