//! The agent tools' arguments and results (the deploy tool takes a
//! [`DeployRequest`](super::DeployRequest) and answers
//! [`Deployed`](super::Deployed); `spawn_parallel_tasks` answers
//! [`MapSubmitted`](super::MapSubmitted)).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::spec::GpuSpec;
use crate::task::{InputsAs, TaskError, TaskId, TaskStatus};

/// A tool's definition, in the shape LLM tool-use APIs take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolDefinition {
    /// The tool's name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema (draft 2020-12) of its arguments.
    #[schema(value_type = Object)]
    pub input_schema: Value,
    /// JSON Schema of what it answers (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output_schema: Option<Value>,
    /// Whether it only `reads`, only `adds`, or `changes` what is there
    /// (runs code, overwrites, cancels): MCP lists it as the tool's
    /// annotations.
    #[serde(default)]
    pub effect: crate::commands::Effect,
}

/// Arguments of `spawn_parallel_tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnParallelTasks {
    /// Name of a deployed function (`function_ref`, the seed's name, is
    /// accepted too).
    #[serde(alias = "function_ref")]
    pub function_name: String,
    /// One JSON value per call.
    pub inputs: Vec<Value>,
    /// How each input is passed: `argument` (the default: `f(input)`),
    /// `args` (a list: `f(*input)`) or `kwargs` (an object: `f(**input)`).
    #[serde(default, skip_serializing_if = "InputsAs::is_argument")]
    pub inputs_as: InputsAs,
    /// Wait (up to 55 s) and return the first page of results (default
    /// false: return the map's task id at once; `wait_tasks` waits).
    #[serde(default)]
    pub wait: bool,
}

/// Arguments of `request_gpu_task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestGpuTask {
    /// Name of a deployed function that requests a GPU (`function_ref`, the
    /// seed's name, is accepted too).
    #[serde(alias = "function_ref")]
    pub function_name: String,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

/// The answer of `request_gpu_task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuTaskResult {
    /// The call's task id.
    pub task_id: TaskId,
    /// The function.
    pub function_name: String,
    /// The GPU it asked for.
    #[schema(value_type = Option<String>)]
    pub gpu: Option<GpuSpec>,
    /// How it ended.
    pub status: TaskStatus,
    /// Its result, when it completed.
    pub result: Option<Value>,
    /// Why it failed, when it did.
    pub error: Option<TaskError>,
    /// Whether it completed.
    pub succeeded: bool,
}

/// What `coordinate_state` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StateOperation {
    /// Read a key.
    Read,
    /// Write a key.
    Write,
    /// List the keys under a prefix.
    List,
    /// Delete a key.
    Delete,
    /// Write a key only if it has the expected version.
    Cas,
}

/// Arguments of `coordinate_state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CoordinateState {
    /// The volume.
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")]
    pub volume_name: String,
    /// What to do.
    pub operation: StateOperation,
    /// The key (for `list`, a prefix, which `prefix` names too).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "prefix")]
    pub key: Option<String>,
    /// The value to write (`write`, `cas`); `data`, the seed's name, is
    /// accepted too. `read` answers it as `value`.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "data")]
    pub value: Option<Value>,
    /// For `cas`: the version the key must have; omit for "must not exist".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub expected_version: Option<u64>,
    /// For `list`: only keys after this one (the `next_after` of the page
    /// before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// For `list`: how many keys at most (default 1000; a page also stops
    /// at about 8 MiB of values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

/// What `coordinate_state` answers; which fields are set depends on the
/// operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StateResult {
    /// The key read, written or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `read`: whether the key exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<bool>,
    /// `read`: the value (null when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// `read`, `write`, `cas`: the key's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// `write`, `cas`: `written`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `delete`: whether the key existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    /// `list`: the prefix listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `list`: the keys under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    /// `list`: each key's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
    /// `list`, when more keys follow: pass it as `after` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// Arguments naming one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRef {
    /// The task's id (a UUID, as returned when it was created).
    pub task_id: TaskId,
}

/// Arguments of `get_task_results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskResultsRequest {
    /// The map's task id.
    pub task_id: TaskId,
    /// The first input's index (default 0).
    #[serde(default)]
    pub offset: u64,
    /// How many results (default 100, at most 10000).
    #[serde(default = "default_page")]
    #[schema(minimum = 1, maximum = 10000)]
    pub limit: u64,
}

fn default_page() -> u64 {
    100
}

/// Arguments of a tool that takes none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArguments {}

