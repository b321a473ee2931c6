//! MCP clients of every protocol generation, as the official SDKs speak them: a
//! 2026-07-28 client (no `initialize`, per-request `_meta`) and a 2025-03-26 one through
//! the real `bpm mcp` bridge, calling every tool; what an old client gets over HTTP (no
//! priming events it cannot parse); unknown tools as JSON-RPC errors; input schemas
//! that strict and OpenAPI-subset clients accept.

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ErrorCode,
    Implementation, ProtocolVersion, ResultType,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient};
use serde_json::{Value, json};

use crate::helpers::api::{exchange_async, mcp};
use crate::helpers::daemon::{DaemonOf, Dirs, InProcess, bpm_command, options};
use crate::helpers::{umask_shared, wait_for_async};

#[derive(Clone)]
struct Client {
    version: ProtocolVersion,
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        let mut c = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("bpm-compat-test", "1"),
        );
        c.protocol_version = self.version.clone();
        c
    }
}

type Session = RunningService<RoleClient, Client>;

/// A session of a client on `version`: from 2026-07-28 on without `initialize`
/// (`server/discover` and per-request metadata), before it with the handshake.
async fn session<T, E, A>(version: ProtocolVersion, transport: T) -> Session
where
    T: rmcp::transport::IntoTransport<RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    let client = Client {
        version: version.clone(),
    };
    let lifecycle = if version.has_initialize() {
        ClientLifecycleMode::Initialize
    } else {
        ClientLifecycleMode::Discover {
            preferred_versions: vec![version.clone()],
        }
    };
    client
        .serve_with_lifecycle(transport, lifecycle)
        .await
        .unwrap_or_else(|e| panic!("an MCP session on {version}: {e}"))
}

/// `bpm mcp` for the data directory of `dirs`, as a client launches it.
fn bridge(dirs: &Dirs) -> tokio::process::Child {
    let mut cmd = bpm_command(dirs);
    cmd.arg("mcp")
        .arg("--data-dir")
        .arg(&dirs.data)
        .current_dir(&dirs.project)
        .env("BPM_PORT", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let _umask = umask_shared();
    tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn call(s: &Session, tool: &str, args: Value) -> Result<CallToolResult, ServiceError> {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    s.call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args))
        .await
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A call that must be answered with a result in the shape of `version`: with
/// `resultType: "complete"` from 2026-07-28 on, without it before. Its structured
/// content when it succeeded.
async fn shaped(s: &Session, version: &ProtocolVersion, tool: &str, args: Value) -> Option<Value> {
    let r = call(s, tool, args.clone())
        .await
        .unwrap_or_else(|e| panic!("{version} {tool} {args}: {e}"));
    let expected = (!version.has_initialize()).then_some(ResultType::COMPLETE);
    assert_eq!(
        r.result_type, expected,
        "{version} {tool}: the result's resultType"
    );
    if r.is_error == Some(true) {
        return None;
    }
    let content = r.structured_content.clone();
    Some(content.unwrap_or_else(|| panic!("{version} {tool}: structured content: {}", text(&r))))
}

/// An unknown tool is the JSON-RPC error invalid params (-32602), naming the tools.
async fn unknown_tool_is_invalid_params(s: &Session, what: &str) {
    match call(s, "no_such_tool", json!({})).await {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.code, ErrorCode::INVALID_PARAMS, "{what}: {e:?}");
            assert!(
                e.message.contains("no_such_tool") && e.message.contains("search_logs"),
                "{what}: {e:?}"
            );
        }
        other => panic!("{what}: an unknown tool should be error -32602, got {other:?}"),
    }
}

