//! Task-completion webhooks per the Standard Webhooks spec: `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! id.timestamp.body>` keyed by the endpoint's `whsec_...` secret (returned
//! once, at registration). Deliveries retry with exponential backoff and
//! jitter on non-2xx answers and timeouts; 410 disables the endpoint. Targets
//! that resolve to loopback, private, link-local or other non-public
//! addresses are refused at registration and again at connect time (DNS
//! answers are checked by the HTTP client's resolver, IP literals before each
//! attempt), redirects are never followed, unless an allow-list CIDR covers
//! the address ([`ssrf`]).
//!
//! Registrations and every attempt are stored in the runtime's database
//! before they are acknowledged or recorded, so a restarted server shows them
//! again and resumes deliveries that were waiting or retrying, with the same
//! `webhook-id` (receivers deduplicate on it).

mod ssrf;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;
use utoipa::ToSchema;

use super::extract::ApiJson;
use super::tasks::parse_id;
use super::{ApiConfig, ApiState, Error};
use crate::runtime::Runtime;
use crate::store::{self, Store, Table};
use crate::task::{TaskId, TaskStatus};

pub use self::ssrf::Cidr;
use self::ssrf::{allowed, check_target, refusal, GuardedResolver};

/// The state of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookState {
    /// Waiting for the task to finish.
    Waiting,
    /// Delivering (or between retries).
    Delivering,
    /// Delivered (a 2xx answer).
    Delivered,
    /// Every attempt failed.
    Failed,
    /// The endpoint answered 410 Gone.
    Disabled,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    /// When it started (RFC 3339).
    pub at: String,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// Why it failed, when it did not get an answer.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
}

/// A webhook registration as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    /// Its id.
    pub webhook_id: String,
    /// The task it reports on.
    pub task_id: TaskId,
    /// Where deliveries go.
    pub webhook_url: String,
    /// Where it is.
    pub state: WebhookState,
    /// The message id every attempt carries (`webhook-id`).
    pub message_id: String,
    /// Attempts so far.
    pub attempts: Vec<Attempt>,
    /// The signing secret; only in the registration response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Registration {
    view: WebhookView,
    #[serde(with = "key_b64")]
    key: Vec<u8>,
}

mod key_b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(key: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(key))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

struct Settings {
    allow: Arc<Vec<Cidr>>,
    max_attempts: u32,
    backoff: Duration,
}

/// Registrations and their deliveries.
pub(crate) struct Webhooks {
    registrations: Arc<DashMap<String, Arc<Mutex<Registration>>>>,
    /// What every delivery uses, shared with the delivery tasks.
    ctx: DeliveryCtx,
}

