//! The seed's `POST /run-parallel`, `POST /spawn-task`, `GET /status/{id}`,
//! and tasks, results, logs and cancellation.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

use super::extract::ApiJson;
use super::{ApiState, Caller, Error};
use crate::commands::Commands;
use crate::runtime::{LogOffsets, MAX_RESULTS_PAGE};
use crate::task::{ResultsPage, TaskId, TaskLogs, TaskRecord, TaskStatus};
use crate::wire::{
    MapSubmitted, RunParallelRequest, SpawnTaskRequest, TaskList, TaskRef, TaskResultsRequest,
    TaskStatusView, WaitTasksRequest, WaitTasksResult,
};

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

/// Run a function over inputs in parallel.
#[utoipa::path(post, path = "/run-parallel", request_body = RunParallelRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "a retry with the same key and body gets the first answer")),
    responses((status = 200, body = MapSubmitted), (status = 202, body = MapSubmitted,
               headers(("Location" = String))), (status = 404, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn run_parallel(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RunParallelRequest>,
) -> Result<Response, Error> {
    const NAME: &str = "spawn_parallel_tasks";
    let key = super::idempotency_key(&headers)?.map(|k| (k, Commands::fingerprint(NAME, &req)));
    let waited = req.wait;
    let commands = state.commands.clone();
    let work = async move {
        commands
            .run_parallel(
                req.function_name,
                (req.inputs, req.inputs_as),
                req.wait,
                req.wait_timeout,
            )
            .await
            .map_err(Error::from)
    };
    let keyed = state.commands.keyed(caller, NAME, key, work).await?;
    let map = keyed.answer;
    // 200 only for a caller who asked to wait: without `wait` the answer is
    // 202 whether or not the work happened to finish before it was sent.
    let response = if waited && map.status.is_terminal() {
        Json(map).into_response()
    } else {
        let id = map.task_id;
        accepted(map, id)
    };
    Ok(super::replayed(response, keyed.replayed))
}

/// Spawn one call.
#[utoipa::path(post, path = "/spawn-task", request_body = SpawnTaskRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "a retry with the same key and body gets the first answer")),
    responses((status = 200, body = TaskRecord), (status = 202, body = TaskRecord, headers(("Location" = String))),
              (status = 404, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn spawn_task(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SpawnTaskRequest>,
) -> Result<Response, Error> {
    const NAME: &str = "spawn_task";
    let key = super::idempotency_key(&headers)?.map(|k| (k, Commands::fingerprint(NAME, &req)));
    let waited = req.wait;
    let commands = state.commands.clone();
    let work = async move { commands.spawn_task(req).await.map_err(Error::from) };
    let keyed = state.commands.keyed(caller, NAME, key, work).await?;
    let record = keyed.answer;
    let id = record.task_id;
    let response = if waited && record.status.is_terminal() {
        let stored = record.result_ref.is_some();
        with_stored_result(&state, id, &record, stored).await?
    } else {
        accepted(record, id)
    };
    Ok(super::replayed(response, keyed.replayed))
}

/// `body` (a task's record, or its status view) as JSON; when the task's
/// result is kept in its files (`stored`), that result is streamed from
/// there into `result`, so a large result is never built in memory.
async fn with_stored_result<T: Serialize>(
    state: &ApiState,
    id: TaskId,
    body: &T,
    stored: bool,
) -> Result<Response, Error> {
    let json = serde_json::to_vec(body).map_err(|e| Error::Internal(e.to_string()))?;
    const NEEDLE: &[u8] = b"\"result\":null";
    // A key: inside a JSON string a quote is always escaped, so the bare
    // needle only occurs as the record's own `result` field.
    let at = stored
        .then(|| json.windows(NEEDLE.len()).position(|w| w == NEEDLE))
        .flatten();
    let file = match at {
        Some(_) => tokio::fs::File::open(state.runtime.result_path(id))
            .await
            .ok(),
        None => None,
    };
    let (Some(at), Some(file)) = (at, file) else {
        return Ok(json_response(json));
    };
    let size = file
        .metadata()
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .len();
    let json = axum::body::Bytes::from(json);
    let split = at + NEEDLE.len() - b"null".len();
    let (head, tail) = (json.slice(..split), json.slice(split + b"null".len()..));
    let length = head.len() as u64 + size + tail.len() as u64;
    let chunks = futures_util::stream::once(async move { Ok(head) })
        .chain(tokio_util::io::ReaderStream::with_capacity(file, 64 << 10))
        .chain(futures_util::stream::once(async move { Ok(tail) }));
    let mut response = axum::body::Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    Ok(response)
}

fn json_response(json: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// A task's status, result or error, timestamps, attempts and map progress;
/// a finished map's results in `result` (input order) when there are at
/// most 10,000, otherwise `results_url` to page them.
#[utoipa::path(get, path = "/status/{task_id}", responses((status = 200, body = TaskStatusView), (status = 404, body = super::Problem)))]
pub(crate) async fn status(
    State(state): State<ApiState>,
    Path(task_id): Path<String>,
) -> Result<Response, Error> {
    let id = parse_id(&task_id)?;
    let view = state.commands.task_status(id).await?;
    let stored = view.record.result_ref.is_some();
    with_stored_result(&state, id, &view, stored).await
}

/// A boolean query parameter (default false).
pub(crate) fn flag(query: &BTreeMap<String, String>, name: &str) -> Result<bool, Error> {
    match query.get(name).map(String::as_str) {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(Error::invalid(
            name,
            format!(
                "got {:?}; expected true or false",
                crate::value::clip(other, crate::value::MAX_ECHO)
            ),
        )),
    }
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
                format!(
                    "got {:?}; expected a whole number from 0 to {max}",
                    crate::value::clip(raw, crate::value::MAX_ECHO)
                ),
            )),
        },
    }
}

/// A page of a map's results, in input order; a failed input is `{"error": {...}}`.
#[utoipa::path(get, path = "/status/{task_id}/results",
    params(("offset" = Option<u64>, Query),
           ("limit" = Option<u64>, Query, minimum = 1, maximum = 10000, description = "default 1000")),
    responses((status = 200, body = ResultsPage), (status = 404, body = super::Problem), (status = 409, body = super::Problem)))]
