//! Agent tools (the seed's "Agent Tools"): `deploy_modal_function`,
//! `spawn_parallel_tasks`, `request_gpu_task` and `coordinate_state`, each
//! with a JSON Schema for its arguments, usable as LLM tool definitions, and
//! one dispatcher, [`Tools::call`], that runs them on a [`Runtime`].
//!
//! ```no_run
//! # async fn demo(rt: modal_agents::Runtime) -> Result<(), modal_agents::tools::CommandError> {
//! use serde_json::json;
//! let tools = modal_agents::Tools::new(rt);
//! let defs = tools.definitions(); // [{name, description, input_schema}, ...]
//! tools.call("deploy_modal_function", json!({
//!     "function_code": "def double(x): return x * 2",
//!     "function_name": "double",
//! })).await?;
//! let out = tools.call("spawn_parallel_tasks", json!({
//!     "function_name": "double", "inputs": [1, 2, 3], "wait": true,
//! })).await?;
//! assert_eq!(out["results"], json!([2, 4, 6]));
//! # Ok(()) }
//! ```

pub use crate::commands::{
    CommandError, Progress, MAX_TOOL_FILE_BYTES, MAX_TOOL_LOG_BYTES, MAX_TOOL_RESULT_BYTES,
};

use serde_json::Value;

use crate::commands::{Caller, Commands};
use crate::runtime::Runtime;
use crate::wire::ToolDefinition;

/// The agent tool set over one runtime: the [command table](crate::commands)
/// as an LLM sees it, by name with JSON arguments.
#[derive(Clone, Debug)]
pub struct Tools {
    commands: Commands,
    caller: Caller,
}

impl Tools {
    /// The tools over `runtime`.
    pub fn new(runtime: Runtime) -> Tools {
        Tools {
            commands: Commands::new(runtime),
            caller: Caller::default(),
        }
    }

    /// The same tools, telling `progress` how a map they wait for goes
    /// (`spawn_parallel_tasks` with `wait`), about once a second.
    pub fn with_progress(mut self, progress: Progress) -> Tools {
        self.commands = self.commands.with_progress(progress);
        self
    }

    /// The same tools, telling `started` the id of every runtime task they
    /// start.
    pub fn with_started(mut self, started: crate::commands::Started) -> Tools {
        self.commands = self.commands.with_started(started);
        self
    }

    /// The same tools, whose calls that wait for a task (`spawn_task` and
    /// `spawn_parallel_tasks` with `wait`, `request_gpu_task`) wait at most
    /// `seconds` when not told otherwise, then answer with the task still
    /// running (default 55 s, under a host's usual tool timeout); `None`:
    /// as long as the work takes (an MCP task, which the host polls).
    pub fn with_tool_wait(mut self, seconds: Option<f64>) -> Tools {
        self.commands = self.commands.with_tool_wait(seconds);
        self
    }

    /// The same tools on behalf of `caller` (whose idempotency keys are
    /// theirs alone).
    pub(crate) fn for_caller(mut self, caller: Caller) -> Tools {
        self.caller = caller;
        self
    }

    /// The runtime the tools run on.
    pub fn runtime(&self) -> &Runtime {
        self.commands.runtime()
    }

    /// The tool definitions, for an LLM's tool list; each schema is derived
    /// from the command's [`wire`](crate::wire) types, the same types the
    /// OpenAPI document is derived from.
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        self.commands.definitions()
    }

    /// Runs tool `name` with JSON arguments and returns its JSON result.
    pub async fn call(&self, name: &str, args: Value) -> Result<Value, CommandError> {
        self.commands.call_as(self.caller, name, args).await
    }

    /// [`Tools::call`] with an idempotency key from outside the arguments
    /// (an HTTP `Idempotency-Key` header).
    pub(crate) async fn call_keyed(
        &self,
        name: &str,
        args: Value,
        key: Option<String>,
    ) -> Result<crate::commands::Keyed<Value>, CommandError> {
        self.commands.call_keyed(self.caller, name, args, key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_fields_map_to_tool_arguments() {
        let tool_field = |f: &str| crate::wire::wire_field(f, "image_packages");
        assert_eq!(tool_field("timeout_s"), "timeout");
        assert_eq!(tool_field("image.python_packages[2]"), "image_packages[2]");
        assert_eq!(tool_field("name"), "function_name");
        assert_eq!(tool_field("gpu[1]"), "gpu[1]");
    }

    /// Every tool schema is self-contained and in the subset tool-use
    /// hosts take: an object at the root that refuses unknown arguments, no
    /// `$ref`, no numeric `format`, no `null` types, no Rust doc links.
    #[test]
    fn tool_schemas_are_plain_json_schema() {
        fn walk(v: &Value, path: &str, bad: &mut Vec<String>) {
            match v {
                Value::Object(map) => {
                    for (k, v) in map {
                        let here = format!("{path}/{k}");
                        match (k.as_str(), v) {
                            ("$ref" | "format" | "propertyNames", _) => bad.push(here.clone()),
                            ("type", t) if t.as_array().is_some() || t == "null" => {
                                bad.push(here.clone())
                            }
                            ("description", Value::String(d)) if d.contains("[`") => {
                                bad.push(here.clone())
                            }
                            _ => {}
                        }
                        walk(v, &here, bad);
                    }
                }
                Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        walk(v, &format!("{path}/{i}"), bad);
                    }
                }
                _ => {}
            }
        }
        let defs = crate::commands::definitions();
        assert_eq!(defs.len(), 27);
        for def in defs {
            let schema = &def.input_schema;
            assert_eq!(schema["type"], "object", "{}", def.name);
            assert_eq!(schema["additionalProperties"], false, "{}", def.name);
            assert!(
                schema.get("required").is_none_or(Value::is_array),
                "{}",
                def.name
            );
            let output = def
                .output_schema
                .as_ref()
                .expect("every tool says what it answers");
            assert_eq!(output["type"], "object", "{}", def.name);
            let mut bad = Vec::new();
            walk(schema, &def.name, &mut bad);
            assert!(bad.is_empty(), "not plain: {bad:?}\n{schema:#}");
        }
    }
}
