//! Volumes over HTTP: versioned state with optimistic concurrency
//! (`If-Match: <version>` -> 412 on mismatch, `If-None-Match: *` to create
//! only), and files.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::extract::{ApiJson, RawBody};
use super::{ApiState, Error};
use crate::volume::FileStat;
use crate::wire::{PutState, StateEntry};

fn with_etag(body: StateEntry) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", body.version)).expect("digits");
    ([(header::ETAG, etag)], Json(body)).into_response()
}

/// `If-Match: 3` or `If-Match: "3"` -> Some(3); `*` means "exists".
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = raw.to_str().unwrap_or("").trim().trim_matches('"');
    text.parse().map(Some).map_err(|_| {
        Error::invalid(
            "If-Match",
            format!("got {text:?}; expected a version number"),
        )
    })
}

/// The volumes that exist.
#[utoipa::path(get, path = "/volumes", responses((status = 200, body = Object)))]
pub(crate) async fn list_volumes(State(state): State<ApiState>) -> Json<Value> {
    Json(serde_json::json!({"volumes": state.runtime.volumes().list_volumes()}))
}

/// State keys under a prefix, in key order, a page at a time: `limit`
/// (default 1000, at most 10000) keys and about 8 MiB of values; when more
/// follow, `next_after` is the `after` of the next page.
#[utoipa::path(get, path = "/volumes/{name}/state",
    params(("prefix" = Option<String>, Query), ("after" = Option<String>, Query),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000)),
    responses((status = 200, body = Object), (status = 404, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn list_state(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, Error> {
    let prefix = query.get("prefix").cloned().unwrap_or_default();
    let limit =
        crate::wire::list_limit(query_limit(&query)?).map_err(|e| Error::invalid("limit", e))?;
    let page = crate::volume::StatePage {
        prefix,
        after: query.get("after").cloned(),
        limit: limit as usize,
        max_bytes: crate::wire::MAX_LIST_PAGE_BYTES,
    };
    let (listed, more) = state.runtime.volumes().list_page(&name, page).await?;
    require_volume(&state, &name)?;
    let next_after = more
        .then(|| listed.last().map(|(k, _)| k.clone()))
        .flatten();
    let entries: Vec<StateEntry> = listed
        .into_iter()
        .map(|(key, v)| StateEntry {
            key,
            value: v.value,
            version: v.version,
        })
        .collect();
    let mut answer = serde_json::json!({"entries": entries});
    if let Some(after) = next_after {
        answer["next_after"] = Value::String(after);
    }
    Ok(Json(answer))
}

/// A listing's `limit` query parameter, if given; an error names it.
fn query_limit(query: &BTreeMap<String, String>) -> Result<Option<u32>, Error> {
    query
        .get("limit")
        .map(|raw| {
            raw.parse::<u32>().map_err(|_| {
                Error::invalid(
                    "limit",
                    format!(
                        "got {:?}; expected a whole number from 1 to {}",
                        crate::value::clip(raw, 32),
                        crate::wire::MAX_LIST_PAGE
                    ),
                )
            })
        })
        .transpose()
}

/// Read a state key.
#[utoipa::path(get, path = "/volumes/{name}/state/{key}", responses((status = 200, body = StateEntry), (status = 404, body = super::Problem)))]
pub(crate) async fn get_state(
    State(state): State<ApiState>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, Error> {
    let v = state.runtime.volumes().read(&name, &key).await?;
    let v = v.ok_or_else(|| Error::NotFound(format!("no key {key:?} in volume `{name}`")))?;
    Ok(with_etag(StateEntry {
        key,
        value: v.value,
        version: v.version,
    }))
}

/// Write a state key; with `If-Match: <version>` only if it still has that
/// version, with `If-None-Match: *` only if it does not exist.
#[utoipa::path(put, path = "/volumes/{name}/state/{key}", request_body = PutState,
    responses((status = 200, body = StateEntry), (status = 412, body = super::Problem)))]
pub(crate) async fn put_state(
    State(state): State<ApiState>,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PutState>,
) -> Result<Response, Error> {
    let volumes = state.runtime.volumes();
    let create_only = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == b"*");
    let version = match (if_match(&headers)?, create_only) {
        (Some(expected), _) => {
            volumes
                .compare_and_swap(&name, &key, Some(expected), body.value.clone())
                .await?
        }
        (None, true) => {
            volumes
                .compare_and_swap(&name, &key, None, body.value.clone())
                .await?
        }
        (None, false) => volumes.write(&name, &key, body.value.clone()).await?,
    };
    Ok(with_etag(StateEntry {
        key,
        value: body.value,
        version,
    }))
}

/// Delete a state key (with `If-Match`, only at that version).
#[utoipa::path(delete, path = "/volumes/{name}/state/{key}", responses((status = 200, body = Object), (status = 412, body = super::Problem)))]
pub(crate) async fn delete_state(
    State(state): State<ApiState>,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, Error> {
    let volumes = state.runtime.volumes();
    let version = match if_match(&headers)? {
        Some(expected) => volumes.delete_if(&name, &key, expected).await?,
        None => volumes.delete(&name, &key).await?,
    };
    Ok(Json(
        serde_json::json!({"key": key, "deleted": version > 0}),
    ))
}

/// Upload what changed in the volume to the Modal Volume of the same name.
#[utoipa::path(post, path = "/volumes/{name}/push", responses((status = 200, body = Object), (status = 422, body = super::Problem)))]
pub(crate) async fn push(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<crate::compute::SyncReport>, Error> {
    Ok(Json(state.runtime.push_volume(&name).await?))
}

/// Download what changed in the Modal Volume of the same name.
#[utoipa::path(post, path = "/volumes/{name}/pull", responses((status = 200, body = Object), (status = 422, body = super::Problem)))]
pub(crate) async fn pull(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<crate::compute::SyncReport>, Error> {
    Ok(Json(state.runtime.pull_volume(&name).await?))
}

/// Files under a prefix, sorted by path, a page at a time (`limit`, default
/// 1000, at most 10000): when more follow, a `Link: <...>; rel="next"`
/// header gives the next page's URL (`after` the last path of this one).
#[utoipa::path(get, path = "/volumes/{name}/files", operation_id = "list_volume_files",
    params(("prefix" = Option<String>, Query), ("after" = Option<String>, Query),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000)),
    responses((status = 200, body = Vec<FileStat>, headers(("Link" = String, description = "the next page, when there is one"))),
              (status = 404, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn list_files(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, Error> {
    let prefix = query.get("prefix").cloned().unwrap_or_default();
    let limit = query_limit(&query)?;
    let listed = state
        .commands
        .list_files(crate::wire::ListVolumeFiles {
            volume_name: name.clone(),
            prefix: prefix.clone(),
            after: query.get("after").cloned(),
            limit,
        })
        .await?;
    require_volume(&state, &name)?;
    let mut response = Json(listed.files).into_response();
    if let Some(after) = listed.next_after {
        let mut next = format!(
            "</volumes/{name}/files?after={}&limit={}",
            crate::value::percent_encode(&after),
            limit.unwrap_or(crate::wire::DEFAULT_LIST_PAGE)
        );
        if !prefix.is_empty() {
            next.push_str(&format!(
                "&prefix={}",
                crate::value::percent_encode(&prefix)
            ));
        }
        next.push_str(">; rel=\"next\"");
        if let Ok(value) = axum::http::HeaderValue::from_str(&next) {
            response
                .headers_mut()
                .insert(axum::http::header::LINK, value);
        }
    }
    Ok(response)
}

/// A 404 for a volume that does not exist (reads create nothing).
fn require_volume(state: &ApiState, name: &str) -> Result<(), Error> {
    if state.runtime.volumes().exists(name) {
        Ok(())
    } else {
        Err(Error::NotFound(format!("no volume `{name}`")))
    }
}

/// Write a file (the body is its content), atomically.
#[utoipa::path(put, path = "/volumes/{name}/files/{path}", operation_id = "put_volume_file", request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = FileStat), (status = 422, body = super::Problem)))]
pub(crate) async fn put_file(
    State(state): State<ApiState>,
    Path((name, path)): Path<(String, String)>,
    RawBody(bytes): RawBody,
) -> Result<Json<FileStat>, Error> {
    Ok(Json(
        state
            .runtime
            .volumes()
            .put_file(&name, &path, bytes.to_vec())
            .await?,
    ))
}

/// Read a file.
#[utoipa::path(get, path = "/volumes/{name}/files/{path}", operation_id = "get_volume_file", responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = super::Problem)))]
pub(crate) async fn get_file(
    State(state): State<ApiState>,
    Path((name, path)): Path<(String, String)>,
) -> Result<Response, Error> {
    // Streamed from the file: a large file is never held in memory.
    let (file, size) = state.runtime.volumes().open_file(&name, &path).await?;
    let body =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 << 10));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response())
}

/// Delete a file.
#[utoipa::path(delete, path = "/volumes/{name}/files/{path}", operation_id = "delete_volume_file", responses((status = 200, body = Object)))]
pub(crate) async fn delete_file(
    State(state): State<ApiState>,
    Path((name, path)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    let deleted = state.runtime.volumes().delete_file(&name, &path).await?;
    Ok(Json(serde_json::json!({"path": path, "deleted": deleted})))
}
