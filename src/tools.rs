//! Agent tools (the seed's "Agent Tools"): `deploy_modal_function`,
//! `spawn_parallel_tasks`, `request_gpu_task` and `coordinate_state`, each
//! with a JSON Schema for its arguments, usable as LLM tool definitions, and
//! one dispatcher, [`Tools::call`], that runs them on a [`Runtime`].
//!
//! ```no_run
//! # async fn demo(rt: modal_agents::Runtime) -> Result<(), modal_agents::tools::ToolError> {
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

mod files;
mod idempotency;
mod tasks;

pub use files::MAX_TOOL_FILE_BYTES;
pub use tasks::{MAX_TOOL_LOG_BYTES, MAX_TOOL_RESULT_BYTES};

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::runtime::{Runtime, RuntimeError};
use crate::spec::SpecError;
use crate::task::TaskStatus;
use crate::task::{ResultsPage, TaskLogs, TaskRecord};
use crate::volume::VolumeError;
use crate::wire::{
    json_schema, output_json_schema, wire_field, CoordinateState, DeployRequest, Deployed,
    FunctionList, GpuTaskResult, ListVolumeFiles, MapSubmitted, NoArguments, RequestGpuTask,
    SpawnParallelTasks, SpawnTaskRequest, StateOperation, StateResult, TaskRef, TaskResultsRequest,
    TaskStatusView, ToolDefinition, VolumeFile, VolumeFileList, VolumeFileRef, WaitTasksRequest,
    WaitTasksResult, WriteVolumeFile, MAX_INLINE_RESULTS,
};

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
    /// What the tool would answer with is larger than a tool answer may
    /// be; `instead` says how to get it.
    #[error("{tool}: the {what} is {size} bytes; this tool answers with at most {max}: {instead}")]
    TooLarge {
        /// The tool.
        tool: String,
        /// What is too large.
        what: String,
        /// Its size.
        size: u64,
        /// The most a tool answer carries.
        max: u64,
        /// How to get it instead.
        instead: String,
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

impl ToolError {
    /// A refused spec, as an argument error when it names a field.
    fn from_spec(tool: &str, e: SpecError) -> ToolError {
        match e {
            SpecError::Invalid {
                field,
                value,
                expected,
            } => ToolError::InvalidArguments {
                tool: tool.to_owned(),
                field,
                message: format!("got {value:?}; expected {expected}"),
            },
            e => ToolError::Runtime {
                tool: tool.to_owned(),
                source: RuntimeError::Spec(e),
            },
        }
    }
}

/// One tool: its arguments' and its answer's wire types.
fn def<In: utoipa::ToSchema, Out: utoipa::ToSchema>(
    name: &str,
    description: &str,
) -> ToolDefinition {
    ToolDefinition {
        name: name.into(),
        description: description.into(),
        input_schema: json_schema::<In>(),
        output_schema: Some(output_json_schema::<Out>()),
    }
}

/// The tools' definitions, each derived from its wire types; the tools
/// that create work also take an `idempotency_key`.
fn definitions() -> Vec<ToolDefinition> {
    let mut defs = all_definitions();
    for def in defs
        .iter_mut()
        .filter(|d| idempotency::CREATING.contains(&d.name.as_str()))
    {
        def.input_schema["properties"]["idempotency_key"] = serde_json::json!({
            "type": "string", "minLength": 1, "maxLength": 255,
            "description": "Optional. A retry with the same key and arguments returns the first \
                            answer instead of doing the work twice."
        });
    }
    defs
}

fn all_definitions() -> Vec<ToolDefinition> {
    vec![
        def::<DeployRequest, Deployed>(
            "deploy_modal_function",
            "Deploy (or redeploy) a Python function from source code so it can be called. \
             Give the code and the name of the function in it; optionally pip packages, a GPU, \
             a timeout, retries, secrets and volumes. Do this before spawn_task or \
             spawn_parallel_tasks.",
        ),
        def::<SpawnParallelTasks, MapSubmitted>(
            "spawn_parallel_tasks",
            "Run a deployed function once per input, in parallel (each input is its one \
             argument). With wait (the default) it returns the results in input order; with \
             wait=false it returns a task_id at once: follow it with wait_tasks and \
             get_task_results.",
        ),
        def::<RequestGpuTask, GpuTaskResult>(
            "request_gpu_task",
            "Run one call of a deployed function that requested a GPU and wait for its result.",
        ),
        def::<CoordinateState, StateResult>(
            "coordinate_state",
            "Shared state between agents in a named volume: read, write, list (by key prefix), \
             delete, or cas (compare-and-swap: write only if the key still has \
             expected_version; omit it for 'only if absent'). Every write returns the new version.",
        ),
        def::<SpawnTaskRequest, TaskRecord>(
            "spawn_task",
            "Start one call of a deployed function with args and kwargs; returns its task_id \
             at once (or, with wait, its finished record). Use wait_tasks to wait for several.",
        ),
        def::<TaskRef, TaskStatusView>(
            "get_task_status",
            "A task's status, result or error (with traceback), timing and a map's progress; \
             a finished map's results are included when there are at most 10,000.",
        ),
        def::<WaitTasksRequest, WaitTasksResult>(
            "wait_tasks",
            "Wait, without polling, until all (mode=all) or any (mode=any) of the given tasks \
             have finished, at most timeout_s (default 55). Returns one summary line per task; \
             call again if done is false. Prefer this over calling get_task_status repeatedly.",
        ),
        def::<TaskRef, TaskRecord>(
            "cancel_task",
            "Cancel a pending or running task (a call or a whole map); returns its final record.",
        ),
        def::<TaskResultsRequest, ResultsPage>(
            "get_task_results",
            "A page of a map's results in input order (offset, limit up to 10000); a failed \
             input is {\"error\": {type, message}} in its slot. next_offset is where the next \
             page starts, null at the end.",
        ),
        def::<TaskRef, TaskLogs>(
            "get_task_logs",
            "What a task's function printed (stdout and stderr).",
        ),
        def::<NoArguments, FunctionList>(
            "list_functions",
            "The deployed functions with their specs.",
        ),
        def::<VolumeFileRef, VolumeFile>(
            "read_volume_file",
            "Read a file from a volume (text, or base64 when it is binary).",
        ),
        def::<WriteVolumeFile, crate::volume::FileStat>(
            "write_volume_file",
            "Write a file into a volume (atomically), as text or base64; functions that mount \
             the volume see it.",
        ),
        def::<ListVolumeFiles, VolumeFileList>(
            "list_volume_files",
            "List the files in a volume, optionally under a path prefix.",
        ),
    ]
}

/// Told `(done, total)` inputs while a tool waits for a map.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How often a waiting map's progress is told.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The agent tool set over one runtime.
#[derive(Clone)]
pub struct Tools {
    runtime: Runtime,
    progress: Option<Progress>,
}

impl std::fmt::Debug for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

fn tool_field(spec_field: &str) -> String {
    wire_field(spec_field, "image_packages")
}

fn parse<T: DeserializeOwned>(tool: &str, args: Value) -> Result<T, ToolError> {
    let args = match args {
        Value::Null => Value::Object(Map::new()),
        other => other,
    };
    use crate::value::{clip, MAX_ECHO};
    if !args.is_object() {
        return Err(ToolError::InvalidArguments {
            tool: tool.to_owned(),
            field: "(arguments)".into(),
            message: format!(
                "expected a JSON object, got {}",
                clip(&args.to_string(), MAX_ECHO)
            ),
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
        // Both may repeat what the caller sent (a key, a value).
        ToolError::InvalidArguments {
            tool: tool.to_owned(),
            field: clip(&field, MAX_ECHO).into_owned(),
            message: clip(&message, 4 * MAX_ECHO).into_owned(),
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
        Tools {
            runtime,
            progress: None,
        }
    }

    /// The same tools, telling `progress` how a map they wait for goes
    /// (`spawn_parallel_tasks` with `wait`), about once a second.
    pub fn with_progress(mut self, progress: Progress) -> Tools {
        self.progress = Some(progress);
        self
    }

    /// The runtime the tools run on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The tool definitions, for an LLM's tool list; each input schema is
    /// derived from the tool's [`wire`](crate::wire) type, the same types
    /// the OpenAPI document is derived from.
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        definitions()
    }

    /// Runs tool `name` with JSON arguments and returns its JSON result.
    pub async fn call(&self, name: &str, mut args: Value) -> Result<Value, ToolError> {
        if idempotency::CREATING.contains(&name) {
            if let Some(key) = idempotency::take_key(name, &mut args)? {
                let replays = self.runtime.extension::<idempotency::Replays>();
                return match replays.claim(name, key, &args).await? {
                    idempotency::Claim::Replay(answer) => Ok(answer),
                    idempotency::Claim::Run(guard) => {
                        let answer = self.dispatch(name, args).await;
                        guard.finish(&answer);
                        answer
                    }
                };
            }
        }
        self.dispatch(name, args).await
    }

    async fn dispatch(&self, name: &str, args: Value) -> Result<Value, ToolError> {
        match name {
            "deploy_modal_function" => self.deploy(parse(name, args)?).await,
            "spawn_parallel_tasks" => self.spawn_parallel(parse(name, args)?).await,
            "request_gpu_task" => self.gpu_task(parse(name, args)?).await,
            "coordinate_state" => self.state(parse(name, args)?).await,
            "spawn_task" => self.spawn_task(parse(name, args)?).await,
            "get_task_status" => self.task_status(parse(name, args)?).await,
            "wait_tasks" => self.wait_tasks(parse(name, args)?).await,
            "cancel_task" => self.cancel_task(parse(name, args)?).await,
            "get_task_results" => self.task_results(parse(name, args)?).await,
            "get_task_logs" => self.task_logs(parse(name, args)?).await,
            "list_functions" => self.list_functions(parse(name, args)?),
            "read_volume_file" => self.read_file(parse(name, args)?).await,
            "write_volume_file" => self.write_file(parse(name, args)?).await,
            "list_volume_files" => self.list_files(parse(name, args)?).await,
            _ => Err(ToolError::UnknownTool {
                name: crate::value::clip(name, crate::value::MAX_ECHO).into_owned(),
                known: self.definitions().into_iter().map(|d| d.name).collect(),
            }),
        }
    }

    fn runtime_error(tool: &str, e: RuntimeError) -> ToolError {
        match e {
            RuntimeError::Spec(e) => ToolError::from_spec(tool, e.with_field(tool_field)),
            source => ToolError::Runtime {
                tool: tool.to_owned(),
                source,
            },
        }
    }

    async fn deploy(&self, request: DeployRequest) -> Result<Value, ToolError> {
        const TOOL: &str = "deploy_modal_function";
        let spec = request
            .into_spec()
            .map_err(|e| ToolError::from_spec(TOOL, e))?;
        let info = self
            .runtime
            .deploy_function(spec)
            .await
            .map_err(|e| Self::runtime_error(TOOL, e))?;
        Ok(json!(Deployed::from(&info)))
    }

    async fn spawn_parallel(&self, a: SpawnParallelTasks) -> Result<Value, ToolError> {
        const TOOL: &str = "spawn_parallel_tasks";
        let err = |e| Self::runtime_error(TOOL, e);
        let n = a.inputs.len() as u64;
        let id = self
            .runtime
            .run_parallel(&a.function_ref, a.inputs)
            .await
            .map_err(err)?;
        let mut out = MapSubmitted::pending(id, a.function_ref, n);
        if a.wait {
            let record = match &self.progress {
                None => self.runtime.wait(id, None).await.map_err(err)?,
                Some(progress) => loop {
                    match self.runtime.wait(id, Some(PROGRESS_EVERY)).await {
                        Ok(record) => break record,
                        Err(RuntimeError::WaitTimeout { .. }) => {
                            if let Some(p) = self.runtime.status(id).ok().and_then(|r| r.progress) {
                                progress(p.done(), p.total);
                            }
                        }
                        Err(e) => return Err(err(e)),
                    }
                },
            };
            let page = self
                .runtime
                .results(id, 0, MAX_INLINE_RESULTS)
                .await
                .map_err(err)?;
            out.status = record.status;
            out.progress = record.progress;
            out.error = record.error;
            out.results = Some(page.results);
            out.next_offset = page.next_offset;
        }
        Ok(json!(out))
    }

    async fn gpu_task(&self, a: RequestGpuTask) -> Result<Value, ToolError> {
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
        Ok(json!(GpuTaskResult {
            task_id: id,
            function_name: a.function_ref,
            gpu: info.spec.resources.gpu,
            succeeded: record.status == TaskStatus::Completed,
            status: record.status,
            result: record.result,
            error: record.error,
        }))
    }

    async fn state(&self, a: CoordinateState) -> Result<Value, ToolError> {
        const TOOL: &str = "coordinate_state";
        let volumes = self.runtime.volumes();
        let err = |source| ToolError::Volume {
            tool: TOOL.into(),
            source,
        };
        let volume = &a.volume_name;
        match a.operation {
            StateOperation::Read => {
                let key = required_key(TOOL, a.key, "read")?;
                let found = volumes.read(volume, &key).await.map_err(err)?;
                Ok(json!({
                    "key": key,
                    "found": found.is_some(),
                    "value": found.as_ref().map(|v| &v.value),
                    "version": found.as_ref().map(|v| v.version),
                }))
            }
            StateOperation::Write | StateOperation::Cas => {
                let op = if matches!(a.operation, StateOperation::Cas) {
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
            StateOperation::List => {
                let prefix = a.key.unwrap_or_default();
                let entries = volumes.list(volume, &prefix).await.map_err(err)?;
                let keys: Vec<&String> = entries.iter().map(|(k, _)| k).collect();
                let data: Map<String, Value> = entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value.clone()))
                    .collect();
                Ok(json!({"prefix": prefix, "keys": keys, "data": data}))
            }
            StateOperation::Delete => {
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
        let e = parse::<DeployRequest>("t", json!({"function_code": "x"})).unwrap_err();
        assert!(
            matches!(&e, ToolError::InvalidArguments { field, .. } if field == "function_name"),
            "{e}"
        );
        let e = parse::<DeployRequest>("t", json!({"function_code": "x", "function_name": 5}))
            .unwrap_err();
        assert!(
            matches!(&e, ToolError::InvalidArguments { field, .. } if field == "function_name"),
            "{e}"
        );
        let e = parse::<SpawnParallelTasks>("t", json!({"function_ref": "f", "inputs": 3}))
            .unwrap_err();
        assert!(
            matches!(&e, ToolError::InvalidArguments { field, .. } if field == "inputs"),
            "{e}"
        );
        let e = parse::<CoordinateState>("t", json!({"volume_name": "v", "operation": "explode"}))
            .unwrap_err();
        assert!(
            e.to_string().contains("operation") && e.to_string().contains("read"),
            "{e}"
        );
        let e = parse::<RequestGpuTask>("t", json!({"function_ref": "f", "extra": 1})).unwrap_err();
        assert!(e.to_string().contains("extra"), "{e}");
        assert!(parse::<RequestGpuTask>("t", json!([1])).is_err());
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
        let defs = definitions();
        assert_eq!(defs.len(), 14);
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
