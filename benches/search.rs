//! Searches over many processes at once, through MCP over real HTTP against an
//! in-process daemon: `search_logs` without `process` over 20 processes x 100,000 lines,
//! beside the same search over one process of 2,000,000 lines (the same text in all).
//! Target (the habits issue): p50 at most 2x the one-process search.
//!
//! Then the store-level search over a generated history (5 runs x 1,000,000 lines of one
//! process, a rare marker line in one run; and 20 processes x 250,000 lines), beside
//! `grep -c` over the same text in a flat file, in the same run: a rare literal, a regex
//! whose literal is in most blocks, a regex with no literal, the first page of a common
//! word, and the bytes the block filters take.
//!
//! `cargo bench --bench search` (both parts), `-- history` or `-- mcp` for one.
//! `BPM_BENCH_QUICK=1` makes the history a tenth of the size.

use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::ClientConfig;
use rmcp::transport::StreamableHttpClientTransport;
use serde_json::{Value, json};

mod common;
#[path = "search/history.rs"]
mod history;

const PROCESSES: u64 = 20;
const LINES_EACH: u64 = 100_000;

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if want("history") {
        history::bench();
    }
    if !want("mcp") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

/// A command printing `lines` log-like lines, one of them (`marker_at`) the rare marker.
fn generator(lines: u64, marker_at: u64) -> Value {
    let script = format!(
        "awk 'BEGIN {{ for (i = 0; i < {lines}; i++) if (i == {marker_at}) print \"ERROR connection refused needle-xyzzy db:5432\"; else printf \"%08d 2026-11-22T10:00:00Z INFO request handled path=/api/items status=200 took=12ms id=%d\\n\", i, i * 7 }}'"
    );
    json!(["sh", "-c", script])
}

async fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::InProcess::start(dir.path()).await;
    let transport =
        StreamableHttpClientTransport::from_uri(format!("http://127.0.0.1:{}/mcp", daemon.port));
    let client = ClientConfig::default().serve(transport).await.unwrap();
    let call = |tool: &'static str, args: Value| {
        let peer = client.peer().clone();
        async move {
            common::call(&peer, tool, args)
                .await
                .structured_content
                .unwrap()
        }
    };

    for i in 0..PROCESSES {
        call(
            "start",
            json!({"command": generator(LINES_EACH, if i == 7 { LINES_EACH / 2 } else { u64::MAX }), "name": format!("p{i:02}"), "wait_seconds": 0}),
        )
        .await;
    }
    wait_ended(&call).await;
    let found = call("search_logs", json!({"pattern": "needle-xyzzy"})).await;
    assert_eq!(found["matched"], json!(1), "{found}");
    let every = common::percentiles(30, || {
        call("search_logs", json!({"pattern": "needle-xyzzy"}))
    })
    .await;
    let tail_every = common::percentiles(100, || call("search_logs", json!({"tail": 100}))).await;

    // The same lines in one process.
    let total = PROCESSES * LINES_EACH;
    call(
        "start",
        json!({"command": generator(total, total / 2), "name": "big", "wait_seconds": 0}),
    )
    .await;
    wait_ended(&call).await;
    let big = common::percentiles(30, || {
        call(
            "search_logs",
            json!({"process": "big", "pattern": "needle-xyzzy"}),
        )
    })
    .await;

    println!("search_logs over MCP/HTTP, a rare literal (release build):");
    println!(
        "  one process of {total} lines           p50 {:.2} ms  p99 {:.2} ms",
        big.0, big.1
    );
    println!(
        "  every process ({PROCESSES} x {LINES_EACH})       p50 {:.2} ms  p99 {:.2} ms  -> {:.2}x the one-process search (target <= 2x)",
        every.0,
        every.1,
        every.0 / big.0
    );
    println!(
        "  tail 100 of every process          p50 {:.2} ms  p99 {:.2} ms",
        tail_every.0, tail_every.1
    );

    client.cancel().await.unwrap();
    daemon.stop().await;
}

/// Until every process has exited (its output stored).
async fn wait_ended<F, Fut>(call: &F)
where
    F: Fn(&'static str, Value) -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = call("get_status", json!({})).await;
        let ended = s["processes"].as_array().unwrap().iter().all(|p| {
            p["state"]
                .as_object()
                .is_some_and(|o| o.contains_key("exited"))
        });
        if ended {
            return;
        }
        assert!(Instant::now() < deadline, "the generators never finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
