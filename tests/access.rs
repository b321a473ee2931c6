//! Only the user: who may talk to the daemon over TCP (its own user, or whoever has the
//! token), what web pages may do (nothing, unless their origin is configured), and that
//! the data directory is private.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bpm::client::{Client, Target};
use bpm::protocol::{Mode, StartRequest};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A daemon running in this test's runtime; shut down when the test ends.
struct Daemon {
    port: u16,
    data: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Daemon {
    async fn start(project: &Path, data: &Path, token: Option<&str>) -> Daemon {
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let opts = bpm::daemon::Options {
            dir: project.to_owned(),
            data_dir: Some(data.to_owned()),
            port: Some(0),
            passthrough: Some(false),
            token: token.map(str::to_owned),
            ..Default::default()
        };
        let task = tokio::spawn(bpm::daemon::run(
            opts,
            async move {
                let _ = stop_rx.await;
            },
            move |info| {
                let _ = port_tx.send(info.port);
            },
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(p) = port_rx.try_recv() {
                break p;
            }
            assert!(!task.is_finished(), "the daemon ended: {:?}", task.await);
            assert!(Instant::now() < deadline, "the daemon never listened");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Daemon {
            port,
            data: data.to_owned(),
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    fn client(&self) -> Client {
        Client::new(Target {
            data_dir: self.data.clone(),
            project_dir: None,
        })
    }

    async fn shutdown(mut self) {
        self.stop.take().map(|s| s.send(()));
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// One HTTP/1.1 request over TCP: `extra` header lines (each ending in `\r\n`) after
/// `Host`. The status code and the body.
async fn http(port: u16, method: &str, path: &str, extra: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    parse(&resp)
}

fn parse(resp: &str) -> (u16, String) {
    let code = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_owned())
}

fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let project = t.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let data = t.path().join("data");
    (t, project, data)
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The data directory's mode and every entry's, by name.
fn modes(data: &Path) -> (u32, Vec<(String, u32)>) {
    let mut entries: Vec<(String, u32)> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                mode(&e.path()),
            )
        })
        .collect();
    entries.sort();
    (mode(data), entries)
}

fn assert_private(data: &Path, expected_files: &[&str]) {
    let (dir, entries) = modes(data);
    assert_eq!(dir, 0o700, "the data directory: {entries:?}");
    for name in expected_files {
        assert!(
            entries.iter().any(|(n, _)| n == name),
            "no {name} in {entries:?}"
        );
    }
    for (name, m) in &entries {
        assert_eq!(*m, 0o600, "{name} is {m:04o}");
    }
}

const CHILD_ENV: &str = "BPM_ACCESS_TEST_CHILD";
const CHILD_MARK: &str = "child-answer: ";

/// Not a test by itself: the body of the child process that
/// [`another_user_is_refused_over_tcp_unless_it_has_the_token`] runs as another user
/// (without its variable set, it does nothing). `PORT [TOKEN]`: GET /api/status, print
/// the answer.
#[test]
fn child_request() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    use std::io::{Read as _, Write as _};
    let mut parts = spec.split(' ');
    let port: u16 = parts.next().unwrap().parse().unwrap();
    let auth = parts
        .next()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (code, body) = parse(&resp);
    println!("{CHILD_MARK}{code} {}", body.replace('\n', " "));
}

/// [`child_request`] run as uid 65534: the status code and the body it got.
async fn as_nobody(port: u16, token: Option<&str>) -> (u16, String) {
    let spec = match token {
        Some(t) => format!("{port} {t}"),
        None => port.to_string(),
    };
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_request",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .current_dir("/")
        .uid(65534)
        .gid(65534)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answer = stdout
        .lines()
        .find_map(|l| l.split_once(CHILD_MARK).map(|(_, answer)| answer))
        .unwrap_or_else(|| {
            panic!(
                "the child printed no answer: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let (code, body) = answer.split_once(' ').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Over loopback TCP without a token, the kernel's socket table says who connects: the
/// daemon's own user gets in, another user gets 403 saying to use the token; with a
/// token, that user gets in with it (and 401 without).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_is_refused_over_tcp_unless_it_has_the_token() {
    let (_t, project, data) = dirs();
    let d = Daemon::start(&project, &data, None).await;
    let (code, body) = http(d.port, "GET", "/api/status", "", "").await;
    assert_eq!(code, 200, "the daemon's own user: {body}");
    if !is_root() {
        eprintln!("skipped the other-user part: it needs root to run a child as uid 65534");
        d.shutdown().await;
        return;
    }
    let (code, body) = as_nobody(d.port, None).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("another user (uid 65534)"), "{body}");
    assert!(
        body.contains("--token-file") && body.contains("Authorization: Bearer"),
        "says to use the token: {body}"
    );
    d.shutdown().await;

    let (_t, project, data) = dirs();
    let d = Daemon::start(&project, &data, Some("s3cret-token")).await;
    let (code, body) = as_nobody(d.port, Some("s3cret-token")).await;
    assert_eq!(code, 200, "another user with the token: {body}");
    let (code, body) = as_nobody(d.port, None).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = http(
        d.port,
        "GET",
        "/api/status",
        "Authorization: Bearer s3cret-token\r\n",
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    d.shutdown().await;
}

/// A POST a web page could send without a CORS preflight (no Content-Type, or a simple
/// one, and no custom header) is refused with 415 on both listeners; with JSON or the
/// client header it goes through, and the typed client's POSTs all work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_a_web_page_could_send_are_refused() {
    let (_t, project, data) = dirs();
    let d = Daemon::start(&project, &data, None).await;
    let start = r#"{"name":"napper","command":["sleep","300"]}"#;
    for (path, extra, body) in [
        ("/api/restart/x", "", ""),
        ("/api/restart/x", "Content-Type: text/plain\r\n", ""),
        ("/api/stop/x", "", ""),
        ("/api/start", "Content-Type: text/plain\r\n", start),
        (
            "/api/start",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            start,
        ),
        ("/api/start", "", start),
        (
            "/api/mode",
            "Content-Type: multipart/form-data\r\n",
            r#"{"mode":"dev"}"#,
        ),
    ] {
        let (code, resp) = http(d.port, "POST", path, extra, body).await;
        assert_eq!(code, 415, "{path} {extra:?}: {resp}");
        assert!(
            resp.contains("Content-Type: application/json") && resp.contains("X-Bpm-Client"),
            "says what is needed: {resp}"
        );
    }
    // Over the socket too: one API.
    let socket = d.data.join(bpm::daemon::SOCKET_FILE);
    let r = bpm::client::request(&socket, "POST", "/api/restart/x", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status, 415);
    assert_eq!(
        d.client().status(None).await.unwrap().processes.len(),
        0,
        "nothing was started"
    );

    // Past the check: an unknown process is a 404, a JSON start works.
    let (code, resp) = http(d.port, "POST", "/api/restart/x", "X-Bpm-Client: 1\r\n", "").await;
    assert_eq!(code, 404, "{resp}");
    let (code, resp) = http(
        d.port,
        "POST",
        "/api/start",
        "Content-Type: application/json; charset=utf-8\r\n",
        start,
    )
    .await;
    assert_eq!(code, 200, "{resp}");

    // The typed client, bodiless POSTs included.
    let c = d.client();
    c.restart("napper").await.unwrap();
    c.stop("napper", true).await.unwrap();
    c.start(&StartRequest {
        name: Some("napper".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(c.set_mode(Mode::Dev).await.unwrap(), Mode::Dev);
    c.stop("napper", true).await.unwrap();
    d.shutdown().await;
}

/// A web page's origin is refused unless it is the daemon's own or configured, other
/// local pages included; requests without an Origin pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_daemons_own_and_configured_origins_pass() {
    let (_t, project, data) = dirs();
    std::fs::write(
        project.join(".mcp-run"),
        "allowed_origins = [\"http://localhost:5173\"]\n",
    )
    .unwrap();
    let d = Daemon::start(&project, &data, None).await;
    let own = format!("http://127.0.0.1:{}", d.port);
    for (origin, expected) in [
        (None, 200),
        (Some("http://localhost:5173"), 200),
        (Some(own.as_str()), 200),
        (Some("https://evil.example"), 403),
        (Some("http://localhost:3000"), 403),
        (Some("http://127.0.0.1:5173"), 403),
        (Some("null"), 403),
    ] {
        let extra = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
        let (code, body) = http(d.port, "GET", "/api/status", &extra, "").await;
        assert_eq!(code, expected, "{origin:?}: {body}");
        if code == 403 {
            assert!(body.contains("allowed_origins"), "says how: {body}");
        }
    }
    // The same gate is in front of MCP.
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let mcp = "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n";
    let (code, body) = http(
        d.port,
        "POST",
        "/mcp",
        &format!("{mcp}Origin: http://localhost:3000\r\n"),
        init,
    )
    .await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = http(
        d.port,
        "POST",
        "/mcp",
        &format!("{mcp}Origin: http://localhost:5173\r\n"),
        init,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    d.shutdown().await;
}

/// The data directory is 0700 and everything in it 0600, from the first start; a
/// directory and store left readable by others are fixed at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private() {
    let (_t, project, data) = dirs();
    let d = Daemon::start(&project, &data, None).await;
    assert_private(&data, &["logs.redb", "daemon.json", "bpm.sock"]);
    d.shutdown().await;
    assert_private(&data, &["logs.redb"]);

    // As an older bpm (or a umask of 022) left them.
    let store = data.join(bpm::daemon::STORE_FILE);
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = data.join("daemon.log");
    std::fs::write(&log, "an old log\n").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = Daemon::start(&project, &data, None).await;
    assert_private(
        &data,
        &["logs.redb", "daemon.json", "bpm.sock", "daemon.log"],
    );
    d.shutdown().await;
}

/// A daemon the CLI starts in the background gets a private data directory and log.
#[test]
fn an_autostarted_daemon_has_a_private_directory_and_log() {
    let (_t, project, data) = dirs();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bpm"))
        .arg("mode")
        .arg("--data-dir")
        .arg(&data)
        .current_dir(&project)
        .env("BPM_PORT", "0")
        .env("BPM_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pid = bpm::daemon::read_daemon_info(&data)
        .expect("the daemon says who it is")
        .pid;
    let stop = stop_on_drop(pid);
    assert_private(
        &data,
        &["logs.redb", "daemon.json", "bpm.sock", "daemon.log"],
    );
    drop(stop);
}

/// Stops the daemon with `pid` (one this test started) when dropped, and waits until it
/// is gone.
fn stop_on_drop(pid: u32) -> impl Drop {
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.0 as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            // Gone, or a zombie its new parent has not reaped yet.
            let alive = || {
                std::fs::read_to_string(format!("/proc/{}/stat", self.0)).is_ok_and(|s| {
                    s.rsplit_once(") ")
                        .is_some_and(|(_, r)| !r.starts_with('Z'))
                })
            };
            while alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    Stop(pid)
}
