//! The JSON Schemas in `docs/schemas/` (the same subset of JSON Schema that
//! `tests/event_schemas.rs` checks with it: `type`, `enum`, `minLength`, `minimum`,
//! `properties`, `required`, `additionalProperties: false`).

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;

thread_local! {
    static SCHEMAS: std::cell::RefCell<HashMap<String, Value>> = Default::default();
}

/// The problems of `payload` (an event's inner object) against the schema of
/// `event_type`, version 1.
pub fn problems(event_type: &str, payload: &Value) -> Vec<String> {
    let schema = SCHEMAS.with(|schemas| {
        schemas
            .borrow_mut()
            .entry(event_type.to_owned())
            .or_insert_with(|| schema(event_type))
            .clone()
    });
    violations(&schema, payload, event_type)
}

pub fn schema(event_type: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schemas")
        .join(format!("{event_type}.v1.json"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every way `value` breaks `schema`, as `path: problem` lines.
pub fn violations(schema: &Value, value: &Value, path: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(allowed) = schema.get("type") {
        let allowed: Vec<&str> = match allowed {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            other => panic!("{path}: unsupported type {other}"),
        };
        let actual = type_name(value);
        let ok = allowed.contains(&actual) || (actual == "integer" && allowed.contains(&"number"));
        if !ok {
            found.push(format!("{path}: is {actual}, schema allows {allowed:?}"));
            return found;
        }
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        if !options.contains(value) {
            found.push(format!("{path}: {value} is not one of {options:?}"));
        }
    }
    if let (Some(min), Value::String(text)) = (schema.get("minLength"), value) {
        if (text.chars().count() as u64) < min.as_u64().unwrap() {
            found.push(format!("{path}: shorter than {min}"));
        }
    }
    if let (Some(min), Some(number)) = (schema.get("minimum"), value.as_f64()) {
        if number < min.as_f64().unwrap() {
            found.push(format!("{path}: below {min}"));
        }
    }
    if let Value::Object(fields) = value {
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    found.push(format!("{path}.{name}: required but absent"));
                }
            }
        }
        for (name, field) in fields {
            match properties.and_then(|p| p.get(name)) {
                Some(field_schema) => {
                    found.extend(violations(field_schema, field, &format!("{path}.{name}")));
                }
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    found.push(format!("{path}.{name}: not in the schema"));
                }
                None => {}
            }
        }
    }
    found
}
