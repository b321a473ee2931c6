//! Where bpm keeps its data, and which project a directory belongs to.

use super::parse::absolute;
use super::*;

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
