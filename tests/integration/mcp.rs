//! The MCP server through a real MCP client (rmcp's, over real HTTP) against a daemon
//! started in-process, with real child processes and the real store; and the transport
//! itself through raw HTTP (`helpers::api`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ClientRequest,
    Implementation, ProgressNotificationParam, ProtocolVersion, Request,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};

use crate::helpers::api::{exchange_async, mcp, request};
use crate::helpers::daemon::{DaemonOf, Dirs, InProcess, bpm_command, options};
use crate::helpers::process::alive;
use crate::helpers::{umask_shared, wait_for_async};

/// An in-process daemon of `dirs` with the default options, after writing `config` as
/// the project's `.mcp-run` (if given).
fn start(dirs: &Dirs, config: Option<&str>) -> InProcess {
    if let Some(c) = config {
        dirs.write_config(c);
    }
    InProcess::start(options(dirs))
}

/// Counts progress notifications.
#[derive(Clone, Default)]
struct Client {
    progress: Arc<AtomicUsize>,
    messages: Arc<std::sync::Mutex<Vec<String>>>,
    version: Option<ProtocolVersion>,
}

impl ClientHandler for Client {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.fetch_add(1, Ordering::SeqCst);
        if let Some(m) = params.message {
            self.messages.lock().unwrap().push(m);
        }
    }

    fn get_info(&self) -> ClientConfig {
        let mut c = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("bpm-test", "1"),
        );
        if let Some(v) = &self.version {
            c.protocol_version = v.clone();
        }
        c
    }
}

type Session = RunningService<RoleClient, Client>;

async fn connect(d: &InProcess) -> Session {
    connect_with(d, Client::default(), None).await
}

async fn connect_with(d: &InProcess, client: Client, token: Option<&str>) -> Session {
    let mut config = StreamableHttpClientTransportConfig::with_uri(d.mcp_url());
    if let Some(t) = token {
        config = config.auth_header(t.to_owned());
    }
    client
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("MCP session")
}

async fn call(s: &Session, tool: &str, args: Value) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    s.call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A successful call's structured content.
async fn ok(s: &Session, tool: &str, args: Value) -> Value {
    let r = call(s, tool, args.clone()).await;
    assert_ne!(r.is_error, Some(true), "{tool} {args}: {}", text(&r));
    r.structured_content.expect("structured content")
}

