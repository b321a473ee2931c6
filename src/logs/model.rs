//! The records the store keeps besides lines: instances and lifecycle events.
//!
//! These are encoded with bincode (serde) in the `instances` and `events` tables. Enum
//! variants are encoded by position: new variants go at the end, never in between
//! (migrations/0001-initial.md).

use serde::{Deserialize, Serialize};

/// Whether an instance is a run of the process or a build of it.
// Variants are stored by index (bincode), so the JSON names can change freely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceKind {
    Run,
    Build,
}

impl InstanceKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            InstanceKind::Run => 0,
            InstanceKind::Build => 1,
        }
    }
    pub fn noun(self) -> &'static str {
        match self {
            InstanceKind::Run => "run",
            InstanceKind::Build => "build",
        }
    }
}

/// How a process ended. In JSON: `{"code": 1}`, `{"signal": 9}` or `"unknown"`.
// Variants are stored by index (bincode), so the JSON names can change freely.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
    /// The daemon died while the instance ran; its real end is unknown.
    Unknown,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
            ExitStatus::Unknown => f.write_str("unknown (the daemon stopped uncleanly)"),
        }
    }
}

impl std::str::FromStr for ExitStatus {
    type Err = String;
    /// Reads what `Display` writes, and the short forms `3`, `code 3`, `signal 9`.
    fn from_str(s: &str) -> Result<ExitStatus, String> {
        let t = s.trim();
        let num = |rest: &str| rest.trim().parse::<i32>().ok();
        if t.starts_with("unknown") {
            return Ok(ExitStatus::Unknown);
        }
        let parsed = if let Some(r) = t.strip_prefix("exit code").or(t.strip_prefix("code")) {
            num(r).map(ExitStatus::Code)
        } else if let Some(r) = t
            .strip_prefix("killed by signal")
            .or(t.strip_prefix("signal"))
        {
            num(r).map(ExitStatus::Signal)
        } else {
            num(t).map(ExitStatus::Code)
        };
        parsed.ok_or_else(|| {
            format!("`{t}` is not an exit status; use e.g. `exit code 1` or `killed by signal 9`")
        })
    }
}

/// What is known of an instance when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnInfo {
    pub pid: Option<u32>,
    pub pgid: Option<u32>,
    /// The pid's start time (clock ticks since boot), so that a reused pid is never killed.
    pub start_time: Option<u64>,
    pub argv: Vec<String>,
    pub cwd: String,
}

/// One run or build of a process, from spawn to exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMeta {
    /// The stable number (`#37`): unique in the store, never reused, increasing with time.
    pub id: u64,
    pub process: String,
    pub kind: InstanceKind,
    pub started_us: i64,
    pub ended_us: Option<i64>,
    pub spawn: SpawnInfo,
    pub exit: Option<ExitStatus>,
    /// Sequence number one past the last line appended.
    pub next_seq: u64,
    /// The first line still retained (retention may cut an over-large instance's head).
    pub first_seq: u64,
    /// Bytes of line data stored for this instance (encoded blocks).
    pub stored_bytes: u64,
    /// Lines that never reached the store because the writer fell behind.
    pub dropped_lines: u64,
    /// Its number among the process's runs (or builds): 1, 2, 3..., never given twice.
    /// Not part of the record's encoding: stored in `instance_numbers` (schema 3).
    #[serde(skip)]
    pub number: u64,
}

impl InstanceMeta {
    pub fn is_live(&self) -> bool {
        self.ended_us.is_none()
    }
}

/// Who asked for a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    Mcp,
    Cli,
    Tui,
    CrashPolicy,
    ModeSwitch,
    Daemon,
}

/// Who acted, as event lines name it: "restart requested by the TUI".
impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Actor::Mcp => "an agent (MCP)",
            Actor::Cli => "the CLI",
            Actor::Tui => "the TUI",
            Actor::CrashPolicy => "the restart policy",
            Actor::ModeSwitch => "a mode switch",
            Actor::Daemon => "the daemon",
        })
    }
}

