//! Job requests and the event stream a node answers with. JSON in frames.

use serde::{Deserialize, Serialize};

use crate::tools::{ResponseFormat, ToolCall, Tools};
use crate::{JobId, ProtoError, PublicKey};

/// Largest frame either side reads on a job stream.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Largest `max_tokens` a job may ask for.
pub const MAX_JOB_TOKENS: u32 = 32_768;
const MAX_MESSAGES: usize = 1024;
/// The longest trace context a job request may carry (W3C `traceparent`
/// version 00 is 55 bytes; later versions may append fields).
pub const MAX_TRACEPARENT_BYTES: usize = 256;
/// Most texts one embeddings job may carry.
pub const MAX_EMBED_INPUTS: usize = 2048;
const MAX_STOP: usize = 4;
const MAX_STOP_BYTES: usize = 256;

/// One chat message: `system`, `user`, `assistant` (whose turn may be
/// tool calls) or `tool` (a call's result, naming the call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A plain text message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// What the model is asked to continue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobInput {
    /// Rendered with the model's chat template on the node.
    Chat { messages: Vec<ChatMessage> },
    /// Used as is.
    Prompt { prompt: String },
    /// Texts to embed (an embedding model); no generation.
    Embed { inputs: Vec<String> },
}

/// Sampling parameters. Floats here are model parameters, never money.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingParams {
    pub max_tokens: u32,
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus sampling; 1.0 disables it.
    pub top_p: f64,
    /// Same seed, same model, same input: same tokens.
    pub seed: Option<u64>,
    /// Generation stops before the first occurrence of any of these.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Keep only the k most likely tokens; 0 disables it.
    #[serde(default)]
    pub top_k: u32,
    /// Drop tokens less likely than `min_p` times the most likely; 0 disables it.
    #[serde(default)]
    pub min_p: f64,
    /// Hugging Face style multiplicative penalty on tokens already in the
    /// prompt or output; 1.0 disables it.
    #[serde(default = "one")]
    pub repetition_penalty: f64,
    /// OpenAI style: subtracted once from the logit of every token already generated.
    #[serde(default)]
    pub presence_penalty: f64,
    /// OpenAI style: subtracted per occurrence from a generated token's logit.
    #[serde(default)]
    pub frequency_penalty: f64,
    /// Return the log probability of each generated token.
    #[serde(default)]
    pub logprobs: bool,
    /// With `logprobs`, also the most likely alternatives at each step (0..=20).
    #[serde(default)]
    pub top_logprobs: u8,
    /// OpenAI's `logit_bias`: added to a token's logit before anything
    /// else (-100 bans it, 100 all but forces it). Token ids are the
    /// model's own; sorted by id, at most [`MAX_LOGIT_BIAS`] entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logit_bias: Vec<(u32, f32)>,
}

/// Most `logit_bias` entries one job may carry.
pub const MAX_LOGIT_BIAS: usize = 1024;

fn one() -> f64 {
    1.0
}

/// Most alternatives a job may ask for per token.
pub const MAX_TOP_LOGPROBS: u8 = 20;

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logprobs: false,
            top_logprobs: 0,
            logit_bias: Vec::new(),
        }
    }
}

