//! Sandbox sessions over HTTP: create, list, exec, processes (output as
//! Server-Sent Events), files, keepalive, snapshots, forks and diffs.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::extract::{parse_json, ApiJson, RawBody};
use super::{ApiState, Caller, Error};
use crate::commands::Commands;
use crate::sandbox::OutputEvent;
use crate::wire::{
    CreateSandbox, ExecRequest, ExecResult, ForkRequest, Forked, KeepaliveRequest, KillRequest,
    ListSandboxes, ProcessView, SandboxFileEntry, SandboxFileList, SandboxList, SandboxView,
    SnapshotDiff, SnapshotInfo, SnapshotList, StdinRequest,
};

/// An optional JSON body: none (or empty) is the type's default; else a
/// JSON object parsed through the one parser.
fn optional<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let value: Value = parse_json(body)?;
    if !value.is_object() {
        return Err(Error::invalid("(body)", "expected a JSON object"));
    }
    Ok(crate::commands::parse("request", value)?)
}

/// Create a sandbox.
#[utoipa::path(post, path = "/sandboxes", request_body = CreateSandbox,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "a retry with the same key and body gets the first answer")),
    responses((status = 201, body = SandboxView, headers(("Location" = String))), (status = 409, body = super::Problem),
              (status = 422, body = super::Problem), (status = 503, body = super::Problem)))]
pub(crate) async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateSandbox>,
) -> Result<Response, Error> {
    const NAME: &str = "create_sandbox";
    let key = super::idempotency_key(&headers)?.map(|k| (k, Commands::fingerprint(NAME, &req)));
    let commands = state.commands.clone();
    let work = async move { commands.create_sandbox(req).await.map_err(Error::from) };
    let keyed = state.commands.keyed(caller, NAME, key, work).await?;
    let view = keyed.answer;
    let location = format!("/sandboxes/{}", view.sandbox_id);
    let response = (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response();
    Ok(super::replayed(response, keyed.replayed))
}

/// The sandboxes, newest first (filter by `state`, `name`, `tag=k=v`).
#[utoipa::path(get, path = "/sandboxes", operation_id = "list_sandboxes",
    params(("state" = Option<crate::wire::SandboxState>, Query), ("name" = Option<String>, Query),
           ("tag" = Option<String>, Query, description = "key=value, or key for any value")),
    responses((status = 200, body = SandboxList), (status = 422, body = super::Problem)))]
pub(crate) async fn list(
    State(state): State<ApiState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<SandboxList>, Error> {
    let state_filter = match query.get("state") {
        None => None,
        Some(s) => Some(
            serde_json::from_value(Value::String(s.clone())).map_err(|_| {
                Error::invalid(
                    "state",
                    format!(
                        "got {:?}; expected starting, running or ended",
                        crate::value::clip(s, 64)
                    ),
                )
            })?,
        ),
    };
    let filter = ListSandboxes {
        state: state_filter,
        name: query.get("name").cloned(),
        tag: query.get("tag").cloned(),
    };
    Ok(Json(SandboxList {
        sandboxes: state.runtime.sandboxes().list(&filter),
    }))
}

/// A sandbox: its state, clocks, running processes and how it ended.
#[utoipa::path(get, path = "/sandboxes/{sandbox_id}", operation_id = "get_sandbox",
    responses((status = 200, body = SandboxView), (status = 404, body = super::Problem)))]
pub(crate) async fn get_one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxView>, Error> {
    Ok(Json(state.runtime.sandboxes().view(&id)?))
}

/// End a sandbox (idempotent; reason `terminated`).
#[utoipa::path(delete, path = "/sandboxes/{sandbox_id}",
    responses((status = 200, body = SandboxView), (status = 404, body = super::Problem)))]
