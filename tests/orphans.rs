//! No orphan escapes: what a supervised process starts is stopped with it, also when it
//! left the process group (`setsid`) and when the daemon was SIGKILLed while the group's
//! leader died on its own. The real `bpm serve` binary, real processes.
//!
//! Each scenario runs twice where the machine allows cgroups (root with a writable
//! cgroup v2): with a cgroup per process, and with `BPM_NO_CGROUP=1`, the fallback most
//! users get (process group, environment marker, parent chain).
//!
//! This test process makes itself a child subreaper and reaps what it inherits (see
//! [`reap_orphans`]): once a daemon is SIGKILLed, its processes are re-parented to the
//! nearest subreaper, and on a machine whose init does not reap, an orphan that exits
//! would otherwise stay a zombie for good. Liveness checks count a zombie as gone.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

const BPM: &str = env!("CARGO_BIN_EXE_bpm");

/// Make this test process the subreaper of everything the tests start, and reap the
/// zombies it inherits (never the daemons, which the tests wait for themselves: the
/// library's reaper leaves alone children in this process's own group and session, which
/// is where `Command` starts them).
fn reap_orphans() {
    static START: Once = Once::new();
    START.call_once(|| {
        bpm::supervisor::reaper::become_subreaper().expect("PR_SET_CHILD_SUBREAPER");
        std::thread::spawn(|| {
            loop {
                bpm::supervisor::reaper::reap_inherited();
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    });
}

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
struct Daemon(Child);

impl Daemon {
    fn start(project: &Path, data: &Path, cgroups: bool) -> Daemon {
        let mut cmd = Command::new(BPM);
        cmd.args(["serve", "--port", "0", "--no-prefix", "--data-dir"])
            .arg(data)
            .arg(project)
            .env("BPM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !cgroups {
            cmd.env(bpm::supervisor::cgroup::DISABLE_VAR, "1");
        }
        Daemon(cmd.spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// The port, once this daemon has bound its listener.
    fn port(&self, data: &Path) -> u16 {
        wait_for("the daemon to listen", 30, || {
            let info = bpm::daemon::read_daemon_info(data)?;
            (info.pid == self.pid()).then_some(info.port)
        })
    }

    fn sigkill(mut self) {
        signal(self.pid(), Signal::SIGKILL);
        self.0.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            signal(self.pid(), Signal::SIGTERM);
            let _ = self.0.wait();
        }
    }
}

/// A process the test started (through a daemon): SIGKILLed when dropped if it still is
/// the same process, so a failing test leaves nothing behind.
struct Started {
    pid: u32,
    start_time: u64,
}

impl Started {
    fn new(pid: u32) -> Started {
        let start_time = stat(pid).expect("it runs").2;
        Started { pid, start_time }
    }

    /// Running, and still the process we found (a zombie is gone).
    fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|(state, _, start)| state != 'Z' && start == self.start_time)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if self.alive() {
            signal(self.pid, Signal::SIGKILL);
        }
    }
}

/// State, parent pid and start time from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    Some((
        rest[0].chars().next()?,
        rest[1].parse().ok()?,
        rest[19].parse().ok()?,
    ))
}

