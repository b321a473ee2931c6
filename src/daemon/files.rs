//! The data directory is its user's alone: the directory 0700, everything in it 0600. It
//! holds every line the processes printed (tokens, database URLs), so no other user may
//! read it.
//!
//! How no file is ever readable by others, not even for a moment: the directory is
//! created 0700 (or restricted to 0700 at start) before anything is created in it, and
//! opening a file needs search permission on its directory. So the mode a file is created
//! with (the store's comes from `logs`, under the process umask) cannot expose it; it is
//! still set to 0600 right after, so the file stays private if the directory is ever
//! loosened. The daemon does not change its umask instead: the umask is process-wide,
//! so it would leak into every supervised process (and into a test process that runs
//! the daemon in-process).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// The data directory's mode.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file in the data directory.
pub const FILE_MODE: u32 = 0o600;

/// An entry whose mode let other users in, and what it was changed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restricted {
    pub path: PathBuf,
    pub old_mode: u32,
    pub new_mode: u32,
}

impl std::fmt::Display for Restricted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} was mode {:04o}, readable by other users; it is now {:04o}",
            self.path.display(),
            self.old_mode,
            self.new_mode
        )
    }
}

/// Create `dir` with mode 0700 (its missing parents as the umask says); an existing
/// directory is left as it is (see [`restrict`]). A project's `.bpm` gets a `.gitignore`
/// of `*`, so that it never shows up in `git status`.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        other => other?,
    }
    if dir.file_name().is_some_and(|n| n == ".bpm") {
        let ignore = dir.join(".gitignore");
        if !ignore.exists() {
            write_private(
                &ignore,
                b"# bpm's data (its log store, socket and state): never commit it.\n*\n",
            )?;
        }
    }
    Ok(())
}

/// Open `path` for appending, creating it with mode 0600.
pub fn open_private_append(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Write `bytes` to `path`, creating it with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.write_all(bytes)
}

/// Take the group and other bits off `dir` (0755 becomes 0700), then off every entry
/// directly in it (a 0644 file becomes 0600, a subdirectory 0700); returns what was
/// changed. The directory comes first, so nobody else can swap an entry for a symlink
/// while the entries are fixed; symlinks are skipped (a chmod would follow them).
pub fn restrict(dir: &Path) -> io::Result<Vec<Restricted>> {
    let mut changed = Vec::new();
    restrict_one(dir, &fs::metadata(dir)?, &mut changed)?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        // Does not follow symlinks.
        let meta = entry.metadata()?;
        if !meta.file_type().is_symlink() {
            restrict_one(&entry.path(), &meta, &mut changed)?;
        }
    }
    Ok(changed)
}

/// Take the group and other bits off one path, when it has any.
pub fn restrict_path(path: &Path) -> io::Result<Option<Restricted>> {
    let mut changed = Vec::new();
    restrict_one(path, &fs::symlink_metadata(path)?, &mut changed)?;
    Ok(changed.pop())
}

fn restrict_one(path: &Path, meta: &fs::Metadata, changed: &mut Vec<Restricted>) -> io::Result<()> {
    let old_mode = meta.permissions().mode() & 0o7777;
    if old_mode & 0o077 == 0 {
        return Ok(());
    }
    // The owner's bits are kept: 0755 -> 0700, 0644 -> 0600.
    let new_mode = old_mode & 0o700;
    fs::set_permissions(path, fs::Permissions::from_mode(new_mode))?;
    changed.push(Restricted {
        path: path.to_owned(),
        old_mode,
        new_mode,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_loose_directory_and_its_files_are_restricted_and_named() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("data");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let store = dir.join("logs.redb");
        fs::write(&store, b"x").unwrap();
        fs::set_permissions(&store, fs::Permissions::from_mode(0o644)).unwrap();
        let private = dir.join("daemon.json");
        write_private(&private, b"{}").unwrap();
        // A symlink to a file elsewhere is not followed.
        let outside = t.path().join("outside");
        fs::write(&outside, b"y").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();

        let mut changed = restrict(&dir).unwrap();
        changed.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(
            changed,
            [
                Restricted {
                    path: dir.clone(),
                    old_mode: 0o755,
                    new_mode: 0o700
                },
                Restricted {
                    path: store.clone(),
                    old_mode: 0o644,
                    new_mode: 0o600
                },
            ]
        );
        assert_eq!(
            changed[1].to_string(),
            format!(
                "{} was mode 0644, readable by other users; it is now 0600",
                store.display()
            )
        );
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&store), 0o600);
        assert_eq!(mode(&private), 0o600);
        assert_eq!(mode(&outside), 0o644, "the symlink was followed");
        assert!(restrict(&dir).unwrap().is_empty(), "nothing left to fix");
    }

    #[test]
    fn a_project_data_dir_ignores_itself_for_git() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("project").join(".bpm");
        create_private_dir(&dir).unwrap();
        let ignore = fs::read_to_string(dir.join(".gitignore")).unwrap();
        assert_eq!(ignore.lines().last(), Some("*"));
        assert_eq!(mode(&dir.join(".gitignore")), 0o600);
        let other = t.path().join("state");
        create_private_dir(&other).unwrap();
        assert!(!other.join(".gitignore").exists());
    }

    #[test]
    fn created_private() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a").join("data");
        create_private_dir(&dir).unwrap();
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let log = dir.join("daemon.log");
        open_private_append(&log).unwrap();
        assert_eq!(mode(&log), 0o600);
    }
}
