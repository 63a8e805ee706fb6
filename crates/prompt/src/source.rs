//! [`ModelSource`]: what a model's files say about it, read without
//! candle — the prompt side ([`PromptSpec`]), context length,
//! architecture, file format and quantization, license, and the SHA-256 of
//! each weights file. The engine builds its own prompt side from this, so
//! a node and a coordinator reading the same files agree.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use crate::error::{PromptError, parse_err, read_err};
use crate::gguf::{self, Metadata};
use crate::model::{PromptModel, PromptSpec, default_add_bos};
use crate::tokenizer::{load_tokenizer_file, special_text, template_source, tokenizer_from_gguf};

/// The context length when the files do not state one (the engine's).
pub const DEFAULT_CONTEXT_LENGTH: u64 = 4096;

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One `.gguf` file.
    Gguf,
    /// A Hugging Face folder of `*.safetensors`.
    Safetensors,
}

/// One weights file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightFile {
    pub path: PathBuf,
    pub bytes: u64,
    /// SHA-256 of the file's bytes; `None` when read with
    /// [`ModelSource::inspect`].
    pub sha256: Option<[u8; 32]>,
}

/// What a model's files say about it. Read with [`ModelSource::read`]
/// (hashes the weights) or [`ModelSource::inspect`] (does not).
///
/// A **GGUF file**: metadata from the header (no tensor data is read);
/// the tokenizer from a `tokenizer.json` beside the file if there is one,
/// else rebuilt from `tokenizer.ggml.*` (byte-level BPE only);
/// `tokenizer.chat_template`; BOS/EOS text from the tokenizer at
/// `tokenizer.ggml.bos_token_id` / `eos_token_id`; context length
/// `<arch>.context_length`; quantization: candle's name of the type of
/// `blk.0.attn_q.weight` (what a node advertises, e.g. `Q8_0`).
///
/// A **Hugging Face folder**: `config.json` (`model_type`,
/// `max_position_embeddings`, `bos_token_id`, `eos_token_id`),
/// `tokenizer.json`, `tokenizer_config.json` (`chat_template`,
/// `bos_token`, `eos_token`, `add_bos_token`; optional),
/// `generation_config.json` (`eos_token_id`; optional), `model.safetensors`
/// or the sorted `*.safetensors` shards; quantization: the dtype most
/// tensors are stored in (`BF16`, `F16`, `F32`; a node serving the folder
/// on the CPU advertises `F32`).
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The file or folder read.
    pub path: PathBuf,
    pub format: FileFormat,
    /// See the type's documentation; empty if unknown.
    pub quantization: String,
    /// `general.architecture` / `model_type` (`llama`, `qwen2`, ...).
    pub architecture: String,
    /// Longest prompt + completion in tokens; [`DEFAULT_CONTEXT_LENGTH`]
    /// if the files do not say.
    pub context_length: u64,
    /// The tokens that end a generation, sorted (folder: `config.json`,
    /// the `eos_token`'s id and `generation_config.json`; GGUF:
    /// `tokenizer.ggml.eos_token_id`).
    pub eos_token_ids: Vec<u32>,
    /// The license the files state (GGUF `general.license`, or the
    /// `license:` of `README.md`'s front matter).
    pub license: Option<String>,
    /// The weights' own name (GGUF `general.name`, `_name_or_path`).
    pub name: Option<String>,
    /// The weights files, in the order the engine hashes them.
    pub weights: Vec<WeightFile>,
    /// What renders and counts prompts.
    pub prompt: PromptSpec,
    /// `prompt.tokenizer_json`, parsed.
    tokenizer: Tokenizer,
    /// Where a chat template that does not compile is reported.
    template_path: PathBuf,
    /// SHA-256 over all weights files in order, once hashed.
    weights_sha256: Option<[u8; 32]>,
}

impl ModelSource {
    /// Reads a `.gguf` file or a Hugging Face folder and hashes its
    /// weights (reads every byte: seconds for GBs).
    pub fn read(path: &Path) -> Result<Self, PromptError> {
        Self::read_with_progress(path, &mut |_, _| {})
    }

