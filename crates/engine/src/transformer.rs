//! One forward pass for the llama family (Llama 2/3.x, Mistral, Qwen2),
//! written for serving: each sequence has its own KV cache, a prompt is
//! prefilled on its own, and the decode steps of many sequences run as one
//! batch (their projections and MLPs are single matrix products over the
//! batch; attention reads each sequence's own cache). Sequences join and
//! leave between steps, which is what continuous batching needs.
//!
//! Weights come either dense from safetensors or quantized from GGUF; both
//! end up as [`QMatMul`], so the forward pass is the same code.
//!
//! Two placements, chosen at load ([`Placement`]):
//! - **Host** (the CPU default): activations in f32, each sequence's KV
//!   cache in plain `Vec<f32>`s, and decode attention in a hand-vectorized
//!   loop over them — the fastest there.
//! - **Device** (the GPU default): dense weights stay in their stored
//!   dtype (f16/bf16 from safetensors; GGUF matrices stay quantized and
//!   candle multiplies them with its CUDA kernels), activations run in that
//!   dtype, and the KV cache is one pool on the device per model
//!   ([`KvPool`], paged in blocks of [`KV_BLOCK`] tokens as in vLLM), so
//!   prefill and decode attention never leave the GPU. A decode step writes
//!   the batch's new keys and values with one scatter per layer and reads
//!   every sequence's cache with one gather, then attends for the whole
//!   batch at once (padded to the longest, masked): a fixed number of
//!   kernels per layer whatever the batch size. Attention scores and the
//!   softmax are computed in f32 whatever the dtype.
//!
//! The device placement runs on the CPU too (tests compare it with the
//! host one), only slower.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::EngineError;
use crate::spec::{Llama3Scaling, ModelSpec};

/// Where the tensors come from.
pub(crate) enum WeightSource<'a> {
    /// Dense tensors, read as `dtype`.
    Safetensors {
        vb: VarBuilder<'a>,
        files: String,
        dtype: DType,
    },
    Gguf {
        content: &'a Content,
        file: &'a mut File,
        path: &'a Path,
        device: Device,
    },
}

impl WeightSource<'_> {
    fn err(&self, name: &str, e: impl std::fmt::Display) -> EngineError {
        let path = match self {
            Self::Safetensors { files, .. } => files.clone(),
            Self::Gguf { path, .. } => path.display().to_string(),
        };
        EngineError::Weights {
            path,
            reason: format!("{name}: {e}"),
        }
    }

    fn gguf_tensor(&mut self, name: &str) -> Result<QTensor, EngineError> {
        match self {
            Self::Gguf {
                content,
                file,
                device,
                ..
            } => {
                let t = content.tensor(*file, name, device);
                t.map_err(|e| self.err(name, e))
            }
            Self::Safetensors { .. } => Err(self.err(name, "not a GGUF source")),
        }
    }

    fn has(&self, hf: &str, gguf: &str) -> bool {
        match self {
            Self::Safetensors { vb, .. } => vb.contains_tensor(hf),
            Self::Gguf { content, .. } => content.tensor_infos.contains_key(gguf),
        }
    }

    fn check_shape(&self, name: &str, got: &[usize], want: &[usize]) -> Result<(), EngineError> {
        if got != want {
            return Err(self.err(name, format!("shape {got:?}, expected {want:?}")));
        }
        Ok(())
    }

    /// A weight matrix of shape (out, in).
    fn matrix(
        &mut self,
        hf: &str,
        gguf: &str,
        shape: (usize, usize),
    ) -> Result<Matrix, EngineError> {
        match self {
            Self::Safetensors { vb, dtype, .. } => {
                let t = vb.get_unchecked_dtype(hf, *dtype);
                let t = t.map_err(|e| self.err(hf, e))?;
                self.check_shape(hf, t.dims(), &[shape.0, shape.1])?;
                Ok(Matrix::plain(QMatMul::Tensor(t)))
            }
            Self::Gguf { .. } => {
                let q = self.gguf_tensor(gguf)?;
                self.check_shape(gguf, q.shape().dims(), &[shape.0, shape.1])?;
                fast_matmul(q).map_err(|e| self.err(gguf, e))
            }
        }
    }

    /// A dense tensor of the given shape (in the activations' dtype).
    fn dense(&mut self, hf: &str, gguf: &str, shape: &[usize]) -> Result<Tensor, EngineError> {
        match self {
            Self::Safetensors { vb, dtype, .. } => {
                let t = vb.get_unchecked_dtype(hf, *dtype);
                let t = t.map_err(|e| self.err(hf, e))?;
                self.check_shape(hf, t.dims(), shape)?;
                Ok(t)
            }
            Self::Gguf { .. } => {
                let q = self.gguf_tensor(gguf)?;
                self.check_shape(gguf, q.shape().dims(), shape)?;
                let device = q.device();
                q.dequantize(&device).map_err(|e| self.err(gguf, e))
            }
        }
    }
}

/// A weight matrix, and how to multiply by it.
pub(crate) struct Matrix {
    q: QMatMul,
    /// Extra zero columns the input gets (0: none).
    pad: usize,
    /// candle multiplies it with its repacked AVX-512 VNNI kernels, which
    /// are fast for many rows too (no dense path for prefill).
    vnni: bool,
}

