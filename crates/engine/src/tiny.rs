//! A tiny random-weight llama model and a byte-level BPE tokenizer, written
//! in the same Hugging Face layout real models use, so tests and the devnet
//! exercise the real loader without downloading weights.
//!
//! The weights are a deterministic function of the seed, so the same seed
//! always gives the same files (and the same completions for a given
//! sampling seed).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::EngineError;

/// Shape of the generated model.
#[derive(Debug, Clone, Copy)]
pub struct TinyConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
}

impl Default for TinyConfig {
    fn default() -> Self {
        Self {
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 2048,
        }
    }
}

/// 256 byte tokens, then these.
const BOS: u32 = 256;
const EOS: u32 = 257;
const VOCAB: usize = 258;

fn write_err(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes `config.json`, `model.safetensors`, `tokenizer.json` and
/// `tokenizer_config.json` into `dir` (created if missing).
pub fn write_tiny_llama(dir: &Path, seed: u64, shape: TinyConfig) -> Result<(), EngineError> {
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "max_position_embeddings": shape.max_position_embeddings,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "tie_word_embeddings": false,
        "torch_dtype": "float32"
    });
    write_json(&dir.join("config.json"), &config)?;
    write_json(&dir.join("tokenizer.json"), &byte_level_tokenizer())?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({"bos_token": "<s>", "eos_token": "</s>", "model_max_length": shape.max_position_embeddings}),
    )?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let h = shape.hidden_size;
    let head_dim = h / shape.num_attention_heads.max(1);
    let kv = shape.num_key_value_heads * head_dim;
    let i = shape.intermediate_size;
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
    let mut embed = uniform(VOCAB, h);
    let mut head = uniform(VOCAB, h);
    for tok in 0..VOCAB {
        embed[tok * h] = 1.0;
        let letter =
            tok < 256 && (u8::try_from(tok).is_ok_and(|b| b.is_ascii_lowercase() || b == b' '));
        head[tok * h] = if letter {
            0.6
        } else if tok as u32 == EOS {
            0.2
        } else {
            -0.6
        };
    }
    tensors.insert(
        "model.embed_tokens.weight".into(),
        Tensor::from_vec(embed, (VOCAB, h), &Device::Cpu)?,
    );
    tensors.insert(
        "lm_head.weight".into(),
        Tensor::from_vec(head, (VOCAB, h), &Device::Cpu)?,
    );
    let mut random = |name: String, rows: usize, cols: usize| -> Result<(), EngineError> {
        let data = uniform(rows, cols);
        tensors.insert(name, Tensor::from_vec(data, (rows, cols), &Device::Cpu)?);
        Ok(())
    };
    for l in 0..shape.num_hidden_layers {
        let p = format!("model.layers.{l}");
        random(format!("{p}.self_attn.q_proj.weight"), h, h)?;
        random(format!("{p}.self_attn.k_proj.weight"), kv, h)?;
        random(format!("{p}.self_attn.v_proj.weight"), kv, h)?;
        random(format!("{p}.self_attn.o_proj.weight"), h, h)?;
        random(format!("{p}.mlp.gate_proj.weight"), i, h)?;
        random(format!("{p}.mlp.up_proj.weight"), i, h)?;
        random(format!("{p}.mlp.down_proj.weight"), h, i)?;
    }
    let ones = Tensor::ones(h, candle_core::DType::F32, &Device::Cpu)?;
    for l in 0..shape.num_hidden_layers {
        let p = format!("model.layers.{l}");
        tensors.insert(format!("{p}.input_layernorm.weight"), ones.clone());
        tensors.insert(format!("{p}.post_attention_layernorm.weight"), ones.clone());
    }
    tensors.insert("model.norm.weight".into(), ones);
    let weights = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights).map_err(|e| write_err(&weights, e))?;
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

/// A byte-level BPE tokenizer (no merges): token id = byte value, plus
/// `<s>` and `</s>` as special tokens.
fn byte_level_tokenizer() -> serde_json::Value {
    let map = bytes_to_unicode();
    let vocab: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .enumerate()
        .map(|(id, c)| (c.to_string(), json!(id)))
        .chain([
            ("<s>".to_string(), json!(BOS)),
            ("</s>".to_string(), json!(EOS)),
        ])
        .collect();
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(BOS, "<s>"), special(EOS, "</s>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": []
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TextModel;
    use sharenet_proto::{ChatMessage, JobInput, SamplingParams};

    fn tiny() -> (tempfile::TempDir, TextModel) {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_llama(dir.path(), 7, TinyConfig::default()).unwrap();
        let model = TextModel::load(dir.path()).unwrap();
        (dir, model)
    }

    fn generate(model: &TextModel, params: &SamplingParams) -> (String, crate::Generation) {
        let prompt = model
            .encode_input(&JobInput::Chat {
                messages: vec![ChatMessage {
                    role: "user".into(),
                    content: "Hello, world".into(),
                }],
            })
            .unwrap();
        let mut text = String::new();
        let mut tokens = 0;
        let generation = model
            .generate(&prompt, params, |p| {
                text.push_str(&p.text);
                tokens += p.tokens;
                true
            })
            .unwrap();
        assert_eq!(tokens, generation.completion_tokens);
        (text, generation)
    }

    #[test]
    fn tokenizer_round_trips_utf8() {
        let (_dir, model) = tiny();
        let ids = model
            .encode_input(&JobInput::Prompt {
                prompt: "héllo €".into(),
            })
            .unwrap();
        assert_eq!(ids[0], BOS);
        assert_eq!(ids.len(), 1 + "héllo €".len());
        assert_eq!(model.decode(&ids).unwrap(), "héllo €");
    }

    #[test]
    fn same_seed_same_text_and_max_tokens_respected() {
        let (_dir, model) = tiny();
        let params = SamplingParams {
            max_tokens: 12,
            temperature: 0.9,
            top_p: 0.95,
            seed: Some(42),
            stop: vec![],
        };
        let (a, ga) = generate(&model, &params);
        let (b, gb) = generate(&model, &params);
        assert_eq!(a, b);
        assert_eq!(ga, gb);
        assert!(ga.completion_tokens <= 12);
        let (c, _) = generate(
            &model,
            &SamplingParams {
                seed: Some(43),
                ..params
            },
        );
        assert_ne!(a, c, "a different seed should give different text");
    }

    #[test]
    fn text_is_mostly_letters_and_spaces() {
        let (_dir, model) = tiny();
        let params = SamplingParams {
            max_tokens: 64,
            temperature: 1.0,
            top_p: 1.0,
            seed: Some(1),
            stop: vec![],
        };
        let (text, _) = generate(&model, &params);
        let letters = text
            .chars()
            .filter(|c| c.is_ascii_lowercase() || *c == ' ')
            .count();
        assert!(letters * 10 >= text.chars().count() * 8, "{text:?}");
    }

    #[test]
    fn same_seed_gives_same_weights() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_tiny_llama(a.path(), 1, TinyConfig::default()).unwrap();
        write_tiny_llama(b.path(), 1, TinyConfig::default()).unwrap();
        let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
        assert_eq!(read(a.path()), read(b.path()));
    }

    #[test]
    fn missing_and_corrupt_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_llama(dir.path(), 7, TinyConfig::default()).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
        let err = TextModel::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        let err = TextModel::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }

    #[test]
    fn context_overflow_is_an_error() {
        let (_dir, model) = tiny();
        let prompt = vec![65u32; model.context_length()];
        let err = model
            .generate(&prompt, &SamplingParams::default(), |_| true)
            .unwrap_err();
        assert!(matches!(err, EngineError::ContextLengthExceeded { .. }));
    }
}
