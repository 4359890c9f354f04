//! A typed async client for the HTTP API (the seed's "Agent Helper
//! Library"), with a [`StatusMonitor`] that watches many tasks at once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), modal_agents::client::ClientError> {
//! use modal_agents::client::Client;
//! use modal_agents::wire::DeployRequest;
//! use serde_json::json;
//!
//! let client = Client::new("http://127.0.0.1:8080", Some("my-token"))?;
//! client.deploy(&DeployRequest::new("double", "def double(x): return x * 2")).await?;
//! let map = client.run_parallel("double", vec![json!(1), json!(2)], true).await?;
//! assert_eq!(map.results, Some(vec![json!(2), json!(4)]));
//! # Ok(()) }
//! ```

mod logs;
mod monitor;
mod sandbox;

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::task::{InputsAs, ResultsPage, TaskId, TaskLogs, TaskRecord, TaskStatus, WaitMode};
use crate::volume::FileStat;
use crate::wire::{
    DeployRequest, Deployed, FunctionView, MapSubmitted, PutState, RunParallelRequest, SecretInfo,
    SpawnTaskRequest, StateEntry, TaskList, ToolDefinition, WaitTasksRequest, WaitTasksResult,
    Webhook, WebhookRequest,
};

pub use logs::LogEvent;
pub use monitor::{StatusMonitor, Transition};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a problem document.
    #[error("{status}: {detail}{}", .field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Api {
        /// The HTTP status.
        status: u16,
        /// What kind of problem (the document's `type`).
        kind: crate::wire::ProblemKind,
        /// The problem's title.
        title: String,
        /// The problem's detail.
        detail: String,
        /// The field at fault, when there is one.
        field: Option<String>,
    },
    /// The server could not be reached.
    #[error("cannot reach the server: {}", with_causes(.0))]
    Transport(#[from] reqwest::Error),
    /// The answer was not what the API documents.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The base URL is not usable.
    #[error("invalid server URL {0:?}")]
    BadUrl(String),
    /// A wait ran out of time.
    #[error("task {0} did not finish in time")]
    Timeout(TaskId),
    /// A path or key the URL cannot carry as given.
    #[error("invalid path {path:?}: '.' and '..' segments are not allowed (write the path without them)")]
    InvalidPath {
        /// The path as given.
        path: String,
    },
}

/// An error and what caused it, as one line (`error sending request for
/// url (...): client error (Connect): tcp connect error: Connection
/// refused`).
fn with_causes(e: &reqwest::Error) -> String {
    let mut said = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let next = c.to_string();
        if !said.contains(&next) {
            said.push_str(": ");
            said.push_str(&next);
        }
        cause = c.source();
    }
    said
}

/// One name (a volume's) as one URL path segment.
fn seg(name: &str) -> String {
    crate::value::percent_encode(name)
}

/// `path` (a key, or a path in a volume or a sandbox) as URL path
/// segments: each percent-encoded, so `?`, `#`, `%` and spaces stay in it,
/// with its `/`s kept; a leading `/` (an absolute path in a sandbox) is kept
/// too. A `.` or `..` segment is refused: the URL would resolve it on the
/// way and the request would reach another key or volume.
pub(crate) fn path_segments(path: &str) -> Result<String, ClientError> {
    let mut out = String::with_capacity(path.len());
    for (i, part) in path.split('/').enumerate() {
        if part == "." || part == ".." {
            return Err(ClientError::InvalidPath {
                path: crate::value::clip(path, crate::value::MAX_ECHO).into_owned(),
            });
        }
        if i > 0 {
            out.push('/');
        }
        out.push_str(&crate::value::percent_encode(part));
    }
    Ok(out)
}

/// A client of one server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    max_retries: u32,
}