impl Matrix {
    fn plain(q: QMatMul) -> Self {
        Self {
            q,
            pad: 0,
            vnni: false,
        }
    }
}

/// candle's AVX-512 VNNI kernels for Q8_0 (weights repacked in tiles)
/// take rows whose length is a multiple of this; other rows fall back to
/// its AVX2 dot product, several times slower.
const VNNI_K: usize = 256;

fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A GGUF matrix in the form this device multiplies fastest. On the CPU:
/// - F16 and BF16 weights become F32 once at load (candle would convert
///   the activations to f16 and back on every product);
/// - types candle has no SIMD dot product for (Q4_1, Q5_0, Q5_1) are
///   requantized to Q8_0 once: 8 bits per weight for their 4 or 5, so the
///   values stay within Q8_0's rounding of the file's own;
/// - on a CPU with AVX-512 VNNI, where candle multiplies Q8_0 with
///   repacked VNNI kernels, Q4_0 is requantized to Q8_0 too, and a Q8_0
///   matrix whose rows are not a multiple of 256 long (SmolLM2's 576) is
///   padded with zero columns (and its inputs with zeros) so those kernels
///   take it instead of the AVX2 dot product.
///
/// Every other type is used as stored. The advert still names what the
/// file holds.
fn fast_matmul(q: QTensor) -> candle_core::Result<Matrix> {
    use candle_core::quantized::GgmlDType as G;
    let device = q.device();
    if !device.is_cpu() {
        return Ok(Matrix::plain(QMatMul::from_qtensor(q)?));
    }
    let vnni = has_vnni();
    let q = match q.dtype() {
        G::F16 | G::BF16 | G::F32 => {
            return Ok(Matrix::plain(QMatMul::Tensor(q.dequantize(&device)?)));
        }
        G::Q4_1 | G::Q5_0 | G::Q5_1 => QTensor::quantize(&q.dequantize(&device)?, G::Q8_0)?,
        G::Q4_0 if vnni => QTensor::quantize(&q.dequantize(&device)?, G::Q8_0)?,
        _ => q,
    };
    let dims = q.shape().dims().to_vec();
    let [n, k] = dims[..] else {
        return Ok(Matrix::plain(QMatMul::from_qtensor(q)?));
    };
    let tiled = vnni && n % 16 == 0;
    if tiled && q.dtype() == G::Q8_0 && k % VNNI_K != 0 {
        let pad = VNNI_K - k % VNNI_K;
        let dense = q.dequantize(&device)?.pad_with_zeros(1, 0, pad)?;
        return Ok(Matrix {
            q: QMatMul::from_qtensor(QTensor::quantize(&dense, G::Q8_0)?)?,
            pad,
            vnni: true,
        });
    }
    let vnni = tiled && k % VNNI_K == 0 && matches!(q.dtype(), G::Q8_0 | G::Q4K | G::Q6K);
    Ok(Matrix {
        q: QMatMul::from_qtensor(q)?,
        pad: 0,
        vnni,
    })
}

/// Rows at and above which a quantized product runs as one dense matrix
/// product (weights dequantized for the call; candle's quantized path
/// repeats a dot product per row): prefill, and large decode batches.
/// Not for matrices candle multiplies with its VNNI kernels, which are
/// faster than that.
const DENSE_ROWS: usize = 16;

/// `a` × `b` where `b` may be a view of a device KV cache (its rows
/// strided by the cache's capacity): candle's kernels take such strides
/// (cuBLAS's leading dimension), so no copy is made; a layout a kernel
/// refuses is copied to a contiguous one and multiplied again (the
/// backends name that refusal differently: the CPU's "unexpected
/// striding", CUDA's "non-contiguous"; a real failure fails again).
fn matmul_view(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    a.matmul(b).or_else(|_| a.matmul(&b.contiguous()?))
}

/// `x` [rows, in] times `m`ᵀ, dense when there are many rows on the CPU
/// (on a GPU candle's quantized kernels take any number of rows).
fn product(m: &Matrix, x: &Tensor) -> candle_core::Result<Tensor> {
    let padded;
    let x = if m.pad > 0 {
        padded = x.pad_with_zeros(1, 0, m.pad)?;
        &padded
    } else {
        x
    };
    match &m.q {
        QMatMul::QTensor(q)
            if !m.vnni
                && x.device().is_cpu()
                && x.dims().first().is_some_and(|&r| r >= DENSE_ROWS) =>
        {
            let w = q.dequantize(x.device())?;
            x.matmul(&w.t()?)
        }
        q => q.forward(x),
    }
}

struct Layer {
    attn_norm: Tensor,
    q: Matrix,
    k: Matrix,
    v: Matrix,
    o: Matrix,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    mlp_norm: Tensor,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// Where a model's activations and KV caches live (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// f32 activations, KV caches in host memory: the CPU default.
    Host,
    /// Activations in the weights' dtype and KV caches as tensors on the
    /// model's device: the GPU default.
    Device,
}

