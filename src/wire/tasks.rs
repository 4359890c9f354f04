//! Running functions: a parallel map, one spawned call, a page of tasks.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::runtime::RuntimeError;
use crate::task::{
    InputsAs, MapProgress, TaskError, TaskId, TaskKind, TaskRecord, TaskStatus, WaitMode,
};

/// Most results a finished map shows inline (`GET /status/{id}`'s
/// `result`, `spawn_parallel_tasks` with `wait`); read the rest by page.
pub const MAX_INLINE_RESULTS: u64 = 10_000;

/// A task as `GET /status/{task_id}` shows it (the seed's contract): the
/// record, with a finished map's results in `result` in input order when
/// there are at most [`MAX_INLINE_RESULTS`] and they fit in one page
/// ([`MAX_PAGE_BYTES`](crate::runtime::MAX_PAGE_BYTES)); past that `result`
/// is null and `results_url` says where to page them. A call's result over
/// [`INLINE_RESULT_BYTES`](crate::task::INLINE_RESULT_BYTES) is streamed
/// from its file into `result` by the HTTP API (`result_ref` gives its
/// size).
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
    /// How each input is passed: `argument` (the default: `f(input)`),
    /// `args` (a list: `f(*input)`, a starmap) or `kwargs` (an object:
    /// `f(**input)`).
    #[serde(default, skip_serializing_if = "InputsAs::is_argument")]
    pub inputs_as: InputsAs,
    /// Wait for the map and return its results (default false: its id at
    /// once).
    #[serde(default)]
    pub wait: bool,
    /// With `wait`, answer after this many seconds with the task still
    /// running if it has not finished (agent tools: default 55).
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

impl TaskStatusView {
    /// Task `id` as `GET /status/{id}` (and the `get_task_status` tool)
    /// show it.
    pub(crate) async fn of(
        runtime: &crate::runtime::Runtime,
        id: TaskId,
    ) -> Result<TaskStatusView, RuntimeError> {
        let mut record = runtime.status(id)?;
        let mut results_url = None;
        let finished_map = record.kind == TaskKind::Map
            && matches!(record.status, TaskStatus::Completed | TaskStatus::Failed);
        if finished_map && record.result.is_none() {
            let total = record.progress.map_or(0, |p| p.total);
            let page = if total <= MAX_INLINE_RESULTS {
                Some(runtime.results(id, 0, MAX_INLINE_RESULTS).await?)
            } else {
                None
            };
            // Inline only when they all fit in one page (bounded in bytes).
            match page {
                Some(page) if page.next_offset.is_none() => {
                    record.result = Some(Value::Array(page.results));
                }
                _ => {
                    results_url = Some(format!("/status/{id}/results?offset=0&limit=1000"));
                }
            }
        }
        Ok(TaskStatusView {
            record,
            results_url,
        })
    }
}

/// The seed's spawn-task request (`POST /spawn-task`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnTaskRequest {
    /// A deployed function (`function_ref` is accepted too, as the other
    /// task tools accept it).
    #[serde(alias = "function_ref")]
    pub function_name: String,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// Wait for the result (default false: the task's id at once).
    #[serde(default)]
    pub wait: bool,
    /// With `wait`, answer after this many seconds with the task still
    /// running if it has not finished (agent tools: default 55).
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

/// Default bound on one wait: under the 60 s many tool hosts give a call.
pub const DEFAULT_WAIT_S: f64 = 55.0;

/// Waiting on several tasks at once (`POST /tasks/wait`, the `wait_tasks`
/// tool): returns as soon as the condition holds, or at the timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitTasksRequest {
    /// The tasks (1 to 1000).
    #[schema(min_items = 1, max_items = 1000)]
    pub task_ids: Vec<TaskId>,
    /// `all` (default): until every task has finished; `any`: until one has.
    #[serde(default)]
    pub mode: WaitMode,
    /// Seconds to wait at most (default 55; up to 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 600)]
    pub timeout_s: Option<f64>,
}

impl WaitTasksRequest {
    /// The wait's bound, checked.
    pub fn timeout(&self) -> Result<Duration, RuntimeError> {
        match self.timeout_s {
            None => Ok(Duration::from_secs_f64(DEFAULT_WAIT_S)),
            Some(s) if s.is_finite() && (0.0..=600.0).contains(&s) => {
                Ok(Duration::from_secs_f64(s))
            }
            Some(s) => Err(RuntimeError::Invalid {
                field: "timeout_s".into(),
                value: s.to_string(),
                expected: "seconds from 0 to 600".into(),
            }),
        }
    }
}

/// The answer to a wait on several tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WaitTasksResult {
    /// Whether the condition held (false: the wait timed out first).
    pub done: bool,
    /// What was waited for.
    pub mode: WaitMode,
    /// How many of the tasks have finished.
    pub finished: usize,
    /// Each task as it is now, in the order asked.
    pub tasks: Vec<TaskSummary>,
}

impl WaitTasksResult {
    /// The answer for `records`, taken when the wait ended.
    pub fn new(done: bool, mode: WaitMode, records: &[TaskRecord]) -> Self {
        WaitTasksResult {
            done,
            mode,
            finished: records.iter().filter(|r| r.status.is_terminal()).count(),
            tasks: records.iter().map(TaskSummary::from).collect(),
        }
    }
}

/// A task in one line: status, progress, why it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskSummary {
    /// The task.
    pub task_id: TaskId,
    /// Its function.
    pub function_name: String,
    /// Call or map.
    pub kind: TaskKind,
    /// Where it is.
    pub status: TaskStatus,
    /// A map's progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<MapProgress>,
    /// Why it failed (type and message; the traceback is in its status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// All of it in one line, for a reader.
    pub summary: String,
}

/// Longest error message a summary carries.
const SUMMARY_MESSAGE: usize = 200;

impl From<&TaskRecord> for TaskSummary {
    fn from(r: &TaskRecord) -> Self {
        let mut summary = format!("{} {} `{}`", r.task_id, r.status, r.function_name);
        if let Some(p) = &r.progress {
            summary.push_str(&format!(
                ": {} of {} inputs done ({} failed)",
                p.done(),
                p.total,
                p.failed
            ));
        }
        let error = r.error.as_ref().map(|e| {
            let mut message: String = e.message.chars().take(SUMMARY_MESSAGE).collect();
            if message.len() < e.message.len() {
                message.push('…');
            }
            TaskError::new(e.kind.clone(), message)
        });
        if let Some(e) = &error {
            summary.push_str(&format!(" - {}: {}", e.kind, e.message));
        }
        TaskSummary {
            task_id: r.task_id,
            function_name: r.function_name.clone(),
            kind: r.kind,
            status: r.status,
            progress: r.progress,
            error,
            summary,
        }
    }
}
