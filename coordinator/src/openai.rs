//! OpenAI-compatible request parsing and response shapes.

use serde::Deserialize;
use serde_json::{Value, json};
use sharenet_proto::{
    ChatMessage, FinishReason, JobInput, MAX_JOB_TOKENS, SamplingParams, TokenLogprob, Usage,
};

use crate::error::ApiError;
use crate::prefs::{ProviderPrefs, model_list};

/// Completion tokens when the request names no limit.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

#[derive(Debug, Deserialize)]
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
    /// The builder's end customer (metered from the accounts issue on).
    pub user: Option<String>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u8>,
    pub tools: Option<Value>,
    pub response_format: Option<Value>,
    /// OpenRouter-style routing preferences (see `prefs.rs`).
    pub provider: Option<Value>,
    /// Models to fall back to, in order, when `model` has no node.
    pub models: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: ExtraSampling,
}

/// Sampling knobs beyond OpenAI's, as vLLM and llama.cpp accept them, plus
/// OpenAI's penalties.
#[derive(Debug, Default, Deserialize)]
pub struct ExtraSampling {
    pub top_k: Option<u32>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Option<Prompt>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub n: Option<u32>,
    pub best_of: Option<u32>,
    /// OpenAI: the number of alternatives per token (0..=5); any value turns logprobs on.
    pub logprobs: Option<u8>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub user: Option<String>,
    pub provider: Option<Value>,
    pub models: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: ExtraSampling,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: Option<Prompt>,
    pub encoding_format: Option<String>,
    pub dimensions: Option<u32>,
    pub user: Option<String>,
    pub provider: Option<Value>,
}

/// What kind of endpoint a job came from (shapes the response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Chat,
    Completion,
    Embedding,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct InMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// A request turned into what a node runs.
#[derive(Debug, Clone)]
pub struct Job {
    pub kind: JobKind,
    pub model: String,
    pub input: JobInput,
    pub params: SamplingParams,
    pub stream: bool,
    pub include_usage: bool,
    /// Embeddings: return base64 of little-endian f32 instead of numbers.
    pub base64: bool,
    /// Routing preferences (the `provider` object).
    pub prefs: ProviderPrefs,
    /// `model` first, then the `models` fallbacks.
    pub models: Vec<String>,
}

/// Common sampling fields of chat and text completions.
struct Sampling<'a> {
    max_tokens: u32,
    max_tokens_param: &'static str,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    stop: Option<Stop>,
    logprobs: bool,
    top_logprobs: u8,
    extra: &'a ExtraSampling,
}

impl Sampling<'_> {
    fn into_params(self) -> Result<SamplingParams, ApiError> {
        let params = SamplingParams {
            max_tokens: self.max_tokens,
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed,
            stop: match self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s],
                Some(Stop::Many(v)) => v,
            },
            top_k: self.extra.top_k.unwrap_or(0),
            min_p: self.extra.min_p.unwrap_or(0.0),
            repetition_penalty: self.extra.repetition_penalty.unwrap_or(1.0),
            presence_penalty: self.extra.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.extra.frequency_penalty.unwrap_or(0.0),
            logprobs: self.logprobs,
            top_logprobs: self.top_logprobs,
        };
        if let Err(e) = params.validate() {
            let param = match &e {
                sharenet_proto::ProtoError::Invalid { field, .. } => *field,
                _ => "",
            };
            let param = if param == "max_tokens" {
                self.max_tokens_param
            } else {
                param
            };
            return Err(param_error(
                format!("{e} (max_tokens may be at most {MAX_JOB_TOKENS})"),
                param,
            ));
        }
        Ok(params)
    }
}