/// A loaded model's forward pass. Immutable and shareable; all per-request
/// state is in [`SeqCache`].
pub(crate) struct Transformer {
    spec: ModelSpec,
    /// The device KV cache: present exactly in the device placement.
    pool: Option<KvPool>,
    /// The activations' (and a device KV cache's) dtype.
    dtype: DType,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Matrix,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

/// One layer's keys and values for one sequence, token-major:
/// `[position][kv_head][head_dim]`, so appending a token is one copy.
#[derive(Default)]
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// One sequence's KV cache and position.
pub(crate) struct SeqCache {
    kv: Kv,
    pos: usize,
}

/// A sequence's keys and values.
enum Kv {
    /// Per layer, in host memory.
    Host(Vec<LayerKv>),
    /// Its blocks in the model's device pool.
    Device(BlockTable),
}

/// Pool rows a prefill writes (`[n, kv_heads × head_dim]`, each row's
/// index repeated across it, as a scatter wants) and reads (`[total]`).
struct PrefillRows {
    write: Tensor,
    read: Tensor,
}

/// What the layers of one device decode step share.
struct DecodeBatch {
    /// `[b, kv_heads × head_dim]`: each sequence's row for its new token.
    write: Tensor,
    /// `[b × longest]`: every sequence's rows, padded.
    read: Tensor,
    longest: usize,
    /// `[b, 1, 1, longest]`, 0 or -inf.
    mask: Tensor,
}

/// Tokens per block of a device KV pool.
pub const KV_BLOCK: usize = 16;

/// The device KV cache of a model: per layer one key and one value tensor
/// of `[rows, kv_heads × head_dim]`, rows handed to sequences in blocks of
/// [`KV_BLOCK`]. Sized once at load (`LoadOptions::kv_cache_bytes`); the
/// scheduler's budget, counted in whole blocks, never asks for more.
struct KvPool {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    free: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    blocks: usize,
}

/// A sequence's blocks in the pool, in order; given back when it ends.
struct BlockTable {
    blocks: Vec<u32>,
    free: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    pool_blocks: usize,
}

impl BlockTable {
    /// The pool row of the sequence's token `t` (reserved).
    fn row(&self, t: usize) -> u32 {
        self.blocks[t / KV_BLOCK] * KV_BLOCK as u32 + (t % KV_BLOCK) as u32
    }

