//! What to run and how: a process's [`ProcessSpec`] (per-mode command and build, direnv)
//! and the [`Timing`] of the restart policy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::Mode;
use crate::config::{ProcessConfig, Ready, RestartPolicy};

/// Whether runs and builds in `dir` go through direnv: the project has a `.envrc` and
/// `direnv` is installed.
pub fn uses_direnv(dir: &Path) -> bool {
    dir.join(".envrc").is_file()
        && std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join("direnv").is_file()))
}

/// The durations of the restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub dev_crash_wait: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A run at least this long resets the crash count.
    pub stable_run: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            dev_crash_wait: Duration::from_secs(120),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            stable_run: Duration::from_secs(60),
        }
    }
}

impl Timing {
    pub fn from_config(config: &crate::config::Config) -> Timing {
        Timing {
            dev_crash_wait: config.dev_crash_wait,
            backoff_initial: config.release_backoff_initial,
            backoff_max: config.release_backoff_max,
            stable_run: config.stable_run,
        }
    }

    /// How long to wait before restarting after crash number `crash_count` (1-based).
    pub fn crash_wait(&self, mode: Mode, crash_count: u32) -> Duration {
        match mode {
            Mode::Dev => self.dev_crash_wait,
            Mode::Release => {
                let n = crash_count.saturating_sub(1).min(1000) as i32;
                let secs = self.backoff_initial.as_secs_f64() * 1.5f64.powi(n);
                let max = self.backoff_max.as_secs_f64();
                Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
            }
        }
    }
}

/// What to run and how to supervise it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    pub name: String,
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    /// Variables set on top of the daemon's environment.
    pub env: Vec<(String, String)>,
    /// A build command run, in `cwd`, before a start and on every restart (build-then-swap).
    pub build: Option<Vec<String>>,
    pub restart: RestartPolicy,
    pub stop_signal: Signal,
    /// Grace period between `stop_signal` and SIGKILL.
    pub stop_timeout: Duration,
    pub ready: Option<Ready>,
    /// Also copy every output line to the daemon's stdout, prefixed with `[name] `.
    pub passthrough: bool,
    /// What runs and builds instead in release mode (cargo's `--release` binary).
    pub release: Option<Variant>,
    /// Run and build through `direnv exec CWD` (the project has a `.envrc`).
    pub direnv: bool,
}

/// A mode-specific command and build.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub argv: Vec<String>,
    pub build: Option<Vec<String>>,
}

impl ProcessSpec {
    /// The command to run in `mode`.
    pub fn run_argv(&self, mode: Mode) -> Vec<String> {
        let argv = match (&self.release, mode) {
            (Some(v), Mode::Release) => &v.argv,
            _ => &self.argv,
        };
        self.wrap(argv)
    }

    /// The build command for `mode`, if the process has one.
    pub fn build_argv(&self, mode: Mode) -> Option<Vec<String>> {
        let build = match (&self.release, mode) {
            (Some(v), Mode::Release) => v.build.as_ref(),
            _ => self.build.as_ref(),
        };
        build.map(|b| self.wrap(b))
    }

    fn wrap(&self, argv: &[String]) -> Vec<String> {
        if self.direnv {
            let mut v = vec![
                "direnv".to_owned(),
                "exec".to_owned(),
                self.cwd.display().to_string(),
            ];
            v.extend(argv.iter().cloned());
            v
        } else {
            argv.to_vec()
        }
    }

    /// The spec of a configured process. For `type = "rust"` the executable comes from
    /// cargo's metadata: `argv` is then just `config.args`, and the caller is expected to
    /// put the executable in front (`supervisor::cargo::rust_spec`).
    pub fn from_config(config: &ProcessConfig, passthrough: bool) -> ProcessSpec {
        ProcessSpec {
            name: config.name.clone(),
            argv: config.command.iter().chain(&config.args).cloned().collect(),
            cwd: config.cwd.clone(),
            env: config
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            build: config.build.clone(),
            restart: config.restart,
            stop_signal: config.stop_signal.signal(),
            stop_timeout: config.stop_timeout,
            ready: config.ready.clone(),
            passthrough,
            release: None,
            direnv: uses_direnv(&config.cwd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_backoff_grows_by_half_up_to_max() {
        let t = Timing {
            dev_crash_wait: Duration::from_secs(120),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            stable_run: Duration::from_secs(60),
        };
        let secs: Vec<f64> = (1..=4)
            .map(|n| t.crash_wait(Mode::Release, n).as_secs_f64())
            .collect();
        assert_eq!(secs, [1.0, 1.5, 2.25, 3.375]);
        assert_eq!(t.crash_wait(Mode::Release, 100), Duration::from_secs(300));
        assert_eq!(
            t.crash_wait(Mode::Release, u32::MAX),
            Duration::from_secs(300)
        );
        assert_eq!(t.crash_wait(Mode::Dev, 7), Duration::from_secs(120));
    }
}
