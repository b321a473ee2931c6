//! The client of the daemon's local API: HTTP/1.1 over the Unix socket in the data
//! directory, and finding (or starting) the daemon that serves a directory.
//!
//! Front ends (the CLI, the `bpm mcp` stdio bridge, the TUI) use these and nothing else
//! to reach the daemon:
//!
//! - [`locate`]: which data directory (and so which daemon) a command means.
//! - [`ensure_daemon`]: that daemon, started in the background if none runs.
//! - [`Client`]: typed calls (`status`, `logs`, `follow`, `start`...), whose requests and
//!   answers are the types of [`crate::protocol`].
//! - [`request`]: one raw HTTP request over the socket; the [`Response`] body is read as
//!   it arrives, so streaming answers work too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::config;
use crate::daemon::{SOCKET_FILE, STORE_FILE};
use crate::protocol::{
    ApiError, FollowQuery, FollowRecord, LogQuery, LogResult, Mode, ModeBody, StartRequest,
    StartResult, Status, StatusReport, StopQuery,
};

/// Why talking to the daemon failed. Messages name the problem and the way out.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket (no daemon runs for this data directory).
    #[error(
        "no bpm daemon runs for the data directory {}; start one with `bpm serve`, or drop --no-autostart",
        data_dir.display()
    )]
    NotRunning { data_dir: PathBuf },
    #[error("cannot start the bpm daemon for {}: {why}", data_dir.display())]
    Autostart { data_dir: PathBuf, why: String },
    #[error("the bpm daemon's socket {}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the bpm daemon failed: {0}")]
    Http(String),
    /// The daemon answered with an error: `message` says what went wrong and what would
    /// work. `status` is the HTTP status: 400 bad input, 404 unknown process, 409 the
    /// process refused, 500 anything else.
    #[error("{message}")]
    Api { status: u16, message: String },
}

impl ClientError {
    /// Whether the request never reached a daemon (nothing was done), so trying again
    /// on another connection cannot do anything twice.
    pub fn not_sent(&self) -> bool {
        matches!(
            self,
            ClientError::NotRunning { .. } | ClientError::Io { .. }
        )
    }
}

/// Where a command's daemon lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The data directory: the store, the socket, `daemon.json`, `daemon.log`.
    pub data_dir: PathBuf,
    /// The project (nearest `.mcp-run` upwards), if any: what an autostarted daemon serves.
    pub project_dir: Option<PathBuf>,
}

impl Target {
    /// The local API's socket.
    pub fn socket(&self) -> PathBuf {
        self.data_dir.join(SOCKET_FILE)
    }
    /// The store, for reading it directly when no daemon runs.
    pub fn store(&self) -> PathBuf {
        self.data_dir.join(STORE_FILE)
    }
}

/// The daemon a command in `cwd` means: `data_dir` (`--data-dir`) if given, else
/// `$BPM_HOME`, else the data directory of the nearest project (a `.mcp-run` in `cwd` or
/// above), else the default (`$XDG_STATE_HOME/bpm`).
pub fn locate(data_dir: Option<&Path>, cwd: &Path) -> Target {
    let project_dir = config::find_project_dir(cwd);
    let data_dir = config::data_dir(data_dir, project_dir.as_deref());
    let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
    Target {
        data_dir,
        project_dir,
    }
}

/// How to find the daemon, and whether to start one.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// `--data-dir`, if given (see [`locate`]).
    pub data_dir: Option<PathBuf>,
    /// Where the command runs (the project is looked for from here).
    pub cwd: PathBuf,
    /// Start a daemon in the background when none runs.
    pub autostart: bool,
    /// How long a started daemon may take to answer.
    pub timeout: Duration,
}

impl DaemonOptions {
    /// For a command run in the current directory.
    pub fn new(data_dir: Option<PathBuf>, autostart: bool) -> DaemonOptions {
        DaemonOptions {
            data_dir,
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            autostart,
            timeout: Duration::from_secs(15),
        }
    }
}

