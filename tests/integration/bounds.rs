//! Bounded resources: the daemon keeps answering (and its memory stays flat) under
//! floods of connections, huge requests, bad numbers and huge reads.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::daemon::{Dirs, InProcess, Served, options};
use crate::helpers::{DEADLINE, wait_for};

/// `Max open files` of a process: (soft, hard).
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().to_owned(), f.next().unwrap().to_owned())
}

/// Make sure this test process may hold `n` more descriptors (raising its own soft limit
/// towards the hard one only).
fn room_for(n: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = (n + 512).min(hard);
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    }
}

/// 1,100 idle TCP connections to a daemon limited to 1,024 open files: the daemon raises
/// its soft limit, holds only its cap of them (the last ones are told 503 and closed),
/// the local socket keeps answering, and TCP answers again once they are gone.
#[test]
fn a_flood_of_idle_connections_leaves_the_socket_answering() {
    let dirs = Dirs::new();
    let daemon = Served::start_with_nofile(&dirs, 256, 1024);
    let api = daemon.api();
    assert_eq!(
        nofile(daemon.pid()),
        ("1024".to_owned(), "1024".to_owned()),
        "the soft limit is raised to the hard one"
    );
    room_for(1100);
    let conns: Vec<TcpStream> = (0..1100)
        .map(|i| {
            TcpStream::connect(("127.0.0.1", api.port))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    // The last connection is over the cap: it is told so and closed.
    let mut last = conns.last().unwrap().try_clone().unwrap();
    last.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut refusal = String::new();
    last.read_to_string(&mut refusal).unwrap();
    assert!(
        refusal.starts_with("HTTP/1.1 503") && refusal.contains("too many connections"),
        "{refusal}"
    );
    // The local socket answers meanwhile (the real CLI, no autostart).
    let out = dirs
        .bpm(&["status", "--json", "--no-autostart"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpm status over the socket: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["daemon_pid"], daemon.pid());
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .count();
    assert!(fds < 1024 - 128, "the daemon holds {fds} descriptors");
    drop(last);
    drop(conns);
    wait_for("TCP to answer again", || api.get("/api/mode").0 == 200);
}

/// A connection that sends no request (or only part of its head) is closed after the
/// idle timeout; a follow stream that stays quiet for longer is not cut.
#[test]
fn idle_connections_are_closed_but_quiet_answers_are_not() {
    let dirs = Dirs::new();
    let daemon = InProcess::start(bpm::daemon::Options {
        conn_idle: Some(Duration::from_millis(500)),
        ..options(&dirs)
    });
    let api = daemon.api();
    let (code, body) = api.post(
        "/api/start",
        Some(&json!({"name": "quiet", "command": ["sleep", "60"], "wait_seconds": 0})),
    );
    assert_eq!(code, 200, "{body}");

    let silent = TcpStream::connect(("127.0.0.1", api.port)).unwrap();
    let mut partial = TcpStream::connect(("127.0.0.1", api.port)).unwrap();
    partial
        .write_all(b"GET /api/mode HTTP/1.1\r\nHost: 127.0.0")
        .unwrap();
    let mut follow = TcpStream::connect(("127.0.0.1", api.port)).unwrap();
    follow
        .write_all(b"GET /api/follow/quiet HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    for (what, mut s) in [("silent", silent), ("partial", partial)] {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the {what} connection was closed only after {:?}",
            started.elapsed()
        );
    }
    // Well past the idle timeout: the follow stream still stands.
    std::thread::sleep(Duration::from_millis(1500));
    follow
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    loop {
        match follow.read(&mut buf) {
            Ok(0) => panic!(
                "the quiet follow stream was closed: {}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => panic!("the quiet follow stream failed: {e}"),
        }
    }
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(api.get("/api/mode").0, 200);
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} for pid {pid}"))
}

/// Start `seq 1 N` as the process `name` and wait until all its lines are stored.
fn seq_process(api: &crate::helpers::api::Api, name: &str, n: u64) {
    let (code, body) = api.post(
        "/api/start",
        Some(&json!({"name": name, "command": ["seq", "1", n.to_string()], "wait_seconds": 0})),
    );
    assert_eq!(code, 200, "{body}");
    wait_for(&format!("{name} to print {n} lines and end"), || {
        let (code, s) = api.get(&format!("/api/status/{name}"));
        code == 200 && s["processes"][0]["state"] != "running" && {
            let (_, l) = api.get(&format!("/api/logs/{name}?tail=1"));
            l["lines"][0]["text"].as_str() == Some(n.to_string().as_str())
        }
    });
    crate::helpers::daemon::flushed(api);
}

/// Eight huge (60 KiB) patterns at once: each a 400 that names the limit and shows only the
/// pattern's beginning, answered fast, and the daemon's memory stays flat.
#[test]
fn huge_patterns_are_refused_fast_without_echoing_them() {
    let dirs = Dirs::new();
    let daemon = Served::start(&dirs);
    let api = daemon.api();
    seq_process(&api, "numbers", 1000);
    let rss_before = vm_kib(daemon.pid(), "VmRSS");
    // Under hyper's limit on the length of a URI (64 KiB).
    let pattern = "a".repeat(60 * 1024);
    let started = Instant::now();
    let replies: Vec<crate::helpers::api::Reply> = std::thread::scope(|s| {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    crate::helpers::api::exchange(
                        api.port,
                        &crate::helpers::api::request(
                            "GET",
                            &format!("/api/logs/numbers?pattern={pattern}"),
                            "",
                            "",
                        ),
                    )
                })
            })
            .collect();
        tasks.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let took = started.elapsed();
    for r in &replies {
        assert_eq!(r.code, 400, "{}", &r.body[..r.body.len().min(300)]);
        let error = r.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains("at most 4096"), "{error}");
        assert!(
            error.len() < 300,
            "the error echoes the pattern: {} bytes",
            error.len()
        );
    }
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let rss_after = vm_kib(daemon.pid(), "VmRSS");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // A pattern that compiles too big is refused too, naming the problem.
    let (code, body) = api.get("/api/logs/numbers?pattern=%5Cw%7B1000%7D%5Cw%7B1000%7D");
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("bad regex"),
        "{body}"
    );
    assert_eq!(api.get("/api/mode").0, 200);
}

