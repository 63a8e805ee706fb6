//! Inference for sharenet nodes.
//!
//! Loads a llama-architecture model from a local Hugging Face-style folder
//! (`config.json`, `model.safetensors`, `tokenizer.json`) with candle,
//! renders chat input, samples (temperature, top_p, seed, max_tokens, stop
//! sequences) and hands out text as it is generated.
//!
//! [`tiny::write_tiny_llama`] writes a small random-weight llama model and a
//! byte-level tokenizer, so tests and the devnet run the very same loader as
//! real weights without downloading anything.
//!
//! Architecture invariant: this crate knows nothing of networks, HTTP or
//! storage; generation is a blocking call the caller runs off the async
//! runtime, and it never panics on a request (loader panics inside candle are
//! caught and turned into errors).

mod model;
mod streamer;
mod template;
pub mod tiny;

pub use model::{Generation, Piece, TextModel};

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
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("inference: {0}")]
    Inference(#[from] candle_core::Error),
    #[error("cancelled by the caller")]
    Cancelled,
}
