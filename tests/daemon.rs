//! The real `bpm serve` binary, real child processes, the real store.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BPM: &str = env!("CARGO_BIN_EXE_bpm");

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A daemon under test: SIGTERMed (so it stops its processes) when dropped, also when
/// the test panics.
struct Daemon(Option<Child>);

impl Daemon {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("still owned")
    }
    fn id(&self) -> u32 {
        self.0.as_ref().expect("still owned").id()
    }
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child().try_wait()
    }
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child().wait()
    }
    /// For a daemon expected to exit by itself.
    fn wait_with_output(mut self) -> std::io::Result<std::process::Output> {
        self.0.take().expect("still owned").wait_with_output()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0
            && let Ok(None) = child.try_wait()
        {
            signal(child.id(), nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}

fn serve(project: &Path, data: &Path) -> Daemon {
    let child = Command::new(BPM)
        .args(["serve", "--port", "0", "--no-prefix", "--data-dir"])
        .arg(data)
        .arg(project)
        .env("BPM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Daemon(Some(child))
}

/// The port of the daemon with pid `pid`, once it has bound its listener.
fn port_of(data: &Path, pid: u32) -> u16 {
    wait_for("the daemon to listen", 30, || {
        let info = bpm::daemon::read_daemon_info(data)?;
        (info.pid == pid).then_some(info.port)
    })
}

fn http(port: u16, method: &str, path: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bpm-Client: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code: u16 = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn process<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its new parent) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start())
                .unwrap_or("");
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

fn write_config(dir: &Path, body: &str) {
    std::fs::write(dir.join(".mcp-run"), body).unwrap();
}

#[test]
fn sigkill_of_the_daemon_then_restart_stops_the_orphan_and_keeps_the_previous_run() {
    let project = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // The process forks a grandchild (sleep) in its group, and ignores SIGTERM.
    write_config(
        project.path(),
        r#"
[process.web]
command = ["sh", "-c", "trap '' TERM; echo started $$; sleep 300 & while :; do sleep 0.05; done"]
stop_timeout_seconds = 0.5
"#,
    );
    let mut daemon = serve(project.path(), data.path());
    let port = port_of(data.path(), daemon.id());
    let old_pid = wait_for("web to run", 30, || {
        let (_, s) = http(port, "GET", "/api/status");
        process(&s, "web")["pid"].as_u64().map(|p| p as u32)
    });
    // Its first line is durable before we kill the daemon.
    wait_for("the first line", 30, || {
        let (_, l) = http(port, "GET", "/api/logs/web");
        l["lines"].as_array().filter(|a| !a.is_empty()).map(|_| ())
    });
    std::thread::sleep(Duration::from_millis(300)); // let a group commit happen
    signal(daemon.id(), nix::sys::signal::Signal::SIGKILL);
    daemon.wait().unwrap();
    assert!(alive(old_pid), "the orphan outlives the killed daemon");

    let mut daemon = serve(project.path(), data.path());
    let port = port_of(data.path(), daemon.id());
    let new_pid = wait_for("web to run again", 30, || {
        let (_, s) = http(port, "GET", "/api/status");
        let pid = process(&s, "web")["pid"].as_u64()? as u32;
        (pid != old_pid).then_some(pid)
    });
    wait_for("the orphan to be stopped", 30, || {
        (!alive(old_pid)).then_some(())
    });
    let (code, logs) = http(port, "GET", "/api/logs/web?index=-2");
    assert_eq!(code, 200, "{logs}");
    let first = logs["lines"][0]["text"].as_str().unwrap().to_owned();
    assert_eq!(first, format!("started {old_pid}"));
    assert_eq!(logs["instances"][0]["exit"], "unknown");
    // Events are durable within a group commit (100 ms).
    wait_for("the orphan event", 10, || {
        let (_, s) = http(port, "GET", "/api/status/web");
        let events = process(&s, "web")["recent_events"].to_string();
        events
            .contains(&format!("orphan process group {old_pid}"))
            .then_some(())
    });

    // A clean stop: SIGTERM stops every group (the SIGTERM-ignoring one by SIGKILL) and
    // exits 0.
    signal(daemon.id(), nix::sys::signal::Signal::SIGTERM);
    let status = wait_for("the daemon to exit", 30, || daemon.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
    assert!(!alive(new_pid));
}

#[test]
fn a_second_daemon_on_the_same_data_directory_names_the_first() {
    let project = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut first = serve(project.path(), data.path());
    let port = port_of(data.path(), first.id());
    let second = serve(project.path(), data.path())
        .wait_with_output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&format!("pid {}", first.id())) && err.contains(&format!("port {port}")),
        "{err}"
    );
    signal(first.id(), nix::sys::signal::Signal::SIGTERM);
    let status = wait_for("the daemon to exit", 30, || first.try_wait().unwrap());
    assert!(status.success());
}

#[test]
fn a_bad_config_fails_at_start_with_its_location() {
    let project = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    write_config(
        project.path(),
        "mcp_port = 9000\n[process.web]\ncomand = [\"npm\"]\n",
    );
    let out = serve(project.path(), data.path())
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".mcp-run:3:1"), "{err}");
    assert!(err.contains("comand"), "{err}");
}

