//! `sharenet-fuzz`: mutation fuzzing, on stable Rust, of every decoder
//! that reads bytes a peer, a node, a builder or a file controls.
//!
//! Each target starts from valid encodings (a signed advert, receipts, a
//! statement, job frames, OpenAI bodies, a GGUF file) and feeds the decoder
//! mutants of them (bit flips, byte swaps, truncations, extensions, length
//! fields overwritten with huge values, splices of two seeds) and plain
//! random bytes, deterministically from `--seed`. Every decode runs under
//! `catch_unwind`; a guard allocator records the largest single allocation
//! each decode asks for, and an allocation over `--max-alloc-mib` for an
//! input of at most 64 KiB counts as an over-allocation (a decoder that
//! trusted a length field). A mutant that still decodes *and verifies*
//! would be a forged signature, and is counted too.
//!
//! `cargo run --release -p sharenet-fuzz -- --iterations 200000`
//! Exit status 1 when any target panicked, over-allocated or accepted a
//! forgery. Not part of CI (it runs for minutes); the figures are in
//! BENCHMARKS.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sharenet_api::openai::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest};
use sharenet_coordinator::http::request::{chat_job, completion_job, embedding_job, parse_body};
use sharenet_market::{Entry, Margin, Period, SignedStatement};
use sharenet_proto::{
    Advert, ChatMessage, CountersignedReceipt, FinishReason, JobEvent, JobId, JobInput, JobRequest,
    MAX_FRAME_BYTES, ModelKind, ModelOffer, Receipt, SamplingParams, SignedAdvert, SignedReceipt,
    SigningKey, Usage, job_cost, public_key_of, sha256,
};

/// Records the largest single allocation since the last reset.
struct Guard;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Guard = Guard;

#[derive(Parser)]
#[command(
    name = "sharenet-fuzz",
    about = "Mutation-fuzz sharenet's decoders of untrusted bytes"
)]
struct Cli {
    /// Inputs per target.
    #[arg(long, default_value_t = 100_000)]
    iterations: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A single allocation above this (MiB) for an input of at most 64 KiB
    /// counts as an over-allocation.
    #[arg(long, default_value_t = 16)]
    max_alloc_mib: usize,
    /// Only the targets whose name contains this.
    #[arg(long)]
    only: Option<String>,
}

/// What one decode did.
enum Outcome {
    Rejected,
    /// Decoded (for signed objects: and verified).
    Accepted,
}

/// A decoder: the bytes in, what it made of them.
type Decoder = Box<dyn Fn(&[u8]) -> Outcome>;

/// A decoder under test.
struct Target {
    name: &'static str,
    /// Valid encodings to mutate.
    seeds: Vec<Vec<u8>>,
    /// Whether an accepted mutant would be a forgery (signed objects).
    signed: bool,
    decode: Decoder,
}

#[derive(Default)]
struct Tally {
    inputs: u64,
    accepted: u64,
    panics: u64,
    over_allocations: u64,
    forgeries: u64,
    largest: usize,
}

fn outcome<T, E>(r: Result<T, E>) -> Outcome {
    match r {
        Ok(_) => Outcome::Accepted,
        Err(_) => Outcome::Rejected,
    }
}

fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.random_range(0..seeds.len())].clone();
    let rounds = rng.random_range(1..=4);
    for _ in 0..rounds {
        match rng.random_range(0..9) {
            // Flip a bit.
            0 | 1 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] ^= 1 << rng.random_range(0..8);
            }
            // Replace a byte.
            2 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
            }
            // Truncate.
            3 if !v.is_empty() => {
                let n = rng.random_range(0..v.len());
                v.truncate(n);
            }
            // Extend with random bytes.
            4 => {
                let n = rng.random_range(1..64);
                v.extend((0..n).map(|_| rng.random::<u8>()));
            }
            // A length field: a big-endian or little-endian u16/u32/u64 of a
            // huge or boundary value somewhere.
            5 | 6 if v.len() >= 8 => {
                let width = [2usize, 4, 8][rng.random_range(0..3)];
                let i = rng.random_range(0..=v.len() - width);
                let value: u64 = [u64::MAX, u64::from(u32::MAX), 1 << 31, 1 << 20, 0, 65_535]
                    [rng.random_range(0..6)];
                let bytes = if rng.random_bool(0.5) {
                    value.to_be_bytes()
                } else {
                    value.to_le_bytes()
                };
                let take = if rng.random_bool(0.5) {
                    &bytes[8 - width..]
                } else {
                    &bytes[..width]
                };
                v[i..i + width].copy_from_slice(take);
            }
            // Splice with another seed.
            7 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                if !other.is_empty() && !v.is_empty() {
                    let cut = rng.random_range(0..v.len());
                    let from = rng.random_range(0..other.len());
                    v.truncate(cut);
                    v.extend_from_slice(&other[from..]);
                }
            }
            // Duplicate a slice in place.
            _ if v.len() >= 2 => {
                let a = rng.random_range(0..v.len() - 1);
                let b = rng.random_range(a + 1..=v.len());
                let piece = v[a..b].to_vec();
                let at = rng.random_range(0..=v.len());
                v.splice(at..at, piece);
            }
            _ => {}
        }
    }
    v
}

