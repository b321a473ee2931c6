//! Readiness probes: a line of output matching a regex, a TCP port accepting connections,
//! or an HTTP GET answering 2xx or 3xx.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1::handshake;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::http::uri::Scheme;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::ReadyCheck;
use crate::logs::Store;

/// How often TCP and HTTP readiness probes try again.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// How long one probe attempt may take.
const PROBE_ATTEMPT_LIMIT: Duration = Duration::from_secs(2);

/// Probe readiness until it passes (true), or until the instance's output ends first for
/// a log check (false). The caller aborts it when the run ends.
pub(super) async fn passes(check: ReadyCheck, store: Store, instance: u64) -> bool {
    match check {
        ReadyCheck::Log { pattern } => log_matches(&store, instance, &pattern).await,
        ReadyCheck::Tcp { port } => loop {
            if tcp_open(port).await {
                break true;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        },
        ReadyCheck::Http { url } => loop {
            if http_ok(&url).await {
                break true;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        },
    }
}

/// Whether a line of the instance matches `pattern`; false if the instance ends first.
async fn log_matches(store: &Store, instance: u64, pattern: &str) -> bool {
    let re = match regex::bytes::Regex::new(pattern) {
        Ok(re) => re,
        Err(e) => {
            tracing::warn!(pattern, error = %e, "invalid readiness regex");
            return false;
        }
    };
    let mut follower = store.follow(instance, 0);
    loop {
        match follower.next_batch(1024).await {
            Ok(Some(lines)) => {
                // As the line reads on a terminal: vite colours its "ready" line.
                if lines
                    .iter()
                    .any(|l| crate::search::line_matches(&re, &l.bytes))
                {
                    return true;
                }
            }
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow output for readiness");
                return false;
            }
        }
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub async fn tcp_open(port: u16) -> bool {
    matches!(
        tokio::time::timeout(PROBE_ATTEMPT_LIMIT, TcpStream::connect(("127.0.0.1", port))).await,
        Ok(Ok(_))
    )
}

/// Whether a GET of the `http://` URL answers with a 2xx or 3xx status.
pub async fn http_ok(url: &str) -> bool {
    tokio::time::timeout(PROBE_ATTEMPT_LIMIT, http_status(url))
        .await
        .ok()
        .flatten()
        .is_some_and(|code| (200..400).contains(&code))
}

/// The status code of a GET of an `http://` URL, on a connection of its own.
async fn http_status(url: &str) -> Option<u16> {
    let uri: Uri = url.parse().ok()?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return None;
    }
    let authority = uri.authority()?;
    // `host()` keeps an IPv6 address's brackets, which name resolution does not accept.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let stream = TcpStream::connect((host, authority.port_u16().unwrap_or(80)))
        .await
        .ok()?;
    let (mut sender, conn) = handshake(TokioIo::new(stream)).await.ok()?;
    let target = match uri.path_and_query() {
        Some(pq) => match pq.query() {
            Some(q) => format!("{}?{q}", pq.path()),
            None => pq.path().to_owned(),
        },
        None => "/".to_owned(),
    };
    let request = Request::get(target)
        .header(HOST, authority.as_str())
        .header(USER_AGENT, "bpm")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .ok()?;
    // The connection is driven here rather than in a task of its own, so that it is
    // dropped with this future (at the attempt's timeout too).
    let mut response = std::pin::pin!(sender.send_request(request));
    let mut conn = std::pin::pin!(conn);
    let response = tokio::select! {
        biased;
        r = &mut response => r,
        // It can end right after handing over the response: take it if it came.
        _ = &mut conn => response.await,
    };
    Some(response.ok()?.status().as_u16())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn http_ok_takes_2xx_and_3xx_as_ready() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answers = [
            ("/health?x=1", "204 No Content"),
            ("/health?x=1", "500 Oops"),
            ("/", "302 Found"),
        ];
        let server = tokio::spawn(async move {
            for (target, code) in answers {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let head = String::from_utf8_lossy(&buf[..n]);
                assert!(
                    head.starts_with(&format!("GET {target} HTTP/1.1\r\n")),
                    "{head}"
                );
                assert!(
                    head.to_ascii_lowercase()
                        .contains(&format!("\r\nhost: 127.0.0.1:{port}\r\n")),
                    "{head}"
                );
                s.write_all(format!("HTTP/1.1 {code}\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/health?x=1");
        assert!(http_ok(&url).await);
        assert!(!http_ok(&url).await);
        assert!(http_ok(&format!("http://127.0.0.1:{port}")).await);
        server.await.unwrap();
        assert!(!http_ok("https://127.0.0.1:1/").await);
    }
}
