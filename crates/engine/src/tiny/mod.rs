//! Tiny random-weight models and a byte-level BPE tokenizer, written in the
//! same formats real models use (a Hugging Face folder with safetensors, or
//! one GGUF file), so tests, benchmarks and the devnet exercise the real
//! loaders without downloading weights.
//!
//! Three architectures: `llama` (no chat template: the documented
//! fallback), `mistral` (a `[INST]` template, sliding window) and `qwen2`
//! (ChatML with `<|im_start|>`/`<|im_end|>`, q/k/v biases). The weights are a
//! deterministic function of the seed and shape.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::{Arch, EngineError};

mod random;
pub use random::{RandomFormat, write_random_model};

/// Shape of the generated model.
#[derive(Debug, Clone, Copy)]
pub struct TinyConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    /// Tokens in the vocabulary: the tokenizer's [`VOCAB`] real ones, then
    /// padding tokens with word-like text up to this size (so the
    /// embedding and the output projection have a real model's shape).
    pub vocab_size: usize,
}

impl Default for TinyConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Llama,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 2048,
            vocab_size: VOCAB,
        }
    }
}

impl TinyConfig {
    /// A model far bigger than a CPU cache (about 420 M parameters, 440 MB
    /// as Q8_0), where decoding is memory-bound as with real LLMs.
    pub fn bench_large() -> Self {
        Self {
            hidden_size: 2048,
            intermediate_size: 5632,
            num_hidden_layers: 8,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            ..Self::default()
        }
    }

    /// Llama-3.2-1B's shape: 16 layers, hidden 2048, 32 heads (8 kv), MLP
    /// 8192, vocabulary 128,256 (1.24 B parameters with its tied
    /// embedding; these writers untie the head, 1.5 B).
    pub fn llama32_1b() -> Self {
        Self {
            hidden_size: 2048,
            intermediate_size: 8192,
            num_hidden_layers: 16,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            vocab_size: 128_256,
            ..Self::default()
        }
    }

    /// Llama-3.1-8B's shape: 32 layers, hidden 4096, 32 heads (8 kv), MLP
    /// 14336, vocabulary 128,256 (about 8.03 B parameters; 16 GB in f16).
    pub fn llama31_8b() -> Self {
        Self {
            hidden_size: 4096,
            intermediate_size: 14_336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            vocab_size: 128_256,
            ..Self::default()
        }
    }

    /// Parameters in this shape (embedding and untied head included).
    pub fn parameters(&self) -> u64 {
        let (h, i) = (self.hidden_size as u64, self.intermediate_size as u64);
        let kv = self.num_key_value_heads as u64 * (h / self.num_attention_heads.max(1) as u64);
        let vocab = self.vocab_size.max(VOCAB) as u64;
        let layer = 2 * h * h + 2 * kv * h + 3 * h * i + 2 * h;
        2 * vocab * h + self.num_hidden_layers as u64 * layer + h
    }

    /// Qwen2.5-0.5B's shape: qwen2 (q/k/v biases), 24 layers, hidden 896,
    /// 14 heads (2 kv), MLP 4864, vocabulary 151,936 (about 0.49 B
    /// parameters, untied head).
    pub fn qwen25_05b() -> Self {
        Self {
            arch: Arch::Qwen2,
            hidden_size: 896,
            intermediate_size: 4864,
            num_hidden_layers: 24,
            num_attention_heads: 14,
            num_key_value_heads: 2,
            vocab_size: 151_936,
            ..Self::default()
        }
    }

    /// SmolLM2-135M's shape (30 layers, hidden 576, 9 heads, 3 kv, MLP
    /// 1536) with a 32,000-token vocabulary (Llama 2's and Mistral's
    /// size).
    pub fn smollm2_135m_vocab32k() -> Self {
        Self {
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            vocab_size: 32_000,
            ..Self::default()
        }
    }

    /// A bigger model for benchmarks (about 25 M parameters; fits in a
    /// server CPU's last-level cache as Q8_0).
    pub fn bench() -> Self {
        Self {
            hidden_size: 512,
            intermediate_size: 1536,
            num_hidden_layers: 8,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            ..Self::default()
        }
    }
}

