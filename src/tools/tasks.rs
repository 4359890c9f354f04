//! The task tools: spawn one call, status, wait for several, cancel,
//! results by page, logs, the deployed functions.

use serde_json::{json, Value};

use super::{ToolError, Tools};
use crate::runtime::{RuntimeError, MAX_RESULTS_PAGE};
use crate::task::TaskRecord;

/// Most bytes of each stream `get_task_logs` answers with (64 KiB, the
/// end); the whole logs are read over HTTP (`GET /tasks/{id}/logs`).
pub const MAX_TOOL_LOG_BYTES: usize = 64 << 10;

/// Cuts `text` to its last [`MAX_TOOL_LOG_BYTES`], saying what was left out.
fn keep_tail(text: &mut String, id: crate::task::TaskId) {
    if text.len() <= MAX_TOOL_LOG_BYTES {
        return;
    }
    let mut start = text.len() - MAX_TOOL_LOG_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    *text = format!(
        "[{start} earlier bytes left out; all of it: GET /tasks/{id}/logs]\n{}",
        &text[start..]
    );
}

/// Largest result kept in a task's files that the task tools put in their
/// answer (1 MiB); a larger one is read over HTTP (`GET /status/{id}`).
pub const MAX_TOOL_RESULT_BYTES: u64 = 1 << 20;
use crate::wire::{
    FunctionList, NoArguments, SpawnTaskRequest, TaskRef, TaskResultsRequest, TaskStatusView,
    WaitTasksRequest, WaitTasksResult,
};

impl Tools {
    pub(super) async fn spawn_task(&self, a: SpawnTaskRequest) -> Result<Value, ToolError> {
        const TOOL: &str = "spawn_task";
        let err = |e| Self::runtime_error(TOOL, e);
        let limit = match a.wait_timeout {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => {
                Some(std::time::Duration::from_secs_f64(s))
            }
            Some(s) => {
                return Err(ToolError::InvalidArguments {
                    tool: TOOL.into(),
                    field: "wait_timeout".into(),
                    message: format!("got {s}; expected seconds from 0 to 86400"),
                })
            }
        };
        let id = self
            .runtime
            .spawn(&a.function_name, a.args, a.kwargs)
            .await
            .map_err(err)?;
        if a.wait {
            match self.runtime.wait(id, limit).await {
                Ok(mut record) => {
                    self.load_result(&mut record).await.map_err(err)?;
                    return Ok(json!(record));
                }
                Err(RuntimeError::WaitTimeout { .. }) => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(json!(self.runtime.status(id).map_err(err)?))
    }

    /// Puts a result kept in the task's files into `record`, when it is at
    /// most [`MAX_TOOL_RESULT_BYTES`]; a larger one stays out (its
    /// `result_ref` says how large), read over HTTP (`GET /status/{id}`).
    async fn load_result(&self, record: &mut TaskRecord) -> Result<(), RuntimeError> {
        if record
            .result_ref
            .is_some_and(|r| r.bytes <= MAX_TOOL_RESULT_BYTES)
        {
            record.result = self.runtime.result(record.task_id).await?;
        }
        Ok(())
    }

    pub(super) async fn task_status(&self, a: TaskRef) -> Result<Value, ToolError> {
        let err = |e| Self::runtime_error("get_task_status", e);
        let mut view = TaskStatusView::of(&self.runtime, a.task_id)
            .await
            .map_err(err)?;
        self.load_result(&mut view.record).await.map_err(err)?;
        Ok(json!(view))
    }

    pub(super) async fn wait_tasks(&self, a: WaitTasksRequest) -> Result<Value, ToolError> {
        const TOOL: &str = "wait_tasks";
        let err = |e| Self::runtime_error(TOOL, e);
        let timeout = a.timeout().map_err(err)?;
        let (done, records) = self
            .runtime
            .wait_tasks(&a.task_ids, a.mode, timeout)
            .await
            .map_err(err)?;
        Ok(json!(WaitTasksResult::new(done, a.mode, &records)))
    }

    pub(super) async fn cancel_task(&self, a: TaskRef) -> Result<Value, ToolError> {
        let record = self
            .runtime
            .cancel(a.task_id)
            .await
            .map_err(|e| Self::runtime_error("cancel_task", e))?;
        Ok(json!(record))
    }

    pub(super) async fn task_results(&self, a: TaskResultsRequest) -> Result<Value, ToolError> {
        const TOOL: &str = "get_task_results";
        if !(1..=MAX_RESULTS_PAGE).contains(&a.limit) {
            return Err(ToolError::InvalidArguments {
                tool: TOOL.into(),
                field: "limit".into(),
                message: format!("got {}; expected 1 to {MAX_RESULTS_PAGE}", a.limit),
            });
        }
        let page = self
            .runtime
            .results(a.task_id, a.offset, a.limit)
            .await
            .map_err(|e| Self::runtime_error(TOOL, e))?;
        Ok(json!(page))
    }

    pub(super) async fn task_logs(&self, a: TaskRef) -> Result<Value, ToolError> {
        let mut logs = self
            .runtime
            .logs(a.task_id)
            .await
            .map_err(|e| Self::runtime_error("get_task_logs", e))?;
        for text in [&mut logs.stdout, &mut logs.stderr] {
            keep_tail(text, a.task_id);
        }
        Ok(json!(logs))
    }

    pub(super) fn list_functions(&self, _: NoArguments) -> Result<Value, ToolError> {
        let functions = self
            .runtime
            .functions()
            .into_iter()
            .map(Into::into)
            .collect();
        Ok(json!(FunctionList { functions }))
    }
}
