//! `/tools`: the agent tools, their JSON Schemas, and calls to them.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::Value;

use super::extract::ApiJson;
use super::{ApiState, Caller, Error};
use crate::tools::Tools;
use crate::wire::ToolDefinition;

/// The agent tools and their JSON Schemas.
#[utoipa::path(get, path = "/tools", responses((status = 200, body = Vec<ToolDefinition>)))]
pub(crate) async fn list_tools(State(state): State<ApiState>) -> Json<Vec<ToolDefinition>> {
    Json(Tools::new(state.runtime.clone()).definitions())
}

/// Call an agent tool with its JSON arguments. A tool that creates work
/// takes an idempotency key as its `idempotency_key` argument or as the
/// `Idempotency-Key` header (the same rule as every creating route).
#[utoipa::path(post, path = "/tools/{tool_name}", request_body = Object,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "a retry with the same key and body gets the first answer")),
    responses((status = 200, body = Object), (status = 404, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn call_tool(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(tool_name): Path<String>,
    headers: HeaderMap,
    ApiJson(args): ApiJson<Value>,
) -> Result<Response, Error> {
    // Only a tool that creates work takes a key; another ignores the header.
    let creates_work = crate::commands::table().any(|c| c.name == tool_name && c.creates_work);
    let key = if creates_work {
        super::idempotency_key(&headers)?
    } else {
        None
    };
    let keyed = Tools::new(state.runtime.clone())
        .for_caller(caller)
        .call_keyed(&tool_name, args, key)
        .await?;
    Ok(super::replayed(
        Json(keyed.answer).into_response(),
        keyed.replayed,
    ))
}