impl Client {
    /// A client for `base_url` (`http://host:port`), with a bearer token.
    pub fn new(base_url: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let parsed =
            reqwest::Url::parse(base_url).map_err(|_| ClientError::BadUrl(base_url.to_owned()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::BadUrl(base_url.to_owned()));
        }
        Ok(Client {
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
            http: reqwest::Client::builder()
                .user_agent(concat!("modal-agents-client/", env!("CARGO_PKG_VERSION")))
                .build()?,
            max_retries: 5,
        })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// How often a request answered 429 or 503 is retried (default 5).
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<reqwest::Response, ClientError> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let response = req.send().await?;
            let status = response.status();
            let retryable = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE;
            if !retryable || attempt >= self.max_retries {
                return Ok(response);
            }
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(delay, |s| Duration::from_secs(s.min(60)));
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(Duration::from_secs(10));
            attempt += 1;
        }
    }

    async fn problem(response: reqwest::Response) -> ClientError {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<crate::wire::Problem>(&text) {
            Ok(p) => ClientError::Api {
                status,
                kind: p.kind,
                title: p.title,
                detail: p.detail,
                field: p.field,
            },
            // Not a problem document (a proxy's page, say): its text.
            Err(_) => ClientError::Api {
                status,
                kind: crate::wire::ProblemKind::Other(String::new()),
                title: "error".into(),
                detail: crate::value::clip(&text, crate::api::MAX_DETAIL).into_owned(),
                field: None,
            },
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path, body, &[]).await?;
        Self::decode(response).await
    }

    /// A wire request as a JSON body.
    fn body(request: &impl Serialize) -> Result<Value, ClientError> {
        serde_json::to_value(request).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
        if !response.status().is_success() {
            return Err(Self::problem(response).await);
        }
        let bytes = response.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Value, ClientError> {
        self.json(Method::GET, "/healthz", None).await
    }

    /// `POST /deploy-function`.
    pub async fn deploy(&self, request: &DeployRequest) -> Result<Deployed, ClientError> {
        let body = Self::body(request)?;
        self.json(Method::POST, "/deploy-function", Some(&body))
            .await
    }

    /// `GET /functions`.
    pub async fn functions(&self) -> Result<Vec<FunctionView>, ClientError> {
        self.json(Method::GET, "/functions", None).await
    }

    /// `DELETE /functions/{name}`.
    pub async fn undeploy(&self, name: &str) -> Result<FunctionView, ClientError> {
        self.json(Method::DELETE, &format!("/functions/{name}"), None)
            .await
    }

    /// `POST /run-parallel`.
    pub async fn run_parallel(
        &self,
        function_name: &str,
        inputs: Vec<Value>,
        wait: bool,
    ) -> Result<MapSubmitted, ClientError> {
        self.run_parallel_as(function_name, inputs, InputsAs::Argument, wait)
            .await
    }

    /// `POST /run-parallel`, each input passed as `inputs_as` says.
    pub async fn run_parallel_as(
        &self,
        function_name: &str,
        inputs: Vec<Value>,
        inputs_as: InputsAs,
        wait: bool,
    ) -> Result<MapSubmitted, ClientError> {
        let body = Self::body(&RunParallelRequest {
            function_name: function_name.to_owned(),
            inputs,
            inputs_as,
            wait,
            wait_timeout: None,
        })?;
        self.json(Method::POST, "/run-parallel", Some(&body)).await
    }

    /// `POST /spawn-task`.
    pub async fn spawn(
        &self,
        function_name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        wait: bool,
    ) -> Result<TaskRecord, ClientError> {
        let body = Self::body(&SpawnTaskRequest {
            function_name: function_name.to_owned(),
            args,
            kwargs,
            wait,
            wait_timeout: None,
        })?;
        self.json(Method::POST, "/spawn-task", Some(&body)).await
    }

    /// `GET /status/{task_id}`.
    pub async fn status(&self, id: TaskId) -> Result<TaskRecord, ClientError> {
        self.json(Method::GET, &format!("/status/{id}"), None).await
    }

    /// Polls a task until it finishes (backing off from 50 ms to 1 s), at most `timeout`.
    pub async fn wait(
        &self,
        id: TaskId,
        timeout: Option<Duration>,
    ) -> Result<TaskRecord, ClientError> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut delay = Duration::from_millis(50);
        loop {
            let record = self.status(id).await?;
            if record.status.is_terminal() {
                return Ok(record);
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() + delay > d) {
                return Err(ClientError::Timeout(id));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// `POST /tasks/wait`: waits (server-side, no polling) until all or
    /// one of `ids` have finished, at most `timeout` (default 55 s).
    pub async fn wait_tasks(
        &self,
        ids: &[TaskId],
        mode: WaitMode,
        timeout: Option<Duration>,
    ) -> Result<WaitTasksResult, ClientError> {
        let body = Self::body(&WaitTasksRequest {
            task_ids: ids.to_vec(),
            mode,
            timeout_s: timeout.map(|t| t.as_secs_f64()),
        })?;
        self.json(Method::POST, "/tasks/wait", Some(&body)).await
    }

    /// `GET /status/{task_id}/results`.
    pub async fn results(
        &self,
        id: TaskId,
        offset: u64,
        limit: u64,
    ) -> Result<ResultsPage, ClientError> {
        self.json(
            Method::GET,
            &format!("/status/{id}/results?offset={offset}&limit={limit}"),
            None,
        )
        .await
    }

    /// `GET /tasks/{task_id}/logs`.
    pub async fn logs(&self, id: TaskId) -> Result<TaskLogs, ClientError> {
        self.json(Method::GET, &format!("/tasks/{id}/logs"), None)
            .await
    }

    /// `POST /tasks/{task_id}/cancel`.
    pub async fn cancel(&self, id: TaskId) -> Result<TaskRecord, ClientError> {
        self.json(Method::POST, &format!("/tasks/{id}/cancel"), None)
            .await
    }

    /// `GET /tasks`.
    pub async fn tasks(
        &self,
        status: Option<TaskStatus>,
        offset: u64,
        limit: u64,
    ) -> Result<TaskList, ClientError> {
        let filter = status.map(|s| format!("&status={s}")).unwrap_or_default();
        self.json(
            Method::GET,
            &format!("/tasks?offset={offset}&limit={limit}{filter}"),
            None,
        )
        .await
    }

    /// `POST /webhook`.
    pub async fn register_webhook(
        &self,
        task_id: TaskId,
        webhook_url: &str,
    ) -> Result<Webhook, ClientError> {
        let body = Self::body(&WebhookRequest {
            task_id: Some(task_id.to_string()),
            sandbox_id: None,
            webhook_url: webhook_url.to_owned(),
        })?;
        self.json(Method::POST, "/webhook", Some(&body)).await
    }

    /// `POST /webhook` for a sandbox: `sandbox.expiring`, then
    /// `sandbox.ended`.
    pub async fn register_sandbox_webhook(
        &self,
        sandbox_id: &str,
        webhook_url: &str,
    ) -> Result<Webhook, ClientError> {
        let body = Self::body(&WebhookRequest {
            task_id: None,
            sandbox_id: Some(sandbox_id.to_owned()),
            webhook_url: webhook_url.to_owned(),
        })?;
        self.json(Method::POST, "/webhook", Some(&body)).await
    }

    /// `GET /webhooks/{id}`.
    pub async fn webhook(&self, webhook_id: &str) -> Result<Webhook, ClientError> {
        self.json(Method::GET, &format!("/webhooks/{webhook_id}"), None)
            .await
    }

    /// `GET /volumes/{name}/state/{key}`; `None` if absent.
    pub async fn volume_get(
        &self,
        volume: &str,
        key: &str,
    ) -> Result<Option<StateEntry>, ClientError> {
        let response = self
            .send(
                Method::GET,
                &format!("/volumes/{}/state/{}", seg(volume), path_segments(key)?),
                None,
                &[],
            )
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::decode(response).await.map(Some)
    }

    /// `PUT /volumes/{name}/state/{key}`, with `If-Match` when `expected` is given.
    pub async fn volume_put(
        &self,
        volume: &str,
        key: &str,
        value: Value,
        expected: Option<u64>,
    ) -> Result<StateEntry, ClientError> {
        let headers: Vec<(&str, String)> = expected
            .map(|v| ("if-match", v.to_string()))
            .into_iter()
            .collect();
        let response = self
            .send(
                Method::PUT,
                &format!("/volumes/{}/state/{}", seg(volume), path_segments(key)?),
                Some(&Self::body(&PutState { value })?),
                &headers,
            )
            .await?;
        Self::decode(response).await
    }

    /// `DELETE /volumes/{name}/state/{key}`.
    pub async fn volume_delete(&self, volume: &str, key: &str) -> Result<Value, ClientError> {
        self.json(
            Method::DELETE,
            &format!("/volumes/{}/state/{}", seg(volume), path_segments(key)?),
            None,
        )
        .await
    }

    /// `GET /volumes/{name}/state?prefix=`: every key under `prefix`, page
    /// after page.
    pub async fn volume_list(
        &self,
        volume: &str,
        prefix: &str,
    ) -> Result<Vec<StateEntry>, ClientError> {
        let mut entries = Vec::new();
        let mut after = String::new();
        loop {
            let mut v: Value = self
                .json(
                    Method::GET,
                    &format!(
                        "/volumes/{}/state?prefix={}{after}",
                        seg(volume),
                        crate::value::percent_encode(prefix)
                    ),
                    None,
                )
                .await?;
            let page: Vec<StateEntry> = serde_json::from_value(v["entries"].take())
                .map_err(|e| ClientError::Decode(e.to_string()))?;
            entries.extend(page);
            match v["next_after"].as_str() {
                Some(next) => after = format!("&after={}", crate::value::percent_encode(next)),
                None => return Ok(entries),
            }
        }
    }

    /// `PUT /volumes/{name}/files/{path}`.
    pub async fn file_put(
        &self,
        volume: &str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<FileStat, ClientError> {
        self.put_bytes(
            &format!("/volumes/{}/files/{}", seg(volume), path_segments(path)?),
            bytes,
        )
        .await
    }

    /// `PUT path` with a raw body; the JSON answer.
    async fn put_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<T, ClientError> {
        let mut req = self.http.put(format!("{}{path}", self.base)).body(bytes);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        Self::decode(req.send().await?).await
    }

    /// `GET /volumes/{name}/files/{path}`.
    pub async fn file_get(&self, volume: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        let response = self
            .send(
                Method::GET,
                &format!("/volumes/{}/files/{}", seg(volume), path_segments(path)?),
                None,
                &[],
            )
            .await?;
        if !response.status().is_success() {
            return Err(Self::problem(response).await);
        }
        Ok(response.bytes().await?.to_vec())
    }

    /// `GET /volumes/{name}/files?prefix=`: every file, a page of 1000 at a
    /// time.
    pub async fn file_list(
        &self,
        volume: &str,
        prefix: &str,
    ) -> Result<Vec<FileStat>, ClientError> {
        const PAGE: usize = 1000;
        let mut files: Vec<FileStat> = Vec::new();
        loop {
            let after = files
                .last()
                .map(|f| format!("&after={}", crate::value::percent_encode(&f.path)))
                .unwrap_or_default();
            let page: Vec<FileStat> = self
                .json(
                    Method::GET,
                    &format!(
                        "/volumes/{}/files?prefix={}&limit={PAGE}{after}",
                        seg(volume),
                        crate::value::percent_encode(prefix)
                    ),
                    None,
                )
                .await?;
            let full = page.len() == PAGE;
            files.extend(page);
            if !full {
                return Ok(files);
            }
        }
    }

    /// `POST /volumes/{name}/push`: upload changes to the Modal Volume.
    pub async fn volume_push(&self, volume: &str) -> Result<Value, ClientError> {
        self.json(
            Method::POST,
            &format!("/volumes/{}/push", seg(volume)),
            None,
        )
        .await
    }

    /// `POST /volumes/{name}/pull`: download changes from the Modal Volume.
    pub async fn volume_pull(&self, volume: &str) -> Result<Value, ClientError> {
        self.json(
            Method::POST,
            &format!("/volumes/{}/pull", seg(volume)),
            None,
        )
        .await
    }

    /// `PUT /secrets/{name}`.
    pub async fn secret_set(
        &self,
        name: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<SecretInfo, ClientError> {
        let body = Self::body(values)?;
        self.json(Method::PUT, &format!("/secrets/{name}"), Some(&body))
            .await
    }

    /// `DELETE /secrets/{name}`.
    pub async fn secret_delete(&self, name: &str) -> Result<Value, ClientError> {
        self.json(Method::DELETE, &format!("/secrets/{name}"), None)
            .await
    }

    /// `DELETE /volumes/{name}/files/{path}`.
    pub async fn file_delete(&self, volume: &str, path: &str) -> Result<Value, ClientError> {
        self.json(
            Method::DELETE,
            &format!("/volumes/{}/files/{}", seg(volume), path_segments(path)?),
            None,
        )
        .await
    }

    /// `GET /secrets` (names and keys only).
    pub async fn secrets(&self) -> Result<Vec<SecretInfo>, ClientError> {
        self.json(Method::GET, "/secrets", None).await
    }

    /// `GET /tools`.
    pub async fn tools(&self) -> Result<Vec<ToolDefinition>, ClientError> {
        self.json(Method::GET, "/tools", None).await
    }

    /// `POST /tools/{name}`.
    pub async fn tool(&self, name: &str, args: Value) -> Result<Value, ClientError> {
        self.json(Method::POST, &format!("/tools/{name}"), Some(&args))
            .await
    }

    /// `GET /resources`.
    pub async fn resources(&self) -> Result<Value, ClientError> {
        self.json(Method::GET, "/resources", None).await
    }
}
