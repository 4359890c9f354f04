//! Request extraction that answers every rejection as problem+json: JSON
//! bodies (content type, size, syntax, shape with the field at fault).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::{ApiState, Error};

/// How long a request's body may take to arrive once its headers have: a
/// client trickling its body cannot hold a connection (and its handler)
/// for ever.
pub(crate) const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The body, within the size limit and [`BODY_READ_TIMEOUT`].
async fn body_bytes(req: Request, state: &ApiState) -> Result<Bytes, Error> {
    match tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(req, state)).await {
        Err(_) => Err(Error::BadRequest(format!(
            "the request body did not arrive within {} s",
            BODY_READ_TIMEOUT.as_secs()
        ))),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(Error::TooLarge(state.config.body_limit))
        }
        Ok(Err(e)) => Err(Error::BadRequest(e.body_text())),
    }
}

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

/// Parses a JSON body through the one parser ([`crate::commands::parse_from`]):
/// bad syntax is a 400, a field that does not fit a 422 naming it.
pub(crate) fn parse_json<T: DeserializeOwned + utoipa::ToSchema>(bytes: &[u8]) -> Result<T, Error> {
    use crate::commands::ParseError;
    // A whole number out of range is said with the schema's range.
    let said = |e| {
        Error::from(crate::commands::with_bounds(
            e,
            &crate::wire::json_schema::<T>(),
        ))
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = crate::commands::parse_from("request", &mut de).map_err(|e| match e {
        // serde_json calls some misfits syntax (a number where an enum's
        // name goes): well-formed JSON is read again as a value, so the
        // error names the field.
        ParseError::Syntax(why) => match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(value) => match crate::commands::parse_from::<T, _>("request", value) {
                Err(ParseError::Field(e)) => said(e),
                _ => Error::BadRequest(format!("malformed JSON: {why}")),
            },
            Err(_) => Error::BadRequest(format!("malformed JSON: {why}")),
        },
        ParseError::Field(e) => said(e),
    })?;
    de.end()
        .map_err(|e| Error::BadRequest(format!("malformed JSON: {e}")))?;
    Ok(value)
}

impl<T: DeserializeOwned + utoipa::ToSchema> FromRequest<ApiState> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Error> {
        if !is_json(req.headers()) {
            return Err(Error::UnsupportedMediaType);
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A raw body within the size limit (for file uploads).
pub(crate) struct RawBody(pub(crate) Bytes);

impl FromRequest<ApiState> for RawBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Error> {
        body_bytes(req, state).await.map(RawBody)
    }
}