/// Byte-level BPE merges the tokenizer knows (in byte-level characters).
const MERGES: [(&str, &str); 8] = [
    ("\u{120}", "t"),
    ("t", "h"),
    ("h", "e"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("\u{120}", "a"),
    ("o", "n"),
];
/// 256 byte tokens, then the merged tokens, then these.
pub const BOS: u32 = 256 + MERGES.len() as u32;
pub const EOS: u32 = BOS + 1;
const IM_START: u32 = BOS + 2;
const IM_END: u32 = BOS + 3;
pub const VOCAB: usize = IM_END as usize + 1;
const SPECIALS: [(u32, &str); 4] = [
    (BOS, "<s>"),
    (EOS, "</s>"),
    (IM_START, "<|im_start|>"),
    (IM_END, "<|im_end|>"),
];

/// Qwen2.5's template in shape: ChatML, and with `tools` the Hermes tool
/// preamble, `<tool_call>` turns and `<tool_response>` results. Without
/// tools it renders exactly plain ChatML.
const CHATML: &str = concat!(
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}",
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}",
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}",
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}",
    "{%- endif %}",
    "{%- for message in messages %}",
    "{%- if message.role == 'system' and tools and loop.first %}",
    "{%- elif message.role == 'assistant' and message.tool_calls %}{{- '<|im_start|>assistant' }}{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}",
    "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}",
    "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}",
    "{%- elif message.role == 'tool' %}{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}",
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}",
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}",
    "{%- endfor %}",
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
);
const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

fn write_err(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn chat_template(arch: Arch) -> Option<&'static str> {
    match arch {
        Arch::Llama => None,
        Arch::Mistral => Some(MISTRAL),
        Arch::Qwen2 => Some(CHATML),
    }
}

/// The model's tensors under their Hugging Face names.
fn tensors(seed: u64, shape: &TinyConfig) -> Result<HashMap<String, Tensor>, EngineError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let h = shape.hidden_size;
    let head_dim = h / shape.num_attention_heads.max(1);
    let kv = shape.num_key_value_heads * head_dim;
    let mut uniform = |rows: usize, cols: usize| -> Vec<f32> {
        let scale = 1.0 / (cols as f32).sqrt();
        (0..rows * cols)
            .map(|_| rng.random_range(-scale..scale))
            .collect()
    };
    // Hidden dimension 0 carries a constant through the residual stream,
    // and the output head reads it as a bias towards lowercase letters and
    // spaces, so the random model's text looks like words rather than
    // control bytes. Everything else is random.
    let vocab = shape.vocab_size.max(VOCAB);
    let mut embed = uniform(vocab, h);
    let mut head = uniform(vocab, h);
    let letters = lettery_tokens(vocab);
    for tok in 0..vocab {
        embed[tok * h] = 1.0;
        head[tok * h] = if letters[tok] {
            0.6
        } else if tok as u32 == EOS || tok as u32 == IM_END {
            0.2
        } else {
            -0.6
        };
    }
    let dev = &Device::Cpu;
    tensors.insert(
        "model.embed_tokens.weight".into(),
        Tensor::from_vec(embed, (vocab, h), dev)?,
    );
    tensors.insert(
        "lm_head.weight".into(),
        Tensor::from_vec(head, (vocab, h), dev)?,
    );
    for l in 0..shape.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (name, rows, cols) in layer_matrices(shape) {
            let data = uniform(rows, cols);
            tensors.insert(
                format!("{p}.{name}"),
                Tensor::from_vec(data, (rows, cols), dev)?,
            );
        }
        if shape.arch == Arch::Qwen2 {
            for (name, n) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv)] {
                let data = uniform(1, n);
                tensors.insert(
                    format!("{p}.self_attn.{name}.bias"),
                    Tensor::from_vec(data, n, dev)?,
                );
            }
        }
    }
    let ones = Tensor::ones(h, candle_core::DType::F32, dev)?;
    for l in 0..shape.num_hidden_layers {
        let p = format!("model.layers.{l}");
        tensors.insert(format!("{p}.input_layernorm.weight"), ones.clone());
        tensors.insert(format!("{p}.post_attention_layernorm.weight"), ones.clone());
    }
    tensors.insert("model.norm.weight".into(), ones);
    Ok(tensors)
}

