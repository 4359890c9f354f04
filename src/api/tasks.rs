//! The seed's `POST /run-parallel`, `POST /spawn-task`, `GET /status/{id}`,
//! and tasks, results, logs and cancellation.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::extract::ApiJson;
use super::{ApiState, Error};
use crate::runtime::MAX_RESULTS_PAGE;
use crate::task::{MapProgress, ResultsPage, TaskId, TaskLogs, TaskRecord, TaskStatus};

/// The seed's run-parallel request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunParallelRequest {
    function_name: String,
    /// One JSON value per call.
    #[schema(value_type = Vec<Object>)]
    inputs: Vec<Value>,
    /// Wait for the map and return its results (default false: 202 at once).
    #[serde(default)]
    wait: bool,
    /// With `wait`, answer 202 after this many seconds if not finished.
    #[serde(default)]
    wait_timeout: Option<f64>,
}

/// The seed's run-parallel response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunParallelResponse {
    task_id: TaskId,
    function_name: String,
    num_tasks: u64,
    status: TaskStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<MapProgress>,
    /// With `wait`: the first page of results in input order.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    results: Option<Vec<Value>>,
    /// With `wait`: where the next page starts (`GET /status/{id}/results`).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<crate::task::TaskError>,
}

/// The seed's spawn-task request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpawnTaskRequest {
    function_name: String,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    args: Vec<Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    kwargs: Map<String, Value>,
    /// Wait for the result (default false: 202 at once).
    #[serde(default)]
    wait: bool,
    /// With `wait`, answer 202 after this many seconds if not finished.
    #[serde(default)]
    wait_timeout: Option<f64>,
}

fn wait_limit(v: Option<f64>) -> Result<Option<Duration>, Error> {
    match v {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => {
            Ok(Some(Duration::from_secs_f64(s)))
        }
        Some(s) => Err(Error::invalid(
            "wait_timeout",
            format!("got {s}; expected seconds from 0 to 86400"),
        )),
    }
}

pub(crate) fn parse_id(raw: &str) -> Result<TaskId, Error> {
    raw.parse()
        .map_err(|_| Error::invalid("task_id", format!("{raw:?} is not a task id (a UUID)")))
}

fn accepted(body: impl Serialize, id: TaskId) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/status/{id}"))],
        Json(body),
    )
        .into_response()
}

