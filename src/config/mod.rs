//! The project configuration file (`.mcp-run`, TOML) and where bpm keeps its data.
//!
//! This module owns the file format: the accepted keys, their defaults, the checks on their
//! values, and the located error messages (`file:line:col: ...`) shown when the file is wrong.
//! It turns the file into resolved, ready-to-use types ([`Config`], [`ProcessConfig`]) so that
//! nothing downstream deals with optional keys, relative paths or unit conversions.
//!
//! It also owns two lookups that depend on the file's presence: [`find_project_dir`] (which
//! directory a command applies to) and [`data_dir`] (where the daemon keeps its store).
//!
//! - `parse`: the syntax (private `Raw*` structs) and its resolution into these types.
//! - `dirs`: the data-directory and project-directory rules.
//!
//! The TOML is first deserialized into private `Raw*` structs that mirror the syntax exactly
//! (every key optional, unknown keys rejected, values wrapped in [`Spanned`] where a later
//! check needs to point at them); resolution then applies defaults and semantic checks. The
//! public types are persisted by other modules, so they must stay free of syntax concerns.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Name of the project configuration file, looked up in the project directory.
pub const CONFIG_FILE: &str = ".mcp-run";

/// Name of the per-project data directory used by a project daemon.
pub const PROJECT_DATA_DIR: &str = ".bpm";

pub const DEFAULT_MCP_PORT: u16 = 8947;
pub const DEFAULT_DEV_TIMEOUT_HOURS: f64 = 3.0;
pub const DEFAULT_DEV_CRASH_WAIT_SECONDS: f64 = 120.0;
pub const DEFAULT_RELEASE_BACKOFF_INITIAL_SECONDS: f64 = 1.0;
pub const DEFAULT_RELEASE_BACKOFF_MAX_SECONDS: f64 = 300.0;
pub const DEFAULT_STABLE_RUN_SECONDS: f64 = 60.0;
pub const DEFAULT_STORE_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;
pub const DEFAULT_STOP_TIMEOUT_SECONDS: f64 = 5.0;
pub const DEFAULT_READY_TIMEOUT_SECONDS: f64 = 30.0;
/// How often a TCP or HTTP check is repeated once it passed, by default.
pub const DEFAULT_HEALTH_INTERVAL_SECONDS: f64 = 10.0;
pub const DEFAULT_KEEP_INSTANCES: u32 = 10;
pub const DEFAULT_KEEP_BUILDS: u32 = 10;
pub const DEFAULT_PROCESS_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Command used for `type = "npm"` processes that do not give one.
const DEFAULT_NPM_COMMAND: [&str; 3] = ["npm", "run", "dev"];

/// Settings of one project, resolved from its `.mcp-run` (or defaults when there is none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub mcp_port: u16,
    pub dev_timeout: Duration,
    pub dev_crash_wait: Duration,
    pub release_backoff_initial: Duration,
    pub release_backoff_max: Duration,
    /// A run at least this long resets the crash count, so a process that crashes once a day
    /// is not treated like one in a crash loop.
    pub stable_run: Duration,
    pub store_max_bytes: u64,
    pub prefix_output: bool,
    /// Web pages (besides the daemon's own) whose requests the TCP listener accepts:
    /// `allowed_origins = ["http://localhost:5173"]`.
    pub allowed_origins: Vec<Origin>,
    pub processes: BTreeMap<String, ProcessConfig>,
    /// The project directory (where `.mcp-run` lives), absolute.
    pub dir: PathBuf,
}

/// One `[process.NAME]` table, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessConfig {
    pub name: String,
    pub kind: ProcessKind,
    /// The program and its fixed arguments; empty for [`ProcessKind::Rust`], whose binary is
    /// only known after cargo has built it.
    pub command: Vec<String>,
    /// Extra arguments: appended to `command`, or passed to the built binary for Rust.
    pub args: Vec<String>,
    /// Working directory, absolute.
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    /// A build command run before starting; for Rust, `None` means the default cargo build.
    pub build: Option<Vec<String>>,
    pub restart: RestartPolicy,
    pub stop_signal: StopSignal,
    /// How long to wait after `stop_signal` before SIGKILL.
    pub stop_timeout: Duration,
    pub ready: Option<Ready>,
    pub autostart: bool,
    pub keep_instances: u32,
    pub keep_builds: u32,
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProcessKind {
    /// A cargo project: bpm builds it and runs the resulting binary.
    Rust,
    /// An npm script.
    Npm,
    /// A plain command line.
    Command,
}

