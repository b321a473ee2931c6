//! Drawing the [`App`]: four panels (daemon status, process details, processes, output),
//! a key bar, and the help overlay. Pure: the same state draws the same screen, so the
//! tests draw onto ratatui's `TestBackend` and compare text.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use super::ansi;
use super::app::{App, Conn, FilterView, Focus};
use crate::protocol::{LogLine, ProcessReport, State, Stream, human_duration};

/// Where each panel goes on a screen of a given size. Small screens drop the top panels
/// first, then the process list.
#[derive(Clone, Copy, Debug, Default)]
pub struct Areas {
    pub status: Option<Rect>,
    pub details: Option<Rect>,
    pub list: Option<Rect>,
    pub output: Rect,
    pub bar: Option<Rect>,
}

pub fn areas(area: Rect) -> Areas {
    let (main, bar) = if area.height >= 3 {
        let [m, b] = Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(area);
        (m, Some(b))
    } else {
        (area, None)
    };
    let (top, bottom) = if main.height >= 18 && main.width >= 40 {
        let [t, b] = Layout::vertical([Constraint::Length(8), Constraint::Min(0)]).areas(main);
        (Some(t), b)
    } else {
        (None, main)
    };
    let left = (area.width / 3).clamp(22, 34);
    let split = |r: Rect| -> (Rect, Rect) {
        let [a, b] = Layout::horizontal([Constraint::Length(left), Constraint::Min(0)]).areas(r);
        (a, b)
    };
    let (status, details) = match top {
        Some(t) => {
            let (a, b) = split(t);
            (Some(a), Some(b))
        }
        None => (None, None),
    };
    let (list, output) = if bottom.width >= 60 {
        let (a, b) = split(bottom);
        (Some(a), b)
    } else {
        (None, bottom)
    };
    Areas {
        status,
        details,
        list,
        output,
        bar,
    }
}

/// Lines the output panel shows on a screen of this size.
pub fn output_height(width: u16, height: u16) -> usize {
    areas(Rect::new(0, 0, width, height))
        .output
        .height
        .saturating_sub(2) as usize
}

/// Styles, or none of their colours under `NO_COLOR`.
struct Theme {
    color: bool,
}

impl Theme {
    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }
    fn dim(&self) -> Style {
        Style::default().add_modifier(Modifier::DIM)
    }
    fn bold(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }
    fn highlight(&self) -> Style {
        if self.color {
            Style::default().bg(Color::Yellow).fg(Color::Black)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }
}

/// A process's state as the list shows it: a symbol, a few words, a colour.
pub fn badge(p: &ProcessReport, now_ms: i64) -> (&'static str, String, Color) {
    let s = &p.status;
    let (sym, text, color) = match &s.state {
        State::Running => ("▶", "running".to_owned(), Color::Green),
        State::Ready => ("▶", "ready".to_owned(), Color::Green),
        State::Starting => ("▶", "starting".to_owned(), Color::Yellow),
        State::Stopped => ("■", "stopped".to_owned(), Color::Yellow),
        State::Exited { status } if status.success() => {
            ("■", "exited (0)".to_owned(), Color::Yellow)
        }
        State::Exited { status } => ("✗", format!("crashed ({})", short_exit(status)), Color::Red),
        State::Failed { .. } => ("✗", "failed".to_owned(), Color::Red),
        State::Backoff { until_unix_ms } => {
            let left = (until_unix_ms - now_ms).max(0);
            (
                "↻",
                format!("backoff {}s", (left + 999) / 1000),
                Color::Yellow,
            )
        }
        State::Building => ("⚙", "building".to_owned(), Color::Cyan),
        State::Exiting => ("…", "exiting".to_owned(), Color::Yellow),
        State::Unhealthy { .. } => ("⚠", "unhealthy".to_owned(), Color::Red),
    };
    if s.building && s.state.is_running() {
        return (sym, format!("{text}, building"), Color::Cyan);
    }
    (sym, text, color)
}

