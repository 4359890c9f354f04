//! Secrets, agent tools, resources, health and metrics.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::extract::ApiJson;
use super::{ApiState, Error};
use crate::task::TaskStatus;
use crate::tools::{ToolDefinition, Tools};

/// A secret, by name and keys; values are never returned.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SecretView {
    name: String,
    keys: Vec<String>,
}

/// Store a secret: a JSON object of string values, e.g. `{"API_KEY": "..."}`.
#[utoipa::path(put, path = "/secrets/{name}", request_body = BTreeMap<String, String>,
    responses((status = 200, body = SecretView), (status = 422, body = super::Problem)))]
pub(crate) async fn put_secret(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(values): ApiJson<BTreeMap<String, String>>,
) -> Result<Json<SecretView>, Error> {
    state.runtime.secrets().set(&name, values)?;
    let keys = state.runtime.secrets().keys(&name).unwrap_or_default();
    Ok(Json(SecretView { name, keys }))
}

/// The secrets, names and keys only.
#[utoipa::path(get, path = "/secrets", responses((status = 200, body = Vec<SecretView>)))]
pub(crate) async fn list_secrets(State(state): State<ApiState>) -> Json<Vec<SecretView>> {
    let secrets = state.runtime.secrets();
    Json(
        secrets
            .names()
            .into_iter()
            .map(|name| SecretView {
                keys: secrets.keys(&name).unwrap_or_default(),
                name,
            })
            .collect(),
    )
}

/// Delete a secret.
#[utoipa::path(delete, path = "/secrets/{name}", responses((status = 200, body = Object), (status = 404, body = super::Problem)))]
pub(crate) async fn delete_secret(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Error> {
    if state.runtime.secrets().remove(&name)? {
        Ok(Json(json!({"name": name, "deleted": true})))
    } else {
        Err(Error::NotFound(format!("no secret `{name}`")))
    }
}

/// The agent tools and their JSON Schemas.
#[utoipa::path(get, path = "/tools", responses((status = 200, body = Vec<Object>)))]
pub(crate) async fn list_tools(State(state): State<ApiState>) -> Json<Vec<ToolDefinition>> {
    Json(Tools::new(state.runtime.clone()).definitions())
}

/// Call an agent tool with its JSON arguments.
#[utoipa::path(post, path = "/tools/{tool_name}", request_body = Object,
    responses((status = 200, body = Object), (status = 404, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn call_tool(
    State(state): State<ApiState>,
    Path(tool_name): Path<String>,
    ApiJson(args): ApiJson<Value>,
) -> Result<Json<Value>, Error> {
    Ok(Json(
        Tools::new(state.runtime.clone())
            .call(&tool_name, args)
            .await?,
    ))
}

/// The seed's resource status: capacity, what is deployed and running.
#[utoipa::path(get, path = "/resources", responses((status = 200, body = Object)))]
pub(crate) async fn resources(State(state): State<ApiState>) -> Json<Value> {
    let rt = &state.runtime;
    let mut tasks = serde_json::Map::new();
    for status in [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ] {
        tasks.insert(status.to_string(), json!(rt.tasks(Some(status), 0, 0).1));
    }
    let gpu_functions: Vec<Value> = rt
        .functions()
        .iter()
        .filter_map(|f| {
            f.spec
                .resources
                .gpu
                .as_ref()
                .map(|g| json!({"function": f.function_name, "gpu": g}))
        })
        .collect();
    let report = rt.resources();
    Json(json!({
        "capacity": report.capacity,
        "usage": report.usage,
        "functions": rt.functions().len(),
        "gpu_requests": gpu_functions,
        "tasks": tasks,
        "volumes": rt.volumes().list_volumes(),
        "secrets": rt.secrets().names(),
        "agents": rt.agents().list(),
    }))
}

/// Liveness (no token needed).
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, body = Object), (status = 503, body = super::Problem)))]
pub(crate) async fn healthz(State(state): State<ApiState>) -> Result<Json<Value>, Error> {
    if state.runtime.is_running() {
        let isolation = state.runtime.capacity().isolation;
        Ok(Json(json!({"status": "ok", "sandbox": isolation.as_str()})))
    } else {
        Err(Error::Unavailable("the runtime is not running".into()))
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&state),
    )
}
