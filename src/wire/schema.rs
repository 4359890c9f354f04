//! A self-contained JSON Schema from a type's OpenAPI schema, for tool
//! definitions (which cannot point into an OpenAPI document's components).

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use utoipa::openapi::{RefOr, Schema};

/// How deep references are followed; the wire types are not recursive.
const MAX_REF_DEPTH: usize = 16;

/// The JSON Schema (draft 2020-12) of `T`'s arguments, every reference to
/// another component inlined.
///
/// ```
/// let schema = modal_agents::wire::json_schema::<modal_agents::wire::DeployRequest>();
/// assert_eq!(schema["type"], "object");
/// assert_eq!(schema["properties"]["timeout"]["maximum"], 86400);
/// ```
pub fn json_schema<T: utoipa::ToSchema>() -> Value {
    derive::<T>(true)
}

/// The JSON Schema of what a tool answers: like [`json_schema`], but a
/// field that may be `null` keeps saying so (a client checks answers
/// against it).
pub fn output_json_schema<T: utoipa::ToSchema>() -> Value {
    derive::<T>(false)
}

fn derive<T: utoipa::ToSchema>(drop_nulls: bool) -> Value {
    let mut components = Vec::new();
    T::schemas(&mut components);
    let components: BTreeMap<String, Value> = components
        .into_iter()
        .map(|(name, schema)| (name, to_json(&schema)))
        .collect();
    let mut schema = plain(inline(to_json(&T::schema()), &components, 0), drop_nulls);
    // The type's own description is the Rust docs' (with their links); a
    // tool carries its own.
    if let Value::Object(root) = &mut schema {
        root.remove("description");
        // A flattened struct is an `allOf` of objects: still an object,
        // which MCP asks a tool's schemas to say.
        if root.contains_key("allOf") && !root.contains_key("type") {
            root.insert("type".into(), "object".into());
        }
        // Some hosts want `properties` on every object, even an empty one.
        if root.get("type") == Some(&Value::from("object")) && !root.contains_key("allOf") {
            root.entry("properties")
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    schema
}

/// The schema in the subset every tool-use host takes (OpenAI's strict
/// mode, Gemini's declarations, Ajv without format plugins): no `format`,
/// no `null` alternatives (an optional field is one left out),
/// no `propertyNames` that only say "a string".
fn plain(value: Value, drop_nulls: bool) -> Value {
    match value {
        Value::Object(mut map) if !drop_nulls => {
            if let Some(Value::String(f)) = map.get("format") {
                if NUMERIC_FORMATS.contains(&f.as_str()) {
                    map.remove("format");
                }
            }
            Value::Object(map.into_iter().map(|(k, v)| (k, plain(v, false))).collect())
        }
        Value::Object(mut map) => {
            // Ajv in strict mode refuses a format it does not know.
            map.remove("format");
            if map.get("propertyNames") == Some(&serde_json::json!({"type": "string"})) {
                map.remove("propertyNames");
            }
            // "type": ["integer", "null"] -> "type": "integer"
            if let Some(Value::Array(types)) = map.get("type") {
                let kept: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
                if kept.len() == 1 {
                    map.insert("type".into(), kept[0].clone());
                }
            }
            // "oneOf": [{"type": "null"}, X] -> X (with this level's keys)
            if let Some(Value::Array(alts)) = map.get("oneOf") {
                let kept: Vec<Value> = alts
                    .iter()
                    .filter(|a| **a != serde_json::json!({"type": "null"}))
                    .cloned()
                    .collect();
                if kept.len() == 1 {
                    map.remove("oneOf");
                    if let Value::Object(only) = kept.into_iter().next().expect("one") {
                        for (k, v) in only {
                            map.entry(k).or_insert(v);
                        }
                    }
                } else if kept.len() < alts.len() {
                    map.insert("oneOf".into(), Value::Array(kept));
                }
            }
            // `null` is not a default of a field one leaves out.
            if map.get("default") == Some(&Value::Null) {
                map.remove("default");
            }
            Value::Object(map.into_iter().map(|(k, v)| (k, plain(v, true))).collect())
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| plain(v, drop_nulls)).collect())
        }
        other => other,
    }
}

const NUMERIC_FORMATS: &[&str] = &[
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float", "double",
];

fn to_json(schema: &RefOr<Schema>) -> Value {
    serde_json::to_value(schema).expect("a schema is plain JSON")
}

fn inline(value: Value, components: &BTreeMap<String, Value>, depth: usize) -> Value {
    match value {
        Value::Object(map) => {
            let target = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .and_then(|name| components.get(name));
            match target {
                Some(target) if depth < MAX_REF_DEPTH => {
                    let mut inlined = inline(target.clone(), components, depth + 1);
                    // A component's description is its Rust docs (with
                    // doctests); only the referring field's is kept.
                    if let Value::Object(out) = &mut inlined {
                        out.remove("description");
                    }
                    // What the reference says of itself (its description)
                    // wins over the component's.
                    if let Value::Object(out) = &mut inlined {
                        for (k, v) in map {
                            if k != "$ref" && !matches!(&v, Value::String(s) if s.is_empty()) {
                                out.insert(k, v);
                            }
                        }
                    }
                    inlined
                }
                _ => Value::Object(
                    map.into_iter()
                        .map(|(k, v)| (k, inline(v, components, depth)))
                        .collect::<Map<String, Value>>(),
                ),
            }
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| inline(v, components, depth))
                .collect(),
        ),
        other => other,
    }
}

/// A schema written as JSON, for a field whose Rust type is a
/// `serde_json::Value` accepted in several shapes.
pub(crate) fn from_json(schema: Value) -> RefOr<Schema> {
    RefOr::T(serde_json::from_value(schema).expect("a valid schema"))
}
