//! Searches that skip blocks by their filters answer exactly as a scan of every block.
//!
//! Random lines (words from a small vocabulary, rare markers in a few places, mixed case,
//! some with colour escape codes) are stored in enough blocks that most searches skip
//! some; random patterns (literals, alternations, classes, repetitions, with and without
//! case-insensitivity, context and time ranges) must give the same result with filters
//! as without: while the first part of the blocks has filters and the rest not yet, once
//! all have, and after the filter file was deleted, or replaced by a stale copy, under
//! the running store. `PROPTEST_CASES` sets the number of cases (default 12).

use std::time::Duration;

use bpm::logs::{
    ExitStatus, Filter, InstanceKind, SpawnInfo, Store, StoreOptions, Stream, filter_file_path,
};
use bpm::search::{self, Query};
use proptest::prelude::*;

use crate::helpers::tempdir;

const WORDS: &[&str] = &[
    "GET",
    "POST",
    "/api/items",
    "status=200",
    "status=500",
    "took=12ms",
    "INFO",
    "WARN",
    "request",
    "handled",
    "user",
    "id=42",
    "Connection",
    "refused",
    "db:5432",
    "retry",
];
const MARKERS: &[&str] = &[
    "needle-xyzzy",
    "Kelvin-\u{212A}",
    "PANIC at the disco",
    "\u{e9}t\u{e9}",
];
const T0: i64 = 1_700_000_000_000_000;

fn line(words: &[usize], marker: Option<usize>, colour: bool, upper: bool) -> String {
    let mut l: Vec<String> = words
        .iter()
        .map(|&w| WORDS[w % WORDS.len()].to_owned())
        .collect();
    if let Some(m) = marker {
        l.insert(l.len() / 2, MARKERS[m % MARKERS.len()].to_owned());
    }
    let mut l = l.join(" ");
    if upper {
        l = l.to_uppercase();
    }
    if colour && l.len() > 4 && l.is_char_boundary(1) && l.is_char_boundary(3) {
        // Escape codes in the middle of a word: only the stripped text reads it whole.
        l.insert_str(3, "\x1b[1m");
        l.insert_str(1, "\x1b[32m");
        l.push_str("\x1b[0m");
    }
    l
}

fn filtered() -> StoreOptions {
    StoreOptions {
        block_filters: true,
        // Long enough that the blocks stored last have no filter yet when searched first.
        filter_idle: Duration::from_secs(1),
        ..StoreOptions::default()
    }
}

const CATCH_UP: Duration = Duration::from_secs(60);

/// What happens to the filter file before the last searches.
#[derive(Clone, Copy, Debug)]
enum Mishap {
    None,
    /// Deleted under the running store.
    Deleted,
    /// Replaced by a copy made when only the first part of the blocks had filters.
    Stale,
}

fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("needle-xyzzy".to_owned()),
        Just("NEEDLE".to_owned()),
        Just("needle.*db:5432".to_owned()),
        Just("(PANIC|needle)".to_owned()),
        Just("kelvin-k".to_owned()),
        Just("[Pp]anic at".to_owned()),
        Just("status=5\\d\\d".to_owned()),
        Just("\\d{3}ms$".to_owned()),
        Just("refused|xyzzy".to_owned()),
        Just("(?i)\u{c9}T\u{c9}".to_owned()),
        Just("tt\\w*k".to_owned()),
        Just("id=42 (user|retry)+".to_owned()),
        Just("^GET".to_owned()),
        (0..WORDS.len()).prop_map(|w| regex::escape(WORDS[w])),
        (0..MARKERS.len(), 1usize..5)
            .prop_map(|(m, n)| regex::escape(&MARKERS[m].chars().take(n).collect::<String>())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(12),
        ..ProptestConfig::default()
    })]

    #[test]
    fn filtered_search_answers_as_a_full_scan(
        lines in prop::collection::vec(
            (prop::collection::vec(0usize..64, 1..8), prop::option::weighted(0.002, 0usize..8), prop::bool::weighted(0.02), prop::bool::weighted(0.1)),
            3000..9000,
        ),
        queries in prop::collection::vec(
            (pattern(), any::<bool>(), 0usize..3, prop::option::of(0u64..9000), prop::option::of(0usize..50)),
            6,
        ),
        mishap in prop_oneof![Just(Mishap::None), Just(Mishap::Deleted), Just(Mishap::Stale)],
    ) {
        let dir = tempdir();
        let path = dir.path().join("s.redb");
        let file = filter_file_path(&path);
        let store = Store::open(&path, filtered()).unwrap().store;
        let w = store.begin_instance("p", InstanceKind::Run, SpawnInfo::default()).unwrap();
        let id = w.id();
        let half = lines.len() / 2;
        for (i, (words, marker, colour, upper)) in lines.iter().enumerate() {
            if i == half {
                // The first part gets its filters, the rest is searched before it has.
                store.flush().unwrap();
                prop_assert!(store.wait_for_filters(CATCH_UP), "the builder caught up");
                std::fs::copy(&file, dir.path().join("stale")).unwrap();
            }
            let text = format!("{}\n", line(words, *marker, *colour, *upper));
            let stream = if i % 5 == 0 { Stream::Stderr } else { Stream::Stdout };
            w.append_at(stream, text.as_bytes(), T0 + i as i64 * 1000);
        }
        w.finish(ExitStatus::Code(0)).unwrap();
        store.flush().unwrap();
        let some = store.block_stats().unwrap();
        prop_assert!(some.filtered_blocks > 0 && some.filtered_blocks < some.blocks, "{some:?}");
        check(&store, id, &queries)?;
        prop_assert!(store.wait_for_filters(CATCH_UP), "the builder caught up");
        let all = store.block_stats().unwrap();
        prop_assert_eq!(all.filtered_blocks, all.blocks);
        check(&store, id, &queries)?;
        match mishap {
            Mishap::None => {}
            Mishap::Deleted => std::fs::remove_file(&file).unwrap(),
            Mishap::Stale => std::fs::rename(dir.path().join("stale"), &file).unwrap(),
        }
        check(&store, id, &queries)?;
        prop_assert!(store.wait_for_filters(CATCH_UP), "the builder caught up");
        check(&store, id, &queries)?;
        store.close().unwrap();
    }
}

type Queries = [(String, bool, usize, Option<u64>, Option<usize>)];

fn check(store: &Store, id: u64, queries: &Queries) -> Result<(), TestCaseError> {
    {
        for (pattern, ci, context, since, head) in queries.iter().cloned() {
            let q = Query {
                pattern,
                case_insensitive: ci,
                context,
                head,
                tail: None,
                filter: Filter {
                    stream: None,
                    since_us: since.map(|s| T0 + s as i64 * 1000),
                    until_us: None,
                },
            };
            let filtered = search::search(store, &[id], &q).unwrap();
            let full = search::search_without_filters(store, &[id], &q).unwrap();
            prop_assert_eq!(&filtered, &full, "{:?}", q);
        }
    }
    Ok(())
}
