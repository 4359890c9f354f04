//! The task commands: a parallel map, one call (and one on a GPU), status,
//! waits, cancel, results by page, logs, the deployed functions.

use std::time::Duration;

use super::{CommandError, Commands, PROGRESS_EVERY};
use crate::runtime::{RuntimeError, MAX_RESULTS_PAGE};
use crate::task::{InputsAs, ResultsPage, TaskId, TaskLogs, TaskRecord, TaskStatus};
use crate::wire::{
    FunctionList, GpuTaskResult, ListFunctions, MapSubmitted, RequestGpuTask, SpawnParallelTasks,
    SpawnTaskRequest, TaskRef, TaskResultsRequest, TaskStatusView, WaitTasksRequest,
    WaitTasksResult, MAX_INLINE_RESULTS,
};

/// Most bytes of each stream `get_task_logs` answers with (64 KiB, the
/// end); the whole logs are read over HTTP (`GET /tasks/{id}/logs`).
pub const MAX_TOOL_LOG_BYTES: usize = 64 << 10;

/// Largest result kept in a task's files that the task tools put in their
/// answer (1 MiB); a larger one is read over HTTP (`GET /status/{id}`).
pub const MAX_TOOL_RESULT_BYTES: u64 = 1 << 20;

/// Cuts `text` to its last [`MAX_TOOL_LOG_BYTES`], saying what was left out.
fn keep_tail(text: &mut String, id: TaskId) {
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

/// Cuts a page of results that starts at `offset` to what fits in
/// [`MAX_TOOL_RESULT_BYTES`] of JSON (one result at least, so a page always
/// moves on), pointing `next_offset` at the first left out: a tool's answer
/// goes whole into a model's context.
fn fit_for_tool(results: &mut Vec<serde_json::Value>, offset: u64, next_offset: &mut Option<u64>) {
    let mut bytes = 0u64;
    let keep = results
        .iter()
        .position(|r| {
            bytes += serde_json::to_vec(r).map_or(0, |v| v.len() as u64) + 1;
            bytes > MAX_TOOL_RESULT_BYTES
        })
        .map(|cut| cut.max(1));
    if let Some(keep) = keep.filter(|k| *k < results.len()) {
        results.truncate(keep);
        *next_offset = Some(offset + keep as u64);
    }
}

/// A wait bound given in seconds, checked.
fn wait_limit(command: &str, seconds: Option<f64>) -> Result<Option<Duration>, CommandError> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => {
            Ok(Some(Duration::from_secs_f64(s)))
        }
        Some(s) => Err(CommandError::invalid(
            command,
            "wait_timeout",
            format!("got {s}; expected more than 0 and at most 86400 seconds"),
        )),
    }
}

impl Commands {
    /// Waits for task `id` at most `limit`; `None` when it is still
    /// running then (or the runtime is stopping: the task resumes after
    /// the restart).
    async fn wait_for(
        &self,
        command: &str,
        id: TaskId,
        limit: Option<Duration>,
    ) -> Result<Option<TaskRecord>, CommandError> {
        match self.runtime.wait(id, limit).await {
            Ok(record) => Ok(Some(record)),
            Err(RuntimeError::WaitTimeout { .. } | RuntimeError::ShutDown) => Ok(None),
            Err(e) => Err(CommandError::runtime(command, e)),
        }
    }

