//! Models of real shapes (billions of parameters) with random weights,
//! written straight to disk a tensor at a time, each tensor filled in
//! parallel: an 8 B-parameter f16 folder or Q4_0 GGUF takes seconds on a
//! many-core machine and never holds more than one tensor in memory
//! (the GGUF writer holds the quantized tensors: 4.5 GB for 8 B in Q4_0).
//!
//! Unlike [`super::write_tiny_model`] the weights carry no bias towards
//! word-like tokens (that needs the f32 tensors in memory), so the text
//! such a model writes is arbitrary tokens. Loading, memory and speed are
//! those of the real shape, which is what these models are for.

use std::borrow::Cow;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::{TinyConfig, gguf_metadata, gguf_name, write_err, write_folder_meta};
use crate::{Arch, EngineError};

/// The file format and weight type of a random model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomFormat {
    /// A Hugging Face folder; weights in f32, f16 or bf16.
    Safetensors(DType),
    /// One GGUF file; matrices in F32, F16, Q4_0 or Q8_0 (norms in f32).
    Gguf(GgmlDType),
}

/// One tensor: its Hugging Face name, shape, and whether it is a norm
/// weight (ones) rather than random.
struct Spec {
    name: String,
    shape: Vec<usize>,
    ones: bool,
}

fn specs(shape: &TinyConfig) -> Vec<Spec> {
    let h = shape.hidden_size;
    let head_dim = h / shape.num_attention_heads.max(1);
    let kv = shape.num_key_value_heads * head_dim;
    let vocab = shape.vocab_size.max(super::VOCAB);
    let t = |name: String, shape: Vec<usize>, ones: bool| Spec { name, shape, ones };
    let mut out = vec![
        t("model.embed_tokens.weight".into(), vec![vocab, h], false),
        t("lm_head.weight".into(), vec![vocab, h], false),
        t("model.norm.weight".into(), vec![h], true),
    ];
    for l in 0..shape.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (name, rows, cols) in super::layer_matrices(shape) {
            out.push(t(format!("{p}.{name}"), vec![rows, cols], false));
        }
        if shape.arch == Arch::Qwen2 {
            for (name, n) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv)] {
                out.push(t(format!("{p}.self_attn.{name}.bias"), vec![n], false));
            }
        }
        out.push(t(format!("{p}.input_layernorm.weight"), vec![h], true));
        out.push(t(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            true,
        ));
    }
    out
}

/// How a tensor's values are laid out in the file.
#[derive(Clone, Copy)]
enum Kind {
    Dense(DType),
    Q4_0,
    Q8_0,
}

impl Kind {
    /// The layout `format` gives a tensor of `rank` dimensions: norms and
    /// biases stay f32 in a GGUF, as llama.cpp writes them.
    fn of(format: RandomFormat, rank: usize) -> Result<Self, EngineError> {
        let unsupported = |what: String| Err(EngineError::Unsupported(what));
        Ok(match format {
            RandomFormat::Safetensors(d @ (DType::F32 | DType::F16 | DType::BF16)) => {
                Kind::Dense(d)
            }
            RandomFormat::Safetensors(other) => {
                return unsupported(format!("random safetensors in {other:?}"));
            }
            RandomFormat::Gguf(_) if rank < 2 => Kind::Dense(DType::F32),
            RandomFormat::Gguf(GgmlDType::F32) => Kind::Dense(DType::F32),
            RandomFormat::Gguf(GgmlDType::F16) => Kind::Dense(DType::F16),
            RandomFormat::Gguf(GgmlDType::Q4_0) => Kind::Q4_0,
            RandomFormat::Gguf(GgmlDType::Q8_0) => Kind::Q8_0,
            RandomFormat::Gguf(other) => {
                return unsupported(format!("random GGUF matrices in {other:?}"));
            }
        })
    }

    /// Values per block and bytes per block.
    fn block(self) -> (usize, usize) {
        match self {
            Kind::Dense(d) => (1, d.size_in_bytes()),
            Kind::Q4_0 => (32, 18),
            Kind::Q8_0 => (32, 34),
        }
    }

    /// The GGUF type of this layout.
    fn ggml(self) -> GgmlDType {
        match self {
            Kind::Dense(DType::F16) => GgmlDType::F16,
            Kind::Dense(_) => GgmlDType::F32,
            Kind::Q4_0 => GgmlDType::Q4_0,
            Kind::Q8_0 => GgmlDType::Q8_0,
        }
    }

