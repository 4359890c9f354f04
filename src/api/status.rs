//! `/resources`, `/healthz` and `/metrics`: what the runtime has and how it is.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiState, Error};
use crate::task::TaskStatus;

/// The seed's resource status: capacity, what is deployed and running.
#[utoipa::path(get, path = "/resources", responses((status = 200, body = Object)))]
pub(crate) async fn resources(State(state): State<ApiState>) -> Json<Value> {
    let rt = &state.runtime;
    let mut tasks = serde_json::Map::new();
    for status in TaskStatus::ALL {
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
