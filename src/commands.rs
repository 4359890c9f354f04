//! The command table: every operation agents and programs ask of the
//! runtime through more than one door, defined once: its name, its input
//! and output types (and so both schemas), whether it creates work (and so
//! takes an idempotency key), and its description for a model. The doors
//! are transports over it:
//!
//! - the agent tools ([`Tools`](crate::tools::Tools)), MCP and
//!   `POST /tools/{name}` call [`Commands::call`] by name, with JSON;
//! - the HTTP API's handlers call the same typed methods
//!   ([`Commands::spawn_task`], [`Commands::run_parallel`], ...) and shape
//!   the answer for HTTP (202 and `Location`, a result streamed from disk).
//!
//! Arguments are parsed in one place ([`parse`]): a field that does not fit
//! is named in the error, with what is accepted.
//!
//! ## Idempotency: one store, one rule
//!
//! A command that creates work takes a key (`idempotency_key`, or the
//! `Idempotency-Key` header): a retry with the same key and the same input
//! gets the first answer instead of doing the work twice, and waits for it
//! while the first still runs (up to [`REPLAY_WAIT`], then a conflict); the
//! same key with another input is refused, naming the key. A failure is not
//! remembered, so it can be retried. Keys are per caller (the bearer token),
//! kept 24 hours, across restarts (in `state.redb`, written before the
//! answer is given), at most 100,000 keys and 32 MiB of answers per
//! caller, the oldest forgotten first; an answer over 4 MiB is remembered as done, not for
//! replay. A keyed command runs to the end even if its caller goes away.

mod files;
mod replay;
mod sandbox;
mod state;
mod tasks;

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::runtime::{Runtime, RuntimeError};
use crate::spec::SpecError;
use crate::task::{ResultsPage, TaskId, TaskLogs, TaskRecord};
use crate::volume::VolumeError;
use crate::wire::{
    json_schema, output_json_schema, wire_field, CoordinateState, DeployRequest, Deployed,
    FunctionList, GpuTaskResult, ListFunctions, ListVolumeFiles, MapSubmitted, RequestGpuTask,
    SpawnParallelTasks, SpawnTaskRequest, StateResult, TaskRef, TaskResultsRequest, TaskStatusView,
    ToolDefinition, VolumeFile, VolumeFileList, VolumeFileRef, WaitTasksRequest, WaitTasksResult,
    WriteVolumeFile,
};

