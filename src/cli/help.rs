//! What each command's `--help` ends with: the environment variables it reads and a few
//! examples.

/// The variables every command that reaches a daemon reads.
macro_rules! client_env {
    () => {
        "Environment:
  BPM_HOME    the data directory (default: the nearest project's .bpm, else
              ~/.local/state/bpm); --data-dir overrides it
  BPM_PORT    the HTTP port of a daemon this command starts when none runs
  BPM_LOG     what bpm itself logs on stderr (e.g. debug, bpm=trace); RUST_LOG works too
  NO_COLOR    set to anything non-empty: no colour (--color never)"
    };
}

pub const TOP: &str = concat!(
    "Shorthand:
  bpm npm run dev        is `bpm run -- npm run dev` (any program on PATH)
  bpm ~/code/app         is `bpm serve ~/code/app` (a directory)

",
    client_env!(),
    "
  BPM_TOKEN   the bearer token of `bpm serve` and `bpm tui --url`

Examples:
  bpm run -d -- npm run dev        start a dev server, return once it is up
  bpm logs web --grep panic        search every line web printed in this run
  bpm logs web --instance -2       the run before the last one (after a crash)
  bpm status                       what runs, where it listens"
);

pub const SERVE: &str = "Environment:
  BPM_HOME    the data directory (default: DIR/.bpm for a project, else
              ~/.local/state/bpm); --data-dir overrides it
  BPM_TOKEN   require this bearer token on every HTTP request (--token-file overrides it)
  BPM_LOG     what the daemon logs on stderr (default info; e.g. debug); RUST_LOG works too

Examples:
  bpm serve                        supervise this directory's .mcp-run
  bpm serve ~/code/app --port 0    any free port (it is printed)";

pub const DAEMONS: &str = "Environment:
  XDG_RUNTIME_DIR  where running daemons enter themselves (its bpm/; without it
                   ~/.local/state/bpm/daemons)

Examples:
  bpm daemons                      which projects have a daemon, on which port
  bpm daemons --json";

pub const SERVICE: &str = "Environment:
  PATH             written into the unit, so the daemon finds what your shell finds
  XDG_CONFIG_HOME  user units go to its systemd/user (default ~/.config/systemd/user)
  BPM_HOME         the global daemon's data directory

Examples:
  bpm service install              the global daemon, as a user service, started now
  bpm service install ~/code/app   that project's daemon
  bpm service install --print      only print the unit
  bpm service install --system     a system unit (run as you), e.g. for a server
  bpm service status
  bpm service uninstall";

pub const MCP: &str = concat!(
    client_env!(),
    "

Examples:
  claude mcp add bpm -- bpm mcp    an agent that launches its MCP servers as commands"
);

pub const RUN: &str = concat!(
    client_env!(),
    "

Examples:
  bpm run -- npm run dev                       follow it; Ctrl+C asks whether to stop it
  bpm run -d --ready-port 5173 -- npm run dev  return once port 5173 accepts
  bpm run --restart on-failure -e PORT=3001 -- node server.js"
);

pub const START: &str = concat!(
    client_env!(),
    "

Examples:
  bpm start web                    start the configured process web
  bpm start --all                  start every configured process that is not running"
);

pub const STOP: &str = concat!(
    client_env!(),
    "

Examples:
  bpm stop web                     SIGTERM to its group, SIGKILL after the grace period
  bpm stop --all                   stop everything that runs"
);

pub const RESTART: &str = concat!(
    client_env!(),
    "

Examples:
  bpm restart api                  rebuild (when it has a build step), then restart
  bpm restart --all"
);

pub const RM: &str = concat!(
    client_env!(),
    "

Examples:
  bpm rm npm-run-dev               forget a stopped command (its logs stay searchable)"
);

pub const MODE: &str = concat!(
    client_env!(),
    "

Examples:
  bpm mode                         print dev or release
  bpm mode release"
);

pub const STATUS: &str = concat!(
    client_env!(),
    "

Examples:
  bpm status                       every process, its state, pid and ports
  bpm status web                   its runs, recent events and last lines
  bpm ps --json"
);

pub const LOGS: &str = concat!(
    client_env!(),
    "

Examples:
  bpm logs web -n 50               the last 50 lines of its current run
  bpm logs web -f                  follow it
  bpm logs web --grep 'panic|ERROR' --all-instances --since 1h30m
  bpm logs web --instance -2       the run before the last (post-crash)
  bpm logs web --json | jq .       one JSON record per line"
);

pub const TUI: &str = "Environment:
  BPM_HOME    the data directory (default: the nearest project's .bpm, else
              ~/.local/state/bpm)
  BPM_TOKEN   the bearer token for a daemon reached with --url
  NO_COLOR    set to anything non-empty: no colour

Examples:
  bpm tui                          the daemon of this project (or the store, read-only)
  BPM_TOKEN=... bpm tui --url http://host:8947";
