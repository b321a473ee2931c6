//! Builds: a build command runs as a build instance in the store (its output captured like
//! a run's, cancellable, stopped as a group), and its failure is summed up as its first
//! error lines.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ProcessError;
use super::capture::{
    Captures, Recorded, SpawnFailure, convert_status, end_in_background, spawn_recorded,
};
use crate::logs::{EventKind, ExitStatus, Filter, InstanceKind, Store, Window};
use crate::supervisor::procgroup;

/// Lines read back from a failed build to find its errors.
const BUILD_TAIL: usize = 5000;

/// How many error lines are returned as evidence.
const MAX_ERROR_LINES: usize = 20;

/// The last `n` lines of an instance, as text.
pub(super) async fn read_tail(store: &Store, instance: u64, n: usize) -> Vec<String> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        store
            .read(instance, Window::Tail(n), &Filter::default())
            .map(|lines| lines.iter().map(|l| l.text().into_owned()).collect())
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default()
}

/// The lines that look like errors (contain "error", any case), at most 20; if none do,
/// the last 20 lines.
pub fn error_lines(lines: &[String]) -> Vec<String> {
    let errors: Vec<String> = lines
        .iter()
        .filter(|l| l.to_ascii_lowercase().contains("error"))
        .take(MAX_ERROR_LINES)
        .cloned()
        .collect();
    if errors.is_empty() {
        lines[lines.len().saturating_sub(MAX_ERROR_LINES)..].to_vec()
    } else {
        errors
    }
}

/// What a build needs from its process's spec, owned: the build runs in a task of its own.
pub(super) struct BuildCtx {
    pub(super) store: Store,
    pub(super) name: String,
    pub(super) argv: Vec<String>,
    pub(super) cwd: PathBuf,
    pub(super) env: Vec<(String, String)>,
    pub(super) stop_signal: Signal,
    pub(super) stop_timeout: Duration,
    pub(super) passthrough: bool,
}

/// Run a build as a build instance. `cancel` carries `force`.
pub(super) async fn run_build(
    ctx: BuildCtx,
    cancel: oneshot::Receiver<bool>,
) -> Result<(), ProcessError> {
    let started = Instant::now();
    let failed = |code: Option<i32>, first_errors: Vec<String>| ProcessError::BuildFailed {
        name: ctx.name.clone(),
        code,
        first_errors,
    };
    ctx.store.record(
        Some(&ctx.name),
        None,
        EventKind::BuildStarted {
            argv: ctx.argv.clone(),
        },
    );
    let finished = |ok: bool| {
        ctx.store.record(
            Some(&ctx.name),
            None,
            EventKind::BuildFinished {
                ok,
                duration_ms: started.elapsed().as_millis() as u64,
            },
        );
    };
    let Recorded {
        mut child,
        pid: _,
        pgid: _,
        scope,
        stdout,
        stderr,
        writer,
    } = match spawn_recorded(
        &ctx.store,
        &ctx.name,
        InstanceKind::Build,
        &ctx.argv,
        &ctx.cwd,
        &ctx.env,
        false,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            finished(false);
            let message = match e {
                SpawnFailure::Spawn(m) => m,
                SpawnFailure::Record(m) => format!("cannot record the build: {m}"),
            };
            return Err(failed(None, vec![message]));
        }
    };
    let instance = writer.id();
    let prefix = ctx.passthrough.then(|| format!("{} build", ctx.name));
    let captures = Captures::start(stdout, stderr, &writer, prefix);
    let cancelled = tokio::select! {
        _ = child.wait() => None,
        force = cancel => Some(force.unwrap_or(false)),
    };
    let (sig, grace) = match cancelled {
        Some(true) => (Signal::SIGKILL, Duration::ZERO),
        _ => (ctx.stop_signal, ctx.stop_timeout),
    };
    let out = procgroup::stop_group(&mut child, &scope, sig, grace).await;
    let status = out.status.map_or(ExitStatus::Unknown, convert_status);
    captures.drain().await;
    // Known at once (the build's lines stay readable from the ring); durable behind it.
    end_in_background(writer, status.clone(), &ctx.name);
    let ok = cancelled.is_none() && status.success();
    finished(ok);
    if cancelled.is_some() {
        return Err(ProcessError::Cancelled { name: ctx.name });
    }
    if ok {
        return Ok(());
    }
    let tail = read_tail(&ctx.store, instance, BUILD_TAIL).await;
    let code = match status {
        ExitStatus::Code(c) => Some(c),
        _ => None,
    };
    Err(failed(code, error_lines(&tail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_prefers_errors_else_tail() {
        let lines: Vec<String> = (0..30).map(|i| format!("line {i}")).collect();
        assert_eq!(error_lines(&lines), lines[10..]);
        let mut with = lines.clone();
        with.insert(3, "ERROR: boom".into());
        with.push("error[E0308]: mismatched types".into());
        assert_eq!(
            error_lines(&with),
            ["ERROR: boom", "error[E0308]: mismatched types"]
        );
    }
}
