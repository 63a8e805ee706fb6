//! Builder requests into core jobs: OpenAI's chat, completions and
//! embeddings bodies (`sharenet_api::openai`), validated strictly, with
//! every refusal a 400 naming the parameter; and OpenRouter's `provider`
//! object (`sharenet_api::provider`, which says how it differs from
//! OpenRouter's) and `models` fallback list. `tools`, `tool_choice`,
//! `response_format` and `provider` read themselves
//! (`sharenet_api::field::Checked`); their refusals become 400s here.

use serde_json::Value;
use sharenet_api::field::{Checked, FieldError};
use sharenet_api::openai::{
    ChatCompletionRequest, CompletionRequest, Content, DataCollection, EmbeddingRequest,
    ExtraSampling, InMessage, Prompt, ProviderPreferences, ResponseFormat as WireFormat,
    SortKey as WireSort, Stop, Tool, ToolChoice as WireChoice,
};
use sharenet_proto::{
    ChatMessage, JobInput, MAX_JOB_TOKENS, ResponseFormat, SamplingParams, ToolCall, ToolChoice,
    Tools,
};

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
    /// Choices to generate (`n`).
    pub n: u32,
}

/// Most choices one request may ask for.
pub const MAX_N: u32 = 16;

/// `n`: 1 to [`MAX_N`].
fn choices(n: Option<u32>) -> Result<u32, Error> {
    match n.unwrap_or(1) {
        n @ 1..=MAX_N => Ok(n),
        _ => Err(param_error(format!("n must be between 1 and {MAX_N}"), "n")),
    }
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
    logit_bias: Option<&'a Value>,
    extra: &'a ExtraSampling,
}

/// OpenAI's `logit_bias`: `{"token id": bias}`, bias -100 to 100.
fn parse_logit_bias(v: Option<&Value>) -> Result<Vec<(u32, f32)>, Error> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(map) = v.as_object() else {
        return Err(param_error(
            "logit_bias must be an object of token id to bias",
            "logit_bias",
        ));
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, b) in map {
        let id: u32 = k
            .parse()
            .map_err(|_| param_error(format!("{k:?} is not a token id"), "logit_bias"))?;
        let bias = b
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| {
                param_error(
                    format!("the bias for token {id} must be a number from -100 to 100"),
                    "logit_bias",
                )
            })?;
        out.push((id, bias as f32));
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

impl Sampling<'_> {
    fn into_params(self) -> Result<SamplingParams, Error> {
        let logit_bias = parse_logit_bias(self.logit_bias)?;
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
            logit_bias,
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
    let n = choices(this.n)?;
    if this.best_of.is_some_and(|b| b != n) {
        return Err(param_error(
            "best_of is not supported (other than equal to n)",
            "best_of",
        ));
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
        max_tokens: this.max_completion_tokens.or(this.max_tokens).unwrap_or(16),
        max_tokens_param: if this.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        },
        temperature: this.temperature,
        top_p: this.top_p,
        seed: this.seed,
        stop: this.stop,
        logprobs: this.logprobs.is_some(),
        top_logprobs: this.logprobs.unwrap_or(0),
        logit_bias: this.logit_bias.as_ref(),
        extra: &this.extra,
    }
    .into_params()?;
    let prefs = provider_prefs(this.provider.as_ref())?;
    let models = model_list(&this.model, this.models.as_ref())?;
    let shape = Shape {
        stream: this.stream,
        include_usage: this.stream_options.is_some_and(|o| o.include_usage),
        base64: false,
        n,
    };
    let job = Job {
        prefs,
        models,
        kind: JobKind::Completion,
        input: JobInput::Prompt { prompt },
        params,
        tools: None,
        response_format: None,
        input_tokens: Default::default(),
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
        tools: None,
        response_format: None,
        input_tokens: Default::default(),
    };
    let shape = Shape {
        stream: false,
        include_usage: false,
        base64,
        n: 1,
    };
    Ok((job, shape))
}

