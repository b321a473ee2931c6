//! The state's unit tests: keys and answers in, state and commands out.

use super::*;
use crate::protocol::{ExitStatus, Mode, State, Status, Stream};

pub fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn proc(name: &str, state: State) -> ProcessReport {
    ProcessReport {
        status: Status {
            name: name.into(),
            state,
            pid: Some(42),
            pgid: Some(42),
            started_at: None,
            restarts: 0,
            crash_count: 0,
            last_exit: None,
            instance: Some(1),
            ready: None,
            building: false,
            last_error: None,
        },
        argv: vec!["sleep".into(), "1".into()],
        cwd: "/".into(),
        runtime: true,
        uptime_seconds: Some(5.0),
        run_instances: 1,
        run_number: Some(1),
        build_instances: 0,
        ports: Vec::new(),
        url: None,
        recent_events: vec![],
    }
}

fn line(seq: u64) -> LogLine {
    LogLine {
        process: None,
        instance: 1,
        seq,
        ts: "2026-01-01T00:00:00.000Z".into(),
        ts_us: 0,
        stream: Stream::Stdout,
        matched: false,
        continuation: false,
        text: format!("line {seq}"),
    }
}

fn online_app() -> App {
    let mut app = App::new(false);
    app.height = 10;
    app.update(Msg::Conn(Conn::Online {
        address: "sock".into(),
    }));
    app
}

fn report(procs: Vec<ProcessReport>) -> StatusReport {
    StatusReport {
        mode: Mode::Dev,
        processes: procs,
        ..StatusReport::empty()
    }
}

#[test]
fn the_first_status_selects_and_follows_the_first_process() {
    let mut app = online_app();
    let cmds = app.update(Msg::Status(report(vec![
        proc("api", State::Running),
        proc("web", State::Running),
    ])));
    assert_eq!(app.selected.as_deref(), Some("api"));
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Cmd::Follow { name, .. } if name == "api"))
    );
    let cmds = app.key(key('j'));
    assert_eq!(app.selected.as_deref(), Some("web"));
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Cmd::Follow { name, .. } if name == "web"))
    );
    // At the end of the list, j does nothing.
    assert!(app.key(code(KeyCode::Down)).is_empty());
    app.key(key('k'));
    assert_eq!(app.selected.as_deref(), Some("api"));
}

#[test]
fn stop_asks_first_and_restart_does_not() {
    let mut app = online_app();
    app.update(Msg::Status(report(vec![proc("api", State::Running)])));
    assert!(app.key(key('s')).is_empty());
    assert_eq!(app.confirm.as_deref(), Some("api"));
    assert!(
        app.key(key('n')).is_empty(),
        "anything but y keeps it running"
    );
    app.key(key('s'));
    assert_eq!(app.key(key('y')), vec![Cmd::Stop("api".into())]);
    app.update(Msg::Done {
        text: "stopped".into(),
        error: false,
    });
    assert_eq!(app.key(key('r')), vec![Cmd::Restart("api".into())]);
    assert_eq!(app.busy.as_deref(), Some("restarting api"));
}

#[test]
fn offline_the_store_is_read_only() {
    let mut app = App::new(false);
    app.update(Msg::Conn(Conn::Offline {
        store: "s".into(),
        lost: false,
    }));
    app.update(Msg::Status(report(vec![proc("api", State::Stopped)])));
    assert!(app.key(key('r')).is_empty());
    assert!(app.notice.as_ref().unwrap().error);
}

