//! `bpm service install|uninstall|status`: a systemd unit for the global daemon or a
//! project's, so that it runs without a terminal and comes back after a crash or a
//! reboot. The unit is `Type=notify` with a watchdog (the daemon speaks sd_notify, see
//! [`crate::daemon::notify`]), runs this binary by its absolute path with the `PATH` of
//! the shell that installed it (so `npm` or `cargo` from nvm or rustup are found), and
//! `Delegate=yes`, so the daemon can give each process a cgroup of its own.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

/// How often, at most, the daemon must say it is alive (`WatchdogSec=`).
pub const WATCHDOG_SEC: u32 = 30;

#[derive(clap::Args, Debug)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Write the unit, then `systemctl daemon-reload` and `enable --now` it.
    Install(InstallArgs),
    /// `systemctl disable --now` the unit, then remove it.
    Uninstall(Which),
    /// Whether the unit is installed, what systemd says of it, and whether its daemon
    /// answers.
    Status(Which),
}

/// Which unit.
#[derive(clap::Args, Debug, Clone)]
pub struct Which {
    /// The project directory (it must have a .mcp-run); without it, the global daemon.
    pub dir: Option<PathBuf>,
    /// A system unit (/etc/systemd/system, run as you) instead of a user unit.
    #[arg(long)]
    pub system: bool,
    /// Where the unit file goes (default: $XDG_CONFIG_HOME/systemd/user, i.e.
    /// ~/.config/systemd/user; with --system /etc/systemd/system).
    #[arg(long, value_name = "DIR")]
    pub unit_dir: Option<PathBuf>,
    /// Do not run systemctl: only write (or remove, or read) the unit file.
    #[arg(long, visible_alias = "no-enable")]
    pub no_systemctl: bool,
}

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    #[command(flatten)]
    pub which: Which,
    /// Print the unit on stdout and write nothing.
    #[arg(long)]
    pub print: bool,
}

pub fn main(args: ServiceArgs) -> ExitCode {
    let result = match args.action {
        Action::Install(a) => install(&a),
        Action::Uninstall(w) => uninstall(&w),
        Action::Status(w) => status(&w),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bpm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the unit is for: its name, file, and what goes into it.
#[derive(Debug, Clone)]
pub struct Unit {
    pub name: String,
    pub path: PathBuf,
    pub system: bool,
    /// The project directory (the home directory for the global daemon).
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub project: bool,
}

impl Unit {
    /// The unit `which` names, from the environment.
    pub fn resolve(which: &Which) -> anyhow::Result<Unit> {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        let (dir, data_dir, name, project) = match &which.dir {
            Some(d) => {
                let dir = std::path::absolute(d)
                    .with_context(|| format!("cannot resolve {}", d.display()))?;
                if !dir.join(crate::config::CONFIG_FILE).is_file() {
                    anyhow::bail!(
                        "{} has no {}: a project service needs one (create it), or leave the directory out for the global daemon",
                        dir.display(),
                        crate::config::CONFIG_FILE
                    );
                }
                let data = crate::config::data_dir(None, Some(&dir));
                let name = format!("bpm-{}.service", escape_path(&dir));
                (dir, data, name, true)
            }
            None => {
                let dir = home.clone().ok_or_else(|| {
                    anyhow::anyhow!("HOME is not set: the global daemon runs in the home directory; set HOME or name a project directory")
                })?;
                let data = crate::config::data_dir(None, None);
                let data = std::path::absolute(&data).unwrap_or(data);
                (dir, data, "bpm.service".to_owned(), false)
            }
        };
        let unit_dir = match (&which.unit_dir, which.system) {
            (Some(d), _) => d.clone(),
            (None, true) => PathBuf::from("/etc/systemd/system"),
            (None, false) => {
                let config = std::env::var_os("XDG_CONFIG_HOME")
                    .map(PathBuf::from)
                    .filter(|p| p.is_absolute())
                    .or_else(|| home.map(|h| h.join(".config")))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "neither XDG_CONFIG_HOME nor HOME is set: pass --unit-dir DIR"
                        )
                    })?;
                config.join("systemd").join("user")
            }
        };
        Ok(Unit {
            path: unit_dir.join(&name),
            name,
            system: which.system,
            dir,
            data_dir,
            project,
        })
    }
}

