//! The six tools, over the operations layer. One `BpmTools` serves one MCP session.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use rmcp::handler::server::common::{schema_for_input, schema_for_output};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::Serialize;

use super::params::{
    self, GetStatusParams, Index, RestartParams, SearchLogsParams, StartParams, StopParams,
};
use super::render::{self, LogsOutput, StartOutput, StopOutput};
use crate::daemon::ops::{OpError, Ops};
use crate::logs::{Actor, InstanceKind};
use crate::protocol::{LogQuery, StartRequest, StartResult, StatusReport};

/// How often `restart` and `start` report progress while a build runs.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

const INSTRUCTIONS: &str = "bpm supervises this project's long-running processes (dev servers, API servers, watchers, builds) and keeps everything they print, across restarts, crashes and reboots. Use get_status to see what runs; search_logs to read or grep a process's output (index -2 is the run before the current one, e.g. the one that crashed); search_build_log for compiler output; start to run a command under supervision instead of running it yourself (it is shared with other agents and terminals, and not duplicated); restart after changing code (it rebuilds first when the process has a build step).";

/// The MCP server of one session.
#[derive(Clone)]
pub struct BpmTools {
    ops: Ops,
}

impl BpmTools {
    pub fn new(ops: Ops) -> BpmTools {
        BpmTools { ops }
    }
}

/// The tool list, built once: names, descriptions, schemas and annotations.
pub fn tool_list() -> &'static [Tool] {
    static TOOLS: LazyLock<Vec<Tool>> = LazyLock::new(build_tools);
    &TOOLS
}

fn build_tools() -> Vec<Tool> {
    fn tool<P: schemars::JsonSchema + 'static, O: schemars::JsonSchema + 'static>(
        name: &'static str,
        title: &str,
        description: &'static str,
        annotations: ToolAnnotations,
    ) -> Tool {
        let input = schema_for_input::<P>().expect("tool parameters are objects");
        let output = schema_for_output::<O>();
        Tool::new(
            name,
            description,
            super::schema::portable_input((*input).clone()),
        )
        .with_title(title)
        .with_raw_output_schema(std::sync::Arc::new(super::schema::portable_output(
            (*output).clone(),
        )))
        .annotate(annotations.open_world(false))
    }
    let read_only = || ToolAnnotations::new().read_only(true).idempotent(true);
    vec![
        tool::<GetStatusParams, StatusReport>(
            "get_status",
            "Status of supervised processes",
            "The daemon's mode (dev or release) and, for each process: state (ready, running, crashed and restarting, exited, failed, building...), pid, uptime, restarts, crash count, last exit, readiness, how many runs and builds are kept, and the last events. Pass `process` for one process and its recent events.",
            read_only(),
        ),
        tool::<StartParams, StartOutput>(
            "start",
            "Start a process",
            "Start a configured process by `name`, or run a new `command` under supervision (its output is kept and searchable, other agents and terminals see it). Idempotent: if the same command already runs in the same directory, that process is returned (already_running) instead of a duplicate. Reports readiness when the process has a readiness check.",
            ToolAnnotations::new()
                .read_only(false)
                .destructive(false)
                .idempotent(true),
        ),
        tool::<StopParams, StopOutput>(
            "stop",
            "Stop a process",
            "Stop a process and everything it started (its whole process group): the stop signal, a grace period, then SIGKILL. It stays stopped until started again. Its logs are kept.",
            ToolAnnotations::new()
                .read_only(false)
                .destructive(true)
                .idempotent(true),
        ),
        tool::<RestartParams, StartOutput>(
            "restart",
            "Restart a process",
            "Restart a process, e.g. after changing its code. With a build step it builds first while the old instance keeps running, then swaps; a failed build leaves the old instance running and returns the first compiler errors (see search_build_log for all of them). Waits for readiness when the process has a readiness check. Sends progress while building; cancelling the request cancels the build.",
            ToolAnnotations::new()
                .read_only(false)
                .destructive(true)
                .idempotent(false),
        ),
        tool::<SearchLogsParams, LogsOutput>(
            "search_logs",
            "Read or search process output",
            "Read or search what a process printed (stdout and stderr, kept across restarts, crashes and reboots). Without `pattern`: the last lines. With `pattern` (regex): the matching lines, `context_lines` around each. `index` picks the run: -1 the current one (default), -2 the one before (e.g. the run that crashed). Omit `process` to search every process at once (which process printed this panic?). Answers are capped (default the last 200 lines, about 32 KB); the answer says what was left out and how to see it. Each line has its `seq` number: pass it as `around_line` to see what surrounds it.",
            read_only(),
        ),
        tool::<SearchLogsParams, LogsOutput>(
            "search_build_log",
            "Read or search build output",
            "The same as search_logs, over a process's builds (e.g. cargo build) instead of its runs: `index` -1 is the latest build. Use it after a failed restart to see every compiler error.",
            read_only(),
        ),
    ]
}

