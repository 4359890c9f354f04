//! `/mcp` of the HTTP API: rmcp's Streamable HTTP service behind a guard
//! that bounds what a caller can make the server hold. An `initialize` is
//! at most [`McpLimits::max_initialize_bytes`] and needs a free place among
//! the live sessions (overall and per token); every other message is at
//! most the API's body limit.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::sessions::{Owner, SessionError, Sessions};
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
/// Requests carrying a browser `Origin` are refused (the API refuses them
/// first); the host check is the API's.
pub(crate) fn service(
    runtime: Runtime,
    stop: CancellationToken,
    sessions: Arc<Sessions>,
    body_limit: usize,
) -> (StreamableHttpService<McpServer, Sessions>, Guard) {
    let server = McpServer::local(runtime);
    let mut config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .enforce_origin_validation()
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

/// The method of a JSON-RPC message, read without keeping anything else.
#[derive(serde::Deserialize)]
struct Method {
    #[serde(default)]
    method: Option<String>,
}

/// Lets a request through to the MCP service only within the bounds: an
/// `initialize` (a POST without a session) small enough and with a place
/// for its session reserved; the owner is the token the API's auth matched.
pub(crate) async fn guard(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    if req.method() != axum::http::Method::POST || req.headers().contains_key(SESSION_HEADER) {
        return next.run(req).await;
    }
    let owner: Owner = req
        .extensions()
        .get::<crate::api::Caller>()
        .and_then(|c| c.token);
    let (parts, body) = req.into_parts();
    let bytes = match read_body(body, guard.body_limit).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    let method = serde_json::from_slice::<Method>(&bytes)
        .ok()
        .and_then(|m| m.method);
    let req = Request::from_parts(parts, Body::from(bytes.clone()));
    if method.as_deref() != Some("initialize") {
        // Stateless requests (2026-07-28) and malformed ones: rmcp answers.
        return next.run(req).await;
    }
    let limits = guard.sessions.limits();
    if bytes.len() > limits.max_initialize_bytes {
        return Error::TooLarge(limits.max_initialize_bytes).into_response();
    }
    let reservation = match guard.sessions.reserve(owner) {
        Ok(r) => r,
        Err(e) => return refusal(&e, limits).into_response(),
    };
    reservation.scope(next.run(req)).await
}

/// The answer to an `initialize` with no place for its session.
fn refusal(e: &SessionError, limits: &McpLimits) -> Error {
    let retry_after_s = limits.init_timeout.as_secs().max(1);
    match e {
        SessionError::PerToken { max } => Error::TooManyRequests {
            detail: format!(
                "this token already holds {max} live MCP sessions, the most it may; end one (DELETE /mcp with its Mcp-Session-Id) or let one expire ({} s idle)",
                limits.idle_timeout.as_secs()
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