/// The daemon for `opts`, answering on its socket. When none answers and
/// `opts.autostart` is set, starts `bpm serve` in the background: detached in a session
/// of its own (no controlling terminal: a Ctrl+C or a closed terminal does not reach it), its output appended to
/// `DATA_DIR/daemon.log`, serving the project directory (else the home directory), with
/// `--port $BPM_PORT` when that variable is set. Returns once the socket answers.
pub async fn ensure_daemon(opts: &DaemonOptions) -> Result<Target, ClientError> {
    let target = locate(opts.data_dir.as_deref(), &opts.cwd);
    if answers(&target.socket()).await {
        return Ok(target);
    }
    if !opts.autostart {
        return Err(ClientError::NotRunning {
            data_dir: target.data_dir,
        });
    }
    let fail = |why: String| ClientError::Autostart {
        data_dir: target.data_dir.clone(),
        why,
    };
    // Private from the start (0700, 0600), as the daemon keeps them.
    crate::daemon::files::create_private_dir(&target.data_dir).map_err(|e| fail(e.to_string()))?;
    let log_path = target.data_dir.join("daemon.log");
    let log = crate::daemon::files::open_private_append(&log_path)
        .map_err(|e| fail(format!("{}: {e}", log_path.display())))?;
    let exe = std::env::current_exe().map_err(|e| fail(e.to_string()))?;
    let dir = target
        .project_dir
        .clone()
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("serve")
        .arg(&dir)
        .arg("--data-dir")
        .arg(&target.data_dir)
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| fail(e.to_string()))?)
        .stderr(log);
    if let Some(port) = std::env::var_os("BPM_PORT") {
        cmd.arg("--port").arg(port);
    }
    // daemon.log holds the daemon's own messages, warnings and worse unless asked.
    if std::env::var_os("BPM_LOG").is_none() && std::env::var_os("RUST_LOG").is_none() {
        cmd.env("BPM_LOG", "warn");
    }
    new_session(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
    let deadline = Instant::now() + opts.timeout;
    let mut exited_at: Option<Instant> = None;
    loop {
        if answers(&target.socket()).await {
            // The daemon outlives us; nobody waits for it but init.
            drop(child);
            return Ok(target);
        }
        if exited_at.is_none() && matches!(child.try_wait(), Ok(Some(_))) {
            exited_at = Some(Instant::now());
        }
        // A daemon that exited may have lost a race with another one starting: give that
        // one a moment before reporting.
        let gave_up = exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2));
        if gave_up || Instant::now() > deadline {
            let tail = std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Err(fail(format!(
                "it did not answer on {} (its log {} ends with:\n{tail})",
                target.socket().display(),
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Run `cmd` in a new session (`setsid`), as a daemon should: no controlling terminal,
/// its own process group.
#[allow(unsafe_code)]
fn new_session(cmd: &mut std::process::Command) {
    // SAFETY: setsid is async-signal-safe, and the closure touches nothing else.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
}

/// Whether a daemon answers on `socket`.
pub async fn answers(socket: &Path) -> bool {
    matches!(request(socket, "GET", "/api/mode", &[], Vec::new()).await, Ok(r) if r.status == 200)
}

/// A path segment, percent-encoded (a process name may be anything a user typed).
fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A query string from a protocol type (empty when every field has its default).
fn query<T: serde::Serialize>(q: &T) -> Result<String, ClientError> {
    let s = serde_urlencoded::to_string(q).map_err(|e| ClientError::Http(e.to_string()))?;
    Ok(if s.is_empty() { s } else { format!("?{s}") })
}

/// The typed client of one daemon's local API. Cheap to clone; each call opens its own
/// connection: to the socket, or over TCP to a daemon elsewhere ([`Client::remote`]).
#[derive(Clone, Debug)]
pub struct Client {
    target: Target,
    remote: Option<Remote>,
    /// The front end that acts, as the daemon records it in events ([`CLIENT_HEADER`]'s
    /// value: `cli` or `tui`).
    ///
    /// [`CLIENT_HEADER`]: crate::daemon::http::CLIENT_HEADER
    front_end: &'static str,
}

/// A daemon reached over TCP: `HOST:PORT`, and the bearer token its guard wants.
#[derive(Clone, Debug)]
struct Remote {
    authority: String,
    token: Option<String>,
}

impl Client {
    /// A client of the daemon at `target` (whether one runs is found out by the calls).
    pub fn new(target: Target) -> Client {
        Client {
            target,
            remote: None,
            front_end: "cli",
        }
    }

    /// This client's actions are the TUI's (the daemon's events say so).
    pub fn for_tui(self) -> Client {
        Client {
            front_end: "tui",
            ..self
        }
    }

    /// A client of the daemon at `url` (`http://HOST:PORT`, any path ignored) over TCP,
    /// sending `token` as a bearer token when given. Its [`Client::target`] has no data
    /// directory (the daemon's files are on its machine).
    pub fn remote(url: &str, token: Option<String>) -> Result<Client, ClientError> {
        let bad = |why: &str| {
            ClientError::Http(format!(
                "`{url}` is not a daemon's address ({why}); e.g. http://127.0.0.1:8947"
            ))
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// is spoken"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let uri: hyper::Uri = format!("http://{authority}/")
            .parse()
            .map_err(|_| bad("no HOST:PORT"))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        let authority = match uri.port_u16() {
            Some(_) => authority.to_owned(),
            None => format!("{authority}:80"),
        };
        Ok(Client {
            target: Target {
                data_dir: PathBuf::new(),
                project_dir: None,
            },
            remote: Some(Remote { authority, token }),
            front_end: "cli",
        })
    }

    /// Where the daemon is, for people: its socket, or its URL.
    pub fn address(&self) -> String {
        match &self.remote {
            Some(r) => format!("http://{}", r.authority),
            None => self.target.socket().display().to_string(),
        }
    }

    /// One request to this client's daemon, over its transport.
    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response, ClientError> {
        let Some(r) = &self.remote else {
            return request(&self.target.socket(), method, path, headers, body).await;
        };
        let stream = tokio::net::TcpStream::connect(&r.authority)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                    data_dir: PathBuf::from(format!("http://{}", r.authority)),
                },
                _ => ClientError::Http(format!("cannot connect to {}: {e}", r.authority)),
            })?;
        let auth = r.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &auth {
            all.push(("authorization", a));
        }
        exchange(stream, &r.authority, method, path, &all, body).await
    }

    /// The daemon for `opts`, started when none runs and `opts.autostart` is set.
    pub async fn connect(opts: &DaemonOptions) -> Result<Client, ClientError> {
        Ok(Client::new(ensure_daemon(opts).await?))
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Whether the daemon answers.
    pub async fn answers(&self) -> bool {
        matches!(self.request("GET", "/api/mode", &[], Vec::new()).await, Ok(r) if r.status == 200)
    }

    /// Send a request and return the response head, or the daemon's error answer.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, ClientError> {
        self.send_with(method, path, body, &[]).await
    }

    /// [`Self::send`] with more headers.
    async fn send_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
    ) -> Result<Response, ClientError> {
        // The API refuses a POST without one of these (a web page could have sent it).
        let mut headers = vec![(crate::daemon::http::CLIENT_HEADER, self.front_end)];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        headers.extend_from_slice(extra);
        let resp = self
            .request(method, path, &headers, body.unwrap_or_default())
            .await?;
        if resp.status == 200 {
            return Ok(resp);
        }
        let status = resp.status;
        let bytes = resp.bytes().await?;
        let message = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(ClientError::Api { status, message })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        self.send(method, path, body).await?.json().await
    }

    /// Every process, or one (by name or pid).
    pub async fn status(&self, process: Option<&str>) -> Result<StatusReport, ClientError> {
        let path = match process {
            Some(p) => format!("/api/status/{}", segment(p)),
            None => "/api/status".to_owned(),
        };
        self.call("GET", &path, None::<&()>).await
    }

    pub async fn logs(&self, process: &str, q: &LogQuery) -> Result<LogResult, ClientError> {
        let path = format!("/api/logs/{}{}", segment(process), query(q)?);
        self.call("GET", &path, None::<&()>).await
    }

    /// A log read as a stream of records (an instance, its lines, its end, for each
    /// instance read), sent by the daemon page by page: memory stays flat however long
    /// the read. Errors (unknown process, bad query) come before the stream; a stream
    /// cut by an error fails [`FollowStream::next`] instead of ending it.
    pub async fn logs_records(
        &self,
        process: &str,
        q: &LogQuery,
    ) -> Result<FollowStream, ClientError> {
        let path = format!("/api/logs/{}{}", segment(process), query(q)?);
        let accept = ("accept", crate::daemon::http::NDJSON);
        Ok(FollowStream {
            resp: self.send_with("GET", &path, None, &[accept]).await?,
            buf: Vec::new(),
        })
    }

    /// A follow stream; errors (unknown process, bad regex) come before it.
    pub async fn follow(
        &self,
        process: &str,
        q: &FollowQuery,
    ) -> Result<FollowStream, ClientError> {
        let path = format!("/api/follow/{}{}", segment(process), query(q)?);
        Ok(FollowStream {
            resp: self.send("GET", &path, None).await?,
            buf: Vec::new(),
        })
    }

    pub async fn start(&self, req: &StartRequest) -> Result<StartResult, ClientError> {
        self.call("POST", "/api/start", Some(req)).await
    }

    pub async fn stop(&self, process: &str, force: bool) -> Result<Status, ClientError> {
        let path = format!(
            "/api/stop/{}{}",
            segment(process),
            query(&StopQuery { force })?
        );
        self.call("POST", &path, None::<&()>).await
    }

    pub async fn restart(&self, process: &str) -> Result<StartResult, ClientError> {
        let path = format!("/api/restart/{}", segment(process));
        self.call("POST", &path, None::<&()>).await
    }

    /// Remove a runtime process that is not running from the list; its logs stay unless
    /// `logs` (then they are deleted at once).
    pub async fn remove(&self, process: &str, logs: bool) -> Result<(), ClientError> {
        let path = format!(
            "/api/remove/{}{}",
            segment(process),
            query(&crate::protocol::RemoveQuery { logs })?
        );
        self.send("POST", &path, None).await?;
        Ok(())
    }

    /// Wait until every line captured so far is durable.
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.send("POST", "/api/flush", None).await?;
        Ok(())
    }

    pub async fn mode(&self) -> Result<Mode, ClientError> {
        let m: ModeBody = self.call("GET", "/api/mode", None::<&()>).await?;
        Ok(m.mode)
    }

    pub async fn set_mode(&self, mode: Mode) -> Result<Mode, ClientError> {
        let m: ModeBody = self
            .call("POST", "/api/mode", Some(&ModeBody { mode }))
            .await?;
        Ok(m.mode)
    }
}

