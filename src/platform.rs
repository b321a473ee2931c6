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

/// Arenas glibc's allocator may use in the daemon (see [`limit_malloc_arenas`]).
pub const MALLOC_ARENAS: i32 = 2;

/// Bound glibc's allocator arenas, unless `MALLOC_ARENA_MAX` says otherwise. glibc gives a
/// thread that finds the arenas busy one of its own, up to eight per core, and each keeps
/// what its threads freed for their next allocations: a daemon whose searches and store
/// reads run on many short-lived threads grows by the sum of their high-water marks. The
/// load bench (`cargo bench --bench daemon -- load`) peaks at 98 MiB with glibc's default
/// and 73 MiB with two arenas. Call it before any thread starts.
#[allow(unsafe_code)]
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before other threads
        // exist, it races with no allocation.
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}