pub(crate) async fn terminate(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxView>, Error> {
    Ok(Json(state.runtime.sandboxes().terminate(&id).await?))
}

/// Run a command in a sandbox; 200 with its outcome and output when it ended
/// within `wait_s`, else 202 with its process id.
#[utoipa::path(post, path = "/sandboxes/{sandbox_id}/exec", request_body = ExecRequest,
    responses((status = 200, body = ExecResult), (status = 202, body = ExecResult, headers(("Location" = String))),
              (status = 404, body = super::Problem), (status = 409, body = super::Problem),
              (status = 422, body = super::Problem), (status = 429, body = super::Problem)))]
pub(crate) async fn exec(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Response, Error> {
    let result = state.runtime.sandboxes().exec(&id, req).await?;
    Ok(process_answer(&id, result))
}

fn process_answer(id: &str, result: ExecResult) -> Response {
    if result.process.outcome.is_some() {
        Json(result).into_response()
    } else {
        let location = format!("/sandboxes/{id}/processes/{}", result.process.process_id);
        (
            StatusCode::ACCEPTED,
            [(header::LOCATION, location)],
            Json(result),
        )
            .into_response()
    }
}

fn wait_param(query: &BTreeMap<String, String>) -> Result<u64, Error> {
    match query.get("wait_s") {
        None => Ok(0),
        Some(raw) => raw.parse().map_err(|_| {
            Error::invalid("wait_s", format!("got {raw:?}; expected 0 to 55 seconds"))
        }),
    }
}

/// A process: state, outcome, times and, once ended, its output (the last
/// 1 MiB of each stream); `wait_s` (0..=55) waits for it to end.
#[utoipa::path(get, path = "/sandboxes/{sandbox_id}/processes/{process_id}",
    params(("wait_s" = Option<u64>, Query, minimum = 0, maximum = 55)),
    responses((status = 200, body = ExecResult), (status = 404, body = super::Problem)))]
pub(crate) async fn process(
    State(state): State<ApiState>,
    Path((id, pid)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<ExecResult>, Error> {
    let wait = wait_param(&query)?;
    Ok(Json(
        state
            .runtime
            .sandboxes()
            .wait_process(&id, &pid, wait)
            .await?,
    ))
}

/// A process's output as Server-Sent Events: `stdout` and `stderr` events
/// (the text as a JSON string, each with an id to resume from as
/// `Last-Event-ID`), then `end` with the outcome. Without `follow=true` it
/// ends with what there is now.
#[utoipa::path(get, path = "/sandboxes/{sandbox_id}/processes/{process_id}/output",
    params(("follow" = Option<bool>, Query), ("Last-Event-ID" = Option<String>, Header)),
    responses((status = 200, content_type = "text/event-stream", body = super::tasks::SseEvent), (status = 404, body = super::Problem)))]
