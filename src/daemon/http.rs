//! The daemon's JSON API over the operations layer, for the CLI (over the Unix socket),
//! scripts and tests (over TCP): the same router is served on both listeners. Handlers
//! only translate; the logic is in [`super::ops`].

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::ops::{FollowRequest, LogRequest, OpError, Ops, StartRequest};
use crate::logs::{Actor, StoreError, Stream};
use crate::search::SearchError;
use crate::supervisor::process::Mode;

pub fn router(ops: Ops) -> Router {
    Router::new()
        .route("/api/status", get(status_all))
        .route("/api/status/{name}", get(status_one))
        .route("/api/start", post(start))
        .route("/api/stop/{name}", post(stop))
        .route("/api/restart/{name}", post(restart))
        .route("/api/logs/{name}", get(logs))
        .route("/api/follow/{name}", get(follow))
        .route("/api/mode", get(get_mode).post(set_mode))
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
    since_us: Option<i64>,
    until_us: Option<i64>,
    /// Neither head nor tail: every line (without it, the last 200).
    #[serde(default)]
    all: bool,
}

fn parse_stream(stream: Option<&str>) -> Result<Option<Stream>, OpError> {
    match stream {
        None | Some("both") => Ok(None),
        Some("stdout") => Ok(Some(Stream::Stdout)),
        Some("stderr") => Ok(Some(Stream::Stderr)),
        Some(other) => Err(OpError::BadRequest(format!(
            "unknown stream `{other}`; use stdout, stderr or both"
        ))),
    }
}

async fn logs(
    State(ops): State<Ops>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, OpError> {
    let stream = parse_stream(q.stream.as_deref())?;
    let req = LogRequest {
        process: name,
        pattern: q.pattern,
        case_insensitive: q.case_insensitive,
        context: q.context,
        head: q.head,
        tail: q.tail.or(if q.head.is_none() && !q.all {
            Some(200)
        } else {
            None
        }),
        index: q.index,
        all_instances: q.all_instances,
        build: q.build,
        stream,
        since_us: q.since_us,
        until_us: q.until_us,
        around: None,
    };
    Ok(Json(ops.logs(req).await?).into_response())
}

#[derive(Deserialize, Default)]
struct FollowQuery {
    instance: Option<u64>,
    index: Option<i64>,
    #[serde(default)]
    build: bool,
    tail: Option<u64>,
    stream: Option<String>,
    pattern: Option<String>,
    #[serde(default)]
    case_insensitive: bool,
}

/// Newline-delimited JSON records ([`super::ops::FollowRecord`]), as a chunked body that
/// lasts as long as the follow.
async fn follow(
    State(ops): State<Ops>,
    Path(name): Path<String>,
    Query(q): Query<FollowQuery>,
) -> Result<Response, OpError> {
    let req = FollowRequest {
        process: name,
        instance: q.instance,
        index: q.index,
        build: q.build,
        tail: q.tail,
        stream: parse_stream(q.stream.as_deref())?,
        pattern: q.pattern,
        case_insensitive: q.case_insensitive,
    };
    let records = ops.follow(req).await?;
    let chunks = futures_util::StreamExt::map(records, |batch| {
        let mut buf = Vec::new();
        for r in &batch {
            serde_json::to_writer(&mut buf, r).expect("serializable");
            buf.push(b'\n');
        }
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(buf))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(chunks),
    )
        .into_response())
}

#[derive(Deserialize)]
struct ModeBody {
    mode: String,
}

async fn get_mode(State(ops): State<Ops>) -> Response {
    Json(serde_json::json!({ "mode": ops.mode() })).into_response()
}

async fn set_mode(State(ops): State<Ops>, Json(b): Json<ModeBody>) -> Result<Response, OpError> {
    let mode = match b.mode.as_str() {
        "dev" => Mode::Dev,
        "release" => Mode::Release,
        other => {
            return Err(OpError::BadRequest(format!(
                "unknown mode `{other}`; use dev or release"
            )));
        }
    };
    let mode = ops.set_mode(mode, Actor::Cli).await?;
    Ok(Json(serde_json::json!({ "mode": mode })).into_response())
}
