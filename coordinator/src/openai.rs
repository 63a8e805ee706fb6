//! OpenAI-compatible request parsing and response shapes.

use serde::Deserialize;
use serde_json::{Value, json};
use sharenet_proto::{ChatMessage, FinishReason, JobInput, MAX_JOB_TOKENS, SamplingParams, Usage};

use crate::error::ApiError;

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
    pub tools: Option<Value>,
    pub response_format: Option<Value>,
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
    pub model: String,
    pub input: JobInput,
    pub params: SamplingParams,
    pub stream: bool,
    pub include_usage: bool,
}

fn param_error(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(message, Some(param))
}

impl ChatCompletionRequest {
    /// Parses the body, mapping every failure to a 400 with the reason.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}"), None))
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
        if self.logprobs == Some(true) {
            return Err(param_error("logprobs are not supported yet", "logprobs"));
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
        let max_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS);
        let params = SamplingParams {
            max_tokens,
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed,
            stop: match self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s],
                Some(Stop::Many(v)) => v,
            },
        };
        if let Err(e) = params.validate() {
            let param = match &e {
                sharenet_proto::ProtoError::Invalid { field, .. } => *field,
                _ => "",
            };
            let param = if param == "max_tokens" && self.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                param
            };
            return Err(param_error(
                format!("{e} (max_tokens may be at most {MAX_JOB_TOKENS})"),
                param,
            ));
        }
        Ok(Job {
            model: self.model,
            input: JobInput::Chat { messages },
            params,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
        })
    }
}

/// The `usage` object: OpenAI's token counts plus what the job cost.
pub fn usage_json(usage: &Usage, cost_nano_usd: u64) -> Value {
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": u64::from(usage.input_tokens) + u64::from(usage.output_tokens),
        "cost": {"provider_nano_usd": cost_nano_usd, "unit": "nano-USD"},
    })
}

pub struct Completed<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub text: &'a str,
    pub finish_reason: FinishReason,
    pub usage: &'a Usage,
    pub cost: u64,
    pub receipt_id: &'a str,
    pub node: &'a str,
}

/// A non-streaming `chat.completion`.
pub fn completion_json(c: &Completed<'_>) -> Value {
    json!({
        "id": c.id,
        "object": "chat.completion",
        "created": c.created,
        "model": c.model,
        "system_fingerprint": c.node,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": null,
            "finish_reason": c.finish_reason.as_str(),
        }],
        "usage": usage_json(c.usage, c.cost),
        "receipt_id": c.receipt_id,
    })
}

/// One streaming `chat.completion.chunk`.
pub fn chunk_json(
    id: &str,
    created: u64,
    model: &str,
    delta: Value,
    finish_reason: Option<FinishReason>,
) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason.map(|f| f.as_str()),
        }],
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
}
