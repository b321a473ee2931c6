//! What works where. bpm is built for Linux; elsewhere (macOS, the BSDs) supervision,
//! the store, the API, MCP, the CLI and the TUI work, but what reads Linux's `/proc`, or
//! its cgroups, is off, and says so instead of silently finding nothing.

/// The features that need Linux (`/proc`, cgroups, `PR_SET_CHILD_SUBREAPER`), for
/// messages.
pub const LINUX_ONLY: &str = "which ports a process listens on and who holds a taken port, \
finding processes left by a killed daemon beyond their process group, the HTTP \
listener's same-user check (use --token-file instead), cgroups and the child subreaper";

/// Whether this system has everything bpm uses.
pub const FULL: bool = cfg!(target_os = "linux");

/// Why a Linux-only feature found nothing here: `None` on Linux.
pub fn unavailable(feature: &str) -> Option<String> {
    (!FULL).then(|| {
        format!(
            "{feature} is not available on {}: bpm reads it from /proc, which only Linux has",
            std::env::consts::OS
        )
    })
}

/// Said once when the daemon starts on another system than Linux.
pub fn warn_at_start() {
    if !FULL {
        tracing::warn!(
            "on {} these features are off (they need Linux): {LINUX_ONLY}",
            std::env::consts::OS
        );
    }
}
