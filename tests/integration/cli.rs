//! The real `bpm` CLI against real daemons (autostarted or `bpm serve`), real child
//! processes and the real store. Every test stops the daemons it started (SIGTERM by
//! pid) when it ends, also when it panics.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Command, Output};
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::helpers::daemon::{BPM, DaemonOf, flushed};
use crate::helpers::env::Env;
use crate::helpers::process::{self, KillOnDrop, alive, signal, wait_gone};
use crate::helpers::wait_for;

/// An exit status from the JSON API, lowercased, in either shape it may take
/// (`{"Code":0}` or `"exit code 0"`).
fn exit_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_lowercase(),
        other => other.to_string().to_lowercase(),
    }
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const ARGV_PROBE: &str = "import sys, time; print(sys.argv[1:], flush=True); time.sleep(300)";

#[test]
fn run_starts_once_then_attaches_and_passes_argv_exactly() {
    let env = Env::new();
    let args = [
        "run", "--", "python3", "-c", ARGV_PROBE, "a b", "c\"d", "", "$HOME",
    ];
    let expected = r#"['a b', 'c"d', '', '$HOME']"#;
    let mut first = env.spawn(&args);
    first.wait_out("the argv line", expected);
    assert!(
        first.err().contains("bpm: started import-sys-time"),
        "{}",
        first.err()
    );

    // The same argv in the same directory: attach, with the backlog.
    let mut second = env.spawn(&args);
    second.wait_out("the backlog", expected);
    wait_for("the attach note", || {
        second.err().contains("attached to import-sys-time")
    });
    let status = env.json(&["status"]);
    let procs = status["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "{status}");
    let pid = procs[0]["pid"].as_u64().unwrap() as u32;

    // Without a terminal, Ctrl+C detaches: the process keeps running.
    for c in [&mut first, &mut second] {
        c.signal(Signal::SIGINT);
        let st = c.wait_exit();
        assert_eq!(st.code(), Some(0), "{}", c.err());
        assert!(c.err().contains("detached"), "{}", c.err());
    }
    assert!(alive(pid));
    let name = procs[0]["name"].as_str().unwrap();
    assert_eq!(env.process(name)["pid"], pid);

    // --replace: the running match is restarted instead of attached to.
    let restart_args = [&["run", "--replace"][..], &args[1..]].concat();
    let mut third = env.spawn(&restart_args);
    wait_for("the restart note", || {
        third.err().contains(&format!("restarted {name}"))
    });
    third.wait_out("the new instance's argv line", expected);
    let new_pid = env.process(name)["pid"].as_u64().unwrap() as u32;
    assert_ne!(new_pid, pid);
    assert!(!alive(pid));
    third.signal(Signal::SIGINT);
    assert_eq!(third.wait_exit().code(), Some(0));
}

#[test]
fn run_exits_with_the_process_exit_code_and_splits_the_streams() {
    let env = Env::new();
    let out = env.bpm(&["run", "--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(code(&out), Some(7), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(stderr(&out).contains("\nerr\n"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exited: exit code 7"),
        "{}",
        stderr(&out)
    );

    let out = env.bpm(&["run", "--name", "killed", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(code(&out), Some(128 + 9), "{}", stderr(&out));
    env.ok(&["stop", "killed"]);
}

#[test]
fn logs_follow_survives_a_restart() {
    let env = Env::new();
    env.write_config(
        "[process.web]\ncommand = [\"sh\", \"-c\", \"echo gen $$; exec sleep 300\"]\n",
    );
    env.ok(&["start", "web"]);
    let first = wait_for("web to run", || env.process("web")["pid"].as_u64());
    let mut follow = env.spawn(&["logs", "web", "--follow"]);
    follow.wait_out("the first instance's line", &format!("gen {first}"));
    env.ok(&["restart", "web"]);
    let second = env.process("web")["pid"].as_u64().unwrap();
    assert_ne!(first, second);
    follow.wait_out("the new instance's line", &format!("gen {second}"));
    assert!(follow.err().contains("web runs again"), "{}", follow.err());
    // The daemon's shutdown ends the follow.
    signal(env.daemon_pid().unwrap(), Signal::SIGTERM);
    let st = follow.wait_exit();
    assert!(st.success(), "{}", follow.err());
}

#[test]
fn previous_instance_after_sigkill_and_offline_reads() {
    let mut env = Env::new();
    env.write_config(
        "[process.api]\ncommand = [\"sh\", \"-c\", \"echo boot $$; echo 'thread main panicked at src/main.rs' >&2; exec sleep 300\"]\n",
    );
    let daemon = env.serve();
    let old = wait_for("api to run", || env.process("api")["pid"].as_u64()) as u32;
    // If the test fails while no daemon runs, nobody else would stop the orphan.
    let _orphan = KillOnDrop::group(old);
    wait_for("its lines", || {
        env.ok(&["logs", "api", "--grep", "panic"])
            .contains("panicked")
    });
    // The lines are durable before the kill.
    flushed(&env.served.last().unwrap().api());
    env.served.last_mut().unwrap().kill();
    assert!(!alive(daemon));

    // No daemon: reads go to the store, read-only, and say so. Nothing is started.
    let out = env.bpm(&["logs", "api", "--grep", "panic"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("panicked at src/main.rs"));
    assert!(
        stderr(&out).contains("no daemon is running"),
        "{}",
        stderr(&out)
    );
    let status = env.json(&["status"]);
    assert_eq!(status["processes"][0]["name"], "api");
    let exit = exit_str(&status["processes"][0]["state"]["exited"]["status"]);
    assert!(exit.contains("unknown"), "{status}");
    assert!(
        env.daemon_pid().is_none_or(|p| !alive(p)),
        "a read started a daemon"
    );

    // The next daemon stops the orphan and starts api again; the crashed run is -2.
    env.serve();
    let new = wait_for("api to run again", || {
        let p = env.process("api")["pid"].as_u64()? as u32;
        (p != old).then_some(p)
    });
    wait_gone("the orphan to be stopped", old);
    let out = env.ok(&["logs", "api", "--instance", "-2"]);
    assert!(out.contains(&format!("boot {old}")), "{out}");
    let out = env.ok(&[
        "logs",
        "api",
        "--instance",
        "-2",
        "--grep",
        "panic",
        "--timestamps",
    ]);
    assert!(out.contains("Z thread main panicked"), "{out}");
    let detail = env.ok(&["status", "api"]);
    assert!(
        detail.contains("unknown (the daemon stopped uncleanly)"),
        "{detail}"
    );
    assert!(alive(new));
}

#[test]
fn autostart_from_a_subdirectory_and_no_autostart() {
    let env = Env::new();
    env.write_config("");
    let sub = env.dirs.project.join("sub/deeper");
    std::fs::create_dir_all(&sub).unwrap();
    let data = env.dirs.project.join(".bpm");
    let cmd = |args: &[&str]| {
        let mut c = env.cmd(args);
        c.current_dir(&sub).env_remove("BPM_HOME");
        process::output(&mut c)
    };
    let out = cmd(&["run", "--no-autostart", "--", "true"]);
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("no bpm daemon runs"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--no-autostart"), "{}", stderr(&out));

    // The project's daemon is found (and started) from a subdirectory.
    let stop_it = DaemonOf(data.clone());
    let out = cmd(&["mode"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "release\n");
    let info = bpm::daemon::read_daemon_info(&data).expect("a daemon.json");
    assert_eq!(info.project_dir, env.dirs.project.as_path());
    let mode = std::fs::metadata(data.join("bpm.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(data.join("daemon.log").exists());
    let out = cmd(&["mode", "dev"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dev\n");
    let out = cmd(&["mode"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dev\n");
    assert_eq!(
        bpm::daemon::read_daemon_info(&data).unwrap().pid,
        info.pid,
        "one daemon"
    );
    drop(stop_it);
    assert!(!alive(info.pid));
    assert!(
        !data.join("bpm.sock").exists(),
        "the socket is removed at shutdown"
    );
}

/// `bpm run` on a pseudo-terminal: Ctrl+C asks, one keypress answers.
struct Pty {
    child: Child,
    master: std::fs::File,
    seen: Arc<Mutex<String>>,
}

impl Pty {
    fn run(env: &Env, args: &[&str]) -> Pty {
        let pty = nix::pty::openpty(None, None).unwrap();
        // Close-on-exec, so that the children other tests spawn meanwhile do not inherit
        // them (which would keep the terminal open after bpm is gone).
        for fd in [&pty.master, &pty.slave] {
            use nix::fcntl::{FcntlArg, FdFlag, fcntl};
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
        }
        let slave = std::fs::File::from(pty.slave);
        // setsid -c: a new session whose controlling terminal is the pty, with bpm as
        // its foreground process group, so ^C becomes a SIGINT to bpm.
        let mut cmd = Command::new("setsid");
        cmd.arg("-c").arg(BPM).args(args);
        let bpm_cmd = env.cmd(&[]);
        for (k, v) in bpm_cmd.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.current_dir(env.dirs.project.as_path())
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        let child = process::spawn(&mut cmd);
        drop(cmd); // our copies of the slave: the master reads EIO once bpm is gone
        let master = std::fs::File::from(pty.master);
        let seen = Arc::new(Mutex::new(String::new()));
        let (mut r, s) = (master.try_clone().unwrap(), seen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Pty {
            child,
            master,
            seen,
        }
    }
    fn wait_seen(&self, what: &str, needle: &str) {
        wait_for(what, || self.seen.lock().unwrap().contains(needle));
    }
    fn press(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[test]
fn ctrl_c_on_a_terminal_asks_whether_to_stop() {
    let env = Env::new();
    let args = ["run", "--", "sh", "-c", "echo up; exec sleep 300"];
    let mut pty = Pty::run(&env, &args);
    // The output is printed once bpm handles Ctrl+C.
    pty.wait_seen("the output", "up\r\n");
    let pid = env.process("echo-up-exec-sleep-300")["pid"]
        .as_u64()
        .unwrap() as u32;
    pty.press(b"\x03");
    pty.wait_seen(
        "the question",
        &format!(
            "Stop `sh -c 'echo up; exec sleep 300'` (echo-up-exec-sleep-300, pid {pid})? [y/N]"
        ),
    );
    pty.press(b"n");
    let st = wait_for("bpm to detach", || pty.child.try_wait().unwrap());
    assert_eq!(st.code(), Some(0));
    pty.wait_seen("the detach note", "detached");
    assert!(alive(pid));

    // Attach again; this time stop it.
    let mut pty = Pty::run(&env, &args);
    pty.wait_seen("the attach note", "attached to");
    // bpm prints the note before it handles Ctrl+C, the backlog after: a ^C between the
    // two would end it unasked.
    pty.wait_seen("the backlog", "up\r\n");
    pty.press(b"\x03");
    pty.wait_seen("the question", "? [y/N]");
    pty.press(b"y");
    let st = wait_for("bpm to stop it", || pty.child.try_wait().unwrap());
    assert_eq!(st.code(), Some(130));
    assert!(!alive(pid), "stopped and gone before bpm returned");
    assert_eq!(env.process("echo-up-exec-sleep-300")["state"], "stopped");
}

#[test]
fn a_second_ctrl_c_at_the_question_stops_the_process() {
    let env = Env::new();
    let mut pty = Pty::run(&env, &["sh", "-c", "echo up; exec sleep 300"]);
    pty.wait_seen("the output", "up\r\n");
    let pid = env.process("echo-up-exec-sleep-300")["pid"]
        .as_u64()
        .unwrap() as u32;
    pty.press(b"\x03");
    pty.wait_seen("the question", "? [y/N]");
    pty.press(b"\x03");
    let st = wait_for("bpm to stop it", || pty.child.try_wait().unwrap());
    assert_eq!(st.code(), Some(130));
    assert!(!alive(pid), "stopped and gone before bpm returned");
    assert_eq!(env.process("echo-up-exec-sleep-300")["state"], "stopped");
}

/// An environment whose daemon ran `job` to its end: `one` and `three` on stdout, `two`
/// on stderr, exit 0.
fn env_with_a_finished_job() -> Env {
    let env = Env::new();
    let out = env.bpm(&[
        "run",
        "--name",
        "job",
        "--",
        "sh",
        "-c",
        "echo one; echo two >&2; echo three",
    ]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    env
}

#[test]
fn status_json_describes_the_daemon_processes_and_instances() {
    let env = env_with_a_finished_job();
    let s = env.json(&["status"]);
    assert_eq!(s["mode"], "release");
    assert!(s["daemon_pid"].as_u64().unwrap() > 0);
    let p = &s["processes"][0];
    assert_eq!(p["name"], "job");
    let exit = exit_str(&p["state"]["exited"]["status"]);
    assert!(exit == r#"{"code":0}"# || exit == "exit code 0", "{s}");
    assert_eq!(p["argv"][0], "sh");
    assert_eq!(p["run_instances"], 1);

    let s = env.json(&["status", "job"]);
    assert_eq!(s["instances"][0]["exit"]["code"], 0, "{s}");
}

/// The `line` records of an NDJSON log read, as their texts.
fn line_texts(recs: &[Value]) -> Vec<String> {
    recs.iter()
        .filter(|r| r["type"] == "line")
        .map(|r| r["text"].as_str().unwrap().to_owned())
        .collect()
}

/// `bpm logs --json` is NDJSON: the instance, its lines, its end, as `--follow --json`
/// prints them; times as RFC 3339 and Unix microseconds; filters apply.
#[test]
fn logs_json_is_ndjson_records_with_streams_and_filters() {
    let env = env_with_a_finished_job();
    let recs = env.ndjson(&["logs", "job"]);
    assert_eq!(recs.len(), 5, "{recs:?}");
    let inst = &recs[0];
    assert_eq!(inst["type"], "instance");
    assert_eq!(inst["process"], "job");
    assert_eq!(inst["switch"], false);
    assert_eq!(inst["exit"]["code"], 0, "{inst}");
    let started_us = inst["started_us"].as_i64().unwrap();
    let started = chrono::DateTime::parse_from_rfc3339(inst["started"].as_str().unwrap()).unwrap();
    assert_eq!(started.timestamp_micros(), started_us / 1000 * 1000);
    let mut texts = line_texts(&recs);
    texts.sort();
    assert_eq!(texts, ["one", "three", "two"]);
    for l in &recs[1..4] {
        assert_eq!(l["instance"], inst["instance"]);
        let us = l["ts_us"].as_i64().unwrap();
        let ts = chrono::DateTime::parse_from_rfc3339(l["ts"].as_str().unwrap()).unwrap();
        assert_eq!(ts.timestamp_micros(), us / 1000 * 1000, "{l}");
        assert!(us >= started_us, "{l}");
    }
    let exit = recs.last().unwrap();
    assert_eq!(exit["type"], "exit");
    assert_eq!(exit["status"], serde_json::json!({"code": 0}));
    assert_eq!(exit["restarted"], false);

    let recs = env.ndjson(&["logs", "job", "--stream", "stderr"]);
    assert_eq!(line_texts(&recs), ["two"]);
    assert_eq!(recs[1]["stream"], "stderr");
    let recs = env.ndjson(&["logs", "job", "--grep", "^t", "--head", "1"]);
    let lines: Vec<&Value> = recs.iter().filter(|r| r["type"] == "line").collect();
    assert_eq!(lines.len(), 1, "{recs:?}");
    assert_eq!(lines[0]["matched"], true);
    assert_eq!(
        line_texts(&env.ndjson(&["logs", "job", "--since", "1h"])).len(),
        3
    );
    let recs = env.ndjson(&["logs", "job", "--until", "2000-01-01"]);
    assert!(line_texts(&recs).is_empty(), "{recs:?}");
    assert_eq!(recs[0]["type"], "instance");
    let recs = env.ndjson(&["logs", "job", "--tail", "1"]);
    assert_eq!(line_texts(&recs).len(), 1, "{recs:?}");
    assert_eq!(recs.last().unwrap()["type"], "exit");
}

/// Reads longer than a page, of several instances, through the daemon and from the
/// store read-only: every line once, in order, each instance between its header and its
/// end, and the same records either way.
#[test]
fn logs_json_pages_through_every_instance_online_and_offline() {
    let mut env = Env::new();
    env.serve();
    let n = bpm::daemon::ops::PAGE_LINES * 2 + 123;
    let last = n.to_string();
    env.ok(&["run", "--name", "count", "--", "seq", "1", &last]);
    env.ok(&["run", "--name", "count", "--", "seq", "1", &last]);
    flushed(&env.served[0].api());
    let check = |recs: &[Value]| {
        assert_eq!(recs.len(), 2 * (n + 2));
        for (k, part) in recs.chunks(n + 2).enumerate() {
            assert_eq!(part[0]["type"], "instance", "{}", part[0]);
            assert_eq!(part[0]["switch"], k == 1);
            for (i, l) in part[1..=n].iter().enumerate() {
                assert_eq!(l["type"], "line");
                assert_eq!(l["seq"], i as u64);
                assert_eq!(l["text"], (i + 1).to_string());
                assert_eq!(l["instance"], part[0]["instance"]);
            }
            assert_eq!(part[n + 1]["type"], "exit");
            assert_eq!(part[n + 1]["restarted"], k == 0);
        }
    };
    let online = env.ndjson(&["logs", "count", "--all-instances"]);
    check(&online);
    // Plain text: every line of the newest instance.
    let text = env.ok(&["logs", "count"]);
    let expect: String = (1..=n).map(|i| format!("{i}\n")).collect();
    assert!(text == expect, "{} lines", text.lines().count());

    env.served.clear();
    let out = env.bpm(&["logs", "count", "--all-instances", "--json"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no daemon is running"),
        "{}",
        stderr(&out)
    );
    let offline: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(offline, online);
    assert_eq!(env.ok(&["logs", "count"]), expect);
    let out = env.ok(&["logs", "count", "--grep", "^1.?$", "--all-instances"]);
    assert_eq!(out.matches("==> count run #").count(), 2, "{out}");
    assert_eq!(
        out.lines().filter(|l| !l.starts_with("==>")).count(),
        2 * 11
    );
}

#[test]
fn logs_follow_json_is_ndjson_of_the_instance_its_lines_and_its_end() {
    let env = env_with_a_finished_job();
    let f = env.spawn(&["logs", "job", "--follow", "--json"]);
    f.wait_out("the exit record", "\"type\":\"exit\"");
    let recs: Vec<Value> = f
        .out()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs[0]["type"], "instance");
    assert_eq!(recs[1]["type"], "line");
    assert_eq!(recs.last().unwrap()["status"]["code"], 0);
}

#[test]
fn start_json_names_the_process_and_says_it_finished() {
    let env = env_with_a_finished_job();
    // The job is over within the settle time: the answer says so (a finished one-shot
    // job is not a failed start: exit 0).
    let r = env.json(&["start", "job"]);
    assert_eq!(r["name"], "job");
    assert_eq!(r["readiness"]["outcome"], "exited", "{r}");
    assert_eq!(r["readiness"]["status"]["code"], 0, "{r}");
    assert!(r["status"]["pid"].is_null(), "{r}");
    assert!(r["cwd"].as_str().is_some_and(|c| !c.is_empty()), "{r}");
}

#[test]
fn errors_say_what_works_and_exit_1_for_a_failure_2_for_bad_input() {
    let env = env_with_a_finished_job();
    // A second run: the instances are -1..-2.
    env.ok(&["start", "job"]);
    env.ok(&["stop", "job"]);
    let out = env.bpm(&["logs", "jbo"]);
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("no process named `jbo`; known: job"),
        "{}",
        stderr(&out)
    );
    let out = env.bpm(&["logs", "job", "--grep", "a(b"]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("unclosed group") && stderr(&out).contains('^'),
        "{}",
        stderr(&out)
    );
    let out = env.bpm(&["logs", "job", "--instance", "-5"]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("use -1..-2, or 0..1"),
        "{}",
        stderr(&out)
    );
    let out = env.bpm(&["logs", "job", "--since", "last tuesday"]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("10m") && stderr(&out).contains("T10:00:00Z"),
        "{}",
        stderr(&out)
    );
    let out = env.bpm(&["logs"]);
    assert_eq!(code(&out), Some(2));
    let out = env.bpm(&["restart", "nope"]);
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains("known: job"), "{}", stderr(&out));
}

#[test]
fn completions_complete_commands_and_process_names() {
    let env = Env::new();
    let script = env.ok(&["completions", "bash"]);
    assert!(
        script.contains("_clap_complete_bpm") && script.contains("COMPLETE"),
        "{script}"
    );
    env.ok(&["run", "--name", "webserver", "--", "true"]);
    // What the registered script runs when the user presses Tab.
    let complete = |words: &[&str]| {
        let mut cmd = env.cmd(&["--", "bpm"]);
        cmd.args(words).env("COMPLETE", "fish");
        String::from_utf8(process::output(&mut cmd).stdout).unwrap()
    };
    assert!(
        complete(&["lo"]).starts_with("logs\t"),
        "{}",
        complete(&["lo"])
    );
    for verb in ["logs", "stop", "status", "rm"] {
        let got = complete(&[verb, "web"]);
        assert!(got.starts_with("webserver\t"), "{verb}: {got:?}");
    }
}

/// A reader that closes the pipe early (`| head`) is not an error: exit 0, nothing on
/// stderr, no panic.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    let env = Env::new();
    env.ok(&["run", "--name", "many", "--", "seq", "1", "20000"]);
    for args in [
        &["logs", "many", "--json"][..],
        &["logs", "many"][..],
        &["completions", "zsh"][..],
    ] {
        let mut child = env
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Read a little, then close the pipe as `head -c 10` would.
        let mut first = [0u8; 10];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(code(&out), Some(0), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{args:?}: {}", stderr(&out));
    }
}
