//! The HTTP API: the seed's "Modal Agent API Service" over a [`Runtime`].
//!
//! The seed's endpoints keep the seed's field names (`POST /deploy-function`,
//! `/run-parallel`, `/spawn-task`, `/webhook`, `GET /status/{task_id}`), with
//! what a job service also needs around them: functions, tasks, results,
//! logs, volumes with optimistic concurrency, secrets, the agent tools,
//! resources, health, Prometheus metrics and an OpenAPI 3.1 document
//! (`/openapi.json`). Every endpoint but `/healthz` needs a bearer token;
//! every error is RFC 9457 `application/problem+json`.

mod docs;
mod error;
mod extract;
mod functions;
mod metrics;
mod origin;
mod sandboxes;
mod secrets;
mod status;
mod tasks;
mod tools;
mod volumes;
mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use utoipa::OpenApi;

use crate::runtime::Runtime;

pub use crate::webhooks::Cidr;
pub use error::{Error, Problem, MAX_DETAIL};
pub(crate) use extract::BODY_READ_TIMEOUT;

/// Settings of the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Accepted bearer tokens (default: none).
    pub tokens: Vec<String>,
    /// Serve without authentication (default false; refused when `tokens` is
    /// non-empty makes no sense, so tokens win).
    pub allow_no_auth: bool,
    /// Largest request body in bytes (default 32 MiB).
    pub body_limit: usize,
    /// The webhook service the app starts for its runtime (default:
    /// [`WebhookConfig::default`](crate::webhooks::WebhookConfig)).
    pub webhooks: crate::webhooks::WebhookConfig,
    /// Names (`Host` values, with or without a port) a server without
    /// tokens also answers to, besides the loopback names (default: none).
    pub allowed_hosts: Vec<String>,
    /// Bounds on the MCP sessions at `/mcp` (default:
    /// [`McpLimits::default`](crate::mcp::McpLimits)).
    pub mcp: crate::mcp::McpLimits,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            tokens: Vec::new(),
            allow_no_auth: false,
            body_limit: 32 << 20,
            webhooks: crate::webhooks::WebhookConfig::default(),
            allowed_hosts: Vec::new(),
            mcp: crate::mcp::McpLimits::default(),
        }
    }
}

/// Why the server could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No token and no explicit opt-out.
    #[error("no API token: set MODAL_AGENTS_TOKEN (comma-separated tokens) or pass --insecure-no-auth to serve without authentication")]
    NoToken,
    /// A token is too short to be a secret.
    #[error("API tokens must be at least 16 characters; one has {0}")]
    WeakToken(usize),
}

impl ApiConfig {
    /// Checks that the server will not run open by accident.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.tokens.is_empty() && !self.allow_no_auth {
            return Err(ConfigError::NoToken);
        }
        if let Some(t) = self.tokens.iter().find(|t| t.len() < 16) {
            return Err(ConfigError::WeakToken(t.len()));
        }
        Ok(())
    }
}

pub(crate) struct Inner {
    pub(crate) runtime: Runtime,
    pub(crate) config: ApiConfig,
    pub(crate) commands: crate::commands::Commands,
    pub(crate) webhooks: crate::webhooks::Webhooks,
    pub(crate) metrics: metrics::Metrics,
    /// The live MCP sessions at `/mcp`.
    pub(crate) mcp: Arc<crate::mcp::Sessions>,
    /// Who each of `config.tokens` is, for idempotency keys and sessions.
    pub(crate) callers: Vec<Caller>,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct ApiState(Arc<Inner>);

impl std::ops::Deref for ApiState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Constant-time equality of two byte strings (length is not hidden).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who made a request, as the API's auth found: the index of the bearer
/// token it presented (`None` without authentication). What is kept per
/// caller (MCP sessions, idempotency keys) is counted by it.
pub(crate) use crate::commands::Caller;

/// `response`, marked `Idempotent-Replayed: true` when it is a replay of
/// its key's first answer.
pub(crate) fn replayed(mut response: Response, replayed: bool) -> Response {
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    response
}

/// A request's `Idempotency-Key`, checked: 1 to 255 visible ASCII
/// characters (`^[!-~]+$`, as the OpenAPI document says).
pub(crate) fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, Error> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let refused = |what: String| {
        Error::invalid(
            "Idempotency-Key",
            format!("{what}; expected 1 to 255 visible ASCII characters (no spaces)"),
        )
    };
    let key = raw
        .to_str()
        .map_err(|_| refused("got bytes that are not visible ASCII".into()))?;
    if let Some(bad) = key.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(refused(format!("got {bad:?} in the key")));
    }
    crate::commands::check_key("idempotency", key.to_owned())
        .map(Some)
        .map_err(Error::from)
}