/// Negative, huge and non-numeric numbers anywhere in the API are a 400 naming the field
/// and its range, never a panic; the daemon answers after.
#[test]
fn bad_numbers_are_400s_naming_the_field() {
    let dirs = Dirs::new();
    let daemon = InProcess::start(options(&dirs));
    let api = daemon.api();
    seq_process(&api, "numbers", 10);
    for (query, field) in [
        ("head=-1", "head"),
        ("head=abc", "head"),
        ("tail=1e99", "tail"),
        ("tail=99999999999999999999999", "tail"),
        ("tail=5000000", "tail"),
        ("context=-3", "context"),
        ("context=18446744073709551615", "context"),
        ("around=5&context=18446744073709551615", "context"),
        ("index=abc", "index"),
        ("index=-9223372036854775808", "index"),
        ("around=-1", "around"),
        ("since_us=soon", "since_us"),
        ("until_us=1e300", "until_us"),
    ] {
        let (code, body) = api.get(&format!("/api/logs/numbers?{query}"));
        assert_eq!(code, 400, "{query}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(field) && error.contains(" from "),
            "{query}: {error}"
        );
    }
    for (query, field) in [
        ("tail=-1", "tail"),
        ("index=x", "index"),
        ("instance=-2", "instance"),
    ] {
        let (code, body) = api.get(&format!("/api/follow/numbers?{query}"));
        assert_eq!(code, 400, "follow {query}: {body}");
        assert!(body["error"].as_str().unwrap().contains(field), "{body}");
    }
    for (start, field) in [
        (
            json!({"command": ["true"], "wait_seconds": -1}),
            "wait_seconds",
        ),
        (
            json!({"command": ["true"], "wait_seconds": "soon"}),
            "wait_seconds",
        ),
        (
            json!({"command": ["true"], "wait_seconds": [1]}),
            "wait_seconds",
        ),
        (
            json!({"command": ["true"], "ready_port": 70000}),
            "ready_port",
        ),
        (json!({"command": ["true"], "ready_port": -1}), "ready_port"),
    ] {
        let (code, body) = api.post("/api/start", Some(&start));
        assert_eq!(code, 400, "{start}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(field),
            "{start}: {body}"
        );
    }
    let (code, body) = api.get("/api/logs/numbers?head=3");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["lines"].as_array().unwrap().len(), 3);
}

