//! `POST /deploy-function` (the seed's) and the function listing.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::extract::ApiJson;
use super::{ApiState, Error};
use crate::registry::FunctionInfo;
use crate::spec::{seed_field, BackendChoice, Limits, SeedDeploy, SeedVolumes, SpecError};

/// `image_config`: Python packages (`packages`, the seed's name) and apt packages.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageConfig {
    /// pip requirements.
    #[serde(default, alias = "python_packages")]
    packages: Vec<String>,
    /// Debian packages (Modal backend).
    #[serde(default)]
    apt_packages: Vec<String>,
}

/// The seed's deploy request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeployRequest {
    /// Python source defining the function.
    function_code: String,
    /// The function's name (a Python identifier).
    function_name: String,
    #[serde(default)]
    image_config: ImageConfig,
    /// A GPU type (`T4`, `A100-80GB:2`, ...) or an ordered fallback list.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    gpu: Option<Value>,
    /// Per-input timeout in seconds, 1..=86400 (default 300).
    #[serde(default)]
    timeout: Option<u32>,
    /// CPU cores.
    #[serde(default)]
    cpu: Option<f64>,
    /// Memory in MiB, at least 128: a number is a request (reserved); a
    /// pair `[request, limit]` also sets a hard limit (Modal's
    /// `memory=(request, limit)`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    memory: Option<Value>,
    /// Retries: a count 0..=10 or `{max_retries, initial_delay_s, backoff_coefficient, max_delay_s}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    retries: Option<Value>,
    /// Secret names.
    #[serde(default)]
    secrets: Vec<String>,
    /// Volume names (mounted at `/volumes/NAME`) or `{mount path: name}`.
    #[serde(default)]
    volumes: Option<SeedVolumes>,
    /// Containers at most.
    #[serde(default)]
    max_concurrency: Option<u32>,
    /// Seconds an idle container stays warm before it is retired and gives
    /// back what it reserved, 2..=1200 (default 60).
    #[serde(default)]
    scaledown_window: Option<u32>,
    /// Containers kept warm even when idle, at most `max_concurrency`
    /// (default 0).
    #[serde(default)]
    min_containers: Option<u32>,
    /// Limits on each container (address space, CPU time, open files, file
    /// size, processes, network).
    #[serde(default)]
    limits: Option<Limits>,
    /// Where it runs: `local`, `modal` or `auto` (default: `auto`, local
    /// unless this machine cannot run it and Modal credentials exist).
    #[serde(default)]
    backend: Option<BackendChoice>,
}

/// The seed's deploy response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeployResponse {
    function_id: String,
    function_name: String,
    status: &'static str,
    /// What of the request the server does not enforce where the function
    /// runs (without a sandbox: `limits.network`, `limits.processes`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// A deployed function.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FunctionView {
    function_id: String,
    function_name: String,
    backend: String,
    deployed_at: String,
    /// The spec as deployed (secret names only, never values).
    #[schema(value_type = Object)]
    spec: Value,
}

impl From<FunctionInfo> for FunctionView {
    fn from(f: FunctionInfo) -> Self {
        FunctionView {
            function_id: f.function_id.to_string(),
            function_name: f.function_name,
            backend: f.backend,
            deployed_at: f.deployed_at.to_rfc3339(),
            spec: serde_json::to_value(&f.spec).unwrap_or(Value::Null),
        }
    }
}

fn seed_error(e: SpecError) -> Error {
    match e {
        SpecError::Invalid {
            field,
            value,
            expected,
        } => Error::invalid(
            seed_field(&field, "image_config.packages"),
            format!("got {value:?}; expected {expected}"),
        ),
        SpecError::Syntax { .. } | SpecError::MissingFunction { .. } | SpecError::Load { .. } => {
            let field = if matches!(e, SpecError::MissingFunction { .. }) {
                "function_name"
            } else {
                "function_code"
            };
            Error::invalid(field, e.to_string())
        }
    }
}

/// Deploy a function from a code string.
#[utoipa::path(post, path = "/deploy-function", request_body = DeployRequest,
    responses((status = 200, body = DeployResponse), (status = 422, body = super::Problem)))]
pub(crate) async fn deploy(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> Result<Json<DeployResponse>, Error> {
    let spec = SeedDeploy {
        code: req.function_code,
        name: req.function_name,
        packages: req.image_config.packages,
        apt_packages: req.image_config.apt_packages,
        gpu: req.gpu,
        timeout: req.timeout,
        secrets: req.secrets,
        volumes: req.volumes,
        retries: req.retries,
        max_concurrency: req.max_concurrency,
        scaledown_window: req.scaledown_window,
        min_containers: req.min_containers,
        cpu: req.cpu,
        memory: req.memory,
        limits: req.limits,
        backend: req.backend,
    }
    .into_spec()
    .map_err(seed_error)?;
    let info = state
        .runtime
        .deploy_function(spec)
        .await
        .map_err(|e| match e {
            crate::RuntimeError::Spec(e) => seed_error(e),
            other => other.into(),
        })?;
    Ok(Json(DeployResponse {
        function_id: info.function_id.to_string(),
        function_name: info.function_name,
        status: "registered",
        warnings: info.warnings,
    }))
}

/// List deployed functions.
#[utoipa::path(get, path = "/functions", responses((status = 200, body = Vec<FunctionView>)))]
pub(crate) async fn list(State(state): State<ApiState>) -> Json<Vec<FunctionView>> {
    Json(
        state
            .runtime
            .functions()
            .into_iter()
            .map(Into::into)
            .collect(),
    )
}

/// One deployed function.
#[utoipa::path(get, path = "/functions/{name}", responses((status = 200, body = FunctionView), (status = 404, body = super::Problem)))]
pub(crate) async fn get_one(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<FunctionView>, Error> {
    state
        .runtime
        .function(&name)
        .map(|f| Json(f.into()))
        .ok_or_else(|| Error::NotFound(format!("function `{name}` is not deployed")))
}

/// Undeploy a function.
#[utoipa::path(delete, path = "/functions/{name}", responses((status = 200, body = FunctionView), (status = 404, body = super::Problem)))]
pub(crate) async fn delete(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<FunctionView>, Error> {
    Ok(Json(state.runtime.undeploy_function(&name).await?.into()))
}
