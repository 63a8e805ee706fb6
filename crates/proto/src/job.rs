//! Job requests and the event stream a node answers with. JSON in frames.

use serde::{Deserialize, Serialize};

use crate::{JobId, ProtoError, PublicKey};

/// Largest frame either side reads on a job stream.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Largest `max_tokens` a job may ask for.
pub const MAX_JOB_TOKENS: u32 = 32_768;
const MAX_MESSAGES: usize = 1024;
const MAX_STOP: usize = 4;
const MAX_STOP_BYTES: usize = 256;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// What the model is asked to continue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobInput {
    /// Rendered with the model's chat template on the node.
    Chat { messages: Vec<ChatMessage> },
    /// Used as is.
    Prompt { prompt: String },
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
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
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
    pub fn validate(&self) -> Result<(), ProtoError> {
        if self.model.is_empty() {
            return Err(invalid("model", "must not be empty"));
        }
        if let JobInput::Chat { messages } = &self.input {
            if messages.is_empty() {
                return Err(invalid("messages", "must not be empty"));
            }
            if messages.len() > MAX_MESSAGES {
                return Err(invalid("messages", format!("at most {MAX_MESSAGES}")));
            }
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
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
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
    /// Inference failed on the node.
    Internal,
}

/// Node to coordinator frames, in order: `Delta`* then `Done` or `Error`.
/// After `Done` the coordinator may send one `Countersigned` frame back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobEvent {
    /// Newly generated text and how many tokens produced it (possibly 0 text
    /// for tokens held back or cut by a stop sequence).
    Delta { text: String, tokens: u32 },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_round_trip_and_unknown_fields() {
        let req = JobRequest {
            job_id: JobId([1; 16]),
            coordinator: [2; 32],
            model: "m".into(),
            input: JobInput::Chat {
                messages: vec![ChatMessage {
                    role: "user".into(),
                    content: "hi".into(),
                }],
            },
            params: SamplingParams::default(),
        };
        let json = serde_json::to_vec(&req).unwrap();
        let back: JobRequest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, req);
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["surprise"] = serde_json::json!(1);
        assert!(serde_json::from_value::<JobRequest>(v).is_err());
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