/// A layer's matrices: Hugging Face name (under `model.layers.N.`), rows
/// and columns.
fn layer_matrices(shape: &TinyConfig) -> [(&'static str, usize, usize); 7] {
    let h = shape.hidden_size;
    let kv = shape.num_key_value_heads * (h / shape.num_attention_heads.max(1));
    let i = shape.intermediate_size;
    [
        ("self_attn.q_proj.weight", h, h),
        ("self_attn.k_proj.weight", kv, h),
        ("self_attn.v_proj.weight", kv, h),
        ("self_attn.o_proj.weight", h, h),
        ("mlp.gate_proj.weight", i, h),
        ("mlp.up_proj.weight", i, h),
        ("mlp.down_proj.weight", h, i),
    ]
}

/// Tokens whose text is lowercase letters or a space (every merge and
/// every padding token is), of a vocabulary of `n`.
fn lettery_tokens(n: usize) -> Vec<bool> {
    (0..n)
        .map(|t| match u8::try_from(t) {
            Ok(b) => b.is_ascii_lowercase() || b == b' ',
            Err(_) => t < 256 + MERGES.len() || t >= VOCAB,
        })
        .collect()
}

/// The text of padding token `i`: a space (`Ġ` in byte-level form), `q`,
/// then `i` in base 26 as lowercase letters — unique, and longer than any
/// merge.
fn padding_text(i: usize) -> String {
    let mut letters = Vec::new();
    let mut n = i;
    loop {
        letters.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
        if n == 0 {
            break;
        }
    }
    letters.reverse();
    format!("\u{120}q{}", letters.into_iter().collect::<String>())
}

/// Writes `config.json`, `model.safetensors`, `tokenizer.json` and
/// `tokenizer_config.json` into `dir` (created if missing), in f32.
pub fn write_tiny_model(dir: &Path, seed: u64, shape: TinyConfig) -> Result<(), EngineError> {
    write_tiny_model_as(dir, seed, shape, DType::F32)
}

/// As [`write_tiny_model`], with the weights stored as `dtype` (f32, f16
/// or bf16; `torch_dtype` says which).
pub fn write_tiny_model_as(
    dir: &Path,
    seed: u64,
    shape: TinyConfig,
    dtype: DType,
) -> Result<(), EngineError> {
    write_folder_meta(dir, &shape, torch_dtype(dtype)?)?;
    let tensors = tensors(seed, &shape)?
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(dtype)?)))
        .collect::<Result<HashMap<_, _>, candle_core::Error>>()?;
    let weights = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights).map_err(|e| write_err(&weights, e))?;
    Ok(())
}

/// `config.json`'s `torch_dtype` for weights stored as `dtype`.
fn torch_dtype(dtype: DType) -> Result<&'static str, EngineError> {
    match dtype {
        DType::F32 => Ok("float32"),
        DType::F16 => Ok("float16"),
        DType::BF16 => Ok("bfloat16"),
        other => Err(EngineError::Unsupported(format!(
            "safetensors weights in {other:?} (f32, f16 or bf16)"
        ))),
    }
}

/// `config.json`, `tokenizer.json` (padded to the shape's vocabulary) and
/// `tokenizer_config.json` of a Hugging Face folder.
fn write_folder_meta(dir: &Path, shape: &TinyConfig, torch_dtype: &str) -> Result<(), EngineError> {
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
    let (model_type, arch_name) = match shape.arch {
        Arch::Llama => ("llama", "LlamaForCausalLM"),
        Arch::Mistral => ("mistral", "MistralForCausalLM"),
        Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
    };
    let mut config = json!({
        "architectures": [arch_name],
        "model_type": model_type,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "max_position_embeddings": shape.max_position_embeddings,
        "vocab_size": shape.vocab_size.max(VOCAB),
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "tie_word_embeddings": false,
        "torch_dtype": torch_dtype
    });
    if shape.arch == Arch::Mistral {
        config["sliding_window"] = json!(shape.max_position_embeddings);
    }
    write_json(&dir.join("config.json"), &config)?;
    write_json(
        &dir.join("tokenizer.json"),
        &byte_level_tokenizer(shape.vocab_size),
    )?;
    let eos = if shape.arch == Arch::Qwen2 {
        "<|im_end|>"
    } else {
        "</s>"
    };
    let mut tc = json!({"bos_token": "<s>", "eos_token": eos, "model_max_length": shape.max_position_embeddings});
    if let Some(t) = chat_template(shape.arch) {
        tc["chat_template"] = json!(t);
    }
    if shape.arch == Arch::Qwen2 {
        tc["add_bos_token"] = json!(false);
    }
    write_json(&dir.join("tokenizer_config.json"), &tc)?;
    Ok(())
}

