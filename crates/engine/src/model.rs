//! A text model: weights (safetensors folder or GGUF file), tokenizer, chat
//! template, end-of-sequence tokens and the SHA-256 of the weights.

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde_json::json;
use sha2::{Digest, Sha256};
use sharenet_proto::{JobInput, Tools};
use tokenizers::Tokenizer;

use crate::constraint::{Constraint, Grammar, Grammars};
use crate::spec::ModelSpec;
use crate::template::ChatTemplate;
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
    tokenizer: Tokenizer,
    template: ChatTemplate,
    add_bos: bool,
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

/// The `license:` in the YAML front matter of a Hugging Face model card
/// (`README.md` beside the weights), if any.
fn card_license(dir: &Path) -> Option<String> {
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
    let total: u64 = files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .map(|m| m.len())
                .map_err(|e| read_err(f, e))
        })
        .sum::<Result<u64, _>>()?;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let mut file = std::fs::File::open(f).map_err(|e| read_err(f, e))?;
        loop {
            let n = file.read(&mut buf).map_err(|e| read_err(f, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            done += n as u64;
            progress(Progress::Hashing { done, total });
        }
    }
    Ok(hasher.finalize().into())
}

/// Token text from `tokenizer_config.json`'s `bos_token` / `eos_token`
/// (a string or `{"content": ...}`).
fn special_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `chat_template` as a string, or the `default` entry of a list.
fn template_source(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        _ => None,
    }
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
        let tokenizer = load_tokenizer_file(&dir.join("tokenizer.json"))?;
        check_vocab(&tokenizer, &spec, &dir.join("tokenizer.json"))?;

        let tc_path = dir.join("tokenizer_config.json");
        let tc: serde_json::Value = if tc_path.exists() {
            let text = std::fs::read_to_string(&tc_path).map_err(|e| read_err(&tc_path, e))?;
            serde_json::from_str(&text).map_err(|e| parse_err(&tc_path, e))?
        } else {
            json!({})
        };
        let bos_text = special_text(tc.get("bos_token"));
        let eos_text = special_text(tc.get("eos_token"));
        let template = ChatTemplate::new(
            template_source(tc.get("chat_template")),
            bos_text.clone().unwrap_or_default(),
            eos_text.clone().unwrap_or_else(|| "</s>".into()),
        )
        .map_err(|e| parse_err(&tc_path, e))?;
        let add_bos = tc
            .get("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(spec.bos_token_id.is_some() && spec.arch != crate::Arch::Qwen2);

        let mut eos = spec.eos_token_ids.clone();
        if let Some(id) = eos_text.as_deref().and_then(|t| tokenizer.token_to_id(t)) {
            eos.push(id);
        }
        let gen_path = dir.join("generation_config.json");
        if let Ok(text) = std::fs::read_to_string(&gen_path) {
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| parse_err(&gen_path, e))?;
            match v.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => eos.extend(n.as_u64().map(|n| n as u32)),
                Some(serde_json::Value::Array(a)) => {
                    eos.extend(a.iter().filter_map(|n| n.as_u64()).map(|n| n as u32))
                }
                _ => {}
            }
        }
        eos.sort_unstable();
        eos.dedup();

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
            tokenizer,
            template,
            add_bos,
            eos,
            path: dir.to_path_buf(),
            weights_sha256,
            format: WeightsFormat::Safetensors,
            grammars: std::sync::OnceLock::new(),
            license: card_license(dir),
            weights_name: serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("_name_or_path")?.as_str().map(str::to_owned))
                .filter(|n| !n.trim().is_empty()),
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
        let md = &content.metadata;
        let spec = ModelSpec::from_gguf(path, md)?;
        let beside = path.with_file_name("tokenizer.json");
        let tokenizer = if beside.exists() {
            load_tokenizer_file(&beside)?
        } else {
            tokenizer_from_gguf(path, md)?
        };
        check_vocab(&tokenizer, &spec, path)?;
        let text_of = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
        let bos_text = text_of(spec.bos_token_id);
        let eos_text = text_of(spec.eos_token_ids.first().copied());
        let source = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        let template = ChatTemplate::new(
            source,
            bos_text.unwrap_or_default(),
            eos_text.unwrap_or_else(|| "</s>".into()),
        )
        .map_err(|e| parse_err(path, e))?;
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(spec.bos_token_id.is_some() && spec.arch != crate::Arch::Qwen2);
        let dtype = content
            .tensor_infos
            .get("blk.0.attn_q.weight")
            .map(|t| format!("{:?}", t.ggml_dtype))
            .unwrap_or_default();
        let eos = spec.eos_token_ids.clone();
        let license = md
            .get("general.license")
            .and_then(|v| v.to_string().ok())
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty() && l.len() <= 64);
        let weights_name = md
            .get("general.name")
            .and_then(|v| v.to_string().ok())
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty());
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
            tokenizer,
            template,
            add_bos,
            eos,
            path: path.to_path_buf(),
            weights_sha256,
            format: WeightsFormat::Gguf { dtype },
            grammars: std::sync::OnceLock::new(),
            license,
            weights_name,
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
        self.template.is_own()
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
        self.template.tool_format()
    }

    /// Compiles a constraint for one job (the vocabulary's token trie is
    /// built on first use and kept).
    pub fn constraint(&self, grammar: &Grammar) -> Result<Constraint, EngineError> {
        let grammars = self.grammars.get_or_init(|| {
            Grammars::new(&self.tokenizer, self.spec().vocab_size, &self.eos)
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
    /// a job's input.
    pub fn encode_request(
        &self,
        input: &JobInput,
        tools: Option<&Tools>,
    ) -> Result<Vec<u32>, EngineError> {
        let text = match input {
            JobInput::Chat { messages } => match tools {
                Some(t) if t.choice != sharenet_proto::ToolChoice::None => {
                    if self.tool_format().is_none() {
                        return Err(EngineError::Unsupported(
                            "this model's chat template does not take tools".into(),
                        ));
                    }
                    let tools = crate::tool_calls::template_tools(t);
                    self.template.render_with_tools(messages, Some(&tools))?
                }
                _ => self.template.render(messages)?,
            },
            JobInput::Prompt { prompt } => prompt.clone(),
            JobInput::Embed { .. } => {
                return Err(EngineError::Unsupported(
                    "this is a text generation model; it does not embed".into(),
                ));
            }
        };
        let encoding = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(encoding.get_ids().len() + 1);
        let bos_in_text = !self.template.bos().is_empty() && text.starts_with(self.template.bos());
        if self.add_bos
            && !bos_in_text
            && let Some(bos) = self.spec().bos_token_id
        {
            ids.push(bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        if ids.is_empty() {
            return Err(EngineError::InvalidInput("the prompt is empty".into()));
        }
        Ok(ids)
    }

    /// Token ids to text, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// One token's raw bytes (for logprobs), byte-level tokens mapped back.
    pub(crate) fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.tokenizer
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
        let mut file = std::fs::File::open(path).map_err(|e| read_err(path, e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| parse_err(path, e))?;
        return tokenizer_from_gguf(path, &content.metadata);
    }
    load_tokenizer_file(path)
}

pub(crate) fn load_tokenizer_file(path: &Path) -> Result<Tokenizer, EngineError> {
    if !path.exists() {
        return Err(read_err(path, "file not found"));
    }
    Tokenizer::from_file(path).map_err(|e| parse_err(path, e))
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

/// A byte-level BPE tokenizer (GPT-2 style, `tokenizer.ggml.model = gpt2`,
/// as Llama 3 and Qwen2 GGUFs carry) rebuilt from GGUF metadata. Control
/// tokens (type 3) become special added tokens. SentencePiece GGUFs
/// (`llama`) need a `tokenizer.json` beside the file.
fn tokenizer_from_gguf(
    path: &Path,
    md: &std::collections::HashMap<String, Value>,
) -> Result<Tokenizer, EngineError> {
    let kind = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("");
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
        .and_then(|v| v.to_vec().ok())
        .ok_or_else(|| parse_err(path, "missing tokenizer.ggml.tokens"))?;
    let types: Vec<i32> = md
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect())
        .unwrap_or_default();
    let merges: Vec<String> = md
        .get("tokenizer.ggml.merges")
        .and_then(|v| v.to_vec().ok())
        .map(|v| {
            v.iter()
                .filter_map(|m| m.to_string().ok().cloned())
                .collect()
        })
        .unwrap_or_default();
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        let text = t
            .to_string()
            .map_err(|e| parse_err(path, format!("token {id}: {e}")))?;
        vocab.insert(text.clone(), json!(id));
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
    text.parse::<Tokenizer>()
        .map_err(|e| parse_err(path, format!("tokenizer from metadata: {e}")))
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