impl CompletionRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        parse_body(body)
    }

    pub fn into_job(self) -> Result<Job, ApiError> {
        if self.model.trim().is_empty() {
            return Err(param_error("`model` must not be empty", "model"));
        }
        let prompt = match self.prompt {
            Some(Prompt::One(p)) => p,
            Some(Prompt::Many(mut v)) if v.len() == 1 => v.remove(0),
            Some(Prompt::Many(_)) => {
                return Err(param_error(
                    "only one prompt per request is supported",
                    "prompt",
                ));
            }
            Some(Prompt::Tokens(_) | Prompt::TokenBatches(_)) => {
                return Err(param_error(
                    "token-id prompts are not supported; send text",
                    "prompt",
                ));
            }
            None => return Err(param_error("`prompt` is required", "prompt")),
        };
        if prompt.is_empty() {
            return Err(param_error("`prompt` must not be empty", "prompt"));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(param_error("only n = 1 is supported", "n"));
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return Err(param_error("only best_of = 1 is supported", "best_of"));
        }
        if self.echo == Some(true) {
            return Err(param_error("echo is not supported", "echo"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(param_error("suffix is not supported", "suffix"));
        }
        if self.logprobs.is_some_and(|n| n > 5) {
            return Err(param_error("logprobs must be between 0 and 5", "logprobs"));
        }
        let params = Sampling {
            // OpenAI's default for the legacy completions endpoint.
            max_tokens: self.max_tokens.unwrap_or(16),
            max_tokens_param: "max_tokens",
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop: self.stop,
            logprobs: self.logprobs.is_some(),
            top_logprobs: self.logprobs.unwrap_or(0),
            extra: &self.extra,
        }
        .into_params()?;
        let prefs = ProviderPrefs::parse(self.provider.as_ref())?;
        let models = model_list(&self.model, self.models.as_ref())?;
        Ok(Job {
            prefs,
            models,
            kind: JobKind::Completion,
            model: self.model,
            input: JobInput::Prompt { prompt },
            params,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            base64: false,
        })
    }
}

impl EmbeddingRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        parse_body(body)
    }

    pub fn into_job(self) -> Result<Job, ApiError> {
        if self.model.trim().is_empty() {
            return Err(param_error("`model` must not be empty", "model"));
        }
        let inputs = match self.input {
            Some(Prompt::One(s)) => vec![s],
            Some(Prompt::Many(v)) => v,
            Some(Prompt::Tokens(_) | Prompt::TokenBatches(_)) => {
                return Err(param_error(
                    "token-id inputs are not supported; send text",
                    "input",
                ));
            }
            None => return Err(param_error("`input` is required", "input")),
        };
        if inputs.is_empty() || inputs.iter().any(String::is_empty) {
            return Err(param_error("`input` must be non-empty text(s)", "input"));
        }
        if inputs.len() > sharenet_proto::MAX_EMBED_INPUTS {
            return Err(param_error(
                format!(
                    "at most {} inputs per request",
                    sharenet_proto::MAX_EMBED_INPUTS
                ),
                "input",
            ));
        }
        let base64 = match self.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(param_error(
                    format!("encoding_format {other:?} is not supported (float, base64)"),
                    "encoding_format",
                ));
            }
        };
        if self.dimensions.is_some() {
            return Err(param_error(
                "dimensions is not supported; models return their native size",
                "dimensions",
            ));
        }
        let prefs = ProviderPrefs::parse(self.provider.as_ref())?;
        Ok(Job {
            prefs,
            models: vec![self.model.clone()],
            kind: JobKind::Embedding,
            model: self.model,
            input: JobInput::Embed { inputs },
            params: SamplingParams {
                max_tokens: 1,
                ..SamplingParams::default()
            },
            stream: false,
            include_usage: false,
            base64,
        })
    }
}

/// A request body as `T`; any failure is a 400 with serde's reason.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}"), None))
}

fn param_error(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(message, Some(param))
}