    /// As [`Self::read`], reporting hashing progress (bytes done, total).
    pub fn read_with_progress(
        path: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self, PromptError> {
        let mut source = Self::inspect(path)?;
        let files: Vec<PathBuf> = source.weights.iter().map(|w| w.path.clone()).collect();
        let (all, each) = digest(&files, true, progress)?;
        source.weights_sha256 = Some(all);
        for (w, digest) in source.weights.iter_mut().zip(each) {
            w.sha256 = Some(digest);
        }
        Ok(source)
    }

    /// Reads everything but the weights' digests (cheap: headers only).
    pub fn inspect(path: &Path) -> Result<Self, PromptError> {
        if path.is_file() {
            Self::inspect_gguf(path)
        } else if path.is_dir() {
            Self::inspect_folder(path)
        } else {
            Err(read_err(path, "no such model folder or GGUF file"))
        }
    }

    /// The SHA-256 over all weights files' bytes in order, as the engine
    /// computes it and a node advertises it (for one GGUF file, that
    /// file's digest); `None` unless every file was hashed.
    pub fn weights_sha256(&self) -> Option<[u8; 32]> {
        self.weights_sha256
    }

    /// The tokenizer (already parsed).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The prompt side, ready to render and count (reuses the parsed
    /// tokenizer). A chat template that does not compile is an error here.
    pub fn prompt_model(&self) -> Result<PromptModel, PromptError> {
        let template = self
            .prompt
            .template()
            .map_err(|e| parse_err(&self.template_path, e))?;
        Ok(PromptModel::new(
            self.tokenizer.clone(),
            template,
            self.prompt.bos_token_id,
            self.prompt.add_bos,
        ))
    }

    fn inspect_gguf(path: &Path) -> Result<Self, PromptError> {
        let md = Metadata::read(path)?;
        let arch = md.str("general.architecture").unwrap_or("").to_owned();
        let beside = path.with_file_name("tokenizer.json");
        let (tokenizer, tokenizer_json) = if beside.exists() {
            load_tokenizer_file(&beside)?
        } else {
            tokenizer_from_gguf(path, &md)?
        };
        let token_id = |key: &str| {
            md.get(key)
                .and_then(|v| v.as_u32().or_else(|| v.as_i32().map(|i| i as u32)))
        };
        let bos_token_id = token_id("tokenizer.ggml.bos_token_id");
        let eos_token_ids: Vec<u32> = token_id("tokenizer.ggml.eos_token_id")
            .into_iter()
            .collect();
        let text_of = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(default_add_bos(bos_token_id, &arch));
        let prompt = PromptSpec {
            tokenizer_json,
            chat_template: md.str("tokenizer.chat_template").map(str::to_owned),
            bos_token: text_of(bos_token_id),
            eos_token: text_of(eos_token_ids.first().copied()),
            bos_token_id,
            add_bos,
        };
        let context_length = md
            .get(&format!("{arch}.context_length"))
            .and_then(|v| v.as_u64())
            .unwrap_or(DEFAULT_CONTEXT_LENGTH);
        let quantization = md
            .tensor("blk.0.attn_q.weight")
            .and_then(|t| gguf::ggml_type_name(t.ggml_type))
            .unwrap_or_default()
            .to_owned();
        let trimmed = |key: &str| {
            md.str(key)
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let bytes = std::fs::metadata(path)
            .map_err(|e| read_err(path, e))?
            .len();
        Ok(Self {
            path: path.to_path_buf(),
            format: FileFormat::Gguf,
            quantization,
            architecture: arch,
            context_length,
            eos_token_ids,
            license: trimmed("general.license").filter(|l| l.len() <= 64),
            name: trimmed("general.name"),
            weights: vec![WeightFile {
                path: path.to_path_buf(),
                bytes,
                sha256: None,
            }],
            prompt,
            tokenizer,
            template_path: path.to_path_buf(),
            weights_sha256: None,
        })
    }

    fn inspect_folder(dir: &Path) -> Result<Self, PromptError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| read_err(&config_path, e))?;
        let config: Value = serde_json::from_str(&text).map_err(|e| parse_err(&config_path, e))?;
        let arch = config
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("llama")
            .to_owned();
        let (tokenizer, tokenizer_json) = load_tokenizer_file(&dir.join("tokenizer.json"))?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc: Value = if tc_path.exists() {
            let text = std::fs::read_to_string(&tc_path).map_err(|e| read_err(&tc_path, e))?;
            serde_json::from_str(&text).map_err(|e| parse_err(&tc_path, e))?
        } else {
            json!({})
        };
        let bos_token_id = config
            .get("bos_token_id")
            .and_then(|v| v.as_u64())
            .and_then(|n| u32::try_from(n).ok());
        let eos_token = special_text(tc.get("eos_token"));
        let mut eos_token_ids = ids_of(config.get("eos_token_id"));
        eos_token_ids.extend(eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t)));
        let gen_path = dir.join("generation_config.json");
        if let Ok(text) = std::fs::read_to_string(&gen_path) {
            let v: Value = serde_json::from_str(&text).map_err(|e| parse_err(&gen_path, e))?;
            eos_token_ids.extend(ids_of(v.get("eos_token_id")));
        }
        eos_token_ids.sort_unstable();
        eos_token_ids.dedup();
        let prompt = PromptSpec {
            tokenizer_json,
            chat_template: template_source(tc.get("chat_template")),
            bos_token: special_text(tc.get("bos_token")),
            eos_token,
            bos_token_id,
            add_bos: tc
                .get("add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(default_add_bos(bos_token_id, &arch)),
        };
        let files = weight_files(dir)?;
        let quantization = safetensors_dtype(&files)?;
        let weights = files
            .into_iter()
            .map(|path| {
                let bytes = std::fs::metadata(&path)
                    .map_err(|e| read_err(&path, e))?
                    .len();
                Ok(WeightFile {
                    path,
                    bytes,
                    sha256: None,
                })
            })
            .collect::<Result<Vec<_>, PromptError>>()?;
        Ok(Self {
            path: dir.to_path_buf(),
            format: FileFormat::Safetensors,
            quantization,
            architecture: arch,
            context_length: config
                .get("max_position_embeddings")
                .and_then(|v| v.as_u64())
                .unwrap_or(DEFAULT_CONTEXT_LENGTH),
            eos_token_ids,
            license: card_license(dir),
            name: config
                .get("_name_or_path")
                .and_then(|v| v.as_str())
                .filter(|n| !n.trim().is_empty())
                .map(str::to_owned),
            weights,
            prompt,
            tokenizer,
            template_path: tc_path,
            weights_sha256: None,
        })
    }
}

