//! What a JSON-RPC message must be before rmcp reads it, checked by both
//! transports (the stdio gate, the HTTP guard): rmcp answers a message it
//! cannot type as "method not found" naming the method (`tools/call` with
//! `arguments: [1, 2]` was `-32601 tools/call`), and an object with no
//! `method` that is no answer either with HTTP 415. These say what is wrong.

use serde_json::Value;

/// Why a message is refused: its JSON-RPC error code and message.
#[derive(Debug, PartialEq)]
pub(crate) struct Refusal {
    pub(crate) code: i64,
    pub(crate) message: String,
}

/// JSON-RPC's "invalid request".
pub(crate) const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC's "invalid params".
pub(crate) const INVALID_PARAMS: i64 = -32602;

/// Checks one message (a JSON object): `method` as sent (`None` when it
/// has none), its `params`, and whether it carries a `result` or an
/// `error` (an answer to the server's own request).
pub(crate) fn check(
    method: Option<&Value>,
    params: Option<&Value>,
    is_answer: bool,
) -> Result<(), Refusal> {
    let method = match method {
        None if is_answer => return Ok(()),
        None => {
            return Err(Refusal {
                code: INVALID_REQUEST,
                message: "no `method`: a request or notification names its method; an answer carries `result` or `error`".into(),
            })
        }
        Some(Value::String(m)) => m.as_str(),
        Some(other) => {
            return Err(Refusal {
                code: INVALID_REQUEST,
                message: format!("`method`: got {}; expected a string", kind(other)),
            })
        }
    };
    if method != "tools/call" {
        return Ok(());
    }
    let invalid = |message: String| {
        Err(Refusal {
            code: INVALID_PARAMS,
            message,
        })
    };
    let Some(Value::Object(params)) = params else {
        return invalid(format!(
            "`params` of tools/call: got {}; expected an object {{\"name\": tool, \"arguments\": {{...}}}}",
            params.map_or("nothing", kind)
        ));
    };
    match params.get("name") {
        Some(Value::String(_)) => {}
        other => {
            return invalid(format!(
                "`params.name` of tools/call: got {}; expected the tool's name, a string (tools/list names them)",
                other.map_or("nothing", kind)
            ))
        }
    }
    match params.get("arguments") {
        None | Some(Value::Null | Value::Object(_)) => Ok(()),
        Some(other) => invalid(format!(
            "`params.arguments` of tools/call: got {}; expected an object of the tool's arguments by name (its inputSchema)",
            kind(other)
        )),
    }
}

/// What kind of JSON value `v` is, for a message.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn says_what_is_wrong_with_a_message() {
        let call = json!("tools/call");
        assert!(check(
            Some(&call),
            Some(&json!({"name": "t", "arguments": {}})),
            false
        )
        .is_ok());
        assert!(check(Some(&call), Some(&json!({"name": "t"})), false).is_ok());
        assert!(check(
            Some(&call),
            Some(&json!({"name": "t", "arguments": null})),
            false
        )
        .is_ok());
        assert!(check(Some(&json!("ping")), None, false).is_ok());
        assert!(check(None, None, true).is_ok());
        let refused = |m: Option<&Value>, p: Option<&Value>| check(m, p, false).unwrap_err();
        let r = refused(
            Some(&call),
            Some(&json!({"name": "t", "arguments": [1, 2]})),
        );
        assert_eq!(r.code, INVALID_PARAMS);
        assert!(
            r.message.contains("`params.arguments`") && r.message.contains("an array"),
            "{}",
            r.message
        );
        let r = refused(Some(&call), Some(&json!("x")));
        assert!(
            r.message.contains("`params` of tools/call: got a string"),
            "{}",
            r.message
        );
        let r = refused(Some(&call), None);
        assert!(r.message.contains("got nothing"), "{}", r.message);
        let r = refused(Some(&call), Some(&json!({"arguments": {}})));
        assert!(r.message.contains("`params.name`"), "{}", r.message);
        let r = refused(None, None);
        assert_eq!(r.code, INVALID_REQUEST);
        let r = refused(Some(&json!(5)), None);
        assert!(
            r.message.contains("`method`: got a number"),
            "{}",
            r.message
        );
    }
}
