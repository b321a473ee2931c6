//! The daemon's HTTP listener: a small JSON API over the operations layer (for the CLI,
//! scripts and tests). The MCP endpoint is mounted on the same router.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::ops::{LogRequest, OpError, Ops, StartRequest};
use crate::logs::{Actor, StoreError, Stream};
use crate::search::SearchError;

pub fn router(ops: Ops) -> Router {
    Router::new()
        .route("/api/status", get(status_all))
        .route("/api/status/{name}", get(status_one))
        .route("/api/start", post(start))
        .route("/api/stop/{name}", post(stop))
        .route("/api/restart/{name}", post(restart))
        .route("/api/logs/{name}", get(logs))
        .with_state(ops)
}

impl IntoResponse for OpError {
    fn into_response(self) -> Response {
        let code = match &self {
            OpError::UnknownProcess { .. } => StatusCode::NOT_FOUND,
            OpError::BadRequest(_)
            | OpError::Search(SearchError::BadRegex { .. })
            | OpError::Store(StoreError::IndexOutOfRange { .. } | StoreError::NoInstances { .. }) => {
                StatusCode::BAD_REQUEST
            }
            OpError::Process(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (code, Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

async fn status_all(State(ops): State<Ops>) -> Result<Response, OpError> {
    Ok(Json(ops.status(None).await?).into_response())
}

async fn status_one(State(ops): State<Ops>, Path(name): Path<String>) -> Result<Response, OpError> {
    Ok(Json(ops.status(Some(&name)).await?).into_response())
}

#[derive(Deserialize, Default)]
struct StartBody {
    name: Option<String>,
    command: Option<Vec<String>>,
    cwd: Option<std::path::PathBuf>,
    #[serde(default)]
    env: Vec<(String, String)>,
    wait_seconds: Option<f64>,
}

async fn start(State(ops): State<Ops>, Json(b): Json<StartBody>) -> Result<Response, OpError> {
    let req = StartRequest {
        name: b.name,
        command: b.command,
        cwd: b.cwd,
        env: b.env,
        wait: b.wait_seconds.map(Duration::from_secs_f64),
    };
    Ok(Json(ops.start(req, Actor::Cli).await?).into_response())
}

#[derive(Deserialize, Default)]
struct StopQuery {
    #[serde(default)]
    force: bool,
}

async fn stop(
    State(ops): State<Ops>,
    Path(name): Path<String>,
    Query(q): Query<StopQuery>,
) -> Result<Response, OpError> {
    Ok(Json(ops.stop(&name, q.force, Actor::Cli).await?).into_response())
}

async fn restart(State(ops): State<Ops>, Path(name): Path<String>) -> Result<Response, OpError> {
    Ok(Json(ops.restart(&name, Actor::Cli, None).await?).into_response())
}

#[derive(Deserialize, Default)]
struct LogsQuery {
    pattern: Option<String>,
    #[serde(default)]
    case_insensitive: bool,
    #[serde(default)]
    context: usize,
    head: Option<usize>,
    tail: Option<usize>,
    index: Option<i64>,
    #[serde(default)]
    all_instances: bool,
    #[serde(default)]
    build: bool,
    stream: Option<String>,
}

async fn logs(
    State(ops): State<Ops>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, OpError> {
    let stream = match q.stream.as_deref() {
        None | Some("both") => None,
        Some("stdout") => Some(Stream::Stdout),
        Some("stderr") => Some(Stream::Stderr),
        Some(other) => {
            return Err(OpError::BadRequest(format!(
                "unknown stream `{other}`; use stdout, stderr or both"
            )));
        }
    };
    let req = LogRequest {
        process: name,
        pattern: q.pattern,
        case_insensitive: q.case_insensitive,
        context: q.context,
        head: q.head,
        tail: q.tail.or(if q.head.is_none() { Some(200) } else { None }),
        index: q.index,
        all_instances: q.all_instances,
        build: q.build,
        stream,
        since_us: None,
        until_us: None,
        around: None,
    };
    Ok(Json(ops.logs(req).await?).into_response())
}
