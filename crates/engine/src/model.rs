//! A llama-architecture text model loaded with candle.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::llama::{Cache, Llama, LlamaConfig, LlamaEosToks};
use sharenet_proto::{FinishReason, JobInput, SamplingParams};
use tokenizers::Tokenizer;

use crate::streamer::Streamer;
use crate::{EngineError, template};

/// Text handed out during generation, and how many tokens produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    pub tokens: u32,
}

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: FinishReason,
}

/// A loaded llama-family model with its tokenizer. Cheap to share across
/// threads; each generation has its own KV cache.
pub struct TextModel {
    llama: Llama,
    config: candle_transformers::models::llama::Config,
    tokenizer: Tokenizer,
    device: Device,
    bos: Option<u32>,
    eos: Vec<u32>,
    eos_text: String,
    dir: PathBuf,
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn parse_err(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Parse {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl TextModel {
    /// Loads `config.json`, `model.safetensors` (or `model-*.safetensors`
    /// shards) and `tokenizer.json` from `dir`, on the CPU.
    pub fn load(dir: &Path) -> Result<Self, EngineError> {
        let device = Device::Cpu;
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| read_err(&config_path, e))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| parse_err(&config_path, e))?;
        if let Some(arch) = raw.get("model_type").and_then(|v| v.as_str())
            && arch != "llama"
        {
            return Err(parse_err(
                &config_path,
                format!("unsupported model_type {arch:?} (supported: llama)"),
            ));
        }
        let llama_config: LlamaConfig =
            serde_json::from_value(raw).map_err(|e| parse_err(&config_path, e))?;
        let config = llama_config.into_config(false);
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
            || config.num_key_value_heads == 0
            || !config
                .num_attention_heads
                .is_multiple_of(config.num_key_value_heads)
        {
            return Err(parse_err(
                &config_path,
                "hidden_size, num_attention_heads and num_key_value_heads do not divide evenly",
            ));
        }

        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(read_err(&tokenizer_path, "file not found"));
        }
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| parse_err(&tokenizer_path, e))?;
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > config.vocab_size {
            return Err(parse_err(
                &tokenizer_path,
                format!(
                    "tokenizer has {vocab} tokens but config.json vocab_size is {}",
                    config.vocab_size
                ),
            ));
        }

        let weights = weight_files(dir)?;
        let weights_desc = weights
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        // SAFETY: the files are memory-mapped read-only; the node does not
        // modify model files while serving (documented in the README).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&weights, DType::F32, &device) }
            .map_err(|e| EngineError::Weights {
                path: weights_desc.clone(),
                reason: e.to_string(),
            })?;
        // candle's llama loader unwraps per-layer errors; turn a panic on a
        // missing tensor or a shape mismatch into an error at start-up.
        let llama = catch_unwind(AssertUnwindSafe(|| Llama::load(vb, &config)))
            .map_err(|_| EngineError::Weights {
                path: weights_desc.clone(),
                reason: "a layer is missing or has the wrong shape".into(),
            })?
            .map_err(|e| EngineError::Weights {
                path: weights_desc,
                reason: e.to_string(),
            })?;

        let eos = match &config.eos_token_id {
            Some(LlamaEosToks::Single(id)) => vec![*id],
            Some(LlamaEosToks::Multiple(ids)) => ids.clone(),
            None => Vec::new(),
        };
        let eos_text = eos
            .first()
            .and_then(|&id| tokenizer.id_to_token(id))
            .unwrap_or_else(|| "</s>".to_string());
        Ok(Self {
            llama,
            bos: config.bos_token_id,
            config,
            tokenizer,
            device,
            eos,
            eos_text,
            dir: dir.to_path_buf(),
        })
    }

    /// The folder the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Longest prompt + completion, in tokens.
    pub fn context_length(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Renders and tokenizes a job's input.
    pub fn encode_input(&self, input: &JobInput) -> Result<Vec<u32>, EngineError> {
        let (text, add_bos) = match input {
            JobInput::Chat { messages } => {
                (template::render_fallback(messages, &self.eos_text), true)
            }
            JobInput::Prompt { prompt } => (prompt.clone(), true),
        };
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(encoding.get_ids().len() + 1);
        if add_bos && let Some(bos) = self.bos {
            ids.push(bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        if ids.is_empty() {
            return Err(EngineError::InvalidInput("the prompt is empty".into()));
        }
        Ok(ids)
    }

    pub(crate) fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// Generates a completion for `prompt`, calling `emit` with text as it
    /// is produced. `emit` returns false to cancel (the generation then
    /// stops before the next step and returns [`EngineError::Cancelled`]).
    /// Blocking: run it on a blocking thread.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &SamplingParams,
        mut emit: impl FnMut(Piece) -> bool,
    ) -> Result<Generation, EngineError> {
        let context = self.context_length();
        if prompt.is_empty() || prompt.len() >= context {
            return Err(EngineError::ContextLengthExceeded {
                prompt: prompt.len(),
                context,
            });
        }
        if let Some(&bad) = prompt
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(EngineError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary"
            )));
        }
        let max_new = (params.max_tokens as usize).min(context - prompt.len());
        let sampling = if params.temperature <= 0.0 {
            Sampling::ArgMax
        } else if params.top_p < 1.0 {
            Sampling::TopP {
                p: params.top_p,
                temperature: params.temperature,
            }
        } else {
            Sampling::All {
                temperature: params.temperature,
            }
        };
        let seed = params.seed.unwrap_or_else(rand::random);
        let mut sampler = LogitsProcessor::from_sampling(seed, sampling);
        let mut cache = Cache::new(true, DType::F32, &self.config, &self.device)?;
        let mut streamer = Streamer::new(|ids: &[u32]| self.decode(ids), &params.stop);

        let mut input: Vec<u32> = prompt.to_vec();
        let mut index_pos = 0;
        let mut generated = 0usize;
        let mut finish_reason = FinishReason::Length;
        while generated < max_new {
            let x = Tensor::new(input.as_slice(), &self.device)?.unsqueeze(0)?;
            let logits = self.llama.forward(&x, index_pos, &mut cache)?.squeeze(0)?;
            index_pos += input.len();
            let next = sampler.sample(&logits)?;
            generated += 1;
            if self.eos.contains(&next) {
                streamer.push_silent();
                finish_reason = FinishReason::Stop;
                break;
            }
            if let Some(piece) = streamer.push(next)?
                && !emit(piece)
            {
                return Err(EngineError::Cancelled);
            }
            if streamer.stopped() {
                finish_reason = FinishReason::Stop;
                break;
            }
            input.clear();
            input.push(next);
        }
        if let Some(piece) = streamer.finish()? {
            if streamer.stopped() {
                finish_reason = FinishReason::Stop;
            }
            if !emit(piece) {
                return Err(EngineError::Cancelled);
            }
        }
        Ok(Generation {
            prompt_tokens: prompt.len() as u32,
            completion_tokens: generated as u32,
            finish_reason,
        })
    }
}

/// `model.safetensors`, or the sorted `*.safetensors` shards in `dir`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, EngineError> {
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
