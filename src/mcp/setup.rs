//! `bpm setup [client] [--apply]`: exactly what to run or paste to connect each agent to
//! the daemon that runs (its port, and whether it wants a token, as its `daemon.json`
//! says), and with `--apply`, running the clients' own commands that add it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The agents `bpm setup` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Client {
    Claude,
    Cursor,
    Vscode,
    Codex,
    Gemini,
}

const ALL: [Client; 5] = [
    Client::Claude,
    Client::Cursor,
    Client::Vscode,
    Client::Codex,
    Client::Gemini,
];

/// The environment variable the printed configurations take the token from.
const TOKEN_VAR: &str = "BPM_TOKEN";

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// The client; all of them when omitted.
    #[arg(value_enum)]
    pub client: Option<Client>,
    /// The daemon's port (default: the running daemon's; with none running,
    /// $BPM_PORT, the config's mcp_port, else 8947).
    #[arg(long)]
    pub port: Option<u16>,
    /// The daemon's data directory (default: $BPM_HOME, the nearest project's .bpm,
    /// else ~/.local/state/bpm).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Add bpm to each client whose command is on PATH (`claude mcp add`,
    /// `codex mcp add`, `code --add-mcp`), then check that the daemon answers.
    #[arg(long)]
    pub apply: bool,
}

/// What the clients connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub port: u16,
    /// Whether the daemon wants a bearer token.
    pub token: bool,
}

impl Endpoint {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }
}

/// The instructions for one client, or for all of them.
pub fn instructions(client: Option<Client>, endpoint: &Endpoint) -> String {
    let url = endpoint.url();
    let t = endpoint.token;
    let bearer = |reference: &str| format!("Authorization: Bearer {reference}");
    let mut out = String::new();
    for c in client.map_or(ALL.to_vec(), |c| vec![c]) {
        let text = match c {
            Client::Claude => {
                let header = if t {
                    format!(" --header \"{}\"", bearer(&format!("${TOKEN_VAR}")))
                } else {
                    String::new()
                };
                format!(
                    "Claude Code: run\n  claude mcp add --transport http bpm {url}{header}\n(add `--scope user` for every project; stdio instead: claude mcp add bpm -- bpm mcp)\n"
                )
            }
            Client::Cursor => {
                let headers = if t {
                    format!(
                        ", \"headers\": {{ \"Authorization\": \"Bearer ${{env:{TOKEN_VAR}}}\" }}"
                    )
                } else {
                    String::new()
                };
                format!(
                    "Cursor: add to .cursor/mcp.json (this project) or ~/.cursor/mcp.json (every project):\n  {{ \"mcpServers\": {{ \"bpm\": {{ \"url\": \"{url}\"{headers} }} }} }}\n"
                )
            }
            Client::Vscode => {
                let headers = if t {
                    format!(",\"headers\":{{\"Authorization\":\"Bearer ${{env:{TOKEN_VAR}}}\"}}")
                } else {
                    String::new()
                };
                let file_headers = if t {
                    format!(
                        ", \"headers\": {{ \"Authorization\": \"Bearer ${{env:{TOKEN_VAR}}}\" }}"
                    )
                } else {
                    String::new()
                };
                format!(
                    "VS Code: run\n  code --add-mcp '{{\"name\":\"bpm\",\"type\":\"http\",\"url\":\"{url}\"{headers}}}'\nor add to .vscode/mcp.json:\n  {{ \"servers\": {{ \"bpm\": {{ \"type\": \"http\", \"url\": \"{url}\"{file_headers} }} }} }}\n"
                )
            }
            Client::Codex => {
                let mut s = "Codex: run\n  codex mcp add bpm -- bpm mcp\nor add to ~/.codex/config.toml:\n  [mcp_servers.bpm]\n  command = \"bpm\"\n  args = [\"mcp\"]\n(`bpm mcp` bridges stdio to the running daemon over its local socket, and starts it when none runs".to_owned();
                if t {
                    let _ = write!(
                        s,
                        "; it needs no token)\nor over HTTP:\n  [mcp_servers.bpm]\n  url = \"{url}\"\n  bearer_token_env_var = \"{TOKEN_VAR}\"\n"
                    );
                } else {
                    s.push_str(")\n");
                }
                s
            }
            Client::Gemini => {
                let (flag, headers) = if t {
                    (
                        format!(" --header \"{}\"", bearer(&format!("${TOKEN_VAR}"))),
                        format!(", \"headers\": {{ \"Authorization\": \"Bearer ${TOKEN_VAR}\" }}"),
                    )
                } else {
                    Default::default()
                };
                format!(
                    "Gemini CLI: run\n  gemini mcp add --transport http bpm {url}{flag}\nor add to ~/.gemini/settings.json:\n  {{ \"mcpServers\": {{ \"bpm\": {{ \"httpUrl\": \"{url}\"{headers} }} }} }}\n"
                )
            }
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&text);
    }
    out
}

