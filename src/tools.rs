//! Agent tools (the seed's "Agent Tools"): `deploy_modal_function`,
//! `spawn_parallel_tasks`, `request_gpu_task` and `coordinate_state`, each
//! with a JSON Schema for its arguments, usable as LLM tool definitions, and
//! one dispatcher, [`Tools::call`], that runs them on a [`Runtime`].
//!
//! ```no_run
//! # async fn demo(rt: modal_agents::Runtime) -> Result<(), modal_agents::ToolError> {
//! use serde_json::json;
//! let tools = modal_agents::Tools::new(rt);
//! let defs = tools.definitions(); // [{name, description, input_schema}, ...]
//! tools.call("deploy_modal_function", json!({
//!     "function_code": "def double(x): return x * 2",
//!     "function_name": "double",
//! })).await?;
//! let out = tools.call("spawn_parallel_tasks", json!({
//!     "function_ref": "double", "inputs": [1, 2, 3], "wait": true,
//! })).await?;
//! assert_eq!(out["results"], json!([2, 4, 6]));
//! # Ok(()) }
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::runtime::{Runtime, RuntimeError};
use crate::spec::{seed_field, BackendChoice, Limits, SeedDeploy, SeedVolumes, SpecError};
use crate::task::TaskStatus;
use crate::volume::VolumeError;

/// Most results `spawn_parallel_tasks` returns inline; read the rest by page.
pub const MAX_INLINE_RESULTS: u64 = 10_000;

/// A tool's definition, in the shape LLM tool-use APIs take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// The tool's name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema (draft 2020-12) of its arguments.
    pub input_schema: Value,
}

/// Why a tool call failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// No tool has that name.
    #[error("unknown tool `{name}` (tools: {})", .known.join(", "))]
    UnknownTool {
        /// The name asked for.
        name: String,
        /// The tools there are.
        known: Vec<String>,
    },
    /// The arguments do not fit the tool's schema.
    #[error("invalid arguments for `{tool}`: `{field}`: {message}")]
    InvalidArguments {
        /// The tool.
        tool: String,
        /// The argument at fault (a JSON path such as `inputs[3]`).
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The runtime refused or failed the operation.
    #[error("`{tool}` failed: {source}")]
    Runtime {
        /// The tool.
        tool: String,
        /// The runtime's error.
        #[source]
        source: RuntimeError,
    },
    /// A volume operation failed.
    #[error("`{tool}` failed: {source}")]
    Volume {
        /// The tool.
        tool: String,
        /// The volume's error.
        #[source]
        source: VolumeError,
    },
}

