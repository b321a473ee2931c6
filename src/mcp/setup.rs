//! `bpm setup [client]`: exactly what to run or paste to connect each agent.

use std::fmt::Write as _;

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

/// The instructions for one client, or for all of them.
pub fn instructions(client: Option<Client>, port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/mcp");
    let mut out = String::new();
    for c in client.map_or(ALL.to_vec(), |c| vec![c]) {
        let text = match c {
            Client::Claude => format!(
                "Claude Code: run\n  claude mcp add --transport http bpm {url}\n(add `--scope user` for every project; stdio instead: claude mcp add bpm -- bpm mcp)\n"
            ),
            Client::Cursor => format!(
                "Cursor: add to .cursor/mcp.json (this project) or ~/.cursor/mcp.json (every project):\n  {{ \"mcpServers\": {{ \"bpm\": {{ \"url\": \"{url}\" }} }} }}\n"
            ),
            Client::Vscode => format!(
                "VS Code: run\n  code --add-mcp '{{\"name\":\"bpm\",\"type\":\"http\",\"url\":\"{url}\"}}'\nor add to .vscode/mcp.json:\n  {{ \"servers\": {{ \"bpm\": {{ \"type\": \"http\", \"url\": \"{url}\" }} }} }}\n"
            ),
            Client::Codex => "Codex: run\n  codex mcp add bpm -- bpm mcp\nor add to ~/.codex/config.toml:\n  [mcp_servers.bpm]\n  command = \"bpm\"\n  args = [\"mcp\"]\n(`bpm mcp` bridges stdio to the running daemon, and starts it when none runs)\n".to_owned(),
            Client::Gemini => format!(
                "Gemini CLI: run\n  gemini mcp add --transport http bpm {url}\nor add to ~/.gemini/settings.json:\n  {{ \"mcpServers\": {{ \"bpm\": {{ \"httpUrl\": \"{url}\" }} }} }}\n"
            ),
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&text);
    }
    let _ = write!(
        out,
        "\nA daemon started with a token (--token-file, BPM_TOKEN) also needs the header `Authorization: Bearer <token>` in the client's configuration.\n"
    );
    out
}

/// The reminder `bpm serve` prints when it starts.
pub fn short(port: u16) -> String {
    format!(
        "bpm: connect an agent with `claude mcp add --transport http bpm http://127.0.0.1:{port}/mcp`, or any client through stdio with `bpm mcp`; `bpm setup` shows every client"
    )
}
