//! The shorthand of the predecessors' users: `bpm npm run dev` runs a program as
//! `bpm run -- npm run dev` does, and `bpm ~/project` serves a directory as `bpm serve`
//! does.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// The full command line that a shorthand stands for (`words` are the words after
/// `bpm`), or `None` when the first word is neither a program nor a directory.
pub fn expand(words: &[OsString]) -> Option<Vec<OsString>> {
    let first = words.first()?;
    let path = Path::new(first);
    let looks_like_path = first.as_encoded_bytes().contains(&b'/') || first == "." || first == "..";
    let serve = || {
        let mut argv: Vec<OsString> = vec!["bpm".into(), "serve".into()];
        argv.extend(words.iter().cloned());
        argv
    };
    let run = || {
        let mut argv: Vec<OsString> = vec!["bpm".into(), "run".into(), "--".into()];
        argv.extend(words.iter().cloned());
        argv
    };
    if looks_like_path && path.is_dir() {
        return Some(serve());
    }
    if is_program(first) {
        return Some(run());
    }
    path.is_dir().then(serve)
}

/// An executable file: `first` itself when it names a path, else found on `PATH`.
fn is_program(first: &OsStr) -> bool {
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if first.as_encoded_bytes().contains(&b'/') {
        return executable(Path::new(first));
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| executable(&d.join(first))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<OsString> {
        w.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_program_on_path_runs_with_its_arguments() {
        let argv = expand(&words(&["sh", "-c", "echo hi"])).unwrap();
        assert_eq!(argv, words(&["bpm", "run", "--", "sh", "-c", "echo hi"]));
    }

    #[test]
    fn a_directory_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(
            expand(&words(&[d, "--port", "0"])).unwrap(),
            words(&["bpm", "serve", d, "--port", "0"])
        );
    }

    #[test]
    fn anything_else_is_not_a_shorthand() {
        assert_eq!(expand(&words(&["no-such-program-or-dir-xyz"])), None);
        assert_eq!(expand(&words(&["./no/such/file"])), None);
    }
}
