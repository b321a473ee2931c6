//! The MCP server through a real MCP client (rmcp's, over real HTTP) against a daemon
//! started in-process, with real child processes and the real store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ClientRequest,
    Implementation, ProgressNotificationParam, ProtocolVersion, Request,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A daemon running in this test's runtime; shut down (its processes stopped) on drop.
struct TestDaemon {
    port: u16,
    data: PathBuf,
    project: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

#[derive(Default, Clone)]
struct Setup {
    config: Option<&'static str>,
    token: Option<String>,
    session_idle: Option<Duration>,
}

impl TestDaemon {
    async fn start(project: &Path, data: &Path, setup: Setup) -> TestDaemon {
        if let Some(c) = setup.config {
            std::fs::write(project.join(".mcp-run"), c).unwrap();
        }
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let opts = bpm::daemon::Options {
            dir: project.to_owned(),
            data_dir: Some(data.to_owned()),
            port: Some(0),
            passthrough: Some(false),
            store: Default::default(),
            listen: None,
            token: setup.token,
            mcp_session_idle: setup.session_idle,
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
        let port = wait_for("the daemon to listen", 30, || port_rx.try_recv().ok()).await;
        TestDaemon {
            port,
            data: data.to_owned(),
            project: project.to_owned(),
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    async fn shutdown(mut self) {
        self.stop.take().map(|s| s.send(()));
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        // A test that panicked: stop the processes at least (the runtime is going away).
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

async fn connect(d: &TestDaemon) -> Session {
    connect_with(d, Client::default(), None).await
}

async fn connect_with(d: &TestDaemon, client: Client, token: Option<&str>) -> Session {
    let mut config = StreamableHttpClientTransportConfig::with_uri(d.url());
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

fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let project = t.path().join("project");
    let data = t.path().join("data");
    std::fs::create_dir_all(&project).unwrap();
    (t, project, data)
}

/// Send raw HTTP/1.1 to the daemon; the status code and body.
async fn raw(port: u16, request: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read the head and whatever body arrives within a moment (SSE bodies stay open).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = tokio::time::timeout(Duration::from_millis(300), s.read(&mut chunk)).await;
        match n {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) if !buf.is_empty() => break,
            Err(_) => assert!(Instant::now() < deadline, "no answer"),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn post_mcp(port: u16, headers: &str, body: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn init_body(version: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}})
    .to_string()
}

fn session_id(response: &str) -> String {
    response
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("mcp-session-id")
                .then(|| v.trim().to_owned())
        })
        .expect("a session id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_list_matches_the_committed_snapshot() {
    let (_t, project, data) = dirs();
    let d = TestDaemon::start(&project, &data, Setup::default()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_work_and_failures_say_what_would_work() {
    let (_t, project, data) = dirs();
    let d = TestDaemon::start(&project, &data, Setup::default()).await;
    let s = connect(&d).await;

    let st = ok(&s, "get_status", json!({})).await;
    assert_eq!(st["processes"], json!([]));
    assert!(
        err(&s, "stop", json!({"process": "nope"}))
            .await
            .contains("no process named `nope`")
    );

    // A runtime process printing colour and numbered lines, then waiting.
    let script = "printf '\\033[31mred alert\\033[0m\\n'; i=0; while [ $i -lt 300 ]; do echo \"line $i\"; i=$((i+1)); done; echo 'oops' >&2; exec sleep 60";
    let started = ok(&s, "start", json!({"command": ["sh", "-c", script]})).await;
    let name = started["name"].as_str().unwrap().to_owned();
    let pid = started["status"]["pid"].as_u64().unwrap();
    assert_eq!(started["already_running"], json!(false));

    // Idempotent: the same command in the same directory is that process.
    let again = ok(&s, "start", json!({"command": ["sh", "-c", script]})).await;
    assert_eq!(again["already_running"], json!(true));
    assert_eq!(again["name"].as_str(), Some(name.as_str()));
    assert_eq!(again["status"]["pid"].as_u64(), Some(pid));
    assert!(
        again["message"]
            .as_str()
            .unwrap()
            .contains("already running")
    );

    // Wait for the output, through the tool.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
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
        if r["matched"] == json!(1) && last["matched"] == json!(1) {
            break;
        }
        assert!(Instant::now() < deadline, "output never arrived: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The tail, numbers as strings, the pid instead of the name. (stdout and stderr are
    // separate pipes, so their relative order is not fixed: read one at a time.)
    let tail = ok(
        &s,
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
        &s,
        "search_logs",
        json!({"process": name, "stream": "stderr"}),
    )
    .await;
    assert_eq!(errs["lines"].as_array().unwrap().len(), 1);
    assert_eq!(errs["lines"][0]["text"], json!("oops"));
    assert_eq!(errs["lines"][0]["stream"], json!("stderr"));
    assert!(tail["hint"].as_str().unwrap().contains("around_line="));

    // A search: matches marked, context around them, ANSI stripped by default.
    let r = call(
        &s,
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
        &s,
        "search_logs",
        json!({"process": name, "pattern": "alert"}),
    )
    .await;
    assert_eq!(red["lines"][0]["text"], json!("red alert"));
    let raw_red = ok(
        &s,
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
        &s,
        "search_logs",
        json!({"process": name, "around_line": seq, "context_lines": "2"}),
    )
    .await;
    assert_eq!(
        texts(&around),
        ["line 13", "line 14", "line 15", "line 16", "line 17"]
    );

    // The default cap: 200 lines.
    let capped = ok(&s, "search_logs", json!({"process": name})).await;
    assert_eq!(capped["lines"].as_array().unwrap().len(), 200);
    // Time filters: nothing was printed in the future.
    let none = ok(
        &s,
        "search_logs",
        json!({"process": name, "since": "2999-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(none["lines"], json!([]));
    let recent = ok(
        &s,
        "search_logs",
        json!({"process": name, "since": "10m", "stream": "stderr"}),
    )
    .await;
    assert_eq!(recent["lines"].as_array().unwrap().len(), 1);

    // Failures that say what would work.
    let e = err(&s, "search_logs", json!({"process": "web"})).await;
    assert!(e.contains(&format!("known: {name}")), "{e}");
    let e = err(
        &s,
        "search_logs",
        json!({"process": name, "pattern": "(unclosed"}),
    )
    .await;
    assert!(e.contains("bad regex") && e.contains("(unclosed"), "{e}");
    let e = err(&s, "search_logs", json!({"process": name, "index": -5})).await;
    assert!(e.contains("-1") && e.contains("1 "), "{e}");
    let e = err(&s, "search_logs", json!({"process": name, "lines": 5})).await;
    assert!(
        e.contains("unknown field `lines`") && e.contains("`tail`"),
        "{e}"
    );
    let e = err(
        &s,
        "search_logs",
        json!({"process": name, "stream": "stdmix"}),
    )
    .await;
    assert!(e.contains("stdout, stderr or both"), "{e}");
    let e = err(
        &s,
        "search_logs",
        json!({"process": name, "since": "yesterday"}),
    )
    .await;
    assert!(e.contains("10m") && e.contains("ISO 8601"), "{e}");
    let e = err(
        &s,
        "search_logs",
        json!({"process": name, "head": 1, "tail": 1}),
    )
    .await;
    assert!(e.contains("not both"), "{e}");
    let e = err(&s, "search_build_log", json!({"process": name})).await;
    assert!(e.contains("build"), "{e}");
    let e = err(&s, "start", json!({})).await;
    assert!(e.contains("`name`") && e.contains("`command`"), "{e}");
    let e = err(&s, "launch", json!({})).await;
    assert!(e.contains("get_status, start"), "{e}");

    // Restart: a new pid; the previous run stays readable as index -2.
    let r = ok(&s, "restart", json!({"process": name})).await;
    let new_pid = r["status"]["pid"].as_u64().unwrap();
    assert_ne!(new_pid, pid);
    let prev = ok(
        &s,
        "search_logs",
        json!({"process": name, "index": "-2", "pattern": "oops"}),
    )
    .await;
    assert_eq!(prev["matched"], json!(1));
    assert_eq!(prev["instances"][0]["pid"].as_u64(), Some(pid));

    // Stop (force as a string), and the status says so.
    let stopped = ok(&s, "stop", json!({"process": name, "force": "true"})).await;
    assert_eq!(stopped["status"]["state"], json!("stopped"));
    assert!(
        stopped["message"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {new_pid}"))
    );
    let st = ok(&s, "get_status", json!({"process": name})).await;
    assert_eq!(st["processes"][0]["state"], json!("stopped"));
    assert_eq!(st["processes"][0]["run_instances"], json!(2));
    assert!(!process_alive(new_pid as i32));

    s.cancel().await.unwrap();
    d.shutdown().await;
}

fn process_alive(pid: i32) -> bool {
    // A zombie is gone for our purposes: read its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

const BUILD_CONFIG: &str = r#"
[process.app]
command = ["sh", "-c", "echo serving; exec sleep 60"]
build = ["sh", "-c", "if [ -f fail ]; then echo 'error[E0308]: mismatched types' >&2; exit 1; fi; if [ -f slow ]; then echo compiling slowly; exec sleep 30; fi; for i in 1 2 3 4 5 6; do echo compiling $i; sleep 0.2; done"]
autostart = false
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_builds_with_progress_reports_failures_and_honours_cancellation() {
    let (_t, project, data) = dirs();
    let d = TestDaemon::start(
        &project,
        &data,
        Setup {
            config: Some(BUILD_CONFIG),
            ..Default::default()
        },
    )
    .await;
    let client = Client::default();
    let progress = client.progress.clone();
    let messages = client.messages.clone();
    let s = connect_with(&d, client, None).await;

    let started = ok(&s, "start", json!({"name": "app"})).await;
    let pid = started["status"]["pid"]
        .as_u64()
        .expect("running after its build");

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

    // A failed build: an error result with the compiler's error; the old pid runs on.
    std::fs::write(project.join("fail"), "").unwrap();
    let e = err(&s, "restart", json!({"process": "app"})).await;
    assert!(e.contains("error[E0308]: mismatched types"), "{e}");
    let st = ok(&s, "get_status", json!({"process": "app"})).await;
    assert_eq!(st["processes"][0]["pid"].as_u64(), Some(new_pid));
    let log = ok(
        &s,
        "search_build_log",
        json!({"process": "app", "pattern": "E0308"}),
    )
    .await;
    assert_eq!(log["matched"], json!(1));
    std::fs::remove_file(project.join("fail")).unwrap();

    // Cancelling the request (here by a client-side timeout) stops the build.
    std::fs::write(project.join("slow"), "").unwrap();
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = ok(&s, "get_status", json!({"process": "app"})).await;
        let p = &st["processes"][0];
        let events: Vec<&str> = p["recent_events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["what"].as_str().unwrap())
            .collect();
        // Events become readable with the store's next group commit.
        if p["building"] == json!(false) && events.iter().any(|e| e.contains("build cancelled")) {
            assert_eq!(
                p["pid"].as_u64(),
                Some(new_pid),
                "the old instance keeps running"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the build still runs: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(process_alive(new_pid as i32));

    s.cancel().await.unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_version_from_2025_03_26_to_2026_07_28_works() {
    let (_t, project, data) = dirs();
    let d = TestDaemon::start(&project, &data, Setup::default()).await;
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
    let (code, resp) = raw(
        d.port,
        &post_mcp(d.port, "", &init_body("2025-03-26")).replace("POST /mcp ", "POST /mcp/ "),
    )
    .await;
    assert_eq!(code, 200, "{resp}");
    assert!(
        resp.contains("\"protocolVersion\":\"2025-03-26\""),
        "{resp}"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_and_hosts_are_refused_and_the_token_is_enforced() {
    let (_t, project, data) = dirs();
    let d = TestDaemon::start(&project, &data, Setup::default()).await;
    let body = init_body("2025-06-18");
    let (code, resp) = raw(
        d.port,
        &post_mcp(d.port, "Origin: https://evil.example\r\n", &body),
    )
    .await;
    assert_eq!(code, 403, "{resp}");
    assert!(resp.contains("evil.example"), "{resp}");
    let (code, _) = raw(
        d.port,
        &post_mcp(d.port, "", &body).replace(
            &format!("Host: 127.0.0.1:{}", d.port),
            "Host: rebound.example",
        ),
    )
    .await;
    assert_eq!(code, 403);
    let (code, resp) = raw(
        d.port,
        &post_mcp(d.port, "Origin: http://localhost:5173\r\n", &body),
    )
    .await;
    assert_eq!(code, 403, "another local page, unless configured: {resp}");
    // The JSON API is behind the same gate.
    let (code, _) = raw(
        d.port,
        "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 403);
    d.shutdown().await;

    let (_t2, project, data) = dirs();
    let d = TestDaemon::start(
        &project,
        &data,
        Setup {
            token: Some("s3cret-token".into()),
            ..Default::default()
        },
    )
    .await;
    let (code, resp) = raw(d.port, &post_mcp(d.port, "", &body)).await;
    assert_eq!(code, 401, "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{resp}"
    );
    let (code, _) = raw(
        d.port,
        &post_mcp(d.port, "Authorization: Bearer wrong\r\n", &body),
    )
    .await;
    assert_eq!(code, 401);
    let s = connect_with(&d, Client::default(), Some("s3cret-token")).await;
    ok(&s, "get_status", json!({})).await;
    s.cancel().await.unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_live_past_the_old_limit_and_dead_ones_get_404() {
    let (_t, project, data) = dirs();
    // The limit is configurable: 1.5 s here stands for the week of the default.
    let d = TestDaemon::start(
        &project,
        &data,
        Setup {
            session_idle: Some(Duration::from_millis(1500)),
            ..Default::default()
        },
    )
    .await;
    assert!(bpm::mcp::DEFAULT_SESSION_IDLE >= Duration::from_secs(24 * 3600));
    let port = d.port;
    let (code, resp) = raw(port, &post_mcp(port, "", &init_body("2025-06-18"))).await;
    assert_eq!(code, 200, "{resp}");
    let id = session_id(&resp);
    let with_session = |body: &str| {
        post_mcp(
            port,
            &format!("Mcp-Session-Id: {id}\r\nMcp-Protocol-Version: 2025-06-18\r\n"),
            body,
        )
    };
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    let (code, _) = raw(port, &with_session(&initialized)).await;
    assert_eq!(code, 202);
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string();
    // Idle for a while under the limit: still alive.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (code, resp) = raw(port, &with_session(&list)).await;
    assert_eq!(code, 200, "{resp}");
    assert!(resp.contains("search_logs"));
    // Idle past the limit: the spec's answer, 404, so the client re-initializes.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (code, _) = raw(port, &with_session(&list)).await;
    assert_eq!(code, 404);

    // A real client idle past the limit carries on: it re-initializes by itself.
    let s = connect(&d).await;
    ok(&s, "get_status", json!({})).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ok(&s, "get_status", json!({})).await;
    s.cancel().await.unwrap();

    // After a daemon restart, a session of the old daemon gets 404 too.
    let project = d.project.clone();
    let data = d.data.clone();
    d.shutdown().await;
    let d = TestDaemon::start(&project, &data, Setup::default()).await;
    let (code, _) = raw(
        d.port,
        &post_mcp(
            d.port,
            &format!("Mcp-Session-Id: {id}\r\nMcp-Protocol-Version: 2025-06-18\r\n"),
            &list,
        ),
    )
    .await;
    assert_eq!(code, 404);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_call_is_agent_activity() {
    let (_t, project, data) = dirs();
    let d = TestDaemon::start(&project, &data, Setup::default()).await;
    let s = connect(&d).await;
    // The JSON API is not an agent: it reads the idle time without resetting it.
    let idle = || async {
        let (code, resp) = raw(
            d.port,
            "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(code, 200);
        let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
        let v: Value = serde_json::from_str(body).unwrap();
        v["agent_idle_seconds"].as_f64().unwrap()
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

/// SIGTERM the daemon recorded in `data` (one this test started), and wait until it is gone.
fn stop_daemon_of(data: &Path) -> Option<u32> {
    let info = bpm::daemon::read_daemon_info(data)?;
    let pid = nix::unistd::Pid::from_raw(info.pid as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while process_alive(info.pid as i32) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(info.pid)
}

/// Stops the daemon a `bpm mcp` started, also when the test fails.
struct StopDaemonOf(PathBuf);

impl Drop for StopDaemonOf {
    fn drop(&mut self) {
        stop_daemon_of(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdio_bridge_starts_the_daemon_and_survives_its_restart() {
    let (_t, project, data) = dirs();
    let _cleanup = StopDaemonOf(data.clone());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bpm"))
        .arg("mcp")
        .arg("--data-dir")
        .arg(&data)
        .current_dir(&project)
        .env("BPM_PORT", "0")
        .env("BPM_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
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
        json!({"command": ["sh", "-c", "echo hello from bridge; exec sleep 60"]}),
    )
    .await;
    let name = started["name"].as_str().unwrap().to_owned();
    let first = bpm::daemon::read_daemon_info(&data).expect("a daemon was started");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ok(
            &s,
            "search_logs",
            json!({"process": name, "pattern": "hello"}),
        )
        .await;
        if r["matched"] == json!(1) {
            break;
        }
        assert!(Instant::now() < deadline, "no output: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Failures come through as error results.
    let e = err(&s, "search_logs", json!({"process": "nope"})).await;
    assert!(e.contains(&format!("known: {name}")), "{e}");
    ok(&s, "restart", json!({"process": name})).await;

    // The daemon goes away; the next call finds none and starts another.
    stop_daemon_of(&data);
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