/// A request body as `T`; any failure is a 400 with serde's reason.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body)
        .map_err(|e| Error::bad_request(format!("invalid JSON body: {e}"), None))
}

pub(super) fn param_error(message: impl Into<String>, param: &str) -> Error {
    Error::bad_request(message, Some(param))
}

/// A field that refused itself (`sharenet_api::field`), as the same 400.
fn field_error(e: FieldError) -> Error {
    param_error(e.message, &e.param)
}

/// OpenAI chat messages → the node's messages: `developer` is `system`,
/// content parts must be text, an assistant turn may carry `tool_calls`,
/// and a `tool` message must name the call it answers.
fn chat_messages(input: Vec<InMessage>) -> Result<Vec<ChatMessage>, Error> {
    let mut messages = Vec::with_capacity(input.len());
    for (i, m) in input.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                return Err(param_error(
                    format!(
                        "messages[{i}].role {other:?} is not supported (system, developer, user, assistant, tool)"
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
                        (kind, _) => {
                            return Err(param_error(
                                format!(
                                    "content parts of type {kind:?} are not supported; only text"
                                ),
                                &format!("messages[{i}].content[{j}]"),
                            ));
                        }
                    }
                }
                text
            }
        };
        let mut message = ChatMessage::new(role, content);
        if let Some(calls) = m.tool_calls.filter(|c| !c.is_empty()) {
            if role != "assistant" {
                return Err(param_error(
                    "only assistant messages carry tool_calls",
                    &format!("messages[{i}].tool_calls"),
                ));
            }
            for (j, c) in calls.into_iter().enumerate() {
                let at = format!("messages[{i}].tool_calls[{j}]");
                if c.kind != "function" {
                    return Err(param_error(
                        format!("type {:?} is not supported; only \"function\"", c.kind),
                        &format!("{at}.type"),
                    ));
                }
                if !sharenet_proto::valid_tool_name(&c.function.name) {
                    return Err(param_error(
                        format!("{:?} is not a function name", c.function.name),
                        &format!("{at}.function.name"),
                    ));
                }
                message.tool_calls.push(ToolCall {
                    id: c.id,
                    name: c.function.name,
                    arguments: c.function.arguments,
                });
            }
        }
        if role == "tool" {
            match m.tool_call_id.filter(|id| !id.is_empty()) {
                Some(id) => message.tool_call_id = Some(id),
                None => {
                    return Err(param_error(
                        "a tool message must name the call it answers",
                        &format!("messages[{i}].tool_call_id"),
                    ));
                }
            }
        }
        messages.push(message);
    }
    Ok(messages)
}

/// `tools` and `tool_choice` → the job's tools; every mistake is a 400
/// naming the field.
fn parse_tools(
    tools: Option<&Checked<Vec<Tool>>>,
    choice: Option<&Checked<WireChoice>>,
    parallel: Option<bool>,
) -> Result<Option<Tools>, Error> {
    let Some(tools) = tools else {
        if choice.is_some_and(|c| !matches!(c, Checked::Valid(WireChoice::None | WireChoice::Auto)))
        {
            return Err(param_error(
                "tool_choice needs tools to choose from",
                "tool_choice",
            ));
        }
        return Ok(None);
    };
    let specs = tools.get().map_err(field_error)?;
    if specs.is_empty() {
        return Ok(None);
    }
    let choice = match choice {
        None => ToolChoice::Auto,
        Some(c) => c.get().map_err(field_error)?.into(),
    };
    validated_tools(Tools {
        specs: specs.iter().map(Tool::to_spec).collect(),
        choice,
        parallel: parallel.unwrap_or(true),
    })
}

/// `tools` checked (names, schemas, the forced function), or a 400 naming
/// the field at fault; shared by the OpenAI and Anthropic bodies.
pub(super) fn validated_tools(tools: Tools) -> Result<Option<Tools>, Error> {
    tools.validate().map_err(|e| {
        let param = match &e {
            sharenet_proto::ProtoError::Invalid { field, .. } => *field,
            _ => "tools",
        };
        param_error(e.to_string(), param)
    })?;
    Ok(Some(tools))
}

