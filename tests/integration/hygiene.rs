//! What a long-running daemon owes the machine: children get only stdin, stdout and
//! stderr; the autostarted daemon has a session of its own; its log holds only its own
//! messages, without escape codes, and is rotated at its cap; output is copied to stdout
//! only where someone reads it.

use nix::sys::signal::Signal;

use crate::helpers::daemon::{BPM, Dirs};
use crate::helpers::env::Env;
use crate::helpers::process::{self, Spawned};
use crate::helpers::wait_for;

/// What a process sees open: the descriptors in its /proc/self/fd still open after the
/// listing closed its own.
const LIST_FDS: &str = "import os; fds=[int(f) for f in os.listdir('/proc/self/fd')]; print('fds', sorted(f for f in fds if os.path.exists('/proc/self/fd/%d' % f)), flush=True)";

#[test]
fn children_get_only_the_three_standard_descriptors() {
    let dirs = Dirs::new();
    dirs.write_config(&format!(
        "[process.fds]\ncommand = [\"python3\", \"-c\", \"{}\"]\n",
        LIST_FDS.replace('"', "\\\"")
    ));
    // The daemon inherits descriptor 9 (not close-on-exec), as from a careless shell.
    let mut cmd = crate::helpers::daemon::bpm_command(&dirs);
    cmd.arg("-c")
        .arg("exec 9</dev/null; exec \"$0\" \"$@\"")
        .arg(BPM)
        .args(["serve", "--port", "0", "--no-prefix", "--data-dir"])
        .arg(&dirs.data)
        .arg(&dirs.project);
    let mut sh = std::process::Command::new("sh");
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.args(cmd.get_args());
    let daemon = Spawned::new(&mut sh, Signal::SIGTERM);
    // It keeps it (close-on-exec only): the shell opened it before exec.
    wait_for("the daemon to hold the inherited descriptor 9", || {
        std::fs::read_link(format!("/proc/{}/fd/9", daemon.pid())).is_ok()
    });
    let out = wait_for("the child's listing", || {
        let info = bpm::daemon::read_daemon_info(&dirs.data)?;
        let api = crate::helpers::api::Api::new(info.port);
        let (_, v) = api.get("/api/logs/fds");
        v["lines"].as_array().and_then(|l| {
            l.first()
                .and_then(|l| l["text"].as_str())
                .map(str::to_owned)
        })
    });
    assert_eq!(out, "fds [0, 1, 2]");
}

/// The session a process belongs to (field 6 of /proc/PID/stat).
fn session_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn the_autostarted_daemon_has_its_own_session_and_a_quiet_log() {
    let env = Env::new();
    let out = process::output(
        env.cmd(&[
            "run",
            "--",
            "sh",
            "-c",
            "echo PROCESS-OUTPUT-LINE; printf '\\033[31mred\\033[0m\\n'",
        ])
        .env_remove("BPM_LOG"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = env.daemon_pid().unwrap();
    assert_eq!(
        session_of(pid),
        pid,
        "the daemon leads a session of its own"
    );
    assert_ne!(session_of(pid), session_of(std::process::id()));
    // Its log: no process output, no escape codes, nothing below warn by default.
    env.ok(&["status"]);
    let log = std::fs::read_to_string(env.dirs.data.join("daemon.log")).unwrap();
    assert!(
        !log.contains("PROCESS-OUTPUT-LINE") && !log.contains("red"),
        "{log}"
    );
    assert!(!log.contains('\u{1b}') && !log.contains(" INFO "), "{log}");
}

#[test]
fn the_daemon_log_is_rotated_at_its_cap() {
    let env = Env::new();
    let noisy = |args: &[&str]| {
        let out = process::output(
            env.cmd(args)
                .env("BPM_LOG", "debug")
                .env("BPM_LOG_MAX_BYTES", "2000"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    noisy(&["run", "--", "true"]);
    let log = env.dirs.data.join("daemon.log");
    let old = env.dirs.data.join("daemon.log.1");
    // Each start is a few debug lines of the daemon's own.
    wait_for("daemon.log to be rotated", || {
        noisy(&["run", "--", "true"]);
        old.exists()
    });
    let old_size = std::fs::metadata(&old).unwrap().len();
    assert!(old_size >= 2_000, "rotated once full: {old_size}");
    // The daemon writes on into the new daemon.log.
    wait_for("the new daemon.log to be written", || {
        noisy(&["run", "--", "true"]);
        std::fs::metadata(&log).is_ok_and(|m| m.len() > 0)
    });
    assert!(std::fs::metadata(&log).unwrap().len() < old_size + 20_000);
}

#[test]
fn process_output_reaches_a_piped_stdout_only_with_prefix() {
    for (flag, copied) in [(None, false), (Some("--prefix"), true)] {
        let dirs = Dirs::new();
        dirs.write_config(
            "[process.talker]\ncommand = [\"sh\", \"-c\", \"echo TALKER-LINE; exec sleep 300\"]\n",
        );
        let mut cmd = crate::helpers::daemon::bpm_command(&dirs);
        cmd.args(["serve", "--port", "0", "--data-dir"])
            .arg(&dirs.data)
            .arg(&dirs.project)
            .env_remove("JOURNAL_STREAM");
        if let Some(f) = flag {
            cmd.arg(f);
        }
        let daemon = Spawned::new(&mut cmd, Signal::SIGTERM);
        let port = wait_for("the daemon to serve", || {
            bpm::daemon::read_daemon_info(&dirs.data)
                .filter(|i| i.pid == daemon.pid())
                .map(|i| i.port)
        });
        let api = crate::helpers::api::Api::new(port);
        wait_for("the line to be stored", || {
            api.get("/api/logs/talker")
                .1
                .to_string()
                .contains("TALKER-LINE")
        });
        if copied {
            daemon.wait_out("the prefixed line", "TALKER-LINE");
            assert!(daemon.out().contains("[talker]"), "{}", daemon.out());
        } else {
            assert!(!daemon.out().contains("TALKER-LINE"), "{}", daemon.out());
        }
    }
}