pub use files::MAX_TOOL_FILE_BYTES;
pub(crate) use replay::check_key;
pub(crate) use replay::Caller;
pub use replay::REPLAY_WAIT;
pub use tasks::{MAX_TOOL_LOG_BYTES, MAX_TOOL_RESULT_BYTES};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No command has that name.
    #[error("unknown tool `{name}` (tools: {})", .known.join(", "))]
    UnknownTool {
        /// The name asked for.
        name: String,
        /// The commands there are.
        known: Vec<String>,
    },
    /// What the command would answer with is larger than a tool answer may
    /// be; `instead` says how to get it.
    #[error("{tool}: the {what} is {size} bytes; this tool answers with at most {max}: {instead}")]
    TooLarge {
        /// The command.
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
    /// The arguments do not fit the command's input.
    #[error("invalid arguments for `{tool}`: `{field}`: {message}")]
    InvalidArguments {
        /// The command.
        tool: String,
        /// The argument at fault (a JSON path such as `inputs[3]`).
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// An idempotency key's first request is still running.
    #[error("`{tool}`: a request with this idempotency key is still running; try again shortly")]
    InProgress {
        /// The command.
        tool: String,
    },
    /// An idempotency key's first request ran, but its answer was too large
    /// to keep for replay.
    #[error("`{tool}`: a request with this idempotency key already ran{}; its answer was too large to keep for replay", .made.as_ref().map(|m| format!(" and made {m}")).unwrap_or_default())]
    NotReplayable {
        /// The command.
        tool: String,
        /// What the first request made, when its answer named it (`task
        /// 0b1f...`, `sandbox sb-...`), so the caller can find it.
        made: Option<String>,
    },
    /// The runtime refused or failed the operation.
    #[error("`{tool}` failed: {source}")]
    Runtime {
        /// The command.
        tool: String,
        /// The runtime's error.
        #[source]
        source: RuntimeError,
    },
    /// A sandbox operation failed.
    #[error("`{tool}` failed: {source}")]
    Sandbox {
        /// The command.
        tool: String,
        /// The sandboxes' error.
        #[source]
        source: crate::sandbox::SandboxError,
    },
    /// A volume operation failed.
    #[error("`{tool}` failed: {source}")]
    Volume {
        /// The command.
        tool: String,
        /// The volume's error.
        #[source]
        source: VolumeError,
    },
}

impl CommandError {
    /// A refused spec, as an argument error when it names a field.
    fn from_spec(tool: &str, e: SpecError) -> CommandError {
        match e {
            SpecError::Invalid {
                field,
                value,
                expected,
            } => CommandError::InvalidArguments {
                tool: tool.to_owned(),
                field,
                message: format!("got {value:?}; expected {expected}"),
            },
            // The code's own errors (syntax, loading, a missing function)
            // are the request's too: named by its field.
            e => CommandError::InvalidArguments {
                tool: tool.to_owned(),
                field: wire_field(e.field(), "image_packages"),
                message: e.to_string(),
            },
        }
    }

    /// A runtime error of command `tool`; a refused spec names the
    /// request's field.
    pub(crate) fn runtime(tool: &str, e: RuntimeError) -> CommandError {
        match e {
            RuntimeError::Spec(e) => {
                CommandError::from_spec(tool, e.with_field(|f| wire_field(f, "image_packages")))
            }
            source => CommandError::Runtime {
                tool: tool.to_owned(),
                source,
            },
        }
    }

    fn invalid(tool: &str, field: &str, message: impl Into<String>) -> CommandError {
        CommandError::InvalidArguments {
            tool: tool.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Why input could not be parsed.
pub(crate) enum ParseError {
    /// Not JSON at all (bad syntax, cut short, trailing bytes).
    Syntax(String),
    /// JSON that does not fit: the field at fault and what is wrong.
    Field(CommandError),
}

/// The one place input is parsed, whatever transport it came through: a
/// JSON document from `de` as `T`, or an error that names the field at
/// fault (a JSON path) and what it accepts. Both the field and the message
/// are cut short, since either may repeat what was sent.
pub(crate) fn parse_from<'de, T, D>(command: &str, de: D) -> Result<T, ParseError>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    use crate::value::{clip, MAX_ECHO};
    serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return ParseError::Syntax(clip(&inner.to_string(), 4 * MAX_ECHO).into_owned());
        }
        let path = e.path().to_string();
        let message = plain(&inner.to_string());
        let field = if path == "." {
            message
                .split('`')
                .nth(1)
                .map_or_else(|| "(arguments)".to_owned(), str::to_owned)
        } else {
            path
        };
        ParseError::Field(CommandError::InvalidArguments {
            tool: command.to_owned(),
            field: clip(&field, MAX_ECHO).into_owned(),
            message: clip(&message, 4 * MAX_ECHO).into_owned(),
        })
    })
}

/// `e` with a whole-number argument's range said as the tool's input
/// schema gives it (`timeout`: "from 1 to 86400", where serde says its Rust
/// type's range, "from 0 to 4294967295"), and a number too large for any
/// integer said as the number it is, not as "floating point".
pub(crate) fn with_bounds(e: CommandError, schema: &Value) -> CommandError {
    let CommandError::InvalidArguments {
        tool,
        field,
        mut message,
    } = e
    else {
        return e;
    };
    if let Some(at) = message.find("expected a whole number") {
        let mut node = schema;
        for part in field.split('.') {
            let name = part.split('[').next().unwrap_or(part);
            node = &node["properties"][name];
            if part.contains('[') {
                node = &node["items"];
            }
        }
        // The integer alternative of a `oneOf` (`retries`: a count or a
        // policy) says the range of a number given there.
        let integer = std::iter::once(node)
            .chain(node["oneOf"].as_array().into_iter().flatten())
            .find(|n| n["type"] == "integer");
        if let Some((min, max)) =
            integer.and_then(|n| Some((n["minimum"].as_i64()?, n["maximum"].as_i64()?)))
        {
            message.replace_range(
                at..,
                &format!("expected a whole number from {min} to {max}"),
            );
        }
        message = message.replace("invalid type: floating point", "invalid value: the number");
    }
    CommandError::InvalidArguments {
        tool,
        field,
        message,
    }
}