/// `response_format` → the job's format (`text` is none).
fn parse_response_format(v: Option<&Checked<WireFormat>>) -> Result<Option<ResponseFormat>, Error> {
    let Some(format) = v else {
        return Ok(None);
    };
    let Some(format) = format.get().map_err(field_error)?.to_job() else {
        return Ok(None);
    };
    format
        .validate()
        .map_err(|e| param_error(e.to_string(), "response_format.json_schema"))?;
    Ok(Some(format))
}

/// `POST /v1/chat/completions` → a job, or a 400 naming the parameter.
pub fn chat_job(this: ChatCompletionRequest) -> Result<(Job, Shape), Error> {
    if this.model.trim().is_empty() {
        return Err(param_error("`model` must not be empty", "model"));
    }
    if this.messages.is_empty() {
        return Err(param_error("`messages` must not be empty", "messages"));
    }
    let n = choices(this.n)?;
    let tools = parse_tools(
        this.tools.as_ref(),
        this.tool_choice.as_ref(),
        this.parallel_tool_calls,
    )?;
    let response_format = parse_response_format(this.response_format.as_ref())?;
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
        logit_bias: this.logit_bias.as_ref(),
        extra: &this.extra,
    }
    .into_params()?;
    let prefs = provider_prefs(this.provider.as_ref())?;
    let models = model_list(&this.model, this.models.as_ref())?;
    let shape = Shape {
        stream: this.stream,
        include_usage: this.stream_options.is_some_and(|o| o.include_usage),
        base64: false,
        n,
    };
    let job = Job {
        prefs,
        models,
        kind: JobKind::Chat,
        input: JobInput::Chat { messages },
        params,
        tools,
        response_format,
        input_tokens: Default::default(),
    };
    Ok((job, shape))
}

