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

// ---------------------------------------------------------------------------------------------
// Raw syntax
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    mcp_port: Option<Spanned<u16>>,
    dev_timeout_hours: Option<Spanned<f64>>,
    dev_crash_wait_seconds: Option<Spanned<f64>>,
    release_crash_backoff_initial_seconds: Option<Spanned<f64>>,
    release_crash_backoff_max_seconds: Option<Spanned<f64>>,
    stable_run_seconds: Option<Spanned<f64>>,
    store_max_bytes: Option<Spanned<u64>>,
    prefix_output: Option<bool>,
    allowed_origins: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    process: BTreeMap<Spanned<String>, RawProcess>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    #[serde(rename = "type")]
    kind: Option<RawKind>,
    command: Option<Spanned<Vec<String>>>,
    args: Option<Vec<String>>,
    cwd: Option<String>,
    env: Option<BTreeMap<String, String>>,
    build: Option<Spanned<Vec<String>>>,
    restart: Option<RestartPolicy>,
    stop_signal: Option<Spanned<String>>,
    stop_timeout_seconds: Option<Spanned<f64>>,
    ready: Option<Spanned<RawReady>>,
    autostart: Option<bool>,
    keep_instances: Option<Spanned<u32>>,
    keep_builds: Option<Spanned<u32>>,
    max_bytes: Option<Spanned<u64>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    Rust,
    Npm,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReady {
    log: Option<Spanned<String>>,
    tcp: Option<Spanned<u16>>,
    http: Option<Spanned<String>>,
    timeout_seconds: Option<Spanned<f64>>,
}

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

/// What is needed to turn a byte span into a located [`ConfigError`].
struct Ctx<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            path: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    fn toml_err(&self, e: toml::de::Error) -> ConfigError {
        // Every syntax and type error from the toml crate carries a span in practice; the
        // start of the file is a last resort that still yields a clickable location.
        let span = e.span().unwrap_or(0..0);
        let message = Self::describe_toml_error(&e);
        self.err(span, message)
    }

    /// Rewrites serde's wording (`unknown field`, `u16`, ...) into the vocabulary of the
    /// file (keys, tables, integers) and says which table or key the error is about.
    fn describe_toml_error(e: &toml::de::Error) -> String {
        let message = e.message().trim_end();
        let table = error_key_path(e);
        if let Some(rest) = message.strip_prefix("unknown field `")
            && let Some((key, expected)) = rest.split_once('`')
        {
            let expected = expected
                .trim_start_matches(", ")
                .trim_start_matches("expected ")
                .trim_start_matches("one of ")
                .replace('`', "")
                .replace(" or ", ", ");
            let place = match table {
                Some(t) if !t.is_empty() => format!("in [{t}]"),
                _ => "at top level".to_string(),
            };
            return format!("unknown key `{key}` {place}; expected one of: {expected}");
        }
        let message = message
            .replace("expected u16", "expected a port number from 1 to 65535")
            .replace("expected u32", "expected a non-negative 32-bit integer")
            .replace("expected u64", "expected a non-negative integer")
            .replace("expected f64", "expected a number")
            .replace("expected a sequence", "expected an array")
            .replace("expected a map", "expected a table");
        match table.filter(|t| !t.is_empty()) {
            Some(key) => format!("`{key}`: {message}"),
            None => message,
        }
    }
}

/// The dotted key path the toml crate attached to a deserialization error (e.g.
/// `process.web`). It is only exposed through `Display`, and only when the error has no
/// input attached, hence the detour.
fn error_key_path(e: &toml::de::Error) -> Option<String> {
    let mut e = e.clone();
    e.set_input(None);
    let shown = e.to_string();
    let last = shown.trim_end().lines().last()?;
    let path = last.strip_prefix("in `")?.strip_suffix('`')?;
    Some(path.to_string())
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Converts a number from the file, counted in units of `unit_seconds`, into a duration,
/// rejecting what `Duration` cannot represent rather than panicking on it.
fn duration(
    ctx: &Ctx,
    value: Option<Spanned<f64>>,
    unit_seconds: f64,
    default: f64,
    key: &str,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(Duration::from_secs_f64(default * unit_seconds));
    };
    let span = value.span();
    let v = *value.get_ref();
    if !v.is_finite() || v < 0.0 {
        return Err(ctx.err(
            span,
            format!("`{key}` must be a non-negative number, got {v}"),
        ));
    }
    Duration::try_from_secs_f64(v * unit_seconds)
        .map_err(|_| ctx.err(span, format!("`{key}` is too large: {v}")))
}