async fn auth(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    if state.config.tokens.is_empty() && state.config.allow_no_auth {
        req.extensions_mut().insert(Caller(None));
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    // Compare with every token so timing does not tell which matched.
    let matched = presented.and_then(|p| {
        state
            .config
            .tokens
            .iter()
            .enumerate()
            .fold(None, |found, (i, t)| {
                if same(p.as_bytes(), t.as_bytes()) {
                    Some(i)
                } else {
                    found
                }
            })
    });
    if let Some(token) = matched {
        req.extensions_mut().insert(state.callers[token]);
        next.run(req).await
    } else {
        Error::Unauthorized.into_response()
    }
}

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(title = "modal-agents", description = "Deploy Python functions, run them in parallel, track tasks, share state, get signed webhooks."),
    paths(
        functions::deploy, functions::list, functions::get_one, functions::delete,
        tasks::run_parallel, tasks::spawn_task, tasks::status, tasks::results, tasks::logs,
        tasks::cancel, tasks::list, tasks::wait_tasks,
        webhooks::register, webhooks::get_one,
        volumes::list_volumes, volumes::get_state, volumes::put_state, volumes::delete_state,
        volumes::list_state, volumes::put_file, volumes::get_file, volumes::delete_file,
        volumes::list_files, volumes::push, volumes::pull,
        secrets::put_secret, secrets::list_secrets, secrets::delete_secret, tools::list_tools,
        tools::call_tool, status::resources, status::healthz, status::metrics,
        sandboxes::create, sandboxes::list, sandboxes::get_one, sandboxes::terminate,
        sandboxes::exec, sandboxes::process, sandboxes::output, sandboxes::stdin, sandboxes::kill,
        sandboxes::keepalive, sandboxes::snapshot, sandboxes::fork, sandboxes::events,
        sandboxes::list_files, sandboxes::get_file, sandboxes::put_file, sandboxes::delete_file,
        sandboxes::make_dir, sandboxes::list_snapshots, sandboxes::diff, sandboxes::delete_snapshot,
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth, &Contract),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What every operation shares, written once: each `{param}` of a path
/// declared as a path parameter, problem documents as
/// `application/problem+json`, and the statuses any protected operation may
/// answer (401 without a valid token, 413 past the body limit, 503 while the
/// runtime stops, 500).
struct Contract;

impl utoipa::Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ContentBuilder, Ref, Required, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let names: Vec<String> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .map(|s| s.trim_start_matches('*').to_owned())
                .collect();
            let open = path == "/healthz";
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let params = operation.parameters.get_or_insert_with(Vec::new);
                // Task logs resume at `stdout:stderr` offsets, a sandbox
                // process's output at one offset.
                let resume = if path.starts_with("/sandboxes/") {
                    "^[0-9]{1,19}$"
                } else {
                    "^[0-9]{1,19}:[0-9]{1,19}$"
                };
                for p in params.iter_mut().filter(|p| p.name == "Last-Event-ID") {
                    p.schema = Some(
                        utoipa::openapi::ObjectBuilder::new()
                            .schema_type(utoipa::openapi::schema::Type::String)
                            .pattern(Some(resume))
                            .into(),
                    );
                }
                for name in &names {
                    let declared = params
                        .iter()
                        .any(|p| &p.name == name && p.parameter_in == ParameterIn::Path);
                    if !declared {
                        params.push(
                            ParameterBuilder::new()
                                .name(name)
                                .parameter_in(ParameterIn::Path)
                                .required(Required::True)
                                .description(Some(path_param_doc(name)))
                                .schema(Some(path_param_schema(path, name)))
                                .build(),
                        );
                    }
                }
                // A file may be empty: its body may be left out.
                if path == "/volumes/{name}/files/{path}" {
                    if let Some(body) = operation.request_body.as_mut() {
                        body.required = Some(Required::False);
                    }
                }
                let responses = &mut operation.responses.responses;
                for response in responses.values_mut() {
                    if let utoipa::openapi::RefOr::T(r) = response {
                        let is_problem = r.content.get("application/json").is_some_and(|c| {
                            matches!(&c.schema, Some(utoipa::openapi::RefOr::Ref(x)) if x.ref_location.ends_with("/Problem"))
                        });
                        if is_problem {
                            if let Some(c) = r.content.shift_remove("application/json") {
                                r.content.insert("application/problem+json".into(), c);
                            }
                        }
                    }
                }
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem(description).into());
                };
                if !open {
                    add("401", "no token, or one that is not accepted");
                }
                add(
                    "400",
                    "a request that is not well-formed (a bad path or query)",
                );
                if operation.request_body.is_some() {
                    add("415", "a body that is not of the documented content type");
                }
                if operation.request_body.is_some() || !names.is_empty() {
                    add("422", "a field, parameter or body outside what is accepted");
                }
                if path.starts_with("/sandboxes/{sandbox_id}") {
                    add("404", "no such sandbox (or process, or file)");
                    add("409", "the sandbox has ended (`ended` says why)");
                    add("429", "as many processes run in the sandbox as may");
                }
                add("413", "a body past the server's limit");
                add("500", "an internal error (its cause is logged, not shown)");
                add("503", "the runtime is stopping or unavailable");
            }
        }
    }
}

