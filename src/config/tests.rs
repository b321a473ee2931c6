//! The file format's tests: defaults, every key, and located errors.

use super::*;

const FILE: &str = "/x/.mcp-run";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(FILE), Path::new("/x"))
}

/// Asserts the error is located at `line:col` and mentions `expected`.
fn assert_err(text: &str, line: usize, col: usize, expected: &str) -> String {
    let err = parse(text).expect_err("config should be rejected");
    let shown = err.to_string();
    let prefix = format!("{FILE}:{line}:{col}: ");
    assert!(
        shown.starts_with(&prefix),
        "expected {prefix:?} in: {shown}"
    );
    assert!(
        shown.contains(expected),
        "expected {expected:?} in: {shown}"
    );
    shown
}

const OLD_FORMAT: &str = r#"
mcp_port = 3001
dev_timeout_hours = 3
dev_crash_wait_seconds = 120
release_crash_backoff_initial_seconds = 1
release_crash_backoff_max_seconds = 300
[process.main]
type = "rust"
args = ["--port", "8080"]
[process.frontend]
type = "npm"
command = ["npm", "run", "dev"]
"#;

#[test]
fn old_format_parses_with_defaults() {
    let c = parse(OLD_FORMAT).unwrap();
    assert_eq!(c.mcp_port, 3001);
    assert_eq!(c.dev_timeout, Duration::from_secs(3 * 3600));
    assert_eq!(c.dev_crash_wait, Duration::from_secs(120));
    assert_eq!(c.release_backoff_initial, Duration::from_secs(1));
    assert_eq!(c.release_backoff_max, Duration::from_secs(300));
    assert_eq!(c.stable_run, Duration::from_secs(60));
    assert_eq!(c.store_max_bytes, 2 << 30);
    assert!(c.prefix_output);
    assert_eq!(c.dir, Path::new("/x"));
    assert_eq!(c.processes.len(), 2);

    let main = &c.processes["main"];
    assert_eq!(main.name, "main");
    assert_eq!(main.kind, ProcessKind::Rust);
    assert!(main.command.is_empty());
    assert_eq!(main.args, ["--port", "8080"]);
    assert_eq!(main.cwd, Path::new("/x"));
    assert!(main.env.is_empty());
    assert_eq!(main.build, None);
    assert_eq!(main.restart, RestartPolicy::Always);
    assert_eq!(main.stop_signal, StopSignal::Term);
    assert_eq!(main.stop_signal.signal(), nix::sys::signal::Signal::SIGTERM);
    assert_eq!(main.stop_timeout, Duration::from_secs(5));
    assert_eq!(main.ready, None);
    assert!(main.autostart);
    assert_eq!(main.keep_instances, 10);
    assert_eq!(main.keep_builds, 10);
    assert_eq!(main.max_bytes, 256 << 20);

    let frontend = &c.processes["frontend"];
    assert_eq!(frontend.kind, ProcessKind::Npm);
    assert_eq!(frontend.command, ["npm", "run", "dev"]);
    assert!(frontend.args.is_empty());
}

#[test]
fn empty_file_equals_default() {
    assert_eq!(parse("").unwrap(), Config::default_for(Path::new("/x")));
}

#[test]
fn floats_are_accepted_for_durations() {
    let c = parse(
        "dev_timeout_hours = 0.5\nrelease_crash_backoff_initial_seconds = 0.25\n\
         dev_crash_wait_seconds = 1.5\n",
    )
    .unwrap();
    assert_eq!(c.dev_timeout, Duration::from_secs(1800));
    assert_eq!(c.release_backoff_initial, Duration::from_millis(250));
    assert_eq!(c.dev_crash_wait, Duration::from_millis(1500));
}

#[test]
fn npm_without_command_defaults_to_npm_run_dev() {
    let c =
        parse("[process.web]\ntype = \"npm\"\nargs = [\"--\", \"--port\", \"3000\"]\n").unwrap();
    let web = &c.processes["web"];
    assert_eq!(web.kind, ProcessKind::Npm);
    assert_eq!(web.command, ["npm", "run", "dev"]);
    assert_eq!(web.args, ["--", "--port", "3000"]);
}