/// The first frame on a job stream, coordinator to node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub job_id: JobId,
    /// The coordinator the receipt is to be made out to. The node checks it
    /// is the peer that opened the stream.
    #[serde(with = "hex::serde")]
    pub coordinator: PublicKey,
    pub model: String,
    pub input: JobInput,
    pub params: SamplingParams,
    /// Functions the model may call (chat only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Tools>,
    /// The JSON shape the answer must take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// The coordinator's W3C trace context, when it exports traces: the
    /// node's span for the job joins the same trace. Never trusted for
    /// anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ProtoError {
    ProtoError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl SamplingParams {
    /// Range checks both sides apply, so a bad value is refused with a reason.
    pub fn validate(&self) -> Result<(), ProtoError> {
        if self.max_tokens == 0 || self.max_tokens > MAX_JOB_TOKENS {
            return Err(invalid(
                "max_tokens",
                format!("must be between 1 and {MAX_JOB_TOKENS}"),
            ));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(invalid("temperature", "must be between 0 and 2"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(invalid("top_p", "must be greater than 0 and at most 1"));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(invalid("min_p", "must be between 0 and 1"));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 2.0) {
            return Err(invalid(
                "repetition_penalty",
                "must be greater than 0 and at most 2",
            ));
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return Err(invalid("presence_penalty", "must be between -2 and 2"));
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return Err(invalid("frequency_penalty", "must be between -2 and 2"));
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(invalid(
                "top_logprobs",
                format!("must be between 0 and {MAX_TOP_LOGPROBS}"),
            ));
        }
        if self.top_logprobs > 0 && !self.logprobs {
            return Err(invalid("top_logprobs", "requires logprobs to be true"));
        }
        if self.logit_bias.len() > MAX_LOGIT_BIAS {
            return Err(invalid(
                "logit_bias",
                format!("at most {MAX_LOGIT_BIAS} tokens"),
            ));
        }
        if self
            .logit_bias
            .iter()
            .any(|(_, b)| !(-100.0..=100.0).contains(b))
        {
            return Err(invalid(
                "logit_bias",
                "each bias must be between -100 and 100",
            ));
        }
        if self.logit_bias.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(invalid("logit_bias", "token ids must be sorted and unique"));
        }
        if self.stop.len() > MAX_STOP {
            return Err(invalid("stop", format!("at most {MAX_STOP} sequences")));
        }
        if self
            .stop
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return Err(invalid(
                "stop",
                format!("each sequence must be 1..={MAX_STOP_BYTES} bytes"),
            ));
        }
        Ok(())
    }
}

impl JobRequest {
    /// What a node must be able to do to serve this job.
    pub fn needs(&self) -> crate::Capabilities {
        crate::Capabilities {
            tools: self
                .tools
                .as_ref()
                .is_some_and(|t| t.choice != crate::ToolChoice::None),
            structured_outputs: self.response_format.is_some(),
        }
    }

    pub fn validate(&self) -> Result<(), ProtoError> {
        if self.model.is_empty() {
            return Err(invalid("model", "must not be empty"));
        }
        if self
            .traceparent
            .as_ref()
            .is_some_and(|t| t.len() > MAX_TRACEPARENT_BYTES)
        {
            return Err(invalid(
                "traceparent",
                format!("at most {MAX_TRACEPARENT_BYTES} bytes"),
            ));
        }
        match &self.input {
            JobInput::Chat { messages } => {
                if messages.is_empty() {
                    return Err(invalid("messages", "must not be empty"));
                }
                if messages.len() > MAX_MESSAGES {
                    return Err(invalid("messages", format!("at most {MAX_MESSAGES}")));
                }
            }
            JobInput::Prompt { .. } => {
                if self.tools.is_some() {
                    return Err(invalid("tools", "only chat jobs take tools"));
                }
            }
            JobInput::Embed { inputs } => {
                if self.tools.is_some() || self.response_format.is_some() {
                    return Err(invalid(
                        "tools",
                        "embeddings take neither tools nor a response_format",
                    ));
                }
                if inputs.is_empty() {
                    return Err(invalid("input", "must not be empty"));
                }
                if inputs.len() > MAX_EMBED_INPUTS {
                    return Err(invalid(
                        "input",
                        format!("at most {MAX_EMBED_INPUTS} texts"),
                    ));
                }
                if inputs.iter().any(|s| s.is_empty()) {
                    return Err(invalid("input", "texts must not be empty"));
                }
            }
        }
        if let Some(t) = &self.tools {
            t.validate()?;
        }
        if let Some(f) = &self.response_format {
            f.validate()?;
        }
        self.params.validate()
    }
}

