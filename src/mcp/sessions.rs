//! MCP sessions, capped: rmcp's [`LocalSessionManager`] keeps every session until it is
//! deleted or its idle time runs out, so clients that vanish without a `DELETE` pile up.
//! [`CappedSessions`] wraps it: at most [`MAX_SESSIONS`] live at once; a new one evicts
//! the session idle the longest (one with no request in progress, if there is any). An
//! evicted client gets a 404 on its next request, on which the protocol has it start a
//! new session.
//!
//! It also refuses a request whose JSON-RPC id is that of a request still in progress in
//! the same session: rmcp routes answers by id, so the two would share one answer and
//! the other would wait forever. The second gets an error answer at once instead.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::{Stream, StreamExt as _};
use rmcp::model::{
    ClientJsonRpcMessage, ErrorData, JsonRpcMessage, RequestId, ServerJsonRpcMessage,
};
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError,
};
use rmcp::transport::streamable_http_server::session::{
    EventStore, RestoreOutcome, ServerSseMessage, SessionId, SessionManager,
};

/// The most MCP sessions kept at once (each holds some 64 KiB).
pub const MAX_SESSIONS: usize = 64;

/// How a session has been used.
#[derive(Clone)]
struct Use {
    last: Instant,
    /// Requests whose answer stream is open.
    busy: usize,
    /// The JSON-RPC ids of those requests.
    ids: HashSet<RequestId>,
}

type Uses = Arc<Mutex<HashMap<SessionId, Use>>>;

/// [`LocalSessionManager`] with at most `cap` sessions (see the module).
pub struct CappedSessions {
    inner: LocalSessionManager,
    cap: usize,
    uses: Uses,
}

/// Marks a session busy while a request's answer stream is open.
struct Busy {
    id: SessionId,
    request: Option<RequestId>,
    uses: Uses,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = uses.get_mut(&self.id) {
            u.busy = u.busy.saturating_sub(1);
            u.last = Instant::now();
            if let Some(r) = &self.request {
                u.ids.remove(r);
            }
        }
    }
}

impl CappedSessions {
    pub fn new(inner: LocalSessionManager, cap: usize) -> CappedSessions {
        CappedSessions {
            inner,
            cap: cap.max(1),
            uses: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Use>> {
        self.uses.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self, id: &SessionId) {
        if let Some(u) = self.lock().get_mut(id) {
            u.last = Instant::now();
        }
    }

    /// Count a request in progress until the returned guard drops; `None` when a request
    /// with the same JSON-RPC id is in progress in the session.
    fn busy(&self, id: &SessionId, request: Option<RequestId>) -> Option<Busy> {
        if let Some(u) = self.lock().get_mut(id) {
            if let Some(r) = &request
                && !u.ids.insert(r.clone())
            {
                return None;
            }
            u.busy += 1;
            u.last = Instant::now();
        }
        Some(Busy {
            id: id.clone(),
            request,
            uses: self.uses.clone(),
        })
    }

    /// The session to evict for a new one, if the cap is reached: idle the longest,
    /// preferring one with no request in progress.
    fn victim(&self) -> Option<SessionId> {
        let uses = self.lock();
        if uses.len() < self.cap {
            return None;
        }
        uses.iter()
            .min_by_key(|(_, u)| (u.busy > 0, u.last))
            .map(|(id, _)| id.clone())
    }
}

/// A stream that keeps `guard` until it is dropped; the request's id is free again as
/// soon as its answer goes out (before the stream closes), so a client that reuses an
/// id once it has its answer is never refused.
fn holding<S: Stream<Item = ServerSseMessage> + Send + Sync + 'static>(
    stream: S,
    mut guard: Busy,
) -> impl Stream<Item = S::Item> + Send + Sync + 'static {
    stream.map(move |item| {
        let answered = item
            .message
            .as_deref()
            .is_some_and(|m| matches!(m, JsonRpcMessage::Response(_) | JsonRpcMessage::Error(_)));
        if answered {
            guard.free_request_id();
        }
        item
    })
}

impl Busy {
    fn free_request_id(&mut self) {
        if let Some(r) = self.request.take() {
            let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(u) = uses.get_mut(&self.id) {
                u.ids.remove(&r);
            }
        }
    }
}

impl SessionManager for CappedSessions {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        while let Some(old) = self.victim() {
            self.lock().remove(&old);
            tracing::info!(session = %old, "MCP session evicted (the most sessions are open; it was idle the longest)");
            if let Err(e) = self.inner.close_session(&old).await {
                tracing::warn!(session = %old, error = %e, "closing an evicted MCP session");
            }
        }
        let (id, transport) = self.inner.create_session().await?;
        self.lock().insert(
            id.clone(),
            Use {
                last: Instant::now(),
                busy: 0,
                ids: HashSet::new(),
            },
        );
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.touch(id);
        self.inner.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.lock().remove(id);
        self.inner.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let request = match &message {
            JsonRpcMessage::Request(r) => Some(r.id.clone()),
            _ => None,
        };
        let Some(busy) = self.busy(id, request.clone()) else {
            let error = ErrorData::invalid_request(
                format!(
                    "request id {} is already used by a request in progress in this session; give each request its own id",
                    request
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ),
                None,
            );
            let answer =
                ServerSseMessage::from_message(ServerJsonRpcMessage::error(error, request));
            return Ok(futures_util::stream::iter([answer]).left_stream());
        };
        let stream = self.inner.create_stream(id, message).await?;
        Ok(holding(stream, busy).right_stream())
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.touch(id);
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.touch(id);
        self.inner.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.touch(id);
        self.inner.resume(id, last_event_id).await
    }

    async fn restore_session(
        &self,
        id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        self.inner.restore_session(id).await
    }

    fn event_store(&self) -> Option<Arc<dyn EventStore>> {
        self.inner.event_store()
    }
}