/// The agent tool set over one runtime.
#[derive(Debug, Clone)]
pub struct Tools {
    runtime: Runtime,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployArgs {
    function_code: String,
    function_name: String,
    #[serde(default, alias = "packages")]
    image_packages: Vec<String>,
    #[serde(default)]
    gpu: Option<Value>,
    #[serde(default)]
    timeout: Option<u32>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    volumes: Option<SeedVolumes>,
    #[serde(default)]
    retries: Option<Value>,
    #[serde(default)]
    max_concurrency: Option<u32>,
    #[serde(default)]
    scaledown_window: Option<u32>,
    #[serde(default)]
    min_containers: Option<u32>,
    #[serde(default)]
    cpu: Option<f64>,
    #[serde(default)]
    memory: Option<Value>,
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    backend: Option<BackendChoice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpawnParallelArgs {
    function_ref: String,
    inputs: Vec<Value>,
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuTaskArgs {
    function_ref: String,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    kwargs: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Operation {
    Read,
    Write,
    List,
    Delete,
    Cas,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateArgs {
    volume_name: String,
    operation: Operation,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    expected_version: Option<u64>,
}

fn tool_field(spec_field: &str) -> String {
    seed_field(spec_field, "image_packages")
}

fn parse<T: DeserializeOwned>(tool: &str, args: Value) -> Result<T, ToolError> {
    let args = match args {
        Value::Null => Value::Object(Map::new()),
        other => other,
    };
    if !args.is_object() {
        return Err(ToolError::InvalidArguments {
            tool: tool.to_owned(),
            field: "(arguments)".into(),
            message: format!("expected a JSON object, got {args}"),
        });
    }
    serde_path_to_error::deserialize(args).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let field = if path == "." {
            message
                .split('`')
                .nth(1)
                .map_or_else(|| "(arguments)".to_owned(), str::to_owned)
        } else {
            path
        };
        ToolError::InvalidArguments {
            tool: tool.to_owned(),
            field,
            message,
        }
    })
}

fn required_key(tool: &str, key: Option<String>, op: &str) -> Result<String, ToolError> {
    key.ok_or_else(|| ToolError::InvalidArguments {
        tool: tool.to_owned(),
        field: "key".into(),
        message: format!("required for operation `{op}`"),
    })
}

impl Tools {
    /// The tools over `runtime`.
    pub fn new(runtime: Runtime) -> Tools {
        Tools { runtime }
    }

    /// The tool definitions, for an LLM's tool list.
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        let def = |name: &str, description: &str, input_schema: Value| ToolDefinition {
            name: name.into(),
            description: description.into(),
            input_schema,
        };
        vec![
            def(
                "deploy_modal_function",
                "Deploy a Python function from a code string so it can be called and mapped.",
                json!({
                    "type": "object",
                    "properties": {
                        "function_code": {"type": "string", "description": "Python source defining the function"},
                        "function_name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$"},
                        "image_packages": {"type": "array", "items": {"type": "string"}, "description": "pip requirements"},
                        "gpu": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                                "description": "T4, L4, A10, L40S, A100, A100-40GB, A100-80GB, RTX-PRO-6000, H100, H100!, H200, B200, B200+; optional :N count; or a fallback list"},
                        "timeout": {"type": "integer", "minimum": 1, "maximum": 86400},
                        "secrets": {"type": "array", "items": {"type": "string"}},
                        "volumes": {"oneOf": [
                            {"type": "array", "items": {"type": "string"}, "description": "volume names, mounted at /volumes/<name>"},
                            {"type": "object", "additionalProperties": {"type": "string"}, "description": "mount path -> volume name"}]},
                        "retries": {"type": "integer", "minimum": 0, "maximum": 10},
                        "max_concurrency": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "scaledown_window": {"type": "integer", "minimum": 2, "maximum": 1200,
                                             "description": "seconds an idle container stays warm (default 60)"},
                        "min_containers": {"type": "integer", "minimum": 0, "maximum": 1000,
                                           "description": "containers kept warm even when idle (default 0)"},
                        "cpu": {"type": "number", "exclusiveMinimum": 0},
                        "memory": {"oneOf": [{"type": "integer", "minimum": 128},
                                             {"type": "array", "items": {"type": "integer", "minimum": 128}, "minItems": 2, "maxItems": 2}],
                                   "description": "MiB: a request, or [request, limit] for a hard limit too"},
                        "backend": {"type": "string", "enum": ["auto", "local", "modal"],
                                    "description": "where it runs; auto sends to Modal what this machine cannot run"},
                        "limits": {"type": "object", "additionalProperties": false,
                                   "description": "limits on each container; network is off in the local sandbox unless true",
                                   "properties": {
                                       "memory_mib": {"type": "integer", "minimum": 128},
                                       "cpu_s": {"type": "integer", "minimum": 1, "maximum": 86400},
                                       "open_files": {"type": "integer", "minimum": 16},
                                       "file_size_mib": {"type": "integer", "minimum": 1},
                                       "processes": {"type": "integer", "minimum": 4, "maximum": 65536},
                                       "network": {"type": "boolean"}}}
                    },
                    "required": ["function_code", "function_name"],
                    "additionalProperties": false
                }),
            ),
            def(
                "spawn_parallel_tasks",
                "Run a deployed function over a list of inputs in parallel (one argument each).",
                json!({
                    "type": "object",
                    "properties": {
                        "function_ref": {"type": "string", "description": "name of a deployed function"},
                        "inputs": {"type": "array", "description": "one JSON value per call"},
                        "wait": {"type": "boolean", "default": true, "description": "wait and return the results"}
                    },
                    "required": ["function_ref", "inputs"],
                    "additionalProperties": false
                }),
            ),
            def(
                "request_gpu_task",
                "Run one call of a GPU-enabled deployed function and return its result.",
                json!({
                    "type": "object",
                    "properties": {
                        "function_ref": {"type": "string"},
                        "args": {"type": "array", "default": []},
                        "kwargs": {"type": "object", "default": {}}
                    },
                    "required": ["function_ref"],
                    "additionalProperties": false
                }),
            ),
            def(
                "coordinate_state",
                "Read, write, list, delete or compare-and-swap shared state in a volume.",
                json!({
                    "type": "object",
                    "properties": {
                        "volume_name": {"type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"},
                        "operation": {"enum": ["read", "write", "list", "delete", "cas"]},
                        "key": {"type": "string", "description": "the key (a prefix for list)"},
                        "data": {"description": "the value to write"},
                        "expected_version": {"type": "integer", "minimum": 1,
                                             "description": "for cas: the version the key must have; omit for 'must not exist'"}
                    },
                    "required": ["volume_name", "operation"],
                    "additionalProperties": false
                }),
            ),
        ]
    }

