//! Inference for sharenet nodes.
//!
//! - [`TextModel`] loads a llama-family model (Llama 2/3.x, Mistral,
//!   Qwen2/2.5; see [`spec`]) from a Hugging Face folder (`config.json`,
//!   `tokenizer.json`, `tokenizer_config.json`, one or many `*.safetensors`)
//!   or from one GGUF file (quantized), renders chat with the model's own
//!   Jinja template, and hashes its weights (SHA-256) for adverts.
//! - [`Scheduler`] serves one model to many jobs at once: a bounded queue, a
//!   KV-cache budget, and continuous batching of decode steps.
//! - Sampling: temperature, top_p, top_k, min_p, repetition / presence /
//!   frequency penalties, seeds, stop strings across token boundaries,
//!   max_tokens and per-token logprobs with alternatives.
//! - Tools and structured outputs: the model's own chat template renders
//!   the tools, [`ToolCallParser`] reads calls out of the text in the
//!   family's format ([`ToolFormat`]), and a [`Constraint`] (llguidance)
//!   holds the output to a JSON schema or a forced call's grammar.
//! - The prompt side (chat templates, tool rendering, tokenizers, GGUF
//!   metadata) lives in `sharenet-prompt`, which links no candle: the
//!   coordinator renders and counts requests with the very same code
//!   ([`TextModel::prompt`]).
//! - [`Embedder`] serves BERT-family sentence-embedding models.
//! - [`tiny`] writes small random-weight models in every supported format,
//!   so tests and the devnet run the very loaders real weights use.
//!
//! Architecture invariant: this crate knows nothing of networks, HTTP or
//! storage; model work runs on threads the caller does not share with its
//! async runtime, and a bad file or request is an error, never a panic
//! (the scheduler also catches panics from inside candle and fails only
//! the sequences of that step).

mod constraint;
mod embed;
mod model;
mod output;
mod sampling;
mod scheduler;
mod sequence;
pub mod spec;
mod streamer;
pub mod tiny;
mod transformer;

pub use constraint::{Constraint, Grammar};
pub use embed::{Embedder, Embeddings};
pub use model::{
    DEFAULT_KV_POOL_BYTES, LoadOptions, TextModel, WeightsFormat, hash_files, load_tokenizer,
};
pub use output::{Generation, Piece};
pub use scheduler::{JobHandle, Load, Scheduler, SchedulerConfig, SeqEvent, SubmitError};
pub use sharenet_prompt::tool_calls;
pub use sharenet_prompt::{ChatTemplate, PromptError, PromptModel, ToolCallParser, ToolFormat};
pub use spec::{Arch, ModelSpec};
pub use transformer::{KV_BLOCK, Placement};

/// Loading progress, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Hashing the weights files: bytes done of total.
    Hashing { done: u64, total: u64 },
    /// Reading tensors into memory.
    Loading,
}

/// Why loading or generation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("parse {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("load weights from {path}: {reason}")]
    Weights { path: String, reason: String },
    #[error("write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("prompt of {prompt} tokens does not fit the context window of {context}")]
    ContextLengthExceeded { prompt: usize, context: usize },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("inference: {0}")]
    Inference(#[from] candle_core::Error),
    #[error("cancelled by the caller")]
    Cancelled,
}

impl From<PromptError> for EngineError {
    /// Each prompt error becomes its namesake (same message).
    fn from(e: PromptError) -> Self {
        match e {
            PromptError::Read { path, reason } => Self::Read { path, reason },
            PromptError::Parse { path, reason } => Self::Parse { path, reason },
            PromptError::InvalidInput(m) => Self::InvalidInput(m),
            PromptError::Unsupported(m) => Self::Unsupported(m),
            PromptError::Tokenizer(m) => Self::Tokenizer(m),
        }
    }
}
