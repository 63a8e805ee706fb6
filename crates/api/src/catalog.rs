//! The model catalog as the operator API carries it and as the
//! coordinator stores it (`catalog.json` in its data folder): canonical
//! model ids with their tokenizer, chat template, context length, license
//! and the weight digests accepted for them.

use serde::{Deserialize, Serialize};

/// Who counted a job's tokens (defined with the money logic, since the
/// ledger stores it with each entry).
pub use sharenet_market::CountedBy;

/// One way of storing a model's weights that the catalog accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightVariant {
    /// `gguf` or `safetensors`.
    pub format: String,
    /// The quantization or dtype as nodes advertise it (`Q8_0`, `Q4_1`,
    /// `F32`, `BF16`); empty when unknown.
    #[serde(default)]
    pub quantization: String,
    /// The digest a node advertises for these weights
    /// (`ModelOffer::weights_sha256`: SHA-256 over the weight files in
    /// file name order), hex.
    pub weights_sha256: String,
    /// Each weight file's own SHA-256 (hex), for operators checking a
    /// download.
    #[serde(default)]
    pub files: Vec<WeightFile>,
}

/// One weight file of a variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightFile {
    pub name: String,
    /// Hex.
    pub sha256: String,
}

/// One model of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// The canonical id, an OpenRouter-style slug
    /// (`huggingfacetb/smollm2-135m-instruct`).
    pub id: String,
    /// Other names builders and nodes may use for it (older short names).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `text` or `embedding`.
    #[serde(default = "text_kind")]
    pub kind: String,
    /// SPDX-style license id, lowercase (`apache-2.0`).
    pub license: String,
    /// Longest prompt + completion, in tokens.
    pub context_length: u32,
    /// The tokenizer: the SHA-256 (hex) of its `tokenizer.json`, stored
    /// beside the catalog as `tokenizers/<sha256>.json`; empty when the
    /// entry has none (the coordinator cannot count its tokens then).
    #[serde(default)]
    pub tokenizer: String,
    /// The chat template (Jinja), when the model has one.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// The BOS token's text (`bos_token` in the template).
    #[serde(default)]
    pub bos_token: Option<String>,
    /// The EOS token's text (`eos_token` in the template).
    #[serde(default)]
    pub eos_token: Option<String>,
    /// The BOS id put before the prompt when `add_bos`.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// Whether the BOS id is put before the prompt.
    #[serde(default)]
    pub add_bos: bool,
    /// The weights accepted under this id; empty: any weights (only the
    /// name is checked).
    #[serde(default)]
    pub weights: Vec<WeightVariant>,
}

fn text_kind() -> String {
    "text".into()
}

/// The body of `POST /operator/catalog`: an entry as JSON (with its
/// tokenizer inline), or a model on the coordinator's disk to read it
/// from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCatalogEntry {
    /// Read the entry from this GGUF file or Hugging Face folder on the
    /// coordinator's disk (then `id` and `license` are required and
    /// `entry` absent).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub license: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The entry itself (its `tokenizer` field is then computed from
    /// `tokenizer_json`).
    #[serde(default)]
    pub entry: Option<CatalogEntry>,
    /// The `tokenizer.json` text for `entry`.
    #[serde(default)]
    pub tokenizer_json: Option<String>,
}

/// The catalog file: `{"version": 1, "models": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    pub version: u32,
    pub models: Vec<CatalogEntry>,
}
