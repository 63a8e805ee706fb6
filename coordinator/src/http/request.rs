//! Builder requests into core jobs: OpenAI's chat, completions and
//! embeddings bodies (`sharenet_api::openai`), validated strictly, with
//! every refusal a 400 naming the parameter; and OpenRouter's `provider`
//! object and `models` fallback list.
//!
//! Differences from OpenRouter, because sharenet's providers are nodes and
//! money is integers: `order` / `only` / `ignore` name nodes by their
//! ed25519 public key in hex (as receipts show them); `max_price` is in
//! nano-USD per token (`{"prompt": 200, "completion": 400}` = $0.20 / $0.40
//! per million tokens), integers only.

use serde_json::Value;
use sharenet_api::openai::{
    ChatCompletionRequest, CompletionRequest, Content, EmbeddingRequest, ExtraSampling, InMessage,
    Prompt, ProviderPreferences, SortKey as WireSort, Stop,
};
use sharenet_proto::{ChatMessage, JobInput, MAX_JOB_TOKENS, SamplingParams};

use crate::core::error::Error;
use crate::core::job::{Job, JobKind, ProviderPrefs, SortKey};

/// Completion tokens when a chat request names no limit.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// How the answer is shaped; the core does not care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub stream: bool,
    pub include_usage: bool,
    /// Embeddings: base64 of little-endian f32 instead of numbers.
    pub base64: bool,
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
    fn into_params(self) -> Result<SamplingParams, Error> {
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

/// `POST /v1/completions` → a job, or a 400 naming the parameter.
pub fn completion_job(this: CompletionRequest) -> Result<(Job, Shape), Error> {
    if this.model.trim().is_empty() {
        return Err(param_error("`model` must not be empty", "model"));
    }
    let prompt = match this.prompt {
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
    if this.n.is_some_and(|n| n != 1) {
        return Err(param_error("only n = 1 is supported", "n"));
    }
    if this.best_of.is_some_and(|n| n != 1) {
        return Err(param_error("only best_of = 1 is supported", "best_of"));
    }
    if this.echo == Some(true) {
        return Err(param_error("echo is not supported", "echo"));
    }
    if this.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(param_error("suffix is not supported", "suffix"));
    }
    if this.logprobs.is_some_and(|n| n > 5) {
        return Err(param_error("logprobs must be between 0 and 5", "logprobs"));
    }
    let params = Sampling {
        // OpenAI's default for the legacy completions endpoint.
        max_tokens: this.max_tokens.unwrap_or(16),
        max_tokens_param: "max_tokens",
        temperature: this.temperature,
        top_p: this.top_p,
        seed: this.seed,
        stop: this.stop,
        logprobs: this.logprobs.is_some(),
        top_logprobs: this.logprobs.unwrap_or(0),
        extra: &this.extra,
    }
    .into_params()?;
    let prefs = provider_prefs(this.provider.as_ref())?;
    let models = model_list(&this.model, this.models.as_ref())?;
    let shape = Shape {
        stream: this.stream,
        include_usage: this.stream_options.is_some_and(|o| o.include_usage),
        base64: false,
    };
    let job = Job {
        prefs,
        models,
        kind: JobKind::Completion,
        input: JobInput::Prompt { prompt },
        params,
    };
    Ok((job, shape))
}

/// `POST /v1/embeddings` → a job, or a 400 naming the parameter.
pub fn embedding_job(this: EmbeddingRequest) -> Result<(Job, Shape), Error> {
    if this.model.trim().is_empty() {
        return Err(param_error("`model` must not be empty", "model"));
    }
    let inputs = match this.input {
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
    let base64 = match this.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(param_error(
                format!("encoding_format {other:?} is not supported (float, base64)"),
                "encoding_format",
            ));
        }
    };
    if this.dimensions.is_some() {
        return Err(param_error(
            "dimensions is not supported; models return their native size",
            "dimensions",
        ));
    }
    let prefs = provider_prefs(this.provider.as_ref())?;
    let job = Job {
        prefs,
        models: vec![this.model],
        kind: JobKind::Embedding,
        input: JobInput::Embed { inputs },
        params: SamplingParams {
            max_tokens: 1,
            ..SamplingParams::default()
        },
    };
    let shape = Shape {
        stream: false,
        include_usage: false,
        base64,
    };
    Ok((job, shape))
}

