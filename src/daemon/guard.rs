//! The TCP listener's gate, in front of the JSON API and MCP alike: DNS-rebinding
//! protection (`Host` and `Origin` must be local) and the optional bearer token. The Unix
//! socket needs neither: its file mode (0600) is its access control.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Who may talk to the TCP listener.
#[derive(Clone, Debug)]
pub struct Guard {
    inner: Arc<GuardInner>,
}

#[derive(Debug)]
struct GuardInner {
    /// The address listened on; a non-loopback one also accepts its own `Host`.
    listen: IpAddr,
    token: Option<String>,
}

impl Guard {
    pub fn new(listen: IpAddr, token: Option<String>) -> Guard {
        Guard {
            inner: Arc::new(GuardInner { listen, token }),
        }
    }

    /// Why this request is refused, if it is.
    fn check(&self, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(host_of);
        match host {
            Some(h) if self.local_name(h) => {}
            Some(h) => {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    format!(
                        "Forbidden: Host `{h}` is not this daemon's address (bpm answers to localhost, 127.0.0.1 and ::1 only, to stop DNS-rebinding attacks); connect to http://127.0.0.1:PORT"
                    ),
                ));
            }
            None => {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "Forbidden: the request has no valid Host header".into(),
                ));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("(not text)");
            if !self.local_origin(origin) {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    format!(
                        "Forbidden: requests from the web page origin `{origin}` are not allowed; bpm accepts browser requests from local pages (http://localhost, http://127.0.0.1) only"
                    ),
                ));
            }
        }
        if let Some(token) = &self.inner.token {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim);
            match given {
                Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => {}
                Some(_) => {
                    return Err(refuse(
                        StatusCode::UNAUTHORIZED,
                        "Unauthorized: the bearer token is wrong; use the daemon's token (its --token-file, or BPM_TOKEN)".into(),
                    ));
                }
                None => {
                    return Err(refuse(
                        StatusCode::UNAUTHORIZED,
                        "Unauthorized: this daemon requires a token; send `Authorization: Bearer <token>` with the daemon's token (its --token-file, or BPM_TOKEN)".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    fn local_name(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == self.inner.listen,
            Err(_) => false,
        }
    }

    fn local_origin(&self, origin: &str) -> bool {
        let Some(rest) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            return false;
        };
        self.local_name(host_of(rest.trim_end_matches('/')))
    }
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

fn refuse(code: StatusCode, message: String) -> (StatusCode, String) {
    (code, message)
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

/// The middleware: refuse, or pass the request on.
pub async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    match g.check(req.headers()) {
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

    #[test]
    fn local_hosts_and_origins_pass() {
        let g = Guard::new("127.0.0.1".parse().unwrap(), None);
        for host in [
            "127.0.0.1:8947",
            "localhost:8947",
            "[::1]:8947",
            "localhost",
        ] {
            assert!(g.check(&headers(&[("host", host)])).is_ok(), "{host}");
        }
        for origin in [
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://[::1]:5173",
        ] {
            assert!(
                g.check(&headers(&[("host", "127.0.0.1:8947"), ("origin", origin)]))
                    .is_ok(),
                "{origin}"
            );
        }
    }

    #[test]
    fn rebinding_and_foreign_origins_are_refused() {
        let g = Guard::new("127.0.0.1".parse().unwrap(), None);
        let status = |h: HeaderMap| g.check(&h).unwrap_err().0;
        assert_eq!(status(headers(&[("host", "evil.example:8947")])), 403);
        assert_eq!(status(headers(&[])), 403);
        assert_eq!(
            status(headers(&[
                ("host", "127.0.0.1:8947"),
                ("origin", "https://evil.example")
            ])),
            403
        );
        assert_eq!(
            status(headers(&[("host", "127.0.0.1:8947"), ("origin", "null")])),
            403
        );
        assert_eq!(
            status(headers(&[
                ("host", "127.0.0.1:8947"),
                ("origin", "http://localhost.evil.example")
            ])),
            403
        );
    }

    #[test]
    fn the_token_is_required_when_set() {
        let g = Guard::new("10.1.2.3".parse().unwrap(), Some("s3cret".into()));
        let host = ("host", "10.1.2.3:8947");
        assert_eq!(g.check(&headers(&[host])).unwrap_err().0, 401);
        assert_eq!(
            g.check(&headers(&[host, ("authorization", "Bearer nope")]))
                .unwrap_err()
                .0,
            401
        );
        assert!(
            g.check(&headers(&[host, ("authorization", "Bearer s3cret")]))
                .is_ok()
        );
        assert_eq!(
            g.check(&headers(&[
                ("host", "other.example"),
                ("authorization", "Bearer s3cret")
            ]))
            .unwrap_err()
            .0,
            403
        );
    }
}