fn positive<T: Copy + PartialEq + Default + fmt::Display>(
    ctx: &Ctx,
    value: Option<Spanned<T>>,
    default: T,
    key: &str,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if *v.get_ref() == T::default() => {
            Err(ctx.err(v.span(), format!("`{key}` must be at least 1")))
        }
        Some(v) => Ok(*v.get_ref()),
    }
}

fn resolve(raw: RawConfig, ctx: &Ctx, dir: &Path) -> Result<Config, ConfigError> {
    let mcp_port = match raw.mcp_port {
        None => DEFAULT_MCP_PORT,
        // Port 0 would make the OS pick one, which no MCP client could then find.
        Some(p) if *p.get_ref() == 0 => {
            return Err(ctx.err(p.span(), "`mcp_port` must be between 1 and 65535"));
        }
        Some(p) => p.into_inner(),
    };
    let backoff_max_span = raw
        .release_crash_backoff_max_seconds
        .as_ref()
        .map(|v| v.span());
    let release_backoff_initial = duration(
        ctx,
        raw.release_crash_backoff_initial_seconds,
        1.0,
        DEFAULT_RELEASE_BACKOFF_INITIAL_SECONDS,
        "release_crash_backoff_initial_seconds",
    )?;
    let release_backoff_max = duration(
        ctx,
        raw.release_crash_backoff_max_seconds,
        1.0,
        DEFAULT_RELEASE_BACKOFF_MAX_SECONDS,
        "release_crash_backoff_max_seconds",
    )?;
    if release_backoff_max < release_backoff_initial {
        // Reported at the max when it was given, else the initial value is the odd one out.
        let span = backoff_max_span.unwrap_or(0..0);
        return Err(ctx.err(
            span,
            "`release_crash_backoff_max_seconds` must not be smaller than \
             `release_crash_backoff_initial_seconds`",
        ));
    }

    let mut allowed_origins = Vec::new();
    for origin in raw.allowed_origins.unwrap_or_default() {
        let parsed = origin
            .get_ref()
            .parse::<Origin>()
            .map_err(|why| ctx.err(origin.span(), format!("`allowed_origins`: {why}")))?;
        allowed_origins.push(parsed);
    }

    let mut processes = BTreeMap::new();
    for (name, raw_process) in raw.process {
        let span = name.span();
        let name = name.into_inner();
        let process = resolve_process(&name, span, raw_process, ctx, dir)?;
        processes.insert(name, process);
    }

    Ok(Config {
        mcp_port,
        dev_timeout: duration(
            ctx,
            raw.dev_timeout_hours,
            3600.0,
            DEFAULT_DEV_TIMEOUT_HOURS,
            "dev_timeout_hours",
        )?,
        dev_crash_wait: duration(
            ctx,
            raw.dev_crash_wait_seconds,
            1.0,
            DEFAULT_DEV_CRASH_WAIT_SECONDS,
            "dev_crash_wait_seconds",
        )?,
        release_backoff_initial,
        release_backoff_max,
        stable_run: duration(
            ctx,
            raw.stable_run_seconds,
            1.0,
            DEFAULT_STABLE_RUN_SECONDS,
            "stable_run_seconds",
        )?,
        store_max_bytes: positive(
            ctx,
            raw.store_max_bytes,
            DEFAULT_STORE_MAX_BYTES,
            "store_max_bytes",
        )?,
        prefix_output: raw.prefix_output.unwrap_or(true),
        allowed_origins,
        processes,
        dir: dir.to_path_buf(),
    })
}

