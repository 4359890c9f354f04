//! `Idempotency-Key` replay for the POSTs that create work.
//!
//! A request with a key runs to the end even if its client goes away (it is
//! spawned, not cancelled with the connection), so a retry after a dropped
//! connection gets the first response instead of creating the work twice,
//! and never a 409 forever. Remembered responses are kept 24 hours within a
//! byte budget, forgotten oldest first with constant work per request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use sha2::{Digest, Sha256};

use super::{ApiState, Error};
use crate::sync::Recover;

/// How long a key is remembered.
const KEEP: Duration = Duration::from_secs(24 * 3600);
/// Most keys remembered.
const MAX_KEYS: usize = 100_000;
/// Most response bytes remembered in all.
const MAX_BYTES: usize = 64 << 20;
/// Largest response remembered whole; a larger one is remembered as done
/// (a retry is told so, and does not run the request again).
const MAX_REPLAYED: usize = 4 << 20;

enum Entry {
    InFlight {
        hash: [u8; 32],
    },
    Done {
        hash: [u8; 32],
        status: StatusCode,
        headers: HeaderMap,
        /// `None` when it was too large to keep.
        body: Option<Bytes>,
    },
}

type Key = (String, String);
type Slot = Arc<Mutex<Entry>>;
/// A finished entry in the forgetting order: when, its key and slot, bytes.
type Finished = (Instant, Key, Slot, usize);

/// Remembered responses by (credential, key).
#[derive(Default)]
pub(crate) struct IdempotencyStore {
    entries: DashMap<Key, Slot>,
    /// Finished entries, oldest first.
    order: Mutex<VecDeque<Finished>>,
    bytes: AtomicUsize,
}

impl IdempotencyStore {
    /// Records a finished entry, then forgets what is past its time, the
    /// key count or the byte budget, oldest first.
    fn finished(&self, key: Key, slot: Slot, size: usize) {
        let mut order = self.order.lock().recover();
        self.bytes.fetch_add(size, Ordering::Relaxed);
        order.push_back((Instant::now(), key, slot, size));
        self.expire(&mut order);
    }

    fn expire(&self, order: &mut VecDeque<Finished>) {
        while let Some((at, _, _, _)) = order.front() {
            let over = order.len() > MAX_KEYS || self.bytes.load(Ordering::Relaxed) > MAX_BYTES;
            if !over && at.elapsed() < KEEP {
                break;
            }
            let Some((_, key, slot, size)) = order.pop_front() else {
                break;
            };
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            // Only this entry: the key may have been used again since.
            self.entries
                .remove_if(&key, |_, current| Arc::ptr_eq(current, &slot));
        }
    }

    /// Forgets what is past its time (constant work per call, amortized).
    fn expire_now(&self) {
        let mut order = self.order.lock().recover();
        self.expire(&mut order);
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
    let read = axum::body::to_bytes(body, state.config.body_limit);
    let bytes = match tokio::time::timeout(super::extract::BODY_READ_TIMEOUT, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return Error::TooLarge(state.config.body_limit).into_response(),
        Err(_) => {
            return Error::BadRequest(format!(
                "the request body did not arrive within {} s",
                super::extract::BODY_READ_TIMEOUT.as_secs()
            ))
            .into_response()
        }
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
    let key = (credential, key);
    state.idempotency.expire_now();
    let slot = Arc::new(Mutex::new(Entry::InFlight { hash }));
    let existing = match state.idempotency.entries.entry(key.clone()) {
        dashmap::Entry::Occupied(o) => Some(o.get().clone()),
        dashmap::Entry::Vacant(v) => {
            v.insert(slot.clone());
            None
        }
    };
    if let Some(existing) = existing {
        return replay(&existing.lock().recover(), hash);
    }
    // Run to the end whatever the client does, so the outcome is known.
    let request = Request::from_parts(parts, Body::from(bytes));
    let store = state.clone();
    let (ours, our_key) = (slot.clone(), key.clone());
    let run = tokio::spawn(async move {
        let response = next.run(request).await;
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await;
        let idempotency = &store.idempotency;
        match body {
            Ok(body) if !parts.status.is_server_error() => {
                let kept = (body.len() <= MAX_REPLAYED).then(|| body.clone());
                let size = kept.as_ref().map_or(0, Bytes::len);
                *slot.lock().recover() = Entry::Done {
                    hash,
                    status: parts.status,
                    headers: parts.headers.clone(),
                    body: kept,
                };
                idempotency.finished(key, slot, size);
                Ok((parts, body))
            }
            // A server error may go better next time: the key is free again.
            Ok(body) => {
                idempotency.entries.remove(&key);
                Ok((parts, body))
            }
            Err(e) => {
                idempotency.entries.remove(&key);
                Err(e.to_string())
            }
        }
    });
    match run.await {
        Ok(Ok((parts, body))) => Response::from_parts(parts, Body::from(body)),
        Ok(Err(e)) => Error::Internal(format!("buffering a response: {e}")).into_response(),
        Err(e) => {
            // The handler panicked: the key is free again.
            state
                .idempotency
                .entries
                .remove_if(&our_key, |_, current| Arc::ptr_eq(current, &ours));
            Error::Internal(format!("request handler failed: {e}")).into_response()
        }
    }
}

/// The answer to a request whose key was seen before.
fn replay(entry: &Entry, hash: [u8; 32]) -> Response {
    match entry {
        Entry::Done { hash: h, .. } | Entry::InFlight { hash: h } if *h != hash => Error::invalid(
            "Idempotency-Key",
            "this key was used with a different request; use a new key",
        )
        .into_response(),
        Entry::Done {
            status,
            headers,
            body: Some(body),
            ..
        } => {
            let mut response = (*status, body.clone()).into_response();
            *response.headers_mut() = headers.clone();
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
        Entry::Done { body: None, .. } => Error::Conflict(
            "a request with this Idempotency-Key already ran; its response was too large to keep for replay"
                .into(),
        )
        .into_response(),
        Entry::InFlight { .. } => Error::Conflict(
            "a request with this Idempotency-Key is still in progress".into(),
        )
        .into_response(),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembered bytes stay within the budget, oldest forgotten first,
    /// without a scan of every key.
    #[test]
    fn the_store_keeps_to_its_byte_budget() {
        let store = IdempotencyStore::default();
        let size = MAX_REPLAYED;
        for i in 0..40 {
            let key = (String::new(), format!("k{i}"));
            let slot = Arc::new(Mutex::new(Entry::InFlight { hash: [0; 32] }));
            store.entries.insert(key.clone(), slot.clone());
            store.finished(key, slot, size);
            assert!(store.bytes.load(Ordering::Relaxed) <= MAX_BYTES);
        }
        assert_eq!(store.entries.len(), MAX_BYTES / size);
        assert!(!store.entries.contains_key(&(String::new(), "k0".into())));
        assert!(store.entries.contains_key(&(String::new(), "k39".into())));
    }
}