/// The texts of a log answer's lines.
fn texts(answer: &Value) -> Vec<&str> {
    answer["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect()
}

/// A failed call's text.
async fn err(s: &Session, tool: &str, args: Value) -> String {
    let r = call(s, tool, args.clone()).await;
    assert_eq!(
        r.is_error,
        Some(true),
        "{tool} {args} should fail: {}",
        text(&r)
    );
    text(&r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_list_matches_the_committed_snapshot() {
    let dirs = Dirs::new();
    let d = start(&dirs, None);
    let s = connect(&d).await;
    let tools = s.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "get_status",
            "start",
            "stop",
            "restart",
            "search_logs",
            "search_build_log"
        ]
    );
    for t in &tools {
        let a = t.annotations.as_ref().expect("annotations");
        let read_only = matches!(
            t.name.as_ref(),
            "get_status" | "search_logs" | "search_build_log"
        );
        assert_eq!(a.read_only_hint, Some(read_only), "{}", t.name);
        assert_eq!(
            a.destructive_hint.unwrap_or(false),
            matches!(t.name.as_ref(), "stop" | "restart"),
            "{}",
            t.name
        );
        assert!(t.output_schema.is_some(), "{} has an output schema", t.name);
        // Every parameter is described.
        let props = t.input_schema.get("properties").and_then(Value::as_object);
        for (p, schema) in props.into_iter().flatten() {
            assert!(
                schema.get("description").is_some(),
                "{}.{p} has no description",
                t.name
            );
        }
    }
    let search = &tools[4];
    let params: Vec<&String> = search.input_schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    for p in [
        "process",
        "pattern",
        "context_lines",
        "head",
        "tail",
        "index",
        "stream",
        "since",
        "until",
        "case_insensitive",
        "all_instances",
    ] {
        assert!(params.iter().any(|k| *k == p), "search_logs lacks {p}");
    }

    let actual =
        serde_json::to_string_pretty(&serde_json::to_value(&tools).unwrap()).unwrap() + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/mcp_tools.json");
    if std::env::var_os("BPM_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "the tool list changed; review the difference and run with BPM_UPDATE_SNAPSHOTS=1 to accept it:\n{actual}"
    );
    s.cancel().await.unwrap();
    d.shutdown().await;
}

/// A runtime process printing a colour line, 300 numbered lines and `oops` on stderr,
/// then waiting; started through the tool, its output arrived.
struct Noisy {
    s: Session,
    d: InProcess,
    name: String,
    pid: u64,
    _dirs: Dirs,
}

const NOISY: &str = "printf '\\033[31mred alert\\033[0m\\n'; i=0; while [ $i -lt 300 ]; do echo \"line $i\"; i=$((i+1)); done; echo 'oops' >&2; exec sleep 60";

async fn noisy() -> Noisy {
    let dirs = Dirs::new();
    let d = start(&dirs, None);
    let s = connect(&d).await;
    let started = ok(&s, "start", json!({"command": ["sh", "-c", NOISY]})).await;
    let name = started["name"].as_str().unwrap().to_owned();
    let pid = started["status"]["pid"].as_u64().unwrap();
    assert_eq!(started["already_running"], json!(false));
    // Wait for the output, through the tool.
    wait_for_async("the whole output, through search_logs", async || {
        let r = ok(
            &s,
            "search_logs",
            json!({"process": name, "pattern": "oops"}),
        )
        .await;
        let last = ok(
            &s,
            "search_logs",
            json!({"process": name, "pattern": "^line 299$"}),
        )
        .await;
        r["matched"] == json!(1) && last["matched"] == json!(1)
    })
    .await;
    Noisy {
        s,
        d,
        name,
        pid,
        _dirs: dirs,
    }
}

impl Noisy {
    async fn finish(self) {
        self.s.cancel().await.unwrap();
        self.d.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_status_of_an_empty_daemon_and_stop_of_an_unknown_name() {
    let dirs = Dirs::new();
    let d = start(&dirs, None);
    let s = connect(&d).await;
    let st = ok(&s, "get_status", json!({})).await;
    assert_eq!(st["processes"], json!([]));
    assert!(
        err(&s, "stop", json!({"process": "nope"}))
            .await
            .contains("no process named `nope`")
    );
    s.cancel().await.unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_of_the_same_command_in_the_same_directory_is_that_process() {
    let n = noisy().await;
    let again = ok(&n.s, "start", json!({"command": ["sh", "-c", NOISY]})).await;
    assert_eq!(again["already_running"], json!(true));
    assert_eq!(again["name"].as_str(), Some(n.name.as_str()));
    assert_eq!(again["status"]["pid"].as_u64(), Some(n.pid));
    assert!(
        again["message"]
            .as_str()
            .unwrap()
            .contains("already running")
    );
    n.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_logs_tails_by_pid_with_numbers_as_strings_one_stream_at_a_time() {
    let n = noisy().await;
    let (s, name, pid) = (&n.s, &n.name, n.pid);
    // (stdout and stderr are separate pipes, so their relative order is not fixed: read
    // one at a time.)
    let tail = ok(
        s,
        "search_logs",
        json!({"process": pid.to_string(), "tail": "5", "stream": "stdout"}),
    )
    .await;
    assert_eq!(
        texts(&tail),
        ["line 295", "line 296", "line 297", "line 298", "line 299"]
    );
    assert_eq!(tail["omitted_by_limit"], json!(296));
    let errs = ok(
        s,
        "search_logs",
        json!({"process": name, "stream": "stderr"}),
    )
    .await;
    assert_eq!(errs["lines"].as_array().unwrap().len(), 1);
    assert_eq!(errs["lines"][0]["text"], json!("oops"));
    assert_eq!(errs["lines"][0]["stream"], json!("stderr"));
    assert!(tail["hint"].as_str().unwrap().contains("around_line="));
    n.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_logs_marks_matches_gives_context_and_strips_ansi_unless_asked() {
    let n = noisy().await;
    let (s, name) = (&n.s, &n.name);
    let r = call(
        s,
        "search_logs",
        json!({"process": name, "pattern": "^line 15$", "context_lines": 1}),
    )
    .await;
    let found = r.structured_content.clone().unwrap();
    let lines = found["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["matched"], json!(true));
    assert_eq!(lines[0]["matched"], json!(false));
    let seq = lines[1]["seq"].as_u64().unwrap();
    assert!(
        text(&r).contains(&format!(">{seq:>6}  line 15")),
        "{}",
        text(&r)
    );
    let red = ok(
        s,
        "search_logs",
        json!({"process": name, "pattern": "alert"}),
    )
    .await;
    assert_eq!(red["lines"][0]["text"], json!("red alert"));
    let raw_red = ok(
        s,
        "search_logs",
        json!({"process": name, "pattern": "alert", "keep_ansi": true}),
    )
    .await;
    assert_eq!(
        raw_red["lines"][0]["text"],
        json!("\u{1b}[31mred alert\u{1b}[0m")
    );

    // More context around a line, by its number.
    let around = ok(
        s,
        "search_logs",
        json!({"process": name, "around_line": seq, "context_lines": "2"}),
    )
    .await;
    // The two lines before and after it in the store. stdout and stderr are separate
    // pipes, so stderr's one line (`oops`, printed last) may have been read among them.
    let seqs: Vec<u64> = around["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (seq - 2..=seq + 2).collect::<Vec<_>>());
    let got = texts(&around);
    assert_eq!(got[2], "line 15");
    let stdout: Vec<&str> = got.iter().copied().filter(|t| *t != "oops").collect();
    let expected: Vec<String> = (13..=17).map(|i| format!("line {i}")).collect();
    assert!(
        expected
            .windows(stdout.len())
            .any(|w| w == stdout.as_slice()),
        "{got:?}"
    );
    n.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_logs_caps_at_200_lines_and_filters_by_time() {
    let n = noisy().await;
    let (s, name) = (&n.s, &n.name);
    let capped = ok(s, "search_logs", json!({"process": name})).await;
    assert_eq!(capped["lines"].as_array().unwrap().len(), 200);
    // Nothing was printed in the future.
    let none = ok(
        s,
        "search_logs",
        json!({"process": name, "since": "2999-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(none["lines"], json!([]));
    let recent = ok(
        s,
        "search_logs",
        json!({"process": name, "since": "10m", "stream": "stderr"}),
    )
    .await;
    assert_eq!(recent["lines"].as_array().unwrap().len(), 1);
    n.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_say_what_would_work() {
    let n = noisy().await;
    let (s, name) = (&n.s, &n.name);
    let e = err(s, "search_logs", json!({"process": "web"})).await;
    assert!(e.contains(&format!("known: {name}")), "{e}");
    // A process that dies during the settle time is a failed start, not "running".
    let e = err(
        s,
        "start",
        json!({"command": ["sh", "-c", "echo 'Error: boom' >&2; sleep 0.2; exit 3"], "wait_seconds": 5}),
    )
    .await;
    assert!(
        e.contains("exited before it was ready")
            && e.contains("exit code 3")
            && e.contains("Error: boom"),
        "{e}"
    );
    let e = err(
        s,
        "search_logs",
        json!({"process": name, "pattern": "(unclosed"}),
    )
    .await;
    assert!(e.contains("bad regex") && e.contains("(unclosed"), "{e}");
    let e = err(s, "search_logs", json!({"process": name, "index": -5})).await;
    assert!(e.contains("-1") && e.contains("1 "), "{e}");
    let e = err(s, "search_logs", json!({"process": name, "lines": 5})).await;
    assert!(
        e.contains("unknown field `lines`") && e.contains("`tail`"),
        "{e}"
    );
    let e = err(
        s,
        "search_logs",
        json!({"process": name, "stream": "stdmix"}),
    )
    .await;
    assert!(e.contains("stdout, stderr or both"), "{e}");
    let e = err(
        s,
        "search_logs",
        json!({"process": name, "since": "the day before"}),
    )
    .await;
    assert!(e.contains("10m") && e.contains("ISO 8601"), "{e}");
    let e = err(
        s,
        "search_logs",
        json!({"process": name, "head": 1, "tail": 1}),
    )
    .await;
    assert!(e.contains("not both"), "{e}");
    let e = err(s, "search_build_log", json!({"process": name})).await;
    assert!(e.contains("build"), "{e}");
    let e = err(s, "start", json!({})).await;
    assert!(e.contains("`name`") && e.contains("`command`"), "{e}");
    // An unknown tool is a protocol error (-32602) that names the tools.
    let e = s
        .call_tool(CallToolRequestParams::new("launch"))
        .await
        .expect_err("an unknown tool is an error");
    let rmcp::service::ServiceError::McpError(e) = e else {
        panic!("a JSON-RPC error: {e:?}")
    };
    assert_eq!(e.code, rmcp::model::ErrorCode::INVALID_PARAMS, "{e:?}");
    assert!(e.message.contains("get_status, start"), "{e:?}");

    n.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_gives_a_new_pid_and_keeps_the_previous_run_as_index_minus_2_and_number_1() {
    let n = noisy().await;
    let (s, name) = (&n.s, &n.name);
    let r = ok(s, "restart", json!({"process": name})).await;
    let new_pid = r["status"]["pid"].as_u64().unwrap();
    assert_ne!(new_pid, n.pid);
    let prev = ok(
        s,
        "search_logs",
        json!({"process": name, "index": "-2", "pattern": "oops"}),
    )
    .await;
    assert_eq!(prev["matched"], json!(1));
    assert_eq!(prev["instances"][0]["pid"].as_u64(), Some(n.pid));
    let st = ok(s, "get_status", json!({"process": name})).await;
    assert_eq!(st["processes"][0]["run_instances"], json!(2));
    // The same run by its number: the process's first run is "#1", the new one "#2".
    let first = ok(
        s,
        "search_logs",
        json!({"process": name, "index": "#1", "pattern": "oops"}),
    )
    .await;
    assert_eq!(first["instances"][0]["pid"].as_u64(), Some(n.pid));
    assert_eq!(first["instances"][0]["number"], json!(1));
    assert_eq!(st["processes"][0]["run_number"], json!(2));
    let e = err(s, "search_logs", json!({"process": name, "index": "#0"})).await;
    assert!(e.contains("\"#3\""), "{e}");
    n.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_stop_with_force_as_a_string_stops_it_and_the_status_says_so() {
    let n = noisy().await;
    let (s, name, pid) = (&n.s, &n.name, n.pid);
    let stopped = ok(s, "stop", json!({"process": name, "force": "true"})).await;
    assert_eq!(stopped["status"]["state"], json!("stopped"));
    assert!(
        stopped["message"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {pid}"))
    );
    let st = ok(s, "get_status", json!({"process": name})).await;
    assert_eq!(st["processes"][0]["state"], json!("stopped"));
    assert_eq!(st["processes"][0]["run_instances"], json!(1));
    assert!(!alive(pid as u32));
    n.finish().await;
}

const BUILD_CONFIG: &str = r#"
[process.app]
command = ["sh", "-c", "echo serving; exec sleep 60"]
build = ["sh", "-c", "if [ -f fail ]; then echo 'error[E0308]: mismatched types' >&2; exit 1; fi; if [ -f slow ]; then echo compiling slowly; exec sleep 30; fi; for i in 1 2 3 4 5 6; do echo compiling $i; sleep 0.2; done"]
autostart = false
"#;

/// A daemon of [`BUILD_CONFIG`] with `app` started (built, then running), and a session
/// of `client`; its pid.
async fn built_app(dirs: &Dirs, client: Client) -> (InProcess, Session, u64) {
    let d = start(dirs, Some(BUILD_CONFIG));
    let s = connect_with(&d, client, None).await;
    let started = ok(&s, "start", json!({"name": "app"})).await;
    let pid = started["status"]["pid"]
        .as_u64()
        .expect("running after its build");
    (d, s, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_build_reports_progress_while_building() {
    let dirs = Dirs::new();
    let client = Client::default();
    let progress = client.progress.clone();
    let messages = client.messages.clone();
    let (d, s, pid) = built_app(&dirs, client).await;

    // A restart with a progress token gets progress while building.
    let before = progress.load(Ordering::SeqCst);
    let r = ok(&s, "restart", json!({"process": "app"})).await;
    let new_pid = r["status"]["pid"].as_u64().unwrap();
    assert_ne!(new_pid, pid);
    assert!(
        progress.load(Ordering::SeqCst) > before,
        "no progress notifications"
    );
    assert!(
        messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("building app") && m.contains("compiling")),
        "{:?}",
        messages.lock().unwrap()
    );
    s.cancel().await.unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_is_an_error_with_the_compilers_error_and_the_old_pid_runs_on() {
    let dirs = Dirs::new();
    let (d, s, pid) = built_app(&dirs, Client::default()).await;
    std::fs::write(dirs.project.join("fail"), "").unwrap();
    let e = err(&s, "restart", json!({"process": "app"})).await;
    assert!(e.contains("error[E0308]: mismatched types"), "{e}");
    let st = ok(&s, "get_status", json!({"process": "app"})).await;
    assert_eq!(st["processes"][0]["pid"].as_u64(), Some(pid));
    let log = ok(
        &s,
        "search_build_log",
        json!({"process": "app", "pattern": "E0308"}),
    )
    .await;
    assert_eq!(log["matched"], json!(1));
    s.cancel().await.unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_restart_stops_its_build_and_the_old_instance_runs_on() {
    let dirs = Dirs::new();
    let (d, s, pid) = built_app(&dirs, Client::default()).await;
    // Cancelled here by a client-side timeout (the build would take 30 s).
    std::fs::write(dirs.project.join("slow"), "").unwrap();
    let args = json!({"process": "app"}).as_object().unwrap().clone();
    let handle = s
        .send_request_with_option(
            ClientRequest::CallToolRequest(Request::new(
                CallToolRequestParams::new("restart").with_arguments(args),
            )),
            PeerRequestOptions::with_timeout(Duration::from_millis(1500)),
        )
        .await
        .unwrap();
    assert!(
        handle.await_response().await.is_err(),
        "the request timed out"
    );
    // Events become readable with the store's next group commit.
    let p = wait_for_async("the build to be cancelled", async || {
        let st = ok(&s, "get_status", json!({"process": "app"})).await;
        let p = st["processes"][0].clone();
        let cancelled = p["recent_events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["what"].as_str().unwrap().contains("build cancelled"));
        (p["building"] == json!(false) && cancelled).then_some(p)
    })
    .await;
    assert_eq!(
        p["pid"].as_u64(),
        Some(pid),
        "the old instance keeps running"
    );
    assert!(alive(pid as u32));
    s.cancel().await.unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_version_from_2025_03_26_to_2026_07_28_works() {
    let dirs = Dirs::new();
    let d = start(&dirs, None);
    for v in [
        ProtocolVersion::V_2025_03_26,
        ProtocolVersion::V_2025_06_18,
        ProtocolVersion::V_2025_11_25,
        ProtocolVersion::V_2026_07_28,
    ] {
        let client = Client {
            version: Some(v.clone()),
            ..Default::default()
        };
        let s = connect_with(&d, client, None).await;
        let st = ok(&s, "get_status", json!({})).await;
        assert_eq!(st["mode"], json!("release"), "{v}");
        let tools = s.list_all_tools().await.unwrap();
        assert_eq!(tools.len(), 6, "{v}");
        s.cancel().await.unwrap();
    }
    // And a client that speaks plain HTTP: /mcp/ as well as /mcp.
    let r = exchange_async(
        d.port,
        mcp::post(d.port, "", &mcp::initialize("2025-03-26")).replace("POST /mcp ", "POST /mcp/ "),
    )
    .await;
    assert_eq!(r.code, 200, "{r}");
    assert!(r.body.contains("\"protocolVersion\":\"2025-03-26\""), "{r}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_and_hosts_are_refused() {
    let dirs = Dirs::new();
    let d = start(&dirs, None);
    let port = d.port;
    let body = mcp::initialize("2025-06-18");
    let r = exchange_async(
        port,
        mcp::post(port, "Origin: https://evil.example\r\n", &body),
    )
    .await;
    assert_eq!(r.code, 403, "{r}");
    assert!(r.text().contains("evil.example"), "{r}");
    let r = exchange_async(
        port,
        mcp::post(port, "", &body)
            .replace(&format!("Host: 127.0.0.1:{port}"), "Host: rebound.example"),
    )
    .await;
    assert_eq!(r.code, 403, "{r}");
    let r = exchange_async(
        port,
        mcp::post(port, "Origin: http://localhost:5173\r\n", &body),
    )
    .await;
    assert_eq!(r.code, 403, "another local page, unless configured: {r}");
    // The JSON API is behind the same gate.
    let r = exchange_async(
        port,
        request("GET", "/api/status", "Origin: https://evil.example\r\n", ""),
    )
    .await;
    assert_eq!(r.code, 403, "{r}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_enforced() {
    let dirs = Dirs::new();
    let d = InProcess::start(bpm::daemon::Options {
        token: Some("s3cret-token".into()),
        ..options(&dirs)
    });
    let port = d.port;
    let body = mcp::initialize("2025-06-18");
    let r = exchange_async(port, mcp::post(port, "", &body)).await;
    assert_eq!(r.code, 401, "{r}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("bearer")),
        "{r}"
    );
    let r = exchange_async(
        port,
        mcp::post(port, "Authorization: Bearer wrong\r\n", &body),
    )
    .await;
    assert_eq!(r.code, 401, "{r}");
    let s = connect_with(&d, Client::default(), Some("s3cret-token")).await;
    ok(&s, "get_status", json!({})).await;
    s.cancel().await.unwrap();
    d.shutdown().await;
}

/// A daemon whose idle MCP sessions live 1.5 s: standing for the default day.
fn short_sessions(dirs: &Dirs) -> InProcess {
    InProcess::start(bpm::daemon::Options {
        mcp_session_idle: Some(Duration::from_millis(1500)),
        ..options(dirs)
    })
}

/// A raw MCP session: initialized, its id.
async fn raw_session(port: u16) -> String {
    let r = exchange_async(port, mcp::post(port, "", &mcp::initialize("2025-06-18"))).await;
    assert_eq!(r.code, 200, "{r}");
    let id = r.header("mcp-session-id").expect("a session id").to_owned();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    let r = exchange_async(port, with_session(port, &id, &initialized)).await;
    assert_eq!(r.code, 202, "{r}");
    id
}

/// A request of session `id`.
fn with_session(port: u16, id: &str, body: &str) -> String {
    mcp::post(
        port,
        &format!("Mcp-Session-Id: {id}\r\nMcp-Protocol-Version: 2025-06-18\r\n"),
        body,
    )
}

fn tools_list() -> String {
    json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string()
}

// The sleeps below are the behaviour under test: sessions idle for a given time.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_live_past_the_old_limit_and_dead_ones_get_404() {
    assert!(bpm::mcp::DEFAULT_SESSION_IDLE >= Duration::from_secs(24 * 3600));
    let dirs = Dirs::new();
    let d = short_sessions(&dirs);
    let port = d.port;
    let id = raw_session(port).await;
    // Idle for a while under the limit: still alive.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let r = exchange_async(port, with_session(port, &id, &tools_list())).await;
    assert_eq!(r.code, 200, "{r}");
    assert!(r.body.contains("search_logs"), "{r}");
    // Idle past the limit: the spec's answer, 404, so the client re-initializes.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = exchange_async(port, with_session(port, &id, &tools_list())).await;
    assert_eq!(r.code, 404, "{r}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_idle_past_the_limit_reinitializes_by_itself() {
    let dirs = Dirs::new();
    let d = short_sessions(&dirs);
    let s = connect(&d).await;
    ok(&s, "get_status", json!({})).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ok(&s, "get_status", json!({})).await;
    s.cancel().await.unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_of_an_earlier_daemon_gets_404() {
    let dirs = Dirs::new();
    let d = short_sessions(&dirs);
    let id = raw_session(d.port).await;
    d.shutdown().await;
    let d = start(&dirs, None);
    let r = exchange_async(d.port, with_session(d.port, &id, &tools_list())).await;
    assert_eq!(r.code, 404, "{r}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_call_is_agent_activity() {
    let dirs = Dirs::new();
    let d = start(&dirs, None);
    let s = connect(&d).await;
    // The JSON API is not an agent: it reads the idle time without resetting it.
    let api = d.api();
    let idle = async || {
        api.status_async().await["agent_idle_seconds"]
            .as_f64()
            .unwrap()
    };
    for (tool, args) in [
        ("get_status", json!({})),
        ("search_logs", json!({"process": "nope"})),
        (
            "start",
            json!({"command": ["sleep", "30"], "name": "sleeper"}),
        ),
        ("search_build_log", json!({"process": "sleeper"})),
        ("restart", json!({"process": "sleeper"})),
        ("stop", json!({"process": "sleeper"})),
    ] {
        // Idle time to accumulate: the sleep is the behaviour under test.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(idle().await >= 0.3, "before {tool}");
        call(&s, tool, args).await;
        assert!(
            idle().await < 0.25,
            "{tool} did not count as agent activity"
        );
    }
    // A restart by an agent switched the daemon to dev mode.
    let st = ok(&s, "get_status", json!({})).await;
    assert_eq!(st["mode"], json!("dev"));
    s.cancel().await.unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdio_bridge_starts_the_daemon_and_survives_its_restart() {
    let dirs = Dirs::new();
    let data = dirs.data.clone();
    let daemon = DaemonOf(data.clone());
    // The agent launched `bpm mcp` in a subdirectory with a variable of its own: a start
    // without `cwd` runs there, with that variable.
    let agent_dir = dirs.project.join("sub");
    std::fs::create_dir(&agent_dir).unwrap();
    let mut cmd = bpm_command(&dirs);
    cmd.arg("mcp")
        .arg("--data-dir")
        .arg(&data)
        .current_dir(&agent_dir)
        .env("AGENT_VAR", "from-the-agent")
        .env("BPM_PORT", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = {
        let _umask = umask_shared();
        tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let stdout = child.stdout.take().unwrap();
    let stdin = child.stdin.take().unwrap();
    let client = Client::default();
    let s = client
        .serve((stdout, stdin))
        .await
        .expect("an MCP session over stdio");
    assert_eq!(s.list_all_tools().await.unwrap().len(), 6);

    // The first call starts a daemon for the project.
    let started = ok(
        &s,
        "start",
        json!({"command": ["sh", "-c", "echo hello from bridge in $PWD with $AGENT_VAR; exec sleep 60"]}),
    )
    .await;
    let name = started["name"].as_str().unwrap().to_owned();
    assert_eq!(
        started["cwd"].as_str(),
        agent_dir.to_str(),
        "the start says where it runs: {started}"
    );
    let expected = format!("in {} with from-the-agent", agent_dir.display());
    wait_for_async("the agent's directory and environment", async || {
        let r = ok(
            &s,
            "search_logs",
            json!({"process": name, "pattern": "hello"}),
        )
        .await;
        r["lines"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains(&expected))
    })
    .await;
    let first = bpm::daemon::read_daemon_info(&data).expect("a daemon was started");
    wait_for_async("the output, through the bridge", async || {
        let r = ok(
            &s,
            "search_logs",
            json!({"process": name, "pattern": "hello"}),
        )
        .await;
        r["matched"] == json!(1)
    })
    .await;
    // Failures come through as error results.
    let e = err(&s, "search_logs", json!({"process": "nope"})).await;
    assert!(e.contains(&format!("known: {name}")), "{e}");
    ok(&s, "restart", json!({"process": name})).await;

    // The daemon goes away; the next call finds none and starts another.
    tokio::task::block_in_place(|| daemon.stop());
    let st = ok(&s, "get_status", json!({})).await;
    let second = bpm::daemon::read_daemon_info(&data).expect("a new daemon");
    assert_ne!(first.pid, second.pid);
    assert_eq!(st["daemon_pid"].as_u64(), Some(u64::from(second.pid)));
    // Its history survived: the runtime process and its output are still there.
    let r = ok(
        &s,
        "search_logs",
        json!({"process": name, "index": -2, "pattern": "hello"}),
    )
    .await;
    assert_eq!(r["matched"], json!(1));

    s.cancel().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_logs_without_a_process_searches_every_process() {
    let dirs = Dirs::new();
    let d = start(&dirs, None);
    let s = connect(&d).await;
    for (name, script) in [
        (
            "api",
            "echo api boot; sleep 3; echo 'thread main panicked at api.rs'; exec sleep 300",
        ),
        (
            "worker",
            "echo worker boot; echo 'worker panicked: queue gone'; exec sleep 300",
        ),
        ("quiet", "echo nothing to see; exec sleep 300"),
    ] {
        ok(
            &s,
            "start",
            json!({"name": name, "command": ["sh", "-c", script]}),
        )
        .await;
    }
    let found = wait_for_async("both panics, through one search", async || {
        let r = ok(&s, "search_logs", json!({"pattern": "panicked"})).await;
        (r["matched"] == json!(2)).then_some(r)
    })
    .await;
    let lines = found["lines"].as_array().unwrap();
    let who: Vec<&str> = lines
        .iter()
        .map(|l| l["process"].as_str().unwrap())
        .collect();
    // In time order: the worker printed first.
    assert_eq!(who, ["worker", "api"], "{found}");
    assert_eq!(found["process"], json!("*"));
    let r = call(
        &s,
        "search_logs",
        json!({"process": "*", "pattern": "boot", "tail": 1}),
    )
    .await;
    let t = text(&r);
    assert!(t.contains("[api]") || t.contains("[worker]"), "{t}");
    let one = r.structured_content.unwrap();
    assert_eq!(
        (one["matched"].clone(), one["omitted_by_limit"].clone()),
        (json!(2), json!(1))
    );
    s.cancel().await.unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_starts_restarts_and_stops_every_process() {
    let dirs = Dirs::new();
    dirs.write_config(
        "[process.a]\ncommand = [\"sleep\", \"300\"]\nautostart = false\n[process.b]\ncommand = [\"sleep\", \"301\"]\nautostart = false\n",
    );
    let d = start(&dirs, None);
    let s = connect(&d).await;
    let e = err(&s, "stop", json!({"process": "*"})).await;
    assert!(e.contains("no process runs"), "{e}");
    let started = ok(&s, "start", json!({"name": "*", "wait_seconds": 0})).await;
    let pids: Vec<u64> = std::iter::once(&started["status"])
        .chain(
            started["also"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| &r["status"]),
        )
        .map(|st| st["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{started}");
    let restarted = ok(&s, "restart", json!({"process": "*"})).await;
    let new_pid = restarted["status"]["pid"].as_u64().unwrap();
    assert!(!pids.contains(&new_pid), "{restarted}");
    assert_eq!(
        restarted["also"].as_array().unwrap().len(),
        1,
        "{restarted}"
    );
    let stopped = ok(&s, "stop", json!({"process": "*"})).await;
    assert!(
        stopped["message"].as_str().unwrap().contains("stopped a")
            && stopped["message"].as_str().unwrap().contains("stopped b"),
        "{stopped}"
    );
    let st = ok(&s, "get_status", json!({})).await;
    for p in st["processes"].as_array().unwrap() {
        assert_eq!(p["state"], json!("stopped"), "{st}");
    }
    s.cancel().await.unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_remove_logs_takes_the_process_and_its_logs_away() {
    let n = noisy().await;
    let (s, name) = (&n.s, &n.name);
    let e = err(s, "stop", json!({"process": name, "remove_logs": true})).await;
    assert!(e.contains("remove: true"), "{e}");
    // Refused before anything was done: it still runs.
    let st = ok(s, "get_status", json!({"process": name})).await;
    assert_eq!(st["processes"][0]["pid"].as_u64(), Some(n.pid));
    let r = ok(
        s,
        "stop",
        json!({"process": name, "remove": true, "remove_logs": "true"}),
    )
    .await;
    assert!(
        r["message"].as_str().unwrap().contains("with its logs"),
        "{r}"
    );
    let e = err(s, "search_logs", json!({"process": name})).await;
    assert!(e.contains("no process named"), "{e}");
    n.finish().await;
}
/// At most `MAX_SESSIONS` MCP sessions are kept: one more evicts the one idle the longest
/// (its next request gets the spec's 404, on which a client starts a new session); the
/// new session and the recently used ones work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_capped_and_the_idlest_is_evicted() {
    let dirs = Dirs::new();
    let d = start(&dirs, None);
    let port = d.port;
    let max = bpm::mcp::sessions::MAX_SESSIONS;
    let oldest = raw_session(port).await;
    let r = exchange_async(port, with_session(port, &oldest, &tools_list())).await;
    assert_eq!(r.code, 200, "{r}");
    let mut clients = Vec::new();
    for _ in 1..max {
        clients.push(connect(&d).await);
    }
    // The cap is reached, nothing is evicted yet: the first client works.
    ok(&clients[0], "get_status", json!({})).await;
    let newest = connect(&d).await;
    ok(&newest, "get_status", json!({})).await;
    let r = exchange_async(port, with_session(port, &oldest, &tools_list())).await;
    assert_eq!(r.code, 404, "the idlest session was evicted: {r}");
    ok(&clients[0], "get_status", json!({})).await;
    ok(clients.last().unwrap(), "get_status", json!({})).await;
    // One more: the next idlest (the second client) goes, the others stay.
    let another = connect(&d).await;
    ok(&another, "get_status", json!({})).await;
    ok(&clients[0], "get_status", json!({})).await;
    for c in clients {
        let _ = c.cancel().await;
    }
    newest.cancel().await.unwrap();
    another.cancel().await.unwrap();
    d.shutdown().await;
}

/// Two requests with the same JSON-RPC id at once in one session: the second is answered
/// with an error at once (ids route answers, so it would take the first's answer and
/// leave one of them waiting forever); the first gets its own answer; the id is free
/// again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_request_id_gets_an_error_instead_of_hanging() {
    let dirs = Dirs::new();
    let d = start(&dirs, None);
    let port = d.port;
    let id = raw_session(port).await;
    // Waits its 3 s settle time before answering.
    let slow = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "start",
        "arguments": {"name": "slow", "command": ["sleep", "60"], "wait_seconds": 3}
    }})
    .to_string();
    let first = tokio::spawn(exchange_async(port, with_session(port, &id, &slow)));
    let api = d.api();
    wait_for_async("the first request to be in progress", async || {
        crate::helpers::api::process_in(&api.status_async().await, "slow")["state"] == "running"
    })
    .await;
    let same = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}).to_string();
    let second = exchange_async(port, with_session(port, &id, &same)).await;
    assert_eq!(second.code, 200, "{second}");
    assert!(
        second.body.contains("\"error\"") && second.body.contains("request id 7 is already used"),
        "{second}"
    );
    let first = first.await.unwrap();
    assert!(
        first.body.contains("\"result\"") && first.body.contains("slow"),
        "{first}"
    );
    let again = exchange_async(port, with_session(port, &id, &same)).await;
    assert!(again.body.contains("search_logs"), "{again}");
    let (code, _) = api.post("/api/stop/slow", None);
    assert_eq!(code, 200);
    d.shutdown().await;
}