#[test]
fn live_lines_stream_in_and_scrolling_back_reads_ranges() {
    let mut app = online_app();
    app.update(Msg::Status(report(vec![proc("api", State::Running)])));
    let epoch = app.out.epoch;
    let mut records = vec![FollowRecord::Instance {
        process: "api".into(),
        instance: 1,
        number: 1,
        pid: None,
        started: String::new(),
        started_us: 0,
        switch: false,
        ended_us: None,
        exit: None,
    }];
    records.extend((999_000..1_000_000).map(|s| FollowRecord::Line(line(s))));
    app.update(Msg::Follow { epoch, records });
    assert_eq!(app.out.end, 1_000_000);
    assert_eq!(app.out.visible(10), (999_990, 1_000_000));
    assert!(app.wants().is_none(), "the end is in memory");
    // The top of a million-line instance is read as a range, not the whole.
    app.key(key('g'));
    let Some(Cmd::Range { from, to, .. }) = app.wants() else {
        panic!("a range read")
    };
    assert_eq!((from, to), (0, 30));
    assert!(app.wants().is_none(), "asked once");
    app.update(Msg::Lines {
        epoch,
        range: Some((0, 30)),
        lines: (0..30).map(line).collect(),
    });
    assert_eq!(app.out.line(0).unwrap().text, "line 0");
    // Live lines keep coming while the top is shown; G goes back to them.
    app.update(Msg::Follow {
        epoch,
        records: vec![FollowRecord::Line(line(1_000_000))],
    });
    assert_eq!(app.out.end, 1_000_001);
    assert_eq!(app.out.visible(10), (0, 10));
    app.key(key('G'));
    assert!(app.out.follow);
    assert!(matches!(
        app.wants(),
        Some(Cmd::Range { to: 1_000_001, .. })
    ));
}

#[test]
fn the_window_in_memory_is_bounded() {
    let mut app = online_app();
    app.update(Msg::Status(report(vec![proc("api", State::Running)])));
    let epoch = app.out.epoch;
    for chunk in 0..10u64 {
        let records = (chunk * 10_000..(chunk + 1) * 10_000)
            .map(|s| FollowRecord::Line(line(s)))
            .collect();
        app.out.instance = Some(1);
        app.update(Msg::Follow { epoch, records });
    }
    assert!(app.out.lines.len() <= CACHE_LINES);
    assert_eq!(app.out.end, 100_000);
    assert_eq!(app.out.line(99_999).unwrap().seq, 99_999);
}

#[test]
fn a_restart_shows_the_new_instance() {
    let mut app = online_app();
    app.update(Msg::Status(report(vec![proc("api", State::Running)])));
    let epoch = app.out.epoch;
    let inst = |id, switch| FollowRecord::Instance {
        process: "api".into(),
        instance: id,
        number: id,
        pid: None,
        started: String::new(),
        started_us: 0,
        switch,
        ended_us: None,
        exit: None,
    };
    app.update(Msg::Follow {
        epoch,
        records: vec![inst(1, false), FollowRecord::Line(line(0))],
    });
    let mut l = line(0);
    l.instance = 2;
    l.text = "new".into();
    let cmds = app.update(Msg::Follow {
        epoch,
        records: vec![
            FollowRecord::Exit {
                instance: 1,
                status: ExitStatus::Signal(15),
                restarted: true,
            },
            inst(2, true),
            FollowRecord::Line(l),
        ],
    });
    assert_eq!(app.out.instance, Some(2));
    assert_eq!(app.out.epoch, epoch, "the same stream goes on");
    assert_eq!(app.out.line(0).unwrap().text, "new");
    assert!(cmds.iter().any(|c| matches!(c, Cmd::Instances { .. })));
}

#[test]
fn search_jumps_to_matches_and_filter_lists_them() {
    let mut app = online_app();
    app.update(Msg::Status(report(vec![proc("api", State::Running)])));
    app.out.instance = Some(1);
    app.out.end = 1000;
    app.key(key('/'));
    for c in "boot".chars() {
        app.key(key(c));
    }
    let cmds = app.key(code(KeyCode::Enter));
    assert!(cmds.iter().any(|c| matches!(
        c,
        Cmd::Find {
            forward: false,
            from: 1000,
            ..
        }
    )));
    assert!(cmds.iter().any(|c| matches!(c, Cmd::Count { .. })));
    let epoch = app.out.epoch;
    app.update(Msg::Found {
        epoch,
        seq: Some(7),
        wrapped: false,
    });
    assert!(!app.out.follow);
    assert_eq!(app.out.visible(10).0, 4);
    let cmds = app.key(key('n'));
    assert!(matches!(
        cmds[..],
        [Cmd::Find {
            from: 8,
            forward: true,
            ..
        }]
    ));
    let cmds = app.key(key('N'));
    assert!(matches!(
        cmds[..],
        [Cmd::Find {
            from: 7,
            forward: false,
            ..
        }]
    ));
    let cmds = app.key(key('&'));
    assert!(matches!(cmds[..], [Cmd::Filter { .. }]));
    app.key(code(KeyCode::Esc));
    assert!(app.out.filter.is_none());
    // A bad regex is said, not searched.
    app.key(key('/'));
    app.key(key('('));
    assert!(app.key(code(KeyCode::Enter)).is_empty());
    assert!(app.notice.as_ref().unwrap().error);
}