fn run_target(t: &Target, cli: &Cli, bar: &indicatif::ProgressBar) -> Tally {
    let mut rng = StdRng::seed_from_u64(cli.seed ^ sha256(t.name.as_bytes())[0] as u64);
    let limit = cli.max_alloc_mib << 20;
    let mut tally = Tally::default();
    for i in 0..cli.iterations {
        let input = if i % 10 == 9 {
            let n = rng.random_range(0..512);
            (0..n).map(|_| rng.random::<u8>()).collect()
        } else {
            mutate(&mut rng, &t.seeds)
        };
        if t.seeds.contains(&input) {
            continue;
        }
        LARGEST.store(0, Ordering::Relaxed);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| (t.decode)(&input)));
        let largest = LARGEST.load(Ordering::Relaxed);
        tally.inputs += 1;
        tally.largest = tally.largest.max(largest);
        if input.len() <= 64 << 10 && largest > limit {
            tally.over_allocations += 1;
        }
        match result {
            Err(_) => tally.panics += 1,
            Ok(Outcome::Accepted) => {
                tally.accepted += 1;
                if t.signed {
                    tally.forgeries += 1;
                }
            }
            Ok(Outcome::Rejected) => {}
        }
        if i % 1024 == 0 {
            bar.set_position(i);
        }
    }
    bar.set_position(cli.iterations);
    tally
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Panics are counted, not printed.
    std::panic::set_hook(Box::new(|_| {}));
    let targets = targets()?;
    println!(
        "| target | inputs | decoded | panics | over-allocations (> {} MiB) | forgeries | largest allocation |",
        cli.max_alloc_mib
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut bad = false;
    for t in &targets {
        if cli.only.as_deref().is_some_and(|o| !t.name.contains(o)) {
            continue;
        }
        let bar = indicatif::ProgressBar::new(cli.iterations);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:>24} {wide_bar} {pos}/{len} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(t.name);
        let started = Instant::now();
        let tally = run_target(t, &cli, &bar);
        bar.finish_and_clear();
        bad |= tally.panics > 0 || tally.over_allocations > 0 || tally.forgeries > 0;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} KiB ({:.1} s) |",
            t.name,
            tally.inputs,
            tally.accepted,
            tally.panics,
            tally.over_allocations,
            if t.signed {
                tally.forgeries.to_string()
            } else {
                "n/a".into()
            },
            tally.largest >> 10,
            started.elapsed().as_secs_f64()
        );
    }
    if bad {
        std::process::exit(1);
    }
    Ok(())
}

// ---- the targets and their seeds ----

fn node_key() -> SigningKey {
    SigningKey::from_bytes(&[11; 32])
}

fn coordinator_key() -> SigningKey {
    SigningKey::from_bytes(&[22; 32])
}

fn receipt(job: u8, input: u32, output: u32) -> anyhow::Result<SignedReceipt> {
    let r = Receipt {
        job_id: JobId([job; 16]),
        node: public_key_of(&node_key()),
        coordinator: public_key_of(&coordinator_key()),
        model: "llama-3.1-8b".into(),
        input_tokens: input,
        output_tokens: output,
        price_in: 100,
        price_out: 300,
        amount: job_cost(input, output, 100, 300)?,
        started_at_ms: 1_700_000_000_000,
        finished_at_ms: 1_700_000_001_000,
        request_digest: sha256(b"request"),
        response_digest: sha256(b"response"),
    };
    Ok(SignedReceipt::sign(r, &node_key())?)
}

fn advert() -> anyhow::Result<Vec<u8>> {
    let offer = |id: &str, kind| ModelOffer {
        id: id.into(),
        price_in: 100,
        price_out: 300,
        context_length: 8192,
        kind,
        quantization: "Q8_0".into(),
        tokens_per_sec: 40,
        weights_sha256: Some([7; 32]),
        capabilities: Default::default(),
        license: String::new(),
        canonical: String::new(),
    };
    let advert = Advert {
        node: public_key_of(&node_key()),
        models: vec![
            offer("llama-3.1-8b", ModelKind::Text),
            offer("minilm", ModelKind::Embedding),
        ],
        gpus: Vec::new(),
        region: "eu".into(),
        relayed: false,
        keeps_prompts: false,
        max_concurrency: 4,
        queue_depth: 1,
        seq: 7,
        issued_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_030_000,
    };
    Ok(SignedAdvert::sign(advert, &node_key())?.to_bytes())
}

