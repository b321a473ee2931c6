//! Shell completion: the static part is clap's; process names come from the daemon (or,
//! with none running, the store read-only) when the shell asks, through clap_complete's
//! `COMPLETE=<shell> bpm` protocol.

use std::time::Duration;

use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};

use crate::client::{self, Client};

/// The completer to attach to every argument that names a process.
pub fn process_names() -> ArgValueCandidates {
    ArgValueCandidates::new(candidates)
}

/// Every known process, its state as the help text; nothing when none can be read
/// quickly (completion must never hang a shell).
fn candidates() -> Vec<CompletionCandidate> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let names = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(1), names())
            .await
            .unwrap_or_default()
    });
    rt.shutdown_background();
    names
        .into_iter()
        .map(|(name, state)| CompletionCandidate::new(name).help(Some(state.into())))
        .collect()
}

async fn names() -> Vec<(String, String)> {
    let Ok(cwd) = std::env::current_dir() else {
        return Vec::new();
    };
    let target = client::locate(None, &cwd);
    let report = if client::answers(&target.socket()).await {
        Client::new(target).status(None).await.ok()
    } else {
        let path = target.store();
        let project = target.project_dir.clone();
        tokio::task::spawn_blocking(move || {
            let store = crate::logs::Store::open_read_only(&path).ok()?;
            let config = project
                .and_then(|d| crate::config::Config::load(&d).ok().flatten())
                .unwrap_or_else(|| crate::config::Config::default_for(std::path::Path::new("/")));
            crate::daemon::ops::offline_status(&store, &config, None).ok()
        })
        .await
        .ok()
        .flatten()
    };
    report
        .map(|r| {
            r.processes
                .into_iter()
                .map(|p| (p.status.name, p.status.state.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The script that registers `bpm`'s completion with `shell` (what `bpm completions
/// SHELL` prints): it calls back into `bpm` for each completion, so process names
/// complete too.
pub fn registration(shell: &str) -> Option<Vec<u8>> {
    let shells = clap_complete::env::Shells::builtins();
    let completer = shells.completer(shell)?;
    let mut buf = Vec::new();
    completer
        .write_registration("COMPLETE", "bpm", "bpm", "bpm", &mut buf)
        .ok()?;
    Some(buf)
}
