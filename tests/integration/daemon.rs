//! The real `bpm serve` binary, real child processes, the real store, through the
//! daemon's JSON API.

use serde_json::json;

use crate::helpers::daemon::{Dirs, Served, flushed};
use crate::helpers::process::{KillOnDrop, alive, wait_gone};
use crate::helpers::{wait_for, wait_for_within};

/// A process that forks a grandchild (sleep) in its group and ignores SIGTERM.
const STUBBORN_WEB: &str = r#"
[process.web]
command = ["sh", "-c", "trap '' TERM; echo started $$; sleep 300 & while :; do sleep 0.05; done"]
stop_timeout_seconds = 0.5
"#;

#[test]
fn sigkill_of_the_daemon_then_restart_stops_the_orphan_and_keeps_the_previous_run() {
    let dirs = Dirs::new();
    dirs.write_config(STUBBORN_WEB);
    let mut daemon = Served::start(&dirs);
    let api = daemon.api();
    let old_pid = wait_for("web to run", || {
        api.process("web")["pid"].as_u64().map(|p| p as u32)
    });
    // If the test fails while no daemon runs, nobody else would stop the orphan group.
    let _orphan = KillOnDrop::group(old_pid);
    wait_for("the first line", || {
        let (_, l) = api.get("/api/logs/web");
        l["lines"].as_array().is_some_and(|a| !a.is_empty())
    });
    // Its first line is durable before we kill the daemon.
    flushed(&api);
    daemon.kill();
    assert!(alive(old_pid), "the orphan outlives the killed daemon");

    let mut daemon = Served::start(&dirs);
    let api = daemon.api();
    let new_pid = wait_for("web to run again", || {
        let pid = api.process("web")["pid"].as_u64()? as u32;
        (pid != old_pid).then_some(pid)
    });
    wait_gone("the orphan to be stopped", old_pid);
    let (code, logs) = api.get("/api/logs/web?index=-2");
    assert_eq!(code, 200, "{logs}");
    let first = logs["lines"][0]["text"].as_str().unwrap().to_owned();
    assert_eq!(first, format!("started {old_pid}"));
    assert_eq!(logs["instances"][0]["exit"], "unknown");
    // Events are durable within a group commit.
    wait_for("the orphan event", || {
        let (_, s) = api.get("/api/status/web");
        let events = crate::helpers::api::process_in(&s, "web")["recent_events"].to_string();
        events.contains(&format!("orphan process group {old_pid}"))
    });

    // A clean stop: SIGTERM stops every group (the SIGTERM-ignoring one by SIGKILL) and
    // exits 0.
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!alive(new_pid));
}

#[test]
fn a_second_daemon_on_the_same_data_directory_names_the_first() {
    let dirs = Dirs::new();
    let mut first = Served::start(&dirs);
    let port = first.wait_listening();
    let (status, err) = Served::start(&dirs).wait_failure();
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains(&format!("pid {}", first.pid())) && err.contains(&format!("port {port}")),
        "{err}"
    );
    let status = first.terminate();
    assert!(status.success());
}

#[test]
fn a_bad_config_fails_at_start_with_its_location() {
    let dirs = Dirs::new();
    dirs.write_config("mcp_port = 9000\n[process.web]\ncomand = [\"npm\"]\n");
    let (status, err) = Served::start(&dirs).wait_failure();
    assert_eq!(status.code(), Some(1));
    assert!(err.contains(".mcp-run:3:1"), "{err}");
    assert!(err.contains("comand"), "{err}");
}

#[test]
fn runtime_processes_start_once_and_unknown_names_say_what_exists() {
    let dirs = Dirs::new();
    let mut daemon = Served::start(&dirs);
    let api = daemon.api();
    let start = || {
        let (code, r) = api.post(
            "/api/start",
            Some(&json!({"command": ["sh", "-c", "echo up; sleep 300"]})),
        );
        assert_eq!(code, 200, "{r}");
        r
    };
    let a = start();
    assert_eq!(a["name"], "echo-up-sleep-300", "{a}");
    assert_eq!(a["already_running"], false);
    let b = start();
    assert_eq!(b["already_running"], true, "{b}");
    assert_eq!(a["status"]["pid"], b["status"]["pid"]);
    let (code, e) = api.get("/api/logs/nope");
    assert_eq!(code, 404);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("known: echo-up-sleep-300"),
        "{e}"
    );
    let (code, e) = api.get("/api/logs/echo-up-sleep-300?pattern=(");
    assert_eq!(code, 400, "{e}");
    let status = daemon.terminate();
    assert!(status.success());
    assert!(!alive(a["status"]["pid"].as_u64().unwrap() as u32));
}

