//! `POST /webhook` and `GET /webhooks/{id}`: thin handlers over the
//! runtime's webhook service ([`crate::webhooks`]).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::extract::ApiJson;
use super::tasks::parse_id;
use super::{ApiState, Caller, Error};
use crate::commands::Commands;
use crate::webhooks::WebhookError;
use crate::wire::{Webhook, WebhookRequest};

/// Register a webhook for a task's completion or failure, or for a
/// sandbox's expiry notice and end.
#[utoipa::path(post, path = "/webhook", request_body = WebhookRequest,
    responses((status = 201, body = Webhook, description = "the secret is shown only here"),
              (status = 404, body = super::Problem), (status = 422, body = super::Problem)))]
pub(crate) async fn register(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<WebhookRequest>,
) -> Result<Response, Error> {
    const NAME: &str = "register_webhook";
    let task = match (&req.task_id, &req.sandbox_id) {
        (Some(task), None) => Some(parse_id(task)?),
        (None, Some(_)) => None,
        (given, _) => {
            return Err(Error::invalid(
                "task_id",
                format!(
                    "{}; give exactly one of task_id (a task's completion) and sandbox_id (a sandbox's expiry and end)",
                    if given.is_some() { "both task_id and sandbox_id were given" } else { "neither task_id nor sandbox_id was given" }
                ),
            ))
        }
    };
    let key = super::idempotency_key(&headers)?.map(|k| (k, Commands::fingerprint(NAME, &req)));
    let webhooks = state.webhooks.clone();
    let work = async move {
        let registered = match task {
            Some(task) => webhooks.register(task, &req.webhook_url).await,
            None => {
                let sandbox = req.sandbox_id.as_deref().unwrap_or_default();
                webhooks.register_sandbox(sandbox, &req.webhook_url).await
            }
        };
        registered.map_err(|e| match e {
            WebhookError::Task(e) => Error::from(*e),
            WebhookError::Sandbox(e) => Error::from(e),
            WebhookError::Target(why) => Error::invalid("webhook_url", why),
            e @ WebhookError::TooMany { .. } => Error::Conflict(e.to_string()),
            WebhookError::Storage(e) => Error::Internal(e.to_string()),
        })
    };
    let keyed = state.commands.keyed(caller, NAME, key, work).await?;
    let created = (StatusCode::CREATED, Json(keyed.answer)).into_response();
    Ok(super::replayed(created, keyed.replayed))
}

/// A registration and its delivery attempts (the secret is never shown again).
#[utoipa::path(get, path = "/webhooks/{webhook_id}", operation_id = "get_webhook", responses((status = 200, body = Webhook), (status = 404, body = super::Problem)))]
pub(crate) async fn get_one(
    State(state): State<ApiState>,
    Path(webhook_id): Path<String>,
) -> Result<Json<Webhook>, Error> {
    state
        .webhooks
        .get(&webhook_id)
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("no webhook {webhook_id}")))
}
