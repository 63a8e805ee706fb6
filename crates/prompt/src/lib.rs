//! One prompt renderer for nodes and coordinators.
//!
//! Everything that turns a request into the token ids a model is fed,
//! with no candle and no cudarc, so the coordinator can count every
//! request's prompt tokens exactly as the node's engine computes them:
//!
//! - [`ModelSource`] reads a `.gguf` file (header and metadata only, with
//!   this crate's own [`gguf`] reader) or a Hugging Face folder
//!   (`config.json`, `tokenizer.json`, `tokenizer_config.json`,
//!   `*.safetensors` headers): tokenizer, chat template, BOS/EOS, context
//!   length, format and quantization, license, and each weights file's
//!   SHA-256 ([`ModelSource::read`]; [`ModelSource::inspect`] skips the
//!   hashing).
//! - [`PromptSpec`] is the prompt side as plain, serializable data (what a
//!   catalog stores); [`PromptSpec::compile`] makes a [`PromptModel`].
//! - [`PromptModel`] renders a request ([`PromptModel::render`]: chat
//!   template, tools in Hugging Face's shape), encodes and counts it
//!   ([`PromptModel::encode_request`], [`PromptModel::count_prompt`]: the
//!   engine's exact ids, BOS included when the model adds one), and
//!   tokenizes text ([`PromptModel::encode`], [`PromptModel::count_text`],
//!   [`PromptModel::decode`]). Embedding models: [`embedding_max_tokens`],
//!   [`embedding_tokenizer`] and [`count_embedding_tokens`] count inputs
//!   as the engine's embedder, which uses them, takes them.
//! - [`ChatTemplate`] (minijinja + Python string methods, Hugging Face's
//!   `tojson`, a documented fallback) and [`tool_calls`] (the tool formats
//!   models write, the forced-call grammar, the streaming call parser).
//!
//! Typical use (coordinator side):
//!
//! ```no_run
//! use sharenet_prompt::{ModelSource, PromptSpec};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Adding a model: read its files once, keep the spec and the digests.
//! let source = ModelSource::read(std::path::Path::new("/models/smollm2.gguf"))?;
//! let spec: PromptSpec = source.prompt.clone(); // serde: store it
//! let digest = source.weights_sha256();          // what nodes advertise
//! // Serving: compile the stored spec once, count each request.
//! let prompt = spec.compile()?;
//! # let request: sharenet_proto::JobRequest = todo!();
//! let prompt_tokens = prompt.count_request(&request)?;
//! # Ok(()) }
//! ```
//!
//! Architecture invariant: the engine builds its prompt side with this
//! crate ([`ModelSource::inspect`] then [`ModelSource::prompt_model`]) and
//! feeds its model [`PromptModel::encode_request`]'s ids, so there is one
//! renderer; this crate links no candle (checked by the structure test).
//! A malformed file is an error, never a panic.

pub mod count;
mod error;
pub mod gguf;
mod json;
mod model;
mod source;
mod template;
mod tokenizer;
pub mod tool_calls;

pub use count::{Mismatch, OutputCount, Served, check_prefix, check_served};
pub use error::PromptError;
pub use json::Json;
pub use model::{DEFAULT_EOS, PromptModel, PromptSpec, default_add_bos};
pub use source::{
    DEFAULT_CONTEXT_LENGTH, FileFormat, ModelSource, WeightFile, card_license,
    embedding_max_tokens, hash_files, weight_files,
};
pub use template::ChatTemplate;
pub use tokenizer::{
    count_embedding_tokens, embedding_tokenizer, load_tokenizer_file, special_text,
    template_source, tokenizer_from_gguf,
};
pub use tokenizers::Tokenizer;
pub use tool_calls::{ToolCallParser, ToolFormat};