/// Who the server is and what it offers (the stdio bridge says the same).
pub fn server_config() -> ServerConfig {
    ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
        .with_server_info(Implementation::new("bpm", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
}

impl ServerHandler for BpmTools {
    fn get_info(&self) -> ServerConfig {
        server_config()
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tool_list().to_vec()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.ops.agent_activity();
        // Bad arguments are answered as `isError` results the agent can act on, not as
        // protocol errors (which clients tend to hide from the model). An unknown tool is
        // the protocol error the spec asks for.
        if !tool_list().iter().any(|t| t.name == request.name) {
            return Err(unknown_tool(&request.name));
        }
        let args = request.arguments;
        let result = match request.name.as_ref() {
            "get_status" => self.get_status(params::parse("get_status", args)).await,
            "start" => self.start(params::parse("start", args), &context).await,
            "stop" => self.stop(params::parse("stop", args)).await,
            "restart" => self.restart(params::parse("restart", args), &context).await,
            "search_logs" => {
                self.search(params::parse("search_logs", args), InstanceKind::Run)
                    .await
            }
            "search_build_log" => {
                self.search(params::parse("search_build_log", args), InstanceKind::Build)
                    .await
            }
            other => return Err(unknown_tool(other)),
        };
        // The agent was active until it got its answer (a start may wait for readiness).
        self.ops.agent_activity();
        Ok(match result {
            Ok(r) => r,
            Err(message) => CallToolResult::error(vec![ContentBlock::text(message)]),
        }
        .into())
    }
}

/// The JSON-RPC error (-32602, invalid params) for a call of a tool that does not exist.
pub fn unknown_tool(name: &str) -> ErrorData {
    let names: Vec<&str> = tool_list().iter().map(|t| t.name.as_ref()).collect();
    ErrorData::invalid_params(
        format!("no tool named `{name}`; the tools are {}", names.join(", ")),
        None,
    )
}

type ToolResult = Result<CallToolResult, String>;

fn ok<T: Serialize>(value: &T, text: String) -> ToolResult {
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content =
        Some(serde_json::to_value(value).map_err(|e| format!("internal error: {e}"))?);
    Ok(r)
}

fn op_err(e: OpError) -> String {
    e.to_string()
}

impl BpmTools {
    async fn get_status(&self, p: Result<GetStatusParams, String>) -> ToolResult {
        let p = p?;
        let report = self
            .ops
            .status(p.process.as_deref())
            .await
            .map_err(op_err)?;
        let text = render::status_text(&report, p.process.is_some());
        ok(&report, text)
    }

    async fn start(
        &self,
        p: Result<StartParams, String>,
        ctx: &RequestContext<RoleServer>,
    ) -> ToolResult {
        let p = p?;
        if p.name.is_none() && p.command.is_none() {
            return Err("start needs `name` (a process from get_status) or `command` (e.g. [\"npm\", \"run\", \"dev\"])".into());
        }
        // A command without a directory runs in the client's root, when it offers one
        // (else in the project directory).
        let cwd = match (&p.cwd, &p.command) {
            (None, Some(_)) => super::client_root(&ctx.peer).await,
            (c, _) => c.clone().map(Into::into),
        };
        let req = StartRequest {
            name: p.name.clone(),
            command: p.command.map(|c| c.into_argv()),
            cwd,
            env: p.env.unwrap_or_default().into_iter().collect(),
            wait_seconds: p.wait_seconds,
            restart: p.restart_policy,
            ready_port: p.ready_port,
            ready_url: p.ready_url,
            ready_log: p.ready_log,
        };
        if req.command.is_none() && req.name.as_deref() == Some("*") {
            // Every configured process that does not run.
            let names = self
                .each(
                    "*",
                    |s, runtime| !runtime && !s.state.is_live(),
                    "is configured and stopped",
                )
                .await?;
            let mut results = Vec::new();
            for name in names {
                let one = StartRequest {
                    name: Some(name.clone()),
                    ..req.clone()
                };
                results.push(
                    with_progress(&self.ops, &name, ctx, self.ops.start(one, Actor::Mcp)).await?,
                );
            }
            return started_output(results, "started");
        }
        let label = p.name.unwrap_or_else(|| "the process".into());
        let r = with_progress(&self.ops, &label, ctx, self.ops.start(req, Actor::Mcp)).await?;
        started_output(vec![r], "started")
    }

    async fn stop(&self, p: Result<StopParams, String>) -> ToolResult {
        let p = p?;
        let remove_logs = p.remove_logs == Some(true);
        if remove_logs && p.remove != Some(true) {
            return Err("remove_logs deletes the logs of a process being removed: pass remove: true with it".into());
        }
        let names = self
            .each(&p.process, |s, _| s.state.is_live(), "runs")
            .await?;
        let mut messages = Vec::new();
        let mut stopped = Vec::new();
        for name in &names {
            let was_pid = self.ops.status_now(name).map_err(op_err)?.pid;
            let status = self
                .ops
                .stop(name, p.force.unwrap_or(false), Actor::Mcp)
                .await
                .map_err(op_err)?;
            let mut message = render::stop_message(&status, was_pid);
            if p.remove == Some(true) {
                self.ops
                    .remove(&status.name, remove_logs)
                    .await
                    .map_err(op_err)?;
                message.push_str(if remove_logs {
                    "; removed from the list with its logs"
                } else {
                    "; removed from the list (its logs stay searchable)"
                });
            }
            messages.push(message);
            stopped.push(status);
        }
        let message = messages.join("; ");
        let status = stopped.remove(0);
        ok(
            &StopOutput {
                message: message.clone(),
                status,
                also: stopped,
            },
            message,
        )
    }

    /// The processes a verb acts on: `process` itself, or with `"*"` every process
    /// `pick` accepts (given its status and whether it was started with a command); an
    /// error naming `what` when `"*"` finds none.
    async fn each(
        &self,
        process: &str,
        pick: impl Fn(&crate::protocol::Status, bool) -> bool,
        what: &str,
    ) -> Result<Vec<String>, String> {
        if process != "*" {
            return Ok(vec![process.to_owned()]);
        }
        let report = self.ops.status(None).await.map_err(op_err)?;
        let names: Vec<String> = report
            .processes
            .iter()
            .filter(|p| pick(&p.status, p.runtime))
            .map(|p| p.status.name.clone())
            .collect();
        if names.is_empty() {
            return Err(format!("\"*\": no process {what}; see get_status"));
        }
        Ok(names)
    }

    async fn restart(
        &self,
        p: Result<RestartParams, String>,
        ctx: &RequestContext<RoleServer>,
    ) -> ToolResult {
        let p = p?;
        let wait = crate::protocol::wait_duration(p.wait_seconds)?;
        let names = self
            .each(&p.process, |s, _| s.state.is_live(), "runs")
            .await?;
        let mut results = Vec::new();
        for name in &names {
            let r = with_progress(
                &self.ops,
                name,
                ctx,
                self.ops.restart(name, Actor::Mcp, wait),
            )
            .await?;
            results.push(r);
        }
        started_output(results, "restarted")
    }

    async fn search(&self, p: Result<SearchLogsParams, String>, kind: InstanceKind) -> ToolResult {
        let p = p?;
        let tool = match kind {
            InstanceKind::Run => "search_logs",
            InstanceKind::Build => "search_build_log",
        };
        let pattern = p.pattern.filter(|s| !s.is_empty());
        let now = crate::logs::now_us();
        let time = |s: Option<String>, which: &str| {
            s.map(|s| {
                crate::timespec::parse(&s, now).map_err(|e| format!("{tool}: `{which}`: {e}"))
            })
            .transpose()
        };
        let since_us = time(p.since, "since")?;
        let until_us = time(p.until, "until")?;
        let max_bytes = p
            .max_bytes
            .unwrap_or(render::DEFAULT_BYTES)
            .clamp(1024, render::MAX_BYTES);
        let from_head = p.head.is_some();
        let around = p.around_line;
        let query = LogQuery {
            pattern: pattern.clone(),
            case_insensitive: p.case_insensitive.unwrap_or(false),
            context: p
                .context_lines
                .unwrap_or(if around.is_some() { 20 } else { 0 })
                .min(1000),
            head: p.head,
            tail: p.tail,
            all: false,
            index: match p.index {
                Some(Index::Relative(i)) => Some(i),
                _ => None,
            },
            number: match p.index {
                Some(Index::Number(n)) => Some(n),
                _ => None,
            },
            all_instances: p.all_instances.unwrap_or(false),
            build: kind == InstanceKind::Build,
            stream: p.stream.unwrap_or_default(),
            since_us,
            until_us,
            around,
            ..Default::default()
        };
        let result = match p.process.as_deref() {
            None | Some("*" | "") => self.ops.logs_many(&[], query).await,
            Some(one) => self.ops.logs(one, query).await,
        }
        .map_err(|e| format!("{tool}: {e}"))?;
        let out = render::logs_output(
            result,
            kind,
            p.keep_ansi.unwrap_or(false),
            max_bytes,
            from_head,
        );
        let text = render::logs_text(&out, pattern.as_deref());
        ok(&out, text)
    }
}

/// The answer of a start or restart of one or more processes: an error when any of them
/// did not come up.
fn started_output(mut results: Vec<StartResult>, verb: &str) -> ToolResult {
    let messages: Vec<String> = results.iter().map(|r| r.message(verb)).collect();
    let message = messages.join("; ");
    if results
        .iter()
        .any(|r| r.readiness.as_ref().is_some_and(|x| x.failed()))
    {
        return Err(message);
    }
    let result = results.remove(0);
    ok(
        &StartOutput {
            message: message.clone(),
            result,
            also: results,
        },
        message,
    )
}

/// Run a start or restart, sending progress notifications while it is under way when
/// the client asked for them, and cancelling the build when the client cancels.
async fn with_progress<T>(
    ops: &Ops,
    process: &str,
    ctx: &RequestContext<RoleServer>,
    op: impl Future<Output = Result<T, OpError>>,
) -> Result<T, String> {
    let token = ctx.meta.get_progress_token();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    let mut op = std::pin::pin!(op);
    let mut step = 0u32;
    loop {
        tokio::select! {
            r = &mut op => return r.map_err(op_err),
            _ = ctx.ct.cancelled() => {
                // The client gave up: stop the build (what runs keeps running).
                let _ = ops.cancel_build(process, Actor::Mcp).await;
                return Err(format!("cancelled: the build of {process} was stopped; the running instance, if any, keeps running"));
            }
            _ = ticker.tick(), if token.is_some() => {
                step += 1;
                let message = progress_message(ops, process, started.elapsed()).await;
                if let Some(token) = &token {
                    let _ = ctx
                        .peer
                        .notify_progress(
                            ProgressNotificationParam::new(token.clone(), f64::from(step))
                                .with_message(message),
                        )
                        .await;
                }
            }
        }
    }
}

/// "building api (3.5s): Compiling serde v1.0.200" — the build's newest line.
async fn progress_message(ops: &Ops, process: &str, elapsed: Duration) -> String {
    let store = ops.store().clone();
    let name = process.to_owned();
    let last = tokio::task::spawn_blocking(move || {
        let build = store.resolve(&name, InstanceKind::Build, -1).ok()?;
        if !build.is_live() {
            return None;
        }
        let lines = store
            .read(build.id, crate::logs::Window::Tail(1), &Default::default())
            .ok()?;
        lines.last().map(|l| l.text().into_owned())
    })
    .await
    .ok()
    .flatten();
    let secs = elapsed.as_secs_f64();
    match last {
        Some(line) => format!(
            "building {process} ({secs:.1}s): {}",
            strip_ansi_escapes::strip_str(line.trim())
        ),
        None => format!("{process}: working ({secs:.1}s)"),
    }
}
