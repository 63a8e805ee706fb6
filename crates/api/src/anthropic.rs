//! Anthropic's Messages API (`POST /v1/messages`): requests, responses and
//! stream events, for clients that speak it (the official `anthropic`
//! SDKs). The coordinator turns them into the same jobs as OpenAI's chat.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Cost;
pub use crate::anthropic_tools::{ChoiceKind, Tool, ToolChoice};
use crate::field::Checked;
use crate::provider::ProviderPreferences;

/// `POST /v1/messages`.
#[derive(Debug, Clone, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    pub max_tokens: Option<u32>,
    pub messages: Vec<InMessage>,
    /// A string or text blocks.
    pub system: Option<Value>,
    #[serde(default)]
    pub stop_sequences: Vec<String>,
    #[serde(default)]
    pub stream: bool,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    /// `[{name, description, input_schema}]` (`anthropic_tools.rs`).
    pub tools: Option<Checked<Vec<Tool>>>,
    /// `{"type": "auto" | "any" | "tool" | "none", "name",
    /// "disable_parallel_tool_use"}`.
    pub tool_choice: Option<Checked<ToolChoice>>,
    pub metadata: Option<Metadata>,
    /// sharenet: OpenRouter-style routing preferences, as on chat.
    pub provider: Option<Checked<ProviderPreferences>>,
    /// Anything else (`thinking`, `service_tier`, …) is refused by name.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    /// The builder's end customer.
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InMessage {
    pub role: String,
    /// A string or content blocks (kept raw: each block type is checked).
    pub content: Value,
}

/// A content block of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

/// A non-streamed reply (`"type": "message"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    /// `"message"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `"assistant"`.
    pub role: String,
    pub model: String,
    pub content: Vec<Block>,
    /// `end_turn`, `max_tokens`, `stop_sequence` or `tool_use`.
    pub stop_reason: Option<String>,
    pub stop_sequence: Option<String>,
    pub usage: MessageUsage,
    /// sharenet: the receipt of the job.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub receipt_id: String,
    /// sharenet: the node that served (its peer id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
}

/// Token counts, plus sharenet's `cost` (USD) and its exact integers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageUsage {
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Anthropic's prompt-cache counts: always 0 (no prompt caching).
    #[serde(default)]
    pub cache_creation_input_tokens: u32,
    #[serde(default)]
    pub cache_read_input_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_details: Option<Cost>,
    /// sharenet: who counted the tokens (see `openai::Usage::counted_by`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_by: Option<crate::catalog::CountedBy>,
}

impl MessageUsage {
    pub fn new(input_tokens: u32, output_tokens: u32, cost: Option<Cost>) -> Self {
        Self {
            input_tokens,
            output_tokens,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
            cost: cost.as_ref().map(Cost::usd),
            cost_details: cost,
            counted_by: None,
        }
    }

    /// The same usage, saying who counted it.
    pub fn counted_by(self, by: crate::catalog::CountedBy) -> Self {
        Self {
            counted_by: Some(by),
            ..self
        }
    }
}
