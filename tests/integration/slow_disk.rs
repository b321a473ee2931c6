//! A really slow disk: the store lives on a loop device whose writes the kernel throttles
//! to 512 KB/s (cgroup v2 `io.max`, or v1 `blkio.throttle.write_bps_device`), and a real
//! supervised child floods it. Backpressure, not loss: every line is stored, none is
//! dropped, and the child's exit is seen (and acted on) at once, long before its end is
//! durable.
//!
//! Needs root, `losetup`, `mkfs.ext4` and a cgroup hierarchy with write throttling; without
//! them the test says why and passes (the logs layer's `slow_writer_tests` simulate a slow
//! writer everywhere). While it runs, this whole test process is in the throttling cgroup:
//! only writes to the loop device are throttled, so the other tests are not affected.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use bpm::config::RestartPolicy;
use bpm::logs::{Actor, ExitStatus, Store, StoreOptions, Window};
use bpm::supervisor::process::{Mode, ProcessHandle, ProcessSpec, State, Status, Timing};
use nix::sys::signal::Signal;
use tokio::sync::watch;

use crate::helpers::store::read_texts;
use crate::helpers::{tempdir, wait_for_async};

/// Write bandwidth of the throttled device.
const BPS: u64 = 512 * 1024;
/// The flood: lines of 100 bytes (with the newline).
const LINES: u64 = 200_000;

/// The process moves between cgroups: one throttled test at a time.
static THROTTLED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Where write throttling is possible, and how.
enum Hierarchy {
    /// cgroup v2 with the io controller at this root.
    V2(PathBuf),
    /// cgroup v1's blkio hierarchy.
    V1(PathBuf),
}

fn hierarchy() -> Result<Hierarchy, String> {
    for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let root = Path::new(root);
        if let Ok(c) = std::fs::read_to_string(root.join("cgroup.controllers"))
            && c.split_whitespace().any(|c| c == "io")
        {
            return Ok(Hierarchy::V2(root.to_owned()));
        }
    }
    let v1 = Path::new("/sys/fs/cgroup/blkio");
    if v1.join("blkio.throttle.write_bps_device").exists() {
        return Ok(Hierarchy::V1(v1.to_owned()));
    }
    Err("no cgroup v2 io controller and no v1 blkio throttling".into())
}

/// The cgroup this process is in, in the hierarchy `h` (from /proc/self/cgroup).
fn own_cgroup(h: &Hierarchy) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let (root, rel) = match h {
        Hierarchy::V2(root) => (
            root,
            text.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(str::to_owned),
        ),
        Hierarchy::V1(root) => (
            root,
            text.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
                ctrl.split(',')
                    .any(|c| c == "blkio")
                    .then(|| path.to_owned())
            }),
        ),
    };
    let rel = rel.ok_or("this process is in no such cgroup")?;
    Ok(root.join(rel.trim_start_matches('/')))
}

/// A store directory on a loop device whose writes are throttled to [`BPS`], with this
/// process in the throttling cgroup. Dropping it undoes everything, in reverse order.
struct SlowDisk {
    _dir: tempfile::TempDir,
    mount: PathBuf,
    device: Option<String>,
    mounted: bool,
    cgroup: Option<PathBuf>,
    /// Where this process was before (it goes back there).
    home: Option<PathBuf>,
}

