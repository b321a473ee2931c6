//! The supervision of one process, against real processes (`sh -c`) and a real store.
//!
//! Every wait is on a condition with a deadline; durations are short but the deadlines
//! generous, so the tests hold on a loaded machine. The only sleep is one whose length is
//! the point of its test (nothing happens within it).

use std::net::TcpListener;
use std::time::{Duration, Instant};

use bpm::config::{Ready, ReadyCheck, RestartPolicy};
use bpm::logs::{Actor, EventKind, ExitStatus, InstanceKind, Store, Window};
use bpm::supervisor::process::{
    Mode, ProcessError, ProcessHandle, ProcessSpec, ReadyOutcome, State, Status, Timing,
};
use nix::sys::signal::Signal;
use tokio::sync::watch;

use crate::helpers::process::alive;
use crate::helpers::store::{open, read_texts};
use crate::helpers::{DEADLINE, Outcome, tempdir, wait_for_async};

struct Env {
    dir: tempfile::TempDir,
    store: Store,
    _mode: watch::Sender<Mode>,
    mode: watch::Receiver<Mode>,
}

fn env() -> Env {
    let dir = tempdir();
    let store = open(&dir.path().join("logs.redb"));
    let (tx, rx) = watch::channel(Mode::Release);
    Env {
        dir,
        store,
        _mode: tx,
        mode: rx,
    }
}

fn timing() -> Timing {
    Timing {
        dev_crash_wait: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        stable_run: Duration::from_secs(60),
    }
}

fn spec(env: &Env, name: &str, script: &str) -> ProcessSpec {
    ProcessSpec {
        name: name.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        cwd: env.dir.path().to_owned(),
        env: vec![],
        build: None,
        restart: RestartPolicy::OnFailure,
        stop_signal: Signal::SIGTERM,
        stop_timeout: Duration::from_secs(5),
        ready: None,
        passthrough: false,
        release: None,
        direnv: false,
    }
}

fn supervise(env: &Env, spec: ProcessSpec, timing: Timing) -> ProcessHandle {
    ProcessHandle::spawn_supervisor(spec, env.store.clone(), env.mode.clone(), timing)
}

async fn finish(env: Env, handles: &[&ProcessHandle]) {
    for h in handles {
        h.shutdown().await;
    }
    env.store.close().unwrap();
}

/// Wait (async) until `f` holds.
async fn until<O: Outcome>(what: &str, mut f: impl FnMut() -> O) -> O::Value {
    wait_for_async(what, async || f()).await
}

async fn until_status(h: &ProcessHandle, what: &str, f: impl Fn(&Status) -> bool) -> Status {
    until(what, || Some(h.status_now()).filter(|s| f(s))).await
}

fn texts(store: &Store, instance: u64, window: Window) -> Vec<String> {
    read_texts(store, instance, window)
}

