//! The one place where failures become HTTP status codes and the error
//! envelope `{"success": false, "error": {"code", "message", "field"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// A failed request: the status, a stable machine-readable code, a sentence
/// for people, and the request field at fault when there is one.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

/// The `error` object of a failed answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code to match on: `not_found`, `busy`, `held`, `timeout`, `invalid_argument`, ...
    pub code: String,
    /// What went wrong, as a sentence.
    pub message: String,
    /// The request field (JSON path or query parameter) at fault, for `invalid_argument`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A failed answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Failure {
    /// Always false.
    pub success: bool,
    /// What failed.
    pub error: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), field: None }
    }

    /// 400: the request is malformed; `field` names the culprit.
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError { field: Some(field.into()), ..Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message) }
    }

    /// 404 for a resource that does not exist or belongs to another owner:
    /// the two must look the same so ids of others cannot be probed.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} was not found"))
    }

    /// 409 for a request that contradicts the state it refers to.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 401: no token, or one that is not in the tokens file.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid token is required (Authorization: Bearer TOKEN)")
    }

    /// 413: the body is larger than the server accepts.
    pub fn too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("the request body exceeds {limit} bytes"))
    }

    /// 503: the request did not finish within the server's request timeout.
    pub fn request_timeout(secs: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            format!("the request did not finish within {secs} s; it may still complete"),
        )
    }

    /// 500 for a bug or a lost worker; the message says which.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 404 for a path no route serves.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    /// 405 for a method a route does not serve.
    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<cowvol::Error> for ApiError {
    fn from(e: cowvol::Error) -> Self {
        use cowvol::Error as E;
        let message = e.to_string();
        let (status, code) = match &e {
            E::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            E::AlreadyExists { .. } => (StatusCode::CONFLICT, "already_exists"),
            E::Busy { .. } => (StatusCode::CONFLICT, "busy"),
            E::Held { .. } => (StatusCode::CONFLICT, "held"),
            E::ReadOnly { .. } => (StatusCode::CONFLICT, "read_only"),
            // The engine promises nothing was applied; the message says so.
            E::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            E::OutOfRange { .. } | E::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            E::NoSpace { .. } => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
            E::Locked { .. } => (StatusCode::SERVICE_UNAVAILABLE, "locked"),
            // After a failed write or sync the store refuses changes until
            // it is reopened: the service is unavailable, not the request wrong.
            E::Poisoned { .. } => (StatusCode::SERVICE_UNAVAILABLE, "poisoned"),
            E::Corruption { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corruption"),
            E::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "io"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Failure {
            success: false,
            error: ErrorBody { code: self.code.to_string(), message: self.message, field: self.field },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_their_status_codes() {
        let cases: Vec<(cowvol::Error, u16)> = vec![
            (cowvol::Error::NotFound { what: "volume vol-1".into() }, 404),
            (cowvol::Error::AlreadyExists { what: "volume \"a\"".into() }, 409),
            (cowvol::Error::Busy { what: "volume vol-1".into(), reason: "restore".into() }, 409),
            (cowvol::Error::Held { what: "snapshot snap-1".into() }, 409),
            (cowvol::Error::Timeout { what: "restore".into(), waited_ms: 1 }, 504),
            (cowvol::Error::InvalidArgument("bad".into()), 400),
            (cowvol::Error::NoSpace { during: "writing".into() }, 507),
            (cowvol::Error::Io { during: "reading".into(), source: std::io::Error::other("x") }, 500),
        ];
        for (e, status) in cases {
            assert_eq!(ApiError::from(e).status().as_u16(), status);
        }
    }
}
