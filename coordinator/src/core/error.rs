//! What the core's operations fail with. Each variant is a case a caller
//! acts on differently; the HTTP layer maps them to statuses and OpenAI
//! error bodies in one place (`http::error`), and nothing here knows HTTP.

use std::time::Duration;

/// Everything a builder-facing operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No key, an unknown key, or a revoked one.
    #[error("{0}")]
    Unauthorized(String),
    /// The request itself is wrong; `param` names the field.
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
    },
    /// The prompt does not fit the model's context (as the coordinator
    /// counted it): a 400 with OpenAI's `context_length_exceeded` code.
    #[error("{message}")]
    ContextLength {
        message: String,
        param: &'static str,
    },
    /// Out of balance or budget.
    #[error("{0}")]
    PaymentRequired(String),
    /// Over a rate limit; retry after the given time.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
    },
    /// An operator action without the operator key.
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
    /// The coordinator is stopping.
    #[error("{0}")]
    ShuttingDown(String),
    /// The books are overloaded (no database connection, or no turn at
    /// the app's admissions, within the wait); retry later.
    #[error("{0}")]
    Overloaded(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: param.map(str::to_string),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<sharenet_ledger::StoreError> for Error {
    fn from(e: sharenet_ledger::StoreError) -> Self {
        match e {
            sharenet_ledger::StoreError::Busy(m) => {
                Self::Overloaded(format!("the coordinator is busy, retry shortly ({m})"))
            }
            e => Self::Internal(format!("books: {e}")),
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Internal(format!("background task: {e}"))
    }
}
