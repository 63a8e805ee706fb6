//! The shape of a decoder-only transformer, read from a Hugging Face
//! `config.json` or from GGUF metadata, for the llama family that shares one
//! forward pass: Llama 2/3.x, Mistral and Qwen2/2.5.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde::Deserialize;

use crate::EngineError;

/// The architectures this engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }
}

/// Llama 3.1-style frequency scaling of the rotary embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    /// GGUF llama weights are permuted for interleaved rotary pairs.
    pub rope_interleaved: bool,
    pub max_position_embeddings: usize,
    /// Mistral: attend to at most this many previous positions.
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
    /// Qwen2: q, k and v projections have a bias.
    pub qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelSpec {
    /// Parameters of the matrices and embeddings (norms and biases left
    /// out: a rounding error): the embedding, each layer's attention and
    /// MLP, and the output head unless it is the embedding (tied).
    pub fn parameters(&self) -> u64 {
        let (h, i) = (self.hidden_size as u64, self.intermediate_size as u64);
        let qd = (self.num_heads * self.head_dim) as u64;
        let kvd = (self.num_kv_heads * self.head_dim) as u64;
        let layer = 2 * h * qd + 2 * h * kvd + 3 * h * i;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.embedding_parameters()
        };
        self.embedding_parameters() + head + self.num_layers as u64 * layer
    }

    /// Parameters of the embedding table (vocabulary × hidden size).
    pub fn embedding_parameters(&self) -> u64 {
        (self.vocab_size * self.hidden_size) as u64
    }

    fn check(self, path: &Path) -> Result<Self, EngineError> {
        let bad = |reason: String| EngineError::Parse {
            path: path.display().to_string(),
            reason,
        };
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_layers == 0 {
            return Err(bad(
                "num_attention_heads, num_key_value_heads and num_hidden_layers must be > 0".into(),
            ));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(bad(format!("head_dim {} must be even", self.head_dim)));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.max_position_embeddings == 0 {
            return Err(bad(
                "vocab_size, hidden_size and max_position_embeddings must be > 0".into(),
            ));
        }
        Ok(self)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_config_json(path: &Path, text: &str) -> Result<Self, EngineError> {
        let parse = |reason: String| EngineError::Parse {
            path: path.display().to_string(),
            reason,
        };
        let raw: HfConfig = serde_json::from_str(text).map_err(|e| parse(e.to_string()))?;
        let model_type = raw.model_type.as_deref().unwrap_or("llama");
        let arch = Arch::from_name(model_type).ok_or_else(|| {
            parse(format!(
                "unsupported model_type {model_type:?} (supported: llama, mistral, qwen2)"
            ))
        })?;
        let num_heads = raw.num_attention_heads;
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / num_heads.max(1));
        let rope_scaling = match raw.rope_scaling {
            None => None,
            Some(s) => match s.rope_type.as_deref().or(s.kind.as_deref()) {
                Some("llama3") => Some(Llama3Scaling {
                    factor: s.factor.unwrap_or(8.0),
                    low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                    high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                    original_max_position_embeddings: s
                        .original_max_position_embeddings
                        .unwrap_or(8192),
                }),
                Some("default") | None => None,
                Some(other) => {
                    return Err(parse(format!(
                        "unsupported rope_scaling type {other:?} (supported: llama3)"
                    )));
                }
            },
        };
        let sliding_window = match arch {
            Arch::Mistral => raw.sliding_window,
            // Qwen2 configs carry a window but only use it with use_sliding_window.
            Arch::Qwen2 if raw.use_sliding_window == Some(true) => raw.sliding_window,
            _ => None,
        };
        Self {
            arch,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads,
            num_kv_heads: raw.num_key_value_heads.unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: raw.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            rope_interleaved: false,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            sliding_window,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2,
            bos_token_id: raw.bos_token_id,
            eos_token_ids: match raw.eos_token_id {
                Some(OneOrMany::One(id)) => vec![id],
                Some(OneOrMany::Many(ids)) => ids,
                None => Vec::new(),
            },
        }
        .check(path)
    }

    /// Reads GGUF metadata (`general.architecture` and its keys).
    pub fn from_gguf(path: &Path, md: &HashMap<String, Value>) -> Result<Self, EngineError> {
        let parse = |reason: String| EngineError::Parse {
            path: path.display().to_string(),
            reason,
        };
        let arch_name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| parse("missing general.architecture".into()))?;
        let arch = Arch::from_name(arch_name).ok_or_else(|| {
            parse(format!(
                "unsupported architecture {arch_name:?} (supported: llama, mistral, qwen2)"
            ))
        })?;
        let get = |key: &str| -> Result<&Value, EngineError> {
            md.get(&format!("{arch_name}.{key}"))
                .ok_or_else(|| parse(format!("missing {arch_name}.{key}")))
        };
        let usize_of = |key: &str| -> Result<usize, EngineError> {
            let v = get(key)?;
            let n = v
                .to_u64()
                .or_else(|_| v.to_u32().map(u64::from))
                .map_err(|e| parse(format!("{arch_name}.{key}: {e}")))?;
            usize::try_from(n).map_err(|e| parse(format!("{arch_name}.{key}: {e}")))
        };
        let f64_of = |key: &str, default: f64| -> Result<f64, EngineError> {
            match md.get(&format!("{arch_name}.{key}")) {
                None => Ok(default),
                Some(v) => v
                    .to_f32()
                    .map(f64::from)
                    .map_err(|e| parse(format!("{arch_name}.{key}: {e}"))),
            }
        };
        let hidden_size = usize_of("embedding_length")?;
        let num_heads = usize_of("attention.head_count")?;
        let num_kv_heads = usize_of("attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = match usize_of("rope.dimension_count") {
            Ok(d) => d,
            Err(_) => hidden_size / num_heads.max(1),
        };
        let vocab_size = md
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.len())
            .ok_or_else(|| parse("missing tokenizer.ggml.tokens".into()))?;
        let token_id = |key: &str| {
            md.get(key).and_then(|v| {
                v.to_u32()
                    .ok()
                    .or_else(|| v.to_i32().ok().map(|i| i as u32))
            })
        };
        Self {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: usize_of("feed_forward_length")?,
            num_layers: usize_of("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: f64_of("attention.layer_norm_rms_epsilon", 1e-5)?,
            rope_theta: f64_of("rope.freq_base", 10_000.0)?,
            rope_scaling: None,
            // llama.cpp's converter permutes llama/mistral q and k for
            // interleaved rotary pairs; qwen2 uses the NeoX layout.
            rope_interleaved: arch != Arch::Qwen2,
            max_position_embeddings: usize_of("context_length").unwrap_or(4096),
            sliding_window: None,
            tie_word_embeddings: false,
            qkv_bias: arch == Arch::Qwen2,
            bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
            eos_token_ids: token_id("tokenizer.ggml.eos_token_id")
                .into_iter()
                .collect(),
        }
        .check(path)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct RopeScaling {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RopeScaling>,
    max_position_embeddings: Option<usize>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llama3_mistral_and_qwen2_configs() {
        let p = Path::new("config.json");
        let llama = ModelSpec::from_config_json(
            p,
            r#"{"model_type":"llama","vocab_size":128256,"hidden_size":2048,"intermediate_size":8192,
            "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"rope_theta":500000.0,
            "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"},"max_position_embeddings":131072,
            "tie_word_embeddings":true,"bos_token_id":128000,"eos_token_id":[128001,128008,128009]}"#,
        )
        .unwrap();
        assert_eq!(llama.head_dim, 64);
        assert_eq!(llama.rope_scaling.unwrap().factor, 32.0);
        assert_eq!(llama.eos_token_ids, vec![128001, 128008, 128009]);
        assert!(llama.tie_word_embeddings && !llama.qkv_bias);

        let mistral = ModelSpec::from_config_json(
            p,
            r#"{"model_type":"mistral","vocab_size":32000,"hidden_size":4096,"intermediate_size":14336,
            "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"sliding_window":4096}"#,
        )
        .unwrap();
        assert_eq!(mistral.sliding_window, Some(4096));

        let qwen = ModelSpec::from_config_json(
            p,
            r#"{"model_type":"qwen2","vocab_size":151936,"hidden_size":896,"intermediate_size":4864,
            "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"sliding_window":32768,
            "use_sliding_window":false,"eos_token_id":151643}"#,
        )
        .unwrap();
        assert!(qwen.qkv_bias);
        assert_eq!(qwen.sliding_window, None);
        assert_eq!(qwen.head_dim, 64);
    }

    #[test]
    fn unsupported_and_inconsistent_configs_name_the_problem() {
        let p = Path::new("/m/config.json");
        let err = ModelSpec::from_config_json(
            p,
            r#"{"model_type":"gpt_neox","vocab_size":1,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/m/config.json") && err.contains("gpt_neox"),
            "{err}"
        );
        let err = ModelSpec::from_config_json(
            p,
            r#"{"model_type":"llama","vocab_size":1,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a multiple"), "{err}");
    }
}
