//! Sentence embeddings with BERT-family models (e.g. all-MiniLM-L6-v2), as
//! sentence-transformers computes them: the encoder's last hidden states,
//! pooled over the real (unpadded) tokens as `1_Pooling/config.json` says
//! (mean by default, or CLS, or max), then L2-normalised when `modules.json`
//! lists a `Normalize` module (or when there is no `modules.json`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;

use crate::model::{
    hash_files, load_tokenizer_file, mmap_safetensors, parse_err, read_err, weight_files,
};
use crate::{EngineError, Progress};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooling {
    Mean,
    Cls,
    Max,
}

/// Most padded tokens (rows × the longest row) one forward pass may take.
/// Inputs are sorted by length and cut into batches under it, so one long
/// input among many short ones costs its own small batch instead of
/// padding every short one to its length.
pub const MAX_PADDED_TOKENS: usize = 8192;

/// Cuts inputs of these token lengths into batches, each at most
/// `max_padded` padded tokens (rows × longest row; a single input longer
/// than that is a batch of its own): indices into `lens`, batches of
/// similar lengths together.
pub fn plan_batches(lens: &[usize], max_padded: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so this input is the batch's longest.
        let longest = lens[i].max(1);
        if !current.is_empty() && (current.len() + 1).saturating_mul(longest) > max_padded {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Vectors for a batch of texts, and the tokens they took.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: u32,
}

/// A loaded sentence-embedding model.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    dims: usize,
    max_tokens: usize,
    weights_sha256: [u8; 32],
    path: PathBuf,
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, EngineError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| parse_err(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_err(path, e)),
    }
}

impl Embedder {
    /// Whether `dir` holds an embedding model (a BERT-family `config.json`).
    pub fn is_embedding_model(dir: &Path) -> bool {
        read_json(&dir.join("config.json"))
            .ok()
            .flatten()
            .and_then(|v| v.get("model_type")?.as_str().map(str::to_string))
            .is_some_and(|t| matches!(t.as_str(), "bert" | "roberta" | "xlm-roberta"))
    }

    pub fn load(dir: &Path) -> Result<Self, EngineError> {
        Self::load_with_progress(dir, &mut |_| {})
    }

