//! Rendering tests: each panel in each state drawn on ratatui's `TestBackend` and
//! compared with the committed text in `tests/snapshots/tui_*.txt`. After a deliberate
//! change, review the difference and run with `BPM_UPDATE_SNAPSHOTS=1` to accept it.

use std::path::Path;

use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::app::{App, Cmd, Conn, Msg, Notice};
use super::ui;
use crate::protocol::{
    EventReport, ExitStatus, FollowRecord, InstanceKind, InstanceNumber, InstanceSummary, LogLine,
    Mode, ProcessReport, State, Status, StatusReport, Stream,
};

/// 2026-01-01T12:00:00Z.
const NOW_MS: i64 = 1_767_268_800_000;

fn proc(name: &str, state: State) -> ProcessReport {
    let running = state.is_running();
    ProcessReport {
        status: Status {
            name: name.into(),
            state,
            pid: running.then_some(4242),
            pgid: running.then_some(4242),
            started_at: running.then_some(NOW_MS - 185_000),
            restarts: 2,
            crash_count: 0,
            last_exit: Some(ExitStatus::Signal(15)),
            instance: Some(7),
            ready: running.then_some(true),
            building: false,
            last_error: None,
        },
        argv: vec!["npm".into(), "run".into(), "dev".into()],
        cwd: "/src/app".into(),
        runtime: false,
        uptime_seconds: running.then_some(185.0),
        run_instances: 3,
        run_number: Some(3),
        build_instances: 1,
        ports: if running { vec![5173] } else { Vec::new() },
        url: running.then(|| "http://localhost:5173/".into()),
        recent_events: vec![
            EventReport {
                at: "2026-01-01T11:56:54.000Z".into(),
                instance: Some(6),
                of: Some(InstanceNumber {
                    kind: InstanceKind::Run,
                    number: 6,
                }),
                what: "exited (killed by signal 15) after 2m".into(),
            },
            EventReport {
                at: "2026-01-01T11:56:55.000Z".into(),
                instance: Some(7),
                of: Some(InstanceNumber {
                    kind: InstanceKind::Run,
                    number: 7,
                }),
                what: "spawned pid 4242: npm run dev".into(),
            },
        ],
    }
}

fn report(procs: Vec<ProcessReport>) -> StatusReport {
    StatusReport {
        mode: Mode::Dev,
        daemon_pid: 100,
        daemon_uptime_seconds: 3700.0,
        agent_idle_seconds: 42.0,
        store: Default::default(),
        processes: procs,
    }
}

fn summary(id: u64, exit: Option<ExitStatus>, lines: u64) -> InstanceSummary {
    InstanceSummary {
        number: id,
        id,
        kind: InstanceKind::Run,
        started: "2026-01-01T11:56:55.000Z".into(),
        ended: exit.as_ref().map(|_| "2026-01-01T11:58:00.000Z".into()),
        exit,
        pid: Some(4242),
        lines,
        dropped: 0,
    }
}

fn line(seq: u64, stream: Stream, text: &str) -> LogLine {
    LogLine {
        process: None,
        instance: 7,
        seq,
        ts: format!("2026-01-01T11:57:{:02}.{:03}Z", seq % 60, seq % 1000),
        ts_us: 0,
        stream,
        matched: false,
        continuation: false,
        text: text.into(),
    }
}

fn online(procs: Vec<ProcessReport>) -> App {
    let mut app = App::new(false);
    app.now_ms = NOW_MS;
    app.height = ui::output_height(100, 30);
    app.update(Msg::Conn(Conn::Online {
        address: "/data/bpm.sock".into(),
    }));
    app.update(Msg::Status(report(procs)));
    app
}

