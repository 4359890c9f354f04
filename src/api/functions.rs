//! `POST /deploy-function` (the seed's) and the function listing.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::extract::ApiJson;
use super::{ApiState, Caller, Error};
use crate::commands::Commands;
use crate::wire::{DeployRequest, Deployed, FunctionView, ListFunctions};

/// Deploy a function from a code string.
#[utoipa::path(post, path = "/deploy-function", request_body = DeployRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "a retry with the same key and body gets the first answer")),
    responses((status = 200, body = Deployed), (status = 422, body = super::Problem)))]
pub(crate) async fn deploy(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<DeployRequest>,
) -> Result<Response, Error> {
    const NAME: &str = "deploy_modal_function";
    let key = super::idempotency_key(&headers)?.map(|k| (k, Commands::fingerprint(NAME, &req)));
    let commands = state.commands.clone();
    let work = async move { commands.deploy(req).await.map_err(Error::from) };
    let deployed = state.commands.keyed(caller, NAME, key, work).await?;
    Ok(super::replayed(
        Json(deployed.answer).into_response(),
        deployed.replayed,
    ))
}

/// List deployed functions, without their source (`include_code=true`
/// adds it; `GET /functions/{name}` always has it).
#[utoipa::path(get, path = "/functions", operation_id = "list_functions",
    params(("include_code" = Option<bool>, Query, description = "include each function's source (default false)")),
    responses((status = 200, body = Vec<FunctionView>), (status = 422, body = super::Problem)))]
pub(crate) async fn list(
    State(state): State<ApiState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Vec<FunctionView>>, Error> {
    let include_code = super::tasks::flag(&query, "include_code")?;
    let list = state
        .commands
        .list_functions(ListFunctions { include_code })
        .await?;
    Ok(Json(list.functions))
}

/// One deployed function.
#[utoipa::path(get, path = "/functions/{name}", operation_id = "get_function", responses((status = 200, body = FunctionView), (status = 404, body = super::Problem)))]
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