/// Token ids written as one number or a list.
fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|n| n.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// The `license:` in the YAML front matter of a Hugging Face model card
/// (`README.md` beside the weights), if any.
pub fn card_license(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("README.md")).ok()?;
    let rest = text.strip_prefix("---")?;
    let front = &rest[..rest.find("\n---")?];
    front.lines().find_map(|l| {
        let v = l
            .strip_prefix("license:")?
            .trim()
            .trim_matches(|c| c == '"' || c == '\'');
        (!v.is_empty() && v.len() <= 64).then(|| v.to_owned())
    })
}

/// `model.safetensors`, or the sorted `*.safetensors` shards in `dir`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, PromptError> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| read_err(dir, e))?;
    let mut shards: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(read_err(
            &single,
            "no *.safetensors weights in the model folder",
        ));
    }
    Ok(shards)
}

/// The longest input of a sentence-embedding folder, in tokens, as the
/// engine's embedder reads it: `sentence_bert_config.json`'s
/// `max_seq_length`, at most `config.json`'s `max_position_embeddings`
/// (512 when unsaid).
pub fn embedding_max_tokens(dir: &Path) -> Result<usize, PromptError> {
    let read = |path: &Path| -> Result<Option<Value>, PromptError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| parse_err(path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(read_err(path, e)),
        }
    };
    let max_pos = read(&dir.join("config.json"))?
        .and_then(|c| c.get("max_position_embeddings")?.as_u64())
        .unwrap_or(512) as usize;
    Ok(read(&dir.join("sentence_bert_config.json"))?
        .and_then(|v| v.get("max_seq_length")?.as_u64())
        .map(|n| n as usize)
        .unwrap_or(max_pos)
        .min(max_pos))
}

/// The longest safetensors header read (real ones are KiBs to a few MiB).
const MAX_SAFETENSORS_HEADER: u64 = 64 << 20;

/// The dtype most tensors of the files are stored in (`BF16`, `F16`,
/// `F32`, ...), from their headers.
fn safetensors_dtype(files: &[PathBuf]) -> Result<String, PromptError> {
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for f in files {
        let mut file = std::fs::File::open(f).map_err(|e| read_err(f, e))?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|e| parse_err(f, e))?;
        let len = u64::from_le_bytes(len);
        let size = file.metadata().map_err(|e| read_err(f, e))?.len();
        if len > MAX_SAFETENSORS_HEADER || len > size.saturating_sub(8) {
            return Err(parse_err(f, format!("safetensors header of {len} bytes")));
        }
        let mut header = Vec::new();
        file.take(len)
            .read_to_end(&mut header)
            .map_err(|e| read_err(f, e))?;
        let header: serde_json::Map<String, Value> =
            serde_json::from_slice(&header).map_err(|e| parse_err(f, e))?;
        for (name, t) in &header {
            if name == "__metadata__" {
                continue;
            }
            if let Some(d) = t.get("dtype").and_then(|d| d.as_str()) {
                *counts.entry(d.to_owned()).or_default() += 1;
            }
        }
    }
    Ok(counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(d, _)| d)
        .unwrap_or_default())
}

/// SHA-256 over the files' bytes in order (how the engine hashes a
/// model's weights), reporting progress (bytes done, total).
pub fn hash_files(
    files: &[PathBuf],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<[u8; 32], PromptError> {
    Ok(digest(files, false, progress)?.0)
}

/// The digest over all files in order and, when `each`, of each file
/// alone, in one pass. A single file's digest is the whole's, so it is
/// hashed once; several are hashed twice only when `each` asks.
fn digest(
    files: &[PathBuf],
    each: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<([u8; 32], Vec<[u8; 32]>), PromptError> {
    let total: u64 = files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .map(|m| m.len())
                .map_err(|e| read_err(f, e))
        })
        .sum::<Result<u64, _>>()?;
    let per_file = each && files.len() > 1;
    let mut all = Sha256::new();
    let mut digests = Vec::with_capacity(files.len());
    let mut done = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let mut one = Sha256::new();
        let mut file = std::fs::File::open(f).map_err(|e| read_err(f, e))?;
        loop {
            let n = file.read(&mut buf).map_err(|e| read_err(f, e))?;
            if n == 0 {
                break;
            }
            all.update(&buf[..n]);
            if per_file {
                one.update(&buf[..n]);
            }
            done += n as u64;
            progress(done, total);
        }
        if per_file {
            digests.push(one.finalize().into());
        }
    }
    let all: [u8; 32] = all.finalize().into();
    if each && !per_file {
        digests.extend(files.first().map(|_| all));
    }
    Ok((all, digests))
}

#[cfg(test)]
mod tests;