impl Webhooks {
    /// The webhooks of `runtime`'s data dir; deliveries that were waiting or
    /// retrying when the server stopped start again.
    pub(crate) fn new(config: &ApiConfig, runtime: &Runtime) -> Webhooks {
        let allow = Arc::new(config.webhook_allow.clone());
        let client = reqwest::Client::builder()
            // Never through HTTP(S)_PROXY / ALL_PROXY: the guard checks the
            // address the delivery connects to, which a proxy would hide.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.webhook_timeout)
            .dns_resolver(Arc::new(GuardedResolver {
                allow: allow.clone(),
            }))
            .user_agent(concat!("modal-agents/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS backend is compiled in");
        let hooks = Webhooks {
            registrations: Arc::default(),
            ctx: DeliveryCtx {
                settings: Arc::new(Settings {
                    allow,
                    max_attempts: config.webhook_max_attempts.max(1),
                    backoff: config.webhook_backoff,
                }),
                client,
                delivered: Arc::default(),
                failed: Arc::default(),
                store: runtime.store().clone(),
            },
        };
        match hooks
            .ctx
            .store
            .all::<Registration>(Table::Webhooks, "webhook")
        {
            Ok(stored) => {
                for (id, registration) in stored {
                    let pending = matches!(
                        registration.view.state,
                        WebhookState::Waiting | WebhookState::Delivering
                    );
                    let registration = Arc::new(Mutex::new(registration));
                    hooks.registrations.insert(id, registration.clone());
                    if pending {
                        tokio::spawn(deliver(runtime.clone(), hooks.ctx.clone(), registration));
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "stored webhooks could not be read"),
        }
        // Registrations of tasks retention removed (while the server was down,
        // or from now on) go with them.
        let known = |task: TaskId| runtime.status(task).is_ok();
        prune(&hooks.registrations, &hooks.ctx.store, |task| !known(task));
        let mut forgotten = runtime.subscribe_forgotten();
        let (registrations, store) = (hooks.registrations.clone(), hooks.ctx.store.clone());
        tokio::spawn(async move {
            loop {
                match forgotten.recv().await {
                    Ok(ids) => {
                        let (registrations, store) = (registrations.clone(), store.clone());
                        // The database write is blocking.
                        let _ = tokio::task::spawn_blocking(move || {
                            let ids: std::collections::HashSet<TaskId> =
                                ids.iter().copied().collect();
                            prune(&registrations, &store, |task| ids.contains(&task));
                        })
                        .await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            missed,
                            "retention batches missed; the next start prunes them"
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        hooks
    }

    /// `(delivered, failed)` deliveries so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.ctx.delivered.load(Ordering::Relaxed),
            self.ctx.failed.load(Ordering::Relaxed),
        )
    }
}

/// Removes finished registrations of the tasks `gone` selects, from memory
/// and the database.
fn prune(
    registrations: &DashMap<String, Arc<Mutex<Registration>>>,
    store: &Arc<Store>,
    gone: impl Fn(TaskId) -> bool,
) {
    let ids: Vec<String> = registrations
        .iter()
        .filter(|r| {
            let r = r.value().lock().unwrap_or_else(|p| p.into_inner());
            !matches!(
                r.view.state,
                WebhookState::Waiting | WebhookState::Delivering
            ) && gone(r.view.task_id)
        })
        .map(|r| r.key().clone())
        .collect();
    if ids.is_empty() {
        return;
    }
    for id in &ids {
        registrations.remove(id);
    }
    let writes = ids
        .into_iter()
        .map(|id| store::Write::Delete(Table::Webhooks, id))
        .collect();
    if let Err(error) = store.apply(writes) {
        tracing::warn!(%error, "could not remove the webhooks of removed tasks");
    }
}

/// The Standard Webhooks signature of `id.timestamp.body`.
pub(crate) fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

async fn deliver(runtime: Runtime, hooks: DeliveryCtx, registration: Arc<Mutex<Registration>>) {
    let (task_id, url, key, message_id, done) = {
        let r = registration.lock().unwrap_or_else(|p| p.into_inner());
        (
            r.view.task_id,
            r.view.webhook_url.clone(),
            r.key.clone(),
            r.view.message_id.clone(),
            r.view.attempts.len() as u32,
        )
    };
    let Ok(record) = runtime.wait(task_id, None).await else {
        return;
    };
    let kind = if record.status == TaskStatus::Completed {
        "task.completed"
    } else {
        "task.failed"
    };
    let body = serde_json::to_vec(&json!({
        "type": kind,
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "data": {"task_id": record.task_id, "function_name": record.function_name, "status": record.status},
    }))
    .expect("JSON serializes");
    let set_state = |state| {
        registration
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .view
            .state = state
    };
    set_state(WebhookState::Delivering);
    hooks.persist(&registration).await;
    let settings = &hooks.settings;
    // Attempts made before a restart count.
    for n in (done + 1)..=settings.max_attempts {
        let started = Instant::now();
        let at = chrono::Utc::now();
        let outcome = attempt(&hooks, &url, &key, &message_id, at.timestamp(), &body).await;
        let (status, error) = match &outcome {
            Ok(s) => (Some(s.as_u16()), None),
            Err(e) => (None, Some(e.clone())),
        };
        registration
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .view
            .attempts
            .push(Attempt {
                at: at.to_rfc3339(),
                status,
                error,
                duration_ms: started.elapsed().as_millis() as u64,
            });
        match outcome {
            Ok(s) if s.is_success() => {
                set_state(WebhookState::Delivered);
                hooks.persist(&registration).await;
                hooks.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(StatusCode::GONE) => {
                tracing::info!(%url, "webhook endpoint answered 410; disabled");
                set_state(WebhookState::Disabled);
                hooks.persist(&registration).await;
                return;
            }
            _ => hooks.persist(&registration).await,
        }
        if n == settings.max_attempts {
            break;
        }
        let base = settings.backoff.as_secs_f64() * 2f64.powi(n as i32 - 1);
        let jittered = base * (0.75 + fastrand::f64() * 0.5);
        tokio::time::sleep(Duration::from_secs_f64(jittered.min(600.0))).await;
    }
    tracing::warn!(%url, attempts = settings.max_attempts, "webhook delivery failed");
    set_state(WebhookState::Failed);
    hooks.persist(&registration).await;
    hooks.failed.fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone)]
struct DeliveryCtx {
    settings: Arc<Settings>,
    client: reqwest::Client,
    delivered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    store: Arc<Store>,
}

impl DeliveryCtx {
    /// [`DeliveryCtx::save`], logging a failure (the delivery goes on; a
    /// restart may then repeat an attempt, with the same `webhook-id`).
    async fn persist(&self, registration: &Mutex<Registration>) {
        if let Err(e) = self.save(registration).await {
            tracing::error!(error = %e, "could not store a webhook's progress");
        }
    }

    /// Stores the registration as it is now (fsynced).
    async fn save(&self, registration: &Mutex<Registration>) -> Result<(), crate::StoreError> {
        let write = {
            let r = registration.lock().unwrap_or_else(|p| p.into_inner());
            store::put(Table::Webhooks, r.view.webhook_id.clone(), &*r)
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.apply(vec![write]))
            .await
            .map_err(|e| crate::StoreError::Io(std::io::Error::other(e.to_string())))?
    }
}

async fn attempt(
    hooks: &DeliveryCtx,
    url: &str,
    key: &[u8],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<StatusCode, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    // IP literals skip the resolver: check them here, before connecting.
    if let Some(host) = parsed.host_str() {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            if !allowed(ip, &hooks.settings.allow) {
                return Err(refusal(ip));
            }
        }
    }
    let response = hooks
        .client
        .post(parsed)
        .header(header::CONTENT_TYPE, "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", sign(key, id, timestamp, body))
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg = format!("{msg}: {s}");
                source = s.source();
            }
            msg
        })?;
    Ok(StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY))
}

/// The seed's webhook registration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookRequest {
    task_id: String,
    webhook_url: String,
}

