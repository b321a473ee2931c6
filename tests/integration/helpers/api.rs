//! The one place that speaks HTTP to the daemon: a small client of its JSON API
//! ([`Api`]) and the raw HTTP/1.1 exchange under it ([`exchange`]), which tests of the
//! HTTP layer itself (origin and host checks, tokens, MCP sessions) use directly.
//!
//! Blocking, over std sockets; async tests use the `_async` variants, which run the same
//! exchange on a blocking thread so that no runtime worker is held up.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::DEADLINE;

/// One HTTP response: the status code, the head (status line and headers) and the body
/// (de-chunked).
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// A header's value (the first, if repeated); names are case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Head and body, for assertions on either and for failure messages.
    pub fn text(&self) -> String {
        format!("{}\r\n\r\n{}", self.head, self.body)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

/// An HTTP/1.1 request to 127.0.0.1 with `Connection: close`: `headers` are extra header
/// lines, each ending in `\r\n`.
pub fn request(method: &str, path: &str, headers: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Send a raw request to the daemon's TCP port and read its response: to its end, or for
/// an event stream that stays open, to its first complete event with data.
#[track_caller]
pub fn exchange(port: u16, request: &str) -> Reply {
    let first_line = request.lines().next().unwrap_or_default().to_owned();
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("cannot connect to 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer to {first_line}: {e}"),
        }
        if let Some(reply) = parse(&buf, false) {
            return reply;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for a complete answer to {first_line}; got:\n{}",
            String::from_utf8_lossy(&buf)
        );
    }
    parse(&buf, true).unwrap_or_else(|| {
        panic!(
            "no HTTP answer to {first_line}: {:?}",
            String::from_utf8_lossy(&buf)
        )
    })
}

/// [`exchange`] for async tests.
pub async fn exchange_async(port: u16, request: String) -> Reply {
    tokio::task::spawn_blocking(move || exchange(port, &request))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The response in `buf`, if complete (or `eof`: the connection closed).
fn parse(buf: &[u8], eof: bool) -> Option<Reply> {
    let text = String::from_utf8_lossy(buf);
    let (head, raw_body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut reply = Reply {
        code,
        head: head.to_owned(),
        body: String::new(),
    };
    let chunked = reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length: Option<usize> = reply.header("content-length").and_then(|v| v.parse().ok());
    let complete = if chunked {
        let (body, last) = dechunk(raw_body);
        reply.body = body;
        last
    } else if let Some(n) = length {
        reply.body = raw_body.to_owned();
        raw_body.len() >= n
    } else {
        reply.body = raw_body.to_owned();
        false
    };
    // An event stream may stay open: its first event with data is the answer.
    let event_stream = reply
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let has_event = event_stream
        && reply
            .body
            .find("data: {")
            .or_else(|| reply.body.find("data:{"))
            .is_some_and(|at| reply.body[at..].contains("\n\n"));
    (complete || has_event || eof).then_some(reply)
}

/// The data of a chunked body so far, and whether the last chunk arrived.
fn dechunk(mut raw: &str) -> (String, bool) {
    let mut body = String::new();
    loop {
        let Some((size, rest)) = raw.split_once("\r\n") else {
            return (body, false);
        };
        let Ok(size) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
        else {
            return (body, false);
        };
        if size == 0 {
            return (body, true);
        }
        if rest.len() < size {
            body.push_str(rest);
            return (body, false);
        }
        body.push_str(&rest[..size]);
        raw = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
}

/// A client of the daemon's JSON API (`/api/...`) on its TCP port.
#[derive(Clone, Copy, Debug)]
pub struct Api {
    pub port: u16,
}

impl Api {
    pub fn new(port: u16) -> Api {
        Api { port }
    }

    /// `GET path`: the status code and the JSON body.
    #[track_caller]
    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = exchange(self.port, &request("GET", path, "", ""));
        (r.code, r.json())
    }

    /// `POST path` with a JSON body, or none.
    #[track_caller]
    pub fn post(&self, path: &str, body: Option<&Value>) -> (u16, Value) {
        let r = match body {
            Some(b) => exchange(
                self.port,
                &request(
                    "POST",
                    path,
                    "Content-Type: application/json\r\n",
                    &b.to_string(),
                ),
            ),
            // A custom header: the daemon refuses POSTs a web page could send.
            None => exchange(self.port, &request("POST", path, "X-Bpm-Client: 1\r\n", "")),
        };
        (r.code, r.json())
    }

    /// `GET /api/status`, which must succeed.
    #[track_caller]
    pub fn status(&self) -> Value {
        let (code, s) = self.get("/api/status");
        assert_eq!(code, 200, "{s}");
        s
    }

    /// One process of `GET /api/status` (`Null` if there is none of that name).
    #[track_caller]
    pub fn process(&self, name: &str) -> Value {
        process_in(&self.status(), name)
    }

    /// [`Self::status`] for async tests.
    pub async fn status_async(&self) -> Value {
        let api = *self;
        tokio::task::spawn_blocking(move || api.status())
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// The process named `name` in a status answer (the API's or `bpm status --json`'s);
/// `Null` if there is none.
pub fn process_in(status: &Value, name: &str) -> Value {
    status["processes"]
        .as_array()
        .expect("a status with processes")
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Raw MCP over HTTP, for the tests of the transport itself.
pub mod mcp {
    use serde_json::json;

    /// A `POST /mcp` to the daemon on `port` with JSON-RPC `body`; `headers` are extra
    /// header lines, each ending in `\r\n`.
    pub fn post(port: u16, headers: &str, body: &str) -> String {
        format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// An `initialize` request for protocol `version`.
    pub fn initialize(version: &str) -> String {
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}})
        .to_string()
    }
}
