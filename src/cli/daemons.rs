//! `bpm daemons`: the daemons of this user running on this machine (from the registry in
//! the runtime directory, see [`crate::daemon::registry`]).

use std::io::Write as _;
use std::process::ExitCode;

use crate::daemon::registry;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct DaemonsArgs {
    /// Print JSON instead of text: a list of {pid, port, data_dir, project_dir, token}.
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: DaemonsArgs) -> ExitCode {
    let dir = registry::default_dir();
    let daemons = match registry::list(&dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "bpm: cannot read the registry of running daemons {}: {e}",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &daemons)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else if daemons.is_empty() {
        writeln!(
            out,
            "no bpm daemon runs (for this user); `bpm serve DIR` or any `bpm run` starts one"
        )
    } else {
        table(&mut out, &daemons)
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        // `bpm daemons | head -1`
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn table(
    out: &mut impl std::io::Write,
    daemons: &[crate::daemon::DaemonInfo],
) -> std::io::Result<()> {
    let rows: Vec<[String; 4]> = daemons
        .iter()
        .map(|d| {
            [
                d.pid.to_string(),
                d.port.to_string(),
                d.project_dir.display().to_string(),
                d.data_dir.display().to_string(),
            ]
        })
        .collect();
    let head = ["PID", "PORT", "PROJECT", "DATA DIR"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([head[i].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    writeln!(
        out,
        "{:<w0$}  {:<w1$}  {:<w2$}  {}",
        head[0], head[1], head[2], head[3]
    )?;
    for r in &rows {
        writeln!(out, "{:<w0$}  {:<w1$}  {:<w2$}  {}", r[0], r[1], r[2], r[3])?;
    }
    Ok(())
}