pub(crate) async fn output(
    State(state): State<ApiState>,
    Path((id, pid)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let follow = super::tasks::flag(&query, "follow")?;
    let from = match headers.get("last-event-id") {
        None => 0,
        Some(raw) => {
            let text = raw.to_str().unwrap_or("");
            text.parse().map_err(|_| {
                Error::invalid(
                    "Last-Event-ID",
                    format!(
                        "got {:?}; expected an event id (a number)",
                        crate::value::clip(text, 64)
                    ),
                )
            })?
        }
    };
    let stream = state.runtime.sandboxes().output(&id, &pid, from, follow)?;
    let events = stream
        .map(|e| match e {
            OutputEvent::Chunk(c) => Event::default()
                .event(c.stream.as_str())
                .id(c.next.to_string())
                .json_data(&c.text)
                .unwrap_or_else(|_| Event::default().event(c.stream.as_str())),
            OutputEvent::End(outcome) => Event::default()
                .event("end")
                .json_data(&outcome)
                .unwrap_or_else(|_| Event::default().event("end")),
        })
        .map(Ok::<_, std::convert::Infallible>);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Write to a process's stdin (`data` or `data_b64`; `eof` closes it).
#[utoipa::path(post, path = "/sandboxes/{sandbox_id}/processes/{process_id}/stdin", request_body = StdinRequest,
    responses((status = 200, body = ProcessView), (status = 404, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn stdin(
    State(state): State<ApiState>,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(req): ApiJson<StdinRequest>,
) -> Result<Json<ProcessView>, Error> {
    Ok(Json(
        state
            .runtime
            .sandboxes()
            .write_stdin(&id, &pid, req)
            .await?,
    ))
}

/// Send a signal to a process (default KILL).
#[utoipa::path(post, path = "/sandboxes/{sandbox_id}/processes/{process_id}/kill", request_body = KillRequest,
    responses((status = 200, body = ProcessView), (status = 404, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn kill(
    State(state): State<ApiState>,
    Path((id, pid)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<Json<ProcessView>, Error> {
    let req: KillRequest = optional(&body)?;
    Ok(Json(
        state
            .runtime
            .sandboxes()
            .kill_process(&id, &pid, req.signal.as_ref())
            .await?,
    ))
}

/// Reset the idle clock; `extend_s` adds to the lifetime (up to 86400 s
/// from creation; more is refused, never cut).
#[utoipa::path(post, path = "/sandboxes/{sandbox_id}/keepalive", request_body = KeepaliveRequest,
    responses((status = 200, body = SandboxView), (status = 409, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn keepalive(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<SandboxView>, Error> {
    let req: KeepaliveRequest = optional(&body)?;
    Ok(Json(
        state.runtime.sandboxes().keepalive(&id, req.extend_s)?,
    ))
}

/// Snapshot the sandbox's workdir.
#[utoipa::path(post, path = "/sandboxes/{sandbox_id}/snapshot",
    responses((status = 201, body = SnapshotInfo), (status = 409, body = super::Problem)))]
pub(crate) async fn snapshot(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let info = state.runtime.sandboxes().snapshot(&id).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// `count` new sandboxes from this one's current files.
#[utoipa::path(post, path = "/sandboxes/{sandbox_id}/fork", request_body = ForkRequest,
    responses((status = 201, body = Forked), (status = 409, body = super::Problem), (status = 503, body = super::Problem)))]
pub(crate) async fn fork(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, Error> {
    let req: ForkRequest = optional(&body)?;
    let forked = state.runtime.sandboxes().fork(&id, req.count).await?;
    Ok((StatusCode::CREATED, Json(forked)).into_response())
}

/// The sandbox's events as Server-Sent Events: its state now
/// (`sandbox.state`), then `sandbox.expiring` and `sandbox.ended`.
#[utoipa::path(get, path = "/sandboxes/{sandbox_id}/events",
    responses((status = 200, content_type = "text/event-stream", body = super::tasks::SseEvent), (status = 404, body = super::Problem)))]
pub(crate) async fn events(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let (now, rx, permit) = state.runtime.sandboxes().follow_events(&id)?;
    let first = Event::default()
        .event("sandbox.state")
        .json_data(&now)
        .unwrap_or_default();
    let ended = now.ended.is_some();
    // A follower who comes within the notice still hears it.
    let expiring = (!ended
        && now.expires_at - chrono::Utc::now()
            <= chrono::Duration::from_std(state.runtime.sandboxes().expiring_notice())
                .unwrap_or_default())
    .then(|| {
        Event::default()
            .event("sandbox.expiring")
            .json_data(&now)
            .unwrap_or_default()
    });
    let rest =
        futures_util::stream::unfold((rx, ended, permit), |(mut rx, done, permit)| async move {
            if done {
                return None;
            }
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        let last = e.event == "sandbox.ended";
                        let event = Event::default()
                            .event(&e.event)
                            .json_data(&e.sandbox)
                            .unwrap_or_default();
                        return Some((event, (rx, last, permit)));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return None,
                }
            }
        });
    let events = futures_util::stream::once(async { first })
        .chain(futures_util::stream::iter(expiring))
        .chain(rest)
        .map(Ok::<_, std::convert::Infallible>);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A directory's entries (`path`, default the workdir).
#[utoipa::path(get, path = "/sandboxes/{sandbox_id}/files", operation_id = "list_sandbox_files", params(("path" = Option<String>, Query)),
    responses((status = 200, body = SandboxFileList), (status = 404, body = super::Problem), (status = 409, body = super::Problem)))]
pub(crate) async fn list_files(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<SandboxFileList>, Error> {
    let path = query.get("path").map(String::as_str);
    Ok(Json(state.runtime.sandboxes().list_files(&id, path).await?))
}

/// Read a file, streamed (at most the files API's limit, else 413).
#[utoipa::path(get, path = "/sandboxes/{sandbox_id}/files/{path}", operation_id = "get_sandbox_file",
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = super::Problem), (status = 413, body = super::Problem)))]
pub(crate) async fn get_file(
    State(state): State<ApiState>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, Error> {
    let chunks = state
        .runtime
        .sandboxes()
        .read_file_redacted(&id, &path)
        .await?;
    let body =
        axum::body::Body::from_stream(futures_util::stream::unfold(chunks, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        }));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// Write a file (the body is its content), atomically; at most the files
/// API's limit (64 MiB by default), else 413.
#[utoipa::path(put, path = "/sandboxes/{sandbox_id}/files/{path}", operation_id = "put_sandbox_file", request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = SandboxFileEntry), (status = 409, body = super::Problem), (status = 413, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn put_file(
    State(state): State<ApiState>,
    Path((id, path)): Path<(String, String)>,
    req: Request,
) -> Result<Json<SandboxFileEntry>, Error> {
    let max = state.runtime.sandboxes().max_file_bytes();
    let body = req.into_body();
    let read = tokio::time::timeout(
        super::extract::BODY_READ_TIMEOUT,
        axum::body::to_bytes(body, max as usize + 1),
    )
    .await
    .map_err(|_| Error::BadRequest("the request body did not arrive in time".into()))?;
    let bytes = read.map_err(|_| Error::TooLarge(max as usize))?;
    Ok(Json(
        state
            .runtime
            .sandboxes()
            .write_file(&id, &path, bytes.to_vec())
            .await?,
    ))
}

/// Remove a file, or a directory with everything in it.
#[utoipa::path(delete, path = "/sandboxes/{sandbox_id}/files/{path}", operation_id = "delete_sandbox_file",
    responses((status = 200, body = Object), (status = 409, body = super::Problem)))]
