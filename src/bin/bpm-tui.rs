//! `bpm-tui [URL]`: the same as `bpm tui [--url URL]`.

use std::process::ExitCode;

use clap::Parser;

/// A live dashboard of a bpm daemon and its processes in the terminal.
#[derive(Parser)]
#[command(name = "bpm-tui", version)]
struct Args {
    /// A daemon elsewhere: http://HOST:PORT (its token from BPM_TOKEN). Default: the local
    /// daemon, over its socket.
    url: Option<String>,
    /// The daemon's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    bpm::tui::main(bpm::tui::TuiArgs {
        url: a.url,
        data_dir: a.data_dir,
    })
}