impl ChatCompletionRequest {
    /// Parses the body, mapping every failure to a 400 with the reason.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        parse_body(body)
    }

    pub fn into_job(self) -> Result<Job, ApiError> {
        if self.model.trim().is_empty() {
            return Err(param_error("`model` must not be empty", "model"));
        }
        if self.messages.is_empty() {
            return Err(param_error("`messages` must not be empty", "messages"));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(param_error("only n = 1 is supported", "n"));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_null()) {
            return Err(param_error("tools are not supported yet", "tools"));
        }
        if let Some(f) = &self.response_format
            && f.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t != "text")
        {
            return Err(param_error(
                "only the text response_format is supported",
                "response_format",
            ));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(param_error(
                        format!(
                            "messages[{i}].role {other:?} is not supported (system, developer, user, assistant)"
                        ),
                        &format!("messages[{i}].role"),
                    ));
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.into_iter().enumerate() {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            _ => {
                                return Err(param_error(
                                    "only text content parts are supported",
                                    &format!("messages[{i}].content[{j}]"),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            messages.push(ChatMessage {
                role: role.to_string(),
                content,
            });
        }
        let params = Sampling {
            max_tokens: self
                .max_completion_tokens
                .or(self.max_tokens)
                .unwrap_or(DEFAULT_MAX_TOKENS),
            max_tokens_param: if self.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            },
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop: self.stop,
            logprobs: self.logprobs == Some(true),
            top_logprobs: self.top_logprobs.unwrap_or(0),
            extra: &self.extra,
        }
        .into_params()?;
        let prefs = ProviderPrefs::parse(self.provider.as_ref())?;
        let models = model_list(&self.model, self.models.as_ref())?;
        Ok(Job {
            prefs,
            models,
            kind: JobKind::Chat,
            model: self.model,
            input: JobInput::Chat { messages },
            params,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            base64: false,
        })
    }
}

/// The `usage` object: OpenAI's token counts plus what the job cost.
pub fn usage_json(usage: &Usage, charge: &sharenet_market::Charge) -> Value {
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": u64::from(usage.input_tokens) + u64::from(usage.output_tokens),
        "cost": crate::http::cost_json(charge),
    })
}

pub struct Completed<'a> {
    pub kind: JobKind,
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub text: &'a str,
    pub logprobs: Option<&'a [TokenLogprob]>,
    pub finish_reason: FinishReason,
    pub usage: &'a Usage,
    pub charge: &'a sharenet_market::Charge,
    pub receipt_id: &'a str,
    pub node: &'a str,
}

