//! The client of the daemon's local API: HTTP/1.1 over the Unix socket in the data
//! directory, and finding (or starting) the daemon that serves a directory.
//!
//! Front ends (the CLI, the `bpm mcp` stdio bridge, the TUI) use these and nothing else
//! to reach the daemon:
//!
//! - [`locate`]: which data directory (and so which daemon) a command means.
//! - [`ensure_daemon`]: that daemon, started in the background if none runs.
//! - [`request`]: one HTTP request over its socket; the [`Response`] body is read as it
//!   arrives, so streaming answers (`/api/follow/...`, `text/event-stream`) work too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::config;
use crate::daemon::{SOCKET_FILE, STORE_FILE};

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
/// `opts.autostart` is set, starts `bpm serve` in the background: detached in its own
/// process group (a Ctrl+C in the terminal does not reach it), its output appended to
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
    std::fs::create_dir_all(&target.data_dir).map_err(|e| fail(e.to_string()))?;
    let log_path = target.data_dir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
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
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
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

/// Whether a daemon answers on `socket`.
pub async fn answers(socket: &Path) -> bool {
    matches!(request(socket, "GET", "/api/mode", &[], Vec::new()).await, Ok(r) if r.status == 200)
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
        .header(hyper::header::HOST, "localhost");
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
