//! Running functions: a parallel map, one spawned call, a page of tasks.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::task::{MapProgress, TaskError, TaskId, TaskRecord, TaskStatus};

/// Most results a finished map shows inline (`GET /status/{id}`'s
/// `result`, `spawn_parallel_tasks` with `wait`); read the rest by page.
pub const MAX_INLINE_RESULTS: u64 = 10_000;

/// A task as `GET /status/{task_id}` shows it (the seed's contract): the
/// record, with a finished map's results in `result` in input order when
/// there are at most [`MAX_INLINE_RESULTS`]; past that `result` is null and
/// `results_url` says where to page them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskStatusView {
    /// The task's record.
    #[serde(flatten)]
    pub record: TaskRecord,
    /// Where a large map's results are paged (`GET /status/{id}/results`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_url: Option<String>,
}

/// The seed's run-parallel request (`POST /run-parallel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunParallelRequest {
    /// A deployed function.
    pub function_name: String,
    /// One JSON value per call.
    pub inputs: Vec<Value>,
    /// Wait for the map and return its results (default false: 202 at once).
    #[serde(default)]
    pub wait: bool,
    /// With `wait`, answer 202 after this many seconds if not finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 86400)]
    pub wait_timeout: Option<f64>,
}

/// A map as submitted, and with `wait` as finished: the answer of
/// `POST /run-parallel` and of the `spawn_parallel_tasks` tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MapSubmitted {
    /// The map's task id.
    pub task_id: TaskId,
    /// The function.
    pub function_name: String,
    /// How many inputs.
    pub num_tasks: u64,
    /// Its status.
    pub status: TaskStatus,
    /// Progress, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<MapProgress>,
    /// With `wait`: the first page of results in input order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<Value>>,
    /// With `wait`: where the next page starts (`GET /status/{id}/results`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u64>,
    /// Why the map failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
}

impl MapSubmitted {
    /// A map just submitted: pending, nothing known yet.
    pub fn pending(task_id: TaskId, function_name: String, num_tasks: u64) -> Self {
        MapSubmitted {
            task_id,
            function_name,
            num_tasks,
            status: TaskStatus::Pending,
            progress: None,
            results: None,
            next_offset: None,
            error: None,
        }
    }
}

/// The seed's spawn-task request (`POST /spawn-task`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnTaskRequest {
    /// A deployed function.
    pub function_name: String,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// Wait for the result (default false: 202 at once).
    #[serde(default)]
    pub wait: bool,
    /// With `wait`, answer 202 after this many seconds if not finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 86400)]
    pub wait_timeout: Option<f64>,
}

/// A page of tasks, newest first (`GET /tasks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    /// The tasks.
    pub tasks: Vec<TaskRecord>,
    /// How many match in all.
    pub total: usize,
    /// Where this page starts.
    #[serde(default)]
    pub offset: u64,
    /// The page size asked for.
    #[serde(default)]
    pub limit: u64,
}
