//! `bpm mcp`: the same tools over stdio, for clients that only launch commands. It is a
//! bridge, not a second server: tool calls go to the running daemon over its Unix socket
//! (started when none runs), with progress forwarded and cancellation passed on. If the
//! daemon goes away between calls, the next call finds or starts it again.
//!
//! A call is sent once: a daemon that went away is noticed before the call is sent (it
//! does not answer on its socket), never by retrying a call that may have run, so a
//! `restart` whose answer was lost is not run twice.
//!
//! The session with the daemon and the client's session may speak different protocol
//! versions: what comes back from the daemon is in the shape of the upstream session's
//! version, and is reshaped for the client's here (see [`for_the_client`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelledNotificationParam,
    ClientCapabilities, ClientConfig, ClientRequest, ContentBlock, Implementation, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ProgressToken, Request, ResultType,
    ServerConfig, ServerResult,
};
use rmcp::service::{
    NotificationContext, PeerRequestOptions, RequestContext, RunningService, ServiceError,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ErrorData, Peer, RoleClient, RoleServer, ServerHandler, ServiceExt};
use tokio::sync::Mutex as AsyncMutex;

use crate::client::{DaemonOptions, answers, ensure_daemon};

/// Serve the tools on stdin/stdout until the client closes stdin.
pub async fn serve_stdio(opts: DaemonOptions) -> anyhow::Result<()> {
    let bridge = Bridge {
        opts,
        upstream: Arc::new(AsyncMutex::new(None)),
        progress: Arc::default(),
    };
    let service = bridge.serve(rmcp::transport::stdio()).await?;
    service.waiting().await?;
    Ok(())
}

/// Upstream progress tokens mapped to the downstream request they belong to.
type ProgressRoutes = Arc<Mutex<HashMap<ProgressToken, (Peer<RoleServer>, ProgressToken)>>>;

/// The session with the daemon, and the daemon's socket.
type Session = (RunningService<RoleClient, Upstream>, PathBuf);

#[derive(Clone)]
struct Bridge {
    opts: DaemonOptions,
    upstream: Arc<AsyncMutex<Option<Session>>>,
    progress: ProgressRoutes,
}

/// The bridge's side of the session with the daemon: forwards progress downstream.
#[derive(Clone)]
struct Upstream {
    progress: ProgressRoutes,
}

impl ClientHandler for Upstream {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let route = self
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&params.progress_token)
            .cloned();
        if let Some((peer, token)) = route {
            let mut p = ProgressNotificationParam::new(token, params.progress);
            p.total = params.total;
            p.message = params.message;
            let _ = peer.notify_progress(p).await;
        }
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("bpm-mcp-bridge", env!("CARGO_PKG_VERSION")),
        )
    }
}

impl Bridge {
    /// The session with the daemon, (re)connecting (and starting the daemon) as needed:
    /// a session whose daemon no longer answers on its socket is replaced before
    /// anything is sent on it.
    async fn session(&self) -> Result<Peer<RoleClient>, String> {
        let mut up = self.upstream.lock().await;
        if let Some((s, socket)) = up.as_ref()
            && !s.is_closed()
            && answers(socket).await
        {
            return Ok(s.peer().clone());
        }
        if let Some((old, _)) = up.take() {
            tracing::info!("bpm mcp: the daemon went away; reconnecting");
            let _ = old.cancel().await;
        }
        let target = ensure_daemon(&self.opts).await.map_err(|e| e.to_string())?;
        let socket = target.socket();
        let transport = StreamableHttpClientTransport::from_unix_socket(
            &socket.to_string_lossy(),
            "http://localhost/mcp",
        );
        let service = Upstream {
            progress: self.progress.clone(),
        }
        .serve(transport)
        .await
        .map_err(|e| format!("cannot reach the bpm daemon at {}: {e}", socket.display()))?;
        let peer = service.peer().clone();
        *up = Some((service, socket));
        Ok(peer)
    }

