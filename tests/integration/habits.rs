//! The habits people bring from other tools (issue: shorthand, many processes at once,
//! colour, times, help, Ctrl+C), through the real binary.

use std::process::Output;

use nix::sys::signal::Signal;

use crate::helpers::daemon::Dirs;
use crate::helpers::env::Env;
use crate::helpers::process::Spawned;
use crate::helpers::wait_for;

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_program_as_the_first_word_runs_it() {
    let env = Env::new();
    let out = env.bpm(&["python3", "-c", "print('hello from python')"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("hello from python"),
        "{}",
        stdout(&out)
    );
    let s = env.json(&["status"]);
    assert_eq!(s["processes"][0]["argv"][0], "python3", "{s}");
    assert_eq!(
        s["processes"][0]["state"]["exited"]["status"]["code"], 0,
        "{s}"
    );
}

#[test]
fn a_directory_as_the_first_word_serves_it() {
    let dirs = Dirs::new();
    dirs.write_config("[process.web]\ncommand = [\"sleep\", \"300\"]\n");
    let project = dirs.project.to_str().unwrap().to_owned();
    let data = dirs.data.to_str().unwrap().to_owned();
    let mut cmd = dirs.bpm(&[&project, "--port", "0", "--no-prefix", "--data-dir", &data]);
    let daemon = Spawned::new(&mut cmd, Signal::SIGTERM);
    let info = wait_for("the daemon to serve the directory", || {
        bpm::daemon::read_daemon_info(&dirs.data).filter(|i| i.pid == daemon.pid())
    });
    assert!(info.port > 0);
    let (code, st) = crate::helpers::api::Api::new(info.port).get("/api/status");
    assert_eq!(code, 200, "{st}");
    assert_eq!(
        crate::helpers::api::process_in(&st, "web")["name"],
        "web",
        "{st}"
    );
}

#[test]
fn a_typo_gets_a_suggestion_and_a_way_out() {
    let env = Env::new();
    let out = env.bpm(&["sttaus"]);
    assert_eq!(code(&out), Some(2));
    let err = stderr(&out);
    assert!(err.contains("unrecognized subcommand 'sttaus'"), "{err}");
    assert!(err.contains("'status'"), "the suggestion: {err}");
    assert!(err.contains("bpm run -- sttaus"), "the way out: {err}");
    assert_eq!(env.daemon_pid(), None, "nothing started");
}

#[test]
fn ls_and_ps_are_status_and_status_name_ends_with_the_last_lines() {
    let env = Env::new();
    env.ok(&["run", "--name", "counter", "--", "seq", "1", "30"]);
    for alias in ["ls", "ps"] {
        let s = env.json(&[alias]);
        assert_eq!(s["processes"][0]["name"], "counter", "{alias}: {s}");
    }
    let text = env.ok(&["status", "counter"]);
    let tail = text
        .split("last lines:")
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"));
    let lines: Vec<&str> = tail.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 10, "{text}");
    assert!(
        lines[0].ends_with(" 21") && lines[9].ends_with(" 30"),
        "{text}"
    );
    let s = env.json(&["status", "counter"]);
    assert_eq!(s["last_lines"].as_array().unwrap().len(), 10, "{s}");
    assert_eq!(s["last_lines"][9]["text"], "30", "{s}");
}

