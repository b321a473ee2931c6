//! The tools' JSON Schemas, made portable. schemars writes what only it and a few
//! validators understand: formats of its own (`uint64`, `double`...), which strict
//! validators (ajv in the MCP Inspector) warn about on every call; nullable types as type
//! arrays (`["string", "null"]`) and `anyOf [X, null]`, which clients that accept only
//! the OpenAPI subset of JSON Schema (Gemini) cannot read; enums as `oneOf` of
//! constants behind a `$ref`. Input schemas are rewritten into the plain form: an
//! optional parameter is simply not required, an unsigned number has `minimum: 0`, an
//! enum is an `enum`. Output schemas only lose the non-standard formats (their `null`s
//! are real values).

use serde_json::{Map, Value};

/// The formats JSON Schema (2020-12) defines; any other is dropped.
pub const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// A tool's input schema in the portable form (see the module docs).
pub fn portable_input(mut schema: Map<String, Value>) -> Map<String, Value> {
    let defs = schema
        .remove("$defs")
        .and_then(|d| match d {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default();
    let mut out = Value::Object(schema);
    inline_refs(&mut out, &defs, 0);
    simplify(&mut out);
    match out {
        Value::Object(m) => m,
        _ => unreachable!("an object stays an object"),
    }
}

/// A tool's output schema without non-standard formats.
pub fn portable_output(schema: Map<String, Value>) -> Map<String, Value> {
    let mut v = Value::Object(schema);
    walk(&mut v, &mut fix_format);
    match v {
        Value::Object(m) => m,
        _ => unreachable!("an object stays an object"),
    }
}

/// Replace each `{"$ref": "#/$defs/X"}` by X itself (keeping the referring schema's own
/// keys, such as its description). The parameter types are not recursive; the depth
/// limit only guards against a future one.
fn inline_refs(v: &mut Value, defs: &Map<String, Value>, depth: usize) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref")
                && let Some(def) = r.strip_prefix("#/$defs/").and_then(|n| defs.get(n))
                && depth < 16
            {
                let mut def = def.clone();
                inline_refs(&mut def, defs, depth + 1);
                m.remove("$ref");
                if let Value::Object(d) = def {
                    for (k, val) in d {
                        m.entry(k).or_insert(val);
                    }
                }
            }
            for val in m.values_mut() {
                inline_refs(val, defs, depth);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| inline_refs(x, defs, depth)),
        _ => {}
    }
}

/// Apply `f` to every object of the schema, innermost first.
fn walk(v: &mut Value, f: &mut impl FnMut(&mut Map<String, Value>)) {
    match v {
        Value::Object(m) => {
            for val in m.values_mut() {
                walk(val, f);
            }
            f(m);
        }
        Value::Array(a) => a.iter_mut().for_each(|x| walk(x, f)),
        _ => {}
    }
}

fn simplify(v: &mut Value) {
    walk(v, &mut |m| {
        fix_format(m);
        drop_null(m);
        merge_string_enums(m);
    });
}

/// A non-standard format goes; an unsigned one leaves `minimum: 0` behind.
fn fix_format(m: &mut Map<String, Value>) {
    let Some(Value::String(f)) = m.get("format") else {
        return;
    };
    if STANDARD_FORMATS.contains(&f.as_str()) {
        return;
    }
    let unsigned = f.starts_with("uint");
    m.remove("format");
    if unsigned && !m.contains_key("minimum") {
        m.insert("minimum".into(), 0.into());
    }
}

/// `null` out of the schema: `type: [T, "null"]` is `type: T`, `anyOf: [X, {"type":
/// "null"}]` is X, `default: null` goes (absent is the default).
fn drop_null(m: &mut Map<String, Value>) {
    if let Some(Value::Array(types)) = m.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let t = types.remove(0);
            m.insert("type".into(), t);
        }
    }
    if m.get("default").is_some_and(Value::is_null) {
        m.remove("default");
    }
    for key in ["anyOf", "oneOf"] {
        let Some(Value::Array(alts)) = m.get_mut(key) else {
            continue;
        };
        alts.retain(|a| *a != serde_json::json!({"type": "null"}));
        if alts.len() == 1 {
            let Some(Value::Object(only)) = alts.pop() else {
                continue;
            };
            m.remove(key);
            for (k, val) in only {
                m.entry(k).or_insert(val);
            }
        }
    }
}

