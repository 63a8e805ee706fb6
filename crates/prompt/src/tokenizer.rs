//! Tokenizers from a model's files: `tokenizer.json`, or a byte-level
//! BPE tokenizer rebuilt from GGUF metadata; and the pieces of
//! `tokenizer_config.json` a prompt needs (special tokens' text, the chat
//! template).
//!
//! Each loader returns the tokenizer with its JSON text, which is what a
//! catalog stores: `text.parse::<Tokenizer>()` gives the same tokenizer.

use std::path::Path;

use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::error::{PromptError, parse_err, read_err};
use crate::gguf::Metadata;

/// Loads a `tokenizer.json`; returns the tokenizer and the file's text.
pub fn load_tokenizer_file(path: &Path) -> Result<(Tokenizer, String), PromptError> {
    if !path.exists() {
        return Err(read_err(path, "file not found"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| parse_err(path, e))?;
    let tokenizer = text.parse::<Tokenizer>().map_err(|e| parse_err(path, e))?;
    Ok((tokenizer, text))
}

/// Token text from `tokenizer_config.json`'s `bos_token` / `eos_token`
/// (a string or `{"content": ...}`).
pub fn special_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `chat_template` as a string, or the `default` entry of a list (else
/// the first).
pub fn template_source(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// A byte-level BPE tokenizer (GPT-2 style, `tokenizer.ggml.model = gpt2`,
/// as Llama 3 and Qwen2 GGUFs carry) rebuilt from GGUF metadata; returns
/// it with its `tokenizer.json` text. Control tokens (type 3) become
/// special added tokens. SentencePiece GGUFs (`llama`) need a
/// `tokenizer.json` beside the file.
pub fn tokenizer_from_gguf(path: &Path, md: &Metadata) -> Result<(Tokenizer, String), PromptError> {
    let kind = md.str("tokenizer.ggml.model").unwrap_or("");
    if kind != "gpt2" {
        return Err(parse_err(
            path,
            format!(
                "tokenizer.ggml.model {kind:?} is not supported from GGUF metadata; \
                 put the model's tokenizer.json beside the .gguf file"
            ),
        ));
    }
    let tokens = md
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .ok_or_else(|| parse_err(path, "missing tokenizer.ggml.tokens"))?;
    let types: Vec<i32> = md
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
        .map(|v| v.iter().map(|t| t.as_i32().unwrap_or(1)).collect())
        .unwrap_or_default();
    let merges: Vec<String> = md
        .get("tokenizer.ggml.merges")
        .and_then(|v| v.as_array())
        .map(|v| {
            v.iter()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        let text = t
            .as_str()
            .ok_or_else(|| parse_err(path, format!("token {id}: not a string {t:?}")))?;
        vocab.insert(text.to_owned(), json!(id));
        if types.get(id) == Some(&3) {
            added.push(
                json!({"id": id, "content": text, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}),
            );
        }
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let spec = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": null,
        "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    });
    let text = serde_json::to_string(&spec).map_err(|e| parse_err(path, e))?;
    let tokenizer = text
        .parse::<Tokenizer>()
        .map_err(|e| parse_err(path, format!("tokenizer from metadata: {e}")))?;
    Ok((tokenizer, text))
}

#[cfg(test)]
pub(crate) mod tests;
