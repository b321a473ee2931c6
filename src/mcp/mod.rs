//! The MCP server: six tools for agents over the operations layer, served as rmcp
//! streamable HTTP at `/mcp` on the daemon's listener, and over stdio by `bpm mcp`.

pub mod bridge;
pub mod params;
pub mod priming;
pub mod render;
pub mod schema;
pub mod sessions;
pub mod setup;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::daemon::ops::Ops;
pub use tools::BpmTools;

/// How long an idle session lives by default. rmcp's default (5 minutes) kills the
/// session of an agent that thinks, or waits on a human, for longer; a day keeps a
/// conversation alive overnight, and sessions of clients that vanished are reclaimed
/// (sooner when [`sessions::MAX_SESSIONS`] are open: the idlest goes first).
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(24 * 3600);

/// The client's first filesystem root (`file://` URI), when it offers roots: where a
/// `start` without `cwd` runs. Roots are deprecated in the newest protocol revision and
/// forbidden as server-to-client requests there, so failures and slow clients are just
/// "no root".
#[allow(
    deprecated,
    reason = "roots are what clients of earlier revisions offer"
)]
pub async fn client_root(peer: &rmcp::Peer<rmcp::RoleServer>) -> Option<std::path::PathBuf> {
    let offers = peer
        .peer_info()
        .is_some_and(|i| i.capabilities.roots.is_some());
    if !offers {
        return None;
    }
    let roots = tokio::time::timeout(Duration::from_secs(2), peer.list_roots())
        .await
        .ok()?
        .ok()?;
    roots.roots.iter().find_map(|r| {
        let path = std::path::PathBuf::from(r.uri.strip_prefix("file://")?);
        path.is_dir().then_some(path)
    })
}

/// The streamable HTTP service behind the layer that spares clients older than
/// 2025-11-25 the priming events they cannot parse ([`priming`]), to be nested at `/mcp`.
pub fn http_app(
    ops: Ops,
    session_idle: Option<Duration>,
    cancel: CancellationToken,
) -> axum::Router {
    axum::Router::new()
        .fallback_service(http_service(ops, session_idle, cancel))
        .layer(axum::middleware::from_fn(priming::legacy_without_priming))
}

/// The streamable HTTP service, with at most [`sessions::MAX_SESSIONS`] sessions.
/// `session_idle` None: never expire. Host and Origin checks are done by the daemon's guard for the whole listener,
/// so rmcp's own are off here.
pub fn http_service(
    ops: Ops,
    session_idle: Option<Duration>,
    cancel: CancellationToken,
) -> StreamableHttpService<BpmTools, sessions::CappedSessions> {
    let mut local = LocalSessionManager::default();
    local.session_config.keep_alive = session_idle;
    StreamableHttpService::new(
        move || Ok(BpmTools::new(ops.clone())),
        Arc::new(sessions::CappedSessions::new(local, sessions::MAX_SESSIONS)),
        StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            // A stateless (2026-07-28) call that sends nothing before its answer gets a
            // plain JSON body instead of an event stream.
            .with_json_response(true)
            .with_cancellation_token(cancel),
    )
}
