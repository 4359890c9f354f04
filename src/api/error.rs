//! The API's one error type, answered as RFC 9457 `application/problem+json`.

pub use crate::wire::Problem;
use crate::wire::ProblemKind;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::agents::AgentError;
use crate::runtime::RuntimeError;
use crate::secrets::SecretError;
use crate::spec::SpecError;
use crate::tools::CommandError;
use crate::volume::VolumeError;

/// Longest `detail` a problem document carries (8 KiB): room for a
/// package build's last lines, never a caller's whole request.
pub const MAX_DETAIL: usize = 8 << 10;

/// Every way an API request fails.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is not valid JSON or not the expected shape.
    #[error("{0}")]
    BadRequest(String),
    /// A field holds a value that is not accepted.
    #[error("{detail}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong and what is accepted.
        detail: String,
    },
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// No agent tool has that name.
    #[error("{0}")]
    UnknownTool(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// An `If-Match` precondition failed.
    #[error("{0}")]
    PreconditionFailed(String),
    /// No valid bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The body is over the configured limit.
    #[error("the request body is over the limit of {0} bytes")]
    TooLarge(usize),
    /// The body is not JSON.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// The path exists but not with this method.
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    /// The runtime cannot serve now.
    #[error("{0}")]
    Unavailable(String),
    /// The request is refused for where it comes from (a browser page of
    /// another origin, a `Host` the server does not answer to).
    #[error("{0}")]
    Forbidden(String),
    /// This caller holds as much of something as it may (sessions,
    /// followers); answered 429 with `Retry-After`.
    #[error("{detail}")]
    TooManyRequests {
        /// What is held, the ceiling, and how to free a place.
        detail: String,
        /// Seconds after which trying again makes sense.
        retry_after_s: u64,
    },
    /// The server holds as much of something as it may; answered 503 with
    /// `Retry-After`.
    #[error("{detail}")]
    Saturated {
        /// What is held and the ceiling.
        detail: String,
        /// Seconds after which trying again makes sense.
        retry_after_s: u64,
    },
    /// The sandbox has ended; answered 409 with how (`ended`).
    #[error("{detail}")]
    SandboxEnded {
        /// What was refused.
        detail: String,
        /// How and when it ended.
        ended: Box<crate::wire::SandboxEnded>,
    },
    /// Something failed inside; the cause is logged, never returned.
    #[error("internal error")]
    Internal(String),
}

impl Error {
    /// A 422 naming `field`.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Invalid {
            field: field.into(),
            detail: detail.into(),
        }
    }

    fn parts(&self) -> (StatusCode, ProblemKind, &'static str) {
        use ProblemKind as K;
        match self {
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, K::BadRequest, "Malformed request"),
            Error::Invalid { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                K::Validation,
                "Invalid field",
            ),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, K::NotFound, "Not found"),
            Error::UnknownTool(_) => (StatusCode::NOT_FOUND, K::UnknownTool, "Unknown tool"),
            Error::Conflict(_) => (StatusCode::CONFLICT, K::Conflict, "Conflict"),
            Error::SandboxEnded { .. } => (StatusCode::CONFLICT, K::SandboxEnded, "Sandbox ended"),
            Error::PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                K::PreconditionFailed,
                "Precondition failed",
            ),
            Error::Unauthorized => (StatusCode::UNAUTHORIZED, K::Unauthorized, "Unauthorized"),
            Error::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                K::TooLarge,
                "Payload too large",
            ),
            Error::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                K::UnsupportedMediaType,
                "Unsupported media type",
            ),
            Error::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                K::MethodNotAllowed,
                "Method not allowed",
            ),
            Error::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                K::Unavailable,
                "Service unavailable",
            ),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, K::Forbidden, "Forbidden"),
            Error::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                K::TooManyRequests,
                "Too many requests",
            ),
            Error::Saturated { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                K::Saturated,
                "Server at capacity",
            ),
            Error::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                K::Internal,
                "Internal server error",
            ),
        }
    }

    /// The problem document this error answers with.
    pub fn problem(&self) -> Problem {
        let (status, kind, title) = self.parts();
        let detail = match self {
            Error::Internal(_) => {
                "the server failed to handle the request; it has been logged".to_owned()
            }
            // Bounded whatever the caller sent: a detail that repeats a
            // value is cut, never sent (or logged) whole.
            other => crate::value::clip(&other.to_string(), MAX_DETAIL).into_owned(),
        };
        Problem {
            kind,
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            field: match self {
                Error::Invalid { field, .. } => {
                    Some(crate::value::clip(field, crate::value::MAX_ECHO).into_owned())
                }
                _ => None,
            },
            ended: match self {
                Error::SandboxEnded { ended, .. } => Some((**ended).clone()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(cause) = &self {
            // Debug: one line, escaped, whatever the cause holds.
            tracing::error!(
                cause = ?crate::value::clip(cause, MAX_DETAIL),
                "internal error answering a request"
            );
        }
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Error::TooManyRequests { retry_after_s, .. }
        | Error::Saturated { retry_after_s, .. } = &self
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
        }
        if matches!(self, Error::Unauthorized) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"modal-agents\""),
            );
        }
        response
    }
}

