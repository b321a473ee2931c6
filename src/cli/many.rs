//! `bpm logs a b` and `bpm logs --all`: several processes as one, interleaved by time,
//! each line prefixed with `[name]` (as `docker compose logs` does), and followed
//! together with `-f`.

use std::io::Write as _;
use std::process::ExitCode;

use super::logs::{LogsArgs, Render};
use super::{Source, UsageError, api_error};
use crate::daemon::ops;
use crate::protocol::{
    DEFAULT_FOLLOW_TAIL, FollowQuery, FollowRecord, LogLine, LogQuery, LogResult, Stream,
};

/// Read (or follow) every process `args` names.
pub(super) async fn logs(
    args: &LogsArgs,
    source: &Source,
    render: &Render,
    since_us: Option<i64>,
    until_us: Option<i64>,
) -> anyhow::Result<ExitCode> {
    if args.follow && args.context > 0 {
        return Err(UsageError("--context is not available while following".into()).into());
    }
    let names = names(args, source).await?;
    if args.follow
        && let Source::Daemon(client) = source
    {
        return follow(args, client, &names, render).await;
    }
    let query = LogQuery {
        pattern: args.grep.clone(),
        case_insensitive: args.ignore_case,
        context: args.context,
        head: args.head,
        tail: args.tail,
        stream: args.stream,
        build: args.build,
        since_us,
        until_us,
        ..Default::default()
    };
    query.validate().map_err(UsageError)?;
    // One read each, all at once: the daemon answers them side by side.
    let reads = names.iter().map(|name| async {
        match source {
            Source::Empty(t) => Err(Source::nothing_here(t)),
            Source::Daemon(client) => client.logs(name, &query).await.map_err(api_error),
            Source::Store(_, store) => {
                let (store, name, query) = (store.clone(), name.clone(), query.clone());
                tokio::task::spawn_blocking(move || ops::read_logs(&store, &name, &query))
                    .await?
                    .map_err(anyhow::Error::from)
            }
        }
    });
    let mut results = Vec::with_capacity(names.len());
    for r in futures_util::future::join_all(reads).await {
        match r {
            Ok(r) => results.push(r),
            // Nothing stored for it yet (a configured process never started).
            Err(e) if args.all && e.to_string().contains("no runs") => {}
            Err(e) => return Err(e),
        }
    }
    let merged = ops::merge_logs(names.join(","), results, &query);
    print(&merged, &names, render)?;
    if args.follow {
        eprintln!("bpm: not following: no daemon is running");
    }
    Ok(ExitCode::SUCCESS)
}

/// The names given, or with `--all` every process known (to the daemon, or in the store).
async fn names(args: &LogsArgs, source: &Source) -> anyhow::Result<Vec<String>> {
    if !args.all {
        return Ok(args.names.clone());
    }
    let report = match source {
        Source::Empty(t) => return Err(Source::nothing_here(t)),
        Source::Daemon(client) => client.status(None).await.map_err(api_error)?,
        Source::Store(t, store) => {
            let (store, project) = (store.clone(), t.project_dir.clone());
            tokio::task::spawn_blocking(move || {
                let config = project
                    .and_then(|d| crate::config::Config::load(&d).ok().flatten())
                    .unwrap_or_else(|| {
                        crate::config::Config::default_for(std::path::Path::new("/"))
                    });
                ops::offline_status(&store, &config, None)
            })
            .await??
        }
    };
    Ok(report
        .processes
        .into_iter()
        .map(|p| p.status.name)
        .collect())
}

/// The merged answer: NDJSON line records (each naming its process), or `[name] text`.
fn print(r: &LogResult, names: &[String], render: &Render) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    for l in &r.lines {
        print_line(&mut out, l, names, render)?;
    }
    out.flush()?;
    if r.omitted > 0 {
        eprintln!(
            "bpm: {} more line{} not shown (raise --tail, or use --head)",
            r.omitted,
            if r.omitted == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

fn print_line(
    out: &mut impl std::io::Write,
    l: &LogLine,
    names: &[String],
    render: &Render,
) -> std::io::Result<()> {
    if render.json {
        return render.json_record(out, &FollowRecord::Line(l.clone()));
    }
    let name = l.process.as_deref().unwrap_or("?");
    let colour = names.iter().position(|n| n == name).unwrap_or(0);
    render.prefixed_line(out, name, colour, &l.ts, &l.text, l.matched)
}

/// Follow every process at once: one follow stream each, their lines printed as they
/// come, stdout's on stdout and stderr's on stderr.
async fn follow(
    args: &LogsArgs,
    client: &crate::client::Client,
    names: &[String],
    render: &Render,
) -> anyhow::Result<ExitCode> {
    let query = FollowQuery {
        build: args.build,
        tail: Some(args.tail.map_or(DEFAULT_FOLLOW_TAIL, |t| t as u64)),
        stream: args.stream,
        pattern: args.grep.clone(),
        case_insensitive: args.ignore_case,
        ..Default::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<FollowRecord>)>(64);
    for name in names {
        let mut records = client.follow(name, &query).await.map_err(api_error)?;
        let (tx, name) = (tx.clone(), name.clone());
        tokio::spawn(async move {
            while let Ok(Some(batch)) = records.next().await {
                if tx.send((name.clone(), batch)).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    while let Some((name, batch)) = rx.recv().await {
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        for rec in batch {
            match rec {
                FollowRecord::Line(mut l) => {
                    l.process = Some(name.clone());
                    if l.stream == Stream::Stderr && !render.json {
                        print_line(&mut err, &l, names, render)?;
                    } else {
                        print_line(&mut out, &l, names, render)?;
                    }
                }
                other if render.json => render.json_record(&mut out, &other)?,
                FollowRecord::Instance {
                    number,
                    switch: true,
                    ..
                } => {
                    out.flush()?;
                    writeln!(err, "bpm: --- {name} runs again: run #{number} ---")?;
                }
                FollowRecord::Exit {
                    status,
                    restarted: false,
                    ..
                } => {
                    out.flush()?;
                    writeln!(err, "bpm: --- {name} exited: {status} ---")?;
                }
                _ => {}
            }
        }
        out.flush()?;
    }
    eprintln!("bpm: the daemon stopped; no more lines");
    Ok(ExitCode::SUCCESS)
}
