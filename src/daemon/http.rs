//! The daemon's JSON API over the operations layer, for the CLI (over the Unix socket),
//! scripts and tests (over TCP): the same router is served on both listeners. Handlers
//! only translate [`crate::protocol`] requests into [`super::ops`] calls; every error is
//! an [`ApiError`] body with a status code.
//!
//! Every `POST` must carry `Content-Type: application/json` or an `X-Bpm-Client` header
//! ([`CLIENT_HEADER`]): a web page cannot send either without a CORS preflight, which bpm
//! never grants, so no page can make the daemon act (cross-site request forgery). The
//! typed client sends the header on every request.

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::ops::{OpError, Ops};
use crate::logs::{Actor, StoreError};
use crate::protocol::{ApiError, FollowQuery, LogQuery, ModeBody, StartRequest, StopQuery};
use crate::search::SearchError;

/// The header that marks a request as coming from a program, not a web page. Its value
/// names the front end, which events record as the actor: `tui` for the TUI, anything
/// else (bpm's CLI sends `cli`) for the CLI.
pub const CLIENT_HEADER: &str = "x-bpm-client";

/// Who acts, from [`CLIENT_HEADER`].
fn actor(headers: &HeaderMap) -> Actor {
    match headers.get(CLIENT_HEADER).map(|v| v.as_bytes()) {
        Some(b"tui") => Actor::Tui,
        _ => Actor::Cli,
    }
}

/// How long a follow stream may stay silent before it sends an empty line: a client that
/// went away is noticed when that write fails, and its stream ends.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// The follow streams' heartbeat interval ([`HEARTBEAT`] unless a test shortens it).
#[derive(Clone, Copy)]
struct Heartbeat(Duration);

pub fn router(ops: Ops, heartbeat: Duration) -> Router {
    Router::new()
        .route("/api/status", get(status_all))
        .route("/api/status/{name}", get(status_one))
        .route("/api/start", post(start))
        .route("/api/stop/{name}", post(stop))
        .route("/api/restart/{name}", post(restart))
        .route("/api/remove/{name}", post(remove))
        .route("/api/logs/{name}", get(logs))
        .route("/api/follow/{name}", get(follow))
        .route("/api/mode", get(get_mode).post(set_mode))
        .route("/api/flush", post(flush))
        .route_layer(axum::middleware::from_fn(no_simple_posts))
        .layer(axum::Extension(Heartbeat(heartbeat)))
        .with_state(ops)
}

/// Refuse a `POST` a web page could have sent without a CORS preflight.
async fn no_simple_posts(req: Request, next: Next) -> Response {
    if req.method() == Method::POST && !from_a_program(req.headers()) {
        let body = ApiError {
            error: "a POST to the bpm API needs `Content-Type: application/json` or an `X-Bpm-Client: 1` header (a web page cannot send either without a CORS preflight, so this keeps pages from acting on your processes); add one, e.g. `curl -H 'X-Bpm-Client: 1' -X POST ...`"
                .to_owned(),
        };
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Json(body)).into_response();
    }
    next.run(req).await
}

fn from_a_program(headers: &HeaderMap) -> bool {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let essence = v.split(';').next().unwrap_or("");
            essence.trim().eq_ignore_ascii_case("application/json")
        });
    json || headers.contains_key(CLIENT_HEADER)
}

impl IntoResponse for OpError {
    fn into_response(self) -> Response {
        let code = match &self {
            OpError::UnknownProcess { .. } => StatusCode::NOT_FOUND,
            OpError::BadRequest(_)
            | OpError::Search(SearchError::BadRegex { .. } | SearchError::TooLong { .. })
            | OpError::Store(
                StoreError::IndexOutOfRange { .. }
                | StoreError::NoSuchNumber { .. }
                | StoreError::NoInstances { .. },
            ) => StatusCode::BAD_REQUEST,
            OpError::Process(_) => StatusCode::CONFLICT,
            OpError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            OpError::Store(
                StoreError::Unavailable(_) | StoreError::Disk(_) | StoreError::WriteFailed(_),
            ) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = ApiError {
            error: self.to_string(),
        };
        (code, Json(body)).into_response()
    }
}

/// A query string as a protocol type; a bad one is a 400 naming the field.
fn query<T: DeserializeOwned>(raw: Option<String>) -> Result<T, OpError> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| OpError::BadRequest(format!("bad query string: {e}")))
}