/// A deserialisation message in the words of JSON rather than of Rust:
/// no parser position, `object`/`array`/`whole number` for Rust's type
/// names, a UUID's parse failure said as what is accepted.
pub(crate) fn plain(message: &str) -> String {
    let mut text = message.to_owned();
    if let Some(at) = text.rfind(" at line ") {
        if text[at..].contains(" column ") {
            text.truncate(at);
        }
    }
    if text.starts_with("UUID parsing failed") {
        return "expected an id (a UUID such as 6f1e1a3c-59b8-4f0e-9d8c-1b3f0c9b2a11)".to_owned();
    }
    if let Some(at) = text.find("expected struct ") {
        text.truncate(at);
        text.push_str("expected an object");
    }
    for (rust, json) in [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected an object"),
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: map", "invalid type: object"),
    ] {
        if let Some(at) = text.find(rust) {
            let end = at + rust.len();
            // Whole words only (`u8` is not `u8x`).
            if !text[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                text.replace_range(at..end, json);
            }
        }
    }
    text
}

/// A tool's arguments with those given as null left out: a model sends
/// null for an argument it means to leave out (a state value, which may be
/// null itself, aside). HTTP bodies are held to their schema instead.
fn without_nulls(mut args: Value) -> (Value, Vec<String>) {
    let mut left_out = Vec::new();
    if let Value::Object(map) = &mut args {
        map.retain(|name, v| {
            let keep = !v.is_null() || matches!(name.as_str(), "value" | "data");
            if !keep {
                left_out.push(name.clone());
            }
            keep
        });
    }
    (args, left_out)
}

/// `e`, for a required argument that was given as null (and so left out),
/// said as null given rather than as missing.
fn null_given(e: CommandError, left_out: &[String]) -> CommandError {
    match e {
        CommandError::InvalidArguments {
            tool,
            field,
            message,
        } if message.starts_with("missing field") && left_out.contains(&field) => {
            CommandError::InvalidArguments {
                tool,
                field,
                message: "got null; it is required (null leaves an argument out)".into(),
            }
        }
        e => e,
    }
}

/// A command's JSON arguments as its input type ([`parse_from`]); null is
/// an empty object.
pub fn parse<T: DeserializeOwned>(command: &str, value: Value) -> Result<T, CommandError> {
    use crate::value::{clip, MAX_ECHO};
    let value = match value {
        Value::Null => Value::Object(Map::new()),
        other => other,
    };
    if !value.is_object() {
        return Err(CommandError::invalid(
            command,
            "(arguments)",
            format!(
                "expected a JSON object, got {}",
                clip(&value.to_string(), MAX_ECHO)
            ),
        ));
    }
    parse_from(command, value).map_err(|e| match e {
        ParseError::Field(e) => e,
        // A Value is always well-formed JSON.
        ParseError::Syntax(why) => CommandError::invalid(command, "(arguments)", why),
    })
}

/// Reads the idempotency keys kept across restarts (in `state.redb`) into
/// the runtime's store of them; from then on finished keys are kept there.
pub(crate) fn restore_replays(runtime: &Runtime) -> Result<(), crate::store::StoreError> {
    runtime
        .extension::<replay::Replays>()
        .restore(runtime.store().clone())
}

/// What a command does to the runtime's state, as MCP's tool annotations
/// tell a host (which may, say, run the reading ones without asking).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Reads only.
    Reads,
    /// Adds state and changes nothing already there.
    Adds,
    /// May change or remove what is there: runs code, overwrites, cancels.
    #[default]
    Changes,
}

/// One row of the table.
struct Row {
    name: &'static str,
    description: &'static str,
    creates_work: bool,
    effect: Effect,
    input: fn() -> Value,
    output: fn() -> Value,
    run: for<'a> fn(&'a Commands, Value) -> BoxFuture<'a, Result<Value, CommandError>>,
}

macro_rules! table {
    ($($name:literal => $method:ident($input:ty) -> $output:ty, creates_work: $work:expr, effect: $effect:expr, $description:expr;)*) => {
        static TABLE: &[Row] = &[$(Row {
            name: $name,
            description: $description,
            creates_work: $work,
            effect: $effect,
            input: json_schema::<$input>,
            output: output_json_schema::<$output>,
            run: {
                fn run(c: &Commands, args: Value) -> BoxFuture<'_, Result<Value, CommandError>> {
                    Box::pin(async move {
                        let (args, left_out) = without_nulls(args);
                        let input: $input = parse($name, args).map_err(|e| {
                            null_given(with_bounds(e, &json_schema::<$input>()), &left_out)
                        })?;
                        c.$method(input).await.map(|out| json!(out))
                    })
                }
                run
            },
        },)*];
    };
}

