//! OpenAI-compatible requests and responses, with sharenet's extensions:
//! the `provider` routing object and `models` fallback list (OpenRouter's
//! shapes), vLLM-style sampling knobs, and on responses OpenRouter's
//! `usage.cost` (a number, USD) with the exact integer breakdown in
//! `usage.cost_details`, the serving node as `provider`, and the
//! `receipt_id`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Cost;
use crate::field::Checked;
pub use crate::provider::{DataCollection, MaxPrice, ProviderPreferences, SortKey};
pub use crate::tools::{FunctionDef, JsonSchemaFormat, ResponseFormat, Tool, ToolChoice, ToolKind};

// ---- requests ----

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<InMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub n: Option<u32>,
    /// The builder's end customer.
    pub user: Option<String>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u8>,
    /// Read on its own ([`Checked`]), as are `tool_choice`,
    /// `response_format` and `provider`: every mistake is a 400 naming
    /// the exact field.
    pub tools: Option<Checked<Vec<Tool>>>,
    pub tool_choice: Option<Checked<ToolChoice>>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<Checked<ResponseFormat>>,
    pub logit_bias: Option<Value>,
    /// OpenRouter-style routing preferences.
    pub provider: Option<Checked<ProviderPreferences>>,
    /// Models to fall back to, in order, when `model` has no node.
    pub models: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: ExtraSampling,
}

/// Sampling knobs beyond OpenAI's, as vLLM and llama.cpp accept them, plus
/// OpenAI's penalties.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ExtraSampling {
    pub top_k: Option<u32>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Option<Prompt>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub n: Option<u32>,
    pub best_of: Option<u32>,
    pub logit_bias: Option<Value>,
    /// OpenAI: the number of alternatives per token (0..=5); any value
    /// turns logprobs on.
    pub logprobs: Option<u8>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub user: Option<String>,
    pub provider: Option<Checked<ProviderPreferences>>,
    pub models: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: ExtraSampling,
}

/// A prompt or embedding input: text, texts, or token ids.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: Option<Prompt>,
    pub encoding_format: Option<String>,
    pub dimensions: Option<u32>,
    pub user: Option<String>,
    pub provider: Option<Checked<ProviderPreferences>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct InMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant turn's tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<OutToolCall>>,
    /// A `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A tool call in a response (and in an assistant message sent back).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct OutToolCall {
    pub id: String,
    /// `"function"`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as JSON text, as the model wrote them.
    pub arguments: String,
}

/// One entry of a streamed `delta.tool_calls`: the SDKs put calls together
/// by `index`, appending `function.arguments` fragments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct DeltaToolCall {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub function: DeltaFunction,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct DeltaFunction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

// ---- responses ----

/// The `usage` object: OpenAI's token counts plus what the job cost:
/// `cost` in USD as OpenRouter gives it (a number for display and for
/// clients written against OpenRouter), and the exact integers it is
/// made of in `cost_details`. Money is kept and summed as the integers;
/// `cost` is only ever computed from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u64,
    /// OpenAI's breakdown of the prompt tokens. Always zero cached
    /// tokens: no node reuses a prefix cache the builder is billed less
    /// for (yet).
    #[serde(default)]
    pub prompt_tokens_details: PromptTokensDetails,
    /// OpenAI's breakdown of the completion tokens. Always zero: no
    /// served model's reasoning tokens are told apart from its output,
    /// and predicted outputs are not supported.
    #[serde(default)]
    pub completion_tokens_details: CompletionTokensDetails,
    pub cost: f64,
    pub cost_details: Cost,
    /// Who counted the tokens: `coordinator` when it counted the prompt
    /// and the output itself with the model's catalogued tokenizer (the
    /// node's signed counts had to match), `node` when the counts are the
    /// node's word (a model outside the catalog allowed by its operator,
    /// embeddings). Every usage the coordinator returns states it; absent
    /// only in bodies from elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_by: Option<crate::catalog::CountedBy>,
}

/// `usage.prompt_tokens_details`, as OpenAI returns it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens read from a prefix cache (always 0 here).
    pub cached_tokens: u32,
}

/// `usage.completion_tokens_details`, as OpenAI returns it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    /// Hidden reasoning tokens (always 0 here).
    pub reasoning_tokens: u32,
    /// Predicted-output tokens that appeared in the completion (always 0:
    /// `prediction` is not supported).
    pub accepted_prediction_tokens: u32,
    /// Predicted-output tokens that did not (always 0).
    pub rejected_prediction_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32, cost: Cost) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: u64::from(prompt_tokens) + u64::from(completion_tokens),
            prompt_tokens_details: PromptTokensDetails::default(),
            completion_tokens_details: CompletionTokensDetails::default(),
            cost: cost.usd(),
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