/// Token counts for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of sequence token or a stop sequence.
    Stop,
    /// `max_tokens` (or the context window) reached.
    Length,
    /// The model called tools (the calls are in the deltas).
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
        }
    }
}

/// A generated token's log probability and, if asked, the likeliest
/// alternatives at that step. Floats: model outputs, never money.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLogprob {
    /// Token id in the model's vocabulary (spot checks compare these).
    pub id: u32,
    /// The token's own text (lossy where a token is part of a UTF-8 character).
    pub token: String,
    /// The token's raw bytes.
    pub bytes: Vec<u8>,
    pub logprob: f32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<TopLogprob>,
}

/// One alternative at a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopLogprob {
    pub id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// Why a node refused or failed a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobErrorCode {
    /// The request was malformed or out of range.
    InvalidRequest,
    /// The node does not serve this model.
    UnknownModel,
    /// Every slot and queue place is taken; try another node.
    Saturated,
    /// The prompt does not fit the model's context window.
    ContextLengthExceeded,
    /// The opening peer is not the coordinator named in the request.
    WrongCoordinator,
    /// The model cannot do this kind of job (e.g. chat on an embedding model).
    UnsupportedInput,
    /// An upstream server the node forwards to failed.
    Upstream,
    /// Inference failed on the node.
    Internal,
}

/// Node to coordinator frames, in order: `Delta`* then `Done` or `Error`.
/// After `Done` the coordinator may send one `Countersigned` frame back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobEvent {
    /// Newly generated text and how many tokens produced it (possibly 0 text
    /// for tokens held back or cut by a stop sequence).
    Delta {
        text: String,
        tokens: u32,
        /// The ids of the tokens this delta counts, in the order they were
        /// generated, in the model's vocabulary (`tokens == ids.len()` when
        /// not empty). Empty from an older node, or from an upstream-backed
        /// model the node has no tokenizer for. The contract the
        /// coordinator checks, with `D(k)` the concatenated ids of deltas
        /// 1..=k decoded with the model's tokenizer skipping special
        /// tokens and `T(k)` their concatenated `text`:
        ///
        /// 1. **Prefix, while streaming.** `T(k)` is a prefix of `D(k)`:
        ///    a token's id is sent no later than its text. Text may lag its
        ///    ids: text held back (an incomplete UTF-8 character; a suffix
        ///    that may begin a stop sequence) goes out in a later delta
        ///    *without* its ids, which went with the delta that counted
        ///    them. Except in a job that offered tools (see 2), held-back
        ///    text is shorter than the longest stop sequence plus one
        ///    character.
        /// 2. **Equality, at the end.** Over the whole job `D = T`, except:
        ///    - *stop sequence*: when a stop sequence ended the job,
        ///      `D = T + R` where `R` starts with one of the job's stop sequences
        ///      and the job's last id completed it (`D` without the last
        ///      id does not contain `T` followed by that stop sequence), so
        ///      `R` is the stop sequence plus the rest of that one token's
        ///      text;
        ///    - *tool calls*: in a job whose deltas carry `tool_calls`, `T`
        ///      is `D` with at most one contiguous span removed per call,
        ///      the spans together containing the calls' `name`s in call
        ///      order (the family's call markup that the node's parser
        ///      turned into calls; a node that only has the calls, as an
        ///      upstream-backed one, sends for each call the ids of its
        ///      `name` followed by those of its `arguments`). In a job that
        ///      offered tools `D(k)` may run ahead of `T(k)` by the text
        ///      the parser holds while it may still be a call.
        /// 3. **Special tokens** (end of sequence or turn, tool-call
        ///    markers the tokenizer marks special) decode to nothing; they
        ///    are allowed anywhere and count in `tokens`.
        ///
        /// So `tokens` is bounded by what the ids decode to, and the
        /// coordinator bills no more than the text's own token count.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ids: Vec<u32>,
        /// One entry per token, when the request asked for logprobs.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        logprobs: Vec<TokenLogprob>,
        /// Tool calls completed with this delta, whole (a call is sent
        /// once its arguments are complete).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
        /// A running receipt: the node-signed canonical bytes of a receipt
        /// for everything streamed so far, this delta included (input
        /// tokens, output tokens so far, digest of the text so far). If the
        /// job breaks after the first token, the coordinator books the last
        /// one it received, so the builder pays for exactly what it got and
        /// the provider is paid for exactly what it delivered. Optional: a
        /// backend that cannot count its input tokens yet sends none.
        #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_hex")]
        receipt: Option<Vec<u8>>,
    },
    /// The vectors of an embeddings job, in input order (sent before `Done`).
    Embeddings { data: Vec<Vec<f32>> },
    /// Generation finished; the receipt is the node-signed canonical bytes.
    Done {
        finish_reason: FinishReason,
        usage: Usage,
        #[serde(with = "hex::serde")]
        receipt: Vec<u8>,
    },
    /// The job failed or was refused.
    Error { code: JobErrorCode, message: String },
    /// Coordinator to node: the countersigned receipt.
    Countersigned {
        #[serde(with = "hex::serde")]
        receipt: Vec<u8>,
    },
}