/// A JSON body as a protocol type; a bad one is a 400 naming the problem.
fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, OpError> {
    serde_json::from_slice(bytes).map_err(|e| OpError::BadRequest(format!("bad request body: {e}")))
}

async fn status_all(State(ops): State<Ops>) -> Result<Response, OpError> {
    Ok(Json(ops.status(None).await?).into_response())
}

async fn status_one(State(ops): State<Ops>, Path(name): Path<String>) -> Result<Response, OpError> {
    Ok(Json(ops.status(Some(&name)).await?).into_response())
}

async fn start(
    State(ops): State<Ops>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, OpError> {
    let req: StartRequest = body(&bytes)?;
    Ok(Json(ops.start(req, actor(&headers)).await?).into_response())
}

async fn stop(
    State(ops): State<Ops>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, OpError> {
    let q: StopQuery = query(q)?;
    Ok(Json(ops.stop(&name, q.force, actor(&headers)).await?).into_response())
}

async fn restart(
    State(ops): State<Ops>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, OpError> {
    Ok(Json(ops.restart(&name, actor(&headers), None).await?).into_response())
}

async fn remove(
    State(ops): State<Ops>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, OpError> {
    let q: crate::protocol::RemoveQuery = query(q)?;
    ops.remove(&name, q.logs).await?;
    Ok(Json(serde_json::json!({ "removed": name })).into_response())
}

/// The media type of record streams: one JSON object per line.
pub const NDJSON: &str = "application/x-ndjson";

/// One [`crate::protocol::LogResult`]; or, when the request accepts [`NDJSON`], the same
/// read as records ([`crate::protocol::FollowRecord`]) streamed page by page, however
/// many lines it has.
async fn logs(
    State(ops): State<Ops>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, OpError> {
    let q: LogQuery = query(q)?;
    let wants_records = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let essence = t.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case(NDJSON)
        });
    if wants_records {
        let pages = ops.logs_stream(&name, q).await?;
        return Ok(([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(pages)).into_response());
    }
    Ok(Json(ops.logs(&name, q).await?).into_response())
}

/// Newline-delimited JSON records ([`crate::protocol::FollowRecord`]), as a chunked body
/// that lasts as long as the follow; an empty line after each [`HEARTBEAT`] of silence.
async fn follow(
    State(ops): State<Ops>,
    axum::Extension(Heartbeat(heartbeat)): axum::Extension<Heartbeat>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, OpError> {
    let q: FollowQuery = query(q)?;
    let records = Box::pin(ops.follow(&name, q).await?);
    // Racing the next batch against the timer loses nothing: the stream keeps the
    // batch it is waiting for.
    let chunks = futures_util::stream::unfold(records, move |mut records| async move {
        let chunk = tokio::select! {
            batch = futures_util::StreamExt::next(&mut records) => {
                Bytes::from(super::ops::ndjson(&batch?))
            }
            _ = tokio::time::sleep(heartbeat) => Bytes::from_static(b"\n"),
        };
        Some((Ok::<_, std::convert::Infallible>(chunk), records))
    });
    Ok(([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(chunks)).into_response())
}

/// Answers once every line captured so far is durable (tests, and scripts that are
/// about to take the machine down).
async fn flush(State(ops): State<Ops>) -> Result<Response, OpError> {
    ops.flush().await?;
    Ok(Json(serde_json::json!({ "flushed": true })).into_response())
}

async fn get_mode(State(ops): State<Ops>) -> Response {
    Json(ModeBody { mode: ops.mode() }).into_response()
}

async fn set_mode(
    State(ops): State<Ops>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, OpError> {
    let b: ModeBody = body(&bytes)?;
    let mode = ops.set_mode(b.mode, actor(&headers)).await?;
    Ok(Json(ModeBody { mode }).into_response())
}
