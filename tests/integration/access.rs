//! Only the user: who may talk to the daemon over TCP (its own user, or whoever has the
//! token), what web pages may do (nothing, unless their origin is configured), and that
//! the data directory is private.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use bpm::client::{Client, Target};
use bpm::protocol::{Mode, StartRequest};

use crate::helpers::api::{exchange_async, request};
use crate::helpers::daemon::{DaemonOf, Dirs, InProcess, options};

/// An in-process daemon of `dirs`, with a token or none.
fn start(dirs: &Dirs, token: Option<&str>) -> InProcess {
    InProcess::start(bpm::daemon::Options {
        token: token.map(str::to_owned),
        ..options(dirs)
    })
}

/// The typed client of the daemon of `dirs`.
fn client(dirs: &Dirs) -> Client {
    Client::new(Target {
        data_dir: dirs.data.clone(),
        project_dir: None,
    })
}

/// One HTTP/1.1 request over TCP: `extra` header lines (each ending in `\r\n`). The
/// status code and the body.
async fn http(port: u16, method: &str, path: &str, extra: &str, body: &str) -> (u16, String) {
    let r = exchange_async(port, request(method, path, extra, body)).await;
    (r.code, r.text())
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
    let mut parts = spec.split(' ');
    let port: u16 = parts.next().unwrap().parse().unwrap();
    let auth = parts
        .next()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let r = crate::helpers::api::exchange(port, &request("GET", "/api/status", &auth, ""));
    println!("{CHILD_MARK}{} {}", r.code, r.text().replace('\n', " "));
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
            "access::child_request",
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
    let dirs = Dirs::new();
    let d = start(&dirs, None);
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

    let dirs = Dirs::new();
    let d = start(&dirs, Some("s3cret-token"));
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
    let dirs = Dirs::new();
    let d = start(&dirs, None);
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
    let socket = dirs.data.join(bpm::daemon::SOCKET_FILE);
    let r = bpm::client::request(&socket, "POST", "/api/restart/x", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status, 415);
    assert_eq!(
        client(&dirs).status(None).await.unwrap().processes.len(),
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
    let c = client(&dirs);
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
    let dirs = Dirs::new();
    dirs.write_config("allowed_origins = [\"http://localhost:5173\"]\n");
    let d = start(&dirs, None);
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
    let dirs = Dirs::new();
    let data = dirs.data.clone();
    let d = start(&dirs, None);
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
    let d = start(&dirs, None);
    assert_private(
        &data,
        &["logs.redb", "daemon.json", "bpm.sock", "daemon.log"],
    );
    d.shutdown().await;
}

/// A daemon the CLI starts in the background gets a private data directory and log.
#[test]
fn an_autostarted_daemon_has_a_private_directory_and_log() {
    let dirs = Dirs::new();
    let data = dirs.data.clone();
    let _stop = DaemonOf(data.clone());
    let out = crate::helpers::process::output(dirs.bpm(&["mode", "--data-dir"]).arg(&data));
    assert!(out.status.success(), "{out:?}");
    assert!(
        bpm::daemon::read_daemon_info(&data).is_some(),
        "the daemon says who it is"
    );
    assert_private(
        &data,
        &["logs.redb", "daemon.json", "bpm.sock", "daemon.log"],
    );
}
