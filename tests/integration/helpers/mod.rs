//! What the tests share: waiting on a condition, process probes, daemons (in-process and
//! the real binary), the daemon's JSON API client and the log store's reads.

#![allow(dead_code)] // Not every module uses every helper.

pub mod api;
pub mod daemon;
pub mod env;
pub mod process;
pub mod store;

use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

/// How long a test waits for anything before it fails. Generous: the tests must hold on
/// a loaded two-core machine; a passing test never waits this long.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(10);

/// What a polled condition returns: `true`/`Some(value)` once it holds.
pub trait Outcome {
    type Value;
    fn into_value(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn into_value(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_value(self) -> Option<T> {
        self
    }
}

/// Poll `f` until it holds (`true` or `Some`), and return its value; fail the test naming
/// `what` after [`DEADLINE`].
#[track_caller]
pub fn wait_for<O: Outcome>(what: &str, f: impl FnMut() -> O) -> O::Value {
    wait_for_within(what, DEADLINE, f)
}

/// [`wait_for`] with another deadline.
#[track_caller]
pub fn wait_for_within<O: Outcome>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> O,
) -> O::Value {
    let start = Instant::now();
    loop {
        if let Some(v) = f().into_value() {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// [`wait_for`] for async tests: the condition may await, and the wait yields to the
/// runtime instead of blocking a worker thread.
pub async fn wait_for_async<O: Outcome>(what: &str, mut f: impl AsyncFnMut() -> O) -> O::Value {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await.into_value() {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `bpm::daemon::run` sets the process-wide umask to 0o177 for a moment while it binds its
/// socket. In this one test process, a directory created or a child spawned in that
/// moment would get mode 0o600 (a directory nobody can enter) or inherit that umask. So
/// an in-process daemon starts under [`umask_exclusive`], and the helpers that create
/// directories or spawn children do so under [`umask_shared`].
static UMASK: RwLock<()> = RwLock::new(());

pub fn umask_shared() -> RwLockReadGuard<'static, ()> {
    UMASK.read().unwrap_or_else(|p| p.into_inner())
}

pub fn umask_exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    UMASK.write().unwrap_or_else(|p| p.into_inner())
}

/// A temporary directory (see [`umask_shared`] for why not `tempfile::tempdir()`).
pub fn tempdir() -> tempfile::TempDir {
    let _umask = umask_shared();
    tempfile::tempdir().unwrap()
}