#[test]
fn allowed_origins_are_normalized() {
    let c = parse(
        "allowed_origins = [\"http://localhost:5173\", \"HTTPS://App.Example\", \"http://[::1]\"]\n",
    )
    .unwrap();
    let shown: Vec<String> = c.allowed_origins.iter().map(|o| o.to_string()).collect();
    assert_eq!(
        shown,
        [
            "http://localhost:5173",
            "https://app.example:443",
            "http://[::1]:80"
        ]
    );
    assert!(parse("").unwrap().allowed_origins.is_empty());
}

#[test]
fn error_bad_allowed_origin() {
    assert_err(
        "allowed_origins = [\"http://localhost:5173\", \"http://localhost:5173/app\"]\n",
        1,
        45,
        "`allowed_origins`: `http://localhost:5173/app` has more than an origin; expected an origin such as",
    );
    assert_err(
        "allowed_origins = [\"localhost:5173\"]\n",
        1,
        20,
        "is not an origin",
    );
    assert_err("allowed_origins = [\"null\"]\n", 1, 20, "is not an origin");
    assert_err(
        "allowed_origins = [\"file://x\"]\n",
        1,
        20,
        "only http and https origins",
    );
    assert_err(
        "allowed_origins = [\"http://localhost:*\"]\n",
        1,
        20,
        "bad port `*`",
    );
    assert_err(
        "allowed_origins = \"http://localhost:5173\"\n",
        1,
        19,
        "`allowed_origins`: invalid type: string",
    );
}

#[test]
fn every_addition() {
    let text = r#"
store_max_bytes = 1000000
stable_run_seconds = 30.5
prefix_output = false

[process.api]
command = ["python3", "-m", "http.server"]
args = ["8000"]
cwd = "backend/../server"
env = { PORT = "8000", MODE = "dev" }
build = ["make", "all"]
restart = "always"
stop_signal = "INT"
stop_timeout_seconds = 2.5
autostart = false
keep_instances = 3
keep_builds = 2
max_bytes = 4096

[process.api.ready]
http = "http://127.0.0.1:8000/health"
timeout_seconds = 12

[process.db]
command = ["postgres"]
restart = "never"
stop_signal = "sigquit"
ready = { tcp = 5432 }

[process.worker]
command = ["worker"]
cwd = "/abs/dir"
restart = "on-failure"
stop_signal = "SIGHUP"
ready = { log = "listening on \\d+" }
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.store_max_bytes, 1_000_000);
    assert_eq!(c.stable_run, Duration::from_millis(30_500));
    assert!(!c.prefix_output);

    let api = &c.processes["api"];
    assert_eq!(api.kind, ProcessKind::Command);
    assert_eq!(api.command, ["python3", "-m", "http.server"]);
    assert_eq!(api.args, ["8000"]);
    assert_eq!(api.cwd, Path::new("/x/server"));
    assert_eq!(api.env["PORT"], "8000");
    assert_eq!(api.env["MODE"], "dev");
    assert_eq!(api.build, Some(vec!["make".to_string(), "all".to_string()]));
    assert_eq!(api.restart, RestartPolicy::Always);
    assert_eq!(api.stop_signal, StopSignal::Int);
    assert_eq!(api.stop_timeout, Duration::from_millis(2500));
    assert!(!api.autostart);
    assert_eq!(api.keep_instances, 3);
    assert_eq!(api.keep_builds, 2);
    assert_eq!(api.max_bytes, 4096);
    assert_eq!(
        api.ready,
        Some(Ready {
            check: ReadyCheck::Http {
                url: "http://127.0.0.1:8000/health".into()
            },
            timeout: Duration::from_secs(12),
            ..Ready::new(ReadyCheck::Tcp { port: 1 })
        })
    );

    let db = &c.processes["db"];
    assert_eq!(db.restart, RestartPolicy::Never);
    assert_eq!(db.stop_signal.signal(), nix::sys::signal::Signal::SIGQUIT);
    assert_eq!(
        db.ready,
        Some(Ready {
            check: ReadyCheck::Tcp { port: 5432 },
            timeout: Duration::from_secs(30),
            ..Ready::new(ReadyCheck::Tcp { port: 1 })
        })
    );

    let worker = &c.processes["worker"];
    assert_eq!(worker.restart, RestartPolicy::OnFailure);
    assert_eq!(worker.cwd, Path::new("/abs/dir"));
    assert_eq!(worker.stop_signal, StopSignal::Hup);
    assert_eq!(
        worker.ready.as_ref().unwrap().check,
        ReadyCheck::Log {
            pattern: r"listening on \d+".into()
        }
    );
}