impl From<SpecError> for Error {
    fn from(e: SpecError) -> Self {
        let field = e.field().to_owned();
        Error::invalid(field, e.to_string())
    }
}

impl From<SecretError> for Error {
    fn from(e: SecretError) -> Self {
        match e {
            SecretError::Name(e) => e.into(),
            SecretError::Unknown { .. } => Error::invalid("secrets", e.to_string()),
            SecretError::InUse { .. } => Error::Conflict(e.to_string()),
            // The cause was logged where it happened; the body stays generic.
            SecretError::Storage { secret, .. } => Error::Unavailable(format!(
                "secret `{secret}` could not be stored, so it was not changed; try again"
            )),
            other => Error::invalid("values", other.to_string()),
        }
    }
}

impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Spec(e) => e.into(),
            RuntimeError::Secret(e) => e.into(),
            RuntimeError::TooDeep(e) => Error::invalid(e.field.clone(), e.to_string()),
            RuntimeError::Invalid {
                field,
                value,
                expected,
            } => Error::invalid(field.clone(), format!("got {value}; expected {expected}")),
            RuntimeError::Backend(e @ crate::compute::BackendError::Image { .. }) => {
                Error::invalid("image_config.packages", e.to_string())
            }
            // What Modal needs (credentials, a working deploy) is said in full:
            // it is configuration, not an internal failure.
            RuntimeError::Backend(
                e @ (crate::compute::BackendError::ModalCredentials(_)
                | crate::compute::BackendError::NoBackend(_)
                | crate::compute::BackendError::Modal(_)),
            ) => Error::invalid("backend", e.to_string()),
            RuntimeError::UnknownFunction(_) | RuntimeError::UnknownTask(_) => {
                Error::NotFound(e.to_string())
            }
            RuntimeError::NotAMap(_) => Error::Conflict(e.to_string()),
            RuntimeError::ShutDown | RuntimeError::Unavailable(_) => {
                Error::Unavailable(e.to_string())
            }
            RuntimeError::TaskFailed { .. } | RuntimeError::Cancelled(_) => {
                Error::Conflict(e.to_string())
            }
            RuntimeError::WaitTimeout { .. } => Error::Conflict(e.to_string()),
            RuntimeError::TooManyFollowers { scope, .. } => {
                let (detail, retry_after_s) = (e.to_string(), 5);
                match scope {
                    crate::runtime::FollowScope::Task(_) => Error::TooManyRequests {
                        detail,
                        retry_after_s,
                    },
                    crate::runtime::FollowScope::Runtime => Error::Saturated {
                        detail,
                        retry_after_s,
                    },
                }
            }
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<VolumeError> for Error {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::Name(e) => e.into(),
            VolumeError::BadKey { .. } => Error::invalid("key", e.to_string()),
            VolumeError::BadPath { .. } => Error::invalid("path", e.to_string()),
            VolumeError::TooLarge { .. } => Error::invalid("body", e.to_string()),
            VolumeError::TooDeep(_) => Error::invalid("value", e.to_string()),
            VolumeError::Conflict { .. } => Error::PreconditionFailed(e.to_string()),
            VolumeError::NoSuchFile { .. } => Error::NotFound(e.to_string()),
            VolumeError::Unavailable(_) | VolumeError::Busy { .. } => {
                Error::Unavailable(e.to_string())
            }
            VolumeError::Io { .. } => Error::Internal(e.to_string()),
        }
    }
}

