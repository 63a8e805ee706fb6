//! The one place coordinator errors become HTTP statuses and OpenAI error
//! JSON: `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Everything a builder-facing request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
    },
    /// Out of balance or budget.
    #[error("{0}")]
    PaymentRequired(String),
    /// Over a rate limit; retry after the given time.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    /// Operator endpoints with a missing or wrong operator key.
    #[error("{0}")]
    Forbidden(String),
    #[error("the model `{0}` does not exist on the network")]
    ModelNotFound(String),
    #[error("{0}")]
    NotFound(String),
    /// No node can take the request now; the client may retry later.
    #[error("{0}")]
    NoCapacity(String),
    /// The node failed after streaming started, or sent something invalid.
    #[error("{0}")]
    BadGateway(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: param.map(str::to_string),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::PaymentRequired(_) => StatusCode::PAYMENT_REQUIRED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::ModelNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::NoCapacity(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI error object (also sent as an SSE event mid-stream).
    pub fn body(&self) -> serde_json::Value {
        let (kind, code, param) = match self {
            Self::Unauthorized(_) => ("authentication_error", Some("invalid_api_key"), None),
            Self::BadRequest { param, .. } => ("invalid_request_error", None, param.clone()),
            Self::PaymentRequired(_) => ("insufficient_quota", Some("insufficient_quota"), None),
            Self::RateLimited { .. } => ("rate_limit_error", Some("rate_limit_exceeded"), None),
            Self::Forbidden(_) => ("permission_error", Some("forbidden"), None),
            Self::ModelNotFound(_) => (
                "invalid_request_error",
                Some("model_not_found"),
                Some("model".to_string()),
            ),
            Self::NotFound(_) => ("invalid_request_error", Some("not_found"), None),
            Self::NoCapacity(_) => ("server_error", Some("no_capacity"), None),
            Self::BadGateway(_) => ("server_error", Some("node_error"), None),
            Self::Internal(_) => ("server_error", Some("internal_error"), None),
        };
        json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        if matches!(self, Self::NoCapacity(_)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        if let Self::RateLimited { retry_after, .. } = &self
            && let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if matches!(self, Self::Unauthorized(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
