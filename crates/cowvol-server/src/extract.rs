//! Extractors that turn bad input into the API's 400/413 envelope instead
//! of axum's plain-text rejections.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// A JSON body. An empty body means `T::default()`, for endpoints whose
/// fields are all optional; malformed JSON and unknown fields are 400 with
/// the path of the field at fault.
pub struct JsonBody<T>(pub T);

/// A JSON body that must be present (its type has required fields).
pub struct RequiredJson<T>(pub T);

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(crate::BODY_LIMIT_BYTES)
        } else {
            ApiError::bad_request("body", format!("could not read the request body: {rej}"))
        }
    })
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would take a JSON array for a struct's fields in order; the API
    // documents objects only.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("body", "the request body must be a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let field = if e.inner().is_syntax() || e.inner().is_eof() || path == "?" {
            "body".to_string()
        } else if path == "." {
            missing_field(&message).unwrap_or("body").to_string()
        } else {
            path
        };
        ApiError::bad_request(field, format!("invalid JSON body: {message}"))
    })?;
    Ok(value)
}

/// serde reports a missing field at the enclosing object's path; the
/// field's own name is only in the message.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        // No body at all means the defaults; a body of only whitespace is
        // not JSON and is refused like any other malformed body.
        if bytes.is_empty() || bytes.trim_ascii() == b"null" {
            return Ok(JsonBody(T::default()));
        }
        decode(&bytes).map(JsonBody)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for RequiredJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        decode(&bytes).map(RequiredJson)
    }
}

/// Query parameters; unknown or malformed ones are 400.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| ApiError::bad_request(e.path().to_string(), format!("invalid query: {}", e.inner())))
    }
}