/// Process names become file names, CLI arguments and MCP identifiers, so they are kept to a
/// character set that needs no quoting anywhere.
pub fn is_valid_process_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn resolve_process(
    name: &str,
    name_span: Range<usize>,
    raw: RawProcess,
    ctx: &Ctx,
    dir: &Path,
) -> Result<ProcessConfig, ConfigError> {
    if !is_valid_process_name(name) {
        return Err(ctx.err(
            name_span,
            format!(
                "invalid process name `{name}`; expected a non-empty name made of \
                 letters, digits, `.`, `_` and `-`"
            ),
        ));
    }
    let non_empty = |argv: &Spanned<Vec<String>>, key: &str| {
        if argv.get_ref().is_empty() || argv.get_ref()[0].is_empty() {
            Err(ctx.err(
                argv.span(),
                format!("`{key}` of [process.{name}] must start with a program name"),
            ))
        } else {
            Ok(())
        }
    };

    let (kind, command) = match (raw.kind, raw.command) {
        (Some(RawKind::Rust), Some(command)) => {
            return Err(ctx.err(
                command.span(),
                format!(
                    "`command` is not allowed in [process.{name}] with type = \"rust\": \
                     the binary is built by cargo; use `args` for its arguments or \
                     `build` for a custom build command"
                ),
            ));
        }
        (Some(RawKind::Rust), None) => (ProcessKind::Rust, Vec::new()),
        (Some(RawKind::Npm), None) => (
            ProcessKind::Npm,
            DEFAULT_NPM_COMMAND.iter().map(|s| s.to_string()).collect(),
        ),
        (kind, Some(command)) => {
            non_empty(&command, "command")?;
            let kind = match kind {
                Some(RawKind::Npm) => ProcessKind::Npm,
                _ => ProcessKind::Command,
            };
            (kind, command.into_inner())
        }
        (None, None) => {
            return Err(ctx.err(
                name_span,
                format!(
                    "missing key `command` in [process.{name}]; expected `command = \
                     [\"program\", \"arg\", ...]` or `type = \"rust\"` / `type = \"npm\"`"
                ),
            ));
        }
    };

    let build = match raw.build {
        Some(build) => {
            non_empty(&build, "build")?;
            Some(build.into_inner())
        }
        None => None,
    };

    let cwd = match raw.cwd {
        Some(cwd) => normalize(&dir.join(cwd)),
        None => dir.to_path_buf(),
    };

    let stop_signal = match raw.stop_signal {
        Some(sig) => sig
            .get_ref()
            .parse::<StopSignal>()
            .map_err(|msg| ctx.err(sig.span(), msg))?,
        None => StopSignal::default(),
    };

    let ready = match raw.ready {
        Some(ready) => Some(resolve_ready(name, ready, ctx)?),
        None => None,
    };

    Ok(ProcessConfig {
        name: name.to_string(),
        kind,
        command,
        args: raw.args.unwrap_or_default(),
        cwd,
        env: raw.env.unwrap_or_default(),
        build,
        restart: raw.restart.unwrap_or_default(),
        stop_signal,
        stop_timeout: duration(
            ctx,
            raw.stop_timeout_seconds,
            1.0,
            DEFAULT_STOP_TIMEOUT_SECONDS,
            "stop_timeout_seconds",
        )?,
        ready,
        autostart: raw.autostart.unwrap_or(true),
        keep_instances: positive(
            ctx,
            raw.keep_instances,
            DEFAULT_KEEP_INSTANCES,
            "keep_instances",
        )?,
        keep_builds: positive(ctx, raw.keep_builds, DEFAULT_KEEP_BUILDS, "keep_builds")?,
        max_bytes: positive(ctx, raw.max_bytes, DEFAULT_PROCESS_MAX_BYTES, "max_bytes")?,
    })
}

fn resolve_ready(name: &str, ready: Spanned<RawReady>, ctx: &Ctx) -> Result<Ready, ConfigError> {
    let span = ready.span();
    let ready = ready.into_inner();
    let given = [
        ready.log.is_some(),
        ready.tcp.is_some(),
        ready.http.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        return Err(ctx.err(
            span,
            format!(
                "[process.{name}.ready] needs exactly one of `log = \"regex\"`, \
                 `tcp = PORT` or `http = \"http://...\"` (found {given})"
            ),
        ));
    }
    let check = if let Some(log) = ready.log {
        if let Err(e) = regex::Regex::new(log.get_ref()) {
            // The regex crate's message spans several lines with a caret diagram; keep it,
            // since it pinpoints the problem inside the pattern.
            return Err(ctx.err(
                log.span(),
                format!("invalid regex in `process.{name}.ready.log`: {e}"),
            ));
        }
        ReadyCheck::Log {
            pattern: log.into_inner(),
        }
    } else if let Some(tcp) = ready.tcp {
        if *tcp.get_ref() == 0 {
            return Err(ctx.err(tcp.span(), "`ready.tcp` must be a port between 1 and 65535"));
        }
        ReadyCheck::Tcp {
            port: tcp.into_inner(),
        }
    } else if let Some(http) = ready.http {
        let url = http.get_ref();
        // Only plain HTTP: the check targets a local dev server, and TLS would pull in a
        // dependency for no practical gain.
        let host = url.strip_prefix("http://").unwrap_or("");
        if host.is_empty() || host.starts_with('/') {
            return Err(ctx.err(
                http.span(),
                format!(
                    "invalid URL `{url}` in `ready.http`; expected http://HOST[:PORT]/PATH \
                     (https is not supported)"
                ),
            ));
        }
        ReadyCheck::Http {
            url: http.into_inner(),
        }
    } else {
        unreachable!("exactly one ready check was counted above")
    };
    let timeout = duration(
        ctx,
        ready.timeout_seconds,
        1.0,
        DEFAULT_READY_TIMEOUT_SECONDS,
        "ready.timeout_seconds",
    )?;
    Ok(Ready { check, timeout })
}

