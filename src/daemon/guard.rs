//! The TCP listener's gate, in front of the JSON API and MCP alike:
//!
//! - DNS-rebinding protection: `Host` must be a local name or address (with a token,
//!   also any of the machine's own addresses).
//! - Web pages: a request with an `Origin` is refused unless it is the daemon's own
//!   (`http://127.0.0.1:PORT`) or listed in the config's `allowed_origins`. Requests
//!   without one (the CLI, curl, agents) pass.
//! - Who: with a token, every request must carry it (`Authorization: Bearer`); without
//!   one (the listener is then on loopback), only the daemon's own user may connect, as
//!   the kernel's socket table says ([`super::peer`]).
//!
//! The Unix socket needs none of this: its file mode (0600) is its access control.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::peer::Peer;
use crate::config::Origin;

/// Who may talk to the TCP listener.
#[derive(Clone, Debug)]
pub struct Guard {
    inner: Arc<GuardInner>,
}

#[derive(Debug)]
struct GuardInner {
    /// The address listened on; a non-loopback one also accepts its own `Host`.
    listen: IpAddr,
    /// The port listened on: the daemon's own origin is `http://127.0.0.1:PORT`.
    port: u16,
    token: Option<String>,
    allowed_origins: Vec<Origin>,
    /// The daemon's user: the only one served without a token.
    uid: u32,
    /// The machine's interface addresses, for `Host` with a token.
    own_addrs: Mutex<OwnAddrs>,
}

#[derive(Debug, Default)]
struct OwnAddrs {
    addrs: Vec<IpAddr>,
    read_at: Option<Instant>,
}

impl Guard {
    pub fn new(
        listen: IpAddr,
        port: u16,
        token: Option<String>,
        allowed_origins: Vec<Origin>,
    ) -> Guard {
        Guard {
            inner: Arc::new(GuardInner {
                listen,
                port,
                token,
                allowed_origins,
                uid: nix::unistd::geteuid().as_raw(),
                own_addrs: Mutex::default(),
            }),
        }
    }

    /// Why this request is refused, if it is. `peer` is the connection's (none when the
    /// server was not given it: then only a token lets a request in).
    fn check(&self, headers: &HeaderMap, peer: Option<&Peer>) -> Result<(), (StatusCode, String)> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(host_of);
        match host {
            Some(h) if self.local_name(h) => {}
            Some(h) => {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!(
                        "Forbidden: Host `{h}` is not this daemon's address (bpm answers to localhost, 127.0.0.1 and ::1{}, to stop DNS-rebinding attacks); connect to http://127.0.0.1:{}",
                        if self.inner.token.is_some() {
                            " and this machine's addresses"
                        } else {
                            ""
                        },
                        self.inner.port
                    ),
                ));
            }
            None => {
                return Err((
                    StatusCode::FORBIDDEN,
                    "Forbidden: the request has no valid Host header".into(),
                ));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("(not text)");
            if !self.origin_allowed(origin) {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!(
                        "Forbidden: requests from the web page origin `{origin}` are not allowed; bpm accepts browser requests only from its own origin (http://127.0.0.1:{}) and from the origins listed in .mcp-run, e.g. `allowed_origins = [\"http://localhost:5173\"]` (list only pages you trust: they can run commands as you)",
                        self.inner.port
                    ),
                ));
            }
        }
        match &self.inner.token {
            Some(token) => check_token(headers, token),
            None => self.check_user(peer),
        }
    }

    /// Without a token: the daemon's own user only.
    fn check_user(&self, peer: Option<&Peer>) -> Result<(), (StatusCode, String)> {
        let own = self.inner.uid;
        let why = match peer.map(|p| (p, p.uid())) {
            Some((_, Some(uid))) if uid == own => return Ok(()),
            Some((_, Some(uid))) => format!("this connection comes from another user (uid {uid})"),
            Some((p, None)) => format!(
                "cannot tell which user this connection (from {}) comes from: no process holds its socket in the kernel's table",
                p.remote
            ),
            None => "cannot tell which user this connection comes from".to_owned(),
        };
        Err((
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden: {why}. Without a token, bpm's TCP listener serves only the user who runs the daemon (uid {own}): whoever talks to it can run commands as that user and read everything they printed. Use the token: start the daemon with --token-file FILE (or BPM_TOKEN) and send `Authorization: Bearer <token>`; or run the client as the daemon's user"
            ),
        ))
    }

    fn local_name(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                ip.is_loopback()
                    || ip == self.inner.listen
                    || (self.inner.token.is_some() && self.own_address(ip))
            }
            Err(_) => false,
        }
    }

    /// Whether `ip` is one of the machine's interface addresses. Interfaces come and go
    /// (Wi-Fi, VPN), so a miss looks again, at most once a second.
    fn own_address(&self, ip: IpAddr) -> bool {
        let mut own = self
            .inner
            .own_addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if own.addrs.contains(&ip) {
            return true;
        }
        if own
            .read_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return false;
        }
        own.addrs = interface_addrs();
        own.read_at = Some(Instant::now());
        own.addrs.contains(&ip)
    }

    /// The daemon's own origin (a page it served), or one the config allows.
    fn origin_allowed(&self, origin: &str) -> bool {
        let Ok(origin) = origin.parse::<Origin>() else {
            // `null` (sandboxed pages, files) and anything else that is not an origin.
            return false;
        };
        let own = origin.scheme == "http"
            && origin.port == self.inner.port
            && self.local_name(&origin.host);
        own || self.inner.allowed_origins.contains(&origin)
    }
}