/// Spelled in the file as `"always"`, `"on-failure"` or `"never"`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// After any exit: what a configured process gets by default (kept running, as the
    /// predecessor did).
    #[default]
    Always,
    OnFailure,
    Never,
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        })
    }
}

impl FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<RestartPolicy, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "always" => Ok(RestartPolicy::Always),
            "on-failure" | "on_failure" => Ok(RestartPolicy::OnFailure),
            "never" | "no" => Ok(RestartPolicy::Never),
            other => Err(format!(
                "unknown restart policy `{other}`; use never, on-failure or always"
            )),
        }
    }
}

/// The signals a process may ask to be stopped with. A closed set rather than any signal
/// number, so that a typo is caught when the file is loaded instead of at stop time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum StopSignal {
    #[default]
    Term,
    Int,
    Kill,
    Hup,
    Quit,
    Usr1,
    Usr2,
}

impl StopSignal {
    pub const ALL: [StopSignal; 7] = [
        StopSignal::Term,
        StopSignal::Int,
        StopSignal::Kill,
        StopSignal::Hup,
        StopSignal::Quit,
        StopSignal::Usr1,
        StopSignal::Usr2,
    ];

    pub fn signal(self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal;
        match self {
            StopSignal::Term => Signal::SIGTERM,
            StopSignal::Int => Signal::SIGINT,
            StopSignal::Kill => Signal::SIGKILL,
            StopSignal::Hup => Signal::SIGHUP,
            StopSignal::Quit => Signal::SIGQUIT,
            StopSignal::Usr1 => Signal::SIGUSR1,
            StopSignal::Usr2 => Signal::SIGUSR2,
        }
    }

    /// The conventional name, e.g. `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Kill => "SIGKILL",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
        }
    }
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StopSignal {
    type Err = String;

    /// Accepts `SIGTERM` and `TERM`, in any case, as both spellings are common in other
    /// process managers' configs.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        StopSignal::ALL
            .into_iter()
            .find(|sig| &sig.name()[3..] == bare)
            .ok_or_else(|| {
                let names: Vec<&str> = StopSignal::ALL.iter().map(|s| s.name()).collect();
                format!(
                    "unknown stop_signal `{s}`; expected one of: {}",
                    names.join(", ")
                )
            })
    }
}

/// When a process counts as started, and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    pub check: ReadyCheck,
    pub timeout: Duration,
    /// How often the check is repeated once it passed (`health_interval_seconds`):
    /// `None` for the default ([`DEFAULT_HEALTH_INTERVAL_SECONDS`] for TCP and HTTP
    /// checks, off for log checks), zero for off. See [`Ready::health_interval`].
    #[serde(default)]
    pub health_interval: Option<Duration>,
    /// Restart the process when its health check keeps failing (`restart_on_unhealthy`).
    #[serde(default)]
    pub restart_on_unhealthy: bool,
}

impl Ready {
    /// A readiness check with the default timeout and health settings.
    pub fn new(check: ReadyCheck) -> Ready {
        Ready {
            check,
            timeout: Duration::from_secs_f64(DEFAULT_READY_TIMEOUT_SECONDS),
            health_interval: None,
            restart_on_unhealthy: false,
        }
    }