/// The peak RSS (`VmHWM`, KiB) of a process, sampled until it exits: the last sample
/// before it goes is its peak.
fn sample_peak(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        loop {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return peak;
            };
            let Some(hwm) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            else {
                // A zombie has no memory left to report.
                return peak;
            };
            peak = peak.max(hwm);
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// `bpm logs NAME` of a 2,000,000-line instance, through the real binary into a pipe:
/// every line arrives, in order, while the CLI's and the daemon's memory stay flat (the
/// read is streamed page by page; it used to be built whole: 2 GB in the CLI, +520 MB
/// in the daemon); then its last million lines (`--tail`), also streamed.
/// `benches/cli.rs` reports the exact figures.
#[test]
fn logs_of_two_million_lines_stream_in_bounded_memory() {
    use std::io::BufRead as _;
    const N: u64 = 2_000_000;
    const BOUND_KIB: u64 = 128 * 1024;
    let dirs = Dirs::new();
    let daemon = Served::start(&dirs);
    let api = daemon.api();
    seq_process(&api, "big", N);
    let mut child = dirs
        .bpm(&["logs", "big", "--no-autostart"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = crate::helpers::process::KillOnDrop::process(child.id());
    let cli_peak = sample_peak(child.id());
    let out = std::io::BufReader::with_capacity(1 << 16, child.stdout.take().unwrap());
    let mut next = 1u64;
    for line in out.lines() {
        let line = line.unwrap();
        assert_eq!(line, next.to_string(), "line {next}");
        next += 1;
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(next - 1, N, "every line arrives");
    let cli_kib = cli_peak.join().unwrap();

    // The longest tail there is (a million lines) streams too.
    let tail = bpm::protocol::MAX_LINES as u64;
    let mut child = dirs
        .bpm(&["logs", "big", "--no-autostart", "--tail", &tail.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = crate::helpers::process::KillOnDrop::process(child.id());
    let tail_peak = sample_peak(child.id());
    let out = std::io::BufReader::with_capacity(1 << 16, child.stdout.take().unwrap());
    let mut next = N - tail + 1;
    for line in out.lines() {
        let line = line.unwrap();
        assert_eq!(line, next.to_string(), "tail line {next}");
        next += 1;
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(next - 1, N, "the tail reaches the last line");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{} more lines not shown", N - tail)),
        "{err}"
    );
    let tail_kib = tail_peak.join().unwrap();
    assert!(
        tail_kib > 0 && tail_kib < BOUND_KIB,
        "CLI peak for the tail {tail_kib} KiB"
    );
    let daemon_kib = vm_kib(daemon.pid(), "VmHWM");
    eprintln!("peak RSS: CLI {cli_kib} KiB, daemon {daemon_kib} KiB");
    assert!(cli_kib > 0 && cli_kib < BOUND_KIB, "CLI peak {cli_kib} KiB");
    assert!(daemon_kib < BOUND_KIB, "daemon peak {daemon_kib} KiB");
}

/// Send `GET path` (NDJSON accepted) over TCP and read the answer's head, and nothing
/// more: the body is left to the caller (or unread, a client slower than the daemon).
fn open_ndjson(port: u16, path: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/x-ndjson\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "the answer's head ended early ({other:?}): {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    (s, String::from_utf8(head).unwrap())
}

/// Open a follow stream of `name`.
fn open_follow(port: u16, name: &str) -> (TcpStream, String) {
    open_ndjson(port, &format!("/api/follow/{name}?tail=0"))
}

/// At most `MAX_FOLLOWERS` follow streams are open at once: one more is a 503 that says
/// why and what to do. A quiet stream sends an empty line every heartbeat; when its client
/// goes away, the failing heartbeat ends it and frees its place.
#[test]
fn follow_streams_are_capped_and_a_gone_client_frees_its_place() {
    let dirs = Dirs::new();
    let daemon = InProcess::start(bpm::daemon::Options {
        follow_heartbeat: Some(Duration::from_millis(200)),
        ..options(&dirs)
    });
    let api = daemon.api();
    let (code, body) = api.post(
        "/api/start",
        Some(&json!({"name": "quiet", "command": ["sleep", "60"], "wait_seconds": 0})),
    );
    assert_eq!(code, 200, "{body}");
    let max = bpm::daemon::ops::MAX_FOLLOWERS;
    let mut open: Vec<TcpStream> = (0..max)
        .map(|i| {
            let (s, head) = open_follow(api.port, "quiet");
            assert!(head.starts_with("HTTP/1.1 200"), "follower {i}: {head}");
            s
        })
        .collect();
    let (mut refused, head) = open_follow(api.port, "quiet");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let mut body = String::new();
    refused.read_to_string(&mut body).unwrap();
    assert!(
        body.contains(&format!("{max} follow streams are open")) && body.contains("try again"),
        "{body}"
    );

    // A quiet stream's heartbeat: after its first record (the instance), empty lines.
    let first = &mut open[0];
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    wait_for("two heartbeats", || {
        let n = first
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{e}; got {:?}", String::from_utf8_lossy(&got)));
        got.extend_from_slice(&buf[..n]);
        String::from_utf8_lossy(&got)
            .matches("\r\n1\r\n\n\r\n")
            .count()
            >= 2
    });
    assert!(
        String::from_utf8_lossy(&got).contains("\"type\":\"instance\""),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // A client goes away without a word: its place is free again once a heartbeat fails.
    drop(open.pop());
    let (_again, head) = wait_for("a follow stream to be accepted again", || {
        let (s, head) = open_follow(api.port, "quiet");
        head.starts_with("HTTP/1.1 200").then_some((s, head))
    });
    assert!(head.contains("application/x-ndjson"), "{head}");
}

/// Open a streamed read of all of `name`'s lines.
fn open_stream(port: u16, name: &str) -> (TcpStream, String) {
    open_ndjson(port, &format!("/api/logs/{name}?all=true"))
}

/// At most `MAX_STREAMS` streamed log reads are served at once (each holds a thread while
/// its client reads): one more is a 503 that says why and what to do, and a client that
/// goes away gives its place back.
#[test]
fn streamed_reads_are_capped_and_a_gone_client_frees_its_place() {
    let dirs = Dirs::new();
    let daemon = InProcess::start(options(&dirs));
    let api = daemon.api();
    // Far more NDJSON than the socket buffers hold: a client that does not read stalls
    // its stream.
    seq_process(&api, "big", 500_000);
    let max = bpm::daemon::ops::MAX_STREAMS;
    let mut open: Vec<TcpStream> = (0..max)
        .map(|i| {
            let (s, head) = open_stream(api.port, "big");
            assert!(head.starts_with("HTTP/1.1 200"), "stream {i}: {head}");
            s
        })
        .collect();
    let (mut refused, head) = open_stream(api.port, "big");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let mut body = String::new();
    refused.read_to_string(&mut body).unwrap();
    assert!(
        body.contains(&format!("{max} log reads are streaming")) && body.contains("try again"),
        "{body}"
    );
    // Answers that are not streamed are still served.
    let (code, tail) = api.get("/api/logs/big?tail=1");
    assert_eq!(code, 200, "{tail}");
    assert_eq!(tail["lines"][0]["text"], "500000");

    // A client goes away: its read ends at its next page, and its place is free again.
    drop(open.pop());
    let (mut again, head) = wait_for("a streamed read to be accepted again", || {
        let (s, head) = open_stream(api.port, "big");
        head.starts_with("HTTP/1.1 200").then_some((s, head))
    });
    assert!(head.contains("application/x-ndjson"), "{head}");
    let mut first = [0u8; 64];
    let n = again.read(&mut first).unwrap();
    assert!(n > 0, "the new stream sends its records");
}