/// Wait for a task, at most `limit`; `None` when it is still running.
async fn wait_for(
    state: &ApiState,
    id: TaskId,
    limit: Option<Duration>,
) -> Result<Option<TaskRecord>, Error> {
    match state.runtime.wait(id, limit).await {
        Ok(record) => Ok(Some(record)),
        // A stopping server answers 202: the task resumes after the restart.
        Err(crate::RuntimeError::WaitTimeout { .. } | crate::RuntimeError::ShutDown) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Run a function over inputs in parallel.
#[utoipa::path(post, path = "/run-parallel", request_body = RunParallelRequest,
    responses((status = 200, body = RunParallelResponse), (status = 202, body = RunParallelResponse,
               headers(("Location" = String))), (status = 404, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn run_parallel(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<RunParallelRequest>,
) -> Result<Response, Error> {
    let limit = wait_limit(req.wait_timeout)?;
    let n = req.inputs.len() as u64;
    let id = state
        .runtime
        .run_parallel(&req.function_name, req.inputs)
        .await?;
    let mut body = RunParallelResponse {
        task_id: id,
        function_name: req.function_name,
        num_tasks: n,
        status: TaskStatus::Pending,
        progress: None,
        results: None,
        next_offset: None,
        error: None,
    };
    if !req.wait {
        return Ok(accepted(body, id));
    }
    let Some(record) = wait_for(&state, id, limit).await? else {
        let now = state.runtime.status(id)?;
        body.status = now.status;
        body.progress = now.progress;
        return Ok(accepted(body, id));
    };
    let page = state.runtime.results(id, 0, MAX_RESULTS_PAGE).await?;
    body.status = record.status;
    body.progress = record.progress;
    body.error = record.error;
    body.results = Some(page.results);
    body.next_offset = page.next_offset;
    Ok(Json(body).into_response())
}

/// Spawn one call.
#[utoipa::path(post, path = "/spawn-task", request_body = SpawnTaskRequest,
    responses((status = 200, body = TaskRecord), (status = 202, body = TaskRecord, headers(("Location" = String))),
              (status = 404, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn spawn_task(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<SpawnTaskRequest>,
) -> Result<Response, Error> {
    let limit = wait_limit(req.wait_timeout)?;
    let id = state
        .runtime
        .spawn(&req.function_name, req.args, req.kwargs)
        .await?;
    if req.wait {
        if let Some(record) = wait_for(&state, id, limit).await? {
            return Ok(Json(record).into_response());
        }
    }
    Ok(accepted(state.runtime.status(id)?, id))
}

/// A task's status, result or error, timestamps, attempts and map progress.
#[utoipa::path(get, path = "/status/{task_id}", responses((status = 200, body = TaskRecord), (status = 404, body = super::Problem)))]
pub(crate) async fn status(
    State(state): State<ApiState>,
    Path(task_id): Path<String>,
) -> Result<Json<TaskRecord>, Error> {
    Ok(Json(state.runtime.status(parse_id(&task_id)?)?))
}

fn number(
    query: &BTreeMap<String, String>,
    name: &str,
    default: u64,
    max: u64,
) -> Result<u64, Error> {
    match query.get(name) {
        None => Ok(default),
        Some(raw) => match raw.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(Error::invalid(
                name,
                format!("got {raw:?}; expected a whole number from 0 to {max}"),
            )),
        },
    }
}

/// A page of a map's results, in input order; a failed input is `{"error": {...}}`.
#[utoipa::path(get, path = "/status/{task_id}/results",
    params(("offset" = Option<u64>, Query), ("limit" = Option<u64>, Query, description = "1..=10000, default 1000")),
    responses((status = 200, body = ResultsPage), (status = 404, body = super::Problem), (status = 409, body = super::Problem)))]
pub(crate) async fn results(
    State(state): State<ApiState>,
    Path(task_id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<ResultsPage>, Error> {
    let id = parse_id(&task_id)?;
    let offset = number(&query, "offset", 0, u64::MAX)?;
    let limit = number(&query, "limit", 1000, MAX_RESULTS_PAGE)?;
    if limit == 0 {
        return Err(Error::invalid(
            "limit",
            "got \"0\"; expected a whole number from 1 to 10000",
        ));
    }
    Ok(Json(state.runtime.results(id, offset, limit).await?))
}

/// What a task printed.
#[utoipa::path(get, path = "/tasks/{task_id}/logs", responses((status = 200, body = TaskLogs), (status = 404, body = super::Problem)))]
pub(crate) async fn logs(
    State(state): State<ApiState>,
    Path(task_id): Path<String>,
) -> Result<Json<TaskLogs>, Error> {
    Ok(Json(state.runtime.logs(parse_id(&task_id)?).await?))
}

/// Cancel a task; answers its final record.
#[utoipa::path(post, path = "/tasks/{task_id}/cancel", responses((status = 200, body = TaskRecord), (status = 404, body = super::Problem)))]
pub(crate) async fn cancel(
    State(state): State<ApiState>,
    Path(task_id): Path<String>,
) -> Result<Json<TaskRecord>, Error> {
    Ok(Json(state.runtime.cancel(parse_id(&task_id)?).await?))
}

/// A page of tasks.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TaskList {
    tasks: Vec<TaskRecord>,
    total: usize,
    offset: u64,
    limit: u64,
}

/// Tasks, newest first, optionally by status.
#[utoipa::path(get, path = "/tasks",
    params(("status" = Option<TaskStatus>, Query), ("offset" = Option<u64>, Query), ("limit" = Option<u64>, Query)),
    responses((status = 200, body = TaskList), (status = 422, body = super::Problem)))]
pub(crate) async fn list(
    State(state): State<ApiState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<TaskList>, Error> {
    let status = match query.get("status") {
        None => None,
        Some(s) => Some(
            serde_json::from_value::<TaskStatus>(Value::String(s.clone())).map_err(|_| {
                Error::invalid(
                    "status",
                    format!("got {s:?}; expected pending, running, completed, failed or cancelled"),
                )
            })?,
        ),
    };
    let offset = number(&query, "offset", 0, u64::MAX)?;
    let limit = number(&query, "limit", 100, 1000)?;
    let (tasks, total) = state.runtime.tasks(status, offset as usize, limit as usize);
    Ok(Json(TaskList {
        tasks,
        total,
        offset,
        limit,
    }))
}
