//! Loading a configured model into its backend, with a progress bar on a
//! terminal (indicatif; hidden otherwise) and the time it took.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sharenet_engine::{Embedder, Progress, TextModel};

use crate::config::{DeviceChoice, ModelConfig, ModelSource};

/// The candle device for a model.
pub fn device_for(choice: DeviceChoice) -> anyhow::Result<candle_core::Device> {
    use candle_core::Device;
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                anyhow::bail!(
                    "open CUDA device {n}: this node is built without CUDA \
                     (build it with --features cuda, see README)"
                );
            }
            if !crate::gpu::driver_present() {
                anyhow::bail!(
                    "open CUDA device {n}: no NVIDIA driver on this machine (libcuda.so.1 \
                     not found)"
                );
            }
            open_cuda(n)
        }
        DeviceChoice::Auto => {
            // `auto` takes GPU 0 only where the build and the machine both
            // have CUDA; otherwise the CPU, quietly.
            if cfg!(feature = "cuda")
                && crate::gpu::driver_present()
                && crate::gpu::memory(0).is_ok()
            {
                open_cuda(0)
            } else {
                Ok(Device::Cpu)
            }
        }
    }
}

/// The GPU a model on `device` uses: its `cuda:N`, or GPU 0 for `auto`
/// (none on the CPU).
pub fn gpu_ordinal(choice: DeviceChoice, device: &candle_core::Device) -> Option<usize> {
    (!device.is_cpu()).then_some(match choice {
        DeviceChoice::Cuda(n) => n,
        _ => 0,
    })
}

/// Opens CUDA device `n` through candle. cudarc loads cuBLAS, cuRAND and
/// NVRTC here and panics if one is missing; that becomes an error saying
/// what to install.
fn open_cuda(n: usize) -> anyhow::Result<candle_core::Device> {
    match std::panic::catch_unwind(|| candle_core::Device::new_cuda(n)) {
        Ok(device) => device.with_context(|| format!("open CUDA device {n}")),
        Err(_) => anyhow::bail!(
            "open CUDA device {n}: a CUDA library could not be loaded (cuBLAS, cuRAND and NVRTC \
             of CUDA 13 must be on the library path, e.g. from a CUDA toolkit or NVIDIA's \
             cuda:13.0-runtime image)"
        ),
    }
}

/// A model ready to serve.
pub enum Loaded {
    Text(Arc<TextModel>),
    Embed(Arc<Embedder>),
    /// Forwarded; nothing to load.
    Upstream,
}

/// What `sharenet-node models` prints about a loaded model.
pub struct LoadReport {
    pub loaded: Loaded,
    pub elapsed: Duration,
    pub summary: String,
}

fn bar(id: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} {msg:12} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_prefix(id.to_string());
    pb
}

/// Loads one model (blocking: call from a blocking thread).
pub fn load(m: &ModelConfig) -> anyhow::Result<LoadReport> {
    let started = Instant::now();
    let path = match &m.source {
        ModelSource::Upstream(u) => {
            return Ok(LoadReport {
                loaded: Loaded::Upstream,
                elapsed: started.elapsed(),
                summary: format!("upstream {} model {:?}", u.base_url, u.model),
            });
        }
        ModelSource::Local(p) => p.clone(),
    };
    let device = device_for(m.device).with_context(|| format!("model {:?}", m.id))?;
    // On a GPU: weights, KV pool and working space must fit before loading
    // starts (the pool is allocated at load).
    let is_text = !(path.is_dir() && Embedder::is_embedding_model(&path));
    let gpu = match gpu_ordinal(m.device, &device) {
        Some(ordinal) => {
            let mem = crate::gpu::memory(ordinal).map_err(anyhow::Error::msg)?;
            let kv = if is_text { m.kv_cache_bytes as u64 } else { 0 };
            crate::gpu::check_fits(&m.id, ordinal, &mem, weights_bytes(&path), kv)
                .map_err(anyhow::Error::msg)?;
            Some((ordinal, mem))
        }
        None => None,
    };
    let pb = bar(&m.id);
    let mut progress = |p: Progress| match p {
        Progress::Hashing { done, total } => {
            if pb.length() != Some(total) {
                pb.set_length(total);
                pb.set_message("sha256");
            }
            pb.set_position(done);
        }
        Progress::Loading => pb.set_message("loading"),
    };
    let result = if !is_text {
        Embedder::load_on(&path, &device, &mut progress).map(|e| {
            let summary = format!(
                "{device:?}, embedding model, {} dims, max {} tokens, sha256 {}",
                e.dims(),
                e.max_tokens(),
                hex(&e.weights_sha256())
            );
            (Loaded::Embed(Arc::new(e)), summary)
        })
    } else {
        let options = sharenet_engine::LoadOptions {
            kv_cache_bytes: m.kv_cache_bytes,
            ..sharenet_engine::LoadOptions::on(&device)
        };
        TextModel::load_with(&path, &options, &mut progress).map(|t| {
            let s = t.spec();
            let summary = format!(
                "{device:?} ({:?}, {:?}), {} {:?}, {} layers, context {}, chat template {}, sha256 {}",
                t.placement(),
                t.compute_dtype(),
                s.arch.as_str(),
                t.format(),
                s.num_layers,
                t.context_length(),
                if t.has_chat_template() {
                    "own"
                } else {
                    "fallback"
                },
                hex(&t.weights_sha256())
            );
            (Loaded::Text(Arc::new(t)), summary)
        })
    };
    pb.finish_and_clear();
    let (loaded, mut summary) =
        result.with_context(|| format!("load model {:?} from {}", m.id, path.display()))?;
    if let Some((ordinal, before)) = gpu {
        let after = crate::gpu::memory(ordinal).map_err(anyhow::Error::msg)?;
        summary.push_str(&format!(
            ", {}: {:.1} GiB taken on the device (weights and KV pool), {:.1} GiB free",
            after.name,
            before.free.saturating_sub(after.free) as f64 / (1u64 << 30) as f64,
            after.free as f64 / (1u64 << 30) as f64
        ));
    }
    let elapsed = started.elapsed();
    tracing::info!(model = %m.id, elapsed_ms = elapsed.as_millis() as u64, %summary, "model loaded");
    Ok(LoadReport {
        loaded,
        elapsed,
        summary,
    })
}

/// Bytes of weight files at `path` (a GGUF file, or a folder's
/// safetensors).
pub(crate) fn weights_bytes(path: &std::path::Path) -> u64 {
    if path.is_file() {
        return std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