#[test]
fn start_stop_and_restart_all() {
    let mut env = Env::new();
    env.write_config(
        "[process.a]\ncommand = [\"sleep\", \"300\"]\nautostart = false\n[process.b]\ncommand = [\"sleep\", \"301\"]\nautostart = false\n",
    );
    env.serve();
    // Nothing runs: a stop of all acts on nothing, and says so.
    let out = env.bpm(&["stop", "--all"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("no process"), "{}", stderr(&out));

    env.ok(&["start", "--all"]);
    let pids: Vec<u64> = ["a", "b"]
        .iter()
        .map(|n| wait_for("it to run", || env.process(n)["pid"].as_u64()))
        .collect();
    env.ok(&["restart", "--all"]);
    for (n, old) in ["a", "b"].iter().zip(&pids) {
        let new = wait_for("it to run again", || env.process(n)["pid"].as_u64());
        assert_ne!(new, *old, "{n} restarted");
    }
    env.ok(&["stop", "--all"]);
    for n in ["a", "b"] {
        assert_eq!(env.process(n)["state"], "stopped");
    }
    let out = env.bpm(&["stop"]);
    assert_eq!(code(&out), Some(2), "a name or --all: {}", stderr(&out));
}

const COLOURED: &str =
    r"printf '\033[32m➜\033[39m  \033[1mLocal\033[22m:   http://localhost:\033[1m48996\033[22m/\n'";

#[test]
fn a_coloured_line_is_found_by_a_plain_pattern_and_pipes_get_no_escapes() {
    let env = Env::new();
    env.ok(&["run", "--name", "vite", "--", "sh", "-c", COLOURED]);
    let plain = "➜  Local:   http://localhost:48996/\n";
    // Piped (stdout is not a terminal): the text as it reads, found by what it reads.
    let found = env.ok(&["logs", "vite", "--grep", "Local:.*48996"]);
    assert_eq!(found, plain);
    let json = env.ok(&["logs", "vite", "--json"]);
    assert!(
        !json.contains('\u{1b}') && json.contains("Local:   http"),
        "{json}"
    );
    // Asked for: the process's own colours pass through.
    let kept = env.ok(&["logs", "vite", "--color", "always"]);
    assert!(kept.contains("\u{1b}[32m➜"), "{kept:?}");
    let never = env.ok(&["logs", "vite", "--color", "never"]);
    assert_eq!(never, plain);
    let out = env.bpm(&["logs", "vite", "--color", "sometimes"]);
    assert_eq!(code(&out), Some(2));
}

#[test]
fn times_in_journalctl_and_docker_forms() {
    let env = Env::new();
    env.ok(&["run", "--name", "t", "--", "echo", "now-line"]);
    let now = chrono::Utc::now().timestamp();
    let an_hour_ago = format!("@{}", now - 3600);
    let in_an_hour = format!("@{}", now + 3600);
    for since in [
        "1h30m",
        "-10m",
        "2 hours ago",
        "today",
        "yesterday",
        an_hour_ago.as_str(),
    ] {
        let out = env.ok(&["logs", "t", "--since", since]);
        assert_eq!(out, "now-line\n", "--since {since}");
    }
    for since in ["tomorrow", in_an_hour.as_str()] {
        let out = env.ok(&["logs", "t", "--since", since]);
        assert_eq!(out, "", "--since {since}");
    }
    let out = env.bpm(&["logs", "t", "--since", "10x"]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("1h30m") && stderr(&out).contains("@1796000000"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_names_the_environment_and_gives_examples() {
    let env = Env::new();
    for cmd in ["logs", "run", "status", "stop", "serve"] {
        let help = env.ok(&[cmd, "--help"]);
        assert!(
            help.contains("Environment:") && help.contains("BPM_HOME"),
            "{cmd}: {help}"
        );
        assert!(
            help.contains("Examples:") && help.contains("bpm "),
            "{cmd}: {help}"
        );
    }
    let top = env.ok(&["--help"]);
    assert!(
        top.contains("bpm npm run dev") && top.contains("BPM_TOKEN"),
        "{top}"
    );
}

#[test]
fn the_daemon_log_has_no_escape_codes_and_rust_log_is_read() {
    let env = Env::new();
    let out = process_output(
        env.cmd(&["run", "--", "echo", "hi"])
            .env_remove("BPM_LOG")
            .env("RUST_LOG", "info"),
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let log = std::fs::read_to_string(env.dirs.data.join("daemon.log")).unwrap();
    assert!(log.contains("INFO"), "RUST_LOG=info was read: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "no escape codes in daemon.log: {log:?}"
    );
}

fn process_output(cmd: &mut std::process::Command) -> Output {
    crate::helpers::process::output(cmd)
}

#[test]
fn color_true_tells_the_process_to_colour_its_pipe() {
    let mut env = Env::new();
    env.write_config(
        "[process.c]\ncommand = [\"sh\", \"-c\", \"echo force=$FORCE_COLOR clicolor=$CLICOLOR_FORCE; exec sleep 300\"]\ncolor = true\n",
    );
    env.serve();
    // Until it has started, `bpm logs c` fails (no run yet): asked again.
    wait_for("the variables in its output", || {
        let out = env.bpm(&["logs", "c"]);
        out.status.success() && out.stdout == b"force=1 clicolor=1\n"
    });
}

#[test]
fn logs_of_several_processes_interleave_by_time_with_prefixes() {
    let env = Env::new();
    env.ok(&[
        "run",
        "--name",
        "one",
        "--",
        "sh",
        "-c",
        "echo one-a; sleep 0.3; echo one-b",
    ]);
    env.ok(&["run", "--name", "two", "--", "sh", "-c", "echo two-a"]);
    let out = env.ok(&["logs", "one", "two"]);
    // `two` ran after `one` had finished.
    assert_eq!(out, "[one] one-a\n[one] one-b\n[two] two-a\n");
    let all = env.ok(&["logs", "--all", "-n", "2"]);
    assert_eq!(all, "[one] one-b\n[two] two-a\n");
    let json = env.ok(&["logs", "one", "two", "--json", "--grep", "-a$"]);
    let procs: Vec<String> = json
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["process"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(procs, ["one", "two"], "{json}");
    let out = env.bpm(&["logs", "one", "nosuch"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
}

#[test]
fn logs_follow_of_several_processes_prints_each_as_it_comes() {
    let env = Env::new();
    for name in ["left", "right"] {
        let script = format!("echo {name}-up; exec sleep 300");
        env.ok(&["run", "-d", "--name", name, "--", "sh", "-c", &script]);
    }
    let follow = env.spawn(&["logs", "left", "right", "-f"]);
    follow.wait_out("both backlogs", "[right] right-up");
    follow.wait_out("both backlogs", "[left] left-up");
    env.ok(&["stop", "left"]);
    follow.wait_err("left's end", "left exited");
}