fn short_exit(e: &crate::protocol::ExitStatus) -> String {
    match e {
        crate::protocol::ExitStatus::Code(c) => format!("code {c}"),
        crate::protocol::ExitStatus::Signal(s) => format!("signal {s}"),
        crate::protocol::ExitStatus::Unknown => "unknown".to_owned(),
    }
}

/// `HH:MM:SS` of an API time (`2026-01-01T12:00:01.234Z`).
fn clock(ts: &str) -> &str {
    ts.get(11..19).unwrap_or(ts)
}

pub fn draw(f: &mut Frame, app: &App) {
    let t = Theme { color: app.color };
    let a = areas(f.area());
    if let Some(r) = a.status {
        status_panel(f, r, app, &t);
    }
    if let Some(r) = a.details {
        details_panel(f, r, app, &t);
    }
    if let Some(r) = a.list {
        list_panel(f, r, app, &t);
    }
    output_panel(f, a.output, app, &t);
    if let Some(r) = a.bar {
        key_bar(f, r, app, &t);
    }
    if app.help {
        help(f, f.area(), &t);
    }
}

fn block<'a>(title: impl Into<Line<'a>>, focused: bool, t: &Theme) -> Block<'a> {
    let b = Block::default().borders(Borders::ALL).title(title);
    if focused {
        b.border_style(t.fg(Color::Cyan).add_modifier(Modifier::BOLD))
    } else {
        b
    }
}

fn status_panel(f: &mut Frame, r: Rect, app: &App, t: &Theme) {
    let mut lines: Vec<Line> = Vec::new();
    match &app.conn {
        Conn::Connecting => lines.push(Line::styled("… connecting", t.fg(Color::Yellow))),
        Conn::Online { .. } => {
            let rep = &app.report;
            lines.push(Line::from(vec![
                Span::styled("● connected", t.fg(Color::Green)),
                Span::raw(format!(" · {}", rep.mode)),
            ]));
            lines.push(Line::raw(format!(
                "pid {} · up {}",
                rep.daemon_pid,
                human_duration(rep.daemon_uptime_seconds)
            )));
            lines.push(Line::raw(format!(
                "agent idle {}",
                human_duration(rep.agent_idle_seconds)
            )));
        }
        Conn::Offline { store, lost } => {
            let head = if *lost {
                "○ daemon gone: reconnecting"
            } else {
                "○ no daemon running"
            };
            lines.push(Line::styled(head, t.fg(Color::Yellow)));
            lines.push(Line::raw("store read-only:"));
            lines.push(Line::styled(store.clone(), t.dim()));
        }
        Conn::Disconnected { address, error } => {
            lines.push(Line::styled("✗ disconnected: retrying", t.fg(Color::Red)));
            lines.push(Line::styled(address.clone(), t.dim()));
            lines.push(Line::styled(error.clone(), t.dim()));
        }
    }
    let procs = app.processes();
    let running = procs.iter().filter(|p| p.status.state.is_running()).count();
    let bad = procs
        .iter()
        .filter(|p| matches!(badge(p, app.now_ms).2, Color::Red))
        .count();
    lines.push(Line::raw(format!(
        "processes {} · ▶ {running} · ✗ {bad}",
        procs.len()
    )));
    if let Some(b) = &app.busy {
        lines.push(Line::styled(format!("… {b}"), t.fg(Color::Yellow)));
    } else if let Some(n) = &app.notice {
        let style = if n.error {
            t.fg(Color::Red)
        } else {
            t.fg(Color::Green)
        };
        for l in n.text.lines() {
            lines.push(Line::styled(l.to_owned(), style));
        }
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(" bpm ", false, t)),
        r,
    );
}

