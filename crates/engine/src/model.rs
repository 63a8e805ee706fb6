//! A text model: weights (safetensors folder or GGUF file) and the SHA-256
//! of the weights, with its prompt side (tokenizer, chat template, BOS
//! rule, end-of-sequence tokens) read by `sharenet-prompt`, the same code
//! the coordinator counts prompts with.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use sharenet_prompt::{ModelSource, PromptModel};
use sharenet_proto::{JobInput, Tools};
use tokenizers::Tokenizer;

use crate::constraint::{Constraint, Grammar, Grammars};
use crate::spec::ModelSpec;
use crate::transformer::{Placement, Transformer, WeightSource};
use crate::{EngineError, Progress};

/// Where the weights came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsFormat {
    Safetensors,
    Gguf { dtype: String },
}

/// How to load a model: where, and in which [`Placement`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// `None`: [`Placement::Host`] on the CPU, [`Placement::Device`]
    /// elsewhere. Tests ask for the device placement on the CPU to check it
    /// against the host one.
    pub placement: Option<Placement>,
    /// The device placement's KV pool, allocated at load (the node passes
    /// its `kv_cache_mb`; give a scheduler no bigger budget). Unused on the
    /// host, whose caches grow per sequence.
    pub kv_cache_bytes: usize,
}

/// The KV pool of a device placement unless [`LoadOptions`] says.
pub const DEFAULT_KV_POOL_BYTES: usize = 256 << 20;

impl LoadOptions {
    pub fn on(device: &Device) -> Self {
        Self {
            device: device.clone(),
            placement: None,
            kv_cache_bytes: DEFAULT_KV_POOL_BYTES,
        }
    }

    fn placement(&self) -> Placement {
        self.placement.unwrap_or(if self.device.is_cpu() {
            Placement::Host
        } else {
            Placement::Device
        })
    }
}

/// The dtype a Hugging Face `config.json` says its weights are stored in
/// (`torch_dtype`, or `dtype` in newer transformers); f32 when unsaid.
fn stored_dtype(config: &serde_json::Value) -> DType {
    let name = config
        .get("torch_dtype")
        .or_else(|| config.get("dtype"))
        .and_then(|v| v.as_str());
    match name {
        Some("float16" | "half") => DType::F16,
        Some("bfloat16") => DType::BF16,
        _ => DType::F32,
    }
}

/// A loaded model. Shareable across threads; sequences own their state.
/// Generation ([`TextModel::generate`]) is defined in `sequence.rs`,
/// beside the per-sequence state it drives.
pub struct TextModel {
    pub(crate) transformer: Transformer,
    /// Tokenizer, chat template and BOS rule: what turns a request into
    /// the ids fed to the model (shared with the coordinator's counting).
    prompt: PromptModel,
    eos: Vec<u32>,
    path: PathBuf,
    weights_sha256: [u8; 32],
    format: WeightsFormat,
    /// The constraint compiler, built by the first job that needs one.
    grammars: std::sync::OnceLock<Result<Grammars, String>>,
    /// The license the model files state (GGUF `general.license`, or the
    /// `license:` of a model card's front matter).
    license: Option<String>,
    /// The weights' own name (GGUF `general.name`, or `config.json`'s
    /// `_name_or_path`).
    weights_name: Option<String>,
}

