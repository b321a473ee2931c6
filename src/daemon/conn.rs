//! The daemon's connections, bounded: how many file descriptors the daemon may use, how
//! many connections each listener holds at once, and how long a connection may sit
//! without sending a request.
//!
//! - At start the soft `RLIMIT_NOFILE` is raised to the hard limit ([`raise_nofile`]).
//! - Each listener holds at most so many connections ([`Limits`]); [`FD_RESERVE`]
//!   descriptors are kept out of both caps for the store, the pipes of the processes the
//!   daemon spawns, and probes. The TCP listener's cap is the lower one: the local
//!   socket, which only the daemon's user can reach, keeps answering when TCP is full.
//!   A connection over the cap is answered `503` at once and closed.
//! - A connection that does not send a whole request head within [`Limits::idle`]
//!   (a new connection, or a kept-alive one between requests) is closed (hyper's header
//!   read timeout). A request being answered is never cut: a follow stream may stay
//!   quiet for hours.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::peer::Peer;

/// Descriptors kept out of the listeners' caps: the store, the supervised processes'
/// pipes, readiness probes, `cargo`.
pub const FD_RESERVE: usize = 256;
/// The most TCP connections held at once, whatever the descriptor limit.
pub const MAX_TCP: usize = 1024;
/// The most local-socket connections held at once.
pub const MAX_UNIX: usize = 4096;
/// How long a connection may take to send a request head (or sit idle between requests).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a connection over the cap is told before it is closed.
fn refusal() -> Vec<u8> {
    let body = serde_json::to_string(&crate::protocol::ApiError {
        error: "the bpm daemon holds too many connections; close idle ones and try again"
            .to_owned(),
    })
    .unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Raise the soft limit on open files to the hard limit; the soft limit in effect after.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return hard,
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit"),
        }
    }
    soft
}

/// How many connections each listener holds, and how long an idle one lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub tcp: usize,
    pub unix: usize,
    pub idle: Duration,
}

impl Limits {
    /// Caps that fit in `nofile` descriptors with [`FD_RESERVE`] to spare: TCP gets at
    /// most a third of the rest, the local socket the remainder.
    pub fn for_nofile(nofile: u64, idle: Duration) -> Limits {
        let spare = usize::try_from(nofile)
            .unwrap_or(usize::MAX)
            .saturating_sub(FD_RESERVE);
        let tcp = (spare / 3).clamp(8, MAX_TCP);
        let unix = spare.saturating_sub(tcp).clamp(8, MAX_UNIX);
        Limits { tcp, unix, idle }
    }
}

/// Serve `app` on `listener`, at most `max` connections at once, until `cancel` fires;
/// then shut the connections down gracefully and return once all have ended. `peer`
/// names the client of a connection, given to the app as `ConnectInfo<Peer>`.
pub async fn serve<L: Listener>(
    mut listener: L,
    app: Router,
    max: usize,
    idle: Duration,
    cancel: CancellationToken,
    peer: impl Fn(&L::Io, &L::Addr) -> Option<Peer>,
) {
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let (mut io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = cancel.cancelled() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // A fresh socket's send buffer is empty: this does not wait on the client.
            let _ = tokio::time::timeout(Duration::from_millis(100), async {
                io.write_all(&refusal()).await?;
                io.shutdown().await
            })
            .await;
            continue;
        };
        let peer = peer(&io, &addr);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            if let Some(p) = &peer {
                req.extensions_mut().insert(ConnectInfo(p.clone()));
            }
            let mut app = app.clone();
            async move {
                let resp = tower_service::Service::call(&mut app, req.map(Body::new)).await;
                Ok::<_, Infallible>(resp.unwrap_or_else(|e| match e {}))
            }
        });
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(idle);
            let conn = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
    // Every connection holds a permit until it ends.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_the_descriptor_limit() {
        let l = Limits::for_nofile(1024, IDLE_TIMEOUT);
        assert_eq!(l.tcp, 256);
        assert_eq!(l.unix, 512);
        assert!(l.tcp + l.unix + FD_RESERVE <= 1024);
        let big = Limits::for_nofile(1 << 20, IDLE_TIMEOUT);
        assert_eq!((big.tcp, big.unix), (MAX_TCP, MAX_UNIX));
        let tiny = Limits::for_nofile(100, IDLE_TIMEOUT);
        assert_eq!((tiny.tcp, tiny.unix), (8, 8));
    }
}