#[test]
fn every_stop_signal_spelling() {
    for sig in StopSignal::ALL {
        let name = sig.name();
        assert_eq!(name.parse::<StopSignal>(), Ok(sig));
        assert_eq!(name[3..].parse::<StopSignal>(), Ok(sig));
        assert_eq!(sig.signal().as_str(), name);
    }
}

#[test]
fn dotted_process_names_need_quotes_and_are_valid() {
    let c = parse("[process.\"api.v2\"]\ncommand = [\"x\"]\n").unwrap();
    assert!(c.processes.contains_key("api.v2"));
}

#[test]
fn config_round_trips_through_serde() {
    let c = parse(OLD_FORMAT).unwrap();
    let text = toml::to_string(&c.processes["main"]).unwrap();
    let back: ProcessConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, c.processes["main"]);
}

#[test]
fn error_invalid_syntax() {
    assert_err("mcp_port = 1\n[process.web\n", 2, 13, "expected");
}

#[test]
fn error_wrong_type() {
    assert_err(
        "\nmcp_port = \"x\"\n",
        2,
        12,
        "`mcp_port`: invalid type: string \"x\", expected a port number from 1 to 65535",
    );
}

#[test]
fn error_wrong_type_in_process() {
    assert_err(
        "[process.web]\ncommand = [\"a\"]\nautostart = \"yes\"\n",
        3,
        13,
        "`process.web.autostart`: invalid type: string \"yes\", expected a boolean",
    );
}

#[test]
fn error_wrong_type_names_the_nested_key() {
    assert_err(
        "[process.web]\ncommand = [\"a\"]\nenv = { A = 1 }\n",
        3,
        13,
        "`process.web.env.A`: invalid type: integer `1`, expected a string",
    );
    assert_err(
        "[process.web]\ncommand = \"npm start\"\n",
        2,
        11,
        "`process.web.command`: invalid type: string \"npm start\", expected an array",
    );
}

#[test]
fn error_unknown_top_level_key() {
    let msg = assert_err(
        "mcp_port = 1\nmcp_prot = 2\n",
        2,
        1,
        "unknown key `mcp_prot` at top level; expected one of: mcp_port, ",
    );
    assert!(msg.contains("prefix_output"), "{msg}");
}

#[test]
fn error_unknown_process_key() {
    let text = "mcp_port = 1\n\n[process.web]\ntype = \"npm\"\n\n\ncomand = [\"x\"]\n";
    let msg = assert_err(
        text,
        7,
        1,
        "unknown key `comand` in [process.web]; expected one of: type, command, args, ",
    );
    assert!(msg.contains("max_bytes"), "{msg}");
}

#[test]
fn error_unknown_ready_key() {
    assert_err(
        "[process.web]\ncommand = [\"a\"]\n[process.web.ready]\nlog = \"x\"\nlgo = \"y\"\n",
        5,
        1,
        "unknown key `lgo` in [process.web.ready]; expected one of: log, tcp, http, \
         timeout_seconds",
    );
    assert_err(
        "[process.web]\ncommand = [\"a\"]\nready = { tpc = 80 }\n",
        3,
        11,
        "unknown key `tpc` in [process.web.ready]",
    );
}

#[test]
fn error_rust_with_command() {
    assert_err(
        "[process.main]\ntype = \"rust\"\ncommand = [\"cargo\", \"run\"]\n",
        3,
        11,
        "`command` is not allowed in [process.main] with type = \"rust\"",
    );
}

#[test]
fn error_missing_command() {
    assert_err(
        "mcp_port = 1\n[process.web]\nargs = [\"x\"]\n",
        2,
        10,
        "missing key `command` in [process.web]",
    );
}

#[test]
fn error_empty_command() {
    assert_err(
        "[process.web]\ncommand = []\n",
        2,
        11,
        "`command` of [process.web] must start with a program name",
    );
}