pub(crate) fn read_err(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

pub(crate) fn parse_err(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Parse {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// SHA-256 over the files' bytes, in the given order, reporting progress.
pub fn hash_files(
    files: &[PathBuf],
    progress: &mut dyn FnMut(Progress),
) -> Result<[u8; 32], EngineError> {
    Ok(sharenet_prompt::hash_files(files, &mut |done, total| {
        progress(Progress::Hashing { done, total })
    })?)
}

impl TextModel {
    /// Loads a Hugging Face folder or a `.gguf` file on the CPU.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        Self::load_with_progress(path, &mut |_| {})
    }

    /// As [`TextModel::load`], reporting progress.
    pub fn load_with_progress(
        path: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self, EngineError> {
        Self::load_on(path, &Device::Cpu, progress)
    }

    /// Loads onto `device` (a CUDA device needs the `cuda` feature) in
    /// that device's default placement: on a GPU the weights keep their
    /// stored dtype and the KV caches live there too.
    pub fn load_on(
        path: &Path,
        device: &Device,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self, EngineError> {
        Self::load_with(path, &LoadOptions::on(device), progress)
    }

    /// Loads as `options` say.
    pub fn load_with(
        path: &Path,
        options: &LoadOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self, EngineError> {
        if path.is_file() {
            Self::load_gguf(path, options, progress)
        } else if path.is_dir() {
            Self::load_folder(path, options, progress)
        } else {
            Err(read_err(path, "no such model folder or GGUF file"))
        }
    }

    fn load_folder(
        dir: &Path,
        options: &LoadOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self, EngineError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| read_err(&config_path, e))?;
        let spec = ModelSpec::from_config_json(&config_path, &text)?;
        let source = ModelSource::inspect(dir)?;
        let prompt = source.prompt_model()?;
        check_vocab(prompt.tokenizer(), &spec, &dir.join("tokenizer.json"))?;
        let files = weight_files(dir)?;
        let weights_sha256 = hash_files(&files, progress)?;
        progress(Progress::Loading);
        let placement = options.placement();
        // The host placement computes in f32; on a device the weights stay
        // as stored (f16/bf16), and so do the activations.
        let dtype = match placement {
            Placement::Host => DType::F32,
            Placement::Device => serde_json::from_str::<serde_json::Value>(&text)
                .map(|c| stored_dtype(&c))
                .unwrap_or(DType::F32),
        };
        let (vb, desc) = mmap_safetensors(&files, dtype, &options.device)?;
        let transformer = Transformer::load(
            spec,
            WeightSource::Safetensors {
                vb,
                files: desc,
                dtype,
            },
            placement,
            options.kv_cache_bytes,
        )?;
        Ok(Self {
            transformer,
            prompt,
            eos: source.eos_token_ids,
            path: dir.to_path_buf(),
            weights_sha256,
            format: WeightsFormat::Safetensors,
            grammars: std::sync::OnceLock::new(),
            license: source.license,
            weights_name: source.name,
        })
    }

    fn load_gguf(
        path: &Path,
        options: &LoadOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self, EngineError> {
        let weights_sha256 = hash_files(&[path.to_path_buf()], progress)?;
        progress(Progress::Loading);
        let mut file = std::fs::File::open(path).map_err(|e| read_err(path, e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| parse_err(path, e))?;
        let spec = ModelSpec::from_gguf(path, &content.metadata)?;
        // The prompt side from the metadata as the coordinator reads it
        // (the header once more: milliseconds).
        let source = ModelSource::inspect(path)?;
        let prompt = source.prompt_model()?;
        check_vocab(prompt.tokenizer(), &spec, path)?;
        let dtype = content
            .tensor_infos
            .get("blk.0.attn_q.weight")
            .map(|t| format!("{:?}", t.ggml_dtype))
            .unwrap_or_default();
        let transformer = Transformer::load(
            spec,
            WeightSource::Gguf {
                content: &content,
                file: &mut file,
                path,
                device: options.device.clone(),
            },
            options.placement(),
            options.kv_cache_bytes,
        )?;
        Ok(Self {
            transformer,
            prompt,
            eos: source.eos_token_ids,
            path: path.to_path_buf(),
            weights_sha256,
            format: WeightsFormat::Gguf { dtype },
            grammars: std::sync::OnceLock::new(),
            license: source.license,
            weights_name: source.name,
        })
    }

    /// The folder or file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn spec(&self) -> &ModelSpec {
        self.transformer.spec()
    }

    /// The tokens that end a generation (end of text, end of turn).
    pub fn eos_tokens(&self) -> &[u32] {
        &self.eos
    }

    pub fn format(&self) -> &WeightsFormat {
        &self.format
    }

    /// SHA-256 of the weights files.
    pub fn weights_sha256(&self) -> [u8; 32] {
        self.weights_sha256
    }

    /// Whether chat uses the model's own template (else the fallback).
    pub fn has_chat_template(&self) -> bool {
        self.prompt.template().is_own()
    }

    /// Longest prompt + completion, in tokens.
    pub fn context_length(&self) -> usize {
        self.spec().max_position_embeddings
    }

    /// Bytes of KV cache one token takes, in the memory it lives in (host
    /// f32, or the device's dtype there).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.transformer.kv_bytes_per_token()
    }

    /// Bytes of KV cache `tokens` tokens of one sequence take as allocated
    /// (whole blocks of the device pool; exact on the host).
    pub fn kv_bytes_for_tokens(&self, tokens: usize) -> usize {
        self.transformer.kv_bytes_for_tokens(tokens)
    }

    /// Free and total blocks of the device KV pool (`None` on the host).
    pub fn kv_pool_blocks(&self) -> Option<(usize, usize)> {
        self.transformer.kv_pool_blocks()
    }

    /// Where activations and KV caches live.
    pub fn placement(&self) -> Placement {
        self.transformer.placement()
    }

    /// The activations' dtype (f32 on the host; the weights' on a device).
    pub fn compute_dtype(&self) -> DType {
        self.transformer.dtype()
    }

    pub(crate) fn eos(&self) -> &[u32] {
        &self.eos
    }

    /// The license the model files state, if they do.
    pub fn license(&self) -> Option<&str> {
        self.license.as_deref()
    }

    /// The weights' own name as the files state it (GGUF `general.name`,
    /// or `config.json`'s `_name_or_path`).
    pub fn weights_name(&self) -> Option<&str> {
        self.weights_name.as_deref()
    }

    /// How the model writes tool calls; `None` when its chat template does
    /// not take tools.
    pub fn tool_format(&self) -> Option<crate::ToolFormat> {
        self.prompt.tool_format()
    }

    /// Compiles a constraint for one job (the vocabulary's token trie is
    /// built on first use and kept).
    pub fn constraint(&self, grammar: &Grammar) -> Result<Constraint, EngineError> {
        let grammars = self.grammars.get_or_init(|| {
            Grammars::new(self.prompt.tokenizer(), self.spec().vocab_size, &self.eos)
                .map_err(|e| e.to_string())
        });
        match grammars {
            Ok(g) => g.compile(grammar),
            Err(e) => Err(EngineError::Unsupported(e.clone())),
        }
    }

    /// Renders and tokenizes a job's input.
    pub fn encode_input(&self, input: &JobInput) -> Result<Vec<u32>, EngineError> {
        self.encode_request(input, None)
    }

    /// Renders (with the tools the model may call, if any) and tokenizes
    /// a job's input: [`PromptModel::encode_request`], the ids the
    /// coordinator counts.
    pub fn encode_request(
        &self,
        input: &JobInput,
        tools: Option<&Tools>,
    ) -> Result<Vec<u32>, EngineError> {
        Ok(self.prompt.encode_request(input, tools)?)
    }

    /// The prompt side: tokenizer, chat template, BOS rule.
    pub fn prompt(&self) -> &PromptModel {
        &self.prompt
    }

    /// Token ids to text, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        Ok(self.prompt.decode(ids, true)?)
    }

    /// One token's raw bytes (for logprobs), byte-level tokens mapped back.
    pub(crate) fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.prompt
            .decode(&[id], false)
            .map(String::into_bytes)
            .unwrap_or_default()
    }
}

/// A model's tokenizer without its weights (a node forwarding to an
/// upstream server counts that server's output with it): a
/// `tokenizer.json`, a folder holding one, or a `.gguf` file (the
/// `tokenizer.json` beside it, else the one its metadata describes, as
/// [`TextModel::load`] reads it).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, EngineError> {
    if path.is_dir() {
        return load_tokenizer_file(&path.join("tokenizer.json"));
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        let beside = path.with_file_name("tokenizer.json");
        if beside.exists() {
            return load_tokenizer_file(&beside);
        }
        let metadata = sharenet_prompt::gguf::Metadata::read(path)?;
        return Ok(sharenet_prompt::tokenizer_from_gguf(path, &metadata)?.0);
    }
    load_tokenizer_file(path)
}

pub(crate) fn load_tokenizer_file(path: &Path) -> Result<Tokenizer, EngineError> {
    Ok(sharenet_prompt::load_tokenizer_file(path)?.0)
}

fn check_vocab(tokenizer: &Tokenizer, spec: &ModelSpec, path: &Path) -> Result<(), EngineError> {
    let vocab = tokenizer.get_vocab_size(true);
    if vocab > spec.vocab_size {
        return Err(parse_err(
            path,
            format!(
                "tokenizer has {vocab} tokens but the model's vocabulary is {}",
                spec.vocab_size
            ),
        ));
    }
    Ok(())
}

/// Memory-maps safetensors files as `dtype` for `device`; also returns the
/// file list for error messages.
pub(crate) fn mmap_safetensors(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<(VarBuilder<'static>, String), EngineError> {
    let desc = files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    // SAFETY: the files are memory-mapped read-only; the node does not
    // modify model files while serving (documented in the README).
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }.map_err(|e| {
        EngineError::Weights {
            path: desc.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok((vb, desc))
}

/// `model.safetensors`, or the sorted `*.safetensors` shards in `dir`.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, EngineError> {
    Ok(sharenet_prompt::weight_files(dir)?)
}
