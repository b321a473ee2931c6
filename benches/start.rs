//! Starts that wait for readiness, and status with servers, through the real release
//! binary (`bpm serve`) and rmcp's client over HTTP:
//!
//! - `start` of `python3 -m http.server` with `ready_port`, until the answer, beside the
//!   time from the request to the port accepting (a poller in this process tries the port
//!   every 0.2 ms during the same start). Target: the answer at most 10 ms after the port
//!   accepts.
//! - `get_status` with 20 such servers (their ports in the report): p50. Target <= 0.5 ms.
//!   Beside it, the p50 of an MCP `ping` on the same session: the round trip of the
//!   transport and both rmcp peers alone, which no server work can go below.
//!
//! Each figure is measured for this build and, with `BPM_BASELINE=/path/to/bpm` (a build
//! of the version to compare with), for that binary in the same run.
//!
//! `cargo bench --bench start`

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::{ClientConfig, ClientRequest, PingRequest};
use rmcp::transport::StreamableHttpClientTransport;
use serde_json::{Value, json};

mod common;

const BPM: &str = env!("CARGO_BIN_EXE_bpm");
const STARTS: usize = 15;
const SERVERS: usize = 20;
const STATUS_CALLS: usize = 2000;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// `bin serve` of a new project; its HTTP port once it answers.
fn serve(bin: &str, project: &Path, data: &Path) -> (Daemon, u16) {
    let child = Command::new(bin)
        .args(["serve", "--port", "0", "--no-prefix", "--data-dir"])
        .arg(data)
        .arg(project)
        .env("BPM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Stopped and waited for on drop, also if the daemon never answers.
    let daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(i) = bpm::daemon::read_daemon_info(data).filter(|i| i.pid == pid)
            && data.join("bpm.sock").exists()
        {
            return (daemon, i.port);
        }
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Figures {
    /// Median ms from the request to the port accepting, and to the answer.
    accept_ms: f64,
    answer_ms: f64,
    /// Median of (answer - accept) per start.
    lag_ms: f64,
    status_p50_ms: f64,
    status_p99_ms: f64,
    ping_p50_ms: f64,
}

async fn measure(bin: &str) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&project).unwrap();
    let (_daemon, port) = serve(bin, &project, &data);
    let transport = StreamableHttpClientTransport::from_uri(format!("http://127.0.0.1:{port}/mcp"));
    let client = ClientConfig::default().serve(transport).await.unwrap();
    let call = |tool: &'static str, args: Value| {
        let peer = client.peer().clone();
        async move { common::call(&peer, tool, args).await }
    };

    let (mut accepts, mut answers, mut lags) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..SERVERS.max(STARTS) {
        let p = free_port();
        let poller = tokio::spawn(async move {
            let t = Instant::now();
            loop {
                if tokio::net::TcpStream::connect(("127.0.0.1", p))
                    .await
                    .is_ok()
                {
                    return t.elapsed();
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        });
        let t = Instant::now();
        let r = call(
            "start",
            json!({
                "command": ["python3", "-m", "http.server", p.to_string(), "--bind", "127.0.0.1"],
                "name": format!("web-{i}"),
                "ready_port": p,
            }),
        )
        .await;
        let answer = t.elapsed();
        let accept = poller.await.unwrap();
        let s = r.structured_content.unwrap();
        assert_eq!(s["readiness"]["outcome"], "ready", "{s}");
        if i < STARTS {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            accepts.push(ms(accept));
            answers.push(ms(answer));
            lags.push(ms(answer) - ms(accept));
        }
    }
    // Every server's port is in the report once the daemon has looked (every 2 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = call("get_status", json!({})).await;
        let s = r.structured_content.unwrap();
        let with_ports = s["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["ports"].as_array().is_some_and(|a| !a.is_empty()))
            .count();
        if with_ports == SERVERS {
            break;
        }
        assert!(Instant::now() < deadline, "ports never showed in status");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..STATUS_CALLS / 10 {
        call("get_status", json!({})).await;
    }
    let mut times = Vec::with_capacity(STATUS_CALLS);
    for _ in 0..STATUS_CALLS {
        let t = Instant::now();
        call("get_status", json!({})).await;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let mut pings = Vec::with_capacity(STATUS_CALLS);
    for _ in 0..STATUS_CALLS {
        let t = Instant::now();
        client
            .peer()
            .send_request(ClientRequest::PingRequest(PingRequest {
                method: Default::default(),
                extensions: Default::default(),
            }))
            .await
            .unwrap();
        pings.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    client.cancel().await.unwrap();
    Figures {
        accept_ms: median(accepts),
        answer_ms: median(answers),
        lag_ms: median(lags),
        status_p50_ms: times[STATUS_CALLS / 2],
        status_p99_ms: times[STATUS_CALLS * 99 / 100],
        ping_p50_ms: median(pings),
    }
}

fn report(what: &str, f: &Figures) {
    println!("  {what}:");
    println!(
        "    start http.server with ready_port: port accepts after {:.1} ms, answer after {:.1} ms: answer - accept median {:.2} ms (target <= 10 ms)",
        f.accept_ms, f.answer_ms, f.lag_ms
    );
    println!(
        "    get_status, {SERVERS} servers with their ports: p50 {:.3} ms  p99 {:.3} ms (target p50 <= 0.5 ms)",
        f.status_p50_ms, f.status_p99_ms
    );
    println!(
        "    MCP ping on the same session: p50 {:.3} ms; get_status - ping {:.3} ms",
        f.ping_p50_ms,
        f.status_p50_ms - f.ping_p50_ms
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "== start until ready ({STARTS} starts, medians) and get_status ({STATUS_CALLS} calls), release build"
    );
    let this = rt.block_on(measure(BPM));
    report("this build", &this);
    if let Some(base) = std::env::var_os("BPM_BASELINE") {
        let base = base.to_string_lossy().into_owned();
        let b = rt.block_on(measure(&base));
        report(&format!("baseline {base}"), &b);
        println!(
            "  ratios (baseline / this build): answer - accept {:.1}x, get_status p50 {:.2}x",
            b.lag_ms / this.lag_ms,
            b.status_p50_ms / this.status_p50_ms
        );
    }
}
