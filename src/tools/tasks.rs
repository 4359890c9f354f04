//! The task tools: spawn one call, status, wait for several, cancel,
//! results by page, logs, the deployed functions.

use serde_json::{json, Value};

use super::{ToolError, Tools};
use crate::runtime::{RuntimeError, MAX_RESULTS_PAGE};
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
                Ok(record) => return Ok(json!(record)),
                Err(RuntimeError::WaitTimeout { .. }) => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(json!(self.runtime.status(id).map_err(err)?))
    }

    pub(super) async fn task_status(&self, a: TaskRef) -> Result<Value, ToolError> {
        let view = TaskStatusView::of(&self.runtime, a.task_id)
            .await
            .map_err(|e| Self::runtime_error("get_task_status", e))?;
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
        let logs = self
            .runtime
            .logs(a.task_id)
            .await
            .map_err(|e| Self::runtime_error("get_task_logs", e))?;
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
