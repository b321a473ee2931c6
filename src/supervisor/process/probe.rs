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
use crate::supervisor::procgroup::{self, Scope};

/// How often TCP and HTTP readiness probes try again: often at first, so that a start
/// answers within milliseconds of the port accepting (a refused connect to a local port
/// costs microseconds), then less often for a slow starter.
const PROBE_INTERVAL_FAST: Duration = Duration::from_millis(2);
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How long the probes try at [`PROBE_INTERVAL_FAST`].
const PROBE_FAST_FOR: Duration = Duration::from_secs(10);

/// How long one probe attempt may take.
const PROBE_ATTEMPT_LIMIT: Duration = Duration::from_secs(2);

/// Probe readiness until it passes (true), or until the instance's output ends first for
/// a log check (false). The caller aborts it when the run ends.
pub(super) async fn passes(check: ReadyCheck, store: Store, instance: u64) -> bool {
    let started = tokio::time::Instant::now();
    let pause = || {
        tokio::time::sleep(if started.elapsed() < PROBE_FAST_FOR {
            PROBE_INTERVAL_FAST
        } else {
            PROBE_INTERVAL
        })
    };
    match check {
        ReadyCheck::Log { pattern } => log_matches(&store, instance, &pattern).await,
        ReadyCheck::Tcp { port } => loop {
            if tcp_open(port).await {
                break true;
            }
            pause().await;
        },
        ReadyCheck::Http { url } => loop {
            if http_ok(&url).await {
                break true;
            }
            pause().await;
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

/// One health check of a run that was ready: none of its processes is stopped (a
/// stopped server's kernel still completes TCP handshakes, so a connect alone would pass),
/// and the readiness check passes again. The error says what failed.
pub(super) async fn healthy(check: &ReadyCheck, scope: &Scope) -> Result<(), String> {
    let scope = scope.clone();
    let stopped = tokio::task::spawn_blocking(move || {
        scope.members().into_iter().find(|m| {
            procgroup::read_stat(m.pid)
                .is_some_and(|s| s.start_time == m.start_time && matches!(s.state, 'T' | 't'))
        })
    })
    .await
    .ok()
    .flatten();
    if let Some(m) = stopped {
        return Err(format!("{m} is stopped (SIGSTOP or a debugger)"));
    }
    match check {
        ReadyCheck::Tcp { port } => tcp_check(*port).await,
        ReadyCheck::Http { url } => http_check(url).await,
        ReadyCheck::Log { .. } => Ok(()),
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub async fn tcp_open(port: u16) -> bool {
    tcp_check(port).await.is_ok()
}

async fn tcp_check(port: u16) -> Result<(), String> {
    match tokio::time::timeout(PROBE_ATTEMPT_LIMIT, TcpStream::connect(("127.0.0.1", port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("127.0.0.1:{port}: {e}")),
        Err(_) => Err(format!(
            "127.0.0.1:{port}: no connection within {}s",
            PROBE_ATTEMPT_LIMIT.as_secs()
        )),
    }
}

/// Whether a GET of the `http://` URL answers with a 2xx or 3xx status.
pub async fn http_ok(url: &str) -> bool {
    http_check(url).await.is_ok()
}

async fn http_check(url: &str) -> Result<(), String> {
    match tokio::time::timeout(PROBE_ATTEMPT_LIMIT, http_status(url)).await {
        Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
        Ok(Ok(code)) => Err(format!("GET {url} answered {code}")),
        Ok(Err(e)) => Err(format!("GET {url}: {e}")),
        Err(_) => Err(format!(
            "GET {url}: no answer within {}s",
            PROBE_ATTEMPT_LIMIT.as_secs()
        )),
    }
}

/// The status code of a GET of an `http://` URL, on a connection of its own.
async fn http_status(url: &str) -> Result<u16, String> {
    let uri: Uri = url.parse().map_err(|_| "not a valid URL".to_owned())?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err("only http:// URLs are checked".to_owned());
    }
    let authority = uri.authority().ok_or("the URL has no host")?;
    // `host()` keeps an IPv6 address's brackets, which name resolution does not accept.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let stream = TcpStream::connect((host, authority.port_u16().unwrap_or(80)))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
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
        .map_err(|e| e.to_string())?;
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
    Ok(response.map_err(|e| e.to_string())?.status().as_u16())
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