fn details_panel(f: &mut Frame, r: Rect, app: &App, t: &Theme) {
    let Some((_, p)) = app.current() else {
        f.render_widget(
            Paragraph::new("no process selected").block(block(" details ", false, t)),
            r,
        );
        return;
    };
    let s = &p.status;
    let (sym, text, color) = badge(p, app.now_ms);
    let mut state = vec![
        Span::styled(
            format!("{sym} {text}"),
            t.fg(color).add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!(
            "  pid {}",
            s.pid.map_or("-".into(), |p| p.to_string())
        )),
    ];
    if let Some(u) = p.uptime_seconds {
        state.push(Span::raw(format!("  up {}", human_duration(u))));
    }
    state.push(Span::raw(match s.ready {
        Some(true) => "  ready",
        Some(false) => "  not ready yet",
        None => "",
    }));
    if let Some(url) = &p.url {
        state.push(Span::styled(format!("  {url}"), t.fg(Color::Cyan)));
    } else if !p.ports.is_empty() {
        let ports: Vec<String> = p.ports.iter().map(u16::to_string).collect();
        state.push(Span::raw(format!("  :{}", ports.join(" :"))));
    }
    let mut lines = vec![
        Line::from(state),
        Line::raw(format!(
            "restarts {}  crashes {}  last exit {}  runs {}  builds {}",
            s.restarts,
            s.crash_count,
            s.last_exit.as_ref().map_or("-".into(), short_exit),
            p.run_instances,
            p.build_instances
        )),
    ];
    // Offline, a configured process's command is known only from its project's config.
    if !p.argv.is_empty() {
        lines.push(Line::from(vec![
            Span::styled("$ ", t.dim()),
            Span::raw(p.argv.join(" ")),
        ]));
    }
    if let Some(e) = &s.last_error {
        lines.push(Line::styled(
            format!("error: {}", e.lines().next().unwrap_or_default()),
            t.fg(Color::Red),
        ));
    }
    for e in p.recent_events.iter().rev().take(3) {
        lines.push(Line::from(vec![
            Span::styled(format!("{} ", clock(&e.at)), t.dim()),
            Span::raw(e.line()),
        ]));
    }
    f.render_widget(
        Paragraph::new(lines).block(block(format!(" {} ", s.name), false, t)),
        r,
    );
}

fn list_panel(f: &mut Frame, r: Rect, app: &App, t: &Theme) {
    let sel = app.current().map(|(i, _)| i);
    let inner_w = r.width.saturating_sub(2) as usize;
    let mut lines: Vec<Line> = Vec::new();
    for (i, p) in app.processes().iter().enumerate() {
        let (sym, mut text, color) = badge(p, app.now_ms);
        // A narrow list keeps the name readable: the state without its details.
        let wanted = p.status.name.chars().count().min(8);
        if inner_w.saturating_sub(text.chars().count() + 3) < wanted
            && let Some(i) = text.find(" (")
        {
            text.truncate(i);
        }
        let name_w = inner_w.saturating_sub(text.chars().count() + 3).max(1);
        let name: String = p.status.name.chars().take(name_w).collect();
        let pad = name_w.saturating_sub(name.chars().count());
        let mut style = Style::default();
        if Some(i) == sel {
            style = if app.focus == Focus::List {
                style.add_modifier(Modifier::REVERSED)
            } else {
                style.add_modifier(Modifier::BOLD)
            };
        }
        lines.push(
            Line::from(vec![
                Span::styled(format!("{sym} "), t.fg(color)),
                Span::raw(format!("{name}{} ", " ".repeat(pad))),
                Span::styled(text, t.fg(color)),
            ])
            .style(style),
        );
    }
    if lines.is_empty() {
        lines.push(Line::styled("(none)", t.dim()));
    }
    // Keep the selection in view.
    let h = r.height.saturating_sub(2) as usize;
    let skip = sel.map_or(0, |s| (s + 1).saturating_sub(h));
    f.render_widget(
        Paragraph::new(lines).scroll((skip as u16, 0)).block(block(
            " processes ",
            app.focus == Focus::List,
            t,
        )),
        r,
    );
}