    fn fill(self, bytes: &mut [u8], rng: &mut impl Rng, scale: f32, ones: bool) {
        match self {
            Kind::Dense(d) => {
                let size = d.size_in_bytes();
                for v in bytes.chunks_exact_mut(size) {
                    let x = if ones {
                        1.0
                    } else {
                        rng.random_range(-scale..scale)
                    };
                    match d {
                        DType::F16 => v.copy_from_slice(&half::f16::from_f32(x).to_le_bytes()),
                        DType::BF16 => v.copy_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
                        _ => v.copy_from_slice(&x.to_le_bytes()),
                    }
                }
            }
            // A block: the f16 scale `d`, then 32 4-bit values q (16
            // bytes), each meaning (q - 8)·d: uniform in about ±scale.
            Kind::Q4_0 => {
                let d = half::f16::from_f32(scale / 8.0).to_le_bytes();
                for b in bytes.chunks_exact_mut(18) {
                    b[..2].copy_from_slice(&d);
                    rng.fill_bytes(&mut b[2..]);
                }
            }
            // A block: the f16 scale `d`, then 32 signed bytes q, each
            // meaning q·d, q in ±127.
            Kind::Q8_0 => {
                let d = half::f16::from_f32(scale / 127.0).to_le_bytes();
                for b in bytes.chunks_exact_mut(34) {
                    b[..2].copy_from_slice(&d);
                    for q in &mut b[2..] {
                        *q = rng.random_range(-127i8..=127) as u8;
                    }
                }
            }
        }
    }
}

/// A tensor's layout under `format`, and its size in bytes, if `format`
/// can hold it.
fn check(spec: &Spec, format: RandomFormat) -> Result<(Kind, usize), EngineError> {
    let kind = Kind::of(format, spec.shape.len())?;
    let (per_block, block_bytes) = kind.block();
    let cols = *spec.shape.last().unwrap_or(&1);
    if !cols.is_multiple_of(per_block) {
        return Err(EngineError::Unsupported(format!(
            "{}: rows of {cols} values do not split into blocks of {per_block}",
            spec.name
        )));
    }
    let values: usize = spec.shape.iter().product();
    Ok((kind, values / per_block * block_bytes))
}

/// The bytes of tensor `index` (uniform in ±1/√columns), generated in
/// parallel chunks, each from its own seeded generator, so the result
/// depends on the seed alone.
fn fill(
    seed: u64,
    index: usize,
    spec: &Spec,
    format: RandomFormat,
) -> Result<Vec<u8>, EngineError> {
    let (kind, len) = check(spec, format)?;
    let cols = *spec.shape.last().unwrap_or(&1);
    let scale = 1.0 / (cols as f32).sqrt();
    let mut out = vec![0u8; len];
    const CHUNK_BLOCKS: usize = 1 << 16;
    let ones = spec.ones;
    out.par_chunks_mut(CHUNK_BLOCKS * kind.block().1)
        .enumerate()
        .for_each(|(chunk, bytes)| {
            let stream = seed ^ ((index as u64) << 40) ^ chunk as u64;
            let mut rng = rand::rngs::StdRng::seed_from_u64(stream);
            kind.fill(bytes, &mut rng, scale, ones);
        });
    Ok(out)
}

/// A tensor the safetensors writer pulls its bytes from when it reaches
/// it, so only one tensor is in memory at a time.
struct Lazy<'a> {
    dtype: safetensors::Dtype,
    shape: &'a [usize],
    len: usize,
    make: Box<dyn Fn() -> Vec<u8> + 'a>,
}

impl safetensors::View for &Lazy<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned((self.make)())
    }

    fn data_len(&self) -> usize {
        self.len
    }
}

