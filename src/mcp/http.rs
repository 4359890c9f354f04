//! `/mcp` of the HTTP API: rmcp's Streamable HTTP service behind a guard
//! that bounds what a caller can make the server hold. An `initialize` is
//! at most [`McpLimits::max_initialize_bytes`] and needs a free place among
//! the live sessions (overall and per token); every other message is at
//! most the API's body limit.

use std::sync::Arc;

use serde::Deserialize as _;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::sessions::{Owner, SessionError, Sessions, MAX_STREAMS_PER_SESSION};
use super::{McpLimits, McpServer};

use crate::api::Error;
use crate::runtime::Runtime;

/// The header that names a session.
const SESSION_HEADER: &str = "mcp-session-id";

/// What the guard needs.
#[derive(Clone)]
pub(crate) struct Guard {
    sessions: Arc<Sessions>,
    body_limit: usize,
}

/// The Streamable HTTP service for `/mcp` over `runtime`'s tools with
/// `sessions`, stopped with `stop`, and the guard to put in front of it.
pub(crate) fn service(
    runtime: Runtime,
    stop: CancellationToken,
    sessions: Arc<Sessions>,
    body_limit: usize,
) -> (StreamableHttpService<McpServer, Sessions>, Guard) {
    let server = McpServer::local(runtime);
    // Host and Origin are the API's to check (`api::origin`, on every
    // route): the server's own pages may speak MCP, others may not.
    let mut config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_max_request_body_bytes(body_limit);
    config.cancellation_token = stop;
    let service = StreamableHttpService::new(move || Ok(server.clone()), sessions.clone(), config);
    (
        service,
        Guard {
            sessions,
            body_limit,
        },
    )
}

/// What the guard reads of a JSON-RPC message (everything else is only
/// checked to be JSON).
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    id: Option<serde_json::Value>,
    /// Only its `taskId` is looked at (an answer or a log line may echo
    /// it), and a `tools/call`'s shape ([`super::check`]).
    #[serde(default)]
    params: Option<serde_json::Value>,
    /// Present (even as null) in an answer to the server's own request.
    #[serde(default, deserialize_with = "present")]
    result: bool,
    #[serde(default, deserialize_with = "present")]
    error: bool,
}

/// True for a field that is there, whatever its value (null included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// Longest JSON-RPC `method` and string `id` accepted: both come back in
/// answers and log lines.
const MAX_NAME: usize = 128;

/// Lets a request through to the MCP service only within the bounds: a
/// POST is well-formed JSON with a short `method` and `id`; an `initialize`
/// (a POST without a session) is small enough and has a place for its
/// session reserved, the owner being the token the API's auth matched; a
/// session holds at most [`MAX_STREAMS_PER_SESSION`] streams at once. rmcp's
/// own refusals are answered as problem+json, and the end of a session
/// (DELETE) as 200.
pub(crate) async fn guard(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    let session = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let method = req.method().clone();
    let mut reservation = None;
    let owner: Owner = req
        .extensions()
        .get::<crate::api::Caller>()
        .and_then(|c| c.0);
    // Another token's session is, to this one, no session at all.
    if session
        .as_deref()
        .is_some_and(|s| guard.sessions.is_others(s, owner))
    {
        return Error::NotFound("no such MCP session (it ended, or expired)".into())
            .into_response();
    }
    let req = if method == Method::POST {
        let (parts, body) = req.into_parts();
        let bytes = match read_body(body, guard.body_limit).await {
            Ok(bytes) => bytes,
            Err(e) => return e.into_response(),
        };
        let envelope = match serde_json::from_slice::<Envelope>(&bytes) {
            Ok(e) => e,
            Err(e) => {
                // JSON-RPC's answer to what cannot be read: an error with a
                // null id (a parse error, or JSON that is no message).
                let code = if e.is_syntax() || e.is_eof() {
                    -32700
                } else {
                    super::check::INVALID_REQUEST
                };
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    None,
                    code,
                    &format!(
                        "not a JSON-RPC message: {}",
                        crate::value::clip(&e.to_string(), MAX_NAME)
                    ),
                );
            }
        };
        if let Err(e) = short_names(&envelope) {
            return e.into_response();
        }
        let method = envelope.method.clone().map(serde_json::Value::String);
        if let Err(refused) = super::check::check(
            method.as_ref(),
            envelope.params.as_ref(),
            envelope.result || envelope.error,
        ) {
            // A request refused for its params is answered as JSON-RPC
            // says, to its id; a notification is never answered (accepted
            // and dropped); one that is no message at all is a 400.
            let status = match (refused.code, &envelope.id) {
                (super::check::INVALID_PARAMS, None) => {
                    return StatusCode::ACCEPTED.into_response()
                }
                (super::check::INVALID_PARAMS, Some(_)) => StatusCode::OK,
                _ => StatusCode::BAD_REQUEST,
            };
            return rpc_error(status, envelope.id.as_ref(), refused.code, &refused.message);
        }
        if envelope.method.as_deref() == Some("initialize") {
            let limits = guard.sessions.limits();
            if bytes.len() > limits.max_initialize_bytes {
                return Error::TooLarge(limits.max_initialize_bytes).into_response();
            }
            // Initialized again inside a session, a session would keep each
            // new client info for its life: a session starts once.
            if session.is_some() {
                return Error::BadRequest(format!(
                    "initialize with an {SESSION_HEADER} header: a session is initialized once; send initialize without the header to start a new one"
                ))
                .into_response();
            }
            reservation = match guard.sessions.reserve(owner) {
                Ok(r) => Some(r),
                Err(e) => return refusal(&e, limits).into_response(),
            };
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        req
    };
    if method == Method::DELETE
        && session
            .as_deref()
            .is_some_and(|s| !guard.sessions.is_open(s))
    {
        return Error::NotFound("no such MCP session (it ended, or expired)".into())
            .into_response();
    }
    let stream = match &session {
        Some(id) if method != Method::DELETE => match guard.sessions.open_stream(id) {
            Some(stream) => Some(stream),
            None if guard.sessions.is_open(id) => {
                return Error::TooManyRequests {
                    detail: format!(
                        "this MCP session holds {MAX_STREAMS_PER_SESSION} open requests and streams, the most it may; let one finish"
                    ),
                    retry_after_s: 1,
                }
                .into_response()
            }
            None => None,
        },
        _ => None,
    };
    let response = match reservation {
        Some(r) => r.scope(next.run(req)).await,
        None => next.run(req).await,
    };
    let response = as_problem(response).await;
    let response = if method == Method::DELETE && response.status() == StatusCode::ACCEPTED {
        // What the MCP SDKs expect of a session's end.
        let mut ok = response;
        *ok.status_mut() = StatusCode::OK;
        ok
    } else {
        response
    };
    match stream {
        // The stream's place is held until its body is done.
        Some(stream) => response.map(|body| {
            Body::from_stream(body.into_data_stream().map(move |chunk| {
                let _held = &stream;
                chunk
            }))
        }),
        None => response,
    }
}