/// The output panel's title: which process and instance, and how it started and ended;
/// the details go first when it is wider than `max` columns.
fn output_title(app: &App, max: usize) -> String {
    let o = &app.out;
    let Some(name) = &o.process else {
        return " output ".into();
    };
    let kind = if o.build { "build" } else { "run" };
    let Some((pos, s)) = o.summary() else {
        return format!(" {name} · {kind} ");
    };
    let n = o.list().len();
    let ended = match (&s.exit, &s.ended, &o.ended) {
        (_, _, Some(e)) | (Some(e), _, _) if e.success() => "exited (0)".into(),
        (_, _, Some(e)) | (Some(e), _, _) => format!("ended: {}", short_exit(e)),
        (None, None, _) => "running".into(),
        (None, Some(_), _) => "ended".into(),
    };
    let which = format!("{kind} #{} ({}/{n})", s.number, pos + 1);
    let started = format!("started {}", clock(&s.started));
    let fits = |parts: &[&str]| {
        let t = format!(" {} ", parts.join(" · "));
        (t.chars().count() <= max).then_some(t)
    };
    fits(&[name, &which, &started, &ended])
        .or_else(|| fits(&[name, &which, &ended]))
        .or_else(|| fits(&[name, &format!("{kind} #{}", s.number), &ended]))
        .unwrap_or_else(|| format!(" {name} · {kind} #{} ", s.number))
}

fn output_panel(f: &mut Frame, r: Rect, app: &App, t: &Theme) {
    let o = &app.out;
    let h = r.height.saturating_sub(2) as usize;
    let mut flags = Vec::new();
    match &o.filter {
        None => flags.push(if o.follow { "follow" } else { "paused" }),
        Some(f) if f.live && f.top.is_none() => flags.push("filter follow"),
        Some(_) => flags.push("filter"),
    }
    if app.timestamps {
        flags.push("time");
    }
    let flags = format!(" {} ", flags.join(" "));
    // The title's room: the top border less its corners, the flags and a gap.
    let room = (r.width as usize).saturating_sub(flags.chars().count() + 3);
    let mut b = block(output_title(app, room), app.focus == Focus::Output, t)
        .title_top(Line::from(flags).right_aligned());
    if let (Some(s), Some(fv)) = (&o.search, &o.filter) {
        b = b.title_bottom(Line::from(filter_footer(&s.pattern, fv, h)));
    } else if let Some(s) = &o.search {
        let count = match s.matches {
            Some(n) => format!("{n} matching lines"),
            None => "counting…".into(),
        };
        b = b.title_bottom(Line::from(format!(" /{} · {count} · n N & ", s.pattern)));
    } else if !o.follow && o.filter.is_none() {
        let (from, _) = o.visible(h);
        b = b.title_bottom(Line::from(format!(
            " line {} of {} ",
            from.saturating_sub(o.first) + 1,
            o.end.saturating_sub(o.first)
        )));
    }
    let mut lines: Vec<Line> = Vec::new();
    if app.processes().is_empty() && o.process.is_none() {
        let msg = match &app.conn {
            Conn::Online { .. } => "no processes yet; start one with `bpm run -- CMD...`",
            Conn::Offline { .. } => "the store has no processes",
            Conn::Connecting => "",
            Conn::Disconnected { .. } => "no daemon, and no store to read",
        };
        lines.push(Line::styled(msg, t.dim()));
    } else if let Some(fv) = &o.filter {
        if fv.loading {
            lines.push(Line::styled("searching…", t.dim()));
        } else if fv.lines.is_empty() {
            lines.push(Line::styled("no line matches", t.dim()));
        } else {
            let bottom = fv.lines.len().saturating_sub(h);
            let top = fv.top.unwrap_or(bottom).min(bottom);
            for l in fv.lines.range(top..).take(h) {
                lines.push(log_line(app, l, t, false));
            }
        }
    } else {
        let (from, to) = o.visible(h);
        if from == to {
            let msg = if o.instance.is_none() && o.list().is_empty() {
                if o.build { "no builds" } else { "no runs yet" }
            } else {
                "(no output)"
            };
            lines.push(Line::styled(msg, t.dim()));
        }
        for seq in from..to {
            match o.line(seq) {
                Some(l) => {
                    let current = o.search.as_ref().and_then(|s| s.current) == Some(seq);
                    lines.push(log_line(app, l, t, current));
                }
                None => lines.push(Line::styled("…", t.dim())),
            }
        }
    }
    f.render_widget(Paragraph::new(lines).block(b), r);
}

