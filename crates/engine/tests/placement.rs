//! The GPU code path, checked on the CPU: a model loaded in the device
//! placement (KV caches as device tensors, attention as tensor operations,
//! weights and activations in their stored dtype) must generate what the
//! host placement generates. The same code runs on a CUDA device, where
//! only candle's kernels differ; `scripts/gpu-check` repeats the agreement
//! check there.
//!
//! Stated tolerances: in f32 the greedy tokens are equal. With f16 weights
//! and activations, each token the f32 model chose must get a
//! log-probability within 0.05 of the f32 model's on every step, and the
//! same top-1 on at least 90% of steps (near-ties may flip in f16).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use sharenet_engine::tiny::{self, TinyConfig};
use sharenet_engine::{
    Arch, LoadOptions, Placement, Scheduler, SchedulerConfig, SeqEvent, TextModel,
};
use sharenet_proto::{ChatMessage, JobInput, SamplingParams};

const PROMPTS: &[&str] = &[
    "hello there",
    "the quick brown fox jumps over the lazy dog, twice",
    "a",
];

fn load(path: &Path, placement: Placement) -> TextModel {
    let options = LoadOptions {
        device: Device::Cpu,
        placement: Some(placement),
        kv_cache_bytes: 16 << 20,
    };
    TextModel::load_with(path, &options, &mut |_| {}).unwrap()
}

fn prompt(model: &TextModel, text: &str) -> Vec<u32> {
    let input = JobInput::Chat {
        messages: vec![ChatMessage::new("user", text)],
    };
    model.encode_input(&input).unwrap()
}

fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

/// Greedy token ids.
fn tokens(model: &TextModel, prompt: &[u32], max_tokens: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    let params = SamplingParams {
        logprobs: true,
        ..greedy(max_tokens)
    };
    model
        .generate(prompt, &params, |p| {
            ids.extend(p.logprobs.iter().map(|l| l.id));
            true
        })
        .unwrap();
    ids
}

fn fixtures(dir: &Path) -> Vec<PathBuf> {
    let shape = |arch| TinyConfig {
        arch,
        ..TinyConfig::default()
    };
    let qwen = dir.join("qwen2");
    tiny::write_tiny_model(&qwen, 3, shape(Arch::Qwen2)).unwrap();
    // A window shorter than the prompts and generations, so attention
    // masks early positions in prefill and decode.
    let mistral = dir.join("mistral");
    tiny::write_tiny_model(&mistral, 4, shape(Arch::Mistral)).unwrap();
    let config = mistral.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["sliding_window"] = serde_json::json!(16);
    std::fs::write(&config, c.to_string()).unwrap();
    let llama = dir.join("llama.gguf");
    tiny::write_tiny_gguf(&llama, 5, shape(Arch::Llama), GgmlDType::Q4_0).unwrap();
    vec![qwen, mistral, llama]
}

#[test]
fn the_device_placement_generates_the_host_placements_tokens() {
    let dir = tempfile::tempdir().unwrap();
    for path in fixtures(dir.path()) {
        let host = load(&path, Placement::Host);
        let device = load(&path, Placement::Device);
        assert_eq!(device.placement(), Placement::Device);
        assert_eq!(device.compute_dtype(), DType::F32);
        for text in PROMPTS {
            let p = prompt(&host, text);
            let want = tokens(&host, &p, 40);
            assert!(!want.is_empty());
            assert_eq!(tokens(&device, &p, 40), want, "{}: {text}", path.display());
        }
    }
}

/// Batched decode on the device placement: jobs run together through the
/// scheduler (decode steps of many sequences at once, each attending to
/// its own device cache) produce what they produce alone on the host.
#[test]
fn batched_decode_on_the_device_placement_equals_jobs_run_alone_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    for path in fixtures(dir.path()) {
        let host = load(&path, Placement::Host);
        let device = Arc::new(load(&path, Placement::Device));
        let sched = Scheduler::start(
            device.clone(),
            SchedulerConfig {
                max_concurrency: 8,
                max_queue: 8,
                kv_cache_bytes: 64 << 20,
            },
            Box::new(|| {}),
        )
        .unwrap();
        let jobs: Vec<Vec<u32>> = (0..8)
            .map(|i| prompt(&host, &format!("request {i} {}", "x".repeat(i * 7))))
            .collect();
        let alone: Vec<Vec<u32>> = jobs
            .iter()
            .enumerate()
            .map(|(i, p)| tokens(&host, p, 12 + i as u32 * 3))
            .collect();
        let handles: Vec<_> = jobs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let params = SamplingParams {
                    logprobs: true,
                    ..greedy(12 + i as u32 * 3)
                };
                sched.submit(p.clone(), params).unwrap()
            })
            .collect();
        let together: Vec<Vec<u32>> = handles
            .into_iter()
            .map(|mut h| {
                let mut ids = Vec::new();
                while let Some(ev) = h.events.blocking_recv() {
                    match ev {
                        SeqEvent::Piece(p) => ids.extend(p.logprobs.iter().map(|l| l.id)),
                        SeqEvent::Done(_) => return ids,
                        SeqEvent::Failed(e) => panic!("job failed: {e}"),
                    }
                }
                panic!("events ended without Done");
            })
            .collect();
        assert_eq!(together, alone, "{}", path.display());
    }
}