#[test]
fn brackets_walk_the_instances_and_b_the_builds() {
    let mut app = online_app();
    app.update(Msg::Status(report(vec![proc("api", State::Running)])));
    let epoch = app.out.epoch;
    let summary = |id| InstanceSummary {
        number: id,
        id,
        kind: crate::protocol::InstanceKind::Run,
        started: "2026-01-01T00:00:00.000Z".into(),
        ended: None,
        exit: None,
        pid: None,
        lines: 10,
        dropped: 0,
    };
    app.update(Msg::Instances {
        epoch,
        runs: vec![summary(3), summary(5)],
        builds: vec![],
    });
    assert_eq!(app.out.instance, Some(5));
    let cmds = app.key(key('['));
    assert_eq!(app.out.instance, Some(3));
    assert!(!app.out.live);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Cmd::Tail { instance: 3, .. }))
    );
    assert!(app.key(key('[')).is_empty(), "the oldest kept");
    let cmds = app.key(key(']'));
    assert!(app.out.live);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Cmd::Follow { build: false, .. }))
    );
    let cmds = app.key(key('b'));
    assert!(app.out.build);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Cmd::Follow { build: true, .. }))
    );
}

#[test]
fn a_restart_that_builds_shows_the_build_and_then_the_new_run() {
    let mut app = online_app();
    app.update(Msg::Status(report(vec![proc("api", State::Running)])));
    app.key(key('r'));
    let mut p = proc("api", State::Running);
    p.status.building = true;
    let cmds = app.update(Msg::Status(report(vec![p])));
    assert!(app.out.build && app.auto_build);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Cmd::Follow { build: true, .. }))
    );
    let cmds = app.update(Msg::Done {
        text: "restarted api".into(),
        error: false,
    });
    assert!(!app.out.build);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Cmd::Follow { build: false, .. }))
    );
    // A failed build stays in view.
    app.key(key('r'));
    let mut p = proc("api", State::Building);
    p.status.building = true;
    app.update(Msg::Status(report(vec![p])));
    app.update(Msg::Done {
        text: "the build of api failed".into(),
        error: true,
    });
    assert!(app.out.build);
}

#[test]
fn help_and_quit() {
    let mut app = online_app();
    app.key(key('?'));
    assert!(app.help);
    app.key(key('x'));
    assert!(!app.help);
    app.key(key('q'));
    assert!(app.quit);
}

fn started(id: u64) -> FollowRecord {
    FollowRecord::Instance {
        process: "api".into(),
        instance: id,
        number: id,
        pid: None,
        started: String::new(),
        started_us: 0,
        switch: id > 1,
        ended_us: None,
        exit: None,
    }
}

/// The filter's read of the instance shown, from the commands.
fn filter_read(cmds: &[Cmd]) -> Option<(u64, bool, u64)> {
    cmds.iter().find_map(|c| match c {
        Cmd::Filter {
            instance,
            live,
            generation,
            ..
        } => Some((*instance, *live, *generation)),
        _ => None,
    })
}