/// A follow stream's records as they arrive. [`FollowStream::next`] is cancel-safe: it
/// can be raced against Ctrl+C.
#[derive(Debug)]
pub struct FollowStream {
    resp: Response,
    /// Bytes of a record whose newline has not arrived yet.
    buf: Vec<u8>,
}

impl FollowStream {
    /// The records that arrived since the last call, waiting for at least one; `None`
    /// once the stream ended (the daemon shut down, or a process only the store knows
    /// reached its end).
    pub async fn next(&mut self) -> Result<Option<Vec<FollowRecord>>, ClientError> {
        loop {
            if let Some(end) = self.buf.iter().rposition(|&b| b == b'\n') {
                let rest = self.buf.split_off(end + 1);
                let whole = std::mem::replace(&mut self.buf, rest);
                return whole
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|raw| {
                        serde_json::from_slice(raw).map_err(|e| {
                            ClientError::Http(format!(
                                "unexpected follow record ({e}): {}",
                                String::from_utf8_lossy(raw)
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some);
            }
            match self.resp.chunk().await? {
                Some(c) => self.buf.extend_from_slice(&c),
                None => return Ok(None),
            }
        }
    }
}

/// An HTTP response whose body is read as it arrives.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    body: Incoming,
}

impl Response {
    /// The next chunk of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ClientError::Http(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, ClientError> {
        self.body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| ClientError::Http(e.to_string()))
    }

    /// The whole body as JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, ClientError> {
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Http(format!(
                "unexpected answer ({e}): {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })
    }

    /// The body, for a caller that reads it as an `http_body::Body`.
    pub fn into_body(self) -> Incoming {
        self.body
    }
}

/// Send one request over the daemon's socket (a fresh connection each time) and return
/// the response as soon as its head arrives. `path` includes the query string;
/// `headers` are added to `Host` (and `Content-Length`, from `body`). Fails with
/// [`ClientError::NotRunning`] when nothing listens on the socket.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Response, ClientError> {
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning {
                data_dir: socket.parent().unwrap_or(socket).to_owned(),
            });
        }
        Err(source) => {
            return Err(ClientError::Io {
                socket: socket.to_owned(),
                source,
            });
        }
    };
    exchange(stream, "localhost", method, path, headers, body).await
}

/// One HTTP/1.1 exchange over a connected stream (the socket's or a TCP one), answered
/// as soon as the response head arrives.
async fn exchange<S>(
    stream: S,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Response, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| ClientError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder
        .body(http_body_util::Full::new(Bytes::from(body)))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let (parts, body) = resp.into_parts();
    Ok(Response {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}