/// Register a webhook for a task's completion or failure.
#[utoipa::path(post, path = "/webhook", request_body = WebhookRequest,
    responses((status = 201, body = WebhookView, description = "the secret is shown only here"),
              (status = 404, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn register(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<WebhookRequest>,
) -> Result<Response, Error> {
    let task_id = parse_id(&req.task_id)?;
    state.runtime.status(task_id)?;
    let hooks = &state.webhooks;
    check_target(&req.webhook_url, &hooks.ctx.settings.allow)
        .await
        .map_err(|why| Error::invalid("webhook_url", why))?;
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let view = WebhookView {
        webhook_id: format!("wh_{}", uuid::Uuid::new_v4().simple()),
        task_id,
        webhook_url: req.webhook_url,
        state: WebhookState::Waiting,
        message_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        attempts: Vec::new(),
        secret: None,
    };
    let registration = Arc::new(Mutex::new(Registration {
        view: view.clone(),
        key: key.to_vec(),
    }));
    let ctx = hooks.ctx.clone();
    ctx.save(&registration)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    hooks
        .registrations
        .insert(view.webhook_id.clone(), registration.clone());
    tokio::spawn(deliver(state.runtime.clone(), ctx, registration));
    let mut shown = view;
    shown.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(shown)).into_response())
}

/// A registration and its delivery attempts (the secret is never shown again).
#[utoipa::path(get, path = "/webhooks/{webhook_id}", responses((status = 200, body = WebhookView), (status = 404, body = super::Problem)))]
pub(crate) async fn get_one(
    State(state): State<ApiState>,
    Path(webhook_id): Path<String>,
) -> Result<Json<WebhookView>, Error> {
    state
        .webhooks
        .registrations
        .get(&webhook_id)
        .map(|r| Json(r.lock().unwrap_or_else(|p| p.into_inner()).view.clone()))
        .ok_or_else(|| Error::NotFound(format!("no webhook {webhook_id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_spec_example() {
        // The Standard Webhooks reference example.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
