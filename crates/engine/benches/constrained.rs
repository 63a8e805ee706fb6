//! Constrained decoding overhead on real weights and a real vocabulary
//! (SmolLM2-135M-Instruct, 49,152 tokens, GGUF Q4_1):
//!
//!     scripts/fetch-smollm2
//!     cargo bench -p sharenet-engine --bench constrained
//!
//! Reports, in one run:
//! - building the vocabulary's token trie and llguidance's factory (once
//!   per model, at load);
//! - compiling a JSON schema and a forced tool-call grammar (per request);
//! - the constraint's own work per token (mask + advance), timed alone by
//!   replaying constrained outputs;
//! - decode speed unconstrained and constrained on the same prompt and
//!   seeds, and the difference per token.
//!
//! The model comes from `SHARENET_SMOLLM2` or
//! `target/test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`; without it the
//! benchmark says how to fetch it and exits.

// A benchmark on files the operator fetched: a failure is a message and a stop.
#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{Value, json};
use sharenet_engine::{Grammar, TextModel, ToolFormat};
use sharenet_proto::{ChatMessage, JobInput, SamplingParams, ToolChoice, ToolSpec, Tools};

const SEEDS: u64 = 6;
const MAX_TOKENS: u32 = 96;

fn model_path() -> PathBuf {
    std::env::var_os("SHARENET_SMOLLM2").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        PathBuf::from,
    )
}

fn person() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"type": "string", "maxLength": 24},
            "languages": {"type": "array", "items": {"enum": ["en", "fr", "de", "es"]}, "maxItems": 4}
        },
        "required": ["name", "age", "city", "languages"],
        "additionalProperties": false
    })
}

fn tools() -> Tools {
    Tools {
        specs: vec![ToolSpec {
            name: "get_weather".into(),
            description: "Current weather in a city".into(),
            parameters: json!({
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 24}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"]
            }),
            strict: true,
        }],
        choice: ToolChoice::Required,
        parallel: false,
    }
}

fn params(seed: u64) -> SamplingParams {
    SamplingParams {
        max_tokens: MAX_TOKENS,
        temperature: 0.8,
        seed: Some(seed),
        // For the drawn token ids (replayed below); on in every run, so
        // the comparison is fair.
        logprobs: true,
        ..SamplingParams::default()
    }
}

/// Decode time per token (ms) over the seeds, the tokens, and the outputs.
fn decode(
    model: &TextModel,
    prompt: &[u32],
    grammar: Option<&Grammar>,
) -> (f64, u32, Vec<Vec<u32>>) {
    let (mut secs, mut tokens) = (0.0, 0u32);
    let mut outputs = Vec::new();
    for seed in 0..SEEDS {
        let constraint = grammar.map(|g| model.constraint(g).expect("compile"));
        let mut ids = Vec::new();
        let mut first = None;
        let mut n = 0u32;
        let mut last = Instant::now();
        model
            .generate_constrained(prompt, &params(seed), constraint, |p| {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                n += p.tokens;
                ids.extend(p.logprobs.iter().map(|l| l.id));
                true
            })
            .expect("generate");
        if let Some(first) = first {
            secs += (last - first).as_secs_f64();
            tokens += n.saturating_sub(1);
        }
        outputs.push(ids);
    }
    (secs * 1e3 / f64::from(tokens.max(1)), tokens, outputs)
}

/// The constraint's own cost per token: replay outputs through a fresh
/// constraint, timing mask + advance only.
fn replay(model: &TextModel, grammar: &Grammar, outputs: &[Vec<u32>]) -> (f64, usize) {
    let vocab = model.spec().vocab_size;
    let mut logits = vec![0f32; vocab];
    let (mut secs, mut n) = (0.0, 0usize);
    for out in outputs {
        let mut c = model.constraint(grammar).expect("compile");
        for &t in out {
            let start = Instant::now();
            if c.mask(&mut logits).is_err() {
                break;
            }
            let allowed = logits.get(t as usize).is_some_and(|l| l.is_finite());
            if !allowed || c.commit(t).is_err() {
                break;
            }
            secs += start.elapsed().as_secs_f64();
            n += 1;
            logits.iter_mut().for_each(|l| *l = 0.0);
            if c.is_done() {
                break;
            }
        }
    }
    (secs * 1e6 / n.max(1) as f64, n)
}

fn main() {
    let path = model_path();
    if !path.exists() {
        println!(
            "skipped: {} is missing; run scripts/fetch-smollm2 (or set SHARENET_SMOLLM2)",
            path.display()
        );
        return;
    }
    let model = TextModel::load(&path).expect("load SmolLM2");
    println!(
        "model: {} ({} tokens in the vocabulary)",
        path.display(),
        model.spec().vocab_size
    );
    let schema = Grammar::JsonSchema(person());
    let start = Instant::now();
    model.constraint(&schema).expect("first constraint");
    let first_ms = start.elapsed().as_secs_f64() * 1e3;
    let time = |g: &Grammar| {
        let start = Instant::now();
        for _ in 0..10 {
            model.constraint(g).expect("compile");
        }
        start.elapsed().as_secs_f64() * 1e3 / 10.0
    };
    let tool_grammar = Grammar::Lark(ToolFormat::Hermes.forced_call_grammar(&tools()));
    let schema_ms = time(&schema);
    let tool_ms = time(&tool_grammar);

    let chat = JobInput::Chat {
        messages: vec![ChatMessage::new(
            "user",
            "Invent a person: name, age, city and the languages they speak, as JSON.",
        )],
    };
    let prompt = model.encode_input(&chat).expect("prompt");
    // Warm up caches and the allocator once.
    let _ = decode(&model, &prompt, None);
    let (free_ms, free_n, _) = decode(&model, &prompt, None);
    let (json_ms, json_n, json_out) = decode(&model, &prompt, Some(&schema));
    let (mask_us, mask_n) = replay(&model, &schema, &json_out);
    let (tool_dec_ms, tool_n, tool_out) = decode(&model, &prompt, Some(&tool_grammar));
    let (tool_mask_us, tool_mask_n) = replay(&model, &tool_grammar, &tool_out);

    println!();
    println!("| what | value |");
    println!("| --- | --- |");
    println!("| token trie + factory, once per model (first constraint) | {first_ms:.1} ms |");
    println!("| compile the person schema, per request | {schema_ms:.2} ms |");
    println!("| compile a forced get_weather call (Hermes), per request | {tool_ms:.2} ms |");
    println!(
        "| constraint work per token, person schema (mask + advance, {mask_n} tokens) | {mask_us:.1} µs |"
    );
    println!(
        "| constraint work per token, forced call ({tool_mask_n} tokens) | {tool_mask_us:.1} µs |"
    );
    println!(
        "| decode, unconstrained ({free_n} tokens over {SEEDS} seeds) | {free_ms:.2} ms/token |"
    );
    println!(
        "| decode, person schema ({json_n} tokens) | {json_ms:.2} ms/token ({:+.1}%) |",
        (json_ms / free_ms - 1.0) * 100.0
    );
    println!(
        "| decode, forced call ({tool_n} tokens) | {tool_dec_ms:.2} ms/token ({:+.1}%) |",
        (tool_dec_ms / free_ms - 1.0) * 100.0
    );
}
