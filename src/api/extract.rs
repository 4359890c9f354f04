//! Request extraction that answers every rejection as problem+json: JSON
//! bodies (content type, size, syntax, shape with the field at fault).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::{ApiState, Error};

/// A JSON body, parsed strictly.
pub(crate) struct ApiJson<T>(pub(crate) T);

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|v| {
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        })
}

/// Parses JSON, naming the field at fault for shape errors.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return Error::BadRequest(format!("malformed JSON: {inner}"));
        }
        let path = e.path().to_string();
        let message = inner.to_string();
        let field = if path == "." {
            message.split('`').nth(1).unwrap_or("(body)").to_owned()
        } else {
            path
        };
        Error::invalid(field, message)
    })?;
    de.end()
        .map_err(|e| Error::BadRequest(format!("malformed JSON: {e}")))?;
    Ok(value)
}

impl<T: DeserializeOwned> FromRequest<ApiState> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Error> {
        if !is_json(req.headers()) {
            return Err(Error::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::TooLarge(state.config.body_limit)
            } else {
                Error::BadRequest(e.body_text())
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A raw body within the size limit (for file uploads).
pub(crate) struct RawBody(pub(crate) Bytes);

impl FromRequest<ApiState> for RawBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Error> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::TooLarge(state.config.body_limit)
                } else {
                    Error::BadRequest(e.body_text())
                }
            })
    }
}