    /// Runs tool `name` with JSON arguments and returns its JSON result.
    pub async fn call(&self, name: &str, args: Value) -> Result<Value, ToolError> {
        match name {
            "deploy_modal_function" => self.deploy(parse(name, args)?).await,
            "spawn_parallel_tasks" => self.spawn_parallel(parse(name, args)?).await,
            "request_gpu_task" => self.gpu_task(parse(name, args)?).await,
            "coordinate_state" => self.state(parse(name, args)?).await,
            _ => Err(ToolError::UnknownTool {
                name: name.to_owned(),
                known: self.definitions().into_iter().map(|d| d.name).collect(),
            }),
        }
    }

    fn runtime_error(tool: &str, e: RuntimeError) -> ToolError {
        match e {
            RuntimeError::Spec(SpecError::Invalid {
                field,
                value,
                expected,
            }) => ToolError::InvalidArguments {
                tool: tool.to_owned(),
                field: tool_field(&field),
                message: format!("got {value:?}; expected {expected}"),
            },
            source => ToolError::Runtime {
                tool: tool.to_owned(),
                source,
            },
        }
    }

    async fn deploy(&self, a: DeployArgs) -> Result<Value, ToolError> {
        const TOOL: &str = "deploy_modal_function";
        let spec = SeedDeploy {
            code: a.function_code,
            name: a.function_name,
            packages: a.image_packages,
            apt_packages: Vec::new(),
            gpu: a.gpu,
            timeout: a.timeout,
            secrets: a.secrets,
            volumes: a.volumes,
            retries: a.retries,
            max_concurrency: a.max_concurrency,
            scaledown_window: a.scaledown_window,
            min_containers: a.min_containers,
            cpu: a.cpu,
            memory: a.memory,
            limits: a.limits,
            backend: a.backend,
        }
        .into_spec()
        .map_err(|e| Self::runtime_error(TOOL, RuntimeError::Spec(e)))?;
        let info = self
            .runtime
            .deploy_function(spec)
            .await
            .map_err(|e| Self::runtime_error(TOOL, e))?;
        let mut answer = json!({
            "function_id": info.function_id,
            "function_name": info.function_name,
            "status": "registered",
        });
        if !info.warnings.is_empty() {
            answer["warnings"] = json!(info.warnings);
        }
        Ok(answer)
    }

    async fn spawn_parallel(&self, a: SpawnParallelArgs) -> Result<Value, ToolError> {
        const TOOL: &str = "spawn_parallel_tasks";
        let err = |e| Self::runtime_error(TOOL, e);
        let n = a.inputs.len() as u64;
        let id = self
            .runtime
            .run_parallel(&a.function_ref, a.inputs)
            .await
            .map_err(err)?;
        let mut out = json!({
            "task_id": id, "function_name": a.function_ref, "num_tasks": n, "status": "pending",
        });
        if a.wait {
            let record = self.runtime.wait(id, None).await.map_err(err)?;
            out["status"] = json!(record.status);
            out["progress"] = json!(record.progress);
            let page = self
                .runtime
                .results(id, 0, MAX_INLINE_RESULTS)
                .await
                .map_err(err)?;
            out["results"] = json!(page.results);
            out["next_offset"] = json!(page.next_offset);
        }
        Ok(out)
    }

