//! `bpm logs`: read, search and follow a process's output; and the follow stream's
//! reading and rendering, shared with `bpm run`.

use std::io::Write as _;
use std::process::ExitCode;

use super::{Common, Source, UsageError, api_error, read_source};
use crate::client::Client;
use crate::daemon::ops;
use crate::protocol::{
    DEFAULT_FOLLOW_TAIL, FollowQuery, FollowRecord, InstanceSummary, LogQuery, LogResult, Stream,
    StreamFilter,
};

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The process: its name, or the pid of its running instance. Several names (or
    /// --all) interleave their lines by time, each prefixed with `[name]`, as `docker
    /// compose logs` does.
    #[arg(
        add = super::complete::process_names(),
        required_unless_present = "all",
        num_args = 1..,
        value_name = "NAME"
    )]
    pub names: Vec<String>,
    /// Every process (of the current runs; the last 200 lines unless --tail/--head).
    #[arg(long, conflicts_with_all = ["names", "all_instances", "instance"])]
    pub all: bool,
    /// The one process read (set from `names`).
    #[arg(skip)]
    pub name: String,
    /// Which run (or build): -1 the newest (default), -2 the one before; 0 the oldest
    /// retained, 1 the next; or #3, the process's third run.
    #[arg(long, allow_hyphen_values = true, value_name = "I|#N", value_parser = Which::parse)]
    pub instance: Option<Which>,
    /// Every retained instance, oldest first.
    #[arg(long, conflicts_with = "instance")]
    pub all_instances: bool,
    /// Only lines matching this regex (matches are marked on a terminal).
    #[arg(long, short = 'g', value_name = "RE", allow_hyphen_values = true)]
    pub grep: Option<String>,
    /// Match case-insensitively.
    #[arg(short = 'i', long)]
    pub ignore_case: bool,
    /// Lines of context around each match.
    #[arg(short = 'C', long, value_name = "N", default_value_t = 0)]
    pub context: usize,
    /// Only the first N lines.
    #[arg(long, value_name = "N", conflicts_with = "tail")]
    pub head: Option<usize>,
    /// Only the last N lines (with --follow: the backlog shown first, default 10).
    #[arg(long, short = 'n', value_name = "N")]
    pub tail: Option<usize>,
    /// Keep printing new lines as they come, across restarts of the process.
    #[arg(long, short = 'f', conflicts_with_all = ["head", "all_instances", "since", "until"])]
    pub follow: bool,
    /// The build instances instead of the runs.
    #[arg(long)]
    pub build: bool,
    /// Only one stream: stdout, stderr (or both, the default).
    #[arg(long, value_name = "STREAM", default_value_t)]
    pub stream: StreamFilter,
    /// Lines from this time on: 10m, 1h30m, -2h, 1d (back from now), today, yesterday,
    /// @UNIX_SECONDS or an ISO time.
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Lines up to this time (same forms as --since).
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub until: Option<String>,
    /// Prefix each line with its time (UTC).
    #[arg(long, short = 't')]
    pub timestamps: bool,
    #[command(flatten)]
    pub common: Common,
}

pub fn main(args: LogsArgs) -> ExitCode {
    super::execute(logs(args))
}

