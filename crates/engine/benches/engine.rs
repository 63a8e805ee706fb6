//! Engine benchmark: decode speed at concurrency 1 against llama.cpp on the
//! same GGUF (measured in the same run), aggregate decode speed at
//! concurrency 8 with continuous batching, time to first token, and
//! sentence embeddings per second for all-MiniLM-L6-v2; and the real
//! SmolLM2-135M-Instruct (`scripts/fetch-smollm2`) beside llama.cpp on the
//! same file (`SHARENET_BENCH_ONLY=real` runs just that); and generated
//! models of real shapes and vocabulary sizes (Llama-3.2-1B, 128k;
//! Qwen2.5-0.5B, 152k; SmolLM2-135M with 32k) against llama.cpp on the
//! same GGUF (`SHARENET_BENCH_ONLY=shapes`).
//!
//!     cargo bench -p sharenet-engine --bench engine
//!
//! llama.cpp comes from `.venv` (scripts/setup-test-deps) or
//! `SHARENET_PYTHON`; MiniLM from `SHARENET_MINILM_DIR` or
//! `target/test-models/all-minilm-l6-v2`. Either missing: that row is
//! reported as skipped, with why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::GgmlDType;
use sharenet_engine::tiny::{TinyConfig, write_tiny_gguf};
use sharenet_engine::{Embedder, Scheduler, SchedulerConfig, SeqEvent, TextModel};
use sharenet_proto::{JobInput, SamplingParams};