/// The request's `provider` (absent: the defaults), checked strictly: an
/// unknown field, a trust floor outside 0..=1 or a malformed key is a 400
/// naming it.
pub fn provider_prefs(v: Option<&Checked<ProviderPreferences>>) -> Result<ProviderPrefs, Error> {
    let Some(v) = v else {
        return Ok(ProviderPrefs::any());
    };
    let f = v.get().map_err(field_error)?;
    f.check_min_trust().map_err(field_error)?;
    Ok(ProviderPrefs {
        sort: f.sort.map(|s| match s {
            WireSort::Price => SortKey::Price,
            WireSort::Latency => SortKey::Latency,
            WireSort::Throughput => SortKey::Throughput,
        }),
        order: f.order_keys().map_err(field_error)?,
        only: f.only_keys().map_err(field_error)?,
        ignore: f.ignore_keys().map_err(field_error)?,
        allow_fallbacks: f.allow_fallbacks.unwrap_or(true),
        max_price_in: f.max_price.and_then(|m| m.prompt),
        max_price_out: f.max_price.and_then(|m| m.completion),
        min_trust: f.min_trust,
        region: f.region.clone(),
        quantizations: f.quantizations.clone(),
        sensitive: f.sensitive.unwrap_or(false),
        deny_data_collection: f.data_collection == Some(DataCollection::Deny),
        licenses: f.licenses.clone(),
        weights_sha256: f.weights_hash().map_err(field_error)?,
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

    fn prefs(v: Value) -> Result<ProviderPrefs, Error> {
        provider_prefs(Some(&Checked::from_value(v)))
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
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 17}),
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
        let p = prefs(json!({
            "sort": "latency", "order": [key], "allow_fallbacks": false,
            "max_price": {"prompt": 100, "completion": 300}, "min_trust": 0.7, "region": "eu"
        }))
        .unwrap();
        assert_eq!(p.sort, Some(SortKey::Latency));
        assert_eq!(p.order, vec![[0xab; 32]]);
        assert!(!p.allow_fallbacks);
        assert_eq!(p.max_price_out, Some(300));
        assert!(provider_prefs(None).unwrap().allow_fallbacks);

        let err = prefs(json!({"sortt": "price"})).unwrap_err();
        assert!(err.to_string().contains("unknown field `sortt`"), "{err}");
        let err = prefs(json!({"only": ["node-1"]})).unwrap_err();
        assert!(
            matches!(err, Error::BadRequest { param: Some(ref p), .. } if p == "provider.only[0]")
        );
        assert!(prefs(json!({"sort": "cheapest"})).is_err());
        assert!(prefs(json!({"max_price": {"prompt": 0.5}})).is_err());
        assert!(prefs(json!({"min_trust": 2})).is_err());
    }

    #[test]
    fn tools_formats_and_logit_bias_parse_or_name_the_parameter() {
        let weather = json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}});
        let (j, _) = job(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
            ],
            "tools": [weather], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false,
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": true}},
            "logit_bias": {"50": -100, "7": 2.5}
        }))
        .unwrap();
        let tools = j.tools.as_ref().unwrap();
        assert_eq!(tools.choice, ToolChoice::Function("get_weather".into()));
        assert!(!tools.parallel);
        assert!(j.needs().tools && j.needs().structured_outputs);
        assert_eq!(j.params.logit_bias, vec![(7, 2.5), (50, -100.0)]);
        let JobInput::Chat { messages } = &j.input else {
            unreachable!()
        };
        assert_eq!(messages[1].tool_calls[0].name, "get_weather");
        assert_eq!(messages[2].tool_call_id.as_deref(), Some("call_1"));

        let base = || json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            b
        };
        let cases = [
            (
                with("tools", json!([{"type": "retrieval"}])),
                "tools[0].type",
            ),
            (
                with(
                    "tools",
                    json!([{"type": "function", "function": {"name": "a b"}}]),
                ),
                "tools[0].function.name",
            ),
            (with("tool_choice", json!("required")), "tool_choice"),
            (
                with("response_format", json!({"type": "xml"})),
                "response_format.type",
            ),
            (
                with("response_format", json!({"type": "json_schema"})),
                "response_format.json_schema",
            ),
            (with("logit_bias", json!({"x": 1})), "logit_bias"),
            (with("logit_bias", json!({"1": 101})), "logit_bias"),
            (
                with("messages", json!([{"role": "tool", "content": "r"}])),
                "messages[0].tool_call_id",
            ),
            (
                with(
                    "messages",
                    json!([{"role": "user", "content": "x", "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]),
                ),
                "messages[0].tool_calls",
            ),
        ];
        for (body, param) in cases {
            match job(body.clone()) {
                Err(Error::BadRequest { param: Some(p), .. }) => assert_eq!(p, param, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn checked_fields_refuse_as_before() {
        let refusal = |extra: Value| {
            let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            b.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            job(b).err().map(|e| match e {
                Error::BadRequest { message, param } => format!("{}: {message}", param.unwrap()),
                e => panic!("{e:?}"),
            })
        };
        // An empty list ignores tool_choice; no list refuses all but auto and none.
        assert_eq!(refusal(json!({"tools": [], "tool_choice": "x"})), None);
        assert_eq!(refusal(json!({"tool_choice": "none", "tools": null})), None);
        assert_eq!(refusal(json!({"response_format": {"type": "text"}})), None);
        let needs = "tool_choice: tool_choice needs tools to choose from";
        assert_eq!(refusal(json!({"tool_choice": "x"})).unwrap(), needs);
        let array = "tools: tools must be an array";
        assert_eq!(refusal(json!({"tools": {}})).unwrap(), array);
        let sortt = refusal(json!({"provider": {"sortt": 1}})).unwrap();
        assert!(sortt.starts_with("provider: provider: unknown field `sortt`"));
    }

    #[test]
    fn model_lists_dedupe_and_validate() {
        let l = model_list("a", Some(&vec!["b".into(), "a".into()])).unwrap();
        assert_eq!(l, vec!["a", "b"]);
        assert!(model_list("a", Some(&vec![String::new()])).is_err());
    }
}
