//! What a catalog entry must be: the limits, the errors, and the checks
//! every entry passes before it is stored or after it is read (a leaf:
//! the other catalog files build on it).

use std::path::PathBuf;

use sharenet_api::catalog::CatalogEntry;
use sharenet_proto::model_slug;

/// The catalog file's format version.
pub const CATALOG_VERSION: u32 = 1;
/// At most this many models in a catalog (the file is read whole).
pub const MAX_MODELS: usize = 10_000;
/// At most this many aliases per model.
pub const MAX_ALIASES: usize = 32;
/// Longest id or alias: the longest model id an advert may carry.
pub const MAX_ID_LEN: usize = 128;
/// Longest chat template accepted (the largest real ones are ~20 KB).
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
/// Largest `tokenizer.json` accepted (large vocabularies are ~20 MB).
pub const MAX_TOKENIZER_BYTES: usize = 64 * 1024 * 1024;

/// Why a catalog operation failed. Every message names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{0}")]
    BadEntry(String),
    #[error("`{0}` is already in the catalog")]
    Duplicate(String),
    #[error("`{0}` is not in the catalog")]
    Unknown(String),
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether `id` is a canonical model id: an OpenRouter-style slug,
/// `org/name` (lowercase ASCII letters, digits, `.`, `_`, `-`, and an
/// optional `:variant`).
pub fn valid_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    valid_name(id) && parts.len() == 2 && parts.iter().all(|p| !p.is_empty())
}

/// `name` as a model slug (`SmolLM2 135M` → `smollm2-135m`).
pub fn slug(name: &str) -> String {
    model_slug(name)
}

/// Whether `name` is a valid alias: a slug as `model_slug` writes it.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_ID_LEN && model_slug(name) == name
}

pub(super) fn validate(e: &CatalogEntry) -> Result<(), CatalogError> {
    let bad = |m: String| Err(CatalogError::BadEntry(m));
    if !valid_id(&e.id) {
        return bad(format!(
            "id {:?}: not a model slug like `huggingfacetb/smollm2-135m-instruct` (org/name, lowercase letters, digits, `.`, `_`, `-`; at most {MAX_ID_LEN} bytes; try {:?})",
            shown(&e.id),
            model_slug(&e.id)
        ));
    }
    if e.aliases.len() > MAX_ALIASES {
        return bad(format!("aliases: at most {MAX_ALIASES}"));
    }
    if let Some(a) = e.aliases.iter().find(|a| !valid_name(a)) {
        return bad(format!(
            "alias {:?}: not a model slug (lowercase letters, digits, `/`, `.`, `_`, `:`, `-`)",
            shown(a)
        ));
    }
    if e.license.is_empty()
        || e.license.len() > 64
        || e.license.to_ascii_lowercase() != e.license
        || e.license.contains(char::is_whitespace)
    {
        return bad(format!(
            "license {:?}: an SPDX id in lowercase, e.g. `apache-2.0` (at most 64 bytes)",
            shown(&e.license)
        ));
    }
    if !matches!(e.kind.as_str(), "text" | "embedding") {
        return bad("kind: `text` or `embedding`".into());
    }
    if e.context_length == 0 {
        return bad("context_length: at least 1".into());
    }
    if e.chat_template
        .as_ref()
        .is_some_and(|t| t.len() > MAX_TEMPLATE_BYTES)
    {
        return bad(format!("chat_template: at most {MAX_TEMPLATE_BYTES} bytes"));
    }
    for w in &e.weights {
        if !matches!(w.format.as_str(), "gguf" | "safetensors") {
            return bad(format!(
                "weights format {:?}: `gguf` or `safetensors`",
                shown(&w.format)
            ));
        }
        if !is_sha256_hex(&w.weights_sha256) || w.files.iter().any(|f| !is_sha256_hex(&f.sha256)) {
            return bad("weights: each digest is 64 lowercase hex digits (SHA-256)".into());
        }
        if w.quantization.len() > 64 {
            return bad("weights quantization: at most 64 bytes".into());
        }
    }
    Ok(())
}

pub(super) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Most characters of an operator's string shown back in an error.
const MAX_SHOWN_CHARS: usize = 200;

/// `s` fit for an error message: control characters escaped, cut short.
fn shown(s: &str) -> String {
    s.chars()
        .take(MAX_SHOWN_CHARS)
        .flat_map(char::escape_debug)
        .collect()
}