    /// How often the check runs again once it passed; `None`: not at all (a log check,
    /// whose line does not come again, or an interval of 0).
    pub fn health_interval(&self) -> Option<Duration> {
        match (&self.check, self.health_interval) {
            (ReadyCheck::Log { .. }, _) => None,
            (_, Some(d)) if d.is_zero() => None,
            (_, Some(d)) => Some(d),
            (_, None) => Some(Duration::from_secs_f64(DEFAULT_HEALTH_INTERVAL_SECONDS)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReadyCheck {
    /// A line of output matches this regex (validated at load time).
    Log { pattern: String },
    /// A TCP connect to 127.0.0.1:port succeeds.
    Tcp { port: u16 },
    /// A GET of this `http://` URL returns a 2xx status.
    Http { url: String },
}

/// A web origin, `http://localhost:5173` (scheme, host, port): what a browser sends as
/// `Origin`. Scheme and host are kept in lowercase, the port explicitly (80 and 443 when
/// the text leaves it out), so equal origins compare equal however they were written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub scheme: String,
    /// A name, an IPv4 address, or an IPv6 address in brackets (`[::1]`).
    pub host: String,
    pub port: u16,
}

impl FromStr for Origin {
    type Err = String;
    fn from_str(s: &str) -> Result<Origin, String> {
        let usage =
            "expected an origin such as \"http://localhost:5173\" (scheme, host and port; no path)";
        let (scheme, authority) = s
            .split_once("://")
            .ok_or_else(|| format!("`{s}` is not an origin; {usage}"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("`{s}`: only http and https origins are supported")),
        };
        if authority.contains(['/', '?', '#', '@']) {
            return Err(format!("`{s}` has more than an origin; {usage}"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            // `[::1]` alone: the colons are inside the brackets.
            Some((h, p)) if !p.contains(']') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("`{s}`: bad port `{p}`; {usage}"))?;
                (h, port)
            }
            _ => (authority, default_port),
        };
        let bracketed = host.starts_with('[') && host.ends_with(']');
        if host.is_empty() || (host.contains(':') && !bracketed) {
            return Err(format!("`{s}`: bad host `{host}`; {usage}"));
        }
        Ok(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Why the configuration could not be loaded. Every problem in the file's content is located
/// (`file:line:col`), since the file is edited by hand and often by an agent that needs to
/// fix it without guessing.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// 1-based, in characters.
        column: usize,
        message: String,
    },
}

mod dirs;
mod parse;

pub use dirs::{data_dir, data_dir_from, find_project_dir};
pub use parse::is_valid_process_name;
use parse::{Ctx, RawConfig, absolute, resolve};

// ---------------------------------------------------------------------------------------------
// Loading and resolution
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Reads `DIR/.mcp-run`; `Ok(None)` when the file does not exist, because a project
    /// without a config is valid (it just has no declared processes).
    pub fn load(dir: &Path) -> Result<Option<Config>, ConfigError> {
        let file = dir.join(CONFIG_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) => Config::parse(&text, &file, dir).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConfigError::Read { path: file, source }),
        }
    }

    /// Parses the text of a config file. `file` is only used in error messages; relative
    /// paths in the file are resolved against `dir`.
    pub fn parse(text: &str, file: &Path, dir: &Path) -> Result<Config, ConfigError> {
        let ctx = Ctx { text, file };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ctx.toml_err(e))?;
        resolve(raw, &ctx, &absolute(dir))
    }

    /// The configuration of a project without a `.mcp-run`.
    pub fn default_for(dir: &Path) -> Config {
        Config {
            mcp_port: DEFAULT_MCP_PORT,
            dev_timeout: Duration::from_secs_f64(DEFAULT_DEV_TIMEOUT_HOURS * 3600.0),
            dev_crash_wait: Duration::from_secs_f64(DEFAULT_DEV_CRASH_WAIT_SECONDS),
            release_backoff_initial: Duration::from_secs_f64(
                DEFAULT_RELEASE_BACKOFF_INITIAL_SECONDS,
            ),
            release_backoff_max: Duration::from_secs_f64(DEFAULT_RELEASE_BACKOFF_MAX_SECONDS),
            stable_run: Duration::from_secs_f64(DEFAULT_STABLE_RUN_SECONDS),
            store_max_bytes: DEFAULT_STORE_MAX_BYTES,
            prefix_output: true,
            allowed_origins: Vec::new(),
            processes: BTreeMap::new(),
            dir: absolute(dir),
        }
    }
}

#[cfg(test)]
mod tests;