    async fn forward(
        &self,
        peer: Peer<RoleClient>,
        request: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, Forwarded> {
        let handle = peer
            .send_cancellable_request(
                ClientRequest::CallToolRequest(Request::new(request)),
                PeerRequestOptions::no_options(),
            )
            .await
            .map_err(|e| Forwarded::Lost(e.to_string()))?;
        let downstream = context.meta.get_progress_token();
        if let Some(token) = downstream {
            self.progress
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(handle.progress_token.clone(), (context.peer.clone(), token));
        }
        let upstream_token = handle.progress_token.clone();
        let id = handle.id.clone();
        let result = tokio::select! {
            r = handle.await_response() => r.map_err(|e| match e {
                // The daemon answered with a JSON-RPC error: the client gets it as is.
                ServiceError::McpError(e) => Forwarded::Error(e),
                e => Forwarded::Lost(e.to_string()),
            }),
            _ = context.ct.cancelled() => {
                let _ = peer
                    .notify_cancelled(CancelledNotificationParam::new(
                        Some(id),
                        Some("cancelled by the client".into()),
                    ))
                    .await;
                Err(Forwarded::Lost("cancelled".to_owned()))
            }
        };
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&upstream_token);
        match result? {
            ServerResult::CallToolResult(r) => Ok(for_the_client(r).into()),
            other => Err(Forwarded::Lost(format!(
                "unexpected answer from the daemon: {other:?}"
            ))),
        }
    }
}

/// How a forwarded call failed.
enum Forwarded {
    /// The daemon answered with a JSON-RPC error (e.g. an unknown tool).
    Error(ErrorData),
    /// No answer: the daemon went away, or the client cancelled.
    Lost(String),
}

/// A daemon's result, valid for whichever protocol version the client negotiated. The
/// daemon answered in the upstream session's version, which may omit what a newer
/// client requires (`resultType`, since 2026-07-28): the result is stamped as a 2026-07-28
/// result, and rmcp's server side takes off what the client's version does not know
/// before it is sent.
fn for_the_client(mut result: CallToolResult) -> CallToolResult {
    result.result_type.get_or_insert(ResultType::COMPLETE);
    result
}

impl Bridge {
    /// A `start` of a command gets what the agent's environment means: its directory
    /// (the agent's root, else the directory `bpm mcp` was launched in) and the
    /// environment `bpm mcp` was launched with (PATH, a virtualenv...), under what the
    /// call sets itself.
    async fn start_defaults(&self, request: &mut CallToolRequestParams, peer: &Peer<RoleServer>) {
        let args = request.arguments.get_or_insert_with(Default::default);
        if !args.contains_key("command") {
            return;
        }
        if args.get("cwd").is_none_or(|v| v.is_null()) {
            let dir = super::client_root(peer)
                .await
                .unwrap_or_else(|| self.opts.cwd.clone());
            args.insert("cwd".into(), dir.to_string_lossy().into_owned().into());
        }
        let mut env: serde_json::Map<String, serde_json::Value> = std::env::vars()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        if let Some(serde_json::Value::Object(given)) = args.get("env") {
            env.extend(given.clone());
        }
        args.insert("env".into(), serde_json::Value::Object(env));
    }
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        super::tools::server_config()
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        // The same binary: the daemon's list is this one.
        Ok(ListToolsResult::with_all_items(
            super::tools::tool_list().to_vec(),
        ))
    }

    async fn call_tool(
        &self,
        mut request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if !super::tools::tool_list()
            .iter()
            .any(|t| t.name == request.name)
        {
            return Err(super::tools::unknown_tool(&request.name));
        }
        if request.name == "start" {
            self.start_defaults(&mut request, &context.peer).await;
        }
        let peer = match self.session().await {
            Ok(p) => p,
            Err(e) => {
                return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "bpm mcp could not reach the daemon: {e}; check `bpm status`, or start it with `bpm serve`"
                ))])
                .into());
            }
        };
        // Sent once (see the module docs): an error here may come after the daemon ran
        // the call, so it is reported, not retried.
        match self.forward(peer, request, &context).await {
            Ok(r) => Ok(r),
            Err(Forwarded::Error(e)) => Err(e),
            Err(Forwarded::Lost(e)) => Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "bpm mcp lost the daemon during the call ({e}); the call may or may not have taken effect: check with get_status before repeating it"
            ))])
            .into()),
        }
    }
}