/// A path parameter's schema, saying what the server accepts.
fn path_param_schema(path: &str, name: &str) -> utoipa::openapi::ObjectBuilder {
    use utoipa::openapi::schema::Type;
    let string = utoipa::openapi::ObjectBuilder::new().schema_type(Type::String);
    match name {
        "task_id" => string.pattern(Some(
            "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        )),
        "name" if path.starts_with("/volumes/") || path.starts_with("/secrets/") => {
            string.pattern(Some("^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"))
        }
        "key" => string.pattern(Some("^[^\\u0000-\\u001F\\u007F-\\u009F]{1,512}$")),
        // Relative, segments neither empty nor `.`/`..`, no NUL or backslash.
        "path" => string.pattern(Some(
            "^(?!\\.{1,2}(?:/|$))[^/\\\\\\u0000]+(?:/(?!\\.{1,2}(?:/|$))[^/\\\\\\u0000]+)*$",
        )),
        _ => string.min_length(Some(1)),
    }
}

fn path_param_doc(name: &str) -> &'static str {
    match name {
        "task_id" => "a task id (a UUID)",
        "name" => "a function, volume or secret name",
        "key" => "a state key",
        "path" => "a file path inside the volume",
        "tool_name" => "an agent tool's name",
        "webhook_id" => "a webhook registration id",
        _ => "a path segment",
    }
}

async fn openapi() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}

async fn fallback() -> Error {
    Error::NotFound("no such endpoint".into())
}