/// A request body as `T`; any failure is a 400 with serde's reason.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body)
        .map_err(|e| Error::bad_request(format!("invalid JSON body: {e}"), None))
}

fn param_error(message: impl Into<String>, param: &str) -> Error {
    Error::bad_request(message, Some(param))
}

/// OpenAI chat messages → the node's messages: `developer` is `system`,
/// content parts must be text.
fn chat_messages(input: Vec<InMessage>) -> Result<Vec<ChatMessage>, Error> {
    let mut messages = Vec::with_capacity(input.len());
    for (i, m) in input.into_iter().enumerate() {
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
    Ok(messages)
}

/// `POST /v1/chat/completions` → a job, or a 400 naming the parameter.
pub fn chat_job(this: ChatCompletionRequest) -> Result<(Job, Shape), Error> {
    if this.model.trim().is_empty() {
        return Err(param_error("`model` must not be empty", "model"));
    }
    if this.messages.is_empty() {
        return Err(param_error("`messages` must not be empty", "messages"));
    }
    if this.n.is_some_and(|n| n != 1) {
        return Err(param_error("only n = 1 is supported", "n"));
    }
    if this.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(param_error("tools are not supported yet", "tools"));
    }
    if let Some(f) = &this.response_format
        && f.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "text")
    {
        return Err(param_error(
            "only the text response_format is supported",
            "response_format",
        ));
    }
    let messages = chat_messages(this.messages)?;
    let params = Sampling {
        max_tokens: this
            .max_completion_tokens
            .or(this.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS),
        max_tokens_param: if this.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        },
        temperature: this.temperature,
        top_p: this.top_p,
        seed: this.seed,
        stop: this.stop,
        logprobs: this.logprobs == Some(true),
        top_logprobs: this.top_logprobs.unwrap_or(0),
        extra: &this.extra,
    }
    .into_params()?;
    let prefs = provider_prefs(this.provider.as_ref())?;
    let models = model_list(&this.model, this.models.as_ref())?;
    let shape = Shape {
        stream: this.stream,
        include_usage: this.stream_options.is_some_and(|o| o.include_usage),
        base64: false,
    };
    let job = Job {
        prefs,
        models,
        kind: JobKind::Chat,
        input: JobInput::Chat { messages },
        params,
    };
    Ok((job, shape))
}

fn nodes(field: &str, ids: &[String]) -> Result<Vec<[u8; 32]>, Error> {
    ids.iter()
        .enumerate()
        .map(|(i, s)| {
            let bytes = hex::decode(s)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok());
            bytes.ok_or_else(|| {
                Error::bad_request(
                    format!("provider.{field}[{i}]: {s:?} is not a node key (64 hex characters)"),
                    Some(&format!("provider.{field}[{i}]")),
                )
            })
        })
        .collect()
}

/// Parses the request's `provider` value (absent: the defaults) strictly:
/// an unknown field is a 400 naming it.
pub fn provider_prefs(v: Option<&Value>) -> Result<ProviderPrefs, Error> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(ProviderPrefs::any());
    };
    let f: ProviderPreferences = serde_json::from_value(v.clone())
        .map_err(|e| Error::bad_request(format!("provider: {e}"), Some("provider")))?;
    if let Some(t) = f.min_trust
        && !(0.0..=1.0).contains(&t)
    {
        return Err(Error::bad_request(
            "provider.min_trust: must be between 0 and 1",
            Some("provider.min_trust"),
        ));
    }
    Ok(ProviderPrefs {
        sort: f.sort.map(|s| match s {
            WireSort::Price => SortKey::Price,
            WireSort::Latency => SortKey::Latency,
            WireSort::Throughput => SortKey::Throughput,
        }),
        order: nodes("order", &f.order)?,
        only: nodes("only", &f.only)?,
        ignore: nodes("ignore", &f.ignore)?,
        allow_fallbacks: f.allow_fallbacks.unwrap_or(true),
        max_price_in: f.max_price.and_then(|m| m.prompt),
        max_price_out: f.max_price.and_then(|m| m.completion),
        min_trust: f.min_trust,
        region: f.region,
        quantizations: f.quantizations,
        sensitive: f.sensitive.unwrap_or(false),
        weights_sha256: match f.weights_sha256 {
            None => None,
            Some(h) => Some(
                hex::decode(&h)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        Error::bad_request(
                            format!("provider.weights_sha256: {h:?} is not a SHA-256 (64 hex characters)"),
                            Some("provider.weights_sha256"),
                        )
                    })?,
            ),
        },
    })
}

