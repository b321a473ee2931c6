//! MCP round trips through rmcp's client over real HTTP against an in-process daemon:
//! `get_status` on a warm session, and the last 100 lines of a 1,000,000-line instance
//! through `search_logs`. Baselines: the predecessor's figures for the same calls.
//!
//! `cargo bench --bench mcp`

use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::ClientConfig;
use rmcp::transport::StreamableHttpClientTransport;
use serde_json::{Value, json};

mod common;

/// The predecessor's measured figures (p50) for the same calls.
const PREDECESSOR_GET_STATUS_MS: f64 = 2.57;
const PREDECESSOR_TAIL_100_MS: f64 = 551.0;
const LINES: u64 = 1_000_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::InProcess::start(dir.path()).await;
    let transport =
        StreamableHttpClientTransport::from_uri(format!("http://127.0.0.1:{}/mcp", daemon.port));
    let client = ClientConfig::default().serve(transport).await.unwrap();
    let call = |tool: &'static str, args: Value| {
        let peer = client.peer().clone();
        async move { common::call(&peer, tool, args).await }
    };

    // A 1,000,000-line instance of ~100-byte lines, ended (read from the store).
    let script = format!(
        "awk 'BEGIN {{ for (i = 0; i < {LINES}; i++) printf \"%08d 2026-11-22T10:00:00Z INFO request handled path=/api/items status=200 took=12ms id=%d\\n\", i, i * 7 }}'"
    );
    call(
        "start",
        json!({"command": ["sh", "-c", script], "name": "big"}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = call("get_status", json!({"process": "big"})).await;
        let s = r.structured_content.unwrap();
        if s["processes"][0]["state"]
            .as_object()
            .is_some_and(|o| o.contains_key("exited"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the writer never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = call("search_logs", json!({"process": "big", "tail": 100})).await;
    let s = r.structured_content.unwrap();
    assert_eq!(s["lines"].as_array().unwrap().len(), 100);
    assert_eq!(s["omitted_by_limit"].as_u64(), Some(LINES - 100));
    // A few other processes, so get_status has something to report.
    for i in 0..5 {
        call(
            "start",
            json!({"command": ["sleep", "600"], "name": format!("idle-{i}")}),
        )
        .await;
    }

    let status = common::percentiles(2000, || call("get_status", json!({}))).await;
    let tail = common::percentiles(300, || {
        call("search_logs", json!({"process": "big", "tail": 100}))
    })
    .await;

    println!("MCP round trips over HTTP, rmcp client, warm session (release build):");
    println!(
        "  get_status (6 processes)           p50 {:.3} ms  p99 {:.3} ms  | predecessor p50 {PREDECESSOR_GET_STATUS_MS} ms -> {:.1}x faster (target p50 <= 0.5 ms)",
        status.0,
        status.1,
        PREDECESSOR_GET_STATUS_MS / status.0
    );
    println!(
        "  search_logs tail 100 of 1,000,000  p50 {:.3} ms  p99 {:.3} ms  | predecessor p50 {PREDECESSOR_TAIL_100_MS} ms -> {:.0}x faster (target p50 <= 2 ms)",
        tail.0,
        tail.1,
        PREDECESSOR_TAIL_100_MS / tail.0
    );

    client.cancel().await.unwrap();
    daemon.stop().await;
}