/// Arguments of `list_functions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFunctions {
    /// Include each function's source (default false: specs only).
    #[serde(default)]
    pub include_code: bool,
}

/// The deployed functions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionList {
    /// Each deployed function, by name.
    pub functions: Vec<super::FunctionView>,
}

/// Arguments of `read_volume_file` (a path inside the volume).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeFileRef {
    /// The volume.
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")]
    pub volume_name: String,
    /// The file's path inside the volume (`dir/name.txt`).
    pub path: String,
}

/// A file read from a volume: text when it is UTF-8, else base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VolumeFile {
    /// Its path inside the volume.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its content, when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Its content in base64, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
}

/// Arguments of `write_volume_file`: the content as `content` (text) or
/// `content_base64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteVolumeFile {
    /// The volume (made if it does not exist).
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")]
    pub volume_name: String,
    /// The file's path inside the volume (`dir/name.txt`).
    pub path: String,
    /// The content as text (`text` is accepted too, deprecated).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "text")]
    pub content: Option<String>,
    /// The content in base64, for binary files (`base64` is accepted too,
    /// deprecated).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "base64")]
    pub content_base64: Option<String>,
}

/// Arguments of `list_volume_files`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListVolumeFiles {
    /// The volume.
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")]
    pub volume_name: String,
    /// Only paths starting with this (default: all).
    #[serde(default)]
    pub prefix: String,
    /// Only paths after this one (the `next_after` of the page before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// How many files at most (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

/// Most files or keys one listing of a volume answers, and how many by
/// default.
pub const MAX_LIST_PAGE: u32 = 10_000;
/// See [`MAX_LIST_PAGE`].
pub const DEFAULT_LIST_PAGE: u32 = 1_000;
/// About the most bytes of keys and values one page of a volume's keys
/// carries (at least one entry).
pub const MAX_LIST_PAGE_BYTES: usize = 8 << 20;

/// `limit` of a listing checked against [`MAX_LIST_PAGE`] (default
/// [`DEFAULT_LIST_PAGE`]); the error says what is accepted.
pub fn list_limit(limit: Option<u32>) -> Result<u32, String> {
    let limit = limit.unwrap_or(DEFAULT_LIST_PAGE);
    if (1..=MAX_LIST_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(format!("got {limit}; expected 1 to {MAX_LIST_PAGE}"))
    }
}

/// Files in a volume, a page at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VolumeFileList {
    /// Each file, by path.
    pub files: Vec<crate::volume::FileStat>,
    /// When more files follow: pass it as `after` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// The language of a `run_code` snippet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CodeLanguage {
    /// Python 3, run as `python3 main.py`.
    #[default]
    Python,
    /// A POSIX shell script, run as `sh main.sh`.
    Sh,
}

impl CodeLanguage {
    /// The file the snippet is written to, and the command that runs it.
    pub fn file_and_command(self) -> (&'static str, [&'static str; 2]) {
        match self {
            CodeLanguage::Python => ("main.py", ["python3", "main.py"]),
            CodeLanguage::Sh => ("main.sh", ["sh", "main.sh"]),
        }
    }
}

/// Most seconds a `run_code` snippet may run (an hour; longer work belongs
/// in a sandbox of its own or a deployed function).
pub const MAX_RUN_CODE_TIMEOUT_S: u64 = 3600;

/// Seconds a `run_code` snippet runs unless told otherwise.
pub const DEFAULT_RUN_CODE_TIMEOUT_S: u64 = 60;

/// Most bytes of code `run_code` takes (256 KiB).
pub const MAX_RUN_CODE_BYTES: usize = 256 << 10;

/// Arguments of `run_code`: a snippet run once, in a sandbox of its own that
/// ends with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCode {
    /// The source to run.
    #[schema(min_length = 1, max_length = 262144)]
    pub code: String,
    /// `python` (the default) or `sh`.
    #[serde(default)]
    pub language: CodeLanguage,
    /// Written to its stdin, then stdin is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Environment variables it sees.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// Network access (default none).
    #[serde(default)]
    pub network: bool,
    /// Kill it after this many seconds, 1..=3600 (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout_s: Option<u64>,
    /// Wait up to this many seconds for it to end, 0..=55 (default 55).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 55)]
    pub wait_s: Option<u64>,
}

/// What `run_code` answers: the sandbox it runs in (ended once the snippet
/// has), and the process: its outcome and output once it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunCodeResult {
    /// The sandbox made for it.
    pub sandbox_id: String,
    /// The snippet's process.
    #[serde(flatten)]
    pub exec: super::ExecResult,
}
