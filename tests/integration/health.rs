//! Health after start, through the real binary: a ready server keeps being checked, a
//! SIGSTOPped `python3 -m http.server` becomes `unhealthy` with the evidence, is healthy
//! again once continued, and `restart_on_unhealthy` restarts it.

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::helpers::daemon::{Dirs, Served};
use crate::helpers::env::Env;
use crate::helpers::process::{self, KillOnDrop, alive, wait_gone};
use crate::helpers::{wait_for, wait_for_within};

/// A port nothing listens on now (bound on 127.0.0.1 port 0, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A `.mcp-run` process table for `python3 -m http.server PORT` on 127.0.0.1, checked by
/// `ready` every 0.2 s.
fn http_server(name: &str, port: u16, ready: &str, extra: &str) -> String {
    format!(
        "[process.{name}]\n\
         command = [\"python3\", \"-m\", \"http.server\", \"{port}\", \"--bind\", \"127.0.0.1\"]\n\
         ready = {ready}\n\
         health_interval_seconds = 0.2\n\
         {extra}\n"
    )
}

fn state_word(p: &Value) -> String {
    match &p["state"] {
        Value::String(s) => s.clone(),
        Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
        other => other.to_string(),
    }
}

/// The pid of `name` once its state is `ready`.
#[track_caller]
fn ready_pid(env: &Env, name: &str) -> u32 {
    wait_for_within(
        &format!("{name} to be ready"),
        std::time::Duration::from_secs(60),
        || {
            let p = env.process(name);
            (state_word(&p) == "ready").then(|| p["pid"].as_u64().unwrap() as u32)
        },
    )
}

#[test]
fn a_stopped_server_is_unhealthy_with_the_evidence_and_healthy_again_once_continued() {
    let mut env = Env::new();
    let port = free_port();
    env.write_config(&http_server(
        "web",
        port,
        &format!("{{ tcp = {port} }}"),
        "",
    ));
    env.serve();
    let pid = ready_pid(&env, "web");
    let _guard = KillOnDrop::process(pid);

    // Its kernel still accepts TCP connections: the check must not stay `ready`.
    process::signal(pid, Signal::SIGSTOP);
    let unhealthy = wait_for("web to be unhealthy", || {
        let p = env.process("web");
        (state_word(&p) == "unhealthy").then_some(p)
    });
    let error = unhealthy["state"]["unhealthy"]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("pid {pid}")) && error.contains("stopped"),
        "{unhealthy}"
    );
    assert!(
        unhealthy["state"]["unhealthy"]["since_unix_ms"]
            .as_i64()
            .is_some_and(|t| t > 0),
        "{unhealthy}"
    );
    assert_eq!(
        unhealthy["pid"].as_u64(),
        Some(pid as u64),
        "still the same run"
    );
    assert_eq!(unhealthy["ready"], false, "{unhealthy}");
    // The table says so, with the evidence.
    let table = env.ok(&["status"]);
    assert!(table.contains("unhealthy"), "{table}");
    assert!(table.contains("is stopped"), "{table}");

    // Continued: healthy again, the same run, and the events tell the story.
    process::signal(pid, Signal::SIGCONT);
    wait_for("web to be ready again", || {
        state_word(&env.process("web")) == "ready"
    });
    let p = env.process("web");
    assert_eq!(p["pid"].as_u64(), Some(pid as u64));
    assert_eq!(p["restarts"], 0, "{p}");
    // Events are durable within a group commit.
    wait_for("the health events", || {
        let events = env.process("web")["recent_events"].to_string();
        events.contains("unhealthy: ") && events.contains("healthy again after")
    });
    env.ok(&["stop", "web"]);
    assert!(!alive(pid));
}

#[test]
fn restart_on_unhealthy_restarts_a_stopped_server() {
    let mut env = Env::new();
    let port = free_port();
    env.write_config(&http_server(
        "web",
        port,
        &format!("{{ http = \"http://127.0.0.1:{port}/\" }}"),
        "restart_on_unhealthy = true\nstop_timeout_seconds = 60",
    ));
    env.serve();
    let first = ready_pid(&env, "web");
    let _guard = KillOnDrop::process(first);
    process::signal(first, Signal::SIGSTOP);
    // Restarted after three failed checks: a new run, ready again.
    let second = wait_for("a new run of web", || {
        let p = env.process("web");
        let pid = p["pid"].as_u64()? as u32;
        (pid != first && state_word(&p) == "ready").then_some(pid)
    });
    let _guard2 = KillOnDrop::process(second);
    // The stopped run was continued, so its SIGTERM worked at once, not after its grace
    // period of 60 s (longer than the test waits).
    wait_gone("the stopped run to be gone", first);
    let p = env.process("web");
    assert_eq!(p["restarts"], 1, "{p}");
    wait_for("the restart's event", || {
        env.process("web")["recent_events"]
            .to_string()
            .contains("restarting: unhealthy after 3 failed health checks")
    });
    let out = env.ok(&["logs", "web", "--instance", "-2", "--tail", "1"]);
    assert!(!out.is_empty());
    env.ok(&["stop", "web"]);
}

#[test]
fn health_settings_without_a_repeatable_check_are_refused_with_their_location() {
    let dirs = Dirs::new();
    dirs.write_config(
        "[process.web]\ncommand = [\"sleep\", \"30\"]\nready = { log = \"up\" }\nhealth_interval_seconds = 5\n",
    );
    let (status, err) = Served::start(&dirs).wait_failure();
    assert_eq!(status.code(), Some(1));
    assert!(err.contains(".mcp-run:4:"), "{err}");
    assert!(err.contains("log readiness check"), "{err}");
}