/// The models to try in order: `model`, then the `models` fallbacks.
pub fn model_list(model: &str, models: Option<&Vec<String>>) -> Result<Vec<String>, Error> {
    let mut out = vec![model.to_string()];
    for (i, m) in models.into_iter().flatten().enumerate() {
        if m.trim().is_empty() {
            return Err(Error::bad_request(
                format!("models[{i}] must not be empty"),
                Some(&format!("models[{i}]")),
            ));
        }
        if !out.contains(m) {
            out.push(m.clone());
        }
    }
    if out.len() > 8 {
        return Err(Error::bad_request("at most 8 models", Some("models")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(body: Value) -> Result<(Job, Shape), Error> {
        chat_job(parse_body(body.to_string().as_bytes())?)
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
        let (j, shape) = j;
        assert_eq!(j.params.max_tokens, 7);
        assert_eq!(j.params.stop, vec!["END".to_string()]);
        assert!(shape.stream && shape.include_usage);
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
                Err(Error::BadRequest { param: Some(p), .. }) => assert_eq!(p, param, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_body::<ChatCompletionRequest>(b"{not json"),
            Err(Error::BadRequest { .. })
        ));
    }

    #[test]
    fn completions_and_embeddings_parse_and_refuse_with_the_parameter() {
        let (c, _) = completion_job(
            parse_body(
                json!({"model": "m", "prompt": "Once", "logprobs": 2, "top_k": 5, "min_p": 0.1,
                       "frequency_penalty": 0.5})
                .to_string()
                .as_bytes(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.params.max_tokens, 16);
        assert!(c.params.logprobs);
        assert_eq!((c.params.top_logprobs, c.params.top_k), (2, 5));
        let bad = |body: Value, param: &str| {
            let r = parse_body(body.to_string().as_bytes()).and_then(completion_job);
            match r {
                Err(Error::BadRequest { param: Some(p), .. }) => assert_eq!(p, param, "{body}"),
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

        let (e, shape) = embedding_job(
            parse_body(
                json!({"model": "e", "input": ["a", "b"], "encoding_format": "base64"})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(shape.base64);
        assert!(matches!(e.input, JobInput::Embed { ref inputs } if inputs.len() == 2));
        let r = parse_body(json!({"model": "e", "input": ""}).to_string().as_bytes())
            .and_then(embedding_job);
        assert!(matches!(r, Err(Error::BadRequest { param: Some(p), .. }) if p == "input"));
    }

    #[test]
    fn parses_openrouter_shapes_and_names_unknown_fields() {
        let key = "ab".repeat(32);
        let p = provider_prefs(Some(&json!({
            "sort": "latency", "order": [key], "allow_fallbacks": false,
            "max_price": {"prompt": 100, "completion": 300}, "min_trust": 0.7, "region": "eu"
        })))
        .unwrap();
        assert_eq!(p.sort, Some(SortKey::Latency));
        assert_eq!(p.order, vec![[0xab; 32]]);
        assert!(!p.allow_fallbacks);
        assert_eq!(p.max_price_out, Some(300));
        assert!(provider_prefs(None).unwrap().allow_fallbacks);

        let err = provider_prefs(Some(&json!({"sortt": "price"}))).unwrap_err();
        assert!(err.to_string().contains("unknown field `sortt`"), "{err}");
        let err = provider_prefs(Some(&json!({"only": ["node-1"]}))).unwrap_err();
        assert!(
            matches!(err, Error::BadRequest { param: Some(ref p), .. } if p == "provider.only[0]")
        );
        assert!(provider_prefs(Some(&json!({"sort": "cheapest"}))).is_err());
        assert!(provider_prefs(Some(&json!({"max_price": {"prompt": 0.5}}))).is_err());
        assert!(provider_prefs(Some(&json!({"min_trust": 2}))).is_err());
    }

    #[test]
    fn model_lists_dedupe_and_validate() {
        let l = model_list("a", Some(&vec!["b".into(), "a".into()])).unwrap();
        assert_eq!(l, vec!["a", "b"]);
        assert!(model_list("a", Some(&vec![String::new()])).is_err());
    }
}