    /// Makes sure the first `tokens` tokens have rows.
    fn reserve(&mut self, tokens: usize) -> candle_core::Result<()> {
        let need = tokens.div_ceil(KV_BLOCK);
        if need <= self.blocks.len() {
            return Ok(());
        }
        let more = need - self.blocks.len();
        let mut free = self
            .free
            .lock()
            .map_err(|_| candle_core::Error::Msg("the KV pool's lock is poisoned".into()))?;
        if free.len() < more {
            candle_core::bail!(
                "the device KV cache is full: {more} more blocks of {KV_BLOCK} tokens wanted, \
                 {} of {} free (raise kv_cache_mb)",
                free.len(),
                self.pool_blocks
            );
        }
        let at = free.len() - more;
        self.blocks.extend(free.drain(at..));
        Ok(())
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        if let Ok(mut free) = self.free.lock() {
            free.append(&mut self.blocks);
        }
    }
}

/// Dot product in eight independent lanes, so it vectorizes (a plain
/// iterator sum is sequential in f32).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn rope_tables(spec: &ModelSpec, device: &Device) -> Result<(Tensor, Tensor), candle_core::Error> {
    let half = spec.head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0 / spec.rope_theta.powf((2 * i) as f64 / spec.head_dim as f64);
            match spec.rope_scaling {
                Some(s) => llama3_scale(f, s),
                None => f,
            }
        })
        .map(|f| f as f32)
        .collect();
    let n = spec.max_position_embeddings;
    let inv = Tensor::from_vec(inv_freq, (1, half), device)?;
    let pos = Tensor::arange(0u32, n as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((n, 1))?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

fn llama3_scale(freq: f64, s: Llama3Scaling) -> f64 {
    let low_wavelen = s.original_max_position_embeddings as f64 / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings as f64 / s.high_freq_factor;
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    if wavelen < high_wavelen {
        freq
    } else if wavelen > low_wavelen {
        freq / s.factor
    } else {
        let smooth = (s.original_max_position_embeddings as f64 / wavelen - s.low_freq_factor)
            / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * freq / s.factor + smooth * freq
    }
}

impl Transformer {
    /// Loads the weights; in the device placement also allocates the KV
    /// pool, `kv_cache_bytes` of it on the device.
    pub(crate) fn load(
        spec: ModelSpec,
        mut w: WeightSource<'_>,
        placement: Placement,
        kv_cache_bytes: usize,
    ) -> Result<Self, EngineError> {
        let dtype = match &w {
            WeightSource::Safetensors { dtype, .. } => *dtype,
            WeightSource::Gguf { .. } => DType::F32,
        };
        if placement == Placement::Host && dtype != DType::F32 {
            return Err(EngineError::Unsupported(format!(
                "host placement computes in f32, not {dtype:?}"
            )));
        }
        let s = &spec;
        let (h, hd) = (s.hidden_size, s.head_dim);
        let (qd, kvd) = (s.num_heads * hd, s.num_kv_heads * hd);
        let embed = w.dense(
            "model.embed_tokens.weight",
            "token_embd.weight",
            &[s.vocab_size, h],
        )?;
        let mut layers = Vec::with_capacity(s.num_layers);
        for l in 0..s.num_layers {
            let hf = |n: &str| format!("model.layers.{l}.{n}");
            let gg = |n: &str| format!("blk.{l}.{n}");
            let mut bias = |hf_name: &str, gg_name: &str, n: usize| {
                if s.qkv_bias {
                    w.dense(&hf(hf_name), &gg(gg_name), &[n]).map(Some)
                } else {
                    Ok(None)
                }
            };
            let q_bias = bias("self_attn.q_proj.bias", "attn_q.bias", qd)?;
            let k_bias = bias("self_attn.k_proj.bias", "attn_k.bias", kvd)?;
            let v_bias = bias("self_attn.v_proj.bias", "attn_v.bias", kvd)?;
            layers.push(Layer {
                attn_norm: w.dense(&hf("input_layernorm.weight"), &gg("attn_norm.weight"), &[h])?,
                q: w.matrix(
                    &hf("self_attn.q_proj.weight"),
                    &gg("attn_q.weight"),
                    (qd, h),
                )?,
                k: w.matrix(
                    &hf("self_attn.k_proj.weight"),
                    &gg("attn_k.weight"),
                    (kvd, h),
                )?,
                v: w.matrix(
                    &hf("self_attn.v_proj.weight"),
                    &gg("attn_v.weight"),
                    (kvd, h),
                )?,
                o: w.matrix(
                    &hf("self_attn.o_proj.weight"),
                    &gg("attn_output.weight"),
                    (h, qd),
                )?,
                q_bias,
                k_bias,
                v_bias,
                mlp_norm: w.dense(
                    &hf("post_attention_layernorm.weight"),
                    &gg("ffn_norm.weight"),
                    &[h],
                )?,
                gate: w.matrix(
                    &hf("mlp.gate_proj.weight"),
                    &gg("ffn_gate.weight"),
                    (s.intermediate_size, h),
                )?,
                up: w.matrix(
                    &hf("mlp.up_proj.weight"),
                    &gg("ffn_up.weight"),
                    (s.intermediate_size, h),
                )?,
                down: w.matrix(
                    &hf("mlp.down_proj.weight"),
                    &gg("ffn_down.weight"),
                    (h, s.intermediate_size),
                )?,
            });
        }
        let norm = w.dense("model.norm.weight", "output_norm.weight", &[h])?;
        let head = if !s.tie_word_embeddings && w.has("lm_head.weight", "output.weight") {
            w.matrix("lm_head.weight", "output.weight", (s.vocab_size, h))?
        } else {
            match &w {
                WeightSource::Safetensors { .. } => Matrix::plain(QMatMul::Tensor(embed.clone())),
                WeightSource::Gguf { .. } => {
                    let q = w.gguf_tensor("token_embd.weight")?;
                    fast_matmul(q).map_err(|e| w.err("token_embd.weight", e))?
                }
            }
        };
        let device = embed.device().clone();
        let (cos, sin) = rope_tables(s, &device)?;
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        let pool = match placement {
            Placement::Host => None,
            Placement::Device => {
                let kvd = s.num_kv_heads * s.head_dim;
                let per_block = 2 * s.num_layers * kvd * dtype.size_in_bytes() * KV_BLOCK;
                // Rounded up: never less than the budget a scheduler counts.
                let blocks = kv_cache_bytes.div_ceil(per_block.max(1)).max(1);
                let rows = blocks * KV_BLOCK;
                let alloc = || Tensor::zeros((rows, kvd), dtype, &device);
                let k = (0..s.num_layers)
                    .map(|_| alloc())
                    .collect::<Result<Vec<_>, _>>()?;
                let v = (0..s.num_layers)
                    .map(|_| alloc())
                    .collect::<Result<Vec<_>, _>>()?;
                let free = (0..blocks as u32).rev().collect();
                Some(KvPool {
                    k,
                    v,
                    free: std::sync::Arc::new(std::sync::Mutex::new(free)),
                    blocks,
                })
            }
        };
        Ok(Self {
            device,
            pool,
            dtype,
            spec,
            embed,
            layers,
            norm,
            head,
            cos,
            sin,
        })
    }

    pub(crate) fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub(crate) fn placement(&self) -> Placement {
        match self.pool {
            None => Placement::Host,
            Some(_) => Placement::Device,
        }
    }

    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes of KV cache one token takes, where the cache lives.
    pub(crate) fn kv_bytes_per_token(&self) -> usize {
        let s = &self.spec;
        let elem = match self.placement() {
            Placement::Host => 4,
            Placement::Device => self.dtype.size_in_bytes(),
        };
        2 * s.num_layers * s.num_kv_heads * s.head_dim * elem
    }

    /// Bytes of KV cache `tokens` tokens hold, as allocated: whole blocks
    /// in the device pool.
    pub(crate) fn kv_bytes_for_tokens(&self, tokens: usize) -> usize {
        let tokens = match self.placement() {
            Placement::Host => tokens,
            Placement::Device => tokens.div_ceil(KV_BLOCK) * KV_BLOCK,
        };
        tokens * self.kv_bytes_per_token()
    }

    /// Blocks free in the device pool, and its size (none on the host).
    pub(crate) fn kv_pool_blocks(&self) -> Option<(usize, usize)> {
        let pool = self.pool.as_ref()?;
        let free = pool.free.lock().map(|f| f.len()).unwrap_or(0);
        Some((free, pool.blocks))
    }

    /// A fresh cache with room for `capacity` tokens (it grows if needed).
    /// A device cache takes pool blocks as its tokens arrive.
    pub(crate) fn new_cache(&self, capacity: usize) -> SeqCache {
        let kv = match &self.pool {
            None => {
                let per_layer = capacity.max(1) * self.spec.num_kv_heads * self.spec.head_dim;
                Kv::Host(
                    (0..self.spec.num_layers)
                        .map(|_| LayerKv {
                            k: Vec::with_capacity(per_layer),
                            v: Vec::with_capacity(per_layer),
                        })
                        .collect(),
                )
            }
            Some(pool) => Kv::Device(BlockTable {
                blocks: Vec::with_capacity(capacity.div_ceil(KV_BLOCK)),
                free: pool.free.clone(),
                pool_blocks: pool.blocks,
            }),
        };
        SeqCache { kv, pos: 0 }
    }

    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        if self.spec.rope_interleaved {
            candle_nn::rotary_emb::rope_i(x, cos, sin)
        } else {
            candle_nn::rotary_emb::rope(x, cos, sin)
        }
    }

    fn rms(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, w, self.spec.rms_norm_eps as f32)
    }

    fn mlp(&self, layer: &Layer, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.rms(x, &layer.mlp_norm)?;
        let gate = candle_nn::ops::silu(&product(&layer.gate, &h)?)?;
        let up = product(&layer.up, &h)?;
        product(&layer.down, &(gate * up)?)
    }

    fn qkv(&self, layer: &Layer, h: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let proj = |m: &Matrix, b: &Option<Tensor>| -> candle_core::Result<Tensor> {
            let y = product(m, h)?;
            match b {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            }
        };
        Ok((
            proj(&layer.q, &layer.q_bias)?,
            proj(&layer.k, &layer.k_bias)?,
            proj(&layer.v, &layer.v_bias)?,
        ))
    }

    /// The additive attention mask for query positions `pos0..pos0+n`
    /// against `total` cached positions ([rep*n, total], f32), or none
    /// where every position is visible (one query, no window in reach).
    fn mask(&self, pos0: usize, n: usize, total: usize) -> candle_core::Result<Option<Tensor>> {
        let s = &self.spec;
        let windowed = s.sliding_window.is_some_and(|w| total > w);
        if n == 1 && !windowed {
            return Ok(None);
        }
        let rep = s.num_heads / s.num_kv_heads;
        let window = s.sliding_window.unwrap_or(usize::MAX);
        let mut mask = Vec::with_capacity(rep * n * total);
        for row in 0..rep * n {
            let p = pos0 + row % n;
            for j in 0..total {
                let visible = j <= p && p - j < window;
                mask.push(if visible { 0f32 } else { f32::NEG_INFINITY });
            }
        }
        Tensor::from_vec(mask, (rep * n, total), &self.device).map(Some)
    }

    /// softmax(q·kᵀ/√hd + mask)·v for `q` [b, kv_heads, rows, hd] against
    /// `k`, `v` [b, kv_heads, total, hd]: scores and softmax in f32, the
    /// rest in the activations' dtype. `mask` broadcasts over the scores.
    fn scores_times_values(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let scale = 1.0 / (self.spec.head_dim as f64).sqrt();
        let mut att = (matmul_view(q, &k.t()?)?.to_dtype(DType::F32)? * scale)?;
        if let Some(mask) = mask {
            att = att.broadcast_add(mask)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?.to_dtype(v.dtype())?;
        matmul_view(&att, v)
    }

    /// Attention of `q` ([1, heads, n, hd]) against a cache (`k`, `v`:
    /// [1, kv_heads, total, hd]) under `mask` (from [`Self::mask`]);
    /// returns [n, heads*hd]. Scores and softmax in f32.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        n: usize,
    ) -> candle_core::Result<Tensor> {
        let s = &self.spec;
        let rep = s.num_heads / s.num_kv_heads;
        let q = q.reshape((1, s.num_kv_heads, rep * n, s.head_dim))?;
        let out = self.scores_times_values(&q, k, v, mask)?; // [1, kvh, rep*n, hd]
        out.reshape((1, s.num_heads, n, s.head_dim))?
            .transpose(1, 2)?
            .reshape((n, s.num_heads * s.head_dim))
    }

    /// Decode attention for one sequence and one layer, on plain slices:
    /// `q` is [heads][hd] for the newest position (already in the cache),
    /// `out` receives [heads][hd]. Grouped-query heads share their KV head;
    /// a sliding window limits how far back each query looks.
    fn attend_one(&self, q: &[f32], kv: &LayerKv, out: &mut [f32], scores: &mut Vec<f32>) {
        let s = &self.spec;
        let (hd, kvh) = (s.head_dim, s.num_kv_heads);
        let rep = s.num_heads / kvh;
        let total = kv.k.len() / (kvh * hd);
        let first = match s.sliding_window {
            Some(w) if total > w => total - w,
            _ => 0,
        };
        let scale = 1.0 / (hd as f32).sqrt();
        for h in 0..s.num_heads {
            let g = h / rep;
            let qh = &q[h * hd..(h + 1) * hd];
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for t in first..total {
                let kt = &kv.k[(t * kvh + g) * hd..(t * kvh + g + 1) * hd];
                let dot = dot(qh, kt) * scale;
                max = max.max(dot);
                scores.push(dot);
            }
            let mut sum = 0f32;
            for x in scores.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let oh = &mut out[h * hd..(h + 1) * hd];
            oh.fill(0.0);
            for (j, p) in scores.iter().enumerate() {
                let t = first + j;
                let w = p / sum;
                let vt = &kv.v[(t * kvh + g) * hd..(t * kvh + g + 1) * hd];
                for (o, x) in oh.iter_mut().zip(vt) {
                    *o += w * x;
                }
            }
        }
    }

    fn check_room(&self, cache: &SeqCache, n: usize) -> candle_core::Result<()> {
        if cache.pos + n > self.spec.max_position_embeddings {
            candle_core::bail!(
                "position {} is beyond the context window of {}",
                cache.pos + n,
                self.spec.max_position_embeddings
            );
        }
        Ok(())
    }

    /// Reserves pool rows for tokens `pos0..pos0+n` of a sequence; returns
    /// the rows to write them to and the rows of all its tokens so far.
    fn pool_rows(
        &self,
        table: &mut BlockTable,
        pos0: usize,
        n: usize,
    ) -> candle_core::Result<PrefillRows> {
        let total = pos0 + n;
        table.reserve(total)?;
        let kvd = self.spec.num_kv_heads * self.spec.head_dim;
        let write: Vec<u32> = (pos0..total)
            .flat_map(|t| std::iter::repeat_n(table.row(t), kvd))
            .collect();
        let read: Vec<u32> = (0..total).map(|t| table.row(t)).collect();
        Ok(PrefillRows {
            write: Tensor::from_vec(write, (n, kvd), &self.device)?,
            read: Tensor::from_vec(read, total, &self.device)?,
        })
    }

    /// Reserves each sequence's row for its new token; returns where the
    /// new keys and values go, the rows to gather (padded to the longest
    /// sequence with a row of its own, masked) and the mask (padding and
    /// any sliding window).
    fn decode_batch(&self, caches: &mut [&mut SeqCache]) -> candle_core::Result<DecodeBatch> {
        let b = caches.len();
        let kvd = self.spec.num_kv_heads * self.spec.head_dim;
        let longest = caches.iter().map(|c| c.pos + 1).max().unwrap_or(1);
        let window = self.spec.sliding_window.unwrap_or(usize::MAX);
        let mut write = Vec::with_capacity(b * kvd);
        let mut read = Vec::with_capacity(b * longest);
        let mut mask = Vec::with_capacity(b * longest);
        for c in caches.iter_mut() {
            let pos = c.pos;
            let Kv::Device(table) = &mut c.kv else {
                candle_core::bail!("a host cache on a device model");
            };
            table.reserve(pos + 1)?;
            write.extend(std::iter::repeat_n(table.row(pos), kvd));
            for j in 0..longest {
                let cached = j <= pos;
                read.push(table.row(if cached { j } else { 0 }));
                let visible = cached && pos - j < window;
                mask.push(if visible { 0f32 } else { f32::NEG_INFINITY });
            }
        }
        Ok(DecodeBatch {
            write: Tensor::from_vec(write, (b, kvd), &self.device)?,
            read: Tensor::from_vec(read, b * longest, &self.device)?,
            longest,
            mask: Tensor::from_vec(mask, (b, 1, 1, longest), &self.device)?,
        })
    }

    /// Runs a prompt (or its remainder) through the model; returns the
    /// logits after its last token ([vocab]).
    pub(crate) fn prefill(
        &self,
        tokens: &[u32],
        cache: &mut SeqCache,
    ) -> candle_core::Result<Tensor> {
        let s = &self.spec;
        let n = tokens.len();
        if n == 0 {
            candle_core::bail!("prefill of an empty prompt");
        }
        self.check_room(cache, n)?;
        let pos0 = cache.pos;
        let total = pos0 + n;
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?; // [n, h]
        let cos = self.cos.narrow(0, pos0, n)?;
        let sin = self.sin.narrow(0, pos0, n)?;
        // The same for every layer.
        let mask = self.mask(pos0, n, total)?;
        let rows = match &mut cache.kv {
            Kv::Device(table) => Some(self.pool_rows(table, pos0, n)?),
            Kv::Host(_) => None,
        };
        let kvd = s.num_kv_heads * s.head_dim;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = self.rms(&x, &layer.attn_norm)?;
            let (q, k, v) = self.qkv(layer, &h)?;
            let heads = |t: Tensor, nh: usize| -> candle_core::Result<Tensor> {
                t.reshape((1, n, nh, s.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = self.rope(&heads(q, s.num_heads)?, &cos, &sin)?;
            let k = self.rope(&heads(k, s.num_kv_heads)?, &cos, &sin)?;
            let (k, v) = match &mut cache.kv {
                Kv::Host(layers) => {
                    // Token-major copies into the cache, then the whole
                    // cache back as [1, kv_heads, total, head_dim].
                    let kv = &mut layers[l];
                    kv.k.extend_from_slice(&k.transpose(1, 2)?.flatten_all()?.to_vec1::<f32>()?);
                    kv.v.extend_from_slice(&v.flatten_all()?.to_vec1::<f32>()?);
                    let from_cache = |data: &[f32]| -> candle_core::Result<Tensor> {
                        Tensor::from_slice(
                            data,
                            (1, total, s.num_kv_heads, s.head_dim),
                            &self.device,
                        )?
                        .transpose(1, 2)?
                        .contiguous()
                    };
                    (from_cache(&kv.k)?, from_cache(&kv.v)?)
                }
                Kv::Device(_) => {
                    let (Some(pool), Some(rows)) = (&self.pool, &rows) else {
                        candle_core::bail!("a device cache on a host model");
                    };
                    // Token-major rows in, the sequence's rows out.
                    let k_rows = k.transpose(1, 2)?.reshape((n, kvd))?;
                    pool.k[l].scatter_set(&rows.write, &k_rows, 0)?;
                    pool.v[l].scatter_set(&rows.write, &v.contiguous()?, 0)?;
                    let gather = |t: &Tensor| -> candle_core::Result<Tensor> {
                        t.index_select(&rows.read, 0)?
                            .reshape((1, total, s.num_kv_heads, s.head_dim))?
                            .transpose(1, 2)
                    };
                    (gather(&pool.k[l])?, gather(&pool.v[l])?)
                }
            };
            let out = self.attend(&q, &k, &v, mask.as_ref(), n)?;
            x = (x + product(&layer.o, &out)?)?;
            x = (&x + self.mlp(layer, &x)?)?;
        }
        cache.pos += n;
        let last = x.narrow(0, n - 1, 1)?;
        let logits = product(&self.head, &self.rms(&last, &self.norm)?)?;
        logits.squeeze(0)
    }

    /// One decode step for a batch of sequences: `tokens[i]` is the newest
    /// token of the sequence owning `caches[i]`. Returns logits [batch, vocab].
    ///
    /// The projections and MLPs run once for the whole batch. Attention on
    /// the host runs per sequence in a vectorized loop over its cache; on a
    /// device it runs for the whole batch at once, each cache gathered from
    /// the pool and padded to the longest.
    pub(crate) fn decode(
        &self,
        tokens: &[u32],
        caches: &mut [&mut SeqCache],
    ) -> candle_core::Result<Tensor> {
        let s = &self.spec;
        let b = tokens.len();
        if b == 0 || b != caches.len() {
            candle_core::bail!("decode batch of {b} tokens for {} caches", caches.len());
        }
        for c in caches.iter() {
            self.check_room(c, 1)?;
            let matches = matches!(
                (&c.kv, &self.pool),
                (Kv::Host(_), None) | (Kv::Device(_), Some(_))
            );
            if !matches {
                candle_core::bail!("a cache made for another placement");
            }
        }
        let positions: Vec<u32> = caches.iter().map(|c| c.pos as u32).collect();
        let pos = Tensor::new(positions.as_slice(), &self.device)?;
        let half = s.head_dim / 2;
        let cos = self.cos.index_select(&pos, 0)?.reshape((b, 1, half))?;
        let sin = self.sin.index_select(&pos, 0)?.reshape((b, 1, half))?;
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?; // [b, h]
        let (qd, kvd) = (s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim);
        // What every layer of a device step shares (rows, gather, mask).
        let device = match &self.pool {
            None => None,
            Some(pool) => Some((pool, self.decode_batch(caches)?)),
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let h = self.rms(&x, &layer.attn_norm)?;
            let (q, k, v) = self.qkv(layer, &h)?;
            // [b, heads*hd] is already [b, heads, 1, hd] in memory.
            let q = self.rope(&q.reshape((b, s.num_heads, 1, s.head_dim))?, &cos, &sin)?;
            let k = self.rope(&k.reshape((b, s.num_kv_heads, 1, s.head_dim))?, &cos, &sin)?;
            let out = match &device {
                None => {
                    let q = q.flatten_all()?.to_vec1::<f32>()?;
                    let k = k.flatten_all()?.to_vec1::<f32>()?;
                    let v = v.flatten_all()?.to_vec1::<f32>()?;
                    let mut out = vec![0f32; b * qd];
                    let mut scores = Vec::new();
                    for (i, cache) in caches.iter_mut().enumerate() {
                        let Kv::Host(layers) = &mut cache.kv else {
                            candle_core::bail!("a device cache on the host");
                        };
                        let kv = &mut layers[l];
                        kv.k.extend_from_slice(&k[i * kvd..(i + 1) * kvd]);
                        kv.v.extend_from_slice(&v[i * kvd..(i + 1) * kvd]);
                        self.attend_one(
                            &q[i * qd..(i + 1) * qd],
                            kv,
                            &mut out[i * qd..(i + 1) * qd],
                            &mut scores,
                        );
                    }
                    Tensor::from_vec(out, (b, qd), &self.device)?
                }
                Some((pool, batch)) => {
                    // One scatter writes the batch's new keys and values,
                    // one gather reads every sequence's cache padded to the
                    // longest ([b, kv_heads, longest, hd]); the mask hides
                    // the padding.
                    pool.k[l].scatter_set(&batch.write, &k.reshape((b, kvd))?, 0)?;
                    pool.v[l].scatter_set(&batch.write, &v.contiguous()?, 0)?;
                    let gather = |t: &Tensor| -> candle_core::Result<Tensor> {
                        t.index_select(&batch.read, 0)?
                            .reshape((b, batch.longest, s.num_kv_heads, s.head_dim))?
                            .transpose(1, 2)
                    };
                    let (kb, vb) = (gather(&pool.k[l])?, gather(&pool.v[l])?);
                    let rep = s.num_heads / s.num_kv_heads;
                    let q = q.reshape((b, s.num_kv_heads, rep, s.head_dim))?;
                    self.scores_times_values(&q, &kb, &vb, Some(&batch.mask))?
                        .reshape((b, qd))?
                }
            };
            x = (x + product(&layer.o, &out)?)?;
            x = (&x + self.mlp(layer, &x)?)?;
        }
        for c in caches.iter_mut() {
            c.pos += 1;
        }
        product(&self.head, &self.rms(&x, &self.norm)?)
    }

    /// Logits as f32 rows.
    pub(crate) fn rows(logits: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
        match logits.rank() {
            1 => Ok(vec![logits.to_dtype(DType::F32)?.to_vec1()?]),
            _ => logits.to_dtype(DType::F32)?.to_vec2(),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::{DENSE_ROWS, fast_matmul, product};

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// Q4_1, Q5_0 and Q5_1 are multiplied as Q8_0 and F16 as F32: the
    /// products stay those of the file's own weights (within Q8_0's
    /// rounding of them and the activations' quantization).
    #[test]
    fn converted_weights_multiply_like_the_files_own() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (96, 256), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 256), &dev).unwrap();
        for dtype in [
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::F16,
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            // The file's weights exactly, multiplied densely.
            let exact = x.matmul(&q.dequantize(&dev).unwrap().t().unwrap()).unwrap();
            let m = fast_matmul(q).unwrap();
            let got = product(&m, &x).unwrap();
            let d = max_rel_diff(&exact, &got);
            assert!(d < 0.02, "{dtype:?}: {d}");
        }
    }

    /// Rows whose length is not a multiple of 256 (SmolLM2's 576) are
    /// padded with zeros for the VNNI kernels; the products are unchanged.
    #[test]
    fn padded_rows_multiply_like_unpadded_ones() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (48, 96), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let exact_w = q.dequantize(&dev).unwrap();
        let m = fast_matmul(q).unwrap();
        // Where the VNNI kernels exist, the padded path is the one taken.
        assert_eq!(m.pad > 0, super::has_vnni(), "pad {}", m.pad);
        for rows in [1, 3, DENSE_ROWS + 2] {
            let x = Tensor::randn(0f32, 1.0, (rows, 96), &dev).unwrap();
            let exact = x.matmul(&exact_w.t().unwrap()).unwrap();
            let got = product(&m, &x).unwrap();
            assert_eq!(got.dims(), &[rows, 48]);
            let d = max_rel_diff(&exact, &got);
            assert!(d < 0.03, "{rows} rows: {d}");
        }
    }

    /// Attention multiplies views of a device KV cache (rows strided by
    /// its capacity) without copying them where candle takes the strides;
    /// either way the products equal those of contiguous copies.
    #[test]
    fn cache_views_multiply_like_contiguous_copies() {
        let dev = Device::Cpu;
        let cache = Tensor::randn(0f32, 1.0, (1, 2, 16, 8), &dev).unwrap();
        let k = cache.narrow(2, 0, 5).unwrap();
        assert!(!k.is_contiguous());
        let q = Tensor::randn(0f32, 1.0, (1, 2, 3, 8), &dev).unwrap();
        let kt = k.t().unwrap();
        // The CPU backend takes this layout directly (no fallback copy).
        assert!(q.matmul(&kt).is_ok());
        let got = super::matmul_view(&q, &kt).unwrap();
        let want = q.matmul(&k.contiguous().unwrap().t().unwrap()).unwrap();
        assert!(max_rel_diff(&want, &got) < 1e-6);
        let att = Tensor::randn(0f32, 1.0, (1, 2, 3, 5), &dev).unwrap();
        let got = super::matmul_view(&att, &k).unwrap();
        let want = att.matmul(&k.contiguous().unwrap()).unwrap();
        assert!(max_rel_diff(&want, &got) < 1e-6);
    }

    /// Many rows (a prefill) go through one dense product; it agrees with
    /// candle's quantized path row by row.
    #[test]
    fn the_dense_path_for_many_rows_agrees_with_the_quantized_one() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (64, 128), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (DENSE_ROWS + 3, 128), &dev).unwrap();
        let m = super::Matrix::plain(
            candle_core::quantized::QMatMul::from_qtensor(
                QTensor::quantize(&w, GgmlDType::Q8_0).unwrap(),
            )
            .unwrap(),
        );
        let dense = product(&m, &x).unwrap();
        let quantized = candle_core::Module::forward(&m.q, &x).unwrap();
        let d = max_rel_diff(&dense, &quantized);
        assert!(d < 0.02, "{d}");
    }
}