/// `Option<Vec<u8>>` as an optional hex string.
mod opt_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|h| hex::decode(h).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> JobRequest {
        JobRequest {
            job_id: JobId([1; 16]),
            coordinator: [2; 32],
            model: "m".into(),
            input: JobInput::Chat {
                messages: vec![ChatMessage::new("user", "hi")],
            },
            params: SamplingParams::default(),
            tools: None,
            response_format: None,
            traceparent: None,
        }
    }

    #[test]
    fn request_json_round_trip_and_unknown_fields() {
        let req = request();
        let json = serde_json::to_vec(&req).unwrap();
        let back: JobRequest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, req);
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["surprise"] = serde_json::json!(1);
        assert!(serde_json::from_value::<JobRequest>(v).is_err());
    }

    #[test]
    fn an_oversized_trace_context_is_refused() {
        let mut req = JobRequest {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ..request()
        };
        assert!(req.validate().is_ok());
        req.traceparent = Some("0".repeat(MAX_TRACEPARENT_BYTES + 1));
        assert!(matches!(
            req.validate(),
            Err(ProtoError::Invalid {
                field: "traceparent",
                ..
            })
        ));
    }

    #[test]
    fn delta_ids_are_optional_on_the_wire() {
        // An older node's delta (no ids) still parses; no ids, no field.
        let old = r#"{"type":"delta","text":"hi","tokens":1}"#;
        let ev: JobEvent = serde_json::from_str(old).unwrap();
        assert!(matches!(&ev, JobEvent::Delta { ids, .. } if ids.is_empty()));
        assert_eq!(serde_json::to_string(&ev).unwrap(), old);
        let with = JobEvent::Delta {
            text: "hi".into(),
            tokens: 2,
            ids: vec![7, 9],
            logprobs: Vec::new(),
            tool_calls: Vec::new(),
            receipt: None,
        };
        let json = serde_json::to_string(&with).unwrap();
        assert!(json.contains(r#""ids":[7,9]"#), "{json}");
        assert_eq!(serde_json::from_str::<JobEvent>(&json).unwrap(), with);
    }

    #[test]
    fn params_are_range_checked() {
        let ok = SamplingParams::default();
        assert!(ok.validate().is_ok());
        for bad in [
            SamplingParams {
                max_tokens: 0,
                ..ok.clone()
            },
            SamplingParams {
                temperature: -1.0,
                ..ok.clone()
            },
            SamplingParams {
                top_p: 0.0,
                ..ok.clone()
            },
            SamplingParams {
                stop: vec![String::new()],
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