table! {
    "deploy_modal_function" => deploy(DeployRequest) -> Deployed, creates_work: true, effect: Effect::Changes,
        "Deploy (or redeploy) a Python function from source code so it can be called. \
         Give the code and the name of the function in it; optionally pip packages, a GPU, \
         a timeout, retries, secrets and volumes. Do this before spawn_task or \
         spawn_parallel_tasks.";
    "spawn_parallel_tasks" => spawn_parallel(SpawnParallelTasks) -> MapSubmitted, creates_work: true, effect: Effect::Changes,
        "Run a deployed function once per input, in parallel: each input is its one \
         argument (inputs_as=args: a list of arguments, inputs_as=kwargs: an object of \
         keyword arguments). Returns the map's task_id at once; with wait=true it waits \
         up to 55 s and returns the first results in input order. Follow a map with \
         wait_tasks and get_task_results.";
    "request_gpu_task" => gpu_task(RequestGpuTask) -> GpuTaskResult, creates_work: true, effect: Effect::Changes,
        "Run one call of a deployed function that requested a GPU and wait for its result \
         (up to 55 s; past that the answer says it is still running: follow it with \
         wait_tasks).";
    "coordinate_state" => coordinate_state(CoordinateState) -> StateResult, creates_work: false, effect: Effect::Changes,
        "Shared state between agents in a named volume: read (answers value and version), \
         write value, list (by key prefix, a page at a time), delete, or cas \
         (compare-and-swap: write value only if the key still has expected_version; omit \
         it for 'only if absent'). Every write returns the new version.";
    "spawn_task" => spawn_task_for_tool(SpawnTaskRequest) -> TaskRecord, creates_work: true, effect: Effect::Changes,
        "Start one call of a deployed function with args and kwargs; returns its task_id \
         at once (or, with wait=true, its record once it finished or 55 s passed). Use \
         wait_tasks to wait for several.";
    "get_task_status" => task_status_for_tool(TaskRef) -> TaskStatusView, creates_work: false, effect: Effect::Reads,
        "A task's status, result or error (with traceback), timing and a map's progress; \
         a finished map's results are included when there are at most 10,000.";
    "wait_tasks" => wait_tasks(WaitTasksRequest) -> WaitTasksResult, creates_work: false, effect: Effect::Reads,
        "Wait, without polling, until all (mode=all) or any (mode=any) of the given tasks \
         have finished, at most timeout_s (default 55). Returns one summary line per task; \
         call again if done is false. Prefer this over calling get_task_status repeatedly.";
    "cancel_task" => cancel_task(TaskRef) -> TaskRecord, creates_work: false, effect: Effect::Changes,
        "Cancel a pending or running task (a call or a whole map); returns its final record.";
    "get_task_results" => task_results(TaskResultsRequest) -> ResultsPage, creates_work: false, effect: Effect::Reads,
        "A page of a map's results in input order (offset, limit up to 10000); a failed \
         input is {\"error\": {type, message}} in its slot. next_offset is where the next \
         page starts, null at the end.";
    "get_task_logs" => task_logs_for_tool(TaskRef) -> TaskLogs, creates_work: false, effect: Effect::Reads,
        "What a task's function printed (stdout and stderr).";
    "list_functions" => list_functions(ListFunctions) -> FunctionList, creates_work: false, effect: Effect::Reads,
        "The deployed functions with their specs (the source only with include_code).";
    "read_volume_file" => read_file_for_tool(VolumeFileRef) -> VolumeFile, creates_work: false, effect: Effect::Reads,
        "Read a file from a volume: content (text), or content_base64 when it is binary.";
    "write_volume_file" => write_file(WriteVolumeFile) -> crate::volume::FileStat, creates_work: true, effect: Effect::Changes,
        "Write a file into a volume (atomically), as content (text) or content_base64; \
         functions that mount the volume see it.";
    "list_volume_files" => list_files(ListVolumeFiles) -> VolumeFileList, creates_work: false, effect: Effect::Reads,
        "List the files in a volume, optionally under a path prefix, a page at a time \
         (limit, then after=next_after).";
    "run_code" => run_code(crate::wire::RunCode) -> crate::wire::RunCodeResult, creates_work: true, effect: Effect::Changes,
        "Run a code snippet once (language python, the default, or sh) with nothing to deploy \
         or clean up: it runs in a fresh private sandbox (no network unless network=true) \
         that ends with it. Returns its outcome ({kind: exited, code} | signaled | timed_out \
         | out_of_memory) with stdout and stderr; if it is still running after wait_s \
         (default 55), returns sandbox_id and process_id for wait_sandbox_process. For files \
         that must stay between runs, use create_sandbox.";
    "create_sandbox" => create_sandbox(crate::wire::CreateSandbox) -> crate::wire::SandboxView, creates_work: true, effect: Effect::Adds,
        "Create a sandbox: a private Linux workspace (workdir /workspace, no network unless \
         network=true) that lives timeout_s seconds (default 300, max 86400; extend with \
         keepalive_sandbox). Run commands in it with sandbox_exec and move files with \
         write_sandbox_file / read_sandbox_file. Its files are snapshotted before it expires.";
    "sandbox_exec" => sandbox_exec(crate::wire::SandboxExec) -> crate::wire::ExecResult, creates_work: true, effect: Effect::Changes,
        "Run a command in a sandbox: cmd is the argv list (use [\"sh\", \"-c\", \"...\"] for \
         shell syntax). Waits up to wait_s (default 55) and returns its outcome \
         ({kind: exited, code} | signaled | timed_out | out_of_memory | sandbox_ended) with \
         stdout and stderr; if it is still running, returns its process_id for \
         wait_sandbox_process.";
    "wait_sandbox_process" => wait_sandbox_process(crate::wire::SandboxProcessRef) -> crate::wire::ExecResult, creates_work: false, effect: Effect::Reads,
        "Wait up to wait_s (default 55) for a sandbox process to end; returns its outcome \
         and output once it has, else its state (call again).";
    "read_sandbox_file" => read_sandbox_file(crate::wire::SandboxFileRef) -> crate::wire::SandboxFileContent, creates_work: false, effect: Effect::Reads,
        "Read a file from a sandbox (path relative to its workdir, or absolute under the \
         workdir, /tmp or a volume mount): content (text), or content_base64 when binary; \
         at most 1 MiB.";
    "write_sandbox_file" => write_sandbox_file(crate::wire::WriteSandboxFile) -> crate::wire::SandboxFileEntry, creates_work: true, effect: Effect::Changes,
        "Write a file into a sandbox as content (text) or content_base64, making missing \
         directories.";
    "list_sandbox_files" => list_sandbox_files(crate::wire::ListSandboxFiles) -> crate::wire::SandboxFileList, creates_work: false, effect: Effect::Reads,
        "List a directory of a sandbox (default its workdir): name, size, mode, mtime, is_dir.";
    "snapshot_sandbox" => snapshot_sandbox(crate::wire::SandboxRef) -> crate::wire::SnapshotInfo, creates_work: true, effect: Effect::Adds,
        "Snapshot a sandbox's workdir; returns a snapshot_id to create sandboxes from \
         (create_sandbox from_snapshot) or to compare (diff_snapshots).";
    "fork_sandbox" => fork_sandbox(crate::wire::ForkSandbox) -> crate::wire::Forked, creates_work: true, effect: Effect::Adds,
        "Make count (1-16) new sandboxes holding a copy of a sandbox's current files, to try \
         variants side by side; returns them and the snapshot they start from.";
    "diff_snapshots" => diff_snapshots(crate::wire::DiffSnapshots) -> crate::wire::SnapshotDiff, creates_work: false, effect: Effect::Reads,
        "Compare two snapshots: files added, changed and removed, with a unified diff for \
         text files.";
    "keepalive_sandbox" => keepalive_sandbox(crate::wire::KeepaliveSandbox) -> crate::wire::SandboxView, creates_work: false, effect: Effect::Adds,
        "Keep a sandbox alive: resets its idle clock and adds extend_s seconds to its \
         lifetime (the whole lifetime may not pass 86400 s).";
    "terminate_sandbox" => terminate_sandbox(crate::wire::SandboxRef) -> crate::wire::SandboxView, creates_work: false, effect: Effect::Changes,
        "End a sandbox now (its processes are killed); idempotent.";
    "list_sandboxes" => list_sandboxes(crate::wire::ListSandboxes) -> crate::wire::SandboxList, creates_work: false, effect: Effect::Reads,
        "List sandboxes (filter by state, name, tag key=value), newest first, with why each \
         ended one ended.";
}