async fn logs(mut args: LogsArgs) -> anyhow::Result<ExitCode> {
    let many = args.all || args.names.len() > 1;
    if let [one] = args.names.as_slice() {
        args.name = one.clone();
    }
    let now = crate::logs::now_us();
    let time = |t: &Option<String>| {
        t.as_deref()
            .map(|t| crate::timespec::parse(t, now).map_err(UsageError))
            .transpose()
    };
    let since_us = time(&args.since)?;
    let until_us = time(&args.until)?;
    let highlight = match &args.grep {
        Some(p) if !p.is_empty() => Some(
            crate::search::compile(p, args.ignore_case).map_err(|e| UsageError(e.to_string()))?,
        ),
        _ => None,
    };
    let render = Render {
        timestamps: args.timestamps,
        color: args.common.color(),
        highlight,
        json: args.common.json,
    };
    let source = read_source(&args.common).await?;
    if many {
        return super::many::logs(&args, &source, &render, since_us, until_us).await;
    }
    if args.follow
        && let Source::Daemon(client) = &source
    {
        return follow(&args, client, &render).await;
    }
    let query = LogQuery {
        pattern: args.grep.clone(),
        case_insensitive: args.ignore_case,
        context: args.context,
        head: args.head,
        tail: args.tail,
        // The CLI prints every line unless told otherwise.
        all: args.head.is_none() && args.tail.is_none(),
        index: args.instance.and_then(Which::index),
        number: args.instance.and_then(Which::number),
        all_instances: args.all_instances,
        build: args.build,
        stream: args.stream,
        since_us,
        until_us,
        around: None,
        ..Default::default()
    };
    query.validate().map_err(UsageError)?;
    // Every line, JSON, or a tail longer than a page: printed as the records come, page
    // by page, so memory stays flat however long the instance. A text head or a shorter
    // tail is one bounded answer, which also says how many lines it left out.
    let long_tail = args.grep.is_none() && query.tail.is_some_and(|t| t > ops::PAGE_LINES);
    if args.common.json || query.all || long_tail {
        let printed = stream_logs(&args, &source, query.clone(), &render).await?;
        if long_tail && !args.common.json {
            // How many lines the tail left out: the count alone (a tail of none).
            let counted = read_once(
                &args,
                &source,
                LogQuery {
                    tail: Some(0),
                    ..query
                },
            )
            .await?;
            report_omitted(counted.matched.saturating_sub(printed), &args);
        }
    } else {
        let result = read_once(&args, &source, query).await?;
        render_result(&result, &args, &render)?;
    }
    if args.follow {
        eprintln!(
            "bpm: not following: no daemon is running (start it with `bpm start {}`)",
            args.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One bounded answer, from the daemon or the store opened read-only.
async fn read_once(args: &LogsArgs, source: &Source, query: LogQuery) -> anyhow::Result<LogResult> {
    Ok(match source {
        Source::Empty(t) => return Err(Source::nothing_here(t)),
        Source::Daemon(client) => client.logs(&args.name, &query).await.map_err(api_error)?,
        Source::Store(_, store) => {
            let store = store.clone();
            let name = args.name.clone();
            tokio::task::spawn_blocking(move || ops::read_logs(&store, &name, &query))
                .await?
                .map_err(offline_error)?
        }
    })
}

/// An error of a read of the store opened read-only, as the CLI reports it: bad input
/// is a usage error (exit 2).
fn offline_error(e: ops::OpError) -> anyhow::Error {
    match e {
        e @ (ops::OpError::BadRequest(_)
        | ops::OpError::Search(_)
        | ops::OpError::Store(
            crate::logs::StoreError::IndexOutOfRange { .. }
            | crate::logs::StoreError::NoSuchNumber { .. },
        )) => UsageError(e.to_string()).into(),
        e => e.into(),
    }
}

/// A log read printed as its records arrive: from the daemon's NDJSON stream, or read
/// page by page from the store opened read-only.
async fn stream_logs(
    args: &LogsArgs,
    source: &Source,
    query: LogQuery,
    render: &Render,
) -> anyhow::Result<u64> {
    let mut printer = Printer::new(args, render.clone());
    match source {
        Source::Empty(t) => return Err(Source::nothing_here(t)),
        Source::Daemon(client) => {
            let mut records = client
                .logs_records(&args.name, &query)
                .await
                .map_err(api_error)?;
            while let Some(batch) = records.next().await? {
                printer.records(&batch)?;
            }
        }
        Source::Store(_, store) => {
            let store = store.clone();
            let name = args.name.clone();
            printer = tokio::task::spawn_blocking(move || -> anyhow::Result<Printer> {
                let plan = ops::LogStream::plan(&store, &name, query).map_err(offline_error)?;
                let mut failed = None;
                plan.run(&store, &mut |page| match printer.records(&page) {
                    Ok(()) => std::ops::ControlFlow::Continue(()),
                    Err(e) => {
                        failed = Some(e);
                        std::ops::ControlFlow::Break(())
                    }
                })
                .map_err(offline_error)?;
                match failed {
                    Some(e) => Err(e.into()),
                    None => Ok(printer),
                }
            })
            .await??;
        }
    }
    Ok(printer.finish()?)
}

/// Says on stderr how many lines a head or tail left out.
fn report_omitted(omitted: u64, args: &LogsArgs) {
    if omitted > 0 {
        eprintln!(
            "bpm: {omitted} more line{} not shown ({})",
            if omitted == 1 { "" } else { "s" },
            if args.head.is_some() {
                "raise --head"
            } else {
                "raise --tail, or use --head"
            }
        );
    }
}

/// Prints a log read's records: as text (instance headers with `--all-instances`, `--`
/// between groups of context) or as NDJSON, one record per line.
struct Printer {
    name: String,
    build: bool,
    headers: bool,
    separators: bool,
    grep: bool,
    render: Render,
    out: std::io::BufWriter<std::io::Stdout>,
    prev: Option<(u64, u64)>,
    matched: u64,
    lines: u64,
}

impl Printer {
    fn new(args: &LogsArgs, render: Render) -> Printer {
        Printer {
            name: args.name.clone(),
            build: args.build,
            headers: args.all_instances,
            separators: args.context > 0 && args.grep.is_some(),
            grep: args.grep.is_some(),
            render,
            out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()),
            prev: None,
            matched: 0,
            lines: 0,
        }
    }

    fn records(&mut self, batch: &[FollowRecord]) -> std::io::Result<()> {
        let out = &mut self.out;
        for rec in batch {
            if let FollowRecord::Line(l) = rec {
                self.matched += u64::from(l.matched);
                self.lines += 1;
            }
            if self.render.json {
                self.render.json_record(&mut *out, rec)?;
                continue;
            }
            match rec {
                FollowRecord::Instance {
                    number,
                    pid,
                    started,
                    ended_us,
                    exit,
                    ..
                } => {
                    self.prev = None;
                    if self.headers {
                        let what = describe(
                            &self.name,
                            self.build,
                            *number,
                            *pid,
                            started,
                            exit.as_ref(),
                            ended_us.is_some(),
                        );
                        writeln!(out, "==> {what} <==")?;
                    }
                }
                FollowRecord::Line(l) => {
                    if self.separators
                        && self
                            .prev
                            .is_some_and(|(i, s)| i == l.instance && s + 1 != l.seq)
                    {
                        writeln!(out, "--")?;
                    }
                    self.prev = Some((l.instance, l.seq));
                    self.render.line(&mut *out, &l.ts, &l.text, l.matched)?;
                }
                FollowRecord::Exit { .. } => {}
            }
        }
        out.flush()
    }

    /// Flush, and say when nothing matched. Returns the lines printed.
    fn finish(mut self) -> std::io::Result<u64> {
        self.out.flush()?;
        if self.grep && self.matched == 0 {
            eprintln!("bpm: no line matches");
        }
        Ok(self.lines)
    }
}

/// How lines are shown.
#[derive(Clone)]
pub struct Render {
    pub timestamps: bool,
    /// Colour: the process's own escape codes pass through and matches are marked.
    /// Without it, escape codes are taken out of the text (also in JSON).
    pub color: bool,
    /// Marks the matches (in colour) when set and `color` is on.
    pub highlight: Option<regex::bytes::Regex>,
    /// Records as NDJSON instead of text.
    pub json: bool,
}

const RED_BOLD: &str = "\x1b[1;31m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

impl Render {
    /// One line as [`Self::line`] shows it, after a `[name] ` prefix (in colour).
    pub fn prefixed_line(
        &self,
        out: &mut impl std::io::Write,
        name: &str,
        colour: usize,
        ts: &str,
        text: &str,
        matched: bool,
    ) -> std::io::Result<()> {
        if self.color {
            const COLOURS: [&str; 6] = [
                "\x1b[36m", "\x1b[33m", "\x1b[32m", "\x1b[35m", "\x1b[34m", "\x1b[31m",
            ];
            write!(out, "{}[{name}]{RESET} ", COLOURS[colour % COLOURS.len()])?;
        } else {
            write!(out, "[{name}] ")?;
        }
        self.line(out, ts, text, matched)
    }

    /// One NDJSON record; without colour, a line's escape codes are taken out.
    pub fn json_record(
        &self,
        out: &mut impl std::io::Write,
        rec: &FollowRecord,
    ) -> std::io::Result<()> {
        match rec {
            FollowRecord::Line(l) if !self.color && l.text.contains('\x1b') => {
                let mut l = l.clone();
                l.text = Self::plain(&l.text).into_owned();
                serde_json::to_writer(&mut *out, &FollowRecord::Line(l))?;
            }
            _ => serde_json::to_writer(&mut *out, rec)?,
        }
        writeln!(out)
    }

    /// `text` without its escape codes.
    fn plain(text: &str) -> std::borrow::Cow<'_, str> {
        if text.contains('\x1b') {
            strip_ansi_escapes::strip_str(text).into()
        } else {
            text.into()
        }
    }

    /// One line of text as shown (timestamp, marked matches), with its newline.
    fn line(
        &self,
        out: &mut impl std::io::Write,
        ts: &str,
        text: &str,
        matched: bool,
    ) -> std::io::Result<()> {
        if !self.color {
            return if self.timestamps {
                writeln!(out, "{ts} {}", Self::plain(text))
            } else {
                writeln!(out, "{}", Self::plain(text))
            };
        }
        if self.timestamps {
            if self.color {
                write!(out, "{DIM}{ts}{RESET} ")?;
            } else {
                write!(out, "{ts} ")?;
            }
        }
        match &self.highlight {
            Some(re) if self.color && matched => {
                let mut last = 0;
                for m in re.find_iter(text.as_bytes()) {
                    if m.start() == m.end() {
                        continue;
                    }
                    write!(
                        out,
                        "{}{RED_BOLD}{}{RESET}",
                        &text[last..m.start()],
                        &text[m.start()..m.end()]
                    )?;
                    last = m.end();
                }
                writeln!(out, "{}", &text[last..])
            }
            _ => writeln!(out, "{text}"),
        }
    }
}

/// Print a log result as text on stdout; what was left out is said on stderr.
fn render_result(r: &LogResult, args: &LogsArgs, render: &Render) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut prev: Option<(u64, u64)> = None;
    for l in &r.lines {
        if args.all_instances && prev.is_none_or(|(i, _)| i != l.instance) {
            let meta = r.instances.iter().find(|m| m.id == l.instance);
            writeln!(
                out,
                "==> {} <==",
                describe_instance(&args.name, args.build, l.instance, meta)
            )?;
        } else if args.context > 0
            && args.grep.is_some()
            && prev.is_some_and(|(i, s)| i == l.instance && s + 1 != l.seq)
        {
            writeln!(out, "--")?;
        }
        prev = Some((l.instance, l.seq));
        render.line(&mut out, &l.ts, &l.text, l.matched)?;
    }
    out.flush()?;
    report_omitted(r.omitted, args);
    if args.grep.is_some() && r.matched == 0 {
        eprintln!("bpm: no line matches");
    }
    Ok(())
}

