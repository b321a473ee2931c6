//! What the daemon answers: status and process reports, log results, follow records,
//! start results; and how times and durations are shown.

use super::*;

/// What `start` and `restart` answer.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct StartResult {
    pub name: String,
    /// The directory it runs in.
    pub cwd: PathBuf,
    /// It was running already (the same command in the same directory).
    pub already_running: bool,
    pub status: Status,
    pub readiness: Option<Readiness>,
    /// TCP ports its process group listens on.
    pub ports: Vec<u16>,
    /// The local URL its output announced, if any.
    pub url: Option<String>,
}

/// What waiting for readiness found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Readiness {
    Ready,
    /// Not ready yet at the timeout; the process keeps running.
    Slow,
    /// It exited (or crashed) before it was ready or settled: a failed start.
    Exited {
        status: ExitStatus,
        /// Its last lines, error lines first.
        first_error_lines: Vec<String>,
        /// Who holds the port, when the output says the port was taken.
        port_holder: Option<String>,
    },
    Failed {
        error: String,
    },
    NotRunning,
}

/// The daemon and its processes (`GET /api/status[/NAME]`, `get_status`).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct StatusReport {
    pub mode: Mode,
    /// 0 when no daemon runs (the status was read from the store).
    pub daemon_pid: u32,
    pub daemon_uptime_seconds: f64,
    /// Seconds since an agent last called a tool (dev mode ends after dev_timeout_hours).
    pub agent_idle_seconds: f64,
    /// Whether output is being stored: a full disk or an I/O error makes it unwritable
    /// until it heals by itself; processes keep running meanwhile.
    pub store: StoreHealth,
    pub processes: Vec<ProcessReport>,
}

impl StartResult {
    /// What happened, in one sentence (then the evidence: the exit status, who holds
    /// the port, the last lines), for agents and people alike.
    pub fn message(&self, verb: &str) -> String {
        let r = self;
        let mut m = self.summary(verb);
        if !r.readiness.as_ref().is_some_and(|x| x.failed()) {
            if let Some(url) = &r.url {
                m.push_str(&format!("; {url}"));
            } else if !r.ports.is_empty() {
                let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
                m.push_str(&format!("; listening on {}", ports.join(", ")));
            }
        }
        m
    }

    fn summary(&self, verb: &str) -> String {
        let r = self;
        let pid = r
            .status
            .pid
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_default();
        let mut m = if r.already_running {
            format!(
                "already running: {}{pid}, the same command in the same directory; use restart to restart it",
                r.name
            )
        } else {
            format!("{verb} {}{pid}: {}", r.name, r.status.state)
        };
        if let Some(ready) = &r.readiness {
            m.push_str(&match ready {
                Readiness::Ready => "; ready".to_owned(),
                Readiness::Slow => "; not ready yet (still starting; check get_status)".to_owned(),
                Readiness::Exited { status, .. } if status.success() => {
                    format!("; it ran and finished ({status})")
                }
                Readiness::Exited {
                    status,
                    first_error_lines,
                    port_holder,
                } => format!(
                    "; it exited before it was ready ({status}){}{}",
                    port_holder
                        .as_ref()
                        .map(|h| format!("; {h}"))
                        .unwrap_or_default(),
                    if first_error_lines.is_empty() {
                        String::new()
                    } else {
                        format!(":\n{}", first_error_lines.join("\n"))
                    }
                ),
                Readiness::Failed { error } => format!("; failed: {error}"),
                Readiness::NotRunning => "; not running".to_owned(),
            });
        }
        m
    }
}

impl Readiness {
    /// Whether the start failed: the process could not be started, or it exited before
    /// it was ready (a run that finished with exit code 0, a one-shot job, did not fail).
    pub fn failed(&self) -> bool {
        match self {
            Readiness::Exited { status, .. } => !status.success(),
            Readiness::Failed { .. } => true,
            _ => false,
        }
    }
}

impl StatusReport {
    /// What a status says when no daemon runs and nothing has run yet.
    pub fn empty() -> StatusReport {
        StatusReport {
            mode: Mode::Release,
            daemon_pid: 0,
            daemon_uptime_seconds: 0.0,
            agent_idle_seconds: 0.0,
            store: StoreHealth::default(),
            processes: Vec::new(),
        }
    }
}

impl StoreHealth {
    /// One line when something is wrong with storing output (`None` when all is well).
    pub fn problem(&self) -> Option<String> {
        if !self.writable && self.failing_since_us.is_some() {
            let since = self.failing_since_us.map(format_ts).unwrap_or_default();
            return Some(format!(
                "output is NOT being stored since {since} ({}); {} lines wait in memory, {} were dropped; it retries by itself (free disk space to help)",
                self.last_error.as_deref().unwrap_or("write error"),
                self.lines_not_stored,
                self.lines_dropped
            ));
        }
        (self.lines_dropped > 0).then(|| {
            format!(
                "{} lines could not be stored since the daemon started (see the instances' dropped counts)",
                self.lines_dropped
            )
        })
    }
}

/// One process in a status report.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ProcessReport {
    #[serde(flatten)]
    pub status: Status,
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub runtime: bool,
    pub uptime_seconds: Option<f64>,
    pub run_instances: usize,
    pub build_instances: usize,
    /// The number of its newest run (`#3`: its third), if it ran.
    #[serde(default)]
    pub run_number: Option<u64>,
    /// TCP ports its process group listens on (refreshed every few seconds).
    pub ports: Vec<u16>,
    /// The local URL its output announced (`http://localhost:5173/`), if any.
    pub url: Option<String>,
    pub recent_events: Vec<EventReport>,
}