impl SlowDisk {
    fn new() -> Result<SlowDisk, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root (a loop device and a cgroup are needed)".into());
        }
        let h = hierarchy()?;
        let dir = tempdir();
        let image = dir.path().join("disk.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        let mut disk = SlowDisk {
            _dir: dir,
            mount,
            device: None,
            mounted: false,
            cgroup: None,
            home: None,
        };
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(512 << 20))
            .map_err(|e| e.to_string())?;
        let device = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image))?;
        disk.device = Some(device.clone());
        run(Command::new("mkfs.ext4").args(["-q", &device]))?;
        run(Command::new("mount").arg(&device).arg(&disk.mount))?;
        disk.mounted = true;
        let rdev = std::fs::metadata(&device)
            .map_err(|e| e.to_string())?
            .rdev();
        let dev = format!(
            "{}:{}",
            nix::sys::stat::major(rdev),
            nix::sys::stat::minor(rdev)
        );
        let name = format!("bpm-slow-disk-test-{}", std::process::id());
        let (cgroup, file, rule) = match &h {
            Hierarchy::V2(root) => {
                // The io controller must be on for the root's children.
                let _ = std::fs::write(root.join("cgroup.subtree_control"), "+io");
                (root.join(&name), "io.max", format!("{dev} wbps={BPS}"))
            }
            Hierarchy::V1(root) => (
                root.join(&name),
                "blkio.throttle.write_bps_device",
                format!("{dev} {BPS}"),
            ),
        };
        let home = own_cgroup(&h)?;
        std::fs::create_dir(&cgroup).map_err(|e| format!("{}: {e}", cgroup.display()))?;
        disk.cgroup = Some(cgroup.clone());
        std::fs::write(cgroup.join(file), &rule)
            .map_err(|e| format!("{rule} > {}: {e}", cgroup.join(file).display()))?;
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("moving into {}: {e}", cgroup.display()))?;
        disk.home = Some(home);
        Ok(disk)
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            let _ = std::fs::write(home.join("cgroup.procs"), std::process::id().to_string());
        }
        if let Some(cgroup) = self.cgroup.take() {
            // Children that were spawned inside may take a moment to be gone.
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::remove_dir(&cgroup).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if self.mounted {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Command::new("umount")
                .arg(&self.mount)
                .status()
                .map_or(true, |s| !s.success())
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if let Some(device) = self.device.take() {
            let _ = Command::new("losetup").args(["-d", &device]).status();
        }
    }
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// 200,000 lines of 100 bytes that compress only so much (a random part): the store's
/// writes take tens of seconds at 512 KB/s. On its first run the child floods, writes
/// when it ended (ns since the epoch) and exits 3; on the next ones it floods with `yes`
/// until it is stopped.
fn script() -> String {
    format!(
        r#"if [ -e flooded ]; then exec yes "$(printf '%099d' 0)"; fi
touch flooded
awk 'BEGIN {{ srand(7); pad = sprintf("%080d", 0); for (i = 0; i < {LINES}; i++) printf "%010d %08x%s\n", i, int(rand() * 2147483647), pad }}'
date +%s%N > ended.tmp && mv ended.tmp ended
exit 3"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_a_throttled_disk_waits_loses_nothing_and_its_exit_is_seen_at_once() {
    let _one = THROTTLED.lock().await;
    let disk = match SlowDisk::new() {
        Ok(d) => d,
        Err(why) => {
            eprintln!(
                "skipped: the disk cannot be throttled here ({why}); `slow_writer_tests` in the logs layer simulate a slow writer instead"
            );
            return;
        }
    };
    let work = tempdir();
    // A 4 MiB queue and 4 MiB groups (a quarter of the defaults), so that the flood is
    // several times what the store holds in memory: each commit takes seconds at 512 KB/s,
    // longer than the second capture used to wait before it dropped lines.
    let opts = StoreOptions {
        queue_max_bytes: 4 << 20,
        group_max_bytes: 4 << 20,
        ..StoreOptions::default()
    };
    let store = Store::open(&disk.mount.join("logs.redb"), opts)
        .unwrap()
        .store;
    let (_mode_tx, mode) = watch::channel(Mode::Release);
    let spec = ProcessSpec {
        name: "flood".into(),
        argv: vec!["sh".into(), "-c".into(), script()],
        cwd: work.path().to_owned(),
        env: vec![],
        build: None,
        restart: RestartPolicy::OnFailure,
        stop_signal: Signal::SIGTERM,
        stop_timeout: Duration::from_secs(5),
        ready: None,
        passthrough: false,
        release: None,
        direnv: false,
    };
    let timing = Timing {
        dev_crash_wait: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        stable_run: Duration::from_secs(600),
    };
    let h = ProcessHandle::spawn_supervisor(spec, store.clone(), mode, timing);
    let started = Instant::now();
    h.start(Actor::Cli).await.unwrap();
    let first = h.status_now().instance.unwrap();

    // The child's end, and when the supervisor knew it (polled together).
    let ended_file = work.path().join("ended");
    let flood_deadline = Duration::from_secs(180);
    let (ended_ns, seen_ns, st) = loop {
        let st: Status = h.status_now();
        let seen = unix_ns();
        let known = st.crash_count >= 1;
        if known && let Ok(text) = std::fs::read_to_string(&ended_file) {
            break (text.trim().parse::<u128>().unwrap(), seen, st);
        }
        assert!(
            started.elapsed() < flood_deadline,
            "the flood did not end and get seen in {flood_deadline:?}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let seen_after = Duration::from_nanos(seen_ns.saturating_sub(ended_ns) as u64);
    let flood_took = started.elapsed().saturating_sub(seen_after);
    // The child was slowed down to the disk's pace (it alone prints 20 MB in well under
    // a second): it waited on its pipe.
    assert!(
        flood_took > Duration::from_secs(2),
        "the flood took only {flood_took:?}: the store never made it wait"
    );
    assert!(
        seen_after < Duration::from_secs(3),
        "the exit was seen {seen_after:?} after the child ended"
    );
    assert_eq!(st.last_exit, Some(ExitStatus::Code(3)));

    // The restart policy did not wait for the end's commit either.
    let t = Instant::now();
    let second = wait_for_async("the restart", async || {
        h.status_now()
            .instance
            .filter(|&i| i > first && h.status_now().state.is_running())
    })
    .await;
    let restarted_after = seen_after + t.elapsed();

    // The first instance's end becomes durable behind its lines.
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(300), store.flush_async())
        .await
        .expect("the store catches up")
        .unwrap();
    let durable_after = seen_after + t.elapsed();
    let meta = store.instance(first).unwrap();
    assert_eq!(meta.exit, Some(ExitStatus::Code(3)));
    assert_eq!(meta.next_seq, LINES, "every line was stored");
    assert_eq!(meta.dropped_lines, 0);
    let tail = read_texts(&store, first, Window::Tail(1));
    assert!(
        tail[0].starts_with(&format!("{:010} ", LINES - 1)),
        "{tail:?}"
    );

    // A child blocked on its pipe (the writer behind) is still stopped at once.
    wait_for_async("the second run to fill the queue", async || {
        store.instance(second).unwrap().next_seq > 300_000
    })
    .await;
    let t = Instant::now();
    let st = h.stop(Actor::Cli, false).await.unwrap();
    let stop_took = t.elapsed();
    assert!(
        stop_took < Duration::from_secs(10),
        "stop took {stop_took:?}"
    );
    assert_eq!(st.state, State::Stopped);
    assert_eq!(
        st.last_exit,
        Some(ExitStatus::Signal(Signal::SIGTERM as i32))
    );
    assert!(st.last_error.is_none(), "{st:?}");

    tokio::time::timeout(Duration::from_secs(300), store.flush_async())
        .await
        .expect("the store catches up")
        .unwrap();
    assert_eq!(store.dropped_lines(), 0, "backpressure, not loss");
    assert_eq!(store.instance(second).unwrap().dropped_lines, 0);
    eprintln!(
        "throttled to {BPS} B/s: {LINES} lines in {flood_took:?}; exit seen {seen_after:?} after the child ended, restarted after {restarted_after:?}, durable after {durable_after:?}; a blocked child stopped in {stop_took:?}"
    );
    h.shutdown().await;
    store.close().unwrap();
    drop(disk);
}
