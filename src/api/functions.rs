//! `POST /deploy-function` (the seed's) and the function listing.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::Json;

use super::extract::ApiJson;
use super::{ApiState, Error};
use crate::spec::SpecError;
use crate::wire::{wire_field, DeployRequest, Deployed, FunctionView};

/// A refused spec as a 422 naming the request's field.
fn spec_error(e: SpecError) -> Error {
    match e {
        SpecError::Invalid {
            field,
            value,
            expected,
        } => Error::invalid(field, format!("got {value:?}; expected {expected}")),
        e => Error::invalid(
            wire_field(e.field(), "image_config.packages"),
            e.to_string(),
        ),
    }
}

/// Deploy a function from a code string.
#[utoipa::path(post, path = "/deploy-function", request_body = DeployRequest,
    responses((status = 200, body = Deployed), (status = 422, body = super::Problem)))]
pub(crate) async fn deploy(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> Result<Json<Deployed>, Error> {
    let spec = req.into_spec().map_err(spec_error)?;
    let info = state
        .runtime
        .deploy_function(spec)
        .await
        .map_err(|e| match e {
            crate::runtime::RuntimeError::Spec(e) => {
                spec_error(e.with_field(|f| wire_field(f, "image_config.packages")))
            }
            other => other.into(),
        })?;
    Ok(Json(Deployed::from(&info)))
}

/// List deployed functions, without their source (`include_code=true`
/// adds it; `GET /functions/{name}` always has it).
#[utoipa::path(get, path = "/functions",
    params(("include_code" = Option<bool>, Query, description = "include each function's source (default false)")),
    responses((status = 200, body = Vec<FunctionView>), (status = 422, body = super::Problem)))]
pub(crate) async fn list(
    State(state): State<ApiState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Vec<FunctionView>>, Error> {
    let with_code = super::tasks::flag(&query, "include_code")?;
    Ok(Json(
        state
            .runtime
            .functions()
            .into_iter()
            .map(|mut f| {
                if !with_code {
                    f.spec.code = String::new();
                }
                FunctionView::from(f)
            })
            .map(|mut v| {
                if !with_code {
                    if let Some(spec) = v.spec.as_object_mut() {
                        spec.remove("code");
                    }
                }
                v
            })
            .collect(),
    ))
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