/// Older name for [`write_tiny_model`] with a llama shape.
pub fn write_tiny_llama(dir: &Path, seed: u64, shape: TinyConfig) -> Result<(), EngineError> {
    write_tiny_model(
        dir,
        seed,
        TinyConfig {
            arch: Arch::Llama,
            ..shape
        },
    )
}

/// GGUF metadata for `shape`, as llama.cpp's converter lays it out
/// (architecture `llama` for llama and mistral, `qwen2` for qwen2): the
/// hyperparameters, the tokenizer (padded to the shape's vocabulary) and
/// the chat template.
fn gguf_metadata(shape: &TinyConfig) -> Vec<(String, Value)> {
    let arch = if shape.arch == Arch::Qwen2 {
        "qwen2"
    } else {
        "llama"
    };
    let head_dim = shape.hidden_size / shape.num_attention_heads.max(1);
    let map = bytes_to_unicode();
    let mut tokens: Vec<Value> = map.iter().map(|c| Value::String(c.to_string())).collect();
    for (a, b) in MERGES {
        tokens.push(Value::String(format!("{a}{b}")));
    }
    let mut types = vec![Value::I32(1); tokens.len()];
    for (_, text) in SPECIALS {
        tokens.push(Value::String(text.to_string()));
        types.push(Value::I32(3));
    }
    // Padding up to the shape's vocabulary: normal tokens with word-like
    // text of their own (no merge makes them, so prompts tokenize as
    // before; the model writes them, and they decode to text).
    for i in tokens.len()..shape.vocab_size.max(VOCAB) {
        tokens.push(Value::String(padding_text(i)));
        types.push(Value::I32(1));
    }
    let merges: Vec<Value> = MERGES
        .iter()
        .map(|(a, b)| Value::String(format!("{a} {b}")))
        .collect();
    let eos = if shape.arch == Arch::Qwen2 {
        IM_END
    } else {
        EOS
    };
    let u32v = |n: usize| Value::U32(n as u32);
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String(format!("sharenet tiny {arch}")),
        ),
        // The project's own random weights: as free as it gets.
        ("general.license".into(), Value::String("apache-2.0".into())),
        (
            format!("{arch}.context_length"),
            u32v(shape.max_position_embeddings),
        ),
        (format!("{arch}.embedding_length"), u32v(shape.hidden_size)),
        (format!("{arch}.block_count"), u32v(shape.num_hidden_layers)),
        (
            format!("{arch}.feed_forward_length"),
            u32v(shape.intermediate_size),
        ),
        (format!("{arch}.rope.dimension_count"), u32v(head_dim)),
        (
            format!("{arch}.attention.head_count"),
            u32v(shape.num_attention_heads),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            u32v(shape.num_key_value_heads),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(10_000.0)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(BOS)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(shape.arch != Arch::Qwen2),
        ),
    ];
    if let Some(t) = chat_template(shape.arch) {
        md.push(("tokenizer.chat_template".into(), Value::String(t.into())));
    }
    md
}

/// The GGUF name of a Hugging Face tensor name.
fn gguf_name(hf: &str) -> String {
    if hf == "model.embed_tokens.weight" {
        return "token_embd.weight".into();
    }
    if hf == "lm_head.weight" {
        return "output.weight".into();
    }
    if hf == "model.norm.weight" {
        return "output_norm.weight".into();
    }
    let rest = hf.trim_start_matches("model.layers.");
    let (layer, name) = rest.split_once('.').unwrap_or(("0", rest));
    let name = match name {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        other => other,
    };
    format!("blk.{layer}.{name}")
}