fn events(store: &Store, name: &str) -> Vec<EventKind> {
    store
        .events(Some(name), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

async fn until_event(store: &Store, name: &str, f: impl Fn(&EventKind) -> bool) -> EventKind {
    until(&format!("an event of {name}"), || {
        events(store, name).into_iter().find(|e| f(e))
    })
    .await
}

fn runs(store: &Store, name: &str) -> usize {
    store.instances(name, InstanceKind::Run).unwrap().len()
}

/// Wait until the store lists `n` run instances (a new instance is listed once the
/// writer has committed it, shortly after it started).
async fn until_runs(store: &Store, name: &str, n: usize) {
    until(&format!("{n} run instances"), || runs(store, name) == n).await
}

fn builds(store: &Store, name: &str) -> Vec<bpm::logs::InstanceMeta> {
    store.instances(name, InstanceKind::Build).unwrap()
}

/// The first line the instance printed, parsed as a pid.
async fn first_line_pid(store: &Store, instance: u64) -> u32 {
    until("the first line", || {
        texts(store, instance, Window::Head(1))
            .first()
            .and_then(|l| l.trim().parse().ok())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_the_whole_group() {
    let env = env();
    let h = supervise(
        &env,
        spec(&env, "web", "sleep 300 & echo $!; wait"),
        timing(),
    );
    let st = h.start(Actor::Cli).await.unwrap();
    assert_eq!(st.state, State::Running);
    let pid = st.pid.unwrap();
    assert_eq!(st.pgid, Some(pid));
    let grandchild = first_line_pid(&env.store, st.instance.unwrap()).await;
    assert!(alive(pid) && alive(grandchild));

    // Starting what runs is a no-op.
    let again = h.start(Actor::Mcp).await.unwrap();
    assert_eq!(again.pid, Some(pid));

    let st = h.stop(Actor::Cli, false).await.unwrap();
    assert_eq!(st.state, State::Stopped);
    assert_eq!(st.pid, None);
    assert_eq!(
        st.last_exit,
        Some(ExitStatus::Signal(Signal::SIGTERM as i32))
    );
    assert_eq!(st.crash_count, 0);
    assert!(!alive(pid), "leader survived the stop");
    assert!(!alive(grandchild), "grandchild survived the stop");
    let meta = env.store.instance(st.instance.unwrap()).unwrap();
    assert_eq!(meta.exit, Some(ExitStatus::Signal(Signal::SIGTERM as i32)));
    until_event(&env.store, "web", |e| {
        matches!(e, EventKind::StopRequested { by: Actor::Cli })
    })
    .await;
    // A stop is never a crash.
    assert!(
        !events(&env.store, "web")
            .iter()
            .any(|e| matches!(e, EventKind::CrashDetected { .. }))
    );
    assert_eq!(runs(&env.store, "web"), 1);
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_what_ignores_sigterm_after_the_timeout() {
    let env = env();
    let mut s = spec(
        &env,
        "stubborn",
        r#"trap "" TERM; echo ready; while :; do sleep 0.05; done"#,
    );
    s.stop_timeout = Duration::from_millis(300);
    let h = supervise(&env, s, timing());
    let st = h.start(Actor::Cli).await.unwrap();
    let pid = st.pid.unwrap();
    let instance = st.instance.unwrap();
    until("ready", || {
        texts(&env.store, instance, Window::Head(1)) == ["ready"]
    })
    .await;
    let started = Instant::now();
    let st = h.stop(Actor::Cli, false).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        st.last_exit,
        Some(ExitStatus::Signal(Signal::SIGKILL as i32))
    );
    assert!(!alive(pid));
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_stop_kills_at_once() {
    let env = env();
    let mut s = spec(
        &env,
        "stubborn",
        r#"trap "" TERM; while :; do sleep 0.05; done"#,
    );
    s.stop_timeout = Duration::from_secs(20);
    let h = supervise(&env, s, timing());
    let pid = h.start(Actor::Cli).await.unwrap().pid.unwrap();
    let started = Instant::now();
    let st = h.stop(Actor::Cli, true).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        st.last_exit,
        Some(ExitStatus::Signal(Signal::SIGKILL as i32))
    );
    assert!(!alive(pid));
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_then_exit_loses_no_line() {
    let env = env();
    let mut s = spec(&env, "flood", "seq 1 200000; exit 3");
    s.restart = RestartPolicy::Never;
    let h = supervise(&env, s, timing());
    h.start(Actor::Cli).await.unwrap();
    let st = until_status(&h, "the exit", |s| matches!(s.state, State::Exited { .. })).await;
    assert_eq!(
        st.state,
        State::Exited {
            status: ExitStatus::Code(3)
        }
    );
    let id = st.instance.unwrap();
    let meta = env.store.instance(id).unwrap();
    assert_eq!(meta.exit, Some(ExitStatus::Code(3)));
    assert_eq!(meta.next_seq, 200_000);
    assert_eq!(meta.dropped_lines, 0);
    assert_eq!(texts(&env.store, id, Window::Tail(1)), ["200000"]);
    assert_eq!(texts(&env.store, id, Window::Head(1)), ["1"]);
    until_event(&env.store, "flood", |e| {
        matches!(
            e,
            EventKind::Exited {
                status: ExitStatus::Code(3),
                ..
            }
        )
    })
    .await;
    // `never`: no restart.
    assert_eq!(st.restarts, 0);
    assert_eq!(runs(&env.store, "flood"), 1);
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_is_restarted_after_a_backoff() {
    let env = env();
    let h = supervise(&env, spec(&env, "crashy", "echo start; exit 1"), timing());
    h.start(Actor::Cli).await.unwrap();
    let st = until_status(&h, "three crashes", |s| s.crash_count >= 3).await;
    assert!(st.restarts >= 2, "{st:?}");
    until("three run instances", || runs(&env.store, "crashy") >= 3).await;
    until_event(&env.store, "crashy", |e| {
        matches!(
            e,
            EventKind::CrashDetected {
                status: ExitStatus::Code(1),
                crash_count: 2
            }
        )
    })
    .await;
    until_event(&env.store, "crashy", |e| {
        matches!(
            e,
            EventKind::RestartRequested {
                by: Actor::CrashPolicy
            }
        )
    })
    .await;
    // Release backoff: 50 ms, 75 ms, 112.5 ms, ... capped at 200 ms.
    let waits: Vec<f64> = events(&env.store, "crashy")
        .iter()
        .filter_map(|e| match e {
            EventKind::BackoffWait { seconds } => Some(*seconds),
            _ => None,
        })
        .collect();
    assert!(waits.len() >= 2, "{waits:?}");
    assert!((waits[0] - 0.05).abs() < 1e-9, "{waits:?}");
    assert!((waits[1] - 0.075).abs() < 1e-9, "{waits:?}");
    assert!(waits.iter().all(|&w| w <= 0.2 + 1e-9), "{waits:?}");
    // Each run's output is there.
    for meta in env.store.instances("crashy", InstanceKind::Run).unwrap() {
        if meta.exit.is_some() {
            assert_eq!(texts(&env.store, meta.id, Window::Tail(10)), ["start"]);
        }
    }
    let st = h.stop(Actor::Cli, false).await.unwrap();
    assert_eq!(st.state, State::Stopped);
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_waits_the_fixed_crash_wait() {
    let env = env();
    env._mode.send_replace(Mode::Dev);
    let mut t = timing();
    t.dev_crash_wait = Duration::from_millis(70);
    let h = supervise(&env, spec(&env, "dev", "exit 2"), t);
    h.start(Actor::Cli).await.unwrap();
    until_status(&h, "two crashes", |s| s.crash_count >= 2).await;
    let waits: Vec<f64> = events(&env.store, "dev")
        .iter()
        .filter_map(|e| match e {
            EventKind::BackoffWait { seconds } => Some(*seconds),
            _ => None,
        })
        .collect();
    assert!(waits.iter().all(|&w| (w - 0.07).abs() < 1e-9), "{waits:?}");
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_does_not_restart_and_on_failure_not_after_success() {
    let env = env();
    let mut s = spec(&env, "once", "echo start; exit 1");
    s.restart = RestartPolicy::Never;
    let never = supervise(&env, s, timing());
    let ok = supervise(&env, spec(&env, "fine", "exit 0"), timing());
    never.start(Actor::Cli).await.unwrap();
    ok.start(Actor::Cli).await.unwrap();
    let st = until_status(&never, "the exit", |s| {
        matches!(s.state, State::Exited { .. })
    })
    .await;
    assert_eq!(st.last_exit, Some(ExitStatus::Code(1)));
    assert_eq!((st.crash_count, st.restarts), (0, 0));
    let st = until_status(&ok, "the exit", |s| matches!(s.state, State::Exited { .. })).await;
    assert_eq!(st.last_exit, Some(ExitStatus::Code(0)));
    assert_eq!((st.crash_count, st.restarts), (0, 0));
    // Exited is final: no backoff is pending. Starting again works.
    let st = never.start(Actor::Cli).await.unwrap();
    assert!(st.pid.is_some() || matches!(st.state, State::Exited { .. }));
    until("a second run", || runs(&env.store, "once") == 2).await;
    assert_eq!(runs(&env.store, "fine"), 1);
    assert!(
        !events(&env.store, "once")
            .iter()
            .any(|e| matches!(e, EventKind::CrashDetected { .. }))
    );
    finish(env, &[&never, &ok]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_backoff_cancels_the_restart() {
    let env = env();
    let mut t = timing();
    t.backoff_initial = Duration::from_millis(400);
    t.backoff_max = Duration::from_millis(400);
    let h = supervise(&env, spec(&env, "crashy", "exit 1"), t);
    h.start(Actor::Cli).await.unwrap();
    until_status(&h, "the backoff", |s| {
        matches!(s.state, State::Backoff { .. })
    })
    .await;
    let st = h.stop(Actor::Cli, false).await.unwrap();
    assert_eq!(st.state, State::Stopped);
    // Past the time the restart was due: nothing was started. (This sleep is the test:
    // that nothing happens in it; there is no event to wait for.)
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(h.status().await.state, State::Stopped);
    assert_eq!(runs(&env.store, "crashy"), 1);
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_during_backoff_acts_at_once() {
    let env = env();
    let mut t = timing();
    t.backoff_initial = Duration::from_secs(600);
    t.backoff_max = Duration::from_secs(600);
    let h = supervise(&env, spec(&env, "crashy", "sleep 0.2; exit 1"), t);
    h.start(Actor::Cli).await.unwrap();
    until_status(&h, "the backoff", |s| {
        matches!(s.state, State::Backoff { .. })
    })
    .await;
    let asked = Instant::now();
    let st = h.restart(Actor::Mcp).await.unwrap();
    assert!(asked.elapsed() < Duration::from_secs(10));
    assert_eq!(st.state, State::Running);
    assert_eq!(st.restarts, 1);
    until_runs(&env.store, "crashy", 2).await;
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stable_run_resets_the_crash_count() {
    let env = env();
    let mut t = timing();
    t.stable_run = Duration::ZERO;
    let h = supervise(&env, spec(&env, "crashy", "exit 1"), t);
    h.start(Actor::Cli).await.unwrap();
    let st = until_status(&h, "three restarts", |s| s.restarts >= 3).await;
    assert_eq!(st.crash_count, 1);
    assert!(events(&env.store, "crashy").iter().all(|e| !matches!(
        e,
        EventKind::CrashDetected { crash_count, .. } if *crash_count != 1
    )));
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_restart_is_not_a_crash() {
    let env = env();
    let h = supervise(&env, spec(&env, "web", "sleep 300"), timing());
    let first = h.start(Actor::Cli).await.unwrap();
    let st = h.restart(Actor::Mcp).await.unwrap();
    assert_ne!(st.pid, first.pid);
    assert!(!alive(first.pid.unwrap()));
    assert_eq!(st.state, State::Running);
    assert_eq!((st.restarts, st.crash_count), (1, 0));
    let st = h.restart(Actor::Tui).await.unwrap();
    assert_eq!((st.restarts, st.crash_count), (2, 0));
    until_runs(&env.store, "web", 3).await;
    until_event(&env.store, "web", |e| {
        matches!(e, EventKind::RestartRequested { by: Actor::Tui })
    })
    .await;
    assert!(!events(&env.store, "web").iter().any(|e| matches!(
        e,
        EventKind::CrashDetected { .. } | EventKind::BackoffWait { .. }
    )));
    finish(env, &[&h]).await;
}

/// A build that fails while a file named `fail` exists in the working directory.
fn build_script() -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        r#"echo "   Compiling web"
           if [ -f fail ]; then
             echo "error[E0308]: mismatched types" >&2
             echo "  --> src/main.rs:3:5" >&2
             echo "error: could not compile web" >&2
             exit 101
           fi
           echo built"#
            .into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_then_swap() {
    let env = env();
    let mut s = spec(&env, "web", "echo serving; sleep 300");
    s.build = Some(build_script());
    let h = supervise(&env, s, timing());

    // Start builds first.
    let first = h.start(Actor::Cli).await.unwrap();
    let old_pid = first.pid.unwrap();
    assert_eq!(builds(&env.store, "web").len(), 1);

    // A failed build leaves the old instance running.
    std::fs::write(env.dir.path().join("fail"), "").unwrap();
    let err = h.restart(Actor::Mcp).await.unwrap_err();
    let ProcessError::BuildFailed {
        code, first_errors, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(*code, Some(101));
    assert_eq!(
        first_errors,
        &[
            "error[E0308]: mismatched types",
            "error: could not compile web"
        ]
    );
    let st = h.status().await;
    assert_eq!(st.pid, Some(old_pid));
    assert_eq!(st.state, State::Running);
    assert!(!st.building);
    assert!(alive(old_pid));
    let b = builds(&env.store, "web");
    assert_eq!(b.len(), 2);
    assert_eq!(b[1].exit, Some(ExitStatus::Code(101)));
    until_event(&env.store, "web", |e| {
        matches!(e, EventKind::BuildFinished { ok: false, .. })
    })
    .await;

    // A successful build swaps.
    std::fs::remove_file(env.dir.path().join("fail")).unwrap();
    let st = h.restart(Actor::Mcp).await.unwrap();
    let new_pid = st.pid.unwrap();
    assert_ne!(new_pid, old_pid);
    assert!(!alive(old_pid));
    assert_eq!((st.restarts, st.crash_count), (1, 0));
    let b = builds(&env.store, "web");
    assert_eq!(b.len(), 3);
    assert_eq!(b[2].exit, Some(ExitStatus::Code(0)));
    assert_eq!(texts(&env.store, b[2].id, Window::Tail(1)), ["built"]);
    until_runs(&env.store, "web", 2).await;
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_a_build_cancels_it() {
    let env = env();
    let mut s = spec(&env, "web", "sleep 300");
    s.build = Some(vec!["sh".into(), "-c".into(), "echo $$; sleep 300".into()]);
    let h = supervise(&env, s, timing());
    let h2 = h.clone();
    let start = tokio::spawn(async move { h2.start(Actor::Cli).await });
    let st = until_status(&h, "the build", |s| s.state == State::Building).await;
    assert!(st.building);
    let build = until("the build instance", || builds(&env.store, "web").pop()).await;
    let build_pid = first_line_pid(&env.store, build.id).await;
    let st = h.stop(Actor::Cli, false).await.unwrap();
    assert_eq!(st.state, State::Stopped);
    assert!(!alive(build_pid));
    assert!(matches!(
        start.await.unwrap(),
        Err(ProcessError::Cancelled { .. })
    ));
    assert_eq!(runs(&env.store, "web"), 0);
    finish(env, &[&h]).await;
}

fn ready(check: ReadyCheck) -> Option<Ready> {
    Some(Ready::new(check))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_by_log_line() {
    let env = env();
    let mut s = spec(&env, "web", "sleep 0.2; echo listening on 1234; sleep 30");
    s.ready = ready(ReadyCheck::Log {
        pattern: r"listening on \d+".into(),
    });
    let h = supervise(&env, s, timing());
    let st = h.start(Actor::Cli).await.unwrap();
    assert_eq!(st.state, State::Starting);
    assert_eq!(st.ready, Some(false));
    assert_eq!(
        h.wait_ready(DEADLINE, Duration::ZERO).await,
        ReadyOutcome::Ready
    );
    let st = h.status().await;
    assert_eq!(st.state, State::Ready);
    assert_eq!(st.ready, Some(true));
    until_event(&env.store, "web", |e| matches!(e, EventKind::Ready)).await;
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_by_tcp_port() {
    let env = env();
    // A free port, which the child itself starts listening on a moment after it starts.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = format!(
        "exec python3 -c 'import socket, time; time.sleep(0.3); s = socket.socket(); s.bind((\"127.0.0.1\", {port})); s.listen(); time.sleep(30)'"
    );
    let mut s = spec(&env, "db", &script);
    s.ready = ready(ReadyCheck::Tcp { port });
    let h = supervise(&env, s, timing());
    let started = h.start(Actor::Cli).await.unwrap();
    assert_eq!(started.state, State::Starting);
    assert_eq!(
        h.wait_ready(DEADLINE, Duration::ZERO).await,
        ReadyOutcome::Ready
    );
    assert_eq!(h.status().await.state, State::Ready);
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_by_http_get() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = env();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut n = 0;
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            n += 1;
            // Not ready at first: 503, then a redirect (3xx counts as ready).
            let status = if n < 3 {
                "503 Unavailable"
            } else {
                "302 Found"
            };
            let _ = s
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await;
        }
    });
    let mut s = spec(&env, "api", "sleep 30");
    s.ready = ready(ReadyCheck::Http {
        url: format!("http://127.0.0.1:{port}/health"),
    });
    let h = supervise(&env, s, timing());
    h.start(Actor::Cli).await.unwrap();
    assert_eq!(
        h.wait_ready(DEADLINE, Duration::ZERO).await,
        ReadyOutcome::Ready
    );
    server.abort();
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_start_is_not_a_failure() {
    let env = env();
    let mut s = spec(&env, "slow", "sleep 30");
    s.ready = ready(ReadyCheck::Log {
        pattern: "never printed".into(),
    });
    let h = supervise(&env, s, timing());
    let pid = h.start(Actor::Cli).await.unwrap().pid.unwrap();
    assert_eq!(
        h.wait_ready(Duration::from_millis(300), Duration::ZERO)
            .await,
        ReadyOutcome::Slow
    );
    let st = h.status().await;
    assert_eq!(st.state, State::Starting);
    assert_eq!(st.pid, Some(pid));
    assert!(alive(pid));
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ready_reports_an_exit_with_its_errors() {
    let env = env();
    let mut s = spec(
        &env,
        "bad",
        "echo booting; sleep 0.1; echo 'Error: cannot find module x' >&2; exit 2",
    );
    s.ready = ready(ReadyCheck::Log {
        pattern: "never printed".into(),
    });
    let h = supervise(&env, s, timing());
    h.start(Actor::Cli).await.unwrap();
    match h.wait_ready(DEADLINE, Duration::ZERO).await {
        ReadyOutcome::Exited {
            status,
            first_error_lines,
        } => {
            assert_eq!(status, ExitStatus::Code(2));
            assert_eq!(first_error_lines, ["Error: cannot find module x"]);
        }
        other => panic!("{other:?}"),
    }
    h.stop(Actor::Cli, false).await.unwrap();
    assert_eq!(
        h.wait_ready(DEADLINE, Duration::ZERO).await,
        ReadyOutcome::NotRunning
    );
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_conflict_names_the_holder() {
    let env = env();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut s = spec(
        &env,
        "web",
        &format!("echo 'Error: listen EADDRINUSE: address already in use :::{port}' >&2; exit 1"),
    );
    s.restart = RestartPolicy::Never;
    let h = supervise(&env, s, timing());
    h.start(Actor::Cli).await.unwrap();
    let ev = until_event(&env.store, "web", |e| {
        matches!(e, EventKind::PortConflict { .. })
    })
    .await;
    let EventKind::PortConflict { port: p, holder } = ev else {
        unreachable!()
    };
    assert_eq!(p, port);
    let holder = holder.expect("the holder is this test");
    assert!(
        holder.starts_with(&format!("pid {}: ", std::process::id())),
        "{holder}"
    );
    let st = h.status().await;
    assert!(st.last_error.unwrap().contains(&port.to_string()));
    drop(listener);
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_fails_to_start() {
    let env = env();
    let mut s = spec(&env, "nope", "");
    s.argv = vec!["bpm-test-no-such-program-x7q".into()];
    let h = supervise(&env, s, timing());
    let err = h.start(Actor::Cli).await.unwrap_err();
    assert!(matches!(err, ProcessError::Spawn { .. }), "{err:?}");
    let st = h.status().await;
    assert!(matches!(st.state, State::Failed { .. }), "{st:?}");
    assert!(matches!(
        h.wait_ready(DEADLINE, Duration::ZERO).await,
        ReadyOutcome::Failed { .. }
    ));
    finish(env, &[&h]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_process_and_ends_the_task() {
    let env = env();
    let h = supervise(&env, spec(&env, "web", "sleep 300"), timing());
    let pid = h.start(Actor::Cli).await.unwrap().pid.unwrap();
    h.shutdown().await;
    assert!(!alive(pid));
    assert!(matches!(
        h.start(Actor::Cli).await,
        Err(ProcessError::Gone { .. })
    ));
    finish(env, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_readiness_port_is_refused_naming_its_holder() {
    let env = env();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut s = spec(&env, "web", "echo should not run; sleep 30");
    s.ready = Some(Ready {
        timeout: Duration::from_secs(5),
        ..Ready::new(ReadyCheck::Tcp { port })
    });
    let h = supervise(&env, s, timing());
    let err = h.start(Actor::Cli).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "port {port} is already in use by pid {}",
            std::process::id()
        )) && msg.contains("(not managed by bpm)"),
        "{msg}"
    );
    assert_eq!(runs(&env.store, "web"), 0, "nothing was started");
    until_event(
        &env.store,
        "web",
        |e| matches!(e, EventKind::PortConflict { port: p, holder: Some(_) } if *p == port),
    )
    .await;
    drop(listener);
    finish(env, &[&h]).await;
}