    pub fn load_with_progress(
        dir: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self, EngineError> {
        Self::load_on(dir, &Device::Cpu, progress)
    }

    /// Loads onto `device` (a CUDA device needs the `cuda` feature).
    pub fn load_on(
        dir: &Path,
        device: &Device,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self, EngineError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| read_err(&config_path, e))?;
        let config: Config = serde_json::from_str(&text).map_err(|e| parse_err(&config_path, e))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| parse_err(&config_path, e))?;
        let dims = raw
            .get("hidden_size")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| parse_err(&config_path, "missing hidden_size"))?
            as usize;
        let max_tokens = sharenet_prompt::embedding_max_tokens(dir)?;
        let pool_path = dir.join("1_Pooling").join("config.json");
        let pooling = match read_json(&pool_path)? {
            None => Pooling::Mean,
            Some(v) => {
                let on = |k: &str| v.get(k).and_then(|b| b.as_bool()).unwrap_or(false);
                if on("pooling_mode_mean_tokens") {
                    Pooling::Mean
                } else if on("pooling_mode_cls_token") {
                    Pooling::Cls
                } else if on("pooling_mode_max_tokens") {
                    Pooling::Max
                } else {
                    return Err(parse_err(
                        &pool_path,
                        "no supported pooling mode (mean, cls or max) is enabled",
                    ));
                }
            }
        };
        let normalize = match read_json(&dir.join("modules.json"))? {
            None => true,
            Some(v) => v.as_array().is_some_and(|mods| {
                mods.iter().any(|m| {
                    m.get("type")
                        .and_then(|t| t.as_str())
                        .is_some_and(|t| t.ends_with("Normalize"))
                })
            }),
        };

        let tok_path = dir.join("tokenizer.json");
        let tokenizer =
            sharenet_prompt::embedding_tokenizer(load_tokenizer_file(&tok_path)?, max_tokens)
                .map_err(|e| parse_err(&tok_path, e))?;

        let files = weight_files(dir)?;
        let weights_sha256 = hash_files(&files, progress)?;
        progress(Progress::Loading);
        let (vb, desc) = mmap_safetensors(&files, candle_core::DType::F32, device)?;
        let weights_err = |e: candle_core::Error| EngineError::Weights {
            path: desc.clone(),
            reason: e.to_string(),
        };
        let model = BertModel::load(vb, &config).map_err(weights_err)?;
        Ok(Self {
            model,
            tokenizer,
            pooling,
            normalize,
            dims,
            max_tokens,
            weights_sha256,
            path: dir.to_path_buf(),
        })
    }

    /// Vector length.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Longest input in tokens (longer inputs are truncated).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn weights_sha256(&self) -> [u8; 32] {
        self.weights_sha256
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Embeds `texts`, in batches of at most [`MAX_PADDED_TOKENS`] padded
    /// tokens ([`plan_batches`]); vectors come back in input order.
    /// Blocking.
    pub fn embed(&self, texts: &[String]) -> Result<Embeddings, EngineError> {
        if texts.is_empty() {
            return Ok(Embeddings {
                vectors: Vec::new(),
                tokens: 0,
            });
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let lens: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
        let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); encodings.len()];
        let mut tokens = 0u32;
        for batch in plan_batches(&lens, MAX_PADDED_TOKENS) {
            let rows: Vec<&tokenizers::Encoding> = batch.iter().map(|&i| &encodings[i]).collect();
            let out = self.embed_batch(&rows)?;
            tokens = tokens.saturating_add(out.tokens);
            for (i, v) in batch.into_iter().zip(out.vectors) {
                vectors[i] = v;
            }
        }
        Ok(Embeddings { vectors, tokens })
    }

    /// One padded forward pass over `encodings`.
    fn embed_batch(&self, encodings: &[&tokenizers::Encoding]) -> Result<Embeddings, EngineError> {
        let len = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let n = encodings.len();
        let mut ids = vec![0u32; n * len];
        let mut mask = vec![0u32; n * len];
        let mut tokens = 0u32;
        for (i, e) in encodings.iter().enumerate() {
            let row = e.get_ids();
            tokens += row.len() as u32;
            ids[i * len..i * len + row.len()].copy_from_slice(row);
            mask[i * len..i * len + row.len()].fill(1);
        }
        let dev = self.model.device.clone();
        let ids = Tensor::from_vec(ids, (n, len), &dev)?;
        let mask = Tensor::from_vec(mask, (n, len), &dev)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // [n, len, dims]
        let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // [n, len, 1]
        let pooled = match self.pooling {
            Pooling::Mean => {
                let sum = hidden.broadcast_mul(&maskf)?.sum(1)?;
                let count = maskf.sum(1)?.clamp(1e-9, f32::MAX)?;
                sum.broadcast_div(&count)?
            }
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Max => {
                // Padded positions must not win the max.
                let neg = ((maskf.ones_like()? - &maskf)? * -1e9)?;
                hidden.broadcast_add(&neg)?.max(1)?
            }
        };
        let pooled = if self.normalize {
            let norm = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12, f32::MAX)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        Ok(Embeddings {
            vectors: pooled.to_vec2()?,
            tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12, item 9: one long input among 2,047 short ones used to pad
    /// every short one to its length in a single pass.
    #[test]
    fn batches_are_bounded_by_padded_tokens_and_cover_every_input_once() {
        let mut lens = vec![8usize; 2047];
        lens.push(512);
        let batches = plan_batches(&lens, MAX_PADDED_TOKENS);
        let mut seen = vec![false; lens.len()];
        for b in &batches {
            let longest = b.iter().map(|&i| lens[i]).max().unwrap_or(0);
            assert!(
                b.len() * longest <= MAX_PADDED_TOKENS,
                "{} rows of up to {longest} tokens",
                b.len()
            );
            for &i in b {
                assert!(!seen[i], "input {i} twice");
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        let padded: usize = batches
            .iter()
            .map(|b| b.len() * b.iter().map(|&i| lens[i]).max().unwrap_or(0))
            .sum();
        assert!(
            padded < 2 * (2047 * 8 + 512),
            "padding stays near the real tokens: {padded}"
        );
        // A single input longer than the bound still gets a batch.
        assert_eq!(
            plan_batches(&[MAX_PADDED_TOKENS * 2], MAX_PADDED_TOKENS),
            vec![vec![0]]
        );
        assert!(plan_batches(&[], MAX_PADDED_TOKENS).is_empty());
    }
}
