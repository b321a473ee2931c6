//! Several daemons on one machine: project daemons configured for the same HTTP port all
//! serve (each takes a free port when its own is taken, and says so), `bpm run` works in
//! each, and `bpm daemons` lists the running ones from the registry.

use std::path::Path;

use serde_json::Value;

use crate::helpers::api::Api;
use crate::helpers::daemon::{Dirs, Served};
use crate::helpers::process::{self, wait_gone};
use crate::helpers::{tempdir, wait_for};

/// `bpm daemons --json` with the registry in `runtime`.
fn daemons(dirs: &Dirs, runtime: &Path) -> Vec<Value> {
    let out = process::output(
        dirs.bpm(&["daemons", "--json"])
            .env("XDG_RUNTIME_DIR", runtime),
    );
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn pids(list: &[Value]) -> Vec<u64> {
    let mut p: Vec<u64> = list.iter().map(|d| d["pid"].as_u64().unwrap()).collect();
    p.sort_unstable();
    p
}

#[test]
fn two_projects_configured_for_one_taken_port_both_serve_and_are_listed() {
    // The port both projects ask for, held by someone else all along.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let runtime = tempdir();
    let rt = runtime.path().to_str().unwrap();
    let projects = [Dirs::new(), Dirs::new()];
    for dirs in &projects {
        dirs.write_config(&format!("mcp_port = {taken}\n"));
    }
    // No --port: the configured one, else a free one.
    let served: Vec<Served> = projects
        .iter()
        .map(|d| Served::start_args(d, &[("XDG_RUNTIME_DIR", rt)], &[]))
        .collect();
    let ports: Vec<u16> = served.iter().map(Served::wait_listening).collect();
    assert!(!ports.contains(&taken), "{ports:?}");
    assert_ne!(ports[0], ports[1]);
    for (daemon, port) in served.iter().zip(&ports) {
        wait_for("the warning naming both ports", || {
            let err = daemon.err();
            err.contains(&format!("port {taken} is taken"))
                && err.contains(&format!("listening on port {port} instead"))
        });
        // It serves HTTP on the port it recorded.
        let (code, _) = Api::new(*port).get("/api/status");
        assert_eq!(code, 200);
    }

    // `bpm run` works in both, each with its own daemon.
    for (i, dirs) in projects.iter().enumerate() {
        let word = format!("hello-from-{i}");
        let out = process::output(
            dirs.bpm(&["run", "--", "sh", "-c", &format!("echo {word}")])
                .env("XDG_RUNTIME_DIR", rt),
        );
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&word),
            "{out:?}"
        );
        // It ran under this project's daemon, not the other's.
        let status = Api::new(ports[i]).status().to_string();
        assert!(status.contains(&word), "{status}");
        assert!(
            !status.contains(&format!("hello-from-{}", 1 - i)),
            "{status}"
        );
    }

    // Both listed, with their data and project directories and ports.
    let list = daemons(&projects[0], runtime.path());
    let mut expected: Vec<u64> = served.iter().map(|s| u64::from(s.pid())).collect();
    expected.sort_unstable();
    assert_eq!(pids(&list), expected, "{list:?}");
    for (dirs, port) in projects.iter().zip(&ports) {
        let entry = list
            .iter()
            .find(|d| d["data_dir"] == dirs.data.to_str().unwrap())
            .unwrap_or_else(|| panic!("{} is not listed: {list:?}", dirs.data.display()));
        assert_eq!(entry["port"], *port);
        assert_eq!(entry["project_dir"], dirs.project.to_str().unwrap());
    }
    let text = process::output(projects[0].bpm(&["daemons"]).env("XDG_RUNTIME_DIR", rt));
    let text = String::from_utf8(text.stdout).unwrap();
    for (dirs, port) in projects.iter().zip(&ports) {
        assert!(
            text.lines()
                .any(|l| l.contains(&port.to_string()) && l.contains(dirs.data.to_str().unwrap())),
            "{text}"
        );
    }

    // A daemon that stops leaves the list; one that is killed (it cannot remove its
    // entry) is pruned.
    let [mut first, mut second] = <[Served; 2]>::try_from(served).ok().unwrap();
    assert!(first.terminate().success());
    assert_eq!(
        pids(&daemons(&projects[0], runtime.path())),
        [u64::from(second.pid())]
    );
    let killed = second.pid();
    second.kill();
    wait_gone("the killed daemon", killed);
    let entry = runtime.path().join("bpm").join(format!("{killed}.json"));
    assert!(entry.exists(), "a killed daemon leaves its entry");
    assert!(daemons(&projects[0], runtime.path()).is_empty());
    assert!(!entry.exists(), "listing pruned the dead entry");
    drop(holder);
}

#[test]
fn an_explicit_port_that_is_taken_stays_an_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port().to_string();
    let dirs = Dirs::new();
    let (status, err) = Served::start_args(&dirs, &[], &["--port", &taken]).wait_failure();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{taken}")) && err.contains("--port"),
        "{err}"
    );
}

#[test]
fn no_daemon_is_an_empty_list() {
    let dirs = Dirs::new();
    let out = process::output(&mut dirs.bpm(&["daemons"]));
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no bpm daemon runs"),
        "{out:?}"
    );
    assert!(daemons(&dirs, &dirs.runtime).is_empty());
}