/// The selected process's instances and some lines through the follow stream.
fn with_lines(app: &mut App, lines: Vec<LogLine>) {
    let epoch = app.out.epoch;
    app.update(Msg::Instances {
        epoch,
        runs: vec![
            summary(5, Some(ExitStatus::Code(1)), 10),
            summary(6, Some(ExitStatus::Signal(15)), 10),
            summary(7, None, lines.len() as u64),
        ],
        builds: vec![],
    });
    let mut records = vec![FollowRecord::Instance {
        process: "web".into(),
        instance: 7,
        number: 7,
        pid: Some(4242),
        started: "2026-01-01T11:56:55.000Z".into(),
        started_us: 0,
        switch: false,
        ended_us: None,
        exit: None,
    }];
    records.extend(lines.into_iter().map(FollowRecord::Line));
    app.update(Msg::Follow { epoch, records });
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| ui::draw(f, app)).unwrap();
    let buf = term.backend().buffer();
    let mut out = String::new();
    for y in 0..h {
        let mut row = String::new();
        for x in 0..w {
            row.push_str(buf[(x, y)].symbol());
        }
        out.push_str(row.trim_end());
        out.push('\n');
    }
    out
}

#[track_caller]
fn check(name: &str, screen: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("tui_{name}.txt"));
    if std::env::var_os("BPM_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, screen).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == screen,
        "the {name} screen changed; review it and run with BPM_UPDATE_SNAPSHOTS=1 to accept it:\n{screen}"
    );
}

fn web_lines() -> Vec<LogLine> {
    let mut v: Vec<LogLine> = (0..40)
        .map(|i| line(i, Stream::Stdout, &format!("GET /api/items/{i} 200 3ms")))
        .collect();
    v.push(line(
        40,
        Stream::Stderr,
        "warning: \x1b[33mslow query\x1b[0m (812ms)",
    ));
    v.push(line(
        41,
        Stream::Stdout,
        "\x1b[32mready\x1b[0m on http://127.0.0.1:5173",
    ));
    v
}

#[test]
fn running() {
    let mut app = online(vec![
        proc("web", State::Running),
        proc("api", State::Ready),
        proc("worker", State::Stopped),
    ]);
    with_lines(&mut app, web_lines());
    app.notice = Some(Notice {
        text: "restarted web (pid 4242): running; ready".into(),
        error: false,
    });
    check("running", &render(&app, 100, 30));
    // Timestamps, a search with its matches, and the focus on the output.
    app.timestamps = true;
    app.key(key('/'));
    for c in "items/3".chars() {
        app.key(key(c));
    }
    app.key(code(ratatui::crossterm::event::KeyCode::Enter));
    let epoch = app.out.epoch;
    app.update(Msg::Counted { epoch, matched: 11 });
    app.update(Msg::Found {
        epoch,
        seq: Some(36),
        wrapped: false,
    });
    check("search", &render(&app, 100, 30));
}

#[test]
fn filter() {
    let mut app = online(vec![proc("web", State::Running), proc("api", State::Ready)]);
    with_lines(&mut app, web_lines());
    app.key(key('&'));
    for c in "items/3".chars() {
        app.key(key(c));
    }
    let cmds = app.key(code(ratatui::crossterm::event::KeyCode::Enter));
    let Some(Cmd::Filter { generation, .. }) =
        cmds.into_iter().find(|c| matches!(c, Cmd::Filter { .. }))
    else {
        panic!("a filter read")
    };
    let epoch = app.out.epoch;
    check("filter_loading", &render(&app, 80, 24));
    let matches = |seqs: std::ops::Range<u64>| -> Vec<LogLine> {
        seqs.map(|i| line(i, Stream::Stdout, &format!("GET /api/items/{i} 200 3ms")))
            .collect()
    };
    app.update(Msg::Filtered {
        epoch,
        generation,
        lines: matches(30..40),
        matched: 10,
    });
    // A match printed since: it scrolls in.
    app.update(Msg::FilterFollow {
        epoch,
        generation,
        records: vec![FollowRecord::Line(line(
            57,
            Stream::Stderr,
            "GET /api/items/3 500 \x1b[31mfailed\x1b[0m",
        ))],
    });
    check("filter", &render(&app, 100, 30));
}