/// A Cargo project `app` whose `main` runs `body`, then sleeps.
fn write_app(dirs: &Dirs, body: &str) {
    std::fs::write(
        dirs.project.join("src/main.rs"),
        format!(
            "fn main() {{ {body} std::thread::sleep(std::time::Duration::from_secs(300)); }}\n"
        ),
    )
    .unwrap();
}

/// In dev mode a crashed `type = "rust"` process is rebuilt with cargo before its
/// restart, so the fix just made runs (the predecessor's behaviour).
#[test]
fn a_crashed_rust_process_is_rebuilt_before_it_restarts_in_dev_mode() {
    let dirs = Dirs::new();
    let p = &dirs.project;
    std::fs::create_dir(p.join("src")).unwrap();
    std::fs::write(
        p.join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    let crashing = |version: &str| {
        format!(
            r#"println!("{version}"); std::thread::sleep(std::time::Duration::from_millis(300)); std::process::exit(3);"#
        )
    };
    write_app(&dirs, &crashing("version one"));
    dirs.write_config(
        "dev_crash_wait_seconds = 0.2\n[process.app]\ntype = \"rust\"\nrestart = \"on-failure\"\n",
    );
    let daemon = Served::start(&dirs);
    let api = daemon.api();
    let (code, r) = api.post("/api/mode", Some(&serde_json::json!({"mode": "dev"})));
    assert_eq!(code, 200, "{r}");
    let last_line = || api.get("/api/logs/app?tail=1").1["lines"][0]["text"].clone();
    // A cold build of a small crate: longer than the usual deadline on a loaded machine.
    wait_for_within(
        "the first build and run",
        std::time::Duration::from_secs(120),
        || (last_line() == "version one").then_some(()),
    );
    // The fix: the next crash restart builds it, and the new version runs.
    write_app(&dirs, &crashing("version two"));
    wait_for_within(
        "a run of the rebuilt version",
        std::time::Duration::from_secs(120),
        || (last_line() == "version two").then_some(()),
    );
    let status = api.get("/api/status/app").1;
    let app = crate::helpers::api::process_in(&status, "app");
    assert!(app["build_instances"].as_u64().unwrap() >= 2, "{app}");
}

#[test]
fn a_rust_process_is_built_then_swapped_and_a_failed_build_keeps_the_old_one() {
    let dirs = Dirs::new();
    let p = &dirs.project;
    std::fs::create_dir(p.join("src")).unwrap();
    std::fs::write(
        p.join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    write_app(&dirs, r#"println!("version one");"#);
    dirs.write_config("[process.app]\ntype = \"rust\"\nargs = [\"--flag\"]\n");
    let mut daemon = Served::start(&dirs);
    let api = daemon.api();
    let app = || crate::helpers::api::process_in(&api.get("/api/status/app").1, "app");
    // A cold build of a small crate: longer than the usual deadline on a loaded machine.
    let first = wait_for_within(
        "the first build and start",
        std::time::Duration::from_secs(120),
        || app()["pid"].as_u64(),
    );
    let first_line = || api.get("/api/logs/app").1["lines"][0]["text"].clone();
    wait_for("its output", || first_line() == "version one");

    // A new version: built while the old one runs, then swapped in.
    write_app(&dirs, r#"println!("version two");"#);
    let (code, r) = api.post("/api/restart/app", None);
    assert_eq!(code, 200, "{r}");
    let second = r["status"]["pid"].as_u64().unwrap();
    assert_ne!(first, second);
    wait_for("the new output", || first_line() == "version two");
    let (_, b) = api.get("/api/logs/app?build=true&pattern=Compiling");
    assert!(b["matched"].as_u64().unwrap() >= 1, "{b}");

    // A broken version: the build fails with the compiler's errors, the old one runs on.
    write_app(&dirs, r#"let x: u32 = "not a number";"#);
    let (code, r) = api.post("/api/restart/app", None);
    assert_eq!(code, 409, "{r}");
    let err = r["error"].as_str().unwrap();
    assert!(
        err.contains("build of app failed") && err.contains("mismatched types"),
        "{err}"
    );
    assert_eq!(app()["pid"].as_u64(), Some(second));
    assert!(alive(second as u32));
    let status = daemon.terminate();
    assert!(status.success());
    assert!(!alive(second as u32));
}