/// The unit file's text. `exe` is this binary, `path` the `PATH` to run with, `user` (a
/// system unit only) whom to run as.
pub fn render(unit: &Unit, exe: &Path, path: &str, user: Option<&str>) -> String {
    let mut s = String::new();
    let what = if unit.project {
        format!("the daemon of {}", unit.dir.display())
    } else {
        "the global daemon".to_owned()
    };
    let _ = writeln!(
        s,
        "# Written by `bpm service install`; `bpm service uninstall` removes it."
    );
    let _ = writeln!(s, "[Unit]");
    let _ = writeln!(s, "Description=bpm, {}", specifiers(&what));
    let _ = writeln!(s, "After=network.target");
    let _ = writeln!(s);
    let _ = writeln!(s, "[Service]");
    let _ = writeln!(s, "Type=notify");
    let _ = writeln!(s, "NotifyAccess=main");
    let _ = writeln!(
        s,
        "ExecStart={} serve --data-dir {} {}",
        exec_arg(&exe.to_string_lossy()),
        exec_arg(&unit.data_dir.to_string_lossy()),
        exec_arg(&unit.dir.to_string_lossy())
    );
    let _ = writeln!(
        s,
        "WorkingDirectory={}",
        specifiers(&unit.dir.to_string_lossy())
    );
    let _ = writeln!(s, "Environment={}", quoted(&format!("PATH={path}")));
    if let Some(user) = user {
        let _ = writeln!(s, "User={}", specifiers(user));
    }
    let _ = writeln!(s, "Restart=always");
    let _ = writeln!(s, "RestartSec=2");
    let _ = writeln!(s, "WatchdogSec={WATCHDOG_SEC}");
    let _ = writeln!(
        s,
        "# SIGTERM to the daemon only: it stops each process with its own signal and grace."
    );
    let _ = writeln!(s, "KillMode=mixed");
    let _ = writeln!(
        s,
        "# The daemon may create a cgroup for each process it runs."
    );
    let _ = writeln!(s, "Delegate=yes");
    let _ = writeln!(s);
    let _ = writeln!(s, "[Install]");
    let target = if unit.system {
        "multi-user.target"
    } else {
        "default.target"
    };
    let _ = writeln!(s, "WantedBy={target}");
    s
}

/// `%` is a specifier in most unit settings: `%%` is a literal one.
fn specifiers(s: &str) -> String {
    s.replace('%', "%%")
}