/// Writes a model of `shape` with random weights: a Hugging Face folder at
/// `path` (config, tokenizer padded to the shape's vocabulary, one
/// `model.safetensors`) or one GGUF file. `progress(done, total)` is called
/// with bytes of weights written.
pub fn write_random_model(
    path: &Path,
    seed: u64,
    shape: TinyConfig,
    format: RandomFormat,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(), EngineError> {
    let specs = specs(&shape);
    // Every tensor is checked here, before anything is written, so
    // generation inside the safetensors writer cannot fail.
    let total: u64 = specs
        .iter()
        .map(|s| Ok(check(s, format)?.1 as u64))
        .sum::<Result<u64, EngineError>>()?;
    let done = std::sync::atomic::AtomicU64::new(0);
    let advance = |n: usize| {
        let now = done.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed) + n as u64;
        progress(now, total);
    };
    match format {
        RandomFormat::Safetensors(dtype) => {
            let torch = super::torch_dtype(dtype)?;
            let st_dtype = match dtype {
                DType::F16 => safetensors::Dtype::F16,
                DType::BF16 => safetensors::Dtype::BF16,
                _ => safetensors::Dtype::F32,
            };
            write_folder_meta(path, &shape, torch)?;
            let lazies: Vec<(String, Lazy)> = specs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let len = s.shape.iter().product::<usize>() * dtype.size_in_bytes();
                    let advance = &advance;
                    let make = move || {
                        // Checked above (`total`); an empty tensor (a short
                        // file the writer refuses) rather than a panic.
                        let bytes = fill(seed, i, s, format).unwrap_or_default();
                        advance(bytes.len());
                        bytes
                    };
                    let lazy = Lazy {
                        dtype: st_dtype,
                        shape: &s.shape,
                        len,
                        make: Box::new(make),
                    };
                    (s.name.clone(), lazy)
                })
                .collect();
            let file = path.join("model.safetensors");
            let views = lazies.iter().map(|(n, l)| (n.as_str(), l));
            safetensors::serialize_to_file(views, None, &file).map_err(|e| write_err(&file, e))?;
            // The writer goes through a private temporary file (0600);
            // weights are readable like the folder's other files.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
                    .map_err(|e| write_err(&file, e))?;
            }
            Ok(())
        }
        RandomFormat::Gguf(_) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| write_err(parent, e))?;
            }
            let mut tensors = Vec::with_capacity(specs.len());
            for (i, s) in specs.iter().enumerate() {
                let bytes = fill(seed, i, s, format)?;
                advance(bytes.len());
                let ggml = Kind::of(format, s.shape.len())?.ggml();
                let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, ggml)?;
                tensors.push((gguf_name(&s.name), QTensor::new(storage, s.shape.clone())?));
            }
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            super::write_gguf_file(path, &gguf_metadata(&shape), &tensors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TextModel;

    fn small() -> TinyConfig {
        TinyConfig {
            vocab_size: 1_000,
            ..TinyConfig::default()
        }
    }

    /// Every format loads through the real loaders with the shape it was
    /// asked for, and generates; the same seed gives the same bytes.
    #[test]
    fn random_models_load_in_every_format_and_are_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let formats = [
            RandomFormat::Safetensors(DType::F16),
            RandomFormat::Safetensors(DType::BF16),
            RandomFormat::Safetensors(DType::F32),
            RandomFormat::Gguf(GgmlDType::Q4_0),
            RandomFormat::Gguf(GgmlDType::Q8_0),
            RandomFormat::Gguf(GgmlDType::F16),
        ];
        for (n, format) in formats.into_iter().enumerate() {
            let path = match format {
                RandomFormat::Safetensors(_) => dir.path().join(format!("m{n}")),
                RandomFormat::Gguf(_) => dir.path().join(format!("m{n}.gguf")),
            };
            let last = std::sync::atomic::AtomicU64::new(0);
            let progress = |done: u64, total: u64| {
                assert!(done <= total);
                last.store(done, std::sync::atomic::Ordering::Relaxed);
            };
            write_random_model(&path, 5, small(), format, &progress).unwrap();
            assert!(last.into_inner() > 0, "{format:?}: no progress");
            let model = TextModel::load(&path).unwrap();
            assert_eq!(model.spec().vocab_size, 1_000, "{format:?}");
            // The loaded spec counts the same matrices (norms aside).
            let norms = 2 * 2 * 64 + 64; // two per layer, one at the end
            assert_eq!(model.spec().parameters() + norms, small().parameters());
            assert_eq!(model.spec().num_layers, 2);
            let mut tokens = 0;
            let params = sharenet_proto::SamplingParams {
                max_tokens: 4,
                temperature: 0.0,
                ..Default::default()
            };
            model
                .generate(&[1, 2, 3], &params, |p| {
                    tokens += p.tokens;
                    true
                })
                .unwrap();
            assert!(tokens > 0, "{format:?}");
        }
        let again = dir.path().join("again.gguf");
        let format = RandomFormat::Gguf(GgmlDType::Q4_0);
        write_random_model(&again, 5, small(), format, &|_, _| {}).unwrap();
        assert_eq!(
            std::fs::read(&again).unwrap(),
            std::fs::read(dir.path().join("m3.gguf")).unwrap()
        );
    }

    #[test]
    fn the_8b_shape_counts_8b_parameters() {
        let p = TinyConfig::llama31_8b().parameters();
        assert!((8_000_000_000..8_100_000_000).contains(&p), "{p}");
        // Its head untied: 1.24 B with the embedding shared.
        let p = TinyConfig::llama32_1b().parameters();
        assert!((1_450_000_000..1_550_000_000).contains(&p), "{p}");
    }
}