/// Writes a single GGUF file (architecture `llama` for llama and mistral,
/// `qwen2` for qwen2) with matrices quantized to `dtype` (norms and biases
/// stay f32) and the tokenizer and chat template in its metadata, as
/// llama.cpp's converter lays them out.
pub fn write_tiny_gguf(
    path: &Path,
    seed: u64,
    shape: TinyConfig,
    dtype: GgmlDType,
) -> Result<(), EngineError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| write_err(parent, e))?;
    }
    let tensors = tensors(seed, &shape)?;
    let md = gguf_metadata(&shape);
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut qtensors = Vec::with_capacity(names.len());
    for name in names {
        let t = &tensors[name];
        let q = if t.rank() == 2 {
            QTensor::quantize(t, dtype)?
        } else {
            QTensor::quantize(t, GgmlDType::F32)?
        };
        qtensors.push((gguf_name(name), q));
    }
    write_gguf_file(path, &md, &qtensors)
}

fn write_gguf_file(
    path: &Path,
    md: &[(String, Value)],
    tensors: &[(String, QTensor)],
) -> Result<(), EngineError> {
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).map_err(|e| write_err(path, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
    candle_core::quantized::gguf_file::write(&mut out, &md_refs, &t_refs)
        .map_err(|e| write_err(path, e))?;
    std::io::Write::flush(&mut out).map_err(|e| write_err(path, e))?;
    drop(out);
    file.sync_all().map_err(|e| write_err(path, e))?;
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), EngineError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| write_err(path, e))?;
    std::fs::write(path, text).map_err(|e| write_err(path, e))
}

/// GPT-2's reversible byte to printable-character map.
fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (u32::from('!')..=u32::from('~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut map = vec!['\0'; 256];
    for &b in &printable {
        map[b as usize] = char::from_u32(b).unwrap_or('?');
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            map[b as usize] = char::from_u32(256 + n).unwrap_or('?');
            printable.push(b);
            n += 1;
        }
    }
    map
}

/// A byte-level BPE tokenizer: byte tokens, a few merges, the special
/// tokens as added tokens, then padding tokens up to `vocab_size` (normal
/// tokens no merge makes: prompts tokenize the same, and the model's
/// choices of them decode to word-like text).
fn byte_level_tokenizer(vocab_size: usize) -> serde_json::Value {
    let map = bytes_to_unicode();
    let mut vocab: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .enumerate()
        .map(|(id, c)| (c.to_string(), json!(id)))
        .collect();
    for (k, (a, b)) in MERGES.iter().enumerate() {
        vocab.insert(format!("{a}{b}"), json!(256 + k));
    }
    let mut added = Vec::new();
    for (id, text) in SPECIALS {
        vocab.insert(text.to_string(), json!(id));
        added.push(
            json!({"id": id, "content": text, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true}),
        );
    }
    for i in VOCAB..vocab_size {
        vocab.insert(padding_text(i), json!(i));
    }
    let merges: Vec<String> = MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TextModel;
    use sharenet_proto::JobInput;

    #[test]
    fn tokenizer_round_trips_utf8_and_merges() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_llama(dir.path(), 7, TinyConfig::default()).unwrap();
        let model = TextModel::load(dir.path()).unwrap();
        let ids = model
            .encode_input(&JobInput::Prompt {
                prompt: "héllo €".into(),
            })
            .unwrap();
        assert_eq!(ids[0], BOS);
        assert_eq!(ids.len(), 1 + "héllo €".len());
        assert_eq!(model.decode(&ids).unwrap(), "héllo €");
        let ids = model
            .encode_input(&JobInput::Prompt {
                prompt: "the".into(),
            })
            .unwrap();
        // t+h merge, then th+e has no merge: [BOS, "th", "e"].
        assert_eq!(ids.len(), 3, "{ids:?}");
    }

    #[test]
    fn same_seed_gives_same_files() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_tiny_llama(a.path(), 1, TinyConfig::default()).unwrap();
        write_tiny_llama(b.path(), 1, TinyConfig::default()).unwrap();
        let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
        assert_eq!(read(a.path()), read(b.path()));
        let ga = a.path().join("m.gguf");
        let gb = b.path().join("m.gguf");
        write_tiny_gguf(&ga, 1, TinyConfig::default(), GgmlDType::Q8_0).unwrap();
        write_tiny_gguf(&gb, 1, TinyConfig::default(), GgmlDType::Q8_0).unwrap();
        assert_eq!(std::fs::read(ga).unwrap(), std::fs::read(gb).unwrap());
    }
}