/// The API's router over `runtime`.
pub fn app(runtime: Runtime, config: ApiConfig) -> Router {
    // A token must never come back in anything the runtime passes on.
    for token in &config.tokens {
        runtime.redactor().add(token.clone());
    }
    let state = ApiState(Arc::new(Inner {
        webhooks: crate::webhooks::Webhooks::start(&runtime, config.webhooks.clone()),
        commands: crate::commands::Commands::new(runtime.clone()),
        runtime,
        metrics: Default::default(),
        mcp: crate::mcp::Sessions::new(config.mcp.clone()),
        callers: config.tokens.iter().map(|t| Caller::of_token(t)).collect(),
        config,
    }));
    let protected = Router::new()
        .route("/deploy-function", post(functions::deploy))
        .route("/run-parallel", post(tasks::run_parallel))
        .route("/spawn-task", post(tasks::spawn_task))
        .route("/webhook", post(webhooks::register))
        .route("/functions", get(functions::list))
        .route(
            "/functions/{name}",
            get(functions::get_one).delete(functions::delete),
        )
        .route("/status/{task_id}", get(tasks::status))
        .route("/status/{task_id}/results", get(tasks::results))
        .route("/tasks", get(tasks::list))
        .route("/tasks/wait", post(tasks::wait_tasks))
        .route("/tasks/{task_id}", get(tasks::status))
        .route("/tasks/{task_id}/results", get(tasks::results))
        .route("/tasks/{task_id}/logs", get(tasks::logs))
        .route("/tasks/{task_id}/cancel", post(tasks::cancel))
        .route("/webhooks/{webhook_id}", get(webhooks::get_one))
        .route("/volumes", get(volumes::list_volumes))
        .route("/volumes/{name}/state", get(volumes::list_state))
        .route(
            "/volumes/{name}/state/{*key}",
            get(volumes::get_state)
                .put(volumes::put_state)
                .delete(volumes::delete_state),
        )
        .route("/volumes/{name}/files", get(volumes::list_files))
        .route("/volumes/{name}/push", post(volumes::push))
        .route("/volumes/{name}/pull", post(volumes::pull))
        .route(
            "/volumes/{name}/files/{*path}",
            get(volumes::get_file)
                .put(volumes::put_file)
                .delete(volumes::delete_file),
        )
        .route("/secrets", get(secrets::list_secrets))
        .route(
            "/secrets/{name}",
            axum::routing::put(secrets::put_secret).delete(secrets::delete_secret),
        )
        .route("/sandboxes", get(sandboxes::list).post(sandboxes::create))
        .route(
            "/sandboxes/{sandbox_id}",
            get(sandboxes::get_one).delete(sandboxes::terminate),
        )
        .route("/sandboxes/{sandbox_id}/exec", post(sandboxes::exec))
        .route(
            "/sandboxes/{sandbox_id}/processes/{process_id}",
            get(sandboxes::process),
        )
        .route(
            "/sandboxes/{sandbox_id}/processes/{process_id}/output",
            get(sandboxes::output),
        )
        .route(
            "/sandboxes/{sandbox_id}/processes/{process_id}/stdin",
            post(sandboxes::stdin),
        )
        .route(
            "/sandboxes/{sandbox_id}/processes/{process_id}/kill",
            post(sandboxes::kill),
        )
        .route(
            "/sandboxes/{sandbox_id}/keepalive",
            post(sandboxes::keepalive),
        )
        .route(
            "/sandboxes/{sandbox_id}/snapshot",
            post(sandboxes::snapshot),
        )
        .route("/sandboxes/{sandbox_id}/fork", post(sandboxes::fork))
        .route("/sandboxes/{sandbox_id}/events", get(sandboxes::events))
        .route("/sandboxes/{sandbox_id}/files", get(sandboxes::list_files))
        .route(
            "/sandboxes/{sandbox_id}/files/{*path}",
            get(sandboxes::get_file)
                .put(sandboxes::put_file)
                .delete(sandboxes::delete_file),
        )
        .route(
            "/sandboxes/{sandbox_id}/dirs/{*path}",
            axum::routing::put(sandboxes::make_dir),
        )
        .route("/snapshots", get(sandboxes::list_snapshots))
        .route(
            "/snapshots/{snapshot_id}",
            axum::routing::delete(sandboxes::delete_snapshot),
        )
        .route("/snapshots/{from}/diff/{to}", get(sandboxes::diff))
        .route("/tools", get(tools::list_tools))
        .route("/tools/{tool_name}", post(tools::call_tool))
        .route("/resources", get(status::resources))
        .route("/metrics", get(status::metrics))
        .route("/openapi.json", get(openapi))
        .route_service("/mcp", {
            let (mcp, guard) = crate::mcp::service(
                state.runtime.clone(),
                state.runtime.stopping(),
                state.mcp.clone(),
                state.config.body_limit,
            );
            tower::ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(guard, crate::mcp::guard))
                .service(mcp)
        })
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(status::healthz))
        .route("/docs", get(docs::docs))
        .route("/", get(docs::landing))
        .merge(protected)
        .fallback(fallback)
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), origin::check))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .with_state(state)
}

/// How long a client may take to send a request's headers, and how long a
/// kept-alive connection may sit idle before its next request (15 s): a
/// client trickling bytes (slowloris) or hoarding idle connections cannot
/// hold the server's connections forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting and lets requests in flight finish. HTTP/1.1, with
/// [`HEADER_READ_TIMEOUT`] on every connection.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, shutdown, HEADER_READ_TIMEOUT).await
}

/// [`serve`] with another header-read (and keep-alive idle) timeout.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_read_timeout: Duration,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment, keep serving.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(
            app.clone()
                .map_request(|r: Request<hyper::body::Incoming>| r.map(axum::body::Body::new)),
        );
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
