//! `bpm setup` through the real binary, against a real daemon (`bpm serve` on a port of
//! its own): the port and token it reports, and `--apply` running a client's command.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use crate::helpers::daemon::{Dirs, Served};
use crate::helpers::{tempdir, umask_shared};

fn run(mut c: Command) -> Output {
    let _umask = umask_shared();
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn describe(o: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn setup_prints_the_running_daemons_port_and_its_token_form() {
    let dirs = Dirs::new();
    // No daemon runs: the port a daemon would take, and no token.
    let mut c = dirs.bpm(&["setup", "claude"]);
    c.env("BPM_PORT", "4567");
    let o = run(c);
    assert!(o.status.success(), "{}", describe(&o));
    let out = stdout(&o);
    assert!(out.contains("No daemon runs"), "{out}");
    assert!(out.contains("http://127.0.0.1:4567/mcp"), "{out}");

    let daemon = Served::start_with(&dirs, &[("BPM_TOKEN", "s3cret-token")]);
    let port = daemon.wait_listening();
    assert_ne!(port, bpm::config::DEFAULT_MCP_PORT);
    let o = run(dirs.bpm(&["setup"]));
    assert!(o.status.success(), "{}", describe(&o));
    let out = stdout(&o);
    let url = format!("http://127.0.0.1:{port}/mcp");
    assert!(
        out.contains(&format!("claude mcp add --transport http bpm {url} --header \"Authorization: Bearer $BPM_TOKEN\"")),
        "{out}"
    );
    assert!(out.contains(&format!("(pid {})", daemon.pid())), "{out}");
    assert!(out.contains("requires a token"), "{out}");
    assert!(
        out.contains("bearer_token_env_var = \"BPM_TOKEN\""),
        "{out}"
    );
    assert!(out.contains("\"headers\""), "{out}");
    assert!(!out.contains("8947"), "{out}");
    assert!(
        !out.contains("s3cret-token"),
        "the token itself is never printed: {out}"
    );
}

/// A fake client command on its own PATH directory: it records its arguments, one a
/// line, in `record`.
fn fake_client(bin: &Path, name: &str, record: &Path) {
    let script = bin.join(name);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{}'\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn setup_apply_runs_the_clients_command_with_the_token_and_checks_the_daemon() {
    let dirs = Dirs::new();
    let daemon = Served::start_with(&dirs, &[("BPM_TOKEN", "s3cret-token")]);
    let port = daemon.wait_listening();
    let tmp = tempdir();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let record = tmp.path().join("claude-args");
    fake_client(&bin, "claude", &record);

    let mut c = dirs.bpm(&["setup", "claude", "--apply"]);
    c.env("PATH", &bin).env("BPM_TOKEN", "s3cret-token");
    let o = run(c);
    assert!(o.status.success(), "{}", describe(&o));
    let args = std::fs::read_to_string(&record).expect("claude was run");
    let url = format!("http://127.0.0.1:{port}/mcp");
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        [
            "mcp",
            "add",
            "--transport",
            "http",
            "bpm",
            &url,
            "--header",
            "Authorization: Bearer s3cret-token"
        ]
    );
    let out = stdout(&o);
    assert!(out.contains("Bearer ***"), "{out}");
    assert!(!out.contains("s3cret-token"), "{out}");
    assert!(
        out.contains(&format!("The daemon answers at {url}")),
        "{out}"
    );

    // Every client: those without their command on PATH are skipped.
    std::fs::remove_file(&record).unwrap();
    let mut c = dirs.bpm(&["setup", "--apply"]);
    c.env("PATH", &bin).env("BPM_TOKEN", "s3cret-token");
    let o = run(c);
    assert!(o.status.success(), "{}", describe(&o));
    assert!(record.exists(), "claude was run: {}", describe(&o));
    let out = stdout(&o);
    assert!(out.contains("codex: not on PATH, skipped"), "{out}");
    assert!(out.contains("code: not on PATH, skipped"), "{out}");

    // Without the token, nothing is run and the way out is named.
    std::fs::remove_file(&record).unwrap();
    let mut c = dirs.bpm(&["setup", "claude", "--apply"]);
    c.env("PATH", &bin);
    let o = run(c);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("set BPM_TOKEN"),
        "{}",
        describe(&o)
    );
    assert!(!record.exists());

    // Codex runs `bpm mcp`, which reaches the daemon over its socket: no token needed.
    let codex_record = tmp.path().join("codex-args");
    fake_client(&bin, "codex", &codex_record);
    let mut c = dirs.bpm(&["setup", "codex", "--apply"]);
    c.env("PATH", &bin);
    let o = run(c);
    assert!(o.status.success(), "{}", describe(&o));
    let bpm = std::fs::canonicalize(crate::helpers::daemon::BPM).unwrap();
    let args = std::fs::read_to_string(&codex_record).expect("codex was run");
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        ["mcp", "add", "bpm", "--", bpm.to_str().unwrap(), "mcp"]
    );
    assert!(
        stdout(&o).contains("The daemon answers"),
        "{}",
        describe(&o)
    );
    drop(daemon);
}