/// A lifecycle record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    Spawned {
        pid: u32,
        argv: Vec<String>,
        cwd: String,
    },
    Exited {
        status: ExitStatus,
        duration_ms: u64,
    },
    CrashDetected {
        status: ExitStatus,
        crash_count: u32,
    },
    BackoffWait {
        seconds: f64,
    },
    RestartRequested {
        by: Actor,
    },
    StopRequested {
        by: Actor,
    },
    BuildStarted {
        argv: Vec<String>,
    },
    BuildFinished {
        ok: bool,
        duration_ms: u64,
    },
    ModeSwitched {
        from: String,
        to: String,
        by: Actor,
    },
    DaemonStarted {
        pid: u32,
    },
    DaemonStopped,
    RecoveredUncleanShutdown,
    OrphanKilled {
        pid: u32,
        pgid: u32,
    },
    LinesDropped {
        count: u64,
    },
    RetentionRemoved {
        instance: u64,
        lines: u64,
        bytes: u64,
        why: String,
    },
    PortConflict {
        port: u16,
        holder: Option<String>,
    },
    Ready,
    Note {
        text: String,
    },
    // ---- schema version 2 (migrations/0002-store-health.md) ----
    /// The store could not be written (a full disk, an I/O error). Lines are kept in memory
    /// and retried; this event is stored once the store heals, with the time of the failure.
    StoreFailed {
        error: String,
        /// Lines waiting in memory for the store when it failed.
        lines_pending: u64,
    },
    /// The store is written again after failing for `failed_for_ms`.
    StoreRecovered {
        failed_for_ms: u64,
        /// Lines given up while it failed (beyond the memory budget; also recorded per
        /// instance as `LinesDropped`).
        lines_dropped: u64,
        /// Reopen attempts it took.
        attempts: u64,
    },
}

/// One line describing the event, for status reports.
impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = |ms: &u64| *ms as f64 / 1000.0;
        match self {
            EventKind::Spawned { pid, argv, .. } => {
                write!(f, "spawned pid {pid}: {}", argv.join(" "))
            }
            EventKind::Exited {
                status,
                duration_ms,
            } => write!(f, "exited ({status}) after {:.1}s", secs(duration_ms)),
            EventKind::CrashDetected {
                status,
                crash_count,
            } => write!(f, "crash #{crash_count} ({status})"),
            EventKind::BackoffWait { seconds } => {
                write!(f, "waiting {seconds:.1}s before restarting")
            }
            EventKind::RestartRequested { by } => write!(f, "restart requested by {by}"),
            EventKind::StopRequested { by } => write!(f, "stop requested by {by}"),
            EventKind::BuildStarted { argv } => write!(f, "build started: {}", argv.join(" ")),
            EventKind::BuildFinished { ok, duration_ms } => write!(
                f,
                "build {} in {:.1}s",
                if *ok { "succeeded" } else { "failed" },
                secs(duration_ms)
            ),
            EventKind::ModeSwitched { from, to, by } => {
                write!(f, "mode {from} -> {to} by {by}")
            }
            EventKind::DaemonStarted { pid } => write!(f, "daemon started (pid {pid})"),
            EventKind::DaemonStopped => f.write_str("daemon stopped"),
            EventKind::RecoveredUncleanShutdown => {
                f.write_str("recovered from an unclean daemon shutdown")
            }
            EventKind::OrphanKilled { pid, pgid } => write!(
                f,
                "stopped orphan process group {pgid} (pid {pid}) left by the previous daemon"
            ),
            EventKind::LinesDropped { count } => {
                write!(
                    f,
                    "{count} lines were not stored (the store fell behind or could not be written)"
                )
            }
            EventKind::RetentionRemoved { instance, why, .. } => {
                write!(f, "removed instance #{instance}: {why}")
            }
            EventKind::PortConflict { port, holder } => match holder {
                Some(h) => write!(f, "port {port} is in use by {h}"),
                None => write!(f, "port {port} is in use"),
            },
            EventKind::Ready => f.write_str("ready"),
            EventKind::Note { text } => f.write_str(text),
            EventKind::StoreFailed {
                error,
                lines_pending,
            } => write!(
                f,
                "the log store could not be written ({error}); {lines_pending} lines kept in memory, retrying"
            ),
            EventKind::StoreRecovered {
                failed_for_ms,
                lines_dropped,
                attempts,
            } => write!(
                f,
                "the log store is written again after failing for {:.1}s ({attempts} attempts); {lines_dropped} lines could not be kept",
                *failed_for_ms as f64 / 1000.0
            ),
        }
    }
}

/// A lifecycle event as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub ts_us: i64,
    pub process: Option<String>,
    pub instance: Option<u64>,
    pub kind: EventKind,
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_micros() as i64
}
