//! Task-completion and sandbox-lifetime webhooks per the Standard Webhooks
//! spec: `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! id.timestamp.body>` keyed by the endpoint's `whsec_...` secret (returned
//! once, at registration). Deliveries retry with exponential backoff and
//! jitter on non-2xx answers and timeouts; 410 disables the endpoint. Targets
//! that resolve to loopback, private, link-local or other non-public
//! addresses are refused at registration and again at connect time (DNS
//! answers are checked by the HTTP client's resolver, IP literals before each
//! attempt), redirects are never followed, unless an allow-list CIDR covers
//! the address (the `ssrf` module).
//!
//! A task's registration sends one message (`task.completed` or
//! `task.failed`). A sandbox's sends one per event of its life:
//! `sandbox.expiring` when its lifetime comes within the notice, then
//! `sandbox.ended` with the reason, which ends the registration; an
//! `expiring` message still being retried when the sandbox ends is given up
//! for the `ended` one.
//!
//! Registrations and every attempt are stored in the runtime's database
//! before they are acknowledged or recorded, so a restarted runtime shows
//! them again and resumes deliveries that were waiting or retrying, with the
//! same `webhook-id` (receivers deduplicate on it).
//!
//! [`Webhooks`] is a service of the runtime, not of the HTTP app: an embedded
//! runtime starts it with [`Webhooks::start`] and delivers without serving
//! HTTP; `POST /webhook` and `GET /webhooks/{id}` are thin handlers over it.
//! Deliveries run as the runtime's background jobs and stop with it (a
//! delivery cut short resumes at the next start).

mod ssrf;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;

use crate::runtime::Runtime;
use crate::store::{self, Store, Table};
use crate::task::{TaskId, TaskStatus};
use crate::wire::{Webhook, WebhookAttempt, WebhookState};

pub use self::ssrf::Cidr;
use self::ssrf::{allowed, check_target, refusal, GuardedResolver};
use crate::sync::Recover;