/// The device pool's blocks go back when sequences end, and a pool too
/// small for a prompt is an error naming the shortfall, not a panic.
#[test]
fn the_device_pool_gives_blocks_back_and_refuses_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixtures(dir.path()).remove(0);
    let model = load(&path, Placement::Device);
    let (free, total) = model.kv_pool_blocks().unwrap();
    assert_eq!(free, total);
    assert!(load(&path, Placement::Host).kv_pool_blocks().is_none());
    let p = prompt(&model, "hello there");
    assert!(!tokens(&model, &p, 30).is_empty());
    assert_eq!(model.kv_pool_blocks(), Some((total, total)));
    // Counted in whole blocks.
    assert_eq!(
        model.kv_bytes_for_tokens(1),
        model.kv_bytes_for_tokens(sharenet_engine::KV_BLOCK)
    );

    let small = TextModel::load_with(
        &path,
        &LoadOptions {
            device: Device::Cpu,
            placement: Some(Placement::Device),
            kv_cache_bytes: model.kv_bytes_for_tokens(2 * sharenet_engine::KV_BLOCK),
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(small.kv_pool_blocks(), Some((2, 2)));
    let long = prompt(&small, &"word ".repeat(20));
    assert!(long.len() > 2 * sharenet_engine::KV_BLOCK);
    let err = small
        .generate(&long, &greedy(4), |_| true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("KV cache is full"), "{err}");
    // The failed sequence's blocks came back.
    assert_eq!(small.kv_pool_blocks(), Some((2, 2)));
}

/// f16 weights stay f16 in the device placement (activations too) and
/// agree with the same weights in f32 within the stated tolerance; the KV
/// cache is counted at 2 bytes a value.
#[test]
fn f16_weights_agree_with_f32_within_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let shape = TinyConfig {
        arch: Arch::Qwen2,
        ..TinyConfig::default()
    };
    let (f32_dir, f16_dir) = (dir.path().join("f32"), dir.path().join("f16"));
    tiny::write_tiny_model_as(&f32_dir, 9, shape, DType::F32).unwrap();
    tiny::write_tiny_model_as(&f16_dir, 9, shape, DType::F16).unwrap();
    let reference = load(&f32_dir, Placement::Host);
    let half = load(&f16_dir, Placement::Device);
    assert_eq!(half.compute_dtype(), DType::F16);
    assert_eq!(
        half.kv_bytes_per_token() * 2,
        reference.kv_bytes_per_token()
    );
    // The host placement computes in f32 only: f16 weights load as f32.
    assert_eq!(load(&f16_dir, Placement::Host).compute_dtype(), DType::F32);

    let scored = SamplingParams {
        logprobs: true,
        top_logprobs: 20,
        ..greedy(1)
    };
    let (mut steps, mut same_top, mut worst) = (0usize, 0usize, 0f32);
    for text in PROMPTS {
        let mut ids = prompt(&reference, text);
        for want in tokens(&reference, &ids.clone(), 16) {
            let first = |m: &TextModel, ids: &[u32]| {
                let mut first = None;
                m.generate(ids, &scored, |p| {
                    first = first.take().or(p.logprobs.into_iter().next());
                    true
                })
                .unwrap();
                first.expect("a token with its logprobs")
            };
            let (r, h) = (first(&reference, &ids), first(&half, &ids));
            assert_eq!(r.id, want);
            let lp = if h.id == want {
                Some(h.logprob)
            } else {
                h.top.iter().find(|t| t.id == want).map(|t| t.logprob)
            };
            let diff = lp.map_or(f32::INFINITY, |lp| (lp - r.logprob).abs());
            worst = worst.max(diff);
            steps += 1;
            same_top += usize::from(h.id == want);
            ids.push(want);
        }
    }
    assert!(
        worst <= 0.05,
        "worst |Δ logprob| {worst} over {steps} steps"
    );
    assert!(
        same_top * 10 >= steps * 9,
        "same top-1 on {same_top} of {steps} steps"
    );
    eprintln!("f16 vs f32: worst |Δ logprob| {worst:.4}, same top-1 {same_top}/{steps}");
}
