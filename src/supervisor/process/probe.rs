//! Readiness probes: a line of output matching a regex, a TCP port accepting connections,
//! or an HTTP GET answering 2xx or 3xx.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let re = match regex::Regex::new(pattern) {
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
                if lines.iter().any(|l| re.is_match(&l.text())) {
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

/// The status code of a GET of an `http://` URL, with a plain TCP connection.
async fn http_status(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let addr = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: bpm\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_ascii_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_status_parses_a_plain_response() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for code in ["204 No Content", "500 Oops"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"GET /health?x=1 HTTP/1.1\r\n"));
                s.write_all(format!("HTTP/1.1 {code}\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/health?x=1");
        assert!(http_ok(&url).await);
        assert!(!http_ok(&url).await);
        server.await.unwrap();
        assert!(!http_ok("https://127.0.0.1:1/").await);
    }
}
