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
        DeviceChoice::Cuda(n) => Device::new_cuda(n).with_context(|| {
            format!("open CUDA device {n} (is the node built with --features cuda?)")
        }),
        DeviceChoice::Auto => {
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                Device::new_cuda(0).context("open CUDA device 0")
            } else {
                Ok(Device::Cpu)
            }
        }
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
    let result = if path.is_dir() && Embedder::is_embedding_model(&path) {
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
        TextModel::load_on(&path, &device, &mut progress).map(|t| {
            let s = t.spec();
            let summary = format!(
                "{device:?}, {} {:?}, {} layers, context {}, chat template {}, sha256 {}",
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
    let (loaded, summary) =
        result.with_context(|| format!("load model {:?} from {}", m.id, path.display()))?;
    let elapsed = started.elapsed();
    tracing::info!(model = %m.id, elapsed_ms = elapsed.as_millis() as u64, %summary, "model loaded");
    Ok(LoadReport {
        loaded,
        elapsed,
        summary,
    })
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
