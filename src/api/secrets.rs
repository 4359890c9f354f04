//! `/secrets`: store, list and delete secrets (values never returned).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::extract::ApiJson;
use super::{ApiState, Error};
use crate::wire::SecretInfo;

/// A secret's values: environment variable names to strings.
struct SecretValues;

impl utoipa::PartialSchema for SecretValues {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::wire::from_json(json!({
            "type": "object",
            "propertyNames": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,255}$"},
            "additionalProperties": {"type": "string", "pattern": "^[^\\u0000]*$"},
        }))
    }
}

impl utoipa::ToSchema for SecretValues {}

/// Store a secret: a JSON object of string values, e.g. `{"API_KEY": "..."}`.
#[utoipa::path(put, path = "/secrets/{name}", request_body = SecretValues,
    responses((status = 200, body = SecretInfo), (status = 422, body = super::Problem)))]
pub(crate) async fn put_secret(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(values): ApiJson<BTreeMap<String, String>>,
) -> Result<Json<SecretInfo>, Error> {
    state.runtime.secrets().set(&name, values)?;
    let keys = state.runtime.secrets().keys(&name).unwrap_or_default();
    Ok(Json(SecretInfo { name, keys }))
}

/// The secrets, names and keys only.
#[utoipa::path(get, path = "/secrets", responses((status = 200, body = Vec<SecretInfo>)))]
pub(crate) async fn list_secrets(State(state): State<ApiState>) -> Json<Vec<SecretInfo>> {
    let secrets = state.runtime.secrets();
    Json(
        secrets
            .names()
            .into_iter()
            .map(|name| SecretInfo {
                keys: secrets.keys(&name).unwrap_or_default(),
                name,
            })
            .collect(),
    )
}

/// Delete a secret (refused while a deployed function uses it).
#[utoipa::path(delete, path = "/secrets/{name}", responses((status = 200, body = Object), (status = 404, body = super::Problem), (status = 409, body = super::Problem)))]
pub(crate) async fn delete_secret(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Error> {
    if state.runtime.remove_secret(&name)? {
        Ok(Json(json!({"name": name, "deleted": true})))
    } else {
        Err(Error::NotFound(format!("no secret `{name}`")))
    }
}
