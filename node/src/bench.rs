//! `sharenet-node bench-model`: one model's serving figures on the device
//! it would serve on, through the same loader and scheduler the daemon
//! uses. `scripts/gpu-check` runs it for each model shape on a GPU; on the
//! CPU it runs the same way (the tests do).
//!
//! Figures: load time; time to first token for a prompt of
//! `prompt_tokens`; aggregate decode tokens/s at each concurrency (jobs
//! submitted together, the end-of-text tokens banned so every job decodes
//! all its tokens); at concurrency 1, the share of the memory-bandwidth
//! roofline (weight bytes × tokens/s ÷ the GPU's bandwidth: each decode
//! step reads every weight once); the GPU's peak memory in use; and,
//! optionally, agreement with the CPU (host placement, f32) on the same
//! weights.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sharenet_engine::{LoadOptions, Placement, Scheduler, SchedulerConfig, SeqEvent, TextModel};
use sharenet_proto::{JobInput, SamplingParams};

use crate::config::DeviceChoice;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub path: PathBuf,
    pub device: DeviceChoice,
    /// Prompt length for the time to first token.
    pub prompt_tokens: usize,
    /// Tokens each job decodes in the throughput runs.
    pub decode_tokens: u32,
    pub concurrency: Vec<usize>,
    pub kv_cache_bytes: usize,
    /// Also load the model on the CPU and compare log-probabilities.
    pub agreement: bool,
}

#[derive(Debug, Serialize)]
pub struct GpuReport {
    pub ordinal: usize,
    pub name: String,
    pub memory_total_mib: u64,
    /// From the memory clock and bus width the driver reports.
    pub bandwidth_gb_s: f64,
}