/// A lifecycle event, as reported.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct EventReport {
    /// When (ISO 8601, UTC).
    pub at: String,
    /// The store's id of the run or build it is about (global, as `instance` in log
    /// queries).
    pub instance: Option<u64>,
    /// That run or build as the process numbers them: `{"kind": "run", "number": 3}` is
    /// its run #3. Absent when the event is about none, or it is no longer retained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<InstanceNumber>,
    /// What happened, in words.
    pub what: String,
}

/// A run or build as its process numbers them (run #3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InstanceNumber {
    pub kind: InstanceKind,
    pub number: u64,
}

impl std::fmt::Display for InstanceNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} #{}", self.kind.noun(), self.number)
    }
}

impl EventReport {
    /// The event in words, after the run it is about (first, so that a narrow view cut
    /// at its end still shows it): "run #2: exited (code 3) after 0.2s".
    pub fn line(&self) -> String {
        match &self.of {
            Some(of) => format!("{of}: {}", self.what),
            None => self.what.clone(),
        }
    }
}

impl From<&crate::logs::HistoryEvent> for EventReport {
    fn from(h: &crate::logs::HistoryEvent) -> EventReport {
        let e = &h.event;
        EventReport {
            at: format_ts(e.ts_us),
            instance: e.instance,
            of: h
                .instance
                .map(|(kind, number)| InstanceNumber { kind, number }),
            what: e.kind.to_string(),
        }
    }
}

/// One line of output, as reported.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct LogLine {
    /// The process that printed it, in an answer about several processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    pub instance: u64,
    pub seq: u64,
    /// When it was read (RFC 3339, UTC, milliseconds).
    pub ts: String,
    /// The same time in Unix microseconds.
    pub ts_us: i64,
    pub stream: Stream,
    pub matched: bool,
    pub continuation: bool,
    pub text: String,
}

impl LogLine {
    pub fn new(l: crate::logs::Line, matched: bool) -> LogLine {
        LogLine {
            process: None,
            instance: l.instance,
            seq: l.seq,
            ts: format_ts(l.ts_us),
            ts_us: l.ts_us,
            stream: l.stream,
            matched,
            continuation: l.continuation,
            text: l.text().into_owned(),
        }
    }
}

/// The answer of a log read or search.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct LogResult {
    pub process: String,
    pub instances: Vec<InstanceSummary>,
    pub lines: Vec<LogLine>,
    /// Lines that matched the pattern in total (no pattern: lines read).
    pub matched: u64,
    /// Result lines left out by the head/tail limit.
    pub omitted: u64,
}

/// An instance (one run or build), as reported.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct InstanceSummary {
    /// Its number among the process's runs (or builds): `#3` is its third run.
    pub number: u64,
    /// Its id, unique in the store (internal).
    pub id: u64,
    pub kind: InstanceKind,
    pub started: String,
    pub ended: Option<String>,
    pub exit: Option<ExitStatus>,
    pub pid: Option<u32>,
    pub lines: u64,
    /// Lines that never reached the store (the writer fell behind); 0 normally.
    pub dropped: u64,
}

impl From<&crate::logs::InstanceMeta> for InstanceSummary {
    fn from(m: &crate::logs::InstanceMeta) -> InstanceSummary {
        InstanceSummary {
            number: m.number,
            id: m.id,
            kind: m.kind,
            started: format_ts(m.started_us),
            ended: m.ended_us.map(format_ts),
            exit: m.exit.clone(),
            pid: m.spawn.pid,
            lines: m.next_seq - m.first_seq,
            dropped: m.dropped_lines,
        }
    }
}

/// One record of a follow stream, or of a log read as NDJSON (`bpm logs --json`), in
/// order: an instance, its lines, its end; then the next instance.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FollowRecord {
    /// Following this instance from now on. `switch`: it replaced the one followed before
    /// (a restart, or a start after an exit). `ended` and `exit` are set when it had
    /// already ended when the record was written.
    Instance {
        process: String,
        instance: u64,
        /// Its number among the process's runs (or builds): `#3`.
        #[serde(default)]
        number: u64,
        pid: Option<u32>,
        /// RFC 3339, UTC.
        started: String,
        /// The same time in Unix microseconds.
        started_us: i64,
        switch: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ended_us: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit: Option<ExitStatus>,
    },
    Line(LogLine),
    /// The followed instance ended and all its lines were sent. `restarted`: a restart
    /// already replaced it (an `Instance` record follows at once); otherwise it exited or
    /// was stopped, and the stream goes on only if the process runs again.
    Exit {
        instance: u64,
        status: ExitStatus,
        restarted: bool,
    },
}

impl FollowRecord {
    /// The record that opens an instance. `switch`: it replaced the one before.
    pub fn instance(meta: &crate::logs::InstanceMeta, switch: bool) -> FollowRecord {
        FollowRecord::Instance {
            process: meta.process.clone(),
            instance: meta.id,
            number: meta.number,
            pid: meta.spawn.pid,
            started: format_ts(meta.started_us),
            started_us: meta.started_us,
            switch,
            ended_us: meta.ended_us,
            exit: meta.exit.clone(),
        }
    }
}

/// A time as the API reports it: RFC 3339 (ISO 8601) UTC with milliseconds. Formatted by
/// hand (a log read formats one per line).
pub fn format_ts(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let ms = us.rem_euclid(1_000_000) / 1000;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    if !(0..=9999).contains(&y) {
        return chrono::DateTime::from_timestamp_micros(us)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_else(|| us.to_string());
    }
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, m);
    put(8, 2, d);
    put(11, 2, sod / 3600);
    put(14, 2, sod % 3600 / 60);
    put(17, 2, sod % 60);
    put(20, 3, ms);
    String::from_utf8_lossy(&b).into_owned()
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A duration for people: `42s`, `3m5s`, `2h10m`, `3d4h`.
pub fn human_duration(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}
