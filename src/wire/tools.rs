//! The agent tools' arguments and results (the deploy tool takes a
//! [`DeployRequest`](super::DeployRequest) and answers
//! [`Deployed`](super::Deployed); `spawn_parallel_tasks` answers
//! [`MapSubmitted`](super::MapSubmitted)).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::spec::GpuSpec;
use crate::task::{TaskError, TaskId, TaskStatus};

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
}

fn yes() -> bool {
    true
}

/// Arguments of `spawn_parallel_tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnParallelTasks {
    /// Name of a deployed function.
    pub function_ref: String,
    /// One JSON value per call.
    pub inputs: Vec<Value>,
    /// Wait and return the results (default true).
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub wait: bool,
}

/// Arguments of `request_gpu_task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestGpuTask {
    /// Name of a deployed function that requests a GPU.
    pub function_ref: String,
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
    /// The key (a prefix for `list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The value to write (`write`, `cas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// For `cas`: the version the key must have; omit for "must not exist".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub expected_version: Option<u64>,
}