#[derive(Debug, Serialize)]
pub struct DecodeReport {
    pub concurrency: usize,
    /// All jobs' tokens together per second.
    pub tokens_per_s: f64,
    /// Ratio to concurrency 1's figure (1.0 for itself; absent without one).
    pub vs_concurrency_1: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct AgreementReport {
    /// What the device's log-probabilities are compared with.
    pub reference: &'static str,
    pub steps: usize,
    pub same_top1: usize,
    pub worst_abs_logprob_delta: f32,
    /// The tolerance `pass` applies: every step within it, and the same
    /// top-1 token on at least 90% of steps.
    pub tolerance: f32,
    pub pass: bool,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    pub gpu: Option<GpuReport>,
    pub format: String,
    pub placement: String,
    pub compute_dtype: String,
    pub layers: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub weights_bytes: u64,
    /// Of those, what one decode step reads: all but the embedding table
    /// (one row of it is read), its share of the file taken as its share
    /// of the parameters. A tied embedding is the head too and counts.
    pub weights_read_per_token: u64,
    pub load_s: f64,
    /// The first request after load (kernel compilation and caches warm).
    pub warmup_s: f64,
    pub prompt_tokens: usize,
    pub ttft_ms: f64,
    pub decode_tokens: u32,
    pub decode: Vec<DecodeReport>,
    /// The figure: weights_bytes × tokens/s at concurrency 1 ÷
    /// bandwidth (GPU only).
    pub roofline_share_c1: Option<f64>,
    /// The stricter one: weights_read_per_token in place of weights_bytes.
    pub roofline_share_c1_read: Option<f64>,
    /// The GPU's memory in use at its peak during the run (all processes).
    pub peak_device_mib: Option<u64>,
    /// Of which this model: the peak minus what was in use before loading.
    pub peak_model_mib: Option<u64>,
    pub agreement: Option<AgreementReport>,
}

/// Samples a GPU's free memory every 20 ms until read or dropped; keeps
/// the least.
struct MemorySampler {
    stop: Arc<AtomicBool>,
    least_free: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemorySampler {
    fn start(ordinal: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let least_free = Arc::new(AtomicU64::new(u64::MAX));
        let (s, l) = (stop.clone(), least_free.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(m) = crate::gpu::memory(ordinal) {
                    l.fetch_min(m.free, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            least_free,
            thread: Some(thread),
        }
    }

    fn least_free(mut self) -> u64 {
        self.stop_thread();
        self.least_free.load(Ordering::Relaxed)
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A run that fails part-way stops its sampler too.
impl Drop for MemorySampler {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The bytes of `weights` a decode step reads: all but an untied
/// embedding table's share (by parameter count; a tied one is the head).
fn weights_read_per_token(spec: &sharenet_engine::ModelSpec, weights: u64) -> u64 {
    if spec.tie_word_embeddings {
        return weights;
    }
    let embed = spec.embedding_parameters() as f64 / spec.parameters().max(1) as f64;
    (weights as f64 * (1.0 - embed)) as u64
}

/// Exactly `n` prompt tokens of plain text.
fn prompt_of(model: &TextModel, n: usize) -> anyhow::Result<Vec<u32>> {
    let words = "the quick brown fox jumps over the lazy dog while a patient river \
                 carries leaves past the old mill and children count the boats ";
    let text = words.repeat(n / 8 + 2);
    let ids = model
        .encode_input(&JobInput::Prompt { prompt: text })
        .context("tokenize the benchmark prompt")?;
    anyhow::ensure!(
        ids.len() >= n,
        "the prompt tokenized to {} < {n} tokens",
        ids.len()
    );
    Ok(ids[..n].to_vec())
}

/// Greedy, `max_tokens` long whatever the model prefers: its end tokens
/// are banned.
fn decode_params(model: &TextModel, max_tokens: u32) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature: 0.0,
        logit_bias: model.eos_tokens().iter().map(|&t| (t, -100.0)).collect(),
        ..SamplingParams::default()
    }
}

/// Runs jobs together; returns the seconds from submitting them to the
/// last one's end, and their completion tokens. Timed by job ends, not by
/// streamed pieces: a streamer may hold tokens back (an incomplete UTF-8
/// character, a possible stop string), which would skew piece times.
fn run_jobs(
    sched: &Scheduler,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
) -> anyhow::Result<(f64, u64)> {
    let start = Instant::now();
    let handles = prompts
        .iter()
        .map(|p| {
            sched
                .submit(p.clone(), params.clone())
                .map_err(|e| anyhow::anyhow!("submit a benchmark job: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let results = std::thread::scope(|s| {
        let threads: Vec<_> = handles
            .into_iter()
            .map(|mut h| {
                s.spawn(move || -> anyhow::Result<(Instant, u32)> {
                    while let Some(ev) = h.events.blocking_recv() {
                        match ev {
                            SeqEvent::Piece(_) => {}
                            SeqEvent::Done(g) => return Ok((Instant::now(), g.completion_tokens)),
                            SeqEvent::Failed(e) => anyhow::bail!("benchmark job failed: {e}"),
                        }
                    }
                    anyhow::bail!("benchmark job ended without a result")
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("job thread panicked")))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let last = results.iter().map(|r| r.0).max().unwrap_or(start);
    let tokens = results.iter().map(|r| u64::from(r.1)).sum();
    Ok((last.duration_since(start).as_secs_f64(), tokens))
}

/// The first token's log-probabilities of `model` after `ids`: (chosen
/// id, its logprob, the top alternatives).
fn first_logprobs(model: &TextModel, ids: &[u32]) -> anyhow::Result<sharenet_proto::TokenLogprob> {
    let params = SamplingParams {
        max_tokens: 1,
        temperature: 0.0,
        logprobs: true,
        top_logprobs: 20,
        ..SamplingParams::default()
    };
    let mut first = None;
    model
        .generate(ids, &params, |p| {
            first = first.take().or(p.logprobs.into_iter().next());
            true
        })
        .context("score a step")?;
    first.context("a step without logprobs")
}

/// Teacher-forced comparison with the CPU: the CPU (f32, host placement)
/// writes 16 tokens greedily after each of two prompts; at every step the
/// device must give the CPU's token nearly the CPU's log-probability.
fn agreement(device: &TextModel, path: &Path) -> anyhow::Result<AgreementReport> {
    const TOLERANCE: f32 = 0.1;
    let cpu = TextModel::load_with(
        path,
        &LoadOptions {
            placement: Some(Placement::Host),
            ..LoadOptions::on(&candle_core::Device::Cpu)
        },
        &mut |_| {},
    )
    .context("load the model on the CPU for the agreement check")?;
    let (mut steps, mut same, mut worst) = (0usize, 0usize, 0f32);
    for text in [
        "hello there, how are you",
        "write a short story about the sea",
    ] {
        let mut ids = cpu.encode_input(&JobInput::Prompt {
            prompt: text.into(),
        })?;
        for _ in 0..16 {
            let want = first_logprobs(&cpu, &ids)?;
            let got = first_logprobs(device, &ids)?;
            let lp = if got.id == want.id {
                Some(got.logprob)
            } else {
                got.top.iter().find(|t| t.id == want.id).map(|t| t.logprob)
            };
            let delta = lp.map_or(f32::INFINITY, |lp| (lp - want.logprob).abs());
            worst = worst.max(delta);
            steps += 1;
            same += usize::from(got.id == want.id);
            ids.push(want.id);
        }
    }
    Ok(AgreementReport {
        reference: "cpu f32 (host placement)",
        steps,
        same_top1: same,
        worst_abs_logprob_delta: worst,
        tolerance: TOLERANCE,
        pass: worst <= TOLERANCE && same * 10 >= steps * 9,
    })
}

/// Loads the model and measures it (blocking; minutes for big models).
pub fn bench_model(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let device = crate::load::device_for(opts.device)?;
    let gpu = match crate::load::gpu_ordinal(opts.device, &device) {
        Some(n) => {
            let mem = crate::gpu::memory(n).map_err(anyhow::Error::msg)?;
            let bw = crate::gpu::bandwidth(n).map_err(anyhow::Error::msg)?;
            Some((n, mem, bw))
        }
        None => None,
    };
    let sampler = gpu.as_ref().map(|(n, ..)| MemorySampler::start(*n));

    let started = Instant::now();
    let load = LoadOptions {
        kv_cache_bytes: opts.kv_cache_bytes,
        ..LoadOptions::on(&device)
    };
    let model = TextModel::load_with(&opts.path, &load, &mut |_| {})
        .with_context(|| format!("load {}", opts.path.display()))?;
    let load_s = started.elapsed().as_secs_f64();
    // Each figure is logged as it is measured, so a run cut short still
    // leaves what it had.
    tracing::info!(load_s, placement = ?model.placement(), dtype = ?model.compute_dtype(), "loaded");
    let model = Arc::new(model);
    let max_c = opts.concurrency.iter().copied().max().unwrap_or(1);
    let sched = Scheduler::start(
        model.clone(),
        SchedulerConfig {
            max_concurrency: max_c,
            max_queue: max_c,
            kv_cache_bytes: opts.kv_cache_bytes,
        },
        Box::new(|| {}),
    )?;

    let warm = Instant::now();
    let short = prompt_of(&model, 16)?;
    run_jobs(
        &sched,
        std::slice::from_ref(&short),
        &decode_params(&model, 4),
    )?;
    let warmup_s = warm.elapsed().as_secs_f64();
    tracing::info!(warmup_s, "warmed up");

    let long = prompt_of(&model, opts.prompt_tokens)?;
    // The best of three: one job of one token, its prompt alone.
    let mut ttft = f64::INFINITY;
    for _ in 0..3 {
        let (t, _) = run_jobs(
            &sched,
            std::slice::from_ref(&long),
            &decode_params(&model, 1),
        )?;
        ttft = ttft.min(t);
    }
    tracing::info!(
        prompt_tokens = opts.prompt_tokens,
        ttft_ms = ttft * 1e3,
        "time to first token"
    );

    let mut decode = Vec::new();
    let params = decode_params(&model, opts.decode_tokens);
    for &c in &opts.concurrency {
        // Distinct prompts, so no two sequences are the same work.
        let prompts = (0..c)
            .map(|i| {
                let mut p = short.clone();
                let shift = i % p.len().max(1);
                p.rotate_left(shift);
                p
            })
            .collect::<Vec<_>>();
        // Decode alone: the same jobs' prefills and first tokens (one
        // token each) timed apart and taken off.
        let (prefill_s, _) = run_jobs(&sched, &prompts, &decode_params(&model, 1))?;
        let (total_s, tokens) = run_jobs(&sched, &prompts, &params)?;
        let decoded = tokens.saturating_sub(c as u64);
        let rate = decoded as f64 / (total_s - prefill_s).max(1e-6);
        tracing::info!(concurrency = c, tokens_per_s = rate, "decode");
        decode.push(DecodeReport {
            concurrency: c,
            tokens_per_s: rate,
            vs_concurrency_1: None,
        });
    }
    let c1 = decode
        .iter()
        .find(|d| d.concurrency == 1)
        .map(|d| d.tokens_per_s);
    for d in &mut decode {
        d.vs_concurrency_1 = c1.map(|c1| d.tokens_per_s / c1);
    }
    drop(sched);

    let agreement = if opts.agreement {
        Some(agreement(&model, &opts.path)?)
    } else {
        None
    };
    let least_free = sampler.map(MemorySampler::least_free);
    let weights = crate::load::weights_bytes(&opts.path);
    let read_per_token = weights_read_per_token(model.spec(), weights);
    let spec = model.spec();
    let mib = |b: u64| b / (1 << 20);
    Ok(BenchReport {
        model: opts.path.display().to_string(),
        device: format!("{:?}", opts.device),
        roofline_share_c1: match (&gpu, c1) {
            (Some((_, _, bw)), Some(rate)) => Some(weights as f64 * rate / *bw as f64),
            _ => None,
        },
        roofline_share_c1_read: match (&gpu, c1) {
            (Some((_, _, bw)), Some(rate)) => Some(read_per_token as f64 * rate / *bw as f64),
            _ => None,
        },
        peak_device_mib: match (&gpu, least_free) {
            (Some((_, mem, _)), Some(free)) if free != u64::MAX => {
                Some(mib(mem.total.saturating_sub(free)))
            }
            _ => None,
        },
        peak_model_mib: match (&gpu, least_free) {
            (Some((_, mem, _)), Some(free)) if free != u64::MAX => {
                Some(mib(mem.free.saturating_sub(free)))
            }
            _ => None,
        },
        gpu: gpu.map(|(ordinal, mem, bw)| GpuReport {
            ordinal,
            name: mem.name,
            memory_total_mib: mib(mem.total),
            bandwidth_gb_s: bw as f64 / 1e9,
        }),
        format: format!("{:?}", model.format()),
        placement: format!("{:?}", model.placement()),
        compute_dtype: format!("{:?}", model.compute_dtype()),
        layers: spec.num_layers,
        hidden_size: spec.hidden_size,
        vocab_size: spec.vocab_size,
        weights_bytes: weights,
        weights_read_per_token: read_per_token,
        load_s,
        warmup_s,
        prompt_tokens: opts.prompt_tokens,
        ttft_ms: ttft * 1e3,
        decode_tokens: opts.decode_tokens,
        decode,
        agreement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the CPU every figure but the GPU's is there and sane, and the
    /// model agrees with itself.
    #[test]
    fn bench_model_reports_every_figure_on_the_cpu() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        sharenet_engine::tiny::write_tiny_gguf(
            &path,
            3,
            sharenet_engine::tiny::TinyConfig::default(),
            candle_core::quantized::GgmlDType::Q8_0,
        )
        .unwrap();
        let report = bench_model(&BenchOptions {
            path,
            device: DeviceChoice::Cpu,
            prompt_tokens: 64,
            decode_tokens: 8,
            concurrency: vec![1, 4],
            kv_cache_bytes: 64 << 20,
            agreement: true,
        })
        .unwrap();
        assert!(report.gpu.is_none() && report.roofline_share_c1.is_none());
        assert!(report.ttft_ms > 0.0 && report.load_s > 0.0);
        assert_eq!(report.decode.len(), 2);
        assert!(report.decode.iter().all(|d| d.tokens_per_s > 0.0));
        assert_eq!(report.decode[0].vs_concurrency_1, Some(1.0));
        let a = report.agreement.unwrap();
        assert!(a.pass && a.worst_abs_logprob_delta == 0.0, "{a:?}");
        assert_eq!(a.steps, 32);
        assert!(report.weights_bytes > 0);
        assert!(report.weights_read_per_token < report.weights_bytes);
    }
}