/// A JSON-RPC error answer to `id` (null when there is none) with `status`.
fn rpc_error(
    status: StatusCode,
    id: Option<&serde_json::Value>,
    code: i64,
    message: &str,
) -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.unwrap_or(&serde_json::Value::Null),
        "error": {"code": code, "message": crate::value::clip(message, 512)},
    });
    (status, axum::Json(body)).into_response()
}

/// Refuses a `method` or string `id` longer than [`MAX_NAME`].
fn short_names(envelope: &Envelope) -> Result<(), Error> {
    if envelope.method.as_ref().is_some_and(|m| m.len() > MAX_NAME) {
        return Err(Error::invalid(
            "method",
            format!("a JSON-RPC method of at most {MAX_NAME} bytes"),
        ));
    }
    let long_id = match &envelope.id {
        Some(serde_json::Value::String(id)) => id.len() > MAX_NAME,
        Some(serde_json::Value::Number(_) | serde_json::Value::Null) | None => false,
        Some(_) => {
            return Err(Error::invalid(
                "id",
                "a JSON-RPC id is a string or a number",
            ))
        }
    };
    if long_id {
        return Err(Error::invalid(
            "id",
            format!("a JSON-RPC id of at most {MAX_NAME} bytes"),
        ));
    }
    let long_task = envelope
        .params
        .as_ref()
        .and_then(|p| p.get("taskId"))
        .is_some_and(|t| t.as_str().is_none_or(|t| t.len() > MAX_NAME));
    if long_task {
        return Err(Error::invalid(
            "params.taskId",
            format!("a task id: a string of at most {MAX_NAME} bytes"),
        ));
    }
    Ok(())
}

/// rmcp's own refusals (plain text) as problem+json, saying the same.
async fn as_problem(response: Response) -> Response {
    let status = response.status();
    let is_text = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("text/plain"));
    if !status.is_client_error() || !is_text {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let problem = crate::api::Problem {
        kind: crate::wire::ProblemKind::Mcp,
        title: status.canonical_reason().unwrap_or("Refused").into(),
        status: status.as_u16(),
        detail: crate::value::clip(text.trim(), 1024).into_owned(),
        field: None,
        ended: None,
    };
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/problem+json")],
        body,
    )
        .into_response()
}

/// The answer to an `initialize` with no place for its session.
fn refusal(e: &SessionError, limits: &McpLimits) -> Error {
    let retry_after_s = limits.init_timeout.as_secs().max(1);
    match e {
        SessionError::PerToken { max } => Error::TooManyRequests {
            detail: format!(
                "this token already holds {max} live MCP sessions, the most it may; end one (DELETE /mcp with its Mcp-Session-Id) or let one expire ({} s idle, {} s for one that never finished initializing)",
                limits.idle_timeout.as_secs(),
                limits.init_timeout.as_secs()
            ),
            retry_after_s,
        },
        other => Error::Saturated {
            detail: format!("{other}; try again shortly"),
            retry_after_s,
        },
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Error> {
    let read = axum::body::to_bytes(body, limit);
    match tokio::time::timeout(crate::api::BODY_READ_TIMEOUT, read).await {
        Err(_) => Err(Error::BadRequest(format!(
            "the request body did not arrive within {} s",
            crate::api::BODY_READ_TIMEOUT.as_secs()
        ))),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(Error::TooLarge(limit)),
    }
}
