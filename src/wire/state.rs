//! Shared state in volumes, secrets, and webhook registrations.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::task::TaskId;

/// A state value in a volume, with its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StateEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Value,
    /// Its version (1 on the first write, +1 per write).
    pub version: u64,
}

/// The body of a state write (`PUT /volumes/{name}/state/{key}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutState {
    /// The value to store.
    pub value: Value,
}

/// A secret, by name and keys; values are never shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretInfo {
    /// The name.
    pub name: String,
    /// Its keys.
    pub keys: Vec<String>,
}

/// A webhook registration (`POST /webhook`): the seed's, for a task, or
/// one for a sandbox. Exactly one of `task_id` and `sandbox_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// The task to report on (its id, a UUID): one `task.completed` or
    /// `task.failed` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The sandbox to report on: `sandbox.expiring` when its lifetime
    /// comes within the notice (a minute by default; again only after the
    /// expiry has left the notice and come back), then `sandbox.ended` with
    /// the reason, each its own message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// Where deliveries go (a public http(s) URL).
    pub webhook_url: String,
}

impl utoipa::PartialSchema for WebhookRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        // Written out: "exactly one of two optional fields" is a `oneOf` of
        // the two shapes, which the derive cannot say.
        let url = serde_json::json!({
            "type": "string",
            "description": "Where deliveries go (a public http(s) URL, at most 2048 bytes).",
            "maxLength": 2048
        });
        let task = super::from_json(serde_json::json!({
            "type": "object",
            "title": "For a task",
            "properties": {
                "task_id": {
                    "type": "string",
                    "description": "The task to report on (its id, a UUID): one `task.completed` or `task.failed` message.",
                    "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
                },
                "webhook_url": url
            },
            "required": ["task_id", "webhook_url"],
            "additionalProperties": false
        }));
        let sandbox = super::from_json(serde_json::json!({
            "type": "object",
            "title": "For a sandbox",
            "properties": {
                "sandbox_id": {
                    "type": "string",
                    "description": "The sandbox to report on: `sandbox.expiring`, then `sandbox.ended` with the reason, each its own message.",
                    "minLength": 1,
                    "maxLength": 64
                },
                "webhook_url": url
            },
            "required": ["sandbox_id", "webhook_url"],
            "additionalProperties": false
        }));
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(task)
            .item(sandbox)
            .description(Some(
                "A webhook registration: for a task (`task_id`) or for a sandbox (`sandbox_id`).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for WebhookRequest {}

/// The state of a webhook registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookState {
    /// Waiting for the task to finish (or the sandbox's next event).
    Waiting,
    /// Delivering (or between retries).
    Delivering,
    /// Delivered (a 2xx answer).
    Delivered,
    /// Every attempt failed.
    Failed,
    /// The endpoint answered 410 Gone.
    Disabled,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookAttempt {
    /// The message's type (`task.completed`, `sandbox.expiring`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// When it started (RFC 3339).
    pub at: String,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// Why it failed, when it did not get an answer.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
}

/// A webhook registration and its delivery attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    /// Its id.
    pub webhook_id: String,
    /// The task it reports on (a task's registration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    /// The sandbox it reports on (a sandbox's registration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// Where deliveries go.
    pub webhook_url: String,
    /// Where it is.
    pub state: WebhookState,
    /// The message id every attempt carries (`webhook-id`); a sandbox's
    /// registration sends one message per event, this is the latest.
    pub message_id: String,
    /// Attempts so far (a sandbox's: its latest 64).
    pub attempts: Vec<WebhookAttempt>,
    /// The `whsec_...` signing secret; only in the registration answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}