    async fn gpu_task(&self, a: GpuTaskArgs) -> Result<Value, ToolError> {
        const TOOL: &str = "request_gpu_task";
        let info = self.runtime.function(&a.function_ref).ok_or_else(|| {
            Self::runtime_error(TOOL, RuntimeError::UnknownFunction(a.function_ref.clone()))
        })?;
        if info.spec.resources.gpu.is_none() {
            return Err(ToolError::InvalidArguments {
                tool: TOOL.into(),
                field: "function_ref".into(),
                message: format!(
                    "function `{}` requests no GPU; deploy it with `gpu` (for example \"T4\") or call it with spawn_parallel_tasks",
                    a.function_ref
                ),
            });
        }
        let err = |e| Self::runtime_error(TOOL, e);
        let id = self
            .runtime
            .spawn(&a.function_ref, a.args, a.kwargs)
            .await
            .map_err(err)?;
        let record = self.runtime.wait(id, None).await.map_err(err)?;
        Ok(json!({
            "task_id": id,
            "function_name": a.function_ref,
            "gpu": info.spec.resources.gpu,
            "status": record.status,
            "result": record.result,
            "error": record.error,
            "succeeded": record.status == TaskStatus::Completed,
        }))
    }

    async fn state(&self, a: StateArgs) -> Result<Value, ToolError> {
        const TOOL: &str = "coordinate_state";
        let volumes = self.runtime.volumes();
        let err = |source| ToolError::Volume {
            tool: TOOL.into(),
            source,
        };
        let volume = &a.volume_name;
        match a.operation {
            Operation::Read => {
                let key = required_key(TOOL, a.key, "read")?;
                let found = volumes.read(volume, &key).await.map_err(err)?;
                Ok(json!({
                    "key": key,
                    "found": found.is_some(),
                    "value": found.as_ref().map(|v| &v.value),
                    "version": found.as_ref().map(|v| v.version),
                }))
            }
            Operation::Write | Operation::Cas => {
                let op = if matches!(a.operation, Operation::Cas) {
                    "cas"
                } else {
                    "write"
                };
                let key = required_key(TOOL, a.key, op)?;
                let data = a.data.ok_or_else(|| ToolError::InvalidArguments {
                    tool: TOOL.into(),
                    field: "data".into(),
                    message: format!("required for operation `{op}`"),
                })?;
                let version = if op == "cas" {
                    volumes
                        .compare_and_swap(volume, &key, a.expected_version, data)
                        .await
                } else {
                    volumes.write(volume, &key, data).await
                }
                .map_err(err)?;
                Ok(json!({"key": key, "version": version, "status": "written"}))
            }
            Operation::List => {
                let prefix = a.key.unwrap_or_default();
                let entries = volumes.list(volume, &prefix).await.map_err(err)?;
                let keys: Vec<&String> = entries.iter().map(|(k, _)| k).collect();
                let data: Map<String, Value> = entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value.clone()))
                    .collect();
                Ok(json!({"prefix": prefix, "keys": keys, "data": data}))
            }
            Operation::Delete => {
                let key = required_key(TOOL, a.key, "delete")?;
                let version = volumes.delete(volume, &key).await.map_err(err)?;
                Ok(json!({"key": key, "deleted": version > 0}))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_fields_map_to_tool_arguments() {
        assert_eq!(tool_field("timeout_s"), "timeout");
        assert_eq!(tool_field("image.python_packages[2]"), "image_packages[2]");
        assert_eq!(tool_field("name"), "function_name");
        assert_eq!(tool_field("gpu[1]"), "gpu[1]");
    }

    #[test]
    fn argument_errors_name_the_field() {
        let e = parse::<DeployArgs>("t", json!({"function_code": "x"})).unwrap_err();
        assert!(
            matches!(&e, ToolError::InvalidArguments { field, .. } if field == "function_name"),
            "{e}"
        );
        let e = parse::<DeployArgs>("t", json!({"function_code": "x", "function_name": 5}))
            .unwrap_err();
        assert!(
            matches!(&e, ToolError::InvalidArguments { field, .. } if field == "function_name"),
            "{e}"
        );
        let e =
            parse::<SpawnParallelArgs>("t", json!({"function_ref": "f", "inputs": 3})).unwrap_err();
        assert!(
            matches!(&e, ToolError::InvalidArguments { field, .. } if field == "inputs"),
            "{e}"
        );
        let e = parse::<StateArgs>("t", json!({"volume_name": "v", "operation": "explode"}))
            .unwrap_err();
        assert!(
            e.to_string().contains("operation") && e.to_string().contains("read"),
            "{e}"
        );
        let e = parse::<GpuTaskArgs>("t", json!({"function_ref": "f", "extra": 1})).unwrap_err();
        assert!(e.to_string().contains("extra"), "{e}");
        assert!(parse::<GpuTaskArgs>("t", json!([1])).is_err());
    }
}