fn describe_instance(name: &str, build: bool, id: u64, meta: Option<&InstanceSummary>) -> String {
    match meta {
        Some(m) => describe(
            name,
            build,
            m.number,
            m.pid,
            &m.started,
            m.exit.as_ref(),
            m.ended.is_some(),
        ),
        None => format!("{name} (instance id {id})"),
    }
}

/// An instance in a header: `web run #3, pid 42, started T, exit code 1` (or
/// `, running`); `number` is the process's own count of its runs (or builds).
fn describe(
    name: &str,
    build: bool,
    number: u64,
    pid: Option<u32>,
    started: &str,
    exit: Option<&crate::protocol::ExitStatus>,
    ended: bool,
) -> String {
    let kind = if build { "build" } else { "run" };
    let mut s = format!("{name} {kind} #{number}");
    if let Some(pid) = pid {
        s.push_str(&format!(", pid {pid}"));
    }
    s.push_str(&format!(", started {started}"));
    match (exit, ended) {
        (Some(e), _) => s.push_str(&format!(", {e}")),
        (None, false) => s.push_str(", running"),
        (None, true) => {}
    }
    s
}

async fn follow(args: &LogsArgs, client: &Client, render: &Render) -> anyhow::Result<ExitCode> {
    let query = FollowQuery {
        instance: None,
        number: args.instance.and_then(Which::number),
        index: args.instance.and_then(Which::index),
        build: args.build,
        tail: Some(args.tail.map_or(DEFAULT_FOLLOW_TAIL, |t| t as u64)),
        stream: args.stream,
        pattern: args.grep.clone(),
        case_insensitive: args.ignore_case,
    };
    let mut records = client.follow(&args.name, &query).await.map_err(api_error)?;
    while let Some(batch) = records.next().await? {
        render.records(&batch, true)?;
    }
    eprintln!("bpm: the daemon stopped; no more lines");
    Ok(ExitCode::SUCCESS)
}