#[test]
fn error_bad_restart() {
    assert_err(
        "[process.web]\ncommand = [\"a\"]\nrestart = \"sometimes\"\n",
        3,
        11,
        "unknown variant `sometimes`, expected one of `always`, `on-failure`, `never`",
    );
}

#[test]
fn error_bad_type() {
    assert_err(
        "[process.web]\ntype = \"python\"\n",
        2,
        8,
        "unknown variant `python`, expected `rust` or `npm`",
    );
}

#[test]
fn error_bad_signal() {
    assert_err(
        "[process.web]\ncommand = [\"a\"]\nstop_signal = \"SIGTERN\"\n",
        3,
        15,
        "unknown stop_signal `SIGTERN`; expected one of: SIGTERM, SIGINT,",
    );
}

#[test]
fn error_bad_regex() {
    assert_err(
        "[process.web]\ncommand = [\"a\"]\n[process.web.ready]\nlog = \"ready (\"\n",
        4,
        7,
        "invalid regex in `process.web.ready.log`",
    );
}

#[test]
fn error_bad_url() {
    assert_err(
        "[process.web]\ncommand = [\"a\"]\nready = { http = \"https://x/\" }\n",
        3,
        18,
        "expected http://HOST[:PORT]/PATH",
    );
}

#[test]
fn error_ready_needs_exactly_one_check() {
    assert_err(
        "[process.web]\ncommand = [\"a\"]\nready = { tcp = 1, log = \"x\" }\n",
        3,
        9,
        "needs exactly one of",
    );
    assert_err(
        "[process.web]\ncommand = [\"a\"]\nready = { timeout_seconds = 3 }\n",
        3,
        9,
        "(found 0)",
    );
}

#[test]
fn error_bad_process_name() {
    assert_err(
        "mcp_port = 1\n[process.\"my app\"]\ncommand = [\"a\"]\n",
        2,
        10,
        "invalid process name `my app`",
    );
    assert_err(
        "[process.\"\"]\ncommand = [\"a\"]\n",
        1,
        10,
        "invalid process name ``",
    );
}

#[test]
fn error_negative_duration_and_zero_limits() {
    assert_err(
        "stable_run_seconds = -1\n",
        1,
        22,
        "`stable_run_seconds` must be a non-negative number",
    );
    assert_err(
        "[process.web]\ncommand = [\"a\"]\nkeep_instances = 0\n",
        3,
        18,
        "`keep_instances` must be at least 1",
    );
    assert_err(
        "release_crash_backoff_initial_seconds = 10\nrelease_crash_backoff_max_seconds = 5\n",
        2,
        37,
        "must not be smaller",
    );
}

#[test]
fn error_columns_count_characters() {
    // A multi-byte character before the error must count as one column.
    assert_err("# é\n\"é\" = 1\n", 2, 1, "unknown key `é`");
}

#[test]
fn load_missing_file_is_none_and_present_file_parses() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(Config::load(dir.path()).unwrap(), None);
    std::fs::write(dir.path().join(CONFIG_FILE), "mcp_port = 4000\n").unwrap();
    let c = Config::load(dir.path()).unwrap().unwrap();
    assert_eq!(c.mcp_port, 4000);
    assert_eq!(c.dir, dir.path());

    std::fs::write(dir.path().join(CONFIG_FILE), "mcp_port = true\n").unwrap();
    let err = Config::load(dir.path()).unwrap_err().to_string();
    let file = dir.path().join(CONFIG_FILE);
    assert!(
        err.starts_with(&format!("{}:1:12: ", file.display())),
        "{err}"
    );
}

#[test]
fn data_dir_precedence() {
    let os = |s: &'static str| Some(OsStr::new(s));
    let explicit = Path::new("/explicit");
    let project = Path::new("/proj");
    let all = |explicit, project| {
        data_dir_from(explicit, project, os("/bpmhome"), os("/xdg"), os("/home/u"))
    };
    assert_eq!(all(Some(explicit), Some(project)), explicit);
    assert_eq!(all(None, Some(project)), Path::new("/bpmhome"));
    assert_eq!(
        data_dir_from(None, Some(project), None, os("/xdg"), os("/home/u")),
        Path::new("/proj/.bpm")
    );
    assert_eq!(
        data_dir_from(None, None, None, os("/xdg"), os("/home/u")),
        Path::new("/xdg/bpm")
    );
    assert_eq!(
        data_dir_from(None, None, None, None, os("/home/u")),
        Path::new("/home/u/.local/state/bpm")
    );
    // Empty and relative values are treated as unset.
    assert_eq!(
        data_dir_from(None, None, os(""), os("rel"), os("/home/u")),
        Path::new("/home/u/.local/state/bpm")
    );
}