/// `oneOf`/`anyOf` whose alternatives are all string constants or string enums: one
/// `enum` of strings (the alternatives' descriptions are dropped; the parameter's own
/// says what each means).
fn merge_string_enums(m: &mut Map<String, Value>) {
    for key in ["oneOf", "anyOf"] {
        let Some(Value::Array(alts)) = m.get(key) else {
            continue;
        };
        let mut values = Vec::new();
        let all_strings = alts.iter().all(|a| {
            if a.get("type").is_some_and(|t| t != "string") {
                return false;
            }
            match (a.get("const"), a.get("enum")) {
                (Some(Value::String(c)), None) => {
                    values.push(Value::String(c.clone()));
                    true
                }
                (None, Some(Value::Array(e))) if e.iter().all(Value::is_string) => {
                    values.extend(e.iter().cloned());
                    true
                }
                _ => false,
            }
        });
        if all_strings && !values.is_empty() {
            m.remove(key);
            m.insert("type".into(), "string".into());
            m.insert("enum".into(), Value::Array(values));
        }
    }
}

/// What makes a schema not portable, as paths: non-standard formats and type arrays
/// (and, for `input`, `null` alternatives). Empty when it is portable.
pub fn not_portable(schema: &Value, input: bool) -> Vec<String> {
    fn go(v: &Value, path: &str, input: bool, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(f) = m.get("format").and_then(Value::as_str)
                    && !STANDARD_FORMATS.contains(&f)
                {
                    out.push(format!("{path}: format `{f}`"));
                }
                if input {
                    if m.get("type").is_some_and(Value::is_array) {
                        out.push(format!("{path}: a type array"));
                    }
                    if m.get("type").is_some_and(|t| t == "null") {
                        out.push(format!("{path}: a null type"));
                    }
                }
                for (k, val) in m {
                    go(val, &format!("{path}/{k}"), input, out);
                }
            }
            Value::Array(a) => {
                for (i, val) in a.iter().enumerate() {
                    go(val, &format!("{path}/{i}"), input, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    go(schema, "", input, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: Value) -> Value {
        let Value::Object(m) = v else { panic!() };
        Value::Object(portable_input(m))
    }

    #[test]
    fn nullable_and_formats_become_plain() {
        let s = input(json!({
            "type": "object",
            "properties": {
                "tail": {"type": ["integer", "null"], "format": "uint64", "minimum": 0, "default": null},
                "port": {"type": ["integer", "null"], "format": "uint16", "maximum": 65535},
                "wait": {"type": ["number", "null"], "format": "double"},
                "when": {"type": "string", "format": "date-time"},
                "stream": {"anyOf": [{"$ref": "#/$defs/S"}, {"type": "null"}], "description": "which"},
                "policy": {"oneOf": [{"enum": ["a", "b"], "type": "string"}, {"const": "c", "type": "string"}]},
                "cmd": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]}
            },
            "$defs": {"S": {"enum": ["both", "stdout"], "type": "string", "description": "streams"}}
        }));
        let p = &s["properties"];
        assert_eq!(p["tail"], json!({"type": "integer", "minimum": 0}));
        assert_eq!(
            p["port"],
            json!({"type": "integer", "minimum": 0, "maximum": 65535})
        );
        assert_eq!(p["wait"], json!({"type": "number"}));
        assert_eq!(p["when"]["format"], json!("date-time"));
        assert_eq!(
            p["stream"],
            json!({"type": "string", "enum": ["both", "stdout"], "description": "which"})
        );
        assert_eq!(
            p["policy"],
            json!({"type": "string", "enum": ["a", "b", "c"]})
        );
        assert_eq!(p["cmd"]["anyOf"].as_array().unwrap().len(), 2);
        assert!(s.get("$defs").is_none());
        assert_eq!(not_portable(&s, true), Vec::<String>::new());
    }

    #[test]
    fn output_schemas_keep_nulls_and_lose_formats() {
        let Value::Object(m) = json!({"properties": {"pid": {"type": ["integer", "null"], "format": "uint32"}, "code": {"type": "integer", "format": "int32"}}})
        else {
            panic!()
        };
        let s = Value::Object(portable_output(m));
        assert_eq!(
            s["properties"]["pid"],
            json!({"type": ["integer", "null"], "minimum": 0})
        );
        assert_eq!(s["properties"]["code"], json!({"type": "integer"}));
        assert!(not_portable(&s, false).is_empty());
        assert_eq!(not_portable(&s, true).len(), 1);
    }
}
