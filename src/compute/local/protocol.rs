//! Messages between the runtime and a container's harness: framing, requests
//! and the decoding of replies.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use super::marshal::{self, Decoder, Malformed};
use crate::spec::{FunctionSpec, SpecError};
use crate::task::{InputsAs, TaskError};

/// Frames a message: 4-byte big-endian length, then the marshal body.
fn frame_with(write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = vec![0; 4];
    write(&mut out);
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// A `ping`, answered by a blank container once its harness is up.
pub(crate) fn ping_request() -> Vec<u8> {
    frame_with(|out| marshal::encode(&json!({"op": "ping"}), out))
}

/// The `load` request for a function: its code, the environment variables
/// it adds (secrets included) and its working directory.
pub(crate) fn load_request(
    spec: &FunctionSpec,
    env: &BTreeMap<String, String>,
    cwd: &Path,
    nproc: bool,
    memory_ceiling_mib: Option<u64>,
) -> Vec<u8> {
    const MIB: u64 = 1 << 20;
    let limits = &spec.limits;
    // The address space: the function's own limit, and the memory ceiling
    // where no cgroup holds it (named in the error when it is what bit).
    let address_space = match (limits.memory_mib, memory_ceiling_mib) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let body = json!({
        "limits": {
            "as": address_space.map(|m| m * MIB),
            "memory_ceiling_mib": memory_ceiling_mib.filter(|c| Some(*c) == address_space),
            "nofile": limits.open_files,
            "fsize": limits.file_size_mib.map(|m| m * MIB),
            "nproc": nproc.then_some(limits.processes),
            "timeout": spec.timeout_s,
        },
        "op": "load",
        "code": spec.code,
        "entrypoint": spec.python_entrypoint(),
        "filename": format!("{}.py", spec.name),
        "env": env,
        "cwd": cwd.display().to_string(),
    });
    frame_with(|out| marshal::encode(&body, out))
}

/// A `call` request.
pub(crate) fn call_request(args: Vec<Value>, kwargs: serde_json::Map<String, Value>) -> Vec<u8> {
    let body = json!({"op": "call", "args": args, "kwargs": kwargs});
    frame_with(|out| marshal::encode(&body, out))
}

/// A `map` request over a batch of inputs, each passed as `inputs_as` says
/// (`"as"` is left out for the default, one argument each).
pub(crate) fn map_request<'a>(
    inputs: impl ExactSizeIterator<Item = &'a Value>,
    inputs_as: InputsAs,
) -> Vec<u8> {
    frame_with(|out| {
        out.push(b'{');
        marshal::encode_str("op", out);
        marshal::encode_str("map", out);
        match inputs_as {
            InputsAs::Argument => {}
            InputsAs::Args => {
                marshal::encode_str("as", out);
                marshal::encode_str("args", out);
            }
            InputsAs::Kwargs => {
                marshal::encode_str("as", out);
                marshal::encode_str("kwargs", out);
            }
        }
        marshal::encode_str("inputs", out);
        marshal::encode_list_header(inputs.len(), out);
        for input in inputs {
            marshal::encode(input, out);
        }
        out.push(b'0');
    })
}

#[derive(Deserialize)]
struct LoadError {
    #[serde(rename = "type")]
    kind: String,
    message: String,
    #[serde(default)]
    line: u32,
    #[serde(default)]
    column: u32,
    #[serde(default)]
    defined: Vec<String>,
}

/// What loading the code gave: ready, or why the code was refused.
pub(crate) fn decode_load_reply(reply: &[u8]) -> Result<Result<(), SpecError>, String> {
    let value = match Decoder::new(reply).value() {
        Ok(Ok(v)) => v,
        Ok(Err(why)) => return Err(format!("bad load reply: {why}")),
        Err(e) => return Err(e.to_string()),
    };
    if value.get("ready").is_some() {
        return Ok(Ok(()));
    }
    let e: LoadError = value
        .get("load_error")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| format!("bad load reply: {value}"))?;
    Ok(Err(match e.kind.as_str() {
        "SyntaxError" | "IndentationError" | "TabError" => SpecError::Syntax {
            line: e.line,
            column: e.column,
            message: e.message,
        },
        "MissingFunction" => SpecError::MissingFunction {
            name: e.message,
            defined: e.defined,
        },
        _ => SpecError::Load {
            kind: e.kind,
            message: e.message,
        },
    }))
}

fn not_serializable(why: String) -> TaskError {
    TaskError::new(
        crate::task::ErrorKind::ResultNotSerializable,
        format!("the function returned {why}"),
    )
}

fn protocol_error(e: impl std::fmt::Display) -> TaskError {
    TaskError::new(
        crate::task::ErrorKind::ProtocolError,
        format!("bad reply from container: {e}"),
    )
}

