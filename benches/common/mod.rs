//! What the benches that talk MCP share: a daemon run in this process, a call through
//! rmcp's client, and percentiles of a timed call.

#![allow(dead_code)] // each bench uses a part

use std::path::Path;
use std::time::Instant;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RoleClient;
use serde_json::Value;

/// A daemon running in this process for `dir/project`, its data in `dir/data`; stopped
/// (and awaited) by [`InProcess::stop`].
pub struct InProcess {
    pub port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    pub async fn start(dir: &Path) -> InProcess {
        let project = dir.join("project");
        std::fs::create_dir_all(&project).unwrap();
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let opts = bpm::daemon::Options {
            dir: project,
            data_dir: Some(dir.join("data")),
            port: Some(0),
            passthrough: Some(false),
            ..Default::default()
        };
        let task = tokio::spawn(bpm::daemon::run(
            opts,
            async move {
                let _ = stop_rx.await;
            },
            move |info| {
                let _ = port_tx.send(info.port);
            },
        ));
        let port = port_rx.await.unwrap();
        InProcess { port, stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// One tool call that must succeed.
pub async fn call(
    peer: &rmcp::Peer<RoleClient>,
    tool: &'static str,
    args: Value,
) -> CallToolResult {
    let Value::Object(args) = args else {
        unreachable!("arguments are an object")
    };
    let r = peer
        .call_tool(CallToolRequestParams::new(tool).with_arguments(args))
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "{tool}: {:?}", r.content);
    r
}

/// p50 and p99 in milliseconds over `n` calls, after a warm-up of a tenth of them.
pub async fn percentiles<F, Fut, T>(n: usize, mut f: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    for _ in 0..n / 10 + 1 {
        f().await;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[n / 2], times[n * 99 / 100])
}