#[test]
fn runtime_processes_start_once_and_unknown_names_say_what_exists() {
    let project = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut daemon = serve(project.path(), data.path());
    let port = port_of(data.path(), daemon.id());
    let start = |port| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = r#"{"command":["sh","-c","echo up; sleep 300"]}"#;
        write!(
            s,
            "POST /api/start HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let body = resp.split_once("\r\n\r\n").unwrap().1.to_owned();
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let a = start(port);
    assert_eq!(a["name"], "sh-c-echo-up-sleep-300", "{a}");
    assert_eq!(a["already_running"], false);
    let b = start(port);
    assert_eq!(b["already_running"], true, "{b}");
    assert_eq!(a["status"]["pid"], b["status"]["pid"]);
    let (code, e) = http(port, "GET", "/api/logs/nope");
    assert_eq!(code, 404);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("known: sh-c-echo-up-sleep-300"),
        "{e}"
    );
    let (code, e) = http(port, "GET", "/api/logs/sh-c-echo-up-sleep-300?pattern=(");
    assert_eq!(code, 400, "{e}");
    signal(daemon.id(), nix::sys::signal::Signal::SIGTERM);
    let status = wait_for("the daemon to exit", 30, || daemon.try_wait().unwrap());
    assert!(status.success());
    assert!(!alive(a["status"]["pid"].as_u64().unwrap() as u32));
}

fn write_app(dir: &Path, body: &str) {
    std::fs::write(
        dir.join("src/main.rs"),
        format!(
            "fn main() {{ {body} std::thread::sleep(std::time::Duration::from_secs(300)); }}\n"
        ),
    )
    .unwrap();
}

#[test]
fn a_rust_process_is_built_then_swapped_and_a_failed_build_keeps_the_old_one() {
    let project = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = project.path();
    std::fs::create_dir(p.join("src")).unwrap();
    std::fs::write(
        p.join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    write_app(p, r#"println!("version one");"#);
    write_config(p, "[process.app]\ntype = \"rust\"\nargs = [\"--flag\"]\n");
    let mut daemon = serve(p, data.path());
    let port = port_of(data.path(), daemon.id());
    let first = wait_for("the first build and start", 120, || {
        let (_, s) = http(port, "GET", "/api/status/app");
        process(&s, "app")["pid"].as_u64()
    });
    wait_for("its output", 30, || {
        let (_, l) = http(port, "GET", "/api/logs/app");
        (l["lines"][0]["text"] == "version one").then_some(())
    });

    // A new version: built while the old one runs, then swapped in.
    write_app(p, r#"println!("version two");"#);
    let (code, r) = http(port, "POST", "/api/restart/app");
    assert_eq!(code, 200, "{r}");
    let second = r["status"]["pid"].as_u64().unwrap();
    assert_ne!(first, second);
    wait_for("the new output", 30, || {
        let (_, l) = http(port, "GET", "/api/logs/app");
        (l["lines"][0]["text"] == "version two").then_some(())
    });
    let (_, b) = http(port, "GET", "/api/logs/app?build=true&pattern=Compiling");
    assert!(b["matched"].as_u64().unwrap() >= 1, "{b}");

    // A broken version: the build fails with the compiler's errors, the old one runs on.
    write_app(p, r#"let x: u32 = "not a number";"#);
    let (code, r) = http(port, "POST", "/api/restart/app");
    assert_eq!(code, 409, "{r}");
    let err = r["error"].as_str().unwrap();
    assert!(
        err.contains("build of app failed") && err.contains("mismatched types"),
        "{err}"
    );
    let (_, s) = http(port, "GET", "/api/status/app");
    assert_eq!(process(&s, "app")["pid"].as_u64(), Some(second));
    assert!(alive(second as u32));
    signal(daemon.id(), nix::sys::signal::Signal::SIGTERM);
    let status = wait_for("the daemon to exit", 30, || daemon.try_wait().unwrap());
    assert!(status.success());
    assert!(!alive(second as u32));
}