/// Makes a path absolute and removes `.` and `..` lexically, so that the same directory is
/// always spelled the same way (it is compared and displayed, not just opened).
fn normalize(path: &Path) -> PathBuf {
    let path = absolute(path);
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

fn absolute(path: &Path) -> PathBuf {
    // `absolute` only fails on an empty path or without a current directory; the path as
    // given is then the best answer left.
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

// ---------------------------------------------------------------------------------------------
// Directories
// ---------------------------------------------------------------------------------------------

/// Where the daemon keeps its data: explicit `--data-dir`, else `$BPM_HOME`, else (project
/// daemon with a `.mcp-run`) `DIR/.bpm`, else `$XDG_STATE_HOME/bpm`, else
/// `~/.local/state/bpm`.
///
/// `project_dir` is the directory of a project daemon; it only counts when it holds a
/// `.mcp-run`, so that a daemon started in an arbitrary directory does not litter it.
pub fn data_dir(explicit: Option<&Path>, project_dir: Option<&Path>) -> PathBuf {
    let project_dir = project_dir.filter(|d| d.join(CONFIG_FILE).is_file());
    let bpm_home = std::env::var_os("BPM_HOME");
    let xdg_state_home = std::env::var_os("XDG_STATE_HOME");
    let home = std::env::var_os("HOME");
    data_dir_from(
        explicit,
        project_dir,
        bpm_home.as_deref(),
        xdg_state_home.as_deref(),
        home.as_deref(),
    )
}

/// [`data_dir`] without side effects: the environment is passed in and `project_dir` is
/// taken as already known to hold a `.mcp-run`. Empty variables count as unset, and a
/// relative `$XDG_STATE_HOME` is ignored, as the XDG spec requires.
pub fn data_dir_from(
    explicit: Option<&Path>,
    project_dir: Option<&Path>,
    bpm_home: Option<&OsStr>,
    xdg_state_home: Option<&OsStr>,
    home: Option<&OsStr>,
) -> PathBuf {
    fn set(v: Option<&OsStr>) -> Option<&Path> {
        v.filter(|v| !v.is_empty()).map(Path::new)
    }
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    if let Some(dir) = set(bpm_home) {
        return dir.to_path_buf();
    }
    if let Some(dir) = project_dir {
        return dir.join(PROJECT_DATA_DIR);
    }
    if let Some(dir) = set(xdg_state_home).filter(|d| d.is_absolute()) {
        return dir.join("bpm");
    }
    // Without a home directory there is no per-user place left; a relative path at least
    // keeps the data next to where the daemon was started instead of failing.
    let home = set(home).unwrap_or(Path::new("."));
    home.join(".local").join("state").join("bpm")
}

/// The nearest directory at or above `start` that contains a `.mcp-run`, as an absolute
/// path, so that commands run from a subdirectory apply to the whole project.
pub fn find_project_dir(start: &Path) -> Option<PathBuf> {
    let start = absolute(start);
    start
        .ancestors()
        .find(|dir| dir.join(CONFIG_FILE).is_file())
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/x/.mcp-run";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new(FILE), Path::new("/x"))
    }

    /// Asserts the error is located at `line:col` and mentions `expected`.
    fn assert_err(text: &str, line: usize, col: usize, expected: &str) -> String {
        let err = parse(text).expect_err("config should be rejected");
        let shown = err.to_string();
        let prefix = format!("{FILE}:{line}:{col}: ");
        assert!(
            shown.starts_with(&prefix),
            "expected {prefix:?} in: {shown}"
        );
        assert!(
            shown.contains(expected),
            "expected {expected:?} in: {shown}"
        );
        shown
    }

    const OLD_FORMAT: &str = r#"
mcp_port = 3001
dev_timeout_hours = 3
dev_crash_wait_seconds = 120
release_crash_backoff_initial_seconds = 1
release_crash_backoff_max_seconds = 300
[process.main]
type = "rust"
args = ["--port", "8080"]
[process.frontend]
type = "npm"
command = ["npm", "run", "dev"]
"#;

    #[test]
    fn old_format_parses_with_defaults() {
        let c = parse(OLD_FORMAT).unwrap();
        assert_eq!(c.mcp_port, 3001);
        assert_eq!(c.dev_timeout, Duration::from_secs(3 * 3600));
        assert_eq!(c.dev_crash_wait, Duration::from_secs(120));
        assert_eq!(c.release_backoff_initial, Duration::from_secs(1));
        assert_eq!(c.release_backoff_max, Duration::from_secs(300));
        assert_eq!(c.stable_run, Duration::from_secs(60));
        assert_eq!(c.store_max_bytes, 2 << 30);
        assert!(c.prefix_output);
        assert_eq!(c.dir, Path::new("/x"));
        assert_eq!(c.processes.len(), 2);

        let main = &c.processes["main"];
        assert_eq!(main.name, "main");
        assert_eq!(main.kind, ProcessKind::Rust);
        assert!(main.command.is_empty());
        assert_eq!(main.args, ["--port", "8080"]);
        assert_eq!(main.cwd, Path::new("/x"));
        assert!(main.env.is_empty());
        assert_eq!(main.build, None);
        assert_eq!(main.restart, RestartPolicy::Always);
        assert_eq!(main.stop_signal, StopSignal::Term);
        assert_eq!(main.stop_signal.signal(), nix::sys::signal::Signal::SIGTERM);
        assert_eq!(main.stop_timeout, Duration::from_secs(5));
        assert_eq!(main.ready, None);
        assert!(main.autostart);
        assert_eq!(main.keep_instances, 10);
        assert_eq!(main.keep_builds, 10);
        assert_eq!(main.max_bytes, 256 << 20);

        let frontend = &c.processes["frontend"];
        assert_eq!(frontend.kind, ProcessKind::Npm);
        assert_eq!(frontend.command, ["npm", "run", "dev"]);
        assert!(frontend.args.is_empty());
    }

    #[test]
    fn empty_file_equals_default() {
        assert_eq!(parse("").unwrap(), Config::default_for(Path::new("/x")));
    }

    #[test]
    fn floats_are_accepted_for_durations() {
        let c = parse(
            "dev_timeout_hours = 0.5\nrelease_crash_backoff_initial_seconds = 0.25\n\
             dev_crash_wait_seconds = 1.5\n",
        )
        .unwrap();
        assert_eq!(c.dev_timeout, Duration::from_secs(1800));
        assert_eq!(c.release_backoff_initial, Duration::from_millis(250));
        assert_eq!(c.dev_crash_wait, Duration::from_millis(1500));
    }

    #[test]
    fn npm_without_command_defaults_to_npm_run_dev() {
        let c = parse("[process.web]\ntype = \"npm\"\nargs = [\"--\", \"--port\", \"3000\"]\n")
            .unwrap();
        let web = &c.processes["web"];
        assert_eq!(web.kind, ProcessKind::Npm);
        assert_eq!(web.command, ["npm", "run", "dev"]);
        assert_eq!(web.args, ["--", "--port", "3000"]);
    }

    #[test]
    fn allowed_origins_are_normalized() {
        let c = parse(
            "allowed_origins = [\"http://localhost:5173\", \"HTTPS://App.Example\", \"http://[::1]\"]\n",
        )
        .unwrap();
        let shown: Vec<String> = c.allowed_origins.iter().map(|o| o.to_string()).collect();
        assert_eq!(
            shown,
            [
                "http://localhost:5173",
                "https://app.example:443",
                "http://[::1]:80"
            ]
        );
        assert!(parse("").unwrap().allowed_origins.is_empty());
    }

    #[test]
    fn error_bad_allowed_origin() {
        assert_err(
            "allowed_origins = [\"http://localhost:5173\", \"http://localhost:5173/app\"]\n",
            1,
            45,
            "`allowed_origins`: `http://localhost:5173/app` has more than an origin; expected an origin such as",
        );
        assert_err(
            "allowed_origins = [\"localhost:5173\"]\n",
            1,
            20,
            "is not an origin",
        );
        assert_err("allowed_origins = [\"null\"]\n", 1, 20, "is not an origin");
        assert_err(
            "allowed_origins = [\"file://x\"]\n",
            1,
            20,
            "only http and https origins",
        );
        assert_err(
            "allowed_origins = [\"http://localhost:*\"]\n",
            1,
            20,
            "bad port `*`",
        );
        assert_err(
            "allowed_origins = \"http://localhost:5173\"\n",
            1,
            19,
            "`allowed_origins`: invalid type: string",
        );
    }

    #[test]
    fn every_addition() {
        let text = r#"
store_max_bytes = 1000000
stable_run_seconds = 30.5
prefix_output = false

[process.api]
command = ["python3", "-m", "http.server"]
args = ["8000"]
cwd = "backend/../server"
env = { PORT = "8000", MODE = "dev" }
build = ["make", "all"]
restart = "always"
stop_signal = "INT"
stop_timeout_seconds = 2.5
autostart = false
keep_instances = 3
keep_builds = 2
max_bytes = 4096

[process.api.ready]
http = "http://127.0.0.1:8000/health"
timeout_seconds = 12

[process.db]
command = ["postgres"]
restart = "never"
stop_signal = "sigquit"
ready = { tcp = 5432 }

[process.worker]
command = ["worker"]
cwd = "/abs/dir"
restart = "on-failure"
stop_signal = "SIGHUP"
ready = { log = "listening on \\d+" }
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.store_max_bytes, 1_000_000);
        assert_eq!(c.stable_run, Duration::from_millis(30_500));
        assert!(!c.prefix_output);

        let api = &c.processes["api"];
        assert_eq!(api.kind, ProcessKind::Command);
        assert_eq!(api.command, ["python3", "-m", "http.server"]);
        assert_eq!(api.args, ["8000"]);
        assert_eq!(api.cwd, Path::new("/x/server"));
        assert_eq!(api.env["PORT"], "8000");
        assert_eq!(api.env["MODE"], "dev");
        assert_eq!(api.build, Some(vec!["make".to_string(), "all".to_string()]));
        assert_eq!(api.restart, RestartPolicy::Always);
        assert_eq!(api.stop_signal, StopSignal::Int);
        assert_eq!(api.stop_timeout, Duration::from_millis(2500));
        assert!(!api.autostart);
        assert_eq!(api.keep_instances, 3);
        assert_eq!(api.keep_builds, 2);
        assert_eq!(api.max_bytes, 4096);
        assert_eq!(
            api.ready,
            Some(Ready {
                check: ReadyCheck::Http {
                    url: "http://127.0.0.1:8000/health".into()
                },
                timeout: Duration::from_secs(12),
            })
        );

        let db = &c.processes["db"];
        assert_eq!(db.restart, RestartPolicy::Never);
        assert_eq!(db.stop_signal.signal(), nix::sys::signal::Signal::SIGQUIT);
        assert_eq!(
            db.ready,
            Some(Ready {
                check: ReadyCheck::Tcp { port: 5432 },
                timeout: Duration::from_secs(30),
            })
        );

        let worker = &c.processes["worker"];
        assert_eq!(worker.restart, RestartPolicy::OnFailure);
        assert_eq!(worker.cwd, Path::new("/abs/dir"));
        assert_eq!(worker.stop_signal, StopSignal::Hup);
        assert_eq!(
            worker.ready.as_ref().unwrap().check,
            ReadyCheck::Log {
                pattern: r"listening on \d+".into()
            }
        );
    }

    #[test]
    fn every_stop_signal_spelling() {
        for sig in StopSignal::ALL {
            let name = sig.name();
            assert_eq!(name.parse::<StopSignal>(), Ok(sig));
            assert_eq!(name[3..].parse::<StopSignal>(), Ok(sig));
            assert_eq!(sig.signal().as_str(), name);
        }
    }

    #[test]
    fn dotted_process_names_need_quotes_and_are_valid() {
        let c = parse("[process.\"api.v2\"]\ncommand = [\"x\"]\n").unwrap();
        assert!(c.processes.contains_key("api.v2"));
    }

    #[test]
    fn config_round_trips_through_serde() {
        let c = parse(OLD_FORMAT).unwrap();
        let text = toml::to_string(&c.processes["main"]).unwrap();
        let back: ProcessConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c.processes["main"]);
    }

    #[test]
    fn error_invalid_syntax() {
        assert_err("mcp_port = 1\n[process.web\n", 2, 13, "expected");
    }

    #[test]
    fn error_wrong_type() {
        assert_err(
            "\nmcp_port = \"x\"\n",
            2,
            12,
            "`mcp_port`: invalid type: string \"x\", expected a port number from 1 to 65535",
        );
    }

    #[test]
    fn error_wrong_type_in_process() {
        assert_err(
            "[process.web]\ncommand = [\"a\"]\nautostart = \"yes\"\n",
            3,
            13,
            "`process.web.autostart`: invalid type: string \"yes\", expected a boolean",
        );
    }

    #[test]
    fn error_wrong_type_names_the_nested_key() {
        assert_err(
            "[process.web]\ncommand = [\"a\"]\nenv = { A = 1 }\n",
            3,
            13,
            "`process.web.env.A`: invalid type: integer `1`, expected a string",
        );
        assert_err(
            "[process.web]\ncommand = \"npm start\"\n",
            2,
            11,
            "`process.web.command`: invalid type: string \"npm start\", expected an array",
        );
    }

    #[test]
    fn error_unknown_top_level_key() {
        let msg = assert_err(
            "mcp_port = 1\nmcp_prot = 2\n",
            2,
            1,
            "unknown key `mcp_prot` at top level; expected one of: mcp_port, ",
        );
        assert!(msg.contains("prefix_output"), "{msg}");
    }

    #[test]
    fn error_unknown_process_key() {
        let text = "mcp_port = 1\n\n[process.web]\ntype = \"npm\"\n\n\ncomand = [\"x\"]\n";
        let msg = assert_err(
            text,
            7,
            1,
            "unknown key `comand` in [process.web]; expected one of: type, command, args, ",
        );
        assert!(msg.contains("max_bytes"), "{msg}");
    }

    #[test]
    fn error_unknown_ready_key() {
        assert_err(
            "[process.web]\ncommand = [\"a\"]\n[process.web.ready]\nlog = \"x\"\nlgo = \"y\"\n",
            5,
            1,
            "unknown key `lgo` in [process.web.ready]; expected one of: log, tcp, http, \
             timeout_seconds",
        );
        assert_err(
            "[process.web]\ncommand = [\"a\"]\nready = { tpc = 80 }\n",
            3,
            11,
            "unknown key `tpc` in [process.web.ready]",
        );
    }

    #[test]
    fn error_rust_with_command() {
        assert_err(
            "[process.main]\ntype = \"rust\"\ncommand = [\"cargo\", \"run\"]\n",
            3,
            11,
            "`command` is not allowed in [process.main] with type = \"rust\"",
        );
    }

    #[test]
    fn error_missing_command() {
        assert_err(
            "mcp_port = 1\n[process.web]\nargs = [\"x\"]\n",
            2,
            10,
            "missing key `command` in [process.web]",
        );
    }

    #[test]
    fn error_empty_command() {
        assert_err(
            "[process.web]\ncommand = []\n",
            2,
            11,
            "`command` of [process.web] must start with a program name",
        );
    }

    #[test]
    fn error_bad_restart() {
        assert_err(
            "[process.web]\ncommand = [\"a\"]\nrestart = \"sometimes\"\n",
            3,
            11,
            "unknown variant `sometimes`, expected one of `always`, `on-failure`, `never`",
        );
    }

    #[test]
    fn error_bad_type() {
        assert_err(
            "[process.web]\ntype = \"python\"\n",
            2,
            8,
            "unknown variant `python`, expected `rust` or `npm`",
        );
    }

    #[test]
    fn error_bad_signal() {
        assert_err(
            "[process.web]\ncommand = [\"a\"]\nstop_signal = \"SIGTERN\"\n",
            3,
            15,
            "unknown stop_signal `SIGTERN`; expected one of: SIGTERM, SIGINT,",
        );
    }

    #[test]
    fn error_bad_regex() {
        assert_err(
            "[process.web]\ncommand = [\"a\"]\n[process.web.ready]\nlog = \"ready (\"\n",
            4,
            7,
            "invalid regex in `process.web.ready.log`",
        );
    }

    #[test]
    fn error_bad_url() {
        assert_err(
            "[process.web]\ncommand = [\"a\"]\nready = { http = \"https://x/\" }\n",
            3,
            18,
            "expected http://HOST[:PORT]/PATH",
        );
    }

    #[test]
    fn error_ready_needs_exactly_one_check() {
        assert_err(
            "[process.web]\ncommand = [\"a\"]\nready = { tcp = 1, log = \"x\" }\n",
            3,
            9,
            "needs exactly one of",
        );
        assert_err(
            "[process.web]\ncommand = [\"a\"]\nready = { timeout_seconds = 3 }\n",
            3,
            9,
            "(found 0)",
        );
    }

    #[test]
    fn error_bad_process_name() {
        assert_err(
            "mcp_port = 1\n[process.\"my app\"]\ncommand = [\"a\"]\n",
            2,
            10,
            "invalid process name `my app`",
        );
        assert_err(
            "[process.\"\"]\ncommand = [\"a\"]\n",
            1,
            10,
            "invalid process name ``",
        );
    }

    #[test]
    fn error_negative_duration_and_zero_limits() {
        assert_err(
            "stable_run_seconds = -1\n",
            1,
            22,
            "`stable_run_seconds` must be a non-negative number",
        );
        assert_err(
            "[process.web]\ncommand = [\"a\"]\nkeep_instances = 0\n",
            3,
            18,
            "`keep_instances` must be at least 1",
        );
        assert_err(
            "release_crash_backoff_initial_seconds = 10\nrelease_crash_backoff_max_seconds = 5\n",
            2,
            37,
            "must not be smaller",
        );
    }

    #[test]
    fn error_columns_count_characters() {
        // A multi-byte character before the error must count as one column.
        assert_err("# é\n\"é\" = 1\n", 2, 1, "unknown key `é`");
    }

    #[test]
    fn load_missing_file_is_none_and_present_file_parses() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(CONFIG_FILE), "mcp_port = 4000\n").unwrap();
        let c = Config::load(dir.path()).unwrap().unwrap();
        assert_eq!(c.mcp_port, 4000);
        assert_eq!(c.dir, dir.path());

        std::fs::write(dir.path().join(CONFIG_FILE), "mcp_port = true\n").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        let file = dir.path().join(CONFIG_FILE);
        assert!(
            err.starts_with(&format!("{}:1:12: ", file.display())),
            "{err}"
        );
    }

    #[test]
    fn data_dir_precedence() {
        let os = |s: &'static str| Some(OsStr::new(s));
        let explicit = Path::new("/explicit");
        let project = Path::new("/proj");
        let all = |explicit, project| {
            data_dir_from(explicit, project, os("/bpmhome"), os("/xdg"), os("/home/u"))
        };
        assert_eq!(all(Some(explicit), Some(project)), explicit);
        assert_eq!(all(None, Some(project)), Path::new("/bpmhome"));
        assert_eq!(
            data_dir_from(None, Some(project), None, os("/xdg"), os("/home/u")),
            Path::new("/proj/.bpm")
        );
        assert_eq!(
            data_dir_from(None, None, None, os("/xdg"), os("/home/u")),
            Path::new("/xdg/bpm")
        );
        assert_eq!(
            data_dir_from(None, None, None, None, os("/home/u")),
            Path::new("/home/u/.local/state/bpm")
        );
        // Empty and relative values are treated as unset.
        assert_eq!(
            data_dir_from(None, None, os(""), os("rel"), os("/home/u")),
            Path::new("/home/u/.local/state/bpm")
        );
    }

    #[test]
    fn data_dir_ignores_project_without_config() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = Path::new("/explicit");
        assert_eq!(data_dir(Some(explicit), Some(dir.path())), explicit);
        // Whatever the environment says, a directory without .mcp-run is never chosen.
        assert_ne!(data_dir(None, Some(dir.path())), dir.path().join(".bpm"));
    }

    #[test]
    fn find_project_dir_walks_up() {
        let root = tempfile::tempdir().unwrap();
        let project = root.path().join("proj");
        let deep = project.join("a").join("b");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(find_project_dir(&deep), None);

        std::fs::write(project.join(CONFIG_FILE), "").unwrap();
        assert_eq!(find_project_dir(&deep), Some(project.clone()));
        assert_eq!(find_project_dir(&project), Some(project.clone()));

        // The nearest config wins.
        std::fs::write(deep.join(CONFIG_FILE), "").unwrap();
        assert_eq!(find_project_dir(&deep), Some(deep.clone()));

        // A directory named like the config file does not count.
        let other = root.path().join("other");
        std::fs::create_dir_all(other.join(CONFIG_FILE)).unwrap();
        assert_eq!(find_project_dir(&other), None);
    }
}