pub(crate) async fn delete_file(
    State(state): State<ApiState>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    let deleted = state.runtime.sandboxes().remove_file(&id, &path).await?;
    Ok(Json(serde_json::json!({"path": path, "deleted": deleted})))
}

/// Make a directory and its parents.
#[utoipa::path(put, path = "/sandboxes/{sandbox_id}/dirs/{path}",
    responses((status = 200, body = SandboxFileEntry), (status = 409, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn make_dir(
    State(state): State<ApiState>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Json<SandboxFileEntry>, Error> {
    Ok(Json(state.runtime.sandboxes().make_dir(&id, &path).await?))
}

/// Every snapshot, newest first.
#[utoipa::path(get, path = "/snapshots", responses((status = 200, body = SnapshotList)))]
pub(crate) async fn list_snapshots(State(state): State<ApiState>) -> Json<SnapshotList> {
    Json(SnapshotList {
        snapshots: state.runtime.sandboxes().snapshots().await,
    })
}

/// What changed from snapshot `a` to snapshot `b`.
#[utoipa::path(get, path = "/snapshots/{from}/diff/{to}",
    responses((status = 200, body = SnapshotDiff), (status = 404, body = super::Problem)))]
pub(crate) async fn diff(
    State(state): State<ApiState>,
    Path((from, to)): Path<(String, String)>,
) -> Result<Json<SnapshotDiff>, Error> {
    Ok(Json(state.runtime.sandboxes().diff(&from, &to).await?))
}

/// Delete a snapshot (its files go when no other snapshot has them).
#[utoipa::path(delete, path = "/snapshots/{snapshot_id}",
    responses((status = 200, body = Object)))]
pub(crate) async fn delete_snapshot(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Error> {
    let deleted = state.runtime.sandboxes().delete_snapshot(&id).await?;
    Ok(Json(
        serde_json::json!({"snapshot_id": id, "deleted": deleted}),
    ))
}