#[test]
fn the_filter_reads_the_matches_then_follows_new_ones() {
    let mut app = online_app();
    app.update(Msg::Status(report(vec![proc("api", State::Running)])));
    let epoch = app.out.epoch;
    let mut records = vec![started(1)];
    records.extend((0..100).map(|s| FollowRecord::Line(line(s))));
    app.update(Msg::Follow { epoch, records });

    // & with no search asks for the pattern; the filter then reads its matches
    // through the daemon's search and follows new ones, without jumping the view.
    assert!(app.key(key('&')).is_empty());
    assert!(app.prompt.as_ref().is_some_and(|p| p.filter));
    for c in "line 7".chars() {
        app.key(key(c));
    }
    let cmds = app.key(code(KeyCode::Enter));
    let (instance, live, generation) = filter_read(&cmds).expect("a filter read");
    assert_eq!((instance, live), (1, true));
    assert!(cmds.iter().any(|c| matches!(c, Cmd::Count { .. })));
    assert!(!cmds.iter().any(|c| matches!(c, Cmd::Find { .. })));
    assert!(app.wants().is_none(), "read once");
    let seqs = |app: &App| -> Vec<u64> {
        let f = app.out.filter.as_ref().unwrap();
        f.lines.iter().map(|l| l.seq).collect()
    };
    app.update(Msg::Filtered {
        epoch,
        generation,
        lines: vec![line(7), line(70)],
        matched: 2,
    });
    // The stream may bring again what the search read: kept once.
    let live_line = |s| FollowRecord::Line(line(s));
    app.update(Msg::FilterFollow {
        epoch,
        generation,
        records: vec![live_line(70), live_line(107)],
    });
    assert_eq!(seqs(&app), [7, 70, 107]);
    assert_eq!(app.out.filter.as_ref().unwrap().matched, 3);
    // An earlier read's answers are dropped.
    app.update(Msg::FilterFollow {
        epoch,
        generation: generation - 1,
        records: vec![live_line(117)],
    });
    assert_eq!(seqs(&app), [7, 70, 107]);

    // A restart: the filter reads the new instance's matches.
    let cmds = app.update(Msg::Follow {
        epoch,
        records: vec![
            FollowRecord::Exit {
                instance: 1,
                status: ExitStatus::Signal(15),
                restarted: true,
            },
            started(2),
        ],
    });
    assert!(filter_read(&cmds).is_none());
    let (instance, _, next) = app
        .wants()
        .as_ref()
        .and_then(|c| filter_read(std::slice::from_ref(c)))
        .expect("a new read");
    assert_eq!(instance, 2);
    assert!(next > generation);
    assert!(app.out.filter.as_ref().unwrap().loading);

    // Esc shows every line again and ends the filter's stream; the search stays.
    assert_eq!(app.key(code(KeyCode::Esc)), vec![Cmd::Unfilter]);
    assert!(app.out.filter.is_none() && app.out.search.is_some());
    // & again: the search's pattern, at once.
    let cmds = app.key(key('&'));
    assert_eq!(
        filter_read(&cmds).map(|(i, live, _)| (i, live)),
        Some((2, true))
    );
}

#[test]
fn the_filter_holds_the_newest_matches_and_a_scrolled_view_stays_put() {
    let mut app = online_app();
    app.update(Msg::Status(report(vec![proc("api", State::Running)])));
    let epoch = app.out.epoch;
    app.update(Msg::Follow {
        epoch,
        records: vec![started(1)],
    });
    app.key(key('/'));
    app.key(key('l'));
    app.key(code(KeyCode::Enter));
    let (_, _, generation) = filter_read(&app.key(key('&'))).unwrap();
    app.update(Msg::Filtered {
        epoch,
        generation,
        lines: (0..FILTER_LINES as u64).map(line).collect(),
        matched: 9_000,
    });
    app.key(key('g'));
    app.scroll(5);
    let records = (0..10)
        .map(|i| FollowRecord::Line(line(100_000 + i)))
        .collect();
    app.update(Msg::FilterFollow {
        epoch,
        generation,
        records,
    });
    let f = app.out.filter.as_ref().unwrap();
    assert_eq!(f.lines.len(), FILTER_LINES);
    assert_eq!(f.matched, 9_010);
    assert_eq!(f.lines.back().unwrap().seq, 100_009);
    // The top line shown was line 5; it went on being shown until it left memory.
    assert_eq!(f.top, Some(0));
    assert_eq!(f.lines[0].seq, 10);
    // n and N page through the matches.
    app.key(key('n'));
    assert_eq!(app.out.filter.as_ref().unwrap().top, Some(9));
    // f follows the newest matches again, and holds the view.
    app.key(key('f'));
    assert_eq!(app.out.filter.as_ref().unwrap().top, None);
    app.key(key('f'));
    let f = app.out.filter.as_ref().unwrap();
    assert_eq!(f.top, Some(FILTER_LINES - app.height));
}