/// The reminder `bpm serve` prints when it starts.
pub fn short(port: u16) -> String {
    format!(
        "bpm: connect an agent with `claude mcp add --transport http bpm http://127.0.0.1:{port}/mcp`, or any client through stdio with `bpm mcp`; `bpm setup` shows every client"
    )
}

/// The daemon `bpm setup` is about.
#[derive(Debug)]
struct Found {
    data_dir: PathBuf,
    /// The running daemon's record, if one answers.
    running: Option<crate::daemon::DaemonInfo>,
}

async fn find(data_dir: Option<&Path>) -> Found {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let target = crate::client::locate(data_dir, &cwd);
    let info = crate::daemon::read_daemon_info(&target.data_dir);
    let running = match info {
        Some(i) if crate::client::answers(&target.socket()).await => Some(i),
        _ => None,
    };
    Found {
        data_dir: target.data_dir,
        running,
    }
}

/// The port a daemon started now would take.
fn default_port() -> u16 {
    // 0 (any free port) names no port a client could use.
    if let Some(p) = std::env::var("BPM_PORT")
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .filter(|p| *p != 0)
    {
        return p;
    }
    std::env::current_dir()
        .ok()
        .and_then(|d| crate::config::Config::load(&d).ok().flatten())
        .map_or(crate::config::DEFAULT_MCP_PORT, |c| c.mcp_port)
}

/// `bpm setup`.
pub fn main(args: SetupArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bpm: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(args))
}

async fn run(args: SetupArgs) -> ExitCode {
    let found = find(args.data_dir.as_deref()).await;
    let endpoint = Endpoint {
        port: args
            .port
            .or(found.running.as_ref().map(|i| i.port))
            .unwrap_or_else(default_port),
        token: found.running.as_ref().is_some_and(|i| i.token),
    };
    let about = match &found.running {
        Some(i) => {
            let mut s = format!(
                "The daemon of {} (pid {}) listens on {}",
                found.data_dir.display(),
                i.pid,
                endpoint.url()
            );
            if i.token {
                let _ = write!(
                    s,
                    "; it requires a token: set {TOKEN_VAR} to it where the client runs"
                );
                if let Some(f) = &i.token_file {
                    let _ = write!(s, " (`export {TOKEN_VAR}=$(cat {})`)", f.display());
                }
            }
            s
        }
        None => format!(
            "No daemon runs for {}; this is the port `bpm serve` would take (start it with `bpm serve`)",
            found.data_dir.display()
        ),
    };
    println!("{about}.\n");
    print!("{}", instructions(args.client, &endpoint));
    if !args.apply {
        return ExitCode::SUCCESS;
    }
    println!();
    apply(&args, &found, &endpoint).await
}

/// The token, for a daemon that wants one: `$BPM_TOKEN`, else its token file.
fn token_value(found: &Found) -> Result<String, String> {
    if let Some(t) = std::env::var(TOKEN_VAR)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
    {
        return Ok(t);
    }
    let file = found.running.as_ref().and_then(|i| i.token_file.clone());
    match file.map(|f| (std::fs::read_to_string(&f), f)) {
        Some((Ok(t), _)) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Some((_, f)) => Err(format!(
            "the daemon requires a token, and its token file {} cannot be read here; set {TOKEN_VAR} to the token and run again",
            f.display()
        )),
        None => Err(format!(
            "the daemon requires a token (it was started with {TOKEN_VAR}); set {TOKEN_VAR} to the token and run again"
        )),
    }
}