fn signal(pid: u32, sig: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

fn http(port: u16, method: &str, path: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code: u16 = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn web(status: &Value) -> &Value {
    status["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "web")
        .unwrap()
}

/// The numbers on web's first output line matching `^word `, e.g. "listening 4242 80".
fn numbers_in_line(port: u16, word: &str) -> Vec<u32> {
    wait_for(&format!("web to print `{word}`"), 30, || {
        let (_, l) = http(port, "GET", &format!("/api/logs/web?pattern=^{word}%20"));
        let text = l["lines"].as_array()?.first()?["text"].as_str()?.to_owned();
        Some(
            text.split_whitespace()
                .skip(1)
                .map(|n| n.parse().unwrap())
                .collect(),
        )
    })
}

fn cgroup_variants() -> Vec<bool> {
    match bpm::supervisor::cgroup::enable() {
        Ok(_) => vec![true, false],
        Err(_) => vec![false],
    }
}

/// The `npm run dev` shape: a wrapper (the group leader) that dies of SIGPIPE once the
/// daemon's pipes break, and a quiet server in its group that ignores SIGPIPE and keeps
/// its port. After the daemon is SIGKILLed, the leader dies and is reaped; the next
/// daemon finds the leaderless group by its id (bounded by the recorded start time), or
/// by its cgroup, stops the server, frees the port and records it.
#[test]
fn a_killed_daemons_leaderless_group_is_stopped_by_the_next_daemon() {
    reap_orphans();
    for cgroups in cgroup_variants() {
        leaderless_group(cgroups);
    }
}

fn leaderless_group(cgroups: bool) {
    let project = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = "import os, socket, time\n\
                  s = socket.socket()\n\
                  s.bind(('127.0.0.1', 0))\n\
                  s.listen()\n\
                  print('listening', os.getpid(), s.getsockname()[1], flush=True)\n\
                  time.sleep(300)\n";
    let config = |autostart: bool| {
        format!(
            "[process.web]\n\
             command = [\"sh\", \"-c\", \"python3 -c \\\"$0\\\" & while :; do echo tick; sleep 0.1; done\", {server:?}]\n\
             stop_timeout_seconds = 2\n\
             autostart = {autostart}\n"
        )
    };
    std::fs::write(project.path().join(".mcp-run"), config(true)).unwrap();
    let daemon = Daemon::start(project.path(), data.path(), cgroups);
    let port = daemon.port(data.path());
    let leader = wait_for("web to run", 30, || {
        let (_, s) = http(port, "GET", "/api/status");
        web(&s)["pid"].as_u64().map(|p| Started::new(p as u32))
    });
    let [pid, server_port] = numbers_in_line(port, "listening")[..] else {
        panic!("no pid and port");
    };
    let server = Started::new(pid);
    assert!(TcpStream::connect(("127.0.0.1", server_port as u16)).is_ok());

    daemon.sigkill();
    wait_for("the wrapper to die of SIGPIPE", 30, || {
        (!leader.alive()).then_some(())
    });
    assert!(server.alive(), "the quiet server outlives its wrapper");
    assert_eq!(
        stat(pid).unwrap().1,
        std::process::id(),
        "re-parented to this test, the nearest subreaper"
    );

    std::fs::write(project.path().join(".mcp-run"), config(false)).unwrap();
    let daemon = Daemon::start(project.path(), data.path(), cgroups);
    let port = daemon.port(data.path());
    wait_for("the server to be stopped", 30, || {
        (!server.alive()).then_some(())
    });
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", server_port as u16)).is_ok(),
        "its port is free again"
    );
    wait_for("the orphan event", 10, || {
        let (_, s) = http(port, "GET", "/api/status/web");
        let events = web(&s)["recent_events"].to_string();
        (events.contains(&format!("stopped orphan process group {}", leader.pid))
            && events.contains(&format!("pid {pid} (python")))
        .then_some(())
    });
}

/// A grandchild that calls `setsid` (and whose parent exits, so it is re-parented to the
/// daemon, the subreaper) is stopped with its process, at once: the stop signals it too
/// instead of waiting out the 5 s grace period for the pipe it holds. The daemon reaps
/// it: its pid disappears instead of lingering as a zombie.
#[test]
fn stop_reaches_a_setsid_grandchild_quickly() {
    reap_orphans();
    for cgroups in cgroup_variants() {
        setsid_grandchild(cgroups);
    }
}

fn setsid_grandchild(cgroups: bool) {
    let project = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // The escaped process keeps stdout (the pipe to the daemon) open.
    std::fs::write(
        project.path().join(".mcp-run"),
        r#"
[process.web]
command = ["sh", "-c", "sh -c 'setsid sh -c \"echo escaped \\$\\$; exec sleep 300\" &'; while :; do sleep 0.1; done"]
"#,
    )
    .unwrap();
    let daemon = Daemon::start(project.path(), data.path(), cgroups);
    let port = daemon.port(data.path());
    let [pid] = numbers_in_line(port, "escaped")[..] else {
        panic!("no pid");
    };
    let escaped = Started::new(pid);
    wait_for(
        "the escaped process to be re-parented to the daemon",
        30,
        || {
            let (_, ppid, _) = stat(pid)?;
            (ppid == daemon.pid()).then_some(())
        },
    );

    let started = Instant::now();
    let (code, answer) = http(port, "POST", "/api/stop/web");
    let took = started.elapsed();
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["state"], "stopped", "{answer}");
    assert!(answer["last_error"].is_null(), "nothing is left: {answer}");
    assert!(!escaped.alive(), "the setsid grandchild is stopped too");
    assert!(
        took < Duration::from_millis(2500),
        "the stop does not wait out the grace period: {took:?}"
    );
    wait_for("the daemon to reap it", 10, || {
        stat(pid).is_none().then_some(())
    });
}