fn job_frames() -> anyhow::Result<Vec<Vec<u8>>> {
    let request = JobRequest {
        job_id: JobId([1; 16]),
        coordinator: public_key_of(&coordinator_key()),
        model: "llama-3.1-8b".into(),
        input: JobInput::Chat {
            messages: vec![ChatMessage::new("user", "Hello there")],
        },
        params: SamplingParams {
            max_tokens: 64,
            stop: vec!["\n\n".into()],
            ..SamplingParams::default()
        },
        tools: None,
        response_format: None,
        traceparent: None,
    };
    let events = [
        JobEvent::Delta {
            text: "Hel".into(),
            tokens: 1,
            ids: Vec::new(),
            logprobs: Vec::new(),
            tool_calls: Vec::new(),
            receipt: Some(receipt(1, 5, 1)?.to_bytes()),
        },
        JobEvent::Embeddings {
            data: vec![vec![0.25, -1.0, 3.5]],
        },
        JobEvent::Done {
            finish_reason: FinishReason::Stop,
            usage: Usage {
                input_tokens: 5,
                output_tokens: 2,
            },
            receipt: receipt(1, 5, 2)?.to_bytes(),
        },
    ];
    let mut out = vec![serde_json::to_vec(&request)?];
    for e in &events {
        out.push(serde_json::to_vec(e)?);
    }
    Ok(out)
}

