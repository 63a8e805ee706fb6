//! The one place core errors become HTTP statuses, headers and OpenAI
//! error JSON: `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sharenet_api::{ErrorObject, ErrorResponse};

use crate::core::error::Error;

/// A core error on its way out over HTTP.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl<E: Into<Error>> From<E> for ApiError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self(Error::bad_request(message, param))
    }

    pub fn status(&self) -> StatusCode {
        status(&self.0)
    }

    /// The OpenAI error object (also sent as an SSE event mid-stream).
    pub fn body(&self) -> ErrorResponse {
        body(&self.0)
    }
}

/// The status for a core error.
pub fn status(e: &Error) -> StatusCode {
    match e {
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::BadRequest { .. } | Error::ContextLength { .. } => StatusCode::BAD_REQUEST,
        Error::PaymentRequired(_) => StatusCode::PAYMENT_REQUIRED,
        Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::ModelNotFound(_) | Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::NoCapacity(_) | Error::ShuttingDown(_) | Error::Overloaded(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Error::BadGateway(_) => StatusCode::BAD_GATEWAY,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The OpenAI error body for a core error.
pub fn body(e: &Error) -> ErrorResponse {
    let (kind, code, param) = match e {
        Error::Unauthorized(_) => ("authentication_error", Some("invalid_api_key"), None),
        Error::BadRequest { param, .. } => ("invalid_request_error", None, param.clone()),
        Error::ContextLength { param, .. } => (
            "invalid_request_error",
            Some("context_length_exceeded"),
            Some((*param).to_string()),
        ),
        Error::PaymentRequired(_) => ("insufficient_quota", Some("insufficient_quota"), None),
        Error::RateLimited { .. } => ("rate_limit_error", Some("rate_limit_exceeded"), None),
        Error::Forbidden(_) => ("permission_error", Some("forbidden"), None),
        Error::ModelNotFound(_) => (
            "invalid_request_error",
            Some("model_not_found"),
            Some("model".to_string()),
        ),
        Error::NotFound(_) => ("invalid_request_error", Some("not_found"), None),
        Error::NoCapacity(_) => ("server_error", Some("no_capacity"), None),
        Error::ShuttingDown(_) => ("server_error", Some("shutting_down"), None),
        Error::Overloaded(_) => ("server_error", Some("overloaded"), None),
        Error::BadGateway(_) => ("server_error", Some("node_error"), None),
        Error::Internal(_) => ("server_error", Some("internal_error"), None),
    };
    ErrorResponse {
        error: ErrorObject {
            message: e.to_string(),
            kind: kind.into(),
            param,
            code: code.map(str::to_string),
        },
        usage: None,
        receipt_id: None,
    }
}

/// The same error in Anthropic's shape (`/v1/messages`):
/// `{"type": "error", "error": {"type", "message"}}`.
pub fn anthropic_error_body(e: &Error) -> serde_json::Value {
    let kind = match e {
        Error::Unauthorized(_) => "authentication_error",
        Error::BadRequest { .. } | Error::ContextLength { .. } => "invalid_request_error",
        Error::PaymentRequired(_) => "billing_error",
        Error::RateLimited { .. } => "rate_limit_error",
        Error::Forbidden(_) => "permission_error",
        Error::ModelNotFound(_) | Error::NotFound(_) => "not_found_error",
        Error::NoCapacity(_) | Error::ShuttingDown(_) | Error::Overloaded(_) => "overloaded_error",
        Error::BadGateway(_) | Error::Internal(_) => "api_error",
    };
    let message = match e {
        Error::BadRequest {
            param: Some(p),
            message,
        } => format!("{p}: {message}"),
        other => other.to_string(),
    };
    serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        let headers = response.headers_mut();
        match &self.0 {
            Error::NoCapacity(_) | Error::ShuttingDown(_) | Error::Overloaded(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            }
            Error::RateLimited { retry_after, .. } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
                    headers.insert(header::RETRY_AFTER, v);
                }
            }
            Error::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// axum's own rejections (a body over the limit, a wrong content type, a
/// bad query string) are plain text; builders' clients expect OpenAI's
/// JSON error body, so they are rewritten here, keeping the status.
pub async fn json_rejections(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    // axum's rejection text says what was wrong (e.g. the unknown query
    // field); it is ours, short, and kept as the message.
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (message, code) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            format!("the request body is larger than the coordinator accepts ({text})"),
            "request_too_large",
        ),
        _ if text.is_empty() => (
            format!("the request was refused ({status})"),
            "invalid_request",
        ),
        _ => (text, "invalid_request"),
    };
    let body = ErrorResponse {
        error: ErrorObject {
            message,
            kind: "invalid_request_error".into(),
            param: None,
            code: Some(code.into()),
        },
        usage: None,
        receipt_id: None,
    };
    (status, Json(body)).into_response()
}