/// Every tool, through the real `bpm mcp`, by a client on `version`.
async fn every_tool_through_the_bridge(dirs: &Dirs, version: ProtocolVersion, name: &str) {
    let mut child = bridge(dirs);
    let transport = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let s = session(version.clone(), transport).await;
    let tools = s.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 6, "{version}");
    let v = &version;

    let started = shaped(
        &s,
        v,
        "start",
        json!({"name": name, "command": ["sh", "-c", "echo hello from a client; exec sleep 60"]}),
    )
    .await
    .expect("start succeeds");
    assert_eq!(started["name"], json!(name), "{started}");
    let status = shaped(&s, v, "get_status", json!({"process": name}))
        .await
        .expect("get_status succeeds");
    assert!(status["processes"][0]["pid"].as_u64().is_some(), "{status}");
    wait_for_async("the output, through the bridge", async || {
        let r = shaped(
            &s,
            v,
            "search_logs",
            json!({"process": name, "pattern": "hello"}),
        )
        .await
        .expect("search_logs succeeds");
        r["matched"] == json!(1)
    })
    .await;
    // No build ever ran: an error result, in the same shape.
    assert_eq!(
        shaped(&s, v, "search_build_log", json!({"process": name})).await,
        None
    );
    shaped(&s, v, "restart", json!({"process": name}))
        .await
        .expect("restart succeeds");
    let stopped = shaped(&s, v, "stop", json!({"process": name, "remove": true}))
        .await
        .expect("stop succeeds");
    assert!(
        stopped["message"].as_str().unwrap().contains("removed"),
        "{stopped}"
    );
    unknown_tool_is_invalid_params(&s, &format!("{version} through bpm mcp")).await;

    s.cancel().await.unwrap();
    let _ = tokio::time::timeout(crate::helpers::DEADLINE, child.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_2026_07_28_and_2025_03_26_call_every_tool_through_the_bridge() {
    let dirs = Dirs::new();
    let _daemon = DaemonOf(dirs.data.clone());
    every_tool_through_the_bridge(&dirs, ProtocolVersion::V_2026_07_28, "new-client").await;
    every_tool_through_the_bridge(&dirs, ProtocolVersion::V_2025_03_26, "old-client").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tool_is_invalid_params_over_http_on_every_version() {
    let dirs = Dirs::new();
    let d = InProcess::start(options(&dirs));
    for version in [ProtocolVersion::V_2025_03_26, ProtocolVersion::V_2026_07_28] {
        let s = session(
            version.clone(),
            StreamableHttpClientTransport::from_uri(d.mcp_url()),
        )
        .await;
        unknown_tool_is_invalid_params(&s, &format!("{version} over HTTP")).await;
        // Bad arguments of a known tool stay results the agent can act on.
        let r = call(&s, "stop", json!({"bogus": 1})).await.unwrap();
        assert_eq!(r.is_error, Some(true), "{}", text(&r));
        s.cancel().await.unwrap();
    }
    d.shutdown().await;
}

/// The events of an SSE body whose data is empty: priming events.
fn priming_events(body: &str) -> Vec<&str> {
    body.split("\n\n")
        .filter(|e| {
            let data: Vec<&str> = e.lines().filter_map(|l| l.strip_prefix("data:")).collect();
            !data.is_empty() && data.iter().all(|d| d.trim().is_empty())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_older_than_2025_11_25_get_no_priming_events() {
    let dirs = Dirs::new();
    let d = InProcess::start(options(&dirs));
    let port = d.port;
    let sse = |r: &crate::helpers::api::Reply| {
        assert_eq!(r.code, 200, "{r}");
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("text/event-stream")),
            "an event stream: {r}"
        );
    };

    // A 2025-03-26 client: its initialize, then a call in its session (such clients send
    // no MCP-Protocol-Version header).
    let r = exchange_async(port, mcp::post(port, "", &mcp::initialize("2025-03-26"))).await;
    sse(&r);
    assert!(r.body.contains("\"protocolVersion\":\"2025-03-26\""), "{r}");
    assert_eq!(priming_events(&r.body), Vec::<&str>::new(), "{r}");
    let id = r.header("mcp-session-id").expect("a session").to_owned();
    let session = format!("Mcp-Session-Id: {id}\r\n");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    let r = exchange_async(port, mcp::post(port, &session, &initialized)).await;
    assert_eq!(r.code, 202, "{r}");
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string();
    let r = exchange_async(port, mcp::post(port, &session, &list)).await;
    sse(&r);
    assert!(r.body.contains("search_logs"), "{r}");
    assert_eq!(priming_events(&r.body), Vec::<&str>::new(), "{r}");
    // The same with a 2025-06-18 header.
    let r = exchange_async(port, mcp::post(port, "", &mcp::initialize("2025-06-18"))).await;
    sse(&r);
    assert_eq!(priming_events(&r.body), Vec::<&str>::new(), "{r}");

    // A 2025-11-25 client gets them: it can resume a stream the server closes.
    let r = exchange_async(port, mcp::post(port, "", &mcp::initialize("2025-11-25"))).await;
    sse(&r);
    assert_eq!(priming_events(&r.body).len(), 1, "{r}");
    let id = r.header("mcp-session-id").expect("a session").to_owned();
    let session = format!("Mcp-Session-Id: {id}\r\nMCP-Protocol-Version: 2025-11-25\r\n");
    let r = exchange_async(port, mcp::post(port, &session, &initialized)).await;
    assert_eq!(r.code, 202, "{r}");
    let r = exchange_async(port, mcp::post(port, &session, &list)).await;
    sse(&r);
    assert_eq!(priming_events(&r.body).len(), 1, "{r}");
    d.shutdown().await;
}

/// A 2026-07-28 call (stateless, no session) that sends nothing before its answer gets a
/// plain JSON body: no event stream to open and parse for a one-message reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_call_is_answered_with_a_json_body() {
    let dirs = Dirs::new();
    let d = InProcess::start(options(&dirs));
    let port = d.port;
    let call = json!({
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "get_status",
            "arguments": {},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }
    })
    .to_string();
    let headers =
        "MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: get_status\r\n";
    let r = exchange_async(port, mcp::post(port, headers, &call)).await;
    assert_eq!(r.code, 200, "{r}");
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "a JSON body: {r}"
    );
    let body: Value = serde_json::from_str(&r.body).expect("one JSON-RPC message");
    assert_eq!(body["id"], 7, "{body}");
    assert!(
        body["result"]["structuredContent"]["processes"].is_array(),
        "{body}"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_schemas_use_only_standard_formats_and_no_type_arrays() {
    let dirs = Dirs::new();
    let d = InProcess::start(options(&dirs));
    let s = session(
        ProtocolVersion::V_2025_11_25,
        StreamableHttpClientTransport::from_uri(d.mcp_url()),
    )
    .await;
    let tools = s.list_all_tools().await.unwrap();
    for t in &tools {
        let input = Value::Object((*t.input_schema).clone());
        assert_eq!(
            bpm::mcp::schema::not_portable(&input, true),
            Vec::<String>::new(),
            "{}'s input schema: {input}",
            t.name
        );
        assert!(input.get("$defs").is_none(), "{}: {input}", t.name);
        let output = Value::Object((**t.output_schema.as_ref().unwrap()).clone());
        assert_eq!(
            bpm::mcp::schema::not_portable(&output, false),
            Vec::<String>::new(),
            "{}'s output schema",
            t.name
        );
    }
    let search = tools.iter().find(|t| t.name == "search_logs").unwrap();
    let props = &search.input_schema["properties"];
    assert_eq!(props["stream"]["type"], json!("string"), "{props}");
    assert_eq!(
        props["stream"]["enum"],
        json!(["both", "stdout", "stderr"]),
        "{props}"
    );
    assert_eq!(
        props["tail"],
        json!({"type": "integer", "minimum": 0, "description": props["tail"]["description"]})
    );
    let start = tools.iter().find(|t| t.name == "start").unwrap();
    let props = &start.input_schema["properties"];
    assert_eq!(
        props["restart_policy"]["enum"],
        json!(["on-failure", "never", "always"])
    );
    assert_eq!(props["ready_port"]["maximum"], json!(65535));
    // Optional parameters are simply not required.
    assert!(search.input_schema.get("required").is_none());
    assert!(start.input_schema.get("required").is_none());
    s.cancel().await.unwrap();
    d.shutdown().await;
}
