//! `.mcp-run`'s syntax (private `Raw*` structs that mirror the file exactly: every key
//! optional, unknown keys rejected, values `Spanned` where a later check points at them)
//! and its resolution into the public types, with located errors.

use super::*;

// ---------------------------------------------------------------------------------------------
// Raw syntax
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
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
    /// Colour even though the output is a pipe: sets `FORCE_COLOR=1` and
    /// `CLICOLOR_FORCE=1`, which most tools that colour only terminals honour.
    color: Option<bool>,
    build: Option<Spanned<Vec<String>>>,
    restart: Option<RestartPolicy>,
    stop_signal: Option<Spanned<String>>,
    stop_timeout_seconds: Option<Spanned<f64>>,
    ready: Option<Spanned<RawReady>>,
    health_interval_seconds: Option<Spanned<f64>>,
    restart_on_unhealthy: Option<Spanned<bool>>,
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

/// What is needed to turn a byte span into a located [`ConfigError`].
pub(super) struct Ctx<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a Path,
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

    pub(super) fn toml_err(&self, e: toml::de::Error) -> ConfigError {
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

pub(super) fn resolve(raw: RawConfig, ctx: &Ctx, dir: &Path) -> Result<Config, ConfigError> {
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

    let mut ready = match raw.ready {
        Some(ready) => Some(resolve_ready(name, ready, ctx)?),
        None => None,
    };
    resolve_health(
        name,
        name_span,
        ready.as_mut(),
        raw.health_interval_seconds,
        raw.restart_on_unhealthy,
        ctx,
    )?;

    Ok(ProcessConfig {
        name: name.to_string(),
        kind,
        command,
        args: raw.args.unwrap_or_default(),
        cwd,
        env: {
            let mut env = raw.env.unwrap_or_default();
            if raw.color == Some(true) {
                for k in ["FORCE_COLOR", "CLICOLOR_FORCE"] {
                    env.entry(k.to_owned()).or_insert_with(|| "1".to_owned());
                }
            }
            env
        },
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
    Ok(Ready {
        timeout,
        ..Ready::new(check)
    })
}

/// `health_interval_seconds` and `restart_on_unhealthy`: they repeat a TCP or HTTP
/// readiness check, so they need one.
fn resolve_health(
    name: &str,
    name_span: Range<usize>,
    ready: Option<&mut Ready>,
    interval: Option<Spanned<f64>>,
    restart: Option<Spanned<bool>>,
    ctx: &Ctx,
) -> Result<(), ConfigError> {
    let span = interval
        .as_ref()
        .map(|i| i.span())
        .or(restart.as_ref().map(|r| r.span()))
        .unwrap_or(name_span);
    let interval = match interval {
        Some(v) => Some(duration(
            ctx,
            Some(v),
            1.0,
            DEFAULT_HEALTH_INTERVAL_SECONDS,
            "health_interval_seconds",
        )?),
        None => None,
    };
    let restart = restart.is_some_and(|r| r.into_inner());
    let Some(ready) = ready else {
        if interval.is_some() || restart {
            return Err(ctx.err(
                span,
                format!(
                    "health checks of [process.{name}] repeat its readiness check: add \
                     `ready = {{ tcp = PORT }}` or `ready = {{ http = \"http://...\" }}`"
                ),
            ));
        }
        return Ok(());
    };
    if matches!(ready.check, ReadyCheck::Log { .. })
        && (interval.is_some_and(|d| !d.is_zero()) || restart)
    {
        return Err(ctx.err(
            span,
            format!(
                "[process.{name}] has a log readiness check, which cannot be repeated; \
                 health checks need `ready = {{ tcp = PORT }}` or `ready = {{ http = \"http://...\" }}`"
            ),
        ));
    }
    if interval.is_some_and(|d| d.is_zero()) && restart {
        return Err(ctx.err(
            span,
            format!(
                "[process.{name}]: `restart_on_unhealthy` needs health checks, but \
                 `health_interval_seconds = 0` turns them off"
            ),
        ));
    }
    ready.health_interval = interval;
    ready.restart_on_unhealthy = restart;
    Ok(())
}

/// Makes a path absolute and removes `.` and `..` lexically, so that the same directory is
/// always spelled the same way (it is compared and displayed, not just opened).
pub(super) fn normalize(path: &Path) -> PathBuf {
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

pub(super) fn absolute(path: &Path) -> PathBuf {
    // `absolute` only fails on an empty path or without a current directory; the path as
    // given is then the best answer left.
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
