//! The store-level part of `benches/search.rs`: searches over a generated history,
//! beside `grep -c` over the same text in a flat file.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bpm::logs::{ExitStatus, InstanceKind, Limits, SpawnInfo, Store, StoreOptions, Stream};
use bpm::search::{self, Query};

const MARKER: &str = "ERROR connection refused needle-xyzzy db:5432";

fn scale() -> u64 {
    if std::env::var_os("BPM_BENCH_QUICK").is_some() {
        10
    } else {
        1
    }
}

fn options() -> StoreOptions {
    StoreOptions {
        limits: Limits {
            keep_instances: 1000,
            keep_builds: 10,
            max_bytes: 8 << 30,
        },
        store_max_bytes: 16 << 30,
        block_filters: std::env::var("BPM_BENCH_FILTERS").map_or(true, |v| v != "0"),
        ..StoreOptions::default()
    }
}

/// `n` log-like lines; line `marker_at` is the rare marker.
fn text(n: u64, salt: u64, marker_at: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize * 110);
    for i in 0..n {
        if Some(i) == marker_at {
            out.extend_from_slice(MARKER.as_bytes());
        } else {
            let j = i + salt;
            out.extend_from_slice(
                format!(
                    "{j:08} 2026-11-22T10:{:02}:{:02}Z INFO request handled path=/api/items/{} status=200 took={}ms",
                    j / 60 % 60,
                    j % 60,
                    j * 7 % 10007,
                    j * 13 % 997
                )
                .as_bytes(),
            );
        }
        out.push(b'\n');
    }
    out
}

fn ingest(store: &Store, name: &str, text: &[u8]) -> u64 {
    let w = store
        .begin_instance(name, InstanceKind::Run, SpawnInfo::default())
        .unwrap();
    for chunk in text.chunks(64 * 1024) {
        w.wait_for_room_blocking(Duration::from_secs(5));
        w.append(Stream::Stdout, chunk);
    }
    let id = w.id();
    w.finish(ExitStatus::Code(0)).unwrap();
    id
}

fn median(f: &mut dyn FnMut() -> Duration, n: usize) -> Duration {
    let mut v: Vec<Duration> = (0..n).map(|_| f()).collect();
    v.sort();
    v[n / 2]
}

fn grep(flat: &Path, pattern: &str) -> (Duration, u64) {
    let t = Instant::now();
    let out = Command::new("grep")
        .args(["-cE", pattern])
        .arg(flat)
        .output()
        .unwrap();
    let d = t.elapsed();
    (
        d,
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One search beside `grep -cE` of the same pattern (the counts must agree).
fn compare(store: &Store, ids: &[u64], flat: &Path, label: &str, pattern: &str, target: &str) {
    let q = Query {
        pattern: pattern.into(),
        tail: Some(100),
        ..Query::default()
    };
    let mut matched = 0;
    let ours = median(
        &mut || {
            let t = Instant::now();
            matched = search::search(store, ids, &q).unwrap().matched;
            t.elapsed()
        },
        5,
    );
    let mut count = 0;
    let base = median(
        &mut || {
            let (d, c) = grep(flat, pattern);
            count = c;
            d
        },
        5,
    );
    assert_eq!(matched, count, "`{pattern}`: the search and grep disagree");
    println!(
        "  {label:<40} `{pattern}` {:>9.2} ms   grep -cE {:>9.2} ms   {:>6.3}x grep ({:.1}x faster)   matched {matched}   (target {target})",
        ms(ours),
        ms(base),
        ours.as_secs_f64() / base.as_secs_f64(),
        base.as_secs_f64() / ours.as_secs_f64(),
    );
}

fn first_page(store: &Store, ids: &[u64], word: &str) -> Duration {
    let q = Query {
        pattern: word.into(),
        head: Some(200),
        ..Query::default()
    };
    median(
        &mut || {
            let t = Instant::now();
            let r = search::search_seqs(store, ids, &q, 0..u64::MAX).unwrap();
            assert_eq!(r.hits.len(), 200);
            t.elapsed()
        },
        9,
    )
}

fn history(dir: &Path, label: &str, processes: u64, runs: u64, lines: u64) {
    let path = dir.join(format!("{label}.redb"));
    let flat = dir.join(format!("{label}.log"));
    let store = Store::open(&path, options()).unwrap().store;
    let mut flat_text = Vec::new();
    let mut ids = Vec::new();
    let t = Instant::now();
    for p in 0..processes {
        for r in 0..runs {
            let k = p * runs + r;
            let marker = (k == processes * runs / 2).then_some(lines / 2);
            let text = text(lines, k * lines, marker);
            ids.push(ingest(&store, &format!("p{p:02}"), &text));
            flat_text.extend_from_slice(&text);
        }
    }
    store.flush().unwrap();
    let ingest_time = t.elapsed();
    // The searches are measured once every block has its filter (the builder starts once
    // the writer is quiet, at the lowest priority).
    let t = Instant::now();
    assert!(
        store.wait_for_filters(Duration::from_secs(1200)),
        "the filter builder did not catch up"
    );
    let build_time = t.elapsed();
    std::fs::write(&flat, &flat_text).unwrap();
    let stats = store.block_stats().unwrap();
    println!(
        "{label}: {processes} process(es) x {runs} run(s) x {lines} lines, {:.0} MB of text (stored in {:.1} s; filters built {:.2} s later = {:.0} MB/s of text, incl. the writer's quiet time)",
        flat_text.len() as f64 / 1e6,
        ingest_time.as_secs_f64(),
        build_time.as_secs_f64(),
        flat_text.len() as f64 / build_time.as_secs_f64() / 1e6
    );
    drop(flat_text);
    println!(
        "  blocks {} ({:.1} MB compressed), filters {} ({:.2} MB) = {:.1}% of the block bytes (target <= 10%); filter file {:.2} MB = {:.1}%",
        stats.blocks,
        stats.block_bytes as f64 / 1e6,
        stats.filtered_blocks,
        stats.filter_bytes as f64 / 1e6,
        stats.filter_bytes as f64 * 100.0 / stats.block_bytes as f64,
        stats.filter_file_bytes as f64 / 1e6,
        stats.filter_file_bytes as f64 * 100.0 / stats.block_bytes as f64
    );
    compare(
        &store,
        &ids,
        &flat,
        "a rare literal, everything",
        "needle-xyzzy",
        ">= 20x faster",
    );
    compare(
        &store,
        &ids,
        &flat,
        "a literal in most blocks",
        "handled.*took=9[0-9]ms",
        "<= 1.0x",
    );
    compare(&store, &ids, &flat, "no literal", "[0-9]{3}ms$", "<= 1.2x");
    let page = first_page(&store, &ids, "handled");
    println!(
        "  {:<40} {:>9.3} ms   (target < 10 ms)",
        "first 200 matches of `handled`",
        ms(page)
    );
    store.close().unwrap();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(bpm::logs::filter_file_path(&path));
    let _ = std::fs::remove_file(&flat);
}

pub fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let s = scale();
    println!("store-level search over a generated history (release build), beside grep -c:");
    history(dir.path(), "runs", 1, 5, 1_000_000 / s);
    history(dir.path(), "processes", 20, 1, 250_000 / s);
}
