//! systemd: the unit `bpm service install` writes (against a committed snapshot, and
//! through `systemd-analyze verify` where systemd is installed), and the notification
//! protocol of the real daemon on a fake `NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::helpers::daemon::{BPM, Dirs, Served};
use crate::helpers::{DEADLINE, process, tempdir};

/// Compare `actual` with `tests/snapshots/NAME` (rewritten with BPM_UPDATE_SNAPSHOTS=1).
#[track_caller]
fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("BPM_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{name} changed; review the difference and run with BPM_UPDATE_SNAPSHOTS=1 to accept it:\n{actual}"
    );
}

/// `systemd-analyze verify` on `unit`, when systemd-analyze exists.
fn verify(unit: &Path) {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("systemd-analyze").is_file());
    if !found {
        eprintln!(
            "skipped: systemd-analyze is not installed, {} is not verified",
            unit.display()
        );
        return;
    }
    let out = process::output(
        std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(unit),
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify {}: {}",
        unit.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bpm service install --no-systemctl ARGS` with a fixed PATH and config home; the
/// path of the unit it wrote.
fn install(dirs: &Dirs, home: &Path, args: &[&str]) -> PathBuf {
    let out = process::output(
        dirs.bpm(&[&["service", "install", "--no-systemctl"][..], args].concat())
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("PATH", "/usr/local/bin:/usr/bin:/bin"),
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("wrote "))
        .unwrap();
    assert!(
        stdout.contains("enable --now"),
        "it says how to enable it: {stdout}"
    );
    PathBuf::from(line)
}

#[test]
fn a_project_user_unit_matches_its_snapshot_and_systemd_accepts_it() {
    let dirs = Dirs::new();
    dirs.write_config("[process.web]\ncommand = [\"sleep\", \"300\"]\n");
    let home = tempdir();
    let unit = install(&dirs, home.path(), &[dirs.project.to_str().unwrap()]);
    assert_eq!(
        unit.parent().unwrap(),
        home.path().join("config/systemd/user"),
        "a user unit goes to XDG_CONFIG_HOME"
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    let exe = std::fs::canonicalize(BPM).unwrap();
    let generic = text
        .replace(exe.to_str().unwrap(), "@BPM@")
        .replace(dirs.data.to_str().unwrap(), "@DATA@")
        .replace(dirs.project.to_str().unwrap(), "@PROJECT@");
    snapshot("service_project.service", &generic);
    verify(&unit);

    // status sees it; uninstall removes it; a second uninstall says there is none.
    let status = |args: &[&str]| {
        process::output(
            dirs.bpm(args)
                .env("HOME", home.path())
                .env("XDG_CONFIG_HOME", home.path().join("config")),
        )
    };
    let project = dirs.project.to_str().unwrap();
    let out = status(&["service", "status", "--no-systemctl", project]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(installed)"),
        "{out:?}"
    );
    let out = status(&["service", "uninstall", "--no-systemctl", project]);
    assert!(out.status.success(), "{out:?}");
    assert!(!unit.exists());
    let out = status(&["service", "uninstall", "--no-systemctl", project]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no unit"),
        "{out:?}"
    );
}

#[test]
fn a_global_system_unit_runs_as_its_installer() {
    let dirs = Dirs::new();
    let home = tempdir();
    let units = home.path().join("units");
    let unit = install(
        &dirs,
        home.path(),
        &["--system", "--unit-dir", units.to_str().unwrap()],
    );
    assert_eq!(unit, units.join("bpm.service"));
    let text = std::fs::read_to_string(&unit).unwrap();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    let exe = std::fs::canonicalize(BPM).unwrap();
    // The global daemon's data: BPM_HOME (set by the test environment).
    let generic = text
        .replace(exe.to_str().unwrap(), "@BPM@")
        .replace(dirs.data.to_str().unwrap(), "@DATA@")
        .replace(home.path().to_str().unwrap(), "@HOME@")
        .replace(&format!("User={user}\n"), "User=@USER@\n");
    snapshot("service_global_system.service", &generic);
    verify(&unit);
}

#[test]
fn a_directory_without_config_is_refused_with_the_way_out() {
    let dirs = Dirs::new();
    let home = tempdir();
    let out = process::output(
        dirs.bpm(&[
            "service",
            "install",
            "--print",
            dirs.project.to_str().unwrap(),
        ])
        .env("HOME", home.path()),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has no .mcp-run") && err.contains("global daemon"),
        "{err}"
    );
}

/// Read datagrams from `sock` into `seen` (one message each) until `done(seen)`.
#[track_caller]
fn receive_until(
    sock: &UnixDatagram,
    seen: &mut Vec<String>,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    let mut buf = [0u8; 4096];
    while !done(seen) {
        assert!(Instant::now() < deadline, "no {what} in {seen:?}");
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

fn count(seen: &[String], message: &str) -> usize {
    seen.iter()
        .filter(|m| m.lines().any(|l| l == message))
        .count()
}

#[test]
fn the_daemon_notifies_ready_then_the_watchdog_then_stopping() {
    let dirs = Dirs::new();
    let tmp = tempdir();
    let path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // A process that would speak for the daemon if it were told the socket.
    dirs.write_config(
        "[process.child]\ncommand = [\"sh\", \"-c\", \"echo notify=[$NOTIFY_SOCKET] watchdog=[$WATCHDOG_USEC]; exec sleep 300\"]\n",
    );
    let mut daemon = Served::start_with(
        &dirs,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            // 100 ms: a WATCHDOG=1 every 50 ms.
            ("WATCHDOG_USEC", "100000"),
        ],
    );
    let mut seen = Vec::new();
    receive_until(&sock, &mut seen, "READY=1", |s| count(s, "READY=1") == 1);
    // It answers once it said it is ready.
    daemon.api().status();
    let ready = seen.len();
    let api = daemon.api();
    crate::helpers::wait_for("the child's line", || {
        let (_, logs) = api.get("/api/logs/child");
        logs["lines"][0]["text"].as_str().map(str::to_owned)
    });
    let (_, logs) = api.get("/api/logs/child");
    assert_eq!(logs["lines"][0]["text"], "notify=[] watchdog=[]", "{logs}");
    // Keep-alives, again and again, after READY.
    receive_until(&sock, &mut seen, "3 WATCHDOG=1", |s| {
        count(&s[ready..], "WATCHDOG=1") >= 3
    });
    assert!(daemon.terminate().success());
    receive_until(&sock, &mut seen, "STOPPING=1", |s| {
        count(s, "STOPPING=1") == 1
    });
    assert_eq!(count(&seen, "READY=1"), 1, "{seen:?}");
}

#[test]
fn the_man_page_names_the_commands() {
    let dirs = Dirs::new();
    let out = process::output(&mut dirs.bpm(&["man"]));
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH bpm 1"), "{page}");
    for command in ["serve", "run", "logs", "service", "daemons"] {
        assert!(
            page.contains(&format!("bpm\\-{command}(1)")),
            "{command}: {page}"
        );
    }
}