/// Chat logprobs: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub fn chat_logprobs_json(lps: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|l| {
            json!({
                "token": l.token, "logprob": l.logprob, "bytes": l.bytes,
                "top_logprobs": l.top.iter().map(|t| json!({
                    "token": t.token, "logprob": t.logprob, "bytes": t.bytes,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "content": content })
}

/// Legacy completions logprobs: parallel arrays; `offset` is where the
/// first token's text starts in the whole completion.
pub fn completion_logprobs_json(lps: &[TokenLogprob], offset: usize) -> Value {
    let mut text_offset = Vec::with_capacity(lps.len());
    let mut at = offset;
    for l in lps {
        text_offset.push(at);
        at += l.bytes.len();
    }
    json!({
        "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|l| {
            l.top.iter().map(|t| (t.token.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

fn logprobs_json(kind: JobKind, lps: Option<&[TokenLogprob]>, offset: usize) -> Value {
    match (kind, lps) {
        (JobKind::Chat, Some(l)) => chat_logprobs_json(l),
        (JobKind::Completion, Some(l)) => completion_logprobs_json(l, offset),
        _ => Value::Null,
    }
}

/// A non-streaming `chat.completion` or `text_completion`.
pub fn completion_json(c: &Completed<'_>) -> Value {
    let logprobs = logprobs_json(c.kind, c.logprobs, 0);
    let (object, choice) = match c.kind {
        JobKind::Completion => (
            "text_completion",
            json!({"index": 0, "text": c.text, "logprobs": logprobs,
                   "finish_reason": c.finish_reason.as_str()}),
        ),
        _ => (
            "chat.completion",
            json!({"index": 0, "message": {"role": "assistant", "content": c.text},
                   "logprobs": logprobs, "finish_reason": c.finish_reason.as_str()}),
        ),
    };
    json!({
        "id": c.id,
        "object": object,
        "created": c.created,
        "model": c.model,
        "system_fingerprint": c.node,
        "choices": [choice],
        "usage": usage_json(c.usage, c.charge),
        "receipt_id": c.receipt_id,
    })
}

/// One streaming chunk: `text` (None for the role-only first chat chunk),
/// its logprobs, and the finish reason on the last.
pub struct Chunk<'a> {
    pub kind: JobKind,
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub text: Option<&'a str>,
    pub logprobs: Option<&'a [TokenLogprob]>,
    pub text_offset: usize,
    pub finish_reason: Option<FinishReason>,
}

pub fn chunk_json(c: &Chunk<'_>) -> Value {
    let logprobs = logprobs_json(c.kind, c.logprobs, c.text_offset);
    let finish = c.finish_reason.map(|f| f.as_str());
    let (object, choice) = match c.kind {
        JobKind::Completion => (
            "text_completion",
            json!({"index": 0, "text": c.text.unwrap_or(""), "logprobs": logprobs,
                   "finish_reason": finish}),
        ),
        _ => {
            let delta = match (c.text, c.finish_reason) {
                (_, Some(_)) => json!({}),
                (None, None) => json!({"role": "assistant", "content": ""}),
                (Some(t), None) => json!({"content": t}),
            };
            (
                "chat.completion.chunk",
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}),
            )
        }
    };
    json!({
        "id": c.id,
        "object": object,
        "created": c.created,
        "model": c.model,
        "choices": [choice],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(body: Value) -> Result<Job, ApiError> {
        ChatCompletionRequest::parse(body.to_string().as_bytes())?.into_job()
    }

    #[test]
    fn accepts_openai_shapes() {
        let j = job(json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]}
            ],
            "stop": "END", "max_completion_tokens": 7, "stream": true,
            "stream_options": {"include_usage": true}, "seed": 3, "user": "cust-1"
        }))
        .unwrap();
        assert_eq!(j.params.max_tokens, 7);
        assert_eq!(j.params.stop, vec!["END".to_string()]);
        assert!(j.stream && j.include_usage);
        let JobInput::Chat { messages } = j.input else {
            unreachable!()
        };
        assert_eq!(messages[0].role, "system");
        assert_eq!(messages[1].content, "hi");
    }

    #[test]
    fn refusals_name_the_parameter() {
        let cases = [
            (json!({"model": "m", "messages": []}), "messages"),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}),
                "n",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 5}),
                "temperature",
            ),
            (
                json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                "max_tokens",
            ),
        ];
        for (body, param) in cases {
            match job(body.clone()) {
                Err(ApiError::BadRequest { param: Some(p), .. }) => assert_eq!(p, param, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(
            ChatCompletionRequest::parse(b"{not json"),
            Err(ApiError::BadRequest { .. })
        ));
    }

    #[test]
    fn completions_and_embeddings_parse_and_refuse_with_the_parameter() {
        let c = CompletionRequest::parse(
            json!({"model": "m", "prompt": "Once", "logprobs": 2, "top_k": 5, "min_p": 0.1,
                   "frequency_penalty": 0.5})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
        .into_job()
        .unwrap();
        assert_eq!(c.params.max_tokens, 16);
        assert!(c.params.logprobs);
        assert_eq!((c.params.top_logprobs, c.params.top_k), (2, 5));
        let bad = |body: Value, param: &str| {
            let r =
                CompletionRequest::parse(body.to_string().as_bytes()).and_then(|r| r.into_job());
            match r {
                Err(ApiError::BadRequest { param: Some(p), .. }) => assert_eq!(p, param, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        };
        bad(json!({"model": "m"}), "prompt");
        bad(json!({"model": "m", "prompt": "x", "echo": true}), "echo");
        bad(
            json!({"model": "m", "prompt": "x", "logprobs": 9}),
            "logprobs",
        );
        bad(json!({"model": "m", "prompt": "x", "min_p": 3}), "min_p");
        bad(json!({"model": "m", "prompt": [1, 2]}), "prompt");

        let e = EmbeddingRequest::parse(
            json!({"model": "e", "input": ["a", "b"], "encoding_format": "base64"})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
        .into_job()
        .unwrap();
        assert!(e.base64);
        assert!(matches!(e.input, JobInput::Embed { ref inputs } if inputs.len() == 2));
        let r = EmbeddingRequest::parse(json!({"model": "e", "input": ""}).to_string().as_bytes())
            .unwrap()
            .into_job();
        assert!(matches!(r, Err(ApiError::BadRequest { param: Some(p), .. }) if p == "input"));
    }
}