/// Captured output that came with a reply.
#[derive(Debug, Default)]
pub(crate) struct Output {
    pub(crate) stdout: Option<String>,
    pub(crate) stderr: Option<String>,
}

impl Output {
    fn take(&mut self, key: &str, value: Result<Value, String>) -> bool {
        let slot = match key {
            "stdout" => &mut self.stdout,
            "stderr" => &mut self.stderr,
            _ => return false,
        };
        *slot = Some(match value {
            Ok(Value::String(s)) => s,
            Ok(other) => other.to_string(),
            Err(why) => format!("[output not decodable: {why}]"),
        });
        true
    }
}

fn task_error(value: Result<Value, String>) -> TaskError {
    match value {
        Ok(v) => serde_json::from_value(v).unwrap_or_else(protocol_error),
        Err(why) => protocol_error(why),
    }
}

/// Decodes the reply to a `call`: its result and captured output, or a
/// protocol error when the frame itself is malformed (then the container,
/// whose protocol state is unknown, must not serve again).
pub(crate) fn decode_call_reply(
    reply: &[u8],
) -> Result<(Result<Value, TaskError>, Output), TaskError> {
    let decode = || -> Result<(Result<Value, TaskError>, Output), Malformed> {
        let mut d = Decoder::new(reply);
        d.dict_start()?;
        let mut result = Ok(Value::Null);
        let mut output = Output::default();
        while let Some(key) = d.dict_key()? {
            let value = d.value()?;
            match key.as_str() {
                "ok" => result = value.map_err(not_serializable),
                "err" => result = Err(task_error(value)),
                other => {
                    output.take(other, value);
                }
            }
        }
        Ok((result, output))
    };
    decode().map_err(protocol_error)
}

/// Decodes the reply to a `map` of `n` inputs: one result per input.
pub(crate) fn decode_map_reply(
    reply: &[u8],
    n: usize,
) -> Result<(Vec<Result<Value, TaskError>>, Output), TaskError> {
    let mut d = Decoder::new(reply);
    let mut results: Vec<Result<Value, TaskError>> = Vec::new();
    let mut errors: Vec<(usize, TaskError)> = Vec::new();
    let mut output = Output::default();
    let mut decode = || -> Result<(), Malformed> {
        d.dict_start()?;
        while let Some(key) = d.dict_key()? {
            match key.as_str() {
                "results" => {
                    let len = d.list_len()?;
                    results.reserve(len.min(n));
                    for _ in 0..len {
                        results.push(d.value()?.map_err(not_serializable));
                    }
                }
                "errors" => {
                    if let Ok(v) = d.value()? {
                        errors = serde_json::from_value(v).unwrap_or_default();
                    }
                }
                other => {
                    let value = d.value()?;
                    output.take(other, value);
                }
            }
        }
        Ok(())
    };
    decode().map_err(protocol_error)?;
    for (i, e) in errors {
        if let Some(slot) = results.get_mut(i) {
            *slot = Err(e);
        }
    }
    if results.len() != n {
        return Err(protocol_error(format!(
            "{} results for {n} inputs",
            results.len()
        )));
    }
    Ok((results, output))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map reply frame whose `results` list claims `claimed` items.
    fn forged_map_reply(claimed: u32, tail: &[u8]) -> Vec<u8> {
        let mut frame = vec![b'{'];
        marshal::encode_str("results", &mut frame);
        frame.push(b'[');
        frame.extend_from_slice(&claimed.to_le_bytes());
        frame.extend_from_slice(tail);
        frame
    }

    /// A length field of 0x7fffffff in a reply from user code is a protocol
    /// error, not a reservation of ~160 GiB that aborts the runtime.
    #[test]
    fn forged_lengths_reserve_nothing() {
        let frame = forged_map_reply(0x7fff_ffff, b"NNN0");
        let err = decode_map_reply(&frame, 3).unwrap_err();
        assert_eq!(err.kind, "ProtocolError", "{err:?}");
        assert!(err.message.contains("2147483647 items"), "{}", err.message);

        // A tower of lists each claiming 2^31-1 items, in a 1 MB frame.
        let mut tower = Vec::new();
        for _ in 0..200_000 {
            tower.push(b'[');
            tower.extend_from_slice(&0x7fff_ffffu32.to_le_bytes());
        }
        let err = decode_call_reply(&{
            let mut f = vec![b'{'];
            marshal::encode_str("ok", &mut f);
            f.extend_from_slice(&tower);
            f
        })
        .unwrap_err();
        assert_eq!(err.kind, "ProtocolError", "{err:?}");

        // An honest reply still decodes.
        let (results, _) = decode_map_reply(&forged_map_reply(2, b"NN0"), 2)
            .map_err(|e| e.message)
            .unwrap_or_else(|m| panic!("{m}"));
        assert_eq!(results.len(), 2);
    }
}