#[test]
fn crashed() {
    let mut web = proc(
        "web",
        State::Exited {
            status: ExitStatus::Code(101),
        },
    );
    web.status.crash_count = 3;
    web.status.last_exit = Some(ExitStatus::Code(101));
    web.status.last_error = Some("exited with exit code 101 before it was ready".into());
    let api = proc(
        "api",
        State::Backoff {
            until_unix_ms: NOW_MS + 4_200,
        },
    );
    let mut app = online(vec![
        web,
        api,
        proc(
            "db",
            State::Failed {
                error: "no such file".into(),
            },
        ),
    ]);
    with_lines(
        &mut app,
        vec![
            line(0, Stream::Stdout, "Compiling web v0.1.0"),
            line(
                1,
                Stream::Stderr,
                "thread 'main' panicked at src/main.rs:12:5:",
            ),
            line(
                2,
                Stream::Stderr,
                "called `Result::unwrap()` on an `Err` value",
            ),
        ],
    );
    let epoch = app.out.epoch;
    app.update(Msg::Follow {
        epoch,
        records: vec![FollowRecord::Exit {
            instance: 7,
            status: ExitStatus::Code(101),
            restarted: false,
        }],
    });
    check("crashed", &render(&app, 100, 30));
}

#[test]
fn building() {
    let mut web = proc("web", State::Building);
    web.status.pid = None;
    let mut api = proc("api", State::Running);
    api.status.building = true;
    let mut app = online(vec![web, api]);
    app.busy = Some("restarting web".into());
    with_lines(&mut app, vec![]);
    check("building", &render(&app, 100, 30));
}

#[test]
fn disconnected_offline_and_empty() {
    let mut app = online(vec![proc("web", State::Running)]);
    with_lines(&mut app, web_lines());
    app.update(Msg::Conn(Conn::Offline {
        store: "/data/logs.redb".into(),
        lost: true,
    }));
    let mut stopped = proc(
        "web",
        State::Exited {
            status: ExitStatus::Unknown,
        },
    );
    stopped.uptime_seconds = None;
    app.update(Msg::Status(StatusReport {
        processes: vec![stopped],
        ..StatusReport::empty()
    }));
    let epoch = app.out.epoch;
    app.update(Msg::Instances {
        epoch,
        runs: vec![summary(7, Some(ExitStatus::Unknown), 42)],
        builds: vec![],
    });
    app.update(Msg::Lines {
        epoch,
        range: None,
        lines: web_lines(),
    });
    check("offline", &render(&app, 100, 30));

    let mut app = App::new(false);
    app.update(Msg::Conn(Conn::Disconnected {
        address: "http://10.0.0.5:8947".into(),
        error: "no daemon answers".into(),
    }));
    app.update(Msg::Status(StatusReport::empty()));
    check("disconnected", &render(&app, 100, 30));

    let app = online(vec![]);
    check("empty", &render(&app, 100, 30));
}

#[test]
fn help_overlay() {
    let mut app = online(vec![proc("web", State::Running)]);
    app.key(key('?'));
    check("help", &render(&app, 100, 30));
}

#[test]
fn tiny_terminals_and_long_lines_never_panic() {
    let mut app = online(vec![proc(
        "a-very-long-process-name-indeed",
        State::Running,
    )]);
    let long = "x".repeat(100_000);
    with_lines(
        &mut app,
        vec![
            line(0, Stream::Stdout, &long),
            line(1, Stream::Stderr, &format!("\x1b[31m{long}")),
            line(
                2,
                Stream::Stdout,
                "日本語のテキスト\twith tabs\r\x1b[2Kprogress 100%",
            ),
        ],
    );
    app.help = true;
    for (w, h) in [
        (80, 24),
        (60, 15),
        (30, 8),
        (10, 3),
        (1, 1),
        (0, 0),
        (200, 2),
    ] {
        app.height = ui::output_height(w, h);
        render(&app, w, h);
    }
    app.help = false;
    check("small", &render(&app, 80, 24));
}

fn key(c: char) -> ratatui::crossterm::event::KeyEvent {
    code(ratatui::crossterm::event::KeyCode::Char(c))
}

fn code(c: ratatui::crossterm::event::KeyCode) -> ratatui::crossterm::event::KeyEvent {
    ratatui::crossterm::event::KeyEvent::new(c, ratatui::crossterm::event::KeyModifiers::NONE)
}
