//! No orphan escapes: what a supervised process starts is stopped with it, also when it
//! left the process group (`setsid`) and when the daemon was SIGKILLed while the group's
//! leader died on its own. The real `bpm serve` binary, real processes.
//!
//! Each scenario runs twice where the machine allows cgroups (root with a writable
//! cgroup v2): with a cgroup per process, and with `BPM_NO_CGROUP=1`, the fallback most
//! users get (process group, environment marker, parent chain).
//!
//! The scenarios need a parent that reaps, as systemd is: once a daemon is SIGKILLed, its
//! processes are re-parented to the nearest subreaper, and on a machine whose init does
//! not reap, an orphan that exits would otherwise stay a zombie for good. Being a
//! subreaper is a property of the whole process, which the other tests of this binary
//! must not inherit, so [`in_a_reaping_process`] runs the scenarios in a child process
//! of this test binary that makes itself the subreaper and reaps.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::helpers::api::Api;
use crate::helpers::daemon::{Dirs, Served};
use crate::helpers::process::{KillOnDrop, alive};
use crate::helpers::wait_for;

/// Set in the child process that runs the scenarios.
const REAPING: &str = "BPM_TEST_REAPING_PROCESS";

/// Run the scenarios (ignored on their own) in a child of this test binary that is a
/// subreaper and reaps what it inherits.
#[test]
fn in_a_reaping_process() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "--test-threads=1",
            "orphans::a_killed_daemons_leaderless_group_is_stopped_by_the_next_daemon",
            "orphans::stop_reaches_a_setsid_grandchild_quickly",
        ])
        .env(REAPING, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 passed"), "both scenarios ran: {text}");
}

/// In the scenarios' process: become the subreaper of everything they start, and reap
/// the zombies it inherits (never the daemons, which the scenarios wait for: the
/// library's reaper leaves alone children in this process's own group and session).
fn reap_orphans() {
    assert!(
        std::env::var_os(REAPING).is_some(),
        "run through orphans::in_a_reaping_process"
    );
    static START: std::sync::Once = std::sync::Once::new();
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

fn daemon(dirs: &Dirs, cgroups: bool) -> Served {
    let env: &[(&str, &str)] = if cgroups {
        &[]
    } else {
        &[(bpm::supervisor::cgroup::DISABLE_VAR, "1")]
    };
    Served::start_with(dirs, env)
}

/// Parent pid from `/proc/<pid>/stat`.
fn parent(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The numbers on web's first output line matching `^word `, e.g. "listening 4242 80".
fn numbers_in_line(api: &Api, word: &str) -> Vec<u32> {
    wait_for(&format!("web to print `{word}`"), || {
        let (_, l) = api.get(&format!("/api/logs/web?pattern=^{word}%20"));
        let text = l["lines"].as_array()?.first()?["text"].as_str()?.to_owned();
        Some(
            text.split_whitespace()
                .skip(1)
                .map(|n| n.parse().unwrap())
                .collect::<Vec<u32>>(),
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
#[ignore = "run by orphans::in_a_reaping_process"]
fn a_killed_daemons_leaderless_group_is_stopped_by_the_next_daemon() {
    reap_orphans();
    for cgroups in cgroup_variants() {
        leaderless_group(cgroups);
    }
}

fn leaderless_group(cgroups: bool) {
    let dirs = Dirs::new();
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
    dirs.write_config(&config(true));
    let mut first = daemon(&dirs, cgroups);
    let api = first.api();
    let leader = wait_for("web to run", || {
        api.process("web")["pid"].as_u64().map(|p| p as u32)
    });
    let _leader_guard = KillOnDrop::process(leader);
    let [pid, server_port] = numbers_in_line(&api, "listening")[..] else {
        panic!("no pid and port");
    };
    let _server_guard = KillOnDrop::process(pid);
    assert!(TcpStream::connect(("127.0.0.1", server_port as u16)).is_ok());

    first.kill();
    wait_for("the wrapper to die of SIGPIPE", || !alive(leader));
    assert!(alive(pid), "the quiet server outlives its wrapper");
    assert_eq!(
        parent(pid),
        Some(std::process::id()),
        "re-parented to this process, the nearest subreaper"
    );

    dirs.write_config(&config(false));
    let second = daemon(&dirs, cgroups);
    let api = second.api();
    wait_for("the server to be stopped", || !alive(pid));
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", server_port as u16)).is_ok(),
        "its port is free again"
    );
    wait_for("the orphan event", || {
        let (_, s) = api.get("/api/status/web");
        let events = crate::helpers::api::process_in(&s, "web")["recent_events"].to_string();
        events.contains(&format!("stopped orphan process group {leader}"))
            && events.contains(&format!("pid {pid} (python"))
    });
}

/// A grandchild that calls `setsid` (and whose parent exits, so it is re-parented to the
/// daemon, the subreaper) is stopped with its process, at once: the stop signals it too
/// instead of waiting out the 5 s grace period for the pipe it holds. The daemon reaps
/// it: its pid disappears instead of lingering as a zombie.
#[test]
#[ignore = "run by orphans::in_a_reaping_process"]
fn stop_reaches_a_setsid_grandchild_quickly() {
    reap_orphans();
    for cgroups in cgroup_variants() {
        setsid_grandchild(cgroups);
    }
}

fn setsid_grandchild(cgroups: bool) {
    let dirs = Dirs::new();
    // The escaped process keeps stdout (the pipe to the daemon) open.
    dirs.write_config(
        r#"
[process.web]
command = ["sh", "-c", "sh -c 'setsid sh -c \"echo escaped \\$\\$; exec sleep 300\" &'; while :; do sleep 0.1; done"]
"#,
    );
    let d = daemon(&dirs, cgroups);
    let api = d.api();
    let [pid] = numbers_in_line(&api, "escaped")[..] else {
        panic!("no pid");
    };
    let _guard = KillOnDrop::process(pid);
    wait_for(
        "the escaped process to be re-parented to the daemon",
        || parent(pid) == Some(d.pid()),
    );

    let started = Instant::now();
    let (code, answer) = api.post("/api/stop/web", None);
    let took = started.elapsed();
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["state"], "stopped", "{answer}");
    assert!(answer["last_error"].is_null(), "nothing is left: {answer}");
    assert!(!alive(pid), "the setsid grandchild is stopped too");
    assert!(
        took < Duration::from_millis(2500),
        "the stop does not wait out the grace period: {took:?}"
    );
    wait_for("the daemon to reap it", || parent(pid).is_none());
}
