//! No SSE priming events for clients older than protocol 2025-11-25.
//!
//! rmcp opens each event stream with a "priming" event (an event id, a retry time and an
//! empty `data:`), which 2025-11-25 introduced so that clients can resume a stream the
//! server closes. Earlier clients parse every event's data as a JSON-RPC message, and
//! log an error for each of those (the Python SDK 1.x: `Error parsing SSE message`).
//! rmcp has no switch per client version (`sse_retry` is one setting for every client),
//! so this layer in front of its service takes those events out of the streams of older
//! clients.
//!
//! The version is the `MCP-Protocol-Version` header, which every client from
//! 2025-06-18 on sends after `initialize`; without it, the `initialize` request's own
//! `protocolVersion`; any other request without the header is from a 2025-03-26 client
//! (the spec's rule for an absent header).

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;

/// The first protocol version whose clients expect priming events.
pub const FIRST_PRIMED: &str = "2025-11-25";

/// The most of a request body read to find its version (rmcp's own limit).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// The middleware (`axum::middleware::from_fn`).
pub async fn legacy_without_priming(req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (req, version) = match header {
        Some(v) => (req, Some(v)),
        None if req.method() == Method::POST => {
            let (parts, body) = req.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("an MCP request is at most {MAX_BODY} bytes"),
                )
                    .into_response();
            };
            let version = initialize_version(&bytes);
            (Request::from_parts(parts, Body::from(bytes)), version)
        }
        None => (req, None),
    };
    let legacy = version.as_deref().unwrap_or("2025-03-26") < FIRST_PRIMED;
    let response = next.run(req).await;
    let sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !(legacy && sse) {
        return response;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::from_stream(without_priming(body)))
}

/// The `protocolVersion` of an `initialize` request's body.
fn initialize_version(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("method")? != "initialize" {
        return None;
    }
    Some(
        v.get("params")?
            .get("protocolVersion")?
            .as_str()?
            .to_owned(),
    )
}

/// The body's events, priming events left out; each other event is passed on as soon as
/// it is complete.
fn without_priming(
    body: Body,
) -> impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Send {
    let state = (body.into_data_stream(), Vec::<u8>::new(), false);
    futures_util::stream::unfold(state, |(mut inner, mut buf, mut ended)| async move {
        loop {
            if let Some(end) = event_end(&buf) {
                let event: Vec<u8> = buf.drain(..end).collect();
                if is_priming(&event) {
                    continue;
                }
                return Some((Ok(Bytes::from(event)), (inner, buf, ended)));
            }
            if ended {
                if buf.is_empty() {
                    return None;
                }
                let rest = Bytes::from(std::mem::take(&mut buf));
                return Some((Ok(rest), (inner, buf, ended)));
            }
            match inner.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some((Err(e), (inner, buf, true))),
                None => ended = true,
            }
        }
    })
}

/// Where the first complete event of `buf` ends (after its blank line).
fn event_end(buf: &[u8]) -> Option<usize> {
    [&b"\n\n"[..], b"\r\n\r\n", b"\r\r"]
        .iter()
        .filter_map(|sep| memchr::memmem::find(buf, sep).map(|i| i + sep.len()))
        .min()
}

/// An event with data fields that are all empty: no message, only an id and a retry time.
fn is_priming(event: &[u8]) -> bool {
    let text = String::from_utf8_lossy(event);
    let mut data = text
        .split(['\n', '\r'])
        .filter(|l| *l == "data" || l.starts_with("data:"))
        .map(|l| l.strip_prefix("data").unwrap_or(l))
        .map(|l| l.strip_prefix(':').unwrap_or(l))
        .peekable();
    data.peek().is_some() && data.all(|d| d.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priming_events_are_told_from_messages_and_comments() {
        assert!(is_priming(b"data:\nid: 0\nretry: 3000\n\n"));
        assert!(is_priming(b"id: 0\r\nretry: 3000\r\ndata: \r\n\r\n"));
        assert!(!is_priming(b"data: {\"jsonrpc\":\"2.0\"}\nid: 1\n\n"));
        assert!(!is_priming(b":\n\n"));
        assert!(!is_priming(b"retry: 3000\n\n"));
    }

    #[tokio::test]
    async fn only_priming_events_are_left_out_even_when_split_across_chunks() {
        let chunks = [
            "data:\nid: 0\nret",
            "ry: 3000\n\ndata: {\"a\":1}\n",
            "id: 1\n\n:\n\ndata: {\"b\":2}\n\n",
        ];
        let body = Body::from_stream(futures_util::stream::iter(
            chunks.map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
        ));
        let out: Vec<Bytes> = without_priming(body).map(|r| r.unwrap()).collect().await;
        let text: String = out.iter().map(|b| String::from_utf8_lossy(b)).collect();
        assert_eq!(text, "data: {\"a\":1}\nid: 1\n\n:\n\ndata: {\"b\":2}\n\n");
    }

    #[test]
    fn the_version_of_an_initialize() {
        let body = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-03-26"}}"#;
        assert_eq!(initialize_version(body).as_deref(), Some("2025-03-26"));
        assert_eq!(
            initialize_version(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
            None
        );
    }
}
