//! The types a supervisor reports: the daemon's [`Mode`], a process's [`State`] and
//! [`Status`], and the answers and errors of [`ProcessHandle`]'s requests.

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::{ProcessHandle, Timing};
use crate::logs::ExitStatus;

/// The daemon's mode: release at boot and after a spell without agent activity, dev once an
/// agent restarts something (or on request). It decides how crashes are waited out and
/// which command and build a process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A fixed wait ([`Timing::dev_crash_wait`]) so the developer can investigate.
    Dev,
    /// Backoff from [`Timing::backoff_initial`], times 1.5 per crash, up to
    /// [`Timing::backoff_max`].
    Release,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Dev => "dev",
            Mode::Release => "release",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dev" => Ok(Mode::Dev),
            "release" => Ok(Mode::Release),
            other => Err(format!("unknown mode `{other}`; use dev or release")),
        }
    }
}

/// Where a process is in its life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Never started, or stopped on request.
    Stopped,
    /// Running, its readiness check has not passed yet.
    Starting,
    /// Running, without a readiness check.
    Running,
    /// Running, its readiness check passed (and its health checks, if any, pass).
    Ready,
    /// Running, its readiness check passed, but its health check (the same check,
    /// repeated) fails since `since_unix_ms`: `error` says how.
    Unhealthy { since_unix_ms: i64, error: String },
    /// Crashed; restarts at `until_unix_ms` unless told otherwise.
    Backoff { until_unix_ms: i64 },
    /// Nothing runs and a build is under way (while an old instance runs during a
    /// build-then-swap, the state is that instance's and [`Status::building`] is set).
    Building,
    /// Its leader exited; the rest of its group is being stopped and its output drained.
    /// What follows (exited, backoff) is known once that is done.
    Exiting,
    /// Exited by itself and the restart policy does not restart it.
    Exited { status: ExitStatus },
    /// Could not be started (the command or its build failed).
    Failed { error: String },
}

impl State {
    /// Whether an instance is running.
    pub fn is_running(&self) -> bool {
        matches!(
            self,
            State::Starting | State::Running | State::Ready | State::Unhealthy { .. }
        )
    }

    /// Whether it is up or on its way (running, building, exiting, waiting to restart):
    /// what `stop --all` stops and `restart --all` restarts.
    pub fn is_live(&self) -> bool {
        !matches!(
            self,
            State::Stopped | State::Exited { .. } | State::Failed { .. }
        )
    }
}

/// The state in a few words: `running`, `exited (exit code 1)`, `crashed, restarting
/// in 3s`.
impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Stopped => f.write_str("stopped"),
            State::Starting => f.write_str("starting"),
            State::Running => f.write_str("running"),
            State::Ready => f.write_str("ready"),
            State::Unhealthy {
                since_unix_ms,
                error,
            } => {
                let for_ = (chrono::Utc::now().timestamp_millis() - *since_unix_ms).max(0);
                write!(
                    f,
                    "unhealthy for {}: {error}",
                    crate::protocol::human_duration(for_ as f64 / 1000.0)
                )
            }
            State::Backoff { until_unix_ms } => {
                let left = (*until_unix_ms - chrono::Utc::now().timestamp_millis()).max(0);
                write!(f, "crashed, restarting in {:.0}s", left as f64 / 1000.0)
            }
            State::Building => f.write_str("building"),
            State::Exiting => f.write_str("exiting"),
            State::Exited { status } => write!(f, "exited ({status})"),
            State::Failed { error } => write!(f, "failed: {error}"),
        }
    }
}

/// A snapshot of a supervised process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Status {
    pub name: String,
    pub state: State,
    pub pid: Option<u32>,
    pub pgid: Option<u32>,
    /// When the running instance started (Unix ms).
    pub started_at: Option<i64>,
    /// Restarts since the supervisor started (requested or by the crash policy).
    pub restarts: u32,
    /// Consecutive crashes; reset by a stable run and by a manual start or restart.
    pub crash_count: u32,
    /// How the last instance ended.
    pub last_exit: Option<ExitStatus>,
    /// The newest run instance: the running one, else the one that ran last.
    pub instance: Option<u64>,
    /// Whether the readiness check passed; `None` without a check or when nothing runs.
    pub ready: Option<bool>,
    /// A build is under way.
    pub building: bool,
    pub last_error: Option<String>,
}

/// Why a request failed. Messages are meant for the user as they are.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {name}: {message}")]
    Spawn { name: String, message: String },
    #[error("the build of {name} failed ({}); the old instance keeps running if there was one{}",
        code.map_or_else(|| "killed or not started".to_string(), |c| format!("exit code {c}")),
        if first_errors.is_empty() { String::new() } else { format!(":\n{}", first_errors.join("\n")) })]
    BuildFailed {
        name: String,
        code: Option<i32>,
        first_errors: Vec<String>,
    },
    #[error("the request for {name} was cancelled by a stop")]
    Cancelled { name: String },
    #[error("the supervisor of {name} has shut down")]
    Gone { name: String },
}

/// The answer of [`ProcessHandle::wait_ready`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReadyOutcome {
    /// The readiness check passed (immediately, for a process without one).
    Ready,
    /// Still not ready at the timeout; the process keeps running.
    Slow,
    /// The instance exited before it was ready.
    Exited {
        status: ExitStatus,
        first_error_lines: Vec<String>,
    },
    /// Could not be started.
    Failed { error: String },
    /// Nothing runs (stopped).
    NotRunning,
}
