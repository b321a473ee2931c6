//! `bpm mcp`: the same tools over stdio, for clients that only launch commands. It is a
//! bridge, not a second server: tool calls go to the running daemon over its Unix socket
//! (started when none runs), with progress forwarded and cancellation passed on. If the
//! daemon goes away between calls, the next call finds or starts it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelledNotificationParam,
    ClientCapabilities, ClientConfig, ClientRequest, ContentBlock, Implementation, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ProgressToken, Request, ServerConfig,
    ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ErrorData, Peer, RoleClient, RoleServer, ServerHandler, ServiceExt};
use tokio::sync::Mutex as AsyncMutex;

use crate::cli::client::{DaemonOptions, ensure_daemon};

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

#[derive(Clone)]
struct Bridge {
    opts: DaemonOptions,
    upstream: Arc<AsyncMutex<Option<RunningService<RoleClient, Upstream>>>>,
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
    /// The session with the daemon, (re)connecting (and starting the daemon) as needed.
    async fn session(&self) -> Result<Peer<RoleClient>, String> {
        let mut up = self.upstream.lock().await;
        if let Some(s) = up.as_ref()
            && !s.is_closed()
        {
            return Ok(s.peer().clone());
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
        *up = Some(service);
        Ok(peer)
    }

    async fn forget_session(&self) {
        if let Some(s) = self.upstream.lock().await.take() {
            let _ = s.cancel().await;
        }
    }

    async fn forward(
        &self,
        request: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, String> {
        let peer = self.session().await?;
        let handle = peer
            .send_cancellable_request(
                ClientRequest::CallToolRequest(Request::new(request)),
                PeerRequestOptions::no_options(),
            )
            .await
            .map_err(|e| e.to_string())?;
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
            r = handle.await_response() => r.map_err(|e| e.to_string()),
            _ = context.ct.cancelled() => {
                let _ = peer
                    .notify_cancelled(CancelledNotificationParam::new(
                        Some(id),
                        Some("cancelled by the client".into()),
                    ))
                    .await;
                Err("cancelled".to_owned())
            }
        };
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&upstream_token);
        match result? {
            ServerResult::CallToolResult(r) => Ok(r.into()),
            other => Err(format!("unexpected answer from the daemon: {other:?}")),
        }
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
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let first = self.forward(request.clone(), &context).await;
        let result = match first {
            Err(e) if e != "cancelled" && !context.ct.is_cancelled() => {
                // The daemon may have gone away: find or start it, and try once more.
                tracing::info!("bpm mcp: reconnecting to the daemon after: {e}");
                self.forget_session().await;
                self.forward(request, &context).await
            }
            other => other,
        };
        Ok(result.unwrap_or_else(|e| {
            CallToolResult::error(vec![ContentBlock::text(format!(
                "bpm mcp could not reach the daemon: {e}; check `bpm status`, or start it with `bpm serve`"
            ))])
            .into()
        }))
    }
}
