//! Supervision: the operating-system mechanics, and the policy built on them.
//!
//! [`procgroup`] and [`ports`] own what happens at the boundary between bpm and the
//! kernel, and nothing about policy (when to restart, how to back off, what counts as
//! ready); [`process`] owns the policy:
//!
//! - [`procgroup`] starts a command in its own process group, identifies it durably
//!   (pid, pgid and the kernel's start time, so a reused pid is never mistaken for ours)
//!   and stops the whole group: signal, grace, SIGKILL, for live children and for groups
//!   left behind by a daemon that was itself killed. [`scope`] finds what left the group
//!   (`setsid`), [`cgroup`] gives each process a cgroup of its own where the daemon may
//!   create them, and [`reaper`] makes the daemon the subreaper of it all.
//! - [`ports`] answers "who holds this TCP port" from `/proc`, and recognises the
//!   "address already in use" wording of common runtimes in a process's output.
//! - [`process`] is the policy on top: one task per supervised process (start, stop,
//!   restart, crash backoff, build-then-swap, readiness), driven through a
//!   [`process::ProcessHandle`].
//! - [`cargo`] turns a `type = "rust"` process into cargo builds and the binary cargo's
//!   metadata names, per mode (debug in dev, `--release` in release).

pub mod cargo;
pub mod cgroup;
pub mod ports;
pub mod process;
pub mod procgroup;
pub mod reaper;
pub mod scope;
pub(crate) mod sockdiag;