/// A command as its table row describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandInfo {
    /// Its name (the agent tool's name).
    pub name: &'static str,
    /// What it does, for a model choosing between commands.
    pub description: &'static str,
    /// Whether it creates work (and so takes an idempotency key).
    pub creates_work: bool,
}

/// Every command, in the table's order.
pub fn table() -> impl Iterator<Item = CommandInfo> {
    TABLE.iter().map(|r| CommandInfo {
        name: r.name,
        description: r.description,
        creates_work: r.creates_work,
    })
}

/// Each command as an agent tool: its description and both schemas, derived
/// from its wire types (those that create work also take an
/// `idempotency_key`).
pub fn definitions() -> Vec<ToolDefinition> {
    TABLE
            .iter()
            .map(|r| {
                let mut input = (r.input)();
                if r.creates_work {
                    input["properties"]["idempotency_key"] = json!({
                        "type": "string", "minLength": 1, "maxLength": 255,
                        "description": "Optional: a retry with the same key and arguments returns the first answer."
                    });
                }
                // What a tool answers is for reading, not for choosing
                // arguments: its schema keeps every type and bound but no
                // prose (a third of tools/list's size before).
                let mut output = (r.output)();
                without_descriptions(&mut output);
                ToolDefinition {
                    name: r.name.into(),
                    description: r.description.into(),
                    input_schema: input,
                    output_schema: Some(output),
                    effect: r.effect,
                }
            })
            .collect()
}

