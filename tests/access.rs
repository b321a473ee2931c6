//! Only the user: the data directory is private.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A daemon running in this test's runtime; shut down when the test ends.
struct Daemon {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Daemon {
    async fn start(project: &Path, data: &Path, token: Option<&str>) -> Daemon {
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let opts = bpm::daemon::Options {
            dir: project.to_owned(),
            data_dir: Some(data.to_owned()),
            port: Some(0),
            passthrough: Some(false),
            token: token.map(str::to_owned),
            ..Default::default()
        };
        let task = tokio::spawn(bpm::daemon::run(
            opts,
            async move {
                let _ = stop_rx.await;
            },
            move |info| {
                let _ = port_tx.send(info.port);
            },
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if port_rx.try_recv().is_ok() {
                break;
            }
            assert!(!task.is_finished(), "the daemon ended: {:?}", task.await);
            assert!(Instant::now() < deadline, "the daemon never listened");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Daemon {
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    async fn shutdown(mut self) {
        self.stop.take().map(|s| s.send(()));
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let project = t.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let data = t.path().join("data");
    (t, project, data)
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The data directory's mode and every entry's, by name.
fn modes(data: &Path) -> (u32, Vec<(String, u32)>) {
    let mut entries: Vec<(String, u32)> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                mode(&e.path()),
            )
        })
        .collect();
    entries.sort();
    (mode(data), entries)
}

fn assert_private(data: &Path, expected_files: &[&str]) {
    let (dir, entries) = modes(data);
    assert_eq!(dir, 0o700, "the data directory: {entries:?}");
    for name in expected_files {
        assert!(
            entries.iter().any(|(n, _)| n == name),
            "no {name} in {entries:?}"
        );
    }
    for (name, m) in &entries {
        assert_eq!(*m, 0o600, "{name} is {m:04o}");
    }
}

/// The data directory is 0700 and everything in it 0600, from the first start; a
/// directory and store left readable by others are fixed at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private() {
    let (_t, project, data) = dirs();
    let d = Daemon::start(&project, &data, None).await;
    assert_private(&data, &["logs.redb", "daemon.json", "bpm.sock"]);
    d.shutdown().await;
    assert_private(&data, &["logs.redb"]);

    // As an older bpm (or a umask of 022) left them.
    let store = data.join(bpm::daemon::STORE_FILE);
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = data.join("daemon.log");
    std::fs::write(&log, "an old log\n").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = Daemon::start(&project, &data, None).await;
    assert_private(
        &data,
        &["logs.redb", "daemon.json", "bpm.sock", "daemon.log"],
    );
    d.shutdown().await;
}

/// A daemon the CLI starts in the background gets a private data directory and log.
#[test]
fn an_autostarted_daemon_has_a_private_directory_and_log() {
    let (_t, project, data) = dirs();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bpm"))
        .arg("mode")
        .arg("--data-dir")
        .arg(&data)
        .current_dir(&project)
        .env("BPM_PORT", "0")
        .env("BPM_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pid = bpm::daemon::read_daemon_info(&data)
        .expect("the daemon says who it is")
        .pid;
    let stop = stop_on_drop(pid);
    assert_private(
        &data,
        &["logs.redb", "daemon.json", "bpm.sock", "daemon.log"],
    );
    drop(stop);
}

/// Stops the daemon with `pid` (one this test started) when dropped, and waits until it
/// is gone.
fn stop_on_drop(pid: u32) -> impl Drop {
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.0 as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            // Gone, or a zombie its new parent has not reaped yet.
            let alive = || {
                std::fs::read_to_string(format!("/proc/{}/stat", self.0)).is_ok_and(|s| {
                    s.rsplit_once(") ")
                        .is_some_and(|(_, r)| !r.starts_with('Z'))
                })
            };
            while alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    Stop(pid)
}