impl Render {
    /// Print follow records: stdout lines to stdout, stderr lines to stderr (when
    /// `split`), switches and exits as notes on stderr; or the records as NDJSON.
    pub fn records(&self, batch: &[FollowRecord], split: bool) -> std::io::Result<()> {
        let stdout = std::io::stdout();
        let stderr = std::io::stderr();
        let mut out = stdout.lock();
        let mut err = stderr.lock();
        for rec in batch {
            if self.json {
                self.json_record(&mut out, rec)?;
                continue;
            }
            match rec {
                FollowRecord::Line(l) => {
                    if split && l.stream == Stream::Stderr {
                        self.line(&mut err, &l.ts, &l.text, l.matched)?;
                    } else {
                        self.line(&mut out, &l.ts, &l.text, l.matched)?;
                    }
                }
                FollowRecord::Instance {
                    process,
                    number,
                    pid,
                    switch: true,
                    ..
                } => {
                    out.flush()?;
                    let pid = pid.map(|p| format!(", pid {p}")).unwrap_or_default();
                    writeln!(err, "bpm: --- {process} runs again: run #{number}{pid} ---")?;
                }
                FollowRecord::Instance { .. } => {}
                FollowRecord::Exit {
                    status, restarted, ..
                } => {
                    out.flush()?;
                    if *restarted {
                        writeln!(err, "bpm: --- restarted ({status}) ---")?;
                    } else {
                        writeln!(err, "bpm: --- exited: {status} ---")?;
                    }
                }
            }
        }
        out.flush()?;
        err.flush()
    }
}

/// `--instance`: an index (-1 the newest) or a number (`#3`, the process's third run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Index(i64),
    Number(u64),
}

impl Which {
    pub fn parse(s: &str) -> Result<Which, String> {
        let t = s.trim();
        if let Some(n) = t.strip_prefix('#') {
            return match n.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Which::Number(n)),
                _ => Err(format!(
                    "`{s}` is not a run number; use #1, #2, ... (or an index: -1 the newest)"
                )),
            };
        }
        t.parse::<i64>().map(Which::Index).map_err(|_| {
            format!("`{s}` is not an instance; use -1 (the newest), -2, ... or #N (the Nth run)")
        })
    }

    pub fn index(self) -> Option<i64> {
        match self {
            Which::Index(i) => Some(i),
            Which::Number(_) => None,
        }
    }

    pub fn number(self) -> Option<u64> {
        match self {
            Which::Number(n) => Some(n),
            Which::Index(_) => None,
        }
    }
}