/// Removes every `description` from a JSON Schema (a property named
/// `description` stays: only the keyword goes).
fn without_descriptions(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            map.remove("description");
            for (key, value) in map.iter_mut() {
                if key == "properties" {
                    if let Value::Object(props) = value {
                        props.values_mut().for_each(without_descriptions);
                    }
                } else {
                    without_descriptions(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(without_descriptions),
        _ => {}
    }
}

/// A keyed command's answer, and whether it is a replay of the key's first.
pub(crate) struct Keyed<O> {
    pub(crate) answer: O,
    pub(crate) replayed: bool,
}

/// Told `(done, total)` inputs while a command waits for a map.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How often a waiting map's progress is told.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The commands over one runtime. Cheap to clone.
#[derive(Clone)]
pub struct Commands {
    runtime: Runtime,
    progress: Option<Progress>,
    started: Option<Started>,
    /// The longest a tool that waits for a task waits when not told, then
    /// answering with the task still running (a host's tool call times
    /// out soon after a minute); `None` for as long as the work takes (an
    /// MCP task: the host polls). Default
    /// [`DEFAULT_WAIT_S`](crate::wire::DEFAULT_WAIT_S).
    tool_wait_s: Option<f64>,
}

/// Told the id of each runtime task a command starts (so a caller that
/// gives up on the command can cancel what it started).
pub type Started = Arc<dyn Fn(TaskId) + Send + Sync>;

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl Commands {
    /// The commands over `runtime`.
    pub fn new(runtime: Runtime) -> Commands {
        Commands {
            runtime,
            progress: None,
            started: None,
            tool_wait_s: Some(crate::wire::DEFAULT_WAIT_S),
        }
    }

    /// The same commands, telling `started` the id of every runtime task
    /// they start.
    pub fn with_started(mut self, started: Started) -> Commands {
        self.started = Some(started);
        self
    }

    /// The same commands, whose tools that wait for a task wait at most
    /// `seconds` when not told otherwise (`None`: as long as it takes).
    pub fn with_tool_wait(mut self, seconds: Option<f64>) -> Commands {
        self.tool_wait_s = seconds.filter(|s| s.is_finite() && *s > 0.0);
        self
    }

    /// How long a tool that waits for a task waits when not told.
    fn tool_wait(&self) -> Option<f64> {
        self.tool_wait_s
    }

    /// Tells the `started` hook, if any, of a task just started.
    fn note_started(&self, id: TaskId) {
        if let Some(started) = &self.started {
            started(id);
        }
    }

    /// The same commands, telling `progress` how a map they wait for goes,
    /// about once a second.
    pub fn with_progress(mut self, progress: Progress) -> Commands {
        self.progress = Some(progress);
        self
    }

    /// The runtime they run on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Each command as an agent tool: its description and both schemas,
    /// derived from its wire types (those that create work also take an
    /// `idempotency_key`).
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        definitions()
    }

    /// Runs command `name` with JSON arguments (with `idempotency_key` in
    /// them, for a command that creates work) on behalf of `caller`.
    pub(crate) async fn call_as(
        &self,
        caller: Caller,
        name: &str,
        args: Value,
    ) -> Result<Value, CommandError> {
        self.call_keyed(caller, name, args, None)
            .await
            .map(|k| k.answer)
    }

    /// [`Commands::call_as`] with an idempotency key given beside the
    /// arguments (HTTP's `Idempotency-Key` header): taken by a command that
    /// creates work, ignored by one that does not; the same key may also be
    /// in the arguments, another one is refused.
    pub(crate) async fn call_keyed(
        &self,
        caller: Caller,
        name: &str,
        mut args: Value,
        header_key: Option<String>,
    ) -> Result<Keyed<Value>, CommandError> {
        let Some(row) = TABLE.iter().find(|r| r.name == name) else {
            return Err(CommandError::UnknownTool {
                name: crate::value::clip(name, crate::value::MAX_ECHO).into_owned(),
                known: TABLE.iter().map(|r| r.name.to_owned()).collect(),
            });
        };
        let key = if row.creates_work {
            match (replay::take_key(name, &mut args)?, header_key) {
                (Some(a), Some(h)) if a != h => return Err(CommandError::invalid(
                    name,
                    "idempotency_key",
                    "differs from the Idempotency-Key header; give one key, or the same in both",
                )),
                (a, h) => a.or(h),
            }
        } else {
            None
        };
        let key = key.map(|k| (k, replay::fingerprint(name, &args)));
        let (me, run) = (self.clone(), row.run);
        let work = async move { run(&me, args).await };
        self.keyed(caller, name, key, work).await
    }

    /// Runs `run`, the command `name`, under the idempotency rule when a
    /// key is given (with the input's [`replay::fingerprint`], taken only
    /// then): a replay gets the first answer.
    pub(crate) async fn keyed<O, E>(
        &self,
        caller: Caller,
        name: &str,
        key: Option<(String, [u8; 32])>,
        run: impl Future<Output = Result<O, E>> + Send + 'static,
    ) -> Result<Keyed<O>, E>
    where
        O: Serialize + DeserializeOwned + Send + 'static,
        E: From<CommandError> + Send + 'static,
    {
        let Some((key, fingerprint)) = key else {
            return run.await.map(|answer| Keyed {
                answer,
                replayed: false,
            });
        };
        let replays = self.runtime.extension::<replay::Replays>();
        let (answer, replayed) = replays.run(caller, name, key, fingerprint, run).await?;
        Ok(Keyed { answer, replayed })
    }

    /// The typed input of a keyed request, fingerprinted as a table call of
    /// the same input would be.
    pub(crate) fn fingerprint<I: Serialize>(name: &str, input: &I) -> [u8; 32] {
        replay::fingerprint(name, &json!(input))
    }

    /// Deploys (or redeploys) a function.
    pub async fn deploy(&self, request: DeployRequest) -> Result<Deployed, CommandError> {
        const NAME: &str = "deploy_modal_function";
        // A refused package is named in the list the caller gave it in.
        let packages = if request.image_packages.is_empty() {
            "image_config.packages"
        } else {
            "image_packages"
        };
        let spec = request
            .into_spec()
            .map_err(|e| CommandError::from_spec(NAME, e))?;
        let info = self
            .runtime
            .deploy_function(spec)
            .await
            .map_err(|e| match e {
                RuntimeError::Spec(e) => {
                    CommandError::from_spec(NAME, e.with_field(|f| wire_field(f, packages)))
                }
                e => CommandError::runtime(NAME, e),
            })?;
        Ok(Deployed::from(&info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deserialisation messages speak JSON: no parser positions or Rust
    /// type names.
    #[test]
    fn messages_are_said_in_json_terms() {
        for (raw, said) in [
            (
                "invalid type: null, expected struct DeployRequest at line 1 column 4",
                "invalid type: null, expected an object",
            ),
            (
                "invalid type: string \"abc\", expected u32 at line 1 column 73",
                "invalid type: string \"abc\", expected a whole number from 0 to 4294967295",
            ),
            (
                "invalid type: integer `5`, expected a sequence",
                "invalid type: integer `5`, expected an array",
            ),
            (
                "invalid type: sequence, expected a map at line 1 column 0",
                "invalid type: array, expected an object",
            ),
            (
                "UUID parsing failed: invalid length: found 3",
                "expected an id (a UUID such as 6f1e1a3c-59b8-4f0e-9d8c-1b3f0c9b2a11)",
            ),
            ("missing field `code`", "missing field `code`"),
        ] {
            assert_eq!(plain(raw), said);
        }
    }

    /// Output schemas carry every property and type but no prose; a
    /// property called `description` is kept. The whole list stays under a
    /// ceiling (it was 71 KB with prose in the output schemas; 53 KB with
    /// the 27 tools of `run_code`'s addition; 54.6 KB with the disk quota's
    /// limit and outcome; 55.3 KB with each tool's effect).
    #[test]
    fn output_schemas_are_terse_and_complete() {
        let mut schema = json!({"type": "object", "description": "x", "properties": {
            "description": {"type": "string", "description": "y"},
            "inner": {"type": "object", "properties": {"a": {"type": "integer", "description": "z"}}}
        }});
        without_descriptions(&mut schema);
        assert_eq!(
            schema,
            json!({"type": "object", "properties": {
                "description": {"type": "string"},
                "inner": {"type": "object", "properties": {"a": {"type": "integer"}}}
            }})
        );
        let defs = definitions();
        let size = serde_json::to_vec(&defs).unwrap().len();
        assert!(size < 56_000, "tools/list is {size} bytes");
        for d in &defs {
            let full = TABLE
                .iter()
                .find(|r| r.name == d.name)
                .map(|r| (r.output)())
                .unwrap();
            assert_eq!(
                full["properties"].as_object().map(|p| p.len()),
                d.output_schema.as_ref().unwrap()["properties"]
                    .as_object()
                    .map(|p| p.len()),
                "{}",
                d.name
            );
        }
    }

    /// A whole number out of range says the range the schema gives, not
    /// the Rust type's; a number past any integer is said as a number.
    #[test]
    fn whole_number_errors_say_the_schemas_range() {
        let schema = json_schema::<DeployRequest>();
        let said = |args: Value| {
            let e = parse::<DeployRequest>("t", args).unwrap_err();
            with_bounds(e, &schema).to_string()
        };
        let e = said(json!({"function_code": "x", "function_name": "f", "timeout": -5}));
        assert!(
            e.contains("`timeout`") && e.ends_with("expected a whole number from 1 to 86400"),
            "{e}"
        );
        let e =
            said(json!({"function_code": "x", "function_name": "f", "limits": {"processes": 1.5}}));
        assert!(
            e.contains("limits.processes") && e.ends_with("from 4 to 65536"),
            "{e}"
        );
        let e = said(
            json!({"function_code": "x", "function_name": "f", "timeout": 1.1805916207174113e21}),
        );
        assert!(
            e.contains("the number") && !e.contains("floating point"),
            "{e}"
        );
    }

    #[test]
    fn argument_errors_name_the_field() {
        let e = parse::<DeployRequest>("t", json!({"function_code": "x"})).unwrap_err();
        assert!(
            matches!(&e, CommandError::InvalidArguments { field, .. } if field == "function_name"),
            "{e}"
        );
        let e = parse::<DeployRequest>("t", json!({"function_code": "x", "function_name": 5}))
            .unwrap_err();
        assert!(
            matches!(&e, CommandError::InvalidArguments { field, .. } if field == "function_name"),
            "{e}"
        );
        let e = parse::<SpawnParallelTasks>("t", json!({"function_ref": "f", "inputs": 3}))
            .unwrap_err();
        assert!(
            matches!(&e, CommandError::InvalidArguments { field, .. } if field == "inputs"),
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

    #[test]
    fn every_row_is_one_name_and_creating_rows_take_a_key() {
        let names: Vec<&str> = table().map(|c| c.name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert!(table().any(|c| c.name == "spawn_task" && c.creates_work));
        assert!(table().any(|c| c.name == "wait_tasks" && !c.creates_work));
    }
}
