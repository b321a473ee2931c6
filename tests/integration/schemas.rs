//! The JSON shapes users script against, committed under `docs/schemas/` as the
//! protocol types' JSON Schemas (with the protocol's `version`), and what the real
//! binary prints checked against them.

use serde_json::{Value, json};

use crate::helpers::env::Env;

/// Each committed schema and the type it documents.
fn documented() -> Vec<(&'static str, Value)> {
    let of = |s: schemars::Schema| serde_json::to_value(s).unwrap();
    vec![
        (
            "record.json",
            of(schemars::schema_for!(bpm::protocol::FollowRecord)),
        ),
        (
            "status.json",
            of(schemars::schema_for!(bpm::protocol::StatusReport)),
        ),
        (
            "start.json",
            of(schemars::schema_for!(bpm::protocol::StartResult)),
        ),
        (
            "logs.json",
            of(schemars::schema_for!(bpm::protocol::LogResult)),
        ),
    ]
}

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schemas")
}

#[test]
fn the_committed_schemas_are_the_protocol_types() {
    for (file, mut schema) in documented() {
        schema["version"] = json!(bpm::protocol::SCHEMA_VERSION);
        let actual = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        let path = dir().join(file);
        if std::env::var_os("BPM_UPDATE_SNAPSHOTS").is_some() {
            std::fs::create_dir_all(dir()).unwrap();
            std::fs::write(&path, &actual).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == actual,
            "docs/schemas/{file} is not the schema of its type; review the difference (and raise SCHEMA_VERSION if a field went away or changed meaning), then run with BPM_UPDATE_SNAPSHOTS=1:\n{actual}"
        );
    }
}

fn validator(file: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(dir().join(file)).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

#[track_caller]
fn assert_valid(v: &jsonschema::Validator, doc: &Value) {
    let errors: Vec<String> = v.iter_errors(doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{doc}: {errors:?}");
}

#[test]
fn what_the_cli_prints_as_json_matches_the_committed_schemas() {
    let env = Env::new();
    let out = env.bpm(&[
        "run",
        "--name",
        "job",
        "--",
        "sh",
        "-c",
        "echo one; echo two >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let records = validator("record.json");
    let ndjson = env.ok(&["logs", "job", "--json", "--all-instances"]);
    let mut types = Vec::new();
    for line in ndjson.lines() {
        let rec: Value = serde_json::from_str(line).unwrap();
        assert_valid(&records, &rec);
        types.push(rec["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(types, ["instance", "line", "line", "exit"], "{ndjson}");
    // A record of another shape is refused: the check can fail.
    assert!(!records.is_valid(&json!({"type": "line", "text": 3})));
    let status: Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    assert_valid(&validator("status.json"), &status);
    let start: Value = serde_json::from_str(
        &env.ok(&["run", "-d", "--json", "--name", "up", "--", "sleep", "30"]),
    )
    .unwrap();
    assert_valid(&validator("start.json"), &start);
    env.ok(&["stop", "up"]);
}