/// A double-quoted value, with C escapes and specifiers escaped.
fn quoted(s: &str) -> String {
    let mut q = String::from("\"");
    for c in specifiers(s).chars() {
        match c {
            '"' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// One word of `ExecStart=`: as it is when plain, else quoted; `$` is doubled either way
/// (systemd would expand `$VAR`).
fn exec_arg(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,=@".contains(c));
    if plain {
        s.to_owned()
    } else {
        quoted(s).replace('$', "$$")
    }
}

/// A path as `systemd-escape --path` writes it: slashes become `-`, anything but ASCII
/// letters, digits, `:`, `_` and `.` (and a leading `.`) becomes `\xNN`.
pub fn escape_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let trimmed = text.trim_matches('/');
    if trimmed.is_empty() {
        return "-".to_owned();
    }
    let mut out = String::new();
    for (i, b) in trimmed.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

fn install(args: &InstallArgs) -> anyhow::Result<ExitCode> {
    let unit = Unit::resolve(&args.which)?;
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("cannot find the path of this bpm binary")?;
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let user = unit.system.then(current_user);
    let text = render(&unit, &exe, &path, user.as_deref());
    if args.print {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(parent) = unit.path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&unit.path, &text)
        .with_context(|| format!("cannot write the unit {}", unit.path.display()))?;
    println!("wrote {}", unit.path.display());
    let scope = scope_flag(&unit);
    if !run_systemctl(&args.which) {
        println!(
            "to start it now and at every boot: systemctl{scope} daemon-reload && systemctl{scope} enable --now {}",
            unit.name
        );
    } else {
        systemctl(&unit, &["daemon-reload"])?;
        systemctl(&unit, &["enable", "--now", &unit.name])?;
        println!("enabled and started {}", unit.name);
    }
    if !unit.system && !lingers() {
        let user = current_user();
        println!(
            "note: a user service runs only while you are logged in; for it to run without a login and start at boot: loginctl enable-linger {user}"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn uninstall(which: &Which) -> anyhow::Result<ExitCode> {
    let unit = Unit::resolve(which)?;
    if !unit.path.exists() {
        anyhow::bail!(
            "no unit {} is installed (bpm service status says which one is)",
            unit.path.display()
        );
    }
    if run_systemctl(which) {
        systemctl(&unit, &["disable", "--now", &unit.name])?;
    }
    std::fs::remove_file(&unit.path)
        .with_context(|| format!("cannot remove {}", unit.path.display()))?;
    println!("removed {}", unit.path.display());
    if run_systemctl(which) {
        systemctl(&unit, &["daemon-reload"])?;
    }
    Ok(ExitCode::SUCCESS)
}

fn status(which: &Which) -> anyhow::Result<ExitCode> {
    let unit = Unit::resolve(which)?;
    let installed = unit.path.exists();
    println!(
        "unit: {} ({})",
        unit.path.display(),
        if installed {
            "installed"
        } else {
            "not installed; bpm service install writes it"
        }
    );
    match crate::daemon::read_daemon_info(&unit.data_dir) {
        Some(i)
            if std::os::unix::net::UnixStream::connect(
                unit.data_dir.join(crate::daemon::SOCKET_FILE),
            )
            .is_ok() =>
        {
            println!(
                "daemon: running, pid {}, port {}, data in {}",
                i.pid,
                i.port,
                unit.data_dir.display()
            );
        }
        _ => println!("daemon: not running (data in {})", unit.data_dir.display()),
    }
    if installed && run_systemctl(which) {
        let mut cmd = std::process::Command::new("systemctl");
        if !unit.system {
            cmd.arg("--user");
        }
        // `systemctl status` exits 3 for a stopped unit: what it prints says it.
        let _ = cmd
            .args(["status", "--no-pager", &unit.name])
            .status()
            .context("cannot run systemctl")?;
    }
    Ok(if installed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn scope_flag(unit: &Unit) -> &'static str {
    if unit.system { "" } else { " --user" }
}

/// Whether to run systemctl: not when asked not to, nor when it is not on PATH.
fn run_systemctl(which: &Which) -> bool {
    !which.no_systemctl && on_path("systemctl")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// `systemctl [--user] ARGS`, failing with what it printed.
fn systemctl(unit: &Unit, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = std::process::Command::new("systemctl");
    if !unit.system {
        cmd.arg("--user");
    }
    let out = cmd.args(args).output().context("cannot run systemctl")?;
    if !out.status.success() {
        anyhow::bail!(
            "`systemctl{} {}` failed ({}): {}; the unit is {} (`--no-systemctl` only writes it)",
            scope_flag(unit),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            unit.path.display()
        );
    }
    Ok(())
}

/// The name of whoever runs this, else their uid.
fn current_user() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

/// Whether systemd keeps this user's services running without a login.
fn lingers() -> bool {
    Path::new("/var/lib/systemd/linger")
        .join(current_user())
        .exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_escaped_as_systemd_does() {
        assert_eq!(escape_path(Path::new("/home/me/app")), "home-me-app");
        assert_eq!(
            escape_path(Path::new("/home/me/my app/.x")),
            "home-me-my\\x20app-.x"
        );
        assert_eq!(
            escape_path(Path::new("/.hidden/a-b")),
            "\\x2ehidden-a\\x2db"
        );
        assert_eq!(escape_path(Path::new("/")), "-");
    }

    #[test]
    fn exec_words_are_quoted_when_needed() {
        assert_eq!(exec_arg("/usr/bin/bpm"), "/usr/bin/bpm");
        assert_eq!(exec_arg("/a b/50%"), "\"/a b/50%%\"");
        assert_eq!(exec_arg("/a/$HOME\"x"), "\"/a/$$HOME\\\"x\"");
    }
}