#[test]
fn data_dir_ignores_project_without_config() {
    let dir = tempfile::tempdir().unwrap();
    let explicit = Path::new("/explicit");
    assert_eq!(data_dir(Some(explicit), Some(dir.path())), explicit);
    // Whatever the environment says, a directory without .mcp-run is never chosen.
    assert_ne!(data_dir(None, Some(dir.path())), dir.path().join(".bpm"));
}

#[test]
fn find_project_dir_walks_up() {
    let root = tempfile::tempdir().unwrap();
    let project = root.path().join("proj");
    let deep = project.join("a").join("b");
    std::fs::create_dir_all(&deep).unwrap();
    assert_eq!(find_project_dir(&deep), None);

    std::fs::write(project.join(CONFIG_FILE), "").unwrap();
    assert_eq!(find_project_dir(&deep), Some(project.clone()));
    assert_eq!(find_project_dir(&project), Some(project.clone()));

    // The nearest config wins.
    std::fs::write(deep.join(CONFIG_FILE), "").unwrap();
    assert_eq!(find_project_dir(&deep), Some(deep.clone()));

    // A directory named like the config file does not count.
    let other = root.path().join("other");
    std::fs::create_dir_all(other.join(CONFIG_FILE)).unwrap();
    assert_eq!(find_project_dir(&other), None);
}

#[test]
fn color_forces_colour_through_the_usual_variables_unless_set() {
    let c =
        parse("[process.web]\ncommand = [\"vite\"]\ncolor = true\nenv = { FORCE_COLOR = \"3\" }\n")
            .unwrap();
    let env = &c.processes["web"].env;
    assert_eq!(env.get("FORCE_COLOR").map(String::as_str), Some("3"));
    assert_eq!(env.get("CLICOLOR_FORCE").map(String::as_str), Some("1"));
    let c = parse("[process.web]\ncommand = [\"vite\"]\n").unwrap();
    assert!(c.processes["web"].env.is_empty());
}

#[test]
fn health_checks_default_for_tcp_and_http_and_are_refused_without_a_repeatable_check() {
    let c = parse(
        "[process.a]\ncommand = [\"a\"]\nready = { tcp = 80 }\n\
         [process.b]\ncommand = [\"b\"]\nready = { http = \"http://127.0.0.1/\" }\n\
         health_interval_seconds = 0.5\nrestart_on_unhealthy = true\n\
         [process.c]\ncommand = [\"c\"]\nready = { log = \"up\" }\n\
         [process.d]\ncommand = [\"d\"]\nready = { tcp = 81 }\nhealth_interval_seconds = 0\n",
    )
    .unwrap();
    let ready = |n: &str| c.processes[n].ready.clone().unwrap();
    assert_eq!(ready("a").health_interval(), Some(Duration::from_secs(10)));
    assert!(!ready("a").restart_on_unhealthy);
    assert_eq!(
        ready("b").health_interval(),
        Some(Duration::from_millis(500))
    );
    assert!(ready("b").restart_on_unhealthy);
    assert_eq!(ready("c").health_interval(), None);
    assert_eq!(ready("d").health_interval(), None);

    assert_err(
        "[process.a]\ncommand = [\"a\"]\nhealth_interval_seconds = 5\n",
        3,
        27,
        "repeat its readiness check",
    );
    assert_err(
        "[process.a]\ncommand = [\"a\"]\nready = { log = \"x\" }\nrestart_on_unhealthy = true\n",
        4,
        24,
        "log readiness check",
    );
    assert_err(
        "[process.a]\ncommand = [\"a\"]\nready = { tcp = 1 }\nhealth_interval_seconds = -1\n",
        4,
        27,
        "non-negative",
    );
}