/// The filter's footer: its pattern, how many lines match, and how many are held.
fn filter_footer(pattern: &str, fv: &FilterView, h: usize) -> String {
    let mut parts = vec![format!(" &/{pattern}")];
    if fv.loading {
        parts.push("searching…".into());
    } else {
        parts.push(format!("{} matching lines", fv.matched));
        if fv.matched > fv.lines.len() as u64 {
            parts.push(format!("newest {} shown", fv.lines.len()));
        }
        if let Some(top) = fv.top {
            let bottom = fv.lines.len().saturating_sub(h);
            parts.push(format!("{} of {}", top.min(bottom) + 1, fv.lines.len()));
        }
    }
    let mut footer = parts.join(" · ");
    footer.push(' ');
    footer
}

/// The most characters of one line considered for drawing (no screen is wider).
const MAX_DRAWN: usize = 2000;

/// One output line: the stderr mark, the time, the text with its colours and the search
/// matches highlighted.
fn log_line<'a>(app: &App, l: &LogLine, t: &Theme, current: bool) -> Line<'a> {
    let mut spans = Vec::new();
    if l.stream == Stream::Stderr {
        spans.push(Span::styled("▍", t.fg(Color::Red)));
    } else if current {
        spans.push(Span::styled("▶", t.bold()));
    } else {
        spans.push(Span::raw(" "));
    }
    if app.timestamps {
        spans.push(Span::styled(
            format!("{} ", l.ts.get(11..23).unwrap_or(&l.ts)),
            t.dim(),
        ));
    }
    let text = match l.text.char_indices().nth(MAX_DRAWN) {
        Some((i, _)) => &l.text[..i],
        None => &l.text,
    };
    let base = if l.stream == Stream::Stderr {
        t.fg(Color::LightRed)
    } else {
        Style::default()
    };
    let runs = ansi::parse(text, base, app.color);
    let re = app.out.search.as_ref().and_then(|s| s.re.as_ref());
    match re {
        Some(re) => {
            let plain: String = runs.iter().map(|(s, _)| s.as_str()).collect();
            let ranges: Vec<(usize, usize)> = re
                .find_iter(&plain)
                .filter(|m| m.start() < m.end())
                .map(|m| (m.start(), m.end()))
                .collect();
            spans.extend(highlight(runs, &ranges, t.highlight()));
        }
        None => spans.extend(runs.into_iter().map(|(s, st)| Span::styled(s, st))),
    }
    Line::from(spans)
}

/// Split styled runs at the match ranges (byte offsets into their concatenation) and
/// give the matches `hl`.
fn highlight(
    runs: Vec<(String, Style)>,
    ranges: &[(usize, usize)],
    hl: Style,
) -> Vec<Span<'static>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for (text, style) in runs {
        let end = at + text.len();
        let mut cut = at;
        for &(s, e) in ranges.iter().filter(|(s, e)| *s < end && *e > at) {
            let (s, e) = (s.max(at), e.min(end));
            if s > cut {
                out.push(Span::styled(text[cut - at..s - at].to_owned(), style));
            }
            out.push(Span::styled(
                text[s - at..e - at].to_owned(),
                style.patch(hl),
            ));
            cut = e;
        }
        if cut < end {
            out.push(Span::styled(text[cut - at..].to_owned(), style));
        }
        at = end;
    }
    out
}