/// The command that adds bpm to `client`, if it has one: program and arguments.
fn add_command(
    client: Client,
    endpoint: &Endpoint,
    token: Option<&str>,
    data_dir: Option<&Path>,
) -> Option<(&'static str, Vec<String>)> {
    let url = endpoint.url();
    match client {
        Client::Claude => {
            let mut a: Vec<String> = ["mcp", "add", "--transport", "http", "bpm", &url]
                .map(String::from)
                .to_vec();
            if let Some(t) = token {
                a.extend(["--header".into(), format!("Authorization: Bearer {t}")]);
            }
            Some(("claude", a))
        }
        Client::Codex => {
            let bpm = std::env::current_exe()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "bpm".into());
            let mut a: Vec<String> = ["mcp", "add", "bpm", "--", &bpm, "mcp"]
                .map(String::from)
                .to_vec();
            if let Some(d) = data_dir {
                a.extend(["--data-dir".into(), d.to_string_lossy().into_owned()]);
            }
            Some(("codex", a))
        }
        Client::Vscode => {
            let mut server = serde_json::json!({"name": "bpm", "type": "http", "url": url});
            if let Some(t) = token {
                server["headers"] = serde_json::json!({"Authorization": format!("Bearer {t}")});
            }
            Some(("code", vec!["--add-mcp".into(), server.to_string()]))
        }
        Client::Cursor | Client::Gemini => None,
    }
}

/// `program` as found on PATH.
fn on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

async fn apply(args: &SetupArgs, found: &Found, endpoint: &Endpoint) -> ExitCode {
    // Only the clients that connect over HTTP need the token (`bpm mcp` uses the socket).
    let token = if endpoint.token {
        token_value(found).map(Some)
    } else {
        Ok(None)
    };
    let mut failed = false;
    let mut applied = 0;
    for c in args.client.map_or(ALL.to_vec(), |c| vec![c]) {
        let known = token.as_ref().ok().cloned().flatten();
        let Some((program, argv)) =
            add_command(c, endpoint, known.as_deref(), args.data_dir.as_deref())
        else {
            if args.client.is_some() {
                println!("{c:?} has no command that adds a server: paste the configuration above.");
            }
            continue;
        };
        let Some(path) = on_path(program) else {
            println!("{program}: not on PATH, skipped.");
            if args.client.is_some() {
                failed = true;
            }
            continue;
        };
        if c != Client::Codex
            && let Err(e) = &token
        {
            eprintln!("bpm setup: {program} not set up: {e}");
            failed = true;
            continue;
        }
        let shown: Vec<String> = argv
            .iter()
            .map(|a| match &known {
                Some(t) => a.replace(t.as_str(), "***"),
                None => a.clone(),
            })
            .collect();
        println!("running: {program} {}", shown.join(" "));
        let out = tokio::process::Command::new(&path)
            .args(&argv)
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        match out {
            Ok(o) if o.status.success() => applied += 1,
            Ok(o) => {
                failed = true;
                let err = String::from_utf8_lossy(&o.stderr);
                println!("{program} failed ({}): {}", o.status, err.trim());
            }
            Err(e) => {
                failed = true;
                println!("{program} could not be run: {e}");
            }
        }
    }
    if applied == 0 && !failed {
        println!(
            "No client command (claude, codex, code) is on PATH: paste a configuration above."
        );
    }
    // The check is what the clients do: over HTTP with the token (over the socket when
    // the token is not known here).
    let answers = match &token {
        Ok(t) => match crate::client::Client::remote(
            &format!("http://127.0.0.1:{}", endpoint.port),
            t.clone(),
        ) {
            Ok(c) => c.answers().await,
            Err(_) => false,
        },
        Err(_) => crate::client::answers(&found.data_dir.join(crate::daemon::SOCKET_FILE)).await,
    };
    if answers {
        println!("The daemon answers at {}.", endpoint.url());
    } else {
        println!(
            "No daemon answers at {}: start it with `bpm serve` (or `bpm serve --port {}`).",
            endpoint.url(),
            endpoint.port
        );
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_form_of_each_client() {
        let plain = instructions(
            None,
            &Endpoint {
                port: 4321,
                token: false,
            },
        );
        assert!(
            plain.contains("claude mcp add --transport http bpm http://127.0.0.1:4321/mcp\n"),
            "{plain}"
        );
        assert!(!plain.contains("Authorization"), "{plain}");
        let t = instructions(
            None,
            &Endpoint {
                port: 4321,
                token: true,
            },
        );
        for part in [
            "claude mcp add --transport http bpm http://127.0.0.1:4321/mcp --header \"Authorization: Bearer $BPM_TOKEN\"",
            "\"headers\": { \"Authorization\": \"Bearer ${env:BPM_TOKEN}\" }",
            "\"headers\":{\"Authorization\":\"Bearer ${env:BPM_TOKEN}\"}",
            "bearer_token_env_var = \"BPM_TOKEN\"",
            "gemini mcp add --transport http bpm http://127.0.0.1:4321/mcp --header \"Authorization: Bearer $BPM_TOKEN\"",
        ] {
            assert!(t.contains(part), "{part} in:\n{t}");
        }
    }
}
