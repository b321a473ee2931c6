//! `bpm logs`: read, search and follow a process's output; and the follow stream's
//! reading and rendering, shared with `bpm run`.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::Value;

use super::{Common, Source, UsageError, call, client, enc, print_json, read_source};
use crate::daemon::ops::{self, LogRequest};
use crate::logs::Stream;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamArg {
    Stdout,
    Stderr,
}

impl StreamArg {
    fn name(self) -> &'static str {
        match self {
            StreamArg::Stdout => "stdout",
            StreamArg::Stderr => "stderr",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The process: its name, or the pid of its running instance.
    pub name: String,
    /// Which instance: -1 the newest (default), -2 the one before; 0 the oldest retained, 1 the next.
    #[arg(long, allow_negative_numbers = true, value_name = "I")]
    pub instance: Option<i64>,
    /// Every retained instance, oldest first.
    #[arg(long, conflicts_with = "instance")]
    pub all_instances: bool,
    /// Only lines matching this regex (matches are marked on a terminal).
    #[arg(long, short = 'g', value_name = "RE")]
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
    /// Only one stream.
    #[arg(long, value_enum)]
    pub stream: Option<StreamArg>,
    /// Lines from this time on: 10m, 2h, 1d (back from now) or an ISO time.
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Lines up to this time (same forms as --since).
    #[arg(long, value_name = "T")]
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

async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
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
        color: super::color_stdout(),
        highlight,
        json: args.common.json,
    };
    let source = read_source(&args.common).await?;
    if args.follow
        && let Source::Daemon(target) = &source
    {
        return follow(&args, target, &render).await;
    }
    #[allow(
        clippy::needless_update,
        reason = "fields the CLI has no flag for (added by other front ends) keep their defaults"
    )]
    let req = LogRequest {
        process: args.name.clone(),
        pattern: args.grep.clone(),
        case_insensitive: args.ignore_case,
        context: args.context,
        head: args.head,
        tail: args.tail,
        index: args.instance,
        all_instances: args.all_instances,
        build: args.build,
        stream: args.stream.map(|s| match s {
            StreamArg::Stdout => Stream::Stdout,
            StreamArg::Stderr => Stream::Stderr,
        }),
        since_us,
        until_us,
        ..Default::default()
    };
    let result = match &source {
        Source::Empty(t) => return Err(Source::nothing_here(t)),
        Source::Daemon(target) => call(target, "GET", &logs_path(&req), None).await?,
        Source::Store(_, store) => {
            let store = store.clone();
            let req = req.clone();
            let r = tokio::task::spawn_blocking(move || {
                ops::read_logs(&store, &req.process.clone(), &req)
            })
            .await?;
            match r {
                Ok(r) => serde_json::to_value(r)?,
                Err(
                    e @ (ops::OpError::BadRequest(_)
                    | ops::OpError::Search(_)
                    | ops::OpError::Store(crate::logs::StoreError::IndexOutOfRange { .. })),
                ) => return Err(UsageError(e.to_string()).into()),
                Err(e) => return Err(e.into()),
            }
        }
    };
    if args.common.json {
        print_json(&result)?;
    } else {
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

/// The local API's path for a log request.
fn logs_path(req: &LogRequest) -> String {
    let mut q = vec![format!("context={}", req.context)];
    if let Some(p) = &req.pattern {
        q.push(format!("pattern={}", enc(p)));
    }
    if req.case_insensitive {
        q.push("case_insensitive=true".into());
    }
    match (req.head, req.tail) {
        (Some(h), _) => q.push(format!("head={h}")),
        (None, Some(t)) => q.push(format!("tail={t}")),
        (None, None) => q.push("all=true".into()),
    }
    if let Some(i) = req.index {
        q.push(format!("index={i}"));
    }
    if req.all_instances {
        q.push("all_instances=true".into());
    }
    if req.build {
        q.push("build=true".into());
    }
    if let Some(s) = req.stream {
        q.push(format!(
            "stream={}",
            if s == Stream::Stdout {
                "stdout"
            } else {
                "stderr"
            }
        ));
    }
    if let Some(t) = req.since_us {
        q.push(format!("since_us={t}"));
    }
    if let Some(t) = req.until_us {
        q.push(format!("until_us={t}"));
    }
    format!("/api/logs/{}?{}", enc(&req.process), q.join("&"))
}

/// How lines are shown.
pub struct Render {
    pub timestamps: bool,
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
    /// One line of text as shown (timestamp, marked matches), with its newline.
    fn line(
        &self,
        out: &mut impl std::io::Write,
        ts: &str,
        text: &str,
        matched: bool,
    ) -> std::io::Result<()> {
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

/// Print a log result (the JSON of [`ops::LogResult`]) as text on stdout; what was left
/// out is said on stderr.
fn render_result(v: &Value, args: &LogsArgs, render: &Render) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let instances: Vec<&Value> = v["instances"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mut prev: Option<(u64, u64)> = None;
    let empty = Vec::new();
    for l in v["lines"].as_array().unwrap_or(&empty) {
        let instance = l["instance"].as_u64().unwrap_or(0);
        let seq = l["seq"].as_u64().unwrap_or(0);
        if args.all_instances && prev.is_none_or(|(i, _)| i != instance) {
            let meta = instances
                .iter()
                .find(|m| m["id"].as_u64() == Some(instance));
            writeln!(
                out,
                "==> {} <==",
                describe_instance(&args.name, instance, meta.copied())
            )?;
        } else if args.context > 0
            && args.grep.is_some()
            && prev.is_some_and(|(i, s)| i == instance && s + 1 != seq)
        {
            writeln!(out, "--")?;
        }
        prev = Some((instance, seq));
        render.line(
            &mut out,
            l["ts"].as_str().unwrap_or(""),
            l["text"].as_str().unwrap_or(""),
            l["matched"].as_bool().unwrap_or(false),
        )?;
    }
    out.flush()?;
    let omitted = v["omitted"].as_u64().unwrap_or(0);
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
    if args.grep.is_some() && v["matched"].as_u64() == Some(0) {
        eprintln!("bpm: no line matches");
    }
    Ok(())
}

fn describe_instance(name: &str, id: u64, meta: Option<&Value>) -> String {
    let mut s = format!("{name} #{id}");
    if let Some(m) = meta {
        if let Some(pid) = m["pid"].as_u64() {
            s.push_str(&format!(", pid {pid}"));
        }
        if let Some(t) = m["started"].as_str() {
            s.push_str(&format!(", started {t}"));
        }
        match m["exit"].as_str() {
            Some(e) => s.push_str(&format!(", {e}")),
            None if m["ended"].is_null() => s.push_str(", running"),
            None => {}
        }
    }
    s
}

async fn follow(
    args: &LogsArgs,
    target: &client::Target,
    render: &Render,
) -> anyhow::Result<ExitCode> {
    let mut q = vec![format!("tail={}", args.tail.unwrap_or(10))];
    if let Some(i) = args.instance {
        q.push(format!("index={i}"));
    }
    if args.build {
        q.push("build=true".into());
    }
    if let Some(s) = args.stream {
        q.push(format!("stream={}", s.name()));
    }
    if let Some(p) = &args.grep {
        q.push(format!("pattern={}", enc(p)));
    }
    if args.ignore_case {
        q.push("case_insensitive=true".into());
    }
    let path = format!("/api/follow/{}?{}", enc(&args.name), q.join("&"));
    let mut reader = FollowReader::open(target, &path).await?;
    while let Some(batch) = reader.next().await? {
        render.records(&batch, true)?;
    }
    eprintln!("bpm: the daemon stopped; no more lines");
    Ok(ExitCode::SUCCESS)
}

/// One record of a follow stream (the JSON of [`ops::FollowRecord`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Instance {
        process: String,
        instance: u64,
        pid: Option<u32>,
        switch: bool,
    },
    Line {
        ts: String,
        stream: Stream,
        matched: bool,
        text: String,
    },
    Exit {
        status: String,
        code: Option<i32>,
        signal: Option<i32>,
        restarted: bool,
    },
}

/// Reads a follow stream (`/api/follow/...`) record by record. [`Self::next`] is
/// cancel-safe: it can be raced against Ctrl+C.
pub struct FollowReader {
    resp: client::Response,
    buf: Vec<u8>,
    process: String,
}

impl FollowReader {
    pub async fn open(target: &client::Target, path: &str) -> anyhow::Result<FollowReader> {
        let resp = client::request(&target.socket(), "GET", path, &[], Vec::new()).await?;
        if resp.status != 200 {
            let status = resp.status;
            let body = resp.bytes().await?;
            return Err(super::api_error(status, &body));
        }
        Ok(FollowReader {
            resp,
            buf: Vec::new(),
            process: String::new(),
        })
    }

    /// The next records that arrived (raw JSON, parsed); `None` when the stream ended.
    pub async fn next(&mut self) -> anyhow::Result<Option<Vec<(String, Record)>>> {
        loop {
            if let Some(end) = self.buf.iter().rposition(|&b| b == b'\n') {
                let rest = self.buf.split_off(end + 1);
                let whole = std::mem::replace(&mut self.buf, rest);
                let mut out = Vec::new();
                for raw in whole.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let rec: Record = serde_json::from_slice(raw).with_context(|| {
                        format!("unexpected follow record {}", String::from_utf8_lossy(raw))
                    })?;
                    if let Record::Instance { process, .. } = &rec {
                        self.process.clone_from(process);
                    }
                    out.push((String::from_utf8_lossy(raw).into_owned(), rec));
                }
                return Ok(Some(out));
            }
            match self.resp.chunk().await? {
                Some(c) => self.buf.extend_from_slice(&c),
                None => return Ok(None),
            }
        }
    }

    /// The process being followed (known after the first record).
    pub fn process(&self) -> &str {
        &self.process
    }
}

impl Render {
    /// Print follow records: stdout lines to stdout, stderr lines to stderr (when
    /// `split`), switches and exits as notes on stderr; or the records as NDJSON.
    pub fn records(&self, batch: &[(String, Record)], split: bool) -> std::io::Result<()> {
        let stdout = std::io::stdout();
        let stderr = std::io::stderr();
        let mut out = stdout.lock();
        let mut err = stderr.lock();
        for (raw, rec) in batch {
            if self.json {
                writeln!(out, "{raw}")?;
                continue;
            }
            match rec {
                Record::Line {
                    ts,
                    stream,
                    matched,
                    text,
                } => {
                    if split && *stream == Stream::Stderr {
                        self.line(&mut err, ts, text, *matched)?;
                    } else {
                        self.line(&mut out, ts, text, *matched)?;
                    }
                }
                Record::Instance {
                    process,
                    instance,
                    pid,
                    switch: true,
                } => {
                    out.flush()?;
                    let pid = pid.map(|p| format!(", pid {p}")).unwrap_or_default();
                    writeln!(
                        err,
                        "bpm: --- {process} runs again: instance #{instance}{pid} ---"
                    )?;
                }
                Record::Instance { .. } => {}
                Record::Exit {
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
