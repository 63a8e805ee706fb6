//! OpenAI's error body, as every endpoint sends it.

use serde::{Deserialize, Serialize};

use crate::openai;

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`
/// (also sent as an SSE event when a stream fails; then it may carry the
/// `usage` and `receipt_id` of what was delivered and charged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorObject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<openai::Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}