const PROMPT: &str = "The quick brown fox jumps over the lazy dog and then";
const MAX_TOKENS: u32 = 128;
const RUNS: usize = 3;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn params() -> SamplingParams {
    SamplingParams {
        max_tokens: MAX_TOKENS,
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

/// (time to first token ms, decode tokens/s, tokens) for one sequence.
fn single(model: &TextModel) -> (f64, f64, u32) {
    single_with(model, PROMPT, MAX_TOKENS)
}

/// [`single`] for `text` (special tokens in it are parsed) and `max_tokens`.
fn single_with(model: &TextModel, text: &str, max_tokens: u32) -> (f64, f64, u32) {
    let prompt = model
        .encode_input(&JobInput::Prompt {
            prompt: text.into(),
        })
        .unwrap_or_default();
    let params = SamplingParams {
        max_tokens,
        ..params()
    };
    let mut best = (0.0, 0.0, 0);
    for _ in 0..=RUNS {
        let start = Instant::now();
        let mut first = None;
        let mut last = start;
        let mut n = 0u32;
        let _ = model.generate(&prompt, &params, |p| {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            n += p.tokens;
            true
        });
        let first = first.unwrap_or(last);
        let tps = f64::from(n.saturating_sub(1)) / (last - first).as_secs_f64().max(1e-9);
        if tps > best.1 {
            best = ((first - start).as_secs_f64() * 1e3, tps, n);
        }
    }
    best
}

/// Aggregate decode tokens/s with `c` sequences at once through the
/// scheduler: tokens produced while all `c` decode (after every sequence
/// has its first token, until the first one ends). Time to first token is
/// reported separately.
fn concurrent(model: &Arc<TextModel>, c: usize) -> f64 {
    concurrent_with(model, c, PROMPT)
}

/// [`concurrent`] with prompts `"{text} {i}"`.
fn concurrent_with(model: &Arc<TextModel>, c: usize, text: &str) -> f64 {
    let sched = match Scheduler::start(
        model.clone(),
        SchedulerConfig {
            max_concurrency: c,
            max_queue: c,
            kv_cache_bytes: 1 << 30,
        },
        Box::new(|| {}),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("start scheduler: {e}");
            return 0.0;
        }
    };
    let mut best = 0.0;
    for _ in 0..=RUNS {
        let handles: Vec<_> = (0..c)
            .filter_map(|i| {
                let prompt = model
                    .encode_input(&JobInput::Prompt {
                        prompt: format!("{text} {i}"),
                    })
                    .ok()?;
                // Every sequence runs to max_tokens: a real model's
                // end-of-turn tokens are banned, so the batch stays full.
                let mut banned: Vec<(u32, f32)> =
                    model.eos_tokens().iter().map(|&t| (t, -100.0)).collect();
                banned.sort_by_key(|b| b.0);
                banned.dedup_by_key(|b| b.0);
                let params = SamplingParams {
                    logit_bias: banned,
                    ..params()
                };
                sched
                    .submit(prompt, params)
                    .map_err(|e| eprintln!("submit: {e}"))
                    .ok()
            })
            .collect();
        // Per sequence: the arrival time of each token.
        let stamps: Vec<Vec<Instant>> = std::thread::scope(|s| {
            let threads: Vec<_> = handles
                .into_iter()
                .map(|mut h| {
                    s.spawn(move || {
                        let mut t = Vec::new();
                        while let Some(ev) = h.events.blocking_recv() {
                            match ev {
                                SeqEvent::Piece(p) => {
                                    let now = Instant::now();
                                    t.extend(std::iter::repeat_n(now, p.tokens as usize));
                                }
                                SeqEvent::Failed(e) => {
                                    eprintln!("sequence failed: {e}");
                                    break;
                                }
                                _ => break,
                            }
                        }
                        t
                    })
                })
                .collect();
            threads.into_iter().filter_map(|t| t.join().ok()).collect()
        });
        // While all `c` decode: from the last first token to the first
        // sequence's end (a real model stops at its end-of-turn token,
        // and a sequence that ended does not load the batch).
        let (Some(start), Some(end)) = (
            stamps.iter().filter_map(|t| t.first()).max(),
            stamps.iter().filter_map(|t| t.last()).min(),
        ) else {
            continue;
        };
        if end <= start {
            continue;
        }
        let decoded = stamps
            .iter()
            .flatten()
            .filter(|t| *t > start && *t <= end)
            .count();
        let tps = decoded as f64 / (*end - *start).as_secs_f64().max(1e-9);
        if tps > best {
            best = tps;
        }
    }
    best
}

fn python() -> Option<PathBuf> {
    std::env::var_os("SHARENET_PYTHON")
        .map(PathBuf::from)
        .or_else(|| Some(root().join(".venv/bin/python")).filter(|p| p.exists()))
}

fn llama_cpp(gguf: &Path) -> Result<(f64, f64, u32), String> {
    llama_cpp_with(gguf, PROMPT, MAX_TOKENS)
}

fn llama_cpp_with(gguf: &Path, prompt: &str, max_tokens: u32) -> Result<(f64, f64, u32), String> {
    let py = python().ok_or("no .venv (run scripts/setup-test-deps)")?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out = std::process::Command::new(py)
        .arg(root().join("tests/python/bench_llama_cpp.py"))
        .arg(gguf)
        .arg(prompt)
        .arg(max_tokens.to_string())
        .arg(threads.to_string())
        .arg(RUNS.to_string())
        .output()
        .map_err(|e| format!("run python: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("parse output: {e}"))?;
    Ok((
        v["ttft_ms"].as_f64().unwrap_or(0.0),
        v["decode_tok_s"].as_f64().unwrap_or(0.0),
        v["tokens"].as_u64().unwrap_or(0) as u32,
    ))
}

fn embeddings() -> Result<(f64, f64), String> {
    let dir = std::env::var_os("SHARENET_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/test-models/all-minilm-l6-v2"));
    let model = Embedder::load(&dir).map_err(|e| e.to_string())?;
    let sentence = |i: usize| {
        format!("sentence number {i} about routing inference to the cheapest trusted node")
    };
    let rate = |batch: usize| -> f64 {
        let texts: Vec<String> = (0..batch).map(sentence).collect();
        let _ = model.embed(&texts);
        let rounds = (64 / batch).max(2);
        let start = Instant::now();
        for _ in 0..rounds {
            let _ = model.embed(&texts);
        }
        (rounds * batch) as f64 / start.elapsed().as_secs_f64()
    };
    Ok((rate(1), rate(32)))
}

/// Runs every measurement on one generated shape, printing markdown.
fn run(label: &str, shape: TinyConfig, dense_too: bool, dir: &Path) -> Result<(), String> {
    let gguf = dir.join(format!("{label}-q8_0.gguf"));
    write_tiny_gguf(&gguf, 1, shape, GgmlDType::Q8_0).map_err(|e| e.to_string())?;
    let model = Arc::new(TextModel::load(&gguf).map_err(|e| e.to_string())?);
    let s = model.spec();
    println!(
        "\n### {label}: generated llama, {} layers, hidden {}, {} heads ({} kv), vocab {}, GGUF Q8_0 ({:.1} MB)\n",
        s.num_layers,
        s.hidden_size,
        s.num_heads,
        s.num_kv_heads,
        s.vocab_size,
        std::fs::metadata(&gguf).map_or(0, |m| m.len()) as f64 / 1e6
    );
    println!("| engine | concurrency | TTFT ms | decode tok/s | tokens |");
    println!("|---|---|---|---|---|");
    let (ttft, tps, n) = single(&model);
    println!("| sharenet (candle) | 1 | {ttft:.1} | {tps:.0} | {n} |");
    let base = match llama_cpp(&gguf) {
        Ok((lt, ltps, ln)) => {
            println!("| llama.cpp (llama-cpp-python 0.3.36) | 1 | {lt:.1} | {ltps:.0} | {ln} |");
            Some(ltps)
        }
        Err(e) => {
            println!(
                "| llama.cpp | 1 | skipped: {} | | |",
                e.lines().last().unwrap_or("")
            );
            None
        }
    };
    let c1 = concurrent(&model, 1);
    let c8 = concurrent(&model, 8);
    println!("| sharenet scheduler | 1 | | {c1:.0} (aggregate) | |");
    println!("| sharenet scheduler | 8 | | {c8:.0} (aggregate) | |");
    let mut ratios = vec![];
    if dense_too {
        // The same shape with dense f32 weights (safetensors).
        let st = dir.join(format!("{label}-f32"));
        sharenet_engine::tiny::write_tiny_model(&st, 1, shape).map_err(|e| e.to_string())?;
        let m = Arc::new(TextModel::load(&st).map_err(|e| e.to_string())?);
        let (dt, dtps, dn) = single(&m);
        let d1 = concurrent(&m, 1);
        let d8 = concurrent(&m, 8);
        println!("| sharenet (candle), safetensors f32 | 1 | {dt:.1} | {dtps:.0} | {dn} |");
        println!("| sharenet scheduler, safetensors f32 | 1 | | {d1:.0} (aggregate) | |");
        println!("| sharenet scheduler, safetensors f32 | 8 | | {d8:.0} (aggregate) | |");
        ratios.push(format!(
            "safetensors f32: concurrency 8 / 1 aggregate {:.2}x (target >= 3x)",
            d8 / d1.max(1e-9)
        ));
    }
    println!();
    if let Some(b) = base {
        println!(
            "- llama.cpp / sharenet decode at concurrency 1: {:.2}x (target <= 1.5x)",
            b / tps.max(1e-9)
        );
    }
    println!(
        "- GGUF Q8_0: concurrency 8 / 1 aggregate {:.2}x (target >= 3x)",
        c8 / c1.max(1e-9)
    );
    for r in ratios {
        println!("- {r}");
    }
    Ok(())
}

/// SmolLM2-135M-Instruct's chat prompt for "Write a haiku about the sea."
/// as its template renders it (38 tokens), so both engines see the same
/// tokens.
const CHAT_PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n";

/// The real SmolLM2-135M-Instruct GGUF (`scripts/fetch-smollm2`), or
/// `SHARENET_SMOLLM2`.
fn smollm2() -> Option<PathBuf> {
    std::env::var_os("SHARENET_SMOLLM2")
        .map(PathBuf::from)
        .or_else(|| Some(root().join("target/test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
        .filter(|p| p.exists())
}

/// The real model beside llama.cpp on the same file: decode and time to
/// first token for the 38-token chat prompt, time to first token for a
/// prompt of about 512 tokens, and the scheduler at concurrency 8.
fn real(gguf: &Path) -> Result<(), String> {
    let model = Arc::new(TextModel::load(gguf).map_err(|e| e.to_string())?);
    let s = model.spec();
    let long: String = std::iter::repeat_n(
        "The harbour wakes before the sun; the boats go out, the gulls follow, and the tide keeps its own time. ",
        22,
    )
    .collect();
    let long_tokens = model
        .encode_input(&JobInput::Prompt {
            prompt: long.clone(),
        })
        .map_or(0, |t| t.len());
    let short_tokens = model
        .encode_input(&JobInput::Prompt {
            prompt: CHAT_PROMPT.into(),
        })
        .map_or(0, |t| t.len());
    println!(
        "\n### SmolLM2-135M-Instruct (real weights, {} as shipped, {:.0} MB): {} layers, hidden {}, vocab {}\n",
        match model.format() {
            sharenet_engine::WeightsFormat::Gguf { dtype } => dtype.clone(),
            sharenet_engine::WeightsFormat::Safetensors => "safetensors".into(),
        },
        std::fs::metadata(gguf).map_or(0, |m| m.len()) as f64 / 1e6,
        s.num_layers,
        s.hidden_size,
        s.vocab_size
    );
    println!("| engine | prompt | TTFT ms | decode tok/s (concurrency 1) | tokens |");
    println!("|---|---|---|---|---|");
    let (t, tps, n) = single_with(&model, CHAT_PROMPT, MAX_TOKENS);
    println!("| sharenet (candle) | chat, {short_tokens} tokens | {t:.1} | {tps:.1} | {n} |");
    let base = llama_cpp_with(gguf, CHAT_PROMPT, MAX_TOKENS);
    match &base {
        Ok((lt, ltps, ln)) => {
            println!(
                "| llama.cpp (llama-cpp-python 0.3.36) | chat, {short_tokens} tokens | {lt:.1} | {ltps:.1} | {ln} |"
            )
        }
        Err(e) => println!(
            "| llama.cpp | skipped: {} | | | |",
            e.lines().last().unwrap_or("")
        ),
    }
    let (lt_ours, _, _) = single_with(&model, &long, 4);
    println!("| sharenet (candle) | {long_tokens} tokens | {lt_ours:.1} | | |");
    if let Ok((lt, _, _)) = llama_cpp_with(gguf, &long, 4) {
        println!("| llama.cpp (llama-cpp-python 0.3.36) | {long_tokens} tokens | {lt:.1} | | |");
    }
    let c1 = concurrent(&model, 1);
    let c8 = concurrent(&model, 8);
    println!("| sharenet scheduler | short prompts | | {c1:.1} (aggregate, concurrency 1) | |");
    println!("| sharenet scheduler | short prompts | | {c8:.1} (aggregate, concurrency 8) | |");
    println!();
    if let Ok((lt, ltps, _)) = base {
        println!(
            "- sharenet / llama.cpp: decode {:.2}x, time to first token {:.2}x (chat prompt)",
            tps / ltps.max(1e-9),
            t / lt.max(1e-9)
        );
    }
    println!("- concurrency 8 / 1 aggregate {:.2}x", c8 / c1.max(1e-9));
    requantized(gguf);
    Ok(())
}

/// The same model requantized by llama.cpp's own quantizer to other types
/// (from Q4_1: fine for speed, not for quality), each file loaded by both
/// engines: chat-prompt TTFT and decode at concurrency 1.
fn requantized(gguf: &Path) {
    let Some(py) = python() else {
        return println!("\nrequantized files skipped: no .venv (run scripts/setup-test-deps)");
    };
    let Ok(dir) = tempfile::tempdir() else {
        return println!("\nrequantized files skipped: no temporary folder");
    };
    println!("\nThe same weights requantized by llama.cpp (chat prompt, concurrency 1):\n");
    println!(
        "| file type | sharenet TTFT ms | sharenet tok/s | llama.cpp TTFT ms | llama.cpp tok/s | decode ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for kind in ["q8_0", "q4_0", "q4_k_m"] {
        let out = dir.path().join(format!("smollm2-{kind}.gguf"));
        let made = std::process::Command::new(&py)
            .arg(root().join("tests/python/quantize_gguf.py"))
            .arg(gguf)
            .arg(&out)
            .arg(kind)
            .output();
        if !made.is_ok_and(|o| o.status.success()) {
            println!("| {kind} | quantize failed | | | | |");
            continue;
        }
        let model = match TextModel::load(&out) {
            Ok(m) => m,
            Err(e) => {
                println!("| {kind} | load failed: {e} | | | | |");
                continue;
            }
        };
        let (t, tps, _) = single_with(&model, CHAT_PROMPT, MAX_TOKENS);
        match llama_cpp_with(&out, CHAT_PROMPT, MAX_TOKENS) {
            Ok((lt, ltps, _)) => println!(
                "| {kind} | {t:.1} | {tps:.1} | {lt:.1} | {ltps:.1} | {:.2}x |",
                tps / ltps.max(1e-9)
            ),
            Err(_) => println!("| {kind} | {t:.1} | {tps:.1} | skipped | | |"),
        }
    }
}

/// A prompt of exactly `n` tokens for a generated model: `x` has no merge
/// in its byte-level tokenizer, so each is one token (after BOS, if the
/// model adds one); the same text is one token each in llama.cpp too.
fn prompt_of(model: &TextModel, n: usize) -> String {
    let mut text = "x".repeat(n);
    while text.len() > 1
        && model
            .encode_input(&JobInput::Prompt {
                prompt: text.clone(),
            })
            .map_or(0, |t| t.len())
            > n
    {
        text.pop();
    }
    text
}

/// Generated models of real shapes and vocabulary sizes, Q8_0, each file
/// loaded by both engines: time to first token for 38- and 512-token
/// prompts, decode at concurrency 1 (32 tokens), and the scheduler's
/// aggregate at concurrency 1 and 8.
fn shapes(dir: &Path) {
    println!(
        "\n### Generated models of real shapes and vocabularies (random weights, GGUF Q8_0)\n"
    );
    println!(
        "| shape | vocab | params | TTFT 38 tok: sharenet / llama.cpp ms | TTFT 512 tok: sharenet / llama.cpp ms | decode c1: sharenet / llama.cpp tok/s | decode ratio | scheduler c1 → c8 tok/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (label, shape) in [
        ("SmolLM2-135M shape", TinyConfig::smollm2_135m_vocab32k()),
        ("Qwen2.5-0.5B shape (qwen2)", TinyConfig::qwen25_05b()),
        ("Llama-3.2-1B shape", TinyConfig::llama32_1b()),
    ] {
        // SHARENET_BENCH_SHAPE=<text>: only the shapes whose label has it.
        if std::env::var("SHARENET_BENCH_SHAPE").is_ok_and(|f| !label.contains(&f)) {
            continue;
        }
        let gguf = dir.join("shape-q8_0.gguf");
        if let Err(e) = write_tiny_gguf(&gguf, 1, shape, GgmlDType::Q8_0) {
            println!("| {label} | write failed: {e} | | | | | | |");
            continue;
        }
        let model = match TextModel::load(&gguf) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                println!("| {label} | load failed: {e} | | | | | | |");
                continue;
            }
        };
        let s = model.spec();
        let params = s.num_layers
            * (2 * s.hidden_size * s.hidden_size
                + 2 * s.hidden_size * s.num_kv_heads * (s.hidden_size / s.num_heads.max(1))
                + 3 * s.hidden_size * shape.intermediate_size)
            + 2 * s.vocab_size * s.hidden_size;
        let (short, long) = (prompt_of(&model, 38), prompt_of(&model, 512));
        let (t38, tps, _) = single_with(&model, &short, 32);
        let (t512, _, _) = single_with(&model, &long, 2);
        let theirs = llama_cpp_with(&gguf, &short, 32);
        let theirs_long = llama_cpp_with(&gguf, &long, 2);
        // The same prompt as above: some random models write byte tokens
        // that never form UTF-8 after other prompts, and so no pieces.
        let c1 = concurrent_with(&model, 1, &short);
        let c8 = concurrent_with(&model, 8, &short);
        let (l38, ltps) = theirs.as_ref().map_or((f64::NAN, f64::NAN), |r| (r.0, r.1));
        let l512 = theirs_long.as_ref().map_or(f64::NAN, |r| r.0);
        println!(
            "| {label} | {} | {:.2} B | {t38:.0} / {l38:.0} | {t512:.0} / {l512:.0} | {tps:.1} / {ltps:.1} | {:.2}x | {c1:.1} → {c8:.1} ({:.2}x) |",
            s.vocab_size,
            params as f64 / 1e9,
            tps / ltps,
            c8 / c1.max(1e-9)
        );
        drop(model);
        let _ = std::fs::remove_file(&gguf);
    }
}

fn main() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return eprintln!("temp dir: {e}"),
    };
    println!(
        "prompt {PROMPT:?}, greedy, max {MAX_TOKENS} tokens, best of {RUNS} runs after a warm-up"
    );
    let only = std::env::var("SHARENET_BENCH_ONLY").unwrap_or_default();
    for (label, shape, dense) in [
        ("small", TinyConfig::bench(), true),
        ("large", TinyConfig::bench_large(), false),
    ] {
        if (only.is_empty() || only == label)
            && let Err(e) = run(label, shape, dense, dir.path())
        {
            println!("{label} model skipped: {e}");
        }
    }
    if only.is_empty() || only == "real" {
        match smollm2() {
            Some(gguf) => {
                if let Err(e) = real(&gguf) {
                    println!("SmolLM2 skipped: {e}");
                }
            }
            None => {
                println!("\nSmolLM2 skipped: run scripts/fetch-smollm2 (or set SHARENET_SMOLLM2)")
            }
        }
    }
    if only.is_empty() || only == "shapes" {
        shapes(dir.path());
    }
    match embeddings() {
        Ok((b1, b32)) => println!(
            "\nall-MiniLM-L6-v2 embeddings: {b1:.0} sentences/s at batch 1, {b32:.0} sentences/s at batch 32"
        ),
        Err(e) => println!("\nembeddings skipped: {e}"),
    }
}