pub(crate) async fn results(
    State(state): State<ApiState>,
    Path(task_id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<ResultsPage>, Error> {
    let id = parse_id(&task_id)?;
    let offset = number(&query, "offset", 0, i64::MAX as u64)?;
    let limit = number(&query, "limit", 1000, MAX_RESULTS_PAGE)?;
    if limit == 0 {
        return Err(Error::invalid(
            "limit",
            "got \"0\"; expected a whole number from 1 to 10000",
        ));
    }
    let page = state
        .commands
        .task_results(TaskResultsRequest {
            task_id: id,
            offset,
            limit,
        })
        .await?;
    Ok(Json(page))
}

/// What a task printed. With `follow=true`, a stream of Server-Sent Events
/// instead: `stdout` and `stderr` events as the task prints (the text as a
/// JSON string; each with an id to resume from, sent back as
/// `Last-Event-ID`), then one `end` event with the task's status once it
/// has finished and all is read.
#[utoipa::path(get, path = "/tasks/{task_id}/logs",
    params(("follow" = Option<bool>, Query),
           ("Last-Event-ID" = Option<String>, Header, description = "resume a followed stream after this event")),
    responses((status = 200, description = "the logs; with follow=true, a stream of Server-Sent Events",
               content((TaskLogs = "application/json"), (SseEvent = "text/event-stream"))),
              (status = 404, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn logs(
    State(state): State<ApiState>,
    Path(task_id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Error> {
    let id = parse_id(&task_id)?;
    let follow = flag(&query, "follow")?;
    // Read whether or not it is used: a resume point that cannot be read is
    // refused the same way with and without `follow`.
    let from = match headers.get("last-event-id") {
        None => LogOffsets::default(),
        Some(raw) => raw
            .to_str()
            .unwrap_or("")
            .parse::<LogOffsets>()
            .map_err(|why| Error::invalid("Last-Event-ID", why))?,
    };
    if !follow {
        return Ok(Json(state.commands.task_logs(id).await?).into_response());
    }
    let chunks = state.runtime.follow_logs(id, from)?;
    let runtime = state.runtime.clone();
    let events = chunks
        .map(|chunk| {
            // The text as a JSON string: SSE cannot carry a carriage return.
            Event::default()
                .event(&chunk.stream)
                .id(chunk.next.to_string())
                .json_data(&chunk.text)
                .unwrap_or_else(|_| Event::default().event(chunk.stream))
        })
        .chain(futures_util::stream::once(async move {
            let status = runtime.status(id).map(|r| r.status.to_string());
            Event::default()
                .event("end")
                .data(status.unwrap_or_else(|_| "unknown".into()))
        }))
        .map(Ok::<_, std::convert::Infallible>);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Cancel a task; answers its final record.
#[utoipa::path(post, path = "/tasks/{task_id}/cancel", responses((status = 200, body = TaskRecord), (status = 404, body = super::Problem)))]
pub(crate) async fn cancel(
    State(state): State<ApiState>,
    Path(task_id): Path<String>,
) -> Result<Json<TaskRecord>, Error> {
    let task_id = parse_id(&task_id)?;
    Ok(Json(state.commands.cancel_task(TaskRef { task_id }).await?))
}

/// Tasks, newest first, optionally by status. Results are left out (read
/// them with `GET /status/{id}`); `include_results=true` includes those the
/// records hold (at most 64 KiB each).
#[utoipa::path(get, path = "/tasks", operation_id = "list_tasks",
    params(("status" = Option<TaskStatus>, Query), ("offset" = Option<u64>, Query),
           ("include_results" = Option<bool>, Query, description = "include results of at most 64 KiB (default false)"),
           ("limit" = Option<u64>, Query, minimum = 0, maximum = 1000, description = "default 100")),
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
    let offset = number(&query, "offset", 0, i64::MAX as u64)?;
    let limit = number(&query, "limit", 100, 1000)?;
    let (tasks, total) = if flag(&query, "include_results")? {
        state
            .runtime
            .tasks_with_results(status, offset as usize, limit as usize)
    } else {
        state.runtime.tasks(status, offset as usize, limit as usize)
    };
    Ok(Json(TaskList {
        tasks,
        total,
        offset,
        limit,
    }))
}

/// Wait for several tasks at once, without polling: answers as soon as all
/// (`mode: all`) or one (`mode: any`) of them have finished, or at the
/// timeout (default 55 s) with `done: false`; one summary line per task.
#[utoipa::path(post, path = "/tasks/wait", request_body = WaitTasksRequest,
    responses((status = 200, body = WaitTasksResult), (status = 404, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn wait_tasks(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<WaitTasksRequest>,
) -> Result<Json<WaitTasksResult>, Error> {
    Ok(Json(state.commands.wait_tasks(req).await?))
}

/// One Server-Sent Event of a followed stream (`text/event-stream`), as a
/// client reads it: its type, its data (a JSON string for output, the
/// outcome at `end`) and, on output, the id to resume after.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema only: the stream is written by axum's `Sse`
pub(crate) struct SseEvent {
    /// `stdout`, `stderr`, or `end` (and, for a sandbox's events, the
    /// event's name).
    event: Option<String>,
    /// The event's data.
    data: String,
    /// Where to resume after this event (`Last-Event-ID`).
    id: Option<String>,
}
