//! Request extraction that answers every rejection as problem+json: JSON
//! bodies (content type, size, syntax, shape with the field at fault) and
//! `Idempotency-Key` replay for the POSTs that create work.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::{ApiState, Error};

/// A JSON body, parsed strictly.
pub(crate) struct ApiJson<T>(pub(crate) T);

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|v| {
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        })
}

/// Parses JSON, naming the field at fault for shape errors.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return Error::BadRequest(format!("malformed JSON: {inner}"));
        }
        let path = e.path().to_string();
        let message = inner.to_string();
        let field = if path == "." {
            message.split('`').nth(1).unwrap_or("(body)").to_owned()
        } else {
            path
        };
        Error::invalid(field, message)
    })?;
    de.end()
        .map_err(|e| Error::BadRequest(format!("malformed JSON: {e}")))?;
    Ok(value)
}

impl<T: DeserializeOwned> FromRequest<ApiState> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Error> {
        if !is_json(req.headers()) {
            return Err(Error::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::TooLarge(state.config.body_limit)
            } else {
                Error::BadRequest(e.body_text())
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A raw body within the size limit (for file uploads).
pub(crate) struct RawBody(pub(crate) Bytes);

impl FromRequest<ApiState> for RawBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Error> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::TooLarge(state.config.body_limit)
                } else {
                    Error::BadRequest(e.body_text())
                }
            })
    }
}

enum Entry {
    InFlight {
        hash: [u8; 32],
    },
    Done {
        hash: [u8; 32],
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        at: Instant,
    },
}

/// Remembered responses by (credential, key).
#[derive(Default)]
pub(crate) struct IdempotencyStore {
    entries: DashMap<(String, String), Arc<Mutex<Entry>>>,
}

/// How long a key is remembered.
const KEEP: Duration = Duration::from_secs(24 * 3600);
/// Most keys remembered; older ones are forgotten first.
const MAX_KEYS: usize = 100_000;

impl IdempotencyStore {
    fn prune(&self) {
        if self.entries.len() < MAX_KEYS {
            return;
        }
        self.entries
            .retain(|_, e| match &*e.lock().unwrap_or_else(|p| p.into_inner()) {
                Entry::Done { at, .. } => at.elapsed() < KEEP,
                Entry::InFlight { .. } => true,
            });
    }
}

/// Middleware: with an `Idempotency-Key`, a replay of the same request gets
/// the first response; the same key with another body gets 422; a replay
/// while the first is still running gets 409.
pub(crate) async fn idempotency(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(key) = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return next.run(req).await;
    };
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    if key.is_empty() || key.len() > 255 {
        return Error::invalid("Idempotency-Key", "expected 1 to 255 characters").into_response();
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, state.config.body_limit).await {
        Ok(b) => b,
        Err(_) => return Error::TooLarge(state.config.body_limit).into_response(),
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update(parts.uri.path());
    hasher.update(&bytes);
    let hash: [u8; 32] = hasher.finalize().into();
    let credential = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| hex(&Sha256::digest(v.as_bytes())))
        .unwrap_or_default();
    let store = &state.idempotency;
    store.prune();
    let slot = Arc::new(Mutex::new(Entry::InFlight { hash }));
    let existing = match store.entries.entry((credential.clone(), key.clone())) {
        dashmap::Entry::Occupied(o) => Some(o.get().clone()),
        dashmap::Entry::Vacant(v) => {
            v.insert(slot.clone());
            None
        }
    };
    if let Some(existing) = existing {
        let entry = existing.lock().unwrap_or_else(|p| p.into_inner());
        match &*entry {
            Entry::Done { hash: h, .. } | Entry::InFlight { hash: h } if *h != hash => {
                return Error::invalid(
                    "Idempotency-Key",
                    "this key was used with a different request; use a new key",
                )
                .into_response();
            }
            Entry::Done {
                status,
                headers,
                body,
                ..
            } => {
                let mut response = (*status, body.clone()).into_response();
                *response.headers_mut() = headers.clone();
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return response;
            }
            Entry::InFlight { .. } => {
                return Error::Conflict(
                    "a request with this Idempotency-Key is still in progress".into(),
                )
                .into_response();
            }
        }
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (resp_parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            store.entries.remove(&(credential, key));
            return Error::Internal(format!("buffering a response: {e}")).into_response();
        }
    };
    if resp_parts.status.is_server_error() {
        store.entries.remove(&(credential, key));
    } else {
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Entry::Done {
            hash,
            status: resp_parts.status,
            headers: resp_parts.headers.clone(),
            body: body.clone(),
            at: Instant::now(),
        };
    }
    Response::from_parts(resp_parts, Body::from(body))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
