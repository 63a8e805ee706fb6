//! A catalog entry read from a model's files (a `.gguf` file or a Hugging
//! Face folder) with `sharenet_prompt::ModelSource`, and the prompt model
//! built from a stored entry.

use std::path::Path;

use sharenet_api::catalog::{CatalogEntry, WeightFile, WeightVariant};
use sharenet_prompt::{FileFormat, ModelSource, PromptModel, PromptSpec};

use super::entry::CatalogError;

/// What the operator says about a model the files cannot (or may not)
/// decide: its canonical id, license (empty: what the files state, else
/// `unknown`) and other names.
#[derive(Debug, Clone)]
pub struct Naming {
    pub id: String,
    pub license: String,
    pub aliases: Vec<String>,
    /// `text` or `embedding`; empty: from the architecture (BERT-like
    /// encoders are embedding models).
    pub kind: String,
}

/// Reads the model at `path` (hashing every weights file: seconds for
/// GBs) into a catalog entry named by `naming`, with its `tokenizer.json`
/// text (stored beside the catalog by [`super::Catalog::add`]).
pub fn entry_from_path(
    path: &Path,
    naming: Naming,
) -> Result<(CatalogEntry, String), CatalogError> {
    if !path.exists() {
        return Err(CatalogError::Read {
            path: path.to_path_buf(),
            reason: "no such file or folder".into(),
        });
    }
    let source = ModelSource::read(path).map_err(|e| CatalogError::Read {
        path: path.to_path_buf(),
        reason: format!("not a readable GGUF file or Hugging Face folder: {e}"),
    })?;
    let Some(digest) = source.weights_sha256() else {
        return Err(CatalogError::Read {
            path: path.to_path_buf(),
            reason: "the weights were not hashed".into(),
        });
    };
    let files = source
        .weights
        .iter()
        .filter_map(|f| {
            Some(WeightFile {
                name: f.path.file_name()?.to_string_lossy().into_owned(),
                sha256: hex::encode(f.sha256?),
            })
        })
        .collect();
    let spec = &source.prompt;
    let entry = CatalogEntry {
        id: naming.id,
        aliases: naming.aliases,
        kind: if naming.kind.is_empty() {
            kind_of(&source.architecture).into()
        } else {
            naming.kind
        },
        license: if naming.license.is_empty() {
            source.license.clone().unwrap_or_else(|| "unknown".into())
        } else {
            naming.license
        }
        .to_ascii_lowercase(),
        context_length: u32::try_from(source.context_length).unwrap_or(u32::MAX),
        tokenizer: String::new(),
        chat_template: spec.chat_template.clone(),
        bos_token: spec.bos_token.clone(),
        eos_token: spec.eos_token.clone(),
        bos_token_id: spec.bos_token_id,
        add_bos: spec.add_bos,
        weights: vec![WeightVariant {
            format: match source.format {
                FileFormat::Gguf => "gguf",
                FileFormat::Safetensors => "safetensors",
            }
            .into(),
            quantization: source.quantization.clone(),
            weights_sha256: hex::encode(digest),
            files,
        }],
    };
    Ok((entry, spec.tokenizer_json.clone()))
}

/// The prompt model of a stored entry and its `tokenizer.json` text.
pub(super) fn prompt_model(
    entry: &CatalogEntry,
    tokenizer_json: &[u8],
) -> Result<PromptModel, String> {
    let tokenizer_json = String::from_utf8(tokenizer_json.to_vec())
        .map_err(|_| "tokenizer.json is not UTF-8".to_owned())?;
    PromptSpec {
        tokenizer_json,
        chat_template: entry.chat_template.clone(),
        bos_token: entry.bos_token.clone(),
        eos_token: entry.eos_token.clone(),
        bos_token_id: entry.bos_token_id,
        add_bos: entry.add_bos,
    }
    .compile()
    .map_err(|e| e.to_string())
}

/// The kind of model an architecture is: the encoders the engine serves
/// for embeddings, else text.
fn kind_of(architecture: &str) -> &'static str {
    match architecture {
        "bert" | "roberta" | "xlm-roberta" | "nomic-bert" | "nomic_bert" => "embedding",
        _ => "text",
    }
}
