//! Why reading a model's files or rendering a prompt failed.
//!
//! The variants and their messages are the engine's own
//! (`sharenet_engine::EngineError` converts each into its namesake), so a
//! node reports the same refusal whichever crate found the problem.

use std::path::Path;

/// Why reading a model's files, rendering or tokenizing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    /// A file could not be read (missing, unreadable).
    #[error("read {path}: {reason}")]
    Read { path: String, reason: String },
    /// A file was read but its contents are malformed or unsupported.
    #[error("parse {path}: {reason}")]
    Parse { path: String, reason: String },
    /// The request cannot be rendered (the template raised, an empty prompt).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The model cannot do what the request asks (tools without a template
    /// that takes them, embeddings from a text model).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The tokenizer failed on the text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

pub(crate) fn read_err(path: &Path, e: impl std::fmt::Display) -> PromptError {
    PromptError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

pub(crate) fn parse_err(path: &Path, e: impl std::fmt::Display) -> PromptError {
    PromptError::Parse {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}
