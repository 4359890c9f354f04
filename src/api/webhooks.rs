//! Task-completion webhooks per the Standard Webhooks spec: `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! id.timestamp.body>` keyed by the endpoint's `whsec_...` secret (returned
//! once, at registration). Deliveries retry with exponential backoff and
//! jitter on non-2xx answers and timeouts; 410 disables the endpoint. Targets
//! that resolve to loopback, private, link-local or other non-public
//! addresses are refused at registration and again at connect time (DNS
//! answers are checked by the HTTP client's resolver, IP literals before each
//! attempt), redirects are never followed, unless an allow-list CIDR covers
//! the address.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
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
use crate::task::{TaskId, TaskStatus};

/// An address block, `10.0.0.0/8` or `::1/128` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR block (like 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Whether `ip` is inside the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is an ordinary public unicast address.
fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1])))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0xdb8)
                || (s[0] == 0x64 && s[1] == 0xff9b))
        }
    }
}

fn allowed(ip: IpAddr, allow: &[Cidr]) -> bool {
    is_public(ip) || allow.iter().any(|c| c.contains(ip))
}

fn refusal(ip: IpAddr) -> String {
    format!("the target resolves to {ip}, which is not a public address; allow it with --webhook-allow / MODAL_AGENTS_WEBHOOK_ALLOW")
}

/// A DNS resolver for the delivery client that refuses non-public answers.
struct GuardedResolver {
    allow: Arc<Vec<Cidr>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| !allowed(a.ip(), &allow)) {
                return Err(refusal(bad.ip()).into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Checks a target URL and every address it resolves to.
async fn check_target(url: &str, allow: &[Cidr]) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not accepted; use https (or http)",
            parsed.scheme()
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL are not accepted".into());
    }
    let host = parsed.host_str().ok_or("the URL has no host")?.to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    if let Some(bad) = addrs.iter().find(|a| !allowed(a.ip(), allow)) {
        return Err(refusal(bad.ip()));
    }
    Ok(parsed)
}

/// The state of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
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
#[derive(Debug, Clone, Serialize, ToSchema)]
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
#[derive(Debug, Clone, Serialize, ToSchema)]
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

struct Registration {
    view: WebhookView,
    key: Vec<u8>,
}

struct Settings {
    allow: Arc<Vec<Cidr>>,
    max_attempts: u32,
    backoff: Duration,
}

/// Registrations and their deliveries.
pub(crate) struct Webhooks {
    settings: Arc<Settings>,
    registrations: Arc<DashMap<String, Arc<Mutex<Registration>>>>,
    client: reqwest::Client,
    delivered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Webhooks {
    pub(crate) fn new(config: &ApiConfig) -> Webhooks {
        let allow = Arc::new(config.webhook_allow.clone());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.webhook_timeout)
            .dns_resolver(Arc::new(GuardedResolver {
                allow: allow.clone(),
            }))
            .user_agent(concat!("modal-agents/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS backend is compiled in");
        Webhooks {
            settings: Arc::new(Settings {
                allow,
                max_attempts: config.webhook_max_attempts.max(1),
                backoff: config.webhook_backoff,
            }),
            registrations: Arc::default(),
            client,
            delivered: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// `(delivered, failed)` deliveries so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
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
    let (task_id, url, key, message_id) = {
        let r = registration.lock().unwrap_or_else(|p| p.into_inner());
        (
            r.view.task_id,
            r.view.webhook_url.clone(),
            r.key.clone(),
            r.view.message_id.clone(),
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
    let settings = &hooks.settings;
    for n in 1..=settings.max_attempts {
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
                hooks.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(StatusCode::GONE) => {
                tracing::info!(%url, "webhook endpoint answered 410; disabled");
                set_state(WebhookState::Disabled);
                return;
            }
            _ if n == settings.max_attempts => break,
            _ => {
                let base = settings.backoff.as_secs_f64() * 2f64.powi(n as i32 - 1);
                let jittered = base * (0.75 + fastrand::f64() * 0.5);
                tokio::time::sleep(Duration::from_secs_f64(jittered.min(600.0))).await;
            }
        }
    }
    tracing::warn!(%url, attempts = settings.max_attempts, "webhook delivery failed");
    set_state(WebhookState::Failed);
    hooks.failed.fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone)]
struct DeliveryCtx {
    settings: Arc<Settings>,
    client: reqwest::Client,
    delivered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
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
    check_target(&req.webhook_url, &hooks.settings.allow)
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
    hooks
        .registrations
        .insert(view.webhook_id.clone(), registration.clone());
    let ctx = DeliveryCtx {
        settings: hooks.settings.clone(),
        client: hooks.client.clone(),
        delivered: hooks.delivered.clone(),
        failed: hooks.failed.clone(),
    };
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
    fn public_and_private_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn cidr_allow_list() {
        let c: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(c.contains("127.9.9.9".parse().unwrap()));
        assert!(c.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c.contains("10.0.0.1".parse().unwrap()));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().unwrap_err().contains("nope"));
    }

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