fn check_token(headers: &HeaderMap, token: &str) -> Result<(), (StatusCode, String)> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err((
            StatusCode::UNAUTHORIZED,
            "Unauthorized: the bearer token is wrong; use the daemon's token (its --token-file, or BPM_TOKEN)".into(),
        )),
        None => Err((
            StatusCode::UNAUTHORIZED,
            "Unauthorized: this daemon requires a token; send `Authorization: Bearer <token>` with the daemon's token (its --token-file, or BPM_TOKEN)".into(),
        )),
    }
}

/// The machine's interface addresses (none when they cannot be read).
fn interface_addrs() -> Vec<IpAddr> {
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    ifaddrs
        .filter_map(|i| {
            let a = i.address?;
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect()
}

/// `host` of `host:port`, `[::1]:8947`, `::1`.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        // A bare IPv6 address has more than one colon.
        Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refusal((code, message): (StatusCode, String)) -> Response {
    let mut r = (code, message).into_response();
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"bpm\""),
        );
    }
    r
}

/// The middleware: refuse, or pass the request on. The server must give it the
/// connection as `ConnectInfo<Peer>` (`into_make_service_with_connect_info::<Peer>`).
pub async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<Peer>>().map(|c| &c.0);
    match g.check(req.headers(), peer) {
        Ok(()) => next.run(req).await,
        Err(refused) => refusal(refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn me() -> Peer {
        Peer::with_uid(Some(nix::unistd::geteuid().as_raw()))
    }

    fn local(allowed: &[&str]) -> Guard {
        let allowed = allowed.iter().map(|o| o.parse().unwrap()).collect();
        Guard::new("127.0.0.1".parse().unwrap(), 8947, None, allowed)
    }

    #[test]
    fn local_hosts_and_own_or_allowed_origins_pass() {
        let g = local(&["http://localhost:5173"]);
        for host in [
            "127.0.0.1:8947",
            "localhost:8947",
            "[::1]:8947",
            "localhost",
        ] {
            assert!(
                g.check(&headers(&[("host", host)]), Some(&me())).is_ok(),
                "{host}"
            );
        }
        for origin in [
            "http://127.0.0.1:8947",
            "http://localhost:8947",
            "http://[::1]:8947",
            "http://localhost:5173",
            "HTTP://LOCALHOST:5173",
        ] {
            assert!(
                g.check(
                    &headers(&[("host", "127.0.0.1:8947"), ("origin", origin)]),
                    Some(&me())
                )
                .is_ok(),
                "{origin}"
            );
        }
    }

    #[test]
    fn rebinding_and_foreign_origins_are_refused() {
        let g = local(&["http://localhost:5173"]);
        let status = |h: HeaderMap| g.check(&h, Some(&me())).unwrap_err().0;
        assert_eq!(status(headers(&[("host", "evil.example:8947")])), 403);
        assert_eq!(status(headers(&[])), 403);
        for origin in [
            "https://evil.example",
            "null",
            "http://localhost.evil.example",
            // Other local pages: any user of the machine can serve one.
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://localhost:5173",
            "https://127.0.0.1:8947",
        ] {
            assert_eq!(
                status(headers(&[("host", "127.0.0.1:8947"), ("origin", origin)])),
                403,
                "{origin}"
            );
        }
    }

    #[test]
    fn without_a_token_only_the_daemons_user_passes() {
        let g = local(&[]);
        let h = headers(&[("host", "127.0.0.1:8947")]);
        assert!(g.check(&h, Some(&me())).is_ok());
        let (code, why) = g.check(&h, Some(&Peer::with_uid(Some(65534)))).unwrap_err();
        assert_eq!(code, 403);
        assert!(why.contains("another user (uid 65534)"), "{why}");
        assert!(why.contains("--token-file"), "{why}");
        let (code, why) = g.check(&h, Some(&Peer::with_uid(None))).unwrap_err();
        assert_eq!(code, 403);
        assert!(why.contains("cannot tell which user"), "{why}");
        assert_eq!(g.check(&h, None).unwrap_err().0, 403);
    }

    #[test]
    fn the_token_is_required_when_set_and_is_enough() {
        let g = Guard::new(
            "10.1.2.3".parse().unwrap(),
            8947,
            Some("s3cret".into()),
            Vec::new(),
        );
        let host = ("host", "10.1.2.3:8947");
        let other = Peer::with_uid(Some(65534));
        assert_eq!(g.check(&headers(&[host]), Some(&me())).unwrap_err().0, 401);
        assert_eq!(
            g.check(&headers(&[host, ("authorization", "Bearer nope")]), None)
                .unwrap_err()
                .0,
            401
        );
        for peer in [None, Some(&other)] {
            assert!(
                g.check(&headers(&[host, ("authorization", "Bearer s3cret")]), peer)
                    .is_ok()
            );
        }
        assert_eq!(
            g.check(
                &headers(&[
                    ("host", "other.example"),
                    ("authorization", "Bearer s3cret")
                ]),
                None
            )
            .unwrap_err()
            .0,
            403
        );
    }

    /// With a token, the machine's own addresses are its names too.
    #[test]
    fn with_a_token_the_machines_addresses_are_hosts() {
        let addrs = interface_addrs();
        let Some(ip) = addrs.iter().find(|ip| !ip.is_loopback()) else {
            eprintln!("skipped: no interface address besides loopback");
            return;
        };
        let host = match ip {
            IpAddr::V4(v4) => format!("{v4}:8947"),
            IpAddr::V6(v6) => format!("[{v6}]:8947"),
        };
        let auth = ("authorization", "Bearer s3cret");
        let with = Guard::new(
            "0.0.0.0".parse().unwrap(),
            8947,
            Some("s3cret".into()),
            Vec::new(),
        );
        assert!(with.check(&headers(&[("host", &host), auth]), None).is_ok());
        let without = local(&[]);
        assert_eq!(
            without
                .check(&headers(&[("host", &host)]), Some(&me()))
                .unwrap_err()
                .0,
            403
        );
    }
}