/// Settings of the webhook service.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Non-public targets allowed anyway (default none).
    pub allow: Vec<Cidr>,
    /// Attempts per delivery before it is given up (default 8).
    pub max_attempts: u32,
    /// First retry delay, doubled per attempt with jitter, at most 10
    /// minutes (default 1 s).
    pub backoff: Duration,
    /// Bound on one attempt (default 10 s).
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            allow: Vec::new(),
            max_attempts: 8,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why a webhook could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// No task has that id.
    #[error(transparent)]
    Task(#[from] Box<crate::runtime::RuntimeError>),
    /// The target is not one deliveries may go to.
    #[error("{0}")]
    Target(String),
    /// No sandbox has that id.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// The task or sandbox has as many registrations as it may.
    #[error("{target} already has {MAX_PER_TARGET} webhook registrations, the most one task or sandbox may have")]
    TooMany {
        /// `task ID` or `sandbox ID`.
        target: String,
    },
    /// The registration could not be stored.
    #[error(transparent)]
    Storage(#[from] crate::store::StoreError),
}

/// Most registrations one task or one sandbox may have.
pub const MAX_PER_TARGET: usize = 32;
/// Attempts a sandbox's registration keeps (its latest); a task's has at
/// most `max_attempts`.
const KEPT_ATTEMPTS: usize = 64;
/// Longest failure kept per attempt.
const MAX_ERROR_BYTES: usize = 512;

/// What a registration reports on.
#[derive(Clone, PartialEq)]
enum Target {
    Task(TaskId),
    Sandbox(String),
}

impl Target {
    fn of(view: &Webhook) -> Option<Target> {
        match (&view.task_id, &view.sandbox_id) {
            (Some(task), _) => Some(Target::Task(*task)),
            (None, Some(sandbox)) => Some(Target::Sandbox(sandbox.clone())),
            (None, None) => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Task(id) => write!(f, "task {id}"),
            Target::Sandbox(id) => write!(f, "sandbox {id}"),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredWebhook {
    view: Webhook,
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

/// Registrations and their deliveries: the runtime's webhook service.
#[derive(Clone)]
pub struct Webhooks {
    runtime: Runtime,
    registrations: Arc<DashMap<String, Arc<Mutex<StoredWebhook>>>>,
    /// Held from a registration's count to its insertion, so concurrent
    /// ones cannot pass the per-target ceiling together.
    registering: Arc<tokio::sync::Mutex<()>>,
    /// What every delivery uses, shared with the delivery tasks.
    ctx: DeliveryCtx,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("registrations", &self.registrations.len())
            .finish()
    }
}

impl Webhooks {
    /// The webhook service of `runtime` (its data dir's registrations):
    /// deliveries that were waiting or retrying when it last stopped start
    /// again. Start it once per runtime: [`api::app`](crate::api::app)
    /// starts one for the runtime it serves, so an embedder that serves the
    /// app uses that one (a second would resume the same deliveries twice).
    pub fn start(runtime: &Runtime, config: WebhookConfig) -> Webhooks {
        let allow = Arc::new(config.allow);
        let client = reqwest::Client::builder()
            // Never through HTTP(S)_PROXY / ALL_PROXY: the guard checks the
            // address the delivery connects to, which a proxy would hide.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .dns_resolver(Arc::new(GuardedResolver {
                allow: allow.clone(),
            }))
            .user_agent(concat!("modal-agents/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS backend is compiled in");
        let hooks = Webhooks {
            runtime: runtime.clone(),
            registrations: Arc::default(),
            registering: Arc::default(),
            ctx: DeliveryCtx {
                settings: Arc::new(Settings {
                    allow,
                    max_attempts: config.max_attempts.max(1),
                    backoff: config.backoff,
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
            .all::<StoredWebhook>(Table::Webhooks, "webhook")
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
                        runtime.spawn_service(deliver(
                            runtime.clone(),
                            hooks.ctx.clone(),
                            registration,
                        ));
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "stored webhooks could not be read"),
        }
        // Registrations of tasks retention removed (while the server was down,
        // or from now on) go with them, and those of forgotten sandboxes.
        prune(&hooks.registrations, &hooks.ctx.store, |view| {
            hooks.target_gone(view)
        });
        let mut forgotten = runtime.subscribe_forgotten();
        let (registrations, store) = (hooks.registrations.clone(), hooks.ctx.store.clone());
        runtime.spawn_service(async move {
            loop {
                match forgotten.recv().await {
                    Ok(ids) => {
                        let (registrations, store) = (registrations.clone(), store.clone());
                        // The database write is blocking.
                        let _ = tokio::task::spawn_blocking(move || {
                            let ids: std::collections::HashSet<TaskId> =
                                ids.iter().copied().collect();
                            prune(&registrations, &store, |view| {
                                view.task_id.is_some_and(|task| ids.contains(&task))
                            });
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

    /// Registers a webhook for task `task_id`'s completion or failure,
    /// stored before this returns; the view carries the signing secret
    /// (shown only here).
    pub async fn register(&self, task_id: TaskId, url: &str) -> Result<Webhook, WebhookError> {
        self.runtime.status(task_id).map_err(Box::new)?;
        self.register_for(Target::Task(task_id), url).await
    }

    /// Registers a webhook for sandbox `sandbox_id`'s life:
    /// `sandbox.expiring` (at once if it is within the notice already), then
    /// `sandbox.ended`. Stored before this returns, as [`Webhooks::register`].
    pub async fn register_sandbox(
        &self,
        sandbox_id: &str,
        url: &str,
    ) -> Result<Webhook, WebhookError> {
        self.runtime.sandboxes().view(sandbox_id)?;
        self.register_for(Target::Sandbox(sandbox_id.to_owned()), url)
            .await
    }

    /// Whether the task or sandbox `view` reports on is gone.
    fn target_gone(&self, view: &Webhook) -> bool {
        match Target::of(view) {
            Some(Target::Task(task)) => self.runtime.status(task).is_err(),
            Some(Target::Sandbox(id)) => self.runtime.sandboxes().view(&id).is_err(),
            None => true,
        }
    }

    async fn register_for(&self, target: Target, url: &str) -> Result<Webhook, WebhookError> {
        if let Target::Sandbox(_) = target {
            // Sandboxes are forgotten without a notice: their finished
            // registrations go here (and at each start).
            let (registrations, store, me) = (
                self.registrations.clone(),
                self.ctx.store.clone(),
                self.clone(),
            );
            let _ = tokio::task::spawn_blocking(move || {
                prune(&registrations, &store, |view| {
                    view.sandbox_id.is_some() && me.target_gone(view)
                })
            })
            .await;
        }
        check_target(url, &self.ctx.settings.allow)
            .await
            .map_err(WebhookError::Target)?;
        let _one_at_a_time = self.registering.lock().await;
        let held = self
            .registrations
            .iter()
            .filter(|r| Target::of(&r.value().lock().recover().view).as_ref() == Some(&target))
            .count();
        if held >= MAX_PER_TARGET {
            return Err(WebhookError::TooMany {
                target: target.to_string(),
            });
        }
        let mut key = [0u8; 24];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        let (task_id, sandbox_id) = match target {
            Target::Task(id) => (Some(id), None),
            Target::Sandbox(id) => (None, Some(id)),
        };
        let view = Webhook {
            webhook_id: format!("wh_{}", uuid::Uuid::new_v4().simple()),
            task_id,
            sandbox_id,
            webhook_url: url.to_owned(),
            state: WebhookState::Waiting,
            message_id: message_id(),
            attempts: Vec::new(),
            secret: None,
        };
        let registration = Arc::new(Mutex::new(StoredWebhook {
            view: view.clone(),
            key: key.to_vec(),
        }));
        self.ctx.save(&registration).await?;
        self.registrations
            .insert(view.webhook_id.clone(), registration.clone());
        self.runtime.spawn_service(deliver(
            self.runtime.clone(),
            self.ctx.clone(),
            registration,
        ));
        Ok(Webhook {
            secret: Some(secret),
            ..view
        })
    }

    /// A registration and its attempts (never its secret).
    pub fn get(&self, webhook_id: &str) -> Option<Webhook> {
        self.registrations
            .get(webhook_id)
            .map(|r| r.lock().recover().view.clone())
    }

    /// `(delivered, failed)` deliveries so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ctx.delivered.load(Ordering::Relaxed),
            self.ctx.failed.load(Ordering::Relaxed),
        )
    }
}

/// Removes finished registrations whose task or sandbox `gone` says is
/// gone, from memory and the database.
fn prune(
    registrations: &DashMap<String, Arc<Mutex<StoredWebhook>>>,
    store: &Arc<Store>,
    gone: impl Fn(&Webhook) -> bool,
) {
    let ids: Vec<String> = registrations
        .iter()
        .filter(|r| {
            let r = r.value().lock().recover();
            !matches!(
                r.view.state,
                WebhookState::Waiting | WebhookState::Delivering
            ) && gone(&r.view)
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
fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn message_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

async fn deliver(runtime: Runtime, hooks: DeliveryCtx, registration: Arc<Mutex<StoredWebhook>>) {
    let target = Target::of(&registration.lock().recover().view);
    let end = match target {
        Some(Target::Task(id)) => deliver_task(&runtime, &hooks, &registration, id).await,
        Some(Target::Sandbox(id)) => deliver_sandbox(&runtime, &hooks, &registration, &id).await,
        None => Some(Sent::Failed),
    };
    let Some(end) = end else { return };
    let state = match end {
        Sent::Delivered => WebhookState::Delivered,
        Sent::Disabled => WebhookState::Disabled,
        Sent::Failed | Sent::GivenUp => WebhookState::Failed,
    };
    registration.lock().recover().view.state = state;
    hooks.persist(&registration).await;
}

/// The one message of a task's registration, once the task has finished;
/// `None` if the task went away first.
async fn deliver_task(
    runtime: &Runtime,
    hooks: &DeliveryCtx,
    registration: &Arc<Mutex<StoredWebhook>>,
    task_id: TaskId,
) -> Option<Sent> {
    let record = runtime.wait(task_id, None).await.ok()?;
    let kind = if record.status == TaskStatus::Completed {
        "task.completed"
    } else {
        "task.failed"
    };
    let data = json!({"task_id": record.task_id, "function_name": record.function_name, "status": record.status});
    // Attempts made before a restart count.
    let (id, done) = {
        let r = registration.lock().recover();
        (r.view.message_id.clone(), r.view.attempts.len() as u32)
    };
    Some(send(hooks, registration, kind, &data, id, done, || false).await)
}

/// The messages of a sandbox's registration: `sandbox.expiring` (once per
/// expiry time), then `sandbox.ended`, which ends it. `None` if the
/// runtime stops first (a restart resumes it, and the sandbox is then
/// ended `runtime_restarted`).
async fn deliver_sandbox(
    runtime: &Runtime,
    hooks: &DeliveryCtx,
    registration: &Arc<Mutex<StoredWebhook>>,
    sandbox_id: &str,
) -> Option<Sent> {
    let sandboxes = runtime.sandboxes();
    let Ok((now, mut events)) = sandboxes.events(sandbox_id) else {
        tracing::warn!(sandbox = %sandbox_id, "a webhook's sandbox is gone; nothing to deliver");
        return Some(Sent::Failed);
    };
    // An `ended` message cut short by a restart goes on under its id.
    let resumed = {
        let r = registration.lock().recover();
        let tries = r
            .view
            .attempts
            .iter()
            .rev()
            .take_while(|a| a.event.as_deref() == Some(ENDED))
            .count() as u32;
        (r.view.state == WebhookState::Delivering && tries > 0)
            .then(|| (r.view.message_id.clone(), tries))
    };
    // The first message goes under the id the registration answered with.
    let mut first_id = {
        let r = registration.lock().recover();
        r.view
            .attempts
            .is_empty()
            .then(|| r.view.message_id.clone())
    };
    let mut fresh_id = move || first_id.take().unwrap_or_else(message_id);
    let notice = chrono::Duration::from_std(sandboxes.expiring_notice()).unwrap_or_default();
    let mut warned_for = None;
    let mut next = Some(now);
    loop {
        let event = match next.take() {
            Some(view) => view,
            None => match events.recv().await {
                Ok(event) => event.sandbox,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                // The sandbox left the registry: what it is now.
                Err(tokio::sync::broadcast::error::RecvError::Closed) => sandboxes
                    .view(sandbox_id)
                    .ok()
                    .filter(|v| v.ended.is_some())?,
            },
        };
        // What is true now, not what an event waiting in the channel (or a
        // delivery retried meanwhile) said: an ended sandbox is never
        // announced as expiring, nor an expiry a keepalive moved.
        let view = match event.ended {
            Some(_) => event,
            None => sandboxes.view(sandbox_id).unwrap_or(event),
        };
        if view.ended.is_none() && view.expires_at - chrono::Utc::now() > notice {
            continue;
        }
        let data = json!({
            "sandbox_id": view.sandbox_id,
            "name": view.name,
            "state": view.state,
            "expires_at": view.expires_at,
            "ended": view.ended,
        });
        if view.ended.is_some() {
            let (id, done) = resumed.clone().unwrap_or_else(|| (fresh_id(), 0));
            return Some(send(hooks, registration, ENDED, &data, id, done, || false).await);
        }
        // Once per expiry time (the sandbox itself warns once per entry
        // into the notice).
        if warned_for == Some(view.expires_at) {
            continue;
        }
        warned_for = Some(view.expires_at);
        let expires_at = view.expires_at;
        let stale = || {
            sandboxes
                .view(sandbox_id)
                .map_or(true, |v| v.ended.is_some() || v.expires_at != expires_at)
        };
        let sent = send(hooks, registration, EXPIRING, &data, fresh_id(), 0, stale).await;
        if sent == Sent::Disabled {
            return Some(sent);
        }
        registration.lock().recover().view.state = WebhookState::Waiting;
        hooks.persist(registration).await;
    }
}

const EXPIRING: &str = "sandbox.expiring";
const ENDED: &str = "sandbox.ended";

/// How one message's delivery ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sent {
    /// A 2xx answer.
    Delivered,
    /// A 410: the endpoint wants no more.
    Disabled,
    /// Every attempt failed.
    Failed,
    /// Retries stopped: what it said is out of date.
    GivenUp,
}

/// Sends one message (`kind`, `data`) under `message_id` with retries,
/// `done` attempts having been made already; `stale` is asked before each
/// attempt.
async fn send(
    hooks: &DeliveryCtx,
    registration: &Arc<Mutex<StoredWebhook>>,
    kind: &str,
    data: &serde_json::Value,
    message_id: String,
    done: u32,
    stale: impl Fn() -> bool,
) -> Sent {
    let (url, key) = {
        let mut r = registration.lock().recover();
        r.view.message_id = message_id.clone();
        r.view.state = WebhookState::Delivering;
        (r.view.webhook_url.clone(), r.key.clone())
    };
    let body = serde_json::to_vec(&json!({
        "type": kind,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        "data": data,
    }))
    .expect("JSON serializes");
    hooks.persist(registration).await;
    let settings = &hooks.settings;
    for n in (done + 1)..=settings.max_attempts {
        if stale() {
            return Sent::GivenUp;
        }
        let started = Instant::now();
        let at = chrono::Utc::now();
        let outcome = attempt(hooks, &url, &key, &message_id, at.timestamp(), &body).await;
        let (status, error) = match &outcome {
            Ok(s) => (Some(s.as_u16()), None),
            Err(e) => (
                None,
                Some(crate::value::clip(e, MAX_ERROR_BYTES).into_owned()),
            ),
        };
        {
            let mut r = registration.lock().recover();
            let attempts = &mut r.view.attempts;
            attempts.push(WebhookAttempt {
                event: Some(kind.to_owned()),
                at: at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                status,
                error,
                duration_ms: started.elapsed().as_millis() as u64,
            });
            if attempts.len() > KEPT_ATTEMPTS {
                attempts.drain(..attempts.len() - KEPT_ATTEMPTS);
            }
        }
        hooks.persist(registration).await;
        match outcome {
            Ok(s) if s.is_success() => {
                hooks.delivered.fetch_add(1, Ordering::Relaxed);
                return Sent::Delivered;
            }
            Ok(StatusCode::GONE) => {
                tracing::info!(url = %crate::value::clip(&url, 256), "webhook endpoint answered 410; disabled");
                return Sent::Disabled;
            }
            _ => {}
        }
        if n == settings.max_attempts {
            break;
        }
        let base = settings.backoff.as_secs_f64() * 2f64.powi(n as i32 - 1);
        let jittered = base * (0.75 + fastrand::f64() * 0.5);
        tokio::time::sleep(Duration::from_secs_f64(jittered.min(600.0))).await;
    }
    tracing::warn!(url = %crate::value::clip(&url, 256), kind, attempts = settings.max_attempts, "webhook delivery failed");
    hooks.failed.fetch_add(1, Ordering::Relaxed);
    Sent::Failed
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
    async fn persist(&self, registration: &Mutex<StoredWebhook>) {
        if let Err(e) = self.save(registration).await {
            tracing::error!(error = %e, "could not store a webhook's progress");
        }
    }

    /// Stores the registration as it is now (fsynced).
    async fn save(
        &self,
        registration: &Mutex<StoredWebhook>,
    ) -> Result<(), crate::store::StoreError> {
        let write = {
            let r = registration.lock().recover();
            store::put(Table::Webhooks, r.view.webhook_id.clone(), &*r)
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.apply(vec![write]))
            .await
            .map_err(|e| crate::store::StoreError::Io(std::io::Error::other(e.to_string())))?
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
        .header(reqwest::header::CONTENT_TYPE, "application/json")
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