    /// Maps a function over inputs (each passed as `inputs_as` says); with
    /// `wait`, until it ends (or the wait's bound), the first page of
    /// results in input order.
    pub async fn run_parallel(
        &self,
        function_name: String,
        (inputs, inputs_as): (Vec<serde_json::Value>, InputsAs),
        wait: bool,
        wait_timeout: Option<f64>,
    ) -> Result<MapSubmitted, CommandError> {
        const NAME: &str = "spawn_parallel_tasks";
        let err = |e| CommandError::runtime(NAME, e);
        let limit = wait_limit(NAME, wait_timeout)?;
        let n = inputs.len() as u64;
        let id = self
            .runtime
            .run_parallel_as(&function_name, inputs, inputs_as)
            .await
            .map_err(err)?;
        self.note_started(id);
        let mut out = MapSubmitted::pending(id, function_name, n);
        if !wait {
            return Ok(out);
        }
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        let record = loop {
            // Progress is told about once a second while it runs.
            let slice = match (&self.progress, deadline) {
                (None, None) => None,
                (None, Some(d)) => Some(d.saturating_duration_since(tokio::time::Instant::now())),
                (Some(_), None) => Some(PROGRESS_EVERY),
                (Some(_), Some(d)) => Some(
                    PROGRESS_EVERY.min(d.saturating_duration_since(tokio::time::Instant::now())),
                ),
            };
            if let Some(record) = self.wait_for(NAME, id, slice).await? {
                break Some(record);
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
                || self.runtime.is_stopping()
            {
                break None;
            }
            if let (Some(progress), Some(p)) = (
                &self.progress,
                self.runtime.status(id).ok().and_then(|r| r.progress),
            ) {
                progress(p.done(), p.total);
            }
        };
        let Some(record) = record else {
            let now = self.runtime.status(id).map_err(err)?;
            out.status = now.status;
            out.progress = now.progress;
            return Ok(out);
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
        Ok(out)
    }

    /// `spawn_parallel_tasks`: a map, waited for unless `wait` is false.
    pub(super) async fn spawn_parallel(
        &self,
        a: SpawnParallelTasks,
    ) -> Result<MapSubmitted, CommandError> {
        let wait_timeout = self.tool_wait();
        let mut out = self
            .run_parallel(
                a.function_name,
                (a.inputs, a.inputs_as),
                a.wait,
                wait_timeout,
            )
            .await?;
        if let Some(results) = out.results.as_mut() {
            fit_for_tool(results, 0, &mut out.next_offset);
        }
        Ok(out)
    }

    /// Starts one call; with `wait`, its record once it ends (or the
    /// wait's bound), else at once. The result is where the record keeps
    /// it (a large one in the task's files).
    pub async fn spawn_task(&self, a: SpawnTaskRequest) -> Result<TaskRecord, CommandError> {
        const NAME: &str = "spawn_task";
        let limit = wait_limit(NAME, a.wait_timeout)?;
        let id = self
            .runtime
            .spawn(&a.function_name, a.args, a.kwargs)
            .await
            .map_err(|e| CommandError::runtime(NAME, e))?;
        self.note_started(id);
        if a.wait {
            if let Some(record) = self.wait_for(NAME, id, limit).await? {
                return Ok(record);
            }
        }
        self.runtime
            .status(id)
            .map_err(|e| CommandError::runtime(NAME, e))
    }

    /// `spawn_task` as a tool answers it: a stored result of at most
    /// [`MAX_TOOL_RESULT_BYTES`] included.
    pub(super) async fn spawn_task_for_tool(
        &self,
        mut a: SpawnTaskRequest,
    ) -> Result<TaskRecord, CommandError> {
        if a.wait_timeout.is_none() {
            a.wait_timeout = self.tool_wait();
        }
        let mut record = self.spawn_task(a).await?;
        self.load_result(&mut record)
            .await
            .map_err(|e| CommandError::runtime("spawn_task", e))?;
        Ok(record)
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

    /// One call of a function that requested a GPU, waited for.
    pub(super) async fn gpu_task(&self, a: RequestGpuTask) -> Result<GpuTaskResult, CommandError> {
        const NAME: &str = "request_gpu_task";
        let err = |e| CommandError::runtime(NAME, e);
        let info = self.runtime.function(&a.function_name).ok_or_else(|| {
            err(RuntimeError::UnknownFunction(
                crate::value::clip(&a.function_name, crate::value::MAX_ECHO).into_owned(),
            ))
        })?;
        if info.spec.resources.gpu.is_none() {
            return Err(CommandError::invalid(
                NAME,
                "function_name",
                format!(
                    "function `{}` requests no GPU; deploy it with `gpu` (for example \"T4\") or call it with spawn_parallel_tasks",
                    a.function_name
                ),
            ));
        }
        let id = self
            .runtime
            .spawn(&a.function_name, a.args, a.kwargs)
            .await
            .map_err(err)?;
        self.note_started(id);
        let limit = self.tool_wait().map(Duration::from_secs_f64);
        let mut record = match self.wait_for(NAME, id, limit).await? {
            Some(record) => record,
            // Still running: its record says so, and wait_tasks waits on.
            None => self.runtime.status(id).map_err(err)?,
        };
        self.load_result(&mut record).await.map_err(err)?;
        Ok(GpuTaskResult {
            task_id: id,
            function_name: a.function_name,
            gpu: info.spec.resources.gpu,
            succeeded: record.status == TaskStatus::Completed,
            status: record.status,
            result: record.result,
            error: record.error,
        })
    }

    /// A task as `GET /status/{id}` shows it.
    pub async fn task_status(&self, id: TaskId) -> Result<TaskStatusView, CommandError> {
        TaskStatusView::of(&self.runtime, id)
            .await
            .map_err(|e| CommandError::runtime("get_task_status", e))
    }

    /// `get_task_status` as a tool answers it: a stored result of at most
    /// [`MAX_TOOL_RESULT_BYTES`] included.
    pub(super) async fn task_status_for_tool(
        &self,
        a: TaskRef,
    ) -> Result<TaskStatusView, CommandError> {
        let mut view = self.task_status(a.task_id).await?;
        self.load_result(&mut view.record)
            .await
            .map_err(|e| CommandError::runtime("get_task_status", e))?;
        Ok(view)
    }

    /// Waits for several tasks without polling.
    pub async fn wait_tasks(&self, a: WaitTasksRequest) -> Result<WaitTasksResult, CommandError> {
        const NAME: &str = "wait_tasks";
        let err = |e| CommandError::runtime(NAME, e);
        let timeout = a.timeout().map_err(err)?;
        let (done, records) = self
            .runtime
            .wait_tasks(&a.task_ids, a.mode, timeout)
            .await
            .map_err(err)?;
        Ok(WaitTasksResult::new(done, a.mode, &records))
    }

    /// Cancels a task; its final record.
    pub async fn cancel_task(&self, a: TaskRef) -> Result<TaskRecord, CommandError> {
        self.runtime
            .cancel(a.task_id)
            .await
            .map_err(|e| CommandError::runtime("cancel_task", e))
    }

    /// A page of a map's results, in input order.
    pub async fn task_results(&self, a: TaskResultsRequest) -> Result<ResultsPage, CommandError> {
        const NAME: &str = "get_task_results";
        if !(1..=MAX_RESULTS_PAGE).contains(&a.limit) {
            return Err(CommandError::invalid(
                NAME,
                "limit",
                format!("got {}; expected 1 to {MAX_RESULTS_PAGE}", a.limit),
            ));
        }
        let mut page = self
            .runtime
            .results(a.task_id, a.offset, a.limit)
            .await
            .map_err(|e| CommandError::runtime(NAME, e))?;
        fit_for_tool(&mut page.results, page.offset, &mut page.next_offset);
        Ok(page)
    }

    /// What a task printed.
    pub async fn task_logs(&self, id: TaskId) -> Result<TaskLogs, CommandError> {
        self.runtime
            .logs(id)
            .await
            .map_err(|e| CommandError::runtime("get_task_logs", e))
    }

    /// `get_task_logs` as a tool answers it: the last
    /// [`MAX_TOOL_LOG_BYTES`] of each stream.
    pub(super) async fn task_logs_for_tool(&self, a: TaskRef) -> Result<TaskLogs, CommandError> {
        let mut logs = self.task_logs(a.task_id).await?;
        for text in [&mut logs.stdout, &mut logs.stderr] {
            keep_tail(text, a.task_id);
        }
        Ok(logs)
    }

    /// The deployed functions, their source only with `include_code`, and
    /// then at most [`MAX_LIST_PAGE_BYTES`](crate::wire::MAX_LIST_PAGE_BYTES)
    /// of it in all: a function past that is listed with `code_omitted`
    /// instead (`GET /functions/{name}` has its code).
    pub async fn list_functions(&self, a: ListFunctions) -> Result<FunctionList, CommandError> {
        let mut budget = if a.include_code {
            crate::wire::MAX_LIST_PAGE_BYTES
        } else {
            0
        };
        let functions = self
            .runtime
            .functions()
            .into_iter()
            .map(|mut f| {
                let fits = a.include_code && f.spec.code.len() <= budget;
                if fits {
                    budget -= f.spec.code.len();
                } else {
                    f.spec.code = String::new();
                }
                let mut view = crate::wire::FunctionView::from(f);
                if !fits {
                    if let Some(spec) = view.spec.as_object_mut() {
                        spec.remove("code");
                        if a.include_code {
                            spec.insert("code_omitted".into(), serde_json::Value::Bool(true));
                        }
                    }
                }
                view
            })
            .collect();
        Ok(FunctionList { functions })
    }
}