fn key_bar(f: &mut Frame, r: Rect, app: &App, t: &Theme) {
    let line = if let Some(p) = &app.prompt {
        let (key, what) = if p.filter {
            (
                "&",
                "  (only the lines matching this regex; Enter to filter, Esc to cancel)",
            )
        } else {
            (
                "/",
                "  (a regex, searched through the whole instance; Enter, Esc to cancel)",
            )
        };
        Line::from(vec![
            Span::styled(key, t.bold()),
            Span::raw(format!("{}█", p.text)),
            Span::styled(what, t.dim()),
        ])
    } else if let Some(name) = &app.confirm {
        Line::styled(
            format!("stop {name}? y to stop, any other key to keep it running"),
            t.fg(Color::Yellow).add_modifier(Modifier::BOLD),
        )
    } else {
        key_hints(app, r.width as usize, t)
    };
    f.render_widget(Paragraph::new(line), r);
}

/// The key bar's hints for what is on screen, as many as fit in `width` (the first ones,
/// and always `?` and `q`).
fn key_hints(app: &App, width: usize, t: &Theme) -> Line<'static> {
    let keys: &[(&str, &str)] = if app.out.filter.is_some() {
        &[
            ("Esc", "all lines"),
            ("PgUp PgDn", "scroll"),
            ("f", "follow"),
            ("/", "another pattern"),
            ("t", "time"),
        ]
    } else if app.focus == Focus::Output {
        &[
            ("↑↓ PgUp PgDn", "scroll"),
            ("g G", "top/end"),
            ("/", "search"),
            ("&", "filter"),
            ("f", "follow"),
            ("Tab", "list"),
        ]
    } else {
        &[
            ("↑↓", "select"),
            ("⏎", "output"),
            ("r", "restart"),
            ("s", "stop/start"),
            ("/", "search"),
            ("&", "filter"),
            ("[ ]", "runs"),
            ("b", "builds"),
            ("f", "follow"),
        ]
    };
    let always = [("?", "help"), ("q", "quit")];
    let cost = |(k, what): &(&str, &str)| k.chars().count() + what.chars().count() + 3;
    let mut room = width.saturating_sub(always.iter().map(cost).sum());
    let mut spans = Vec::new();
    for kw in keys.iter().take_while(|kw| {
        let fits = cost(kw) <= room;
        room = room.saturating_sub(cost(kw));
        fits
    }) {
        spans.push(Span::styled(kw.0, t.bold()));
        spans.push(Span::styled(format!(" {}  ", kw.1), t.dim()));
    }
    for (k, what) in always {
        spans.push(Span::styled(k, t.bold()));
        spans.push(Span::styled(format!(" {what}  "), t.dim()));
    }
    Line::from(spans)
}

/// Every key, for the help overlay and the README.
pub const KEYS: &[(&str, &str)] = &[
    ("↑ ↓  j k", "select a process (scroll, in the output)"),
    ("Enter / Tab", "focus the output / switch focus"),
    ("PgUp PgDn", "scroll the output a page"),
    ("g G  Home End", "top / bottom of the instance"),
    ("f", "follow new lines on/off"),
    ("[ ]", "earlier / later run (or build)"),
    ("b", "builds instead of runs, and back"),
    ("/", "search (regex) the whole instance"),
    ("n N", "next (newer) / previous (older) match"),
    ("&", "only the matching lines, live; and back"),
    ("t", "timestamps on/off"),
    ("c", "clear the output panel"),
    ("r", "restart (rebuild first if it builds)"),
    ("s", "stop (asks) or start"),
    ("?", "this help"),
    ("q  Esc", "quit (Esc leaves a filter or search first)"),
];

fn help(f: &mut Frame, area: Rect, t: &Theme) {
    let w = 62.min(area.width);
    let h = (KEYS.len() as u16 + 4).min(area.height);
    let r = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    let mut lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:>14}  "), t.bold()),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::styled("any key closes this", t.dim()));
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(lines).block(block(" keys ", true, t)), r);
}