fn settlement() -> anyhow::Result<sharenet_market::Settlement> {
    let entries = (1..=3)
        .map(|i| {
            let c = CountersignedReceipt::countersign(receipt(i, 10, 20)?, &coordinator_key())?;
            Ok(Entry::new(
                &c,
                "app",
                Some("cust".into()),
                500,
                &Margin {
                    percent_bps: 1000,
                    per_mtok: 0,
                },
            )?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let period = Period {
        start_ms: 1_700_000_000_000,
        end_ms: 1_700_086_400_000,
    };
    Ok(sharenet_market::statement::settle(
        period,
        &coordinator_key(),
        &entries,
    )?)
}

/// A small GGUF file with real metadata (the loader's first read).
fn gguf() -> anyhow::Result<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("sharenet-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("tiny.gguf");
    sharenet_engine_tiny::write(&path)?;
    let bytes = std::fs::read(&path)?;
    let _ = std::fs::remove_dir_all(&dir);
    // The metadata is at the front; the tensors behind it are not parsed
    // by `Content::read`.
    Ok(bytes[..bytes.len().min(64 << 10)].to_vec())
}

/// The GGUF writer lives in the engine's test-model module; keep the
/// dependency to this one function.
mod sharenet_engine_tiny {
    pub fn write(path: &std::path::Path) -> anyhow::Result<()> {
        use candle_core::quantized::gguf_file;
        let md: Vec<(&str, gguf_file::Value)> = vec![
            (
                "general.architecture",
                gguf_file::Value::String("llama".into()),
            ),
            ("llama.context_length", gguf_file::Value::U32(2048)),
            ("llama.embedding_length", gguf_file::Value::U32(64)),
            (
                "tokenizer.ggml.tokens",
                gguf_file::Value::Array(
                    (0..32)
                        .map(|i| gguf_file::Value::String(format!("tok{i}")))
                        .collect(),
                ),
            ),
            (
                "tokenizer.chat_template",
                gguf_file::Value::String("{{ messages }}".into()),
            ),
        ];
        let refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
        let mut file = std::fs::File::create(path)?;
        gguf_file::write(&mut file, &refs, &[])?;
        Ok(())
    }
}

fn targets() -> anyhow::Result<Vec<Target>> {
    let receipts: Vec<Vec<u8>> = (1..=3)
        .map(|i| receipt(i, 10 * u32::from(i), 3).map(|r| r.to_bytes()))
        .collect::<anyhow::Result<_>>()?;
    let countersigned: Vec<Vec<u8>> = (1..=3)
        .map(|i| {
            let c = CountersignedReceipt::countersign(receipt(i, 7, 9)?, &coordinator_key())?;
            Ok(c.to_bytes())
        })
        .collect::<anyhow::Result<_>>()?;
    let frames = job_frames()?;
    let settled = settlement()?;
    let statement_bytes = settled.signed().to_bytes();
    let chat = vec![
        br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":16,"stream":true,"stream_options":{"include_usage":true},"stop":["a","b"],"provider":{"order":["abababababababababababababababababababababababababababababababab"],"max_price":{"prompt":1,"completion":2}},"models":["x","y"]}"#.to_vec(),
        br#"{"model":"m","messages":[{"role":"system","content":[{"type":"text","text":"be brief"}]},{"role":"user","content":"hello"}],"top_k":5,"min_p":0.1,"logprobs":true,"top_logprobs":3,"seed":9}"#.to_vec(),
    ];
    let completions = vec![
        br#"{"model":"m","prompt":"Once upon","max_tokens":8,"logprobs":2,"stop":"\n","temperature":0.5}"#.to_vec(),
    ];
    let embeddings =
        vec![br#"{"model":"e","input":["a","bb","ccc"],"encoding_format":"base64"}"#.to_vec()];
    let bundle = {
        let b = sharenet_api::statements::StatementBundle {
            object: "statement_bundle".into(),
            label: "2026-11".into(),
            signed_statement: statement_bytes.clone(),
            leaves: vec![sharenet_api::statements::BundleLeaf {
                job_id: [1; 16],
                node: public_key_of(&node_key()),
                amount: 3000,
                leaf: [9; 32],
            }],
        };
        vec![serde_json::to_vec(&b)?]
    };
    let frame_seeds: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let mut v = (f.len() as u32).to_be_bytes().to_vec();
            v.extend_from_slice(f);
            v
        })
        .collect();
    Ok(vec![
        Target {
            name: "signed advert",
            seeds: vec![advert()?],
            signed: true,
            decode: Box::new(|b| outcome(SignedAdvert::from_bytes(b))),
        },
        Target {
            name: "signed receipt",
            seeds: receipts,
            signed: true,
            decode: Box::new(|b| outcome(SignedReceipt::from_bytes(b))),
        },
        Target {
            name: "countersigned receipt",
            seeds: countersigned,
            signed: true,
            decode: Box::new(|b| outcome(CountersignedReceipt::from_bytes(b))),
        },
        Target {
            name: "signed statement",
            seeds: vec![settled.signed().to_bytes()],
            signed: true,
            decode: Box::new(|b| outcome(SignedStatement::from_bytes(b))),
        },
        Target {
            // A mutant that fits the signed builders root is a forgery.
            name: "builder lines",
            seeds: vec![settled.lines_bytes()],
            signed: true,
            decode: Box::new(move |b| {
                outcome(sharenet_market::Settlement::from_parts(&statement_bytes, b))
            }),
        },
        Target {
            name: "frame",
            seeds: frame_seeds,
            signed: false,
            decode: Box::new(|b| {
                let mut cursor = futures::io::Cursor::new(b.to_vec());
                outcome(futures::executor::block_on(sharenet_p2p::read_frame(
                    &mut cursor,
                    MAX_FRAME_BYTES,
                )))
            }),
        },
        Target {
            name: "job request",
            seeds: frames[..1].to_vec(),
            signed: false,
            decode: Box::new(|b| {
                outcome(
                    serde_json::from_slice::<JobRequest>(b)
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.validate().map_err(|e| e.to_string())),
                )
            }),
        },
        Target {
            name: "job event",
            seeds: frames[1..].to_vec(),
            signed: false,
            decode: Box::new(|b| outcome(serde_json::from_slice::<JobEvent>(b))),
        },
        Target {
            name: "chat request",
            seeds: chat,
            signed: false,
            decode: Box::new(|b| {
                outcome(parse_body::<ChatCompletionRequest>(b).and_then(chat_job))
            }),
        },
        Target {
            name: "completion request",
            seeds: completions,
            signed: false,
            decode: Box::new(|b| {
                outcome(parse_body::<CompletionRequest>(b).and_then(completion_job))
            }),
        },
        Target {
            name: "embedding request",
            seeds: embeddings,
            signed: false,
            decode: Box::new(|b| {
                outcome(parse_body::<EmbeddingRequest>(b).and_then(embedding_job))
            }),
        },
        Target {
            name: "statement bundle",
            seeds: bundle,
            signed: false,
            decode: Box::new(|b| {
                outcome(serde_json::from_slice::<
                    sharenet_api::statements::StatementBundle,
                >(b))
            }),
        },
        Target {
            name: "gguf metadata",
            seeds: vec![gguf()?],
            signed: false,
            decode: Box::new(|b| {
                let mut cursor = std::io::Cursor::new(b);
                outcome(candle_core::quantized::gguf_file::Content::read(
                    &mut cursor,
                ))
            }),
        },
        Target {
            // The coordinator's own reader (catalog: a model added from
            // an operator's file), which links no candle.
            name: "gguf metadata (sharenet-prompt)",
            seeds: vec![gguf()?],
            signed: false,
            decode: Box::new(|b| {
                outcome(sharenet_prompt::gguf::Metadata::parse(b, b.len() as u64))
            }),
        },
    ])
}