impl From<CommandError> for Error {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::UnknownTool { .. } => Error::UnknownTool(e.to_string()),
            CommandError::TooLarge { .. }
            | CommandError::InProgress { .. }
            | CommandError::NotReplayable { .. } => Error::Conflict(e.to_string()),
            CommandError::InvalidArguments {
                ref field,
                ref message,
                ..
            } if field == "idempotency_key" => {
                // Over HTTP the key is the header.
                Error::invalid("Idempotency-Key", message.clone())
            }
            // Over HTTP the field is named on its own; the detail says the rest.
            CommandError::InvalidArguments { field, message, .. } => Error::invalid(field, message),
            CommandError::Runtime { source, .. } => source.into(),
            CommandError::Volume { source, .. } => source.into(),
            CommandError::Sandbox { source, .. } => source.into(),
        }
    }
}

impl From<crate::sandbox::SandboxError> for Error {
    fn from(e: crate::sandbox::SandboxError) -> Self {
        use crate::sandbox::{SandboxError as S, SnapshotError};
        match e {
            S::Invalid { field, message } => Error::invalid(field, message),
            S::Unknown(_) | S::UnknownProcess { .. } | S::NoSuchFile(_) => {
                Error::NotFound(e.to_string())
            }
            S::Snapshot(SnapshotError::Unknown(_)) => Error::NotFound(e.to_string()),
            S::Snapshot(SnapshotError::TooLarge { .. }) => Error::invalid("workdir", e.to_string()),
            S::Ended { ref ended, .. } => Error::SandboxEnded {
                detail: e.to_string(),
                ended: Box::new(ended.clone()),
            },
            S::NameTaken { .. } | S::OverQuota { .. } => Error::Conflict(e.to_string()),
            S::AtCapacity { .. } | S::TooManyFollowers { .. } => Error::Saturated {
                detail: e.to_string(),
                retry_after_s: 5,
            },
            S::TooManyProcesses { .. } => Error::TooManyRequests {
                detail: e.to_string(),
                retry_after_s: 1,
            },
            S::FileTooLarge { max, .. } => Error::TooLarge(max as usize),
            S::Unavailable(_) | S::ShutDown => Error::Unavailable(e.to_string()),
            S::Snapshot(SnapshotError::Io(_)) | S::Io(_) => Error::Internal(e.to_string()),
        }
    }
}

impl From<AgentError> for Error {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::Id(e) => e.into(),
            AgentError::Invalid(_) => Error::invalid("package", e.to_string()),
            AgentError::Duplicate(_) => Error::Conflict(e.to_string()),
            AgentError::Unknown(_) => Error::NotFound(e.to_string()),
            AgentError::NoAgents { .. } => Error::Conflict(e.to_string()),
            AgentError::Unavailable(_) => Error::Unavailable(e.to_string()),
            AgentError::Volume(e) => e.into(),
            AgentError::Runtime(e) => (*e).into(),
            AgentError::Sandbox(e) => e.into(),
            AgentError::Spawn { .. }
            | AgentError::Codegen { .. }
            | AgentError::Repo(_)
            | AgentError::Handler(_)
            | AgentError::NoHandler { .. }
            | AgentError::TimedOut { .. }
            | AgentError::WorkerLost { .. } => Error::Internal(e.to_string()),
        }
    }
}