/// A non-streamed `chat.completion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    /// `"chat.completion"`.
    pub object: String,
    pub created: u64,
    pub model: String,
    /// The serving node's peer id.
    pub system_fingerprint: String,
    /// The node that served (its peer id), as OpenRouter names the
    /// provider.
    pub provider: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    /// The first choice's receipt.
    pub receipt_id: String,
    /// Every choice's receipt, in choice order (`n` > 1: one job each).
    #[serde(default)]
    pub receipt_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: String,
}

/// The reply: text, or (with `finish_reason: "tool_calls"`) calls, when
/// `content` may be null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<OutToolCall>,
}

/// A non-streamed legacy `text_completion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextCompletion {
    pub id: String,
    /// `"text_completion"`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub provider: String,
    pub choices: Vec<TextChoice>,
    pub usage: Usage,
    pub receipt_id: String,
    #[serde(default)]
    pub receipt_ids: Vec<String>,
}

/// A legacy completion choice; in a stream `finish_reason` is null until
/// the last chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
}

/// One `chat.completion.chunk` of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    /// The node that serves the stream.
    pub provider: String,
    pub choices: Vec<ChunkChoice>,
    /// Only on the final usage chunk (`stream_options.include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// What a chunk adds: the role on the first, text after, `{}` on the last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<DeltaToolCall>>,
}

/// One chunk of a streamed legacy completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub provider: String,
    pub choices: Vec<TextChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_id: Option<String>,
}

/// Chat logprobs: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// Legacy completions logprobs: parallel arrays; `text_offset` is where
/// each token's text starts in the whole completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

/// `POST /v1/embeddings`' answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingList {
    pub object: String,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
    pub receipt_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    /// `"embedding"`.
    pub object: String,
    pub index: u32,
    pub embedding: EmbeddingVector,
}

/// Numbers (`encoding_format: "float"`) or base64 of little-endian f32.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
    /// USD, from `cost_details` (see [`Usage`]).
    pub cost: f64,
    pub cost_details: Cost,
    /// Who counted the tokens (see [`Usage::counted_by`]): `node` for
    /// embeddings today, which the coordinator does not count yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_by: Option<crate::catalog::CountedBy>,
}

/// One entry of `GET /v1/models` (and `GET /v1/models/{id}`): OpenAI's
/// fields plus what OpenRouter's list tells, summed over the live nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    /// `"model"`.
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// `"text"` (chat and completions) or `"embedding"`.
    pub kind: String,
    /// Live nodes serving it.
    pub nodes: usize,
    /// The longest context window any node offers, in tokens.
    pub context_length: u32,
    /// The lowest prices among them.
    pub pricing: ModelPricing,
    /// The highest prices among them.
    pub max_pricing: ModelPricing,
    /// What at least one node offers; a request that needs one goes only
    /// to those nodes.
    pub capabilities: ModelCapabilities,
    /// Weight formats on offer (`Q8_0`, `F32`, …), for `provider.quantizations`.
    pub quantizations: Vec<String>,
    /// Licenses the nodes state for it (lowercase), for `provider.licenses`.
    pub licenses: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCapabilities {
    pub tools: bool,
    pub structured_outputs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPricing {
    pub prompt_nano_usd_per_token: u64,
    pub completion_nano_usd_per_token: u64,
}

/// One generation's facts, as OpenRouter's `GET /api/v1/generation?id=`
/// answers them (inside `{"data": …}`): what ran where, for how long, and
/// what it cost. Kept by the coordinator for every booked job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The receipt id (the response id without its `chatcmpl-` prefix).
    pub id: String,
    pub model: String,
    /// The node that served (peer id).
    pub provider_name: String,
    /// The app that paid (only it can look the generation up).
    pub app_id: String,
    /// Unix milliseconds when the request reached a node.
    pub created_at_ms: u64,
    pub tokens_prompt: u32,
    pub tokens_completion: u32,
    /// USD, from `cost_details`.
    pub total_cost: f64,
    pub cost_details: Cost,
    /// From sending the job to its end, ms.
    pub latency: u64,
    /// Time to the first token, ms.
    pub time_to_first_token: u64,
    /// From the first token to the end, ms.
    pub generation_time: u64,
    /// `stop`, `length`, `tool_calls`; `null` when cancelled.
    pub finish_reason: Option<String>,
    /// The client went away or the node broke mid-stream: the part
    /// delivered was booked.
    pub cancelled: bool,
    /// Who counted the tokens (see [`Usage::counted_by`]); absent for
    /// generations kept before it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_by: Option<crate::catalog::CountedBy>,
}
