//! The engine end to end on generated models in every supported format:
//! loading, chat templates, sampling rules, logprobs, and the batching
//! scheduler (concurrency, cancellation, saturation).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::quantized::GgmlDType;
use sharenet_engine::tiny::{self, TinyConfig};
use sharenet_engine::{
    Arch, Generation, Scheduler, SchedulerConfig, SeqEvent, SubmitError, TextModel,
};
use sharenet_proto::{ChatMessage, FinishReason, JobInput, SamplingParams, TokenLogprob};

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn safetensors(arch: Arch) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let shape = TinyConfig {
        arch,
        ..TinyConfig::default()
    };
    tiny::write_tiny_model(dir.path(), 7, shape).unwrap();
    let path = dir.path().to_path_buf();
    Fixture { _dir: dir, path }
}

fn gguf(arch: Arch, dtype: GgmlDType) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let shape = TinyConfig {
        arch,
        ..TinyConfig::default()
    };
    tiny::write_tiny_gguf(&path, 7, shape, dtype).unwrap();
    Fixture { _dir: dir, path }
}

fn chat(text: &str) -> JobInput {
    JobInput::Chat {
        messages: vec![ChatMessage::new("user", text)],
    }
}

fn params(seed: u64, max_tokens: u32) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature: 0.8,
        top_p: 0.95,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

struct Out {
    text: String,
    tokens: u32,
    logprobs: Vec<TokenLogprob>,
    generation: Generation,
}

fn run(model: &TextModel, input: &JobInput, p: &SamplingParams) -> Out {
    let prompt = model.encode_input(input).unwrap();
    let (mut text, mut tokens, mut logprobs) = (String::new(), 0, Vec::new());
    let generation = model
        .generate(&prompt, p, |piece| {
            text.push_str(&piece.text);
            tokens += piece.tokens;
            logprobs.extend(piece.logprobs);
            true
        })
        .unwrap();
    assert_eq!(tokens, generation.completion_tokens);
    Out {
        text,
        tokens,
        logprobs,
        generation,
    }
}

#[test]
fn every_architecture_and_format_loads_and_generates_deterministically() {
    let fixtures = [
        ("llama safetensors", safetensors(Arch::Llama)),
        ("mistral safetensors", safetensors(Arch::Mistral)),
        ("qwen2 safetensors", safetensors(Arch::Qwen2)),
        ("llama gguf q8_0", gguf(Arch::Llama, GgmlDType::Q8_0)),
        ("llama gguf q4_0", gguf(Arch::Llama, GgmlDType::Q4_0)),
        ("qwen2 gguf q8_0", gguf(Arch::Qwen2, GgmlDType::Q8_0)),
        ("mistral gguf f16", gguf(Arch::Mistral, GgmlDType::F16)),
    ];
    for (name, f) in &fixtures {
        let model = TextModel::load(&f.path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let p = params(42, 24);
        let a = run(&model, &chat("Hello there"), &p);
        let b = run(&model, &chat("Hello there"), &p);
        assert_eq!(a.text, b.text, "{name}: same seed, same text");
        assert_eq!(a.generation, b.generation, "{name}");
        assert!(
            a.tokens >= 1 && a.tokens <= 24,
            "{name}: {} tokens",
            a.tokens
        );
        let c = run(&model, &chat("Hello there"), &params(43, 24));
        assert!(
            c.text != a.text || c.tokens != a.tokens,
            "{name}: another seed should change the output"
        );
    }
}

#[test]
fn gguf_and_safetensors_of_the_same_shape_report_their_format_and_hash() {
    let f = gguf(Arch::Qwen2, GgmlDType::Q8_0);
    let model = TextModel::load(&f.path).unwrap();
    assert_eq!(model.spec().arch, Arch::Qwen2);
    assert!(
        matches!(model.format(), sharenet_engine::WeightsFormat::Gguf { dtype } if dtype == "Q8_0")
    );
    let bytes = std::fs::read(&f.path).unwrap();
    assert_eq!(model.weights_sha256(), sharenet_proto::sha256(&bytes));
    let s = safetensors(Arch::Llama);
    let model = TextModel::load(&s.path).unwrap();
    let bytes = std::fs::read(s.path.join("model.safetensors")).unwrap();
    assert_eq!(model.weights_sha256(), sharenet_proto::sha256(&bytes));
}

#[test]
fn chat_uses_the_models_own_template_or_the_fallback() {
    let qwen = safetensors(Arch::Qwen2);
    let model = TextModel::load(&qwen.path).unwrap();
    assert!(model.has_chat_template());
    let ids = model.encode_input(&chat("hi")).unwrap();
    let text = model.decode(&ids).unwrap();
    // Special tokens are dropped by decode; the template's newlines stay.
    assert_eq!(text, "user\nhi\nassistant\n");
    assert_eq!(
        ids[0],
        tiny::EOS + 1,
        "ChatML starts with <|im_start|>, no BOS"
    );

    let mistral = gguf(Arch::Mistral, GgmlDType::Q8_0);
    let model = TextModel::load(&mistral.path).unwrap();
    let ids = model.encode_input(&chat("hi")).unwrap();
    assert_eq!(ids[0], tiny::BOS, "bos_token from the template, once");
    assert_ne!(ids[1], tiny::BOS);
    assert_eq!(model.decode(&ids).unwrap(), "[INST] hi [/INST]");
    let err = model
        .encode_input(&JobInput::Chat {
            messages: vec![ChatMessage::new("system", "x")],
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("Only user and assistant roles"), "{err}");

    let llama = safetensors(Arch::Llama);
    let model = TextModel::load(&llama.path).unwrap();
    assert!(!model.has_chat_template());
    let ids = model.encode_input(&chat("hi")).unwrap();
    assert_eq!(model.decode(&ids).unwrap(), "<|user|>\nhi\n<|assistant|>\n");
}

#[test]
fn stop_sequences_and_max_tokens_behave_as_openai_documents() {
    let f = safetensors(Arch::Llama);
    let model = TextModel::load(&f.path).unwrap();
    let greedy = SamplingParams {
        temperature: 0.0,
        ..params(1, 40)
    };
    let full = run(&model, &chat("tell me"), &greedy);
    assert!(full.text.len() > 12, "{:?}", full.text);
    // A stop string from the middle of the text: output ends right before it.
    let stop: String = full.text.chars().skip(5).take(3).collect();
    let cut = full.text.find(&stop).unwrap();
    let stopped = run(
        &model,
        &chat("tell me"),
        &SamplingParams {
            stop: vec![stop.clone()],
            ..greedy.clone()
        },
    );
    assert_eq!(stopped.text, full.text[..cut], "stop {stop:?}");
    assert_eq!(stopped.generation.finish_reason, FinishReason::Stop);
    // max_tokens caps the completion and says so.
    let short = run(
        &model,
        &chat("tell me"),
        &SamplingParams {
            max_tokens: 5,
            ..greedy.clone()
        },
    );
    assert_eq!(short.generation.completion_tokens, 5);
    assert_eq!(short.generation.finish_reason, FinishReason::Length);
    assert!(full.text.starts_with(&short.text));
}

#[test]
fn logprobs_are_per_token_with_sorted_alternatives() {
    let f = gguf(Arch::Llama, GgmlDType::Q8_0);
    let model = TextModel::load(&f.path).unwrap();
    let p = SamplingParams {
        temperature: 0.0,
        logprobs: true,
        top_logprobs: 3,
        ..params(1, 16)
    };
    let out = run(&model, &chat("hi"), &p);
    let eos = u32::from(out.generation.finish_reason == FinishReason::Stop);
    assert_eq!(out.logprobs.len() as u32 + eos, out.tokens);
    let joined: Vec<u8> = out.logprobs.iter().flat_map(|l| l.bytes.clone()).collect();
    assert_eq!(String::from_utf8_lossy(&joined), out.text);
    for lp in &out.logprobs {
        assert!(lp.logprob <= 0.0);
        assert_eq!(lp.top.len(), 3);
        // Greedy: the chosen token is the likeliest.
        assert_eq!(lp.top[0].id, lp.id);
        assert!((lp.top[0].logprob - lp.logprob).abs() < 1e-6);
        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
    }
    // Without the flag, none.
    let plain = run(
        &model,
        &chat("hi"),
        &SamplingParams {
            logprobs: false,
            top_logprobs: 0,
            ..p
        },
    );
    assert!(plain.logprobs.is_empty());
}

#[test]
fn bad_files_are_errors_naming_the_file() {
    let f = safetensors(Arch::Llama);
    let weights = f.path.join("model.safetensors");
    let good = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, b"garbage").unwrap();
    let err = TextModel::load(&f.path).err().unwrap().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::write(&weights, good).unwrap();

    // A config that disagrees with the weights' shapes.
    let config_path = f.path.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        config.replace("\"intermediate_size\": 128", "\"intermediate_size\": 96"),
    )
    .unwrap();
    let err = TextModel::load(&f.path).err().unwrap().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("shape"),
        "{err}"
    );
    std::fs::write(&config_path, config.replace("\"llama\"", "\"gpt2\"")).unwrap();
    let err = TextModel::load(&f.path).err().unwrap().to_string();
    assert!(
        err.contains("config.json") && err.contains("unsupported"),
        "{err}"
    );
    std::fs::write(&config_path, config).unwrap();

    std::fs::remove_file(f.path.join("tokenizer.json")).unwrap();
    let err = TextModel::load(&f.path).err().unwrap().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");

    let g = gguf(Arch::Llama, GgmlDType::Q8_0);
    let bytes = std::fs::read(&g.path).unwrap();
    std::fs::write(&g.path, &bytes[..bytes.len() / 2]).unwrap();
    let err = TextModel::load(&g.path).err().unwrap().to_string();
    assert!(err.contains("model.gguf"), "{err}");
    let err = TextModel::load(Path::new("/nonexistent/model.gguf"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
}

fn scheduler(path: &Path, max_concurrency: usize, max_queue: usize) -> Scheduler {
    let model = Arc::new(TextModel::load(path).unwrap());
    Scheduler::start(
        model,
        SchedulerConfig {
            max_concurrency,
            max_queue,
            kv_cache_bytes: 64 << 20,
        },
        Box::new(|| {}),
    )
    .unwrap()
}

/// Drains a job's events: (text, generation).
fn collect(mut handle: sharenet_engine::JobHandle) -> (String, Generation) {
    let mut text = String::new();
    while let Some(ev) = handle.events.blocking_recv() {
        match ev {
            SeqEvent::Piece(p) => text.push_str(&p.text),
            SeqEvent::Done(g) => return (text, g),
            SeqEvent::Failed(e) => panic!("job failed: {e}"),
        }
    }
    panic!("events ended without Done");
}

#[test]
fn sixteen_concurrent_jobs_equal_the_same_jobs_run_alone() {
    for f in [safetensors(Arch::Qwen2), gguf(Arch::Llama, GgmlDType::Q8_0)] {
        let sched = scheduler(&f.path, 16, 16);
        let model = sched.model().clone();
        let jobs: Vec<(JobInput, SamplingParams)> = (0..16u64)
            .map(|i| {
                let input = chat(&format!("request number {i}"));
                let mut p = params(100 + i, 8 + (i as u32 % 5) * 6);
                p.temperature = if i % 4 == 0 { 0.0 } else { 0.9 };
                (input, p)
            })
            .collect();
        let alone: Vec<(String, Generation)> = jobs
            .iter()
            .map(|(input, p)| {
                let o = run(&model, input, p);
                (o.text, o.generation)
            })
            .collect();
        let handles: Vec<_> = jobs
            .iter()
            .map(|(input, p)| {
                let prompt = model.encode_input(input).unwrap();
                sched.submit(prompt, p.clone()).unwrap()
            })
            .collect();
        let together: Vec<(String, Generation)> = std::thread::scope(|s| {
            let threads: Vec<_> = handles
                .into_iter()
                .map(|h| s.spawn(move || collect(h)))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(together, alone, "{}", f.path.display());
    }
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn saturation_refuses_and_cancellation_frees_the_slot() {
    let f = safetensors(Arch::Llama);
    let sched = scheduler(&f.path, 1, 1);
    let model = sched.model().clone();
    let prompt = model.encode_input(&chat("go")).unwrap();
    let long = SamplingParams {
        max_tokens: 2000,
        temperature: 0.0,
        ..SamplingParams::default()
    };
    let mut first = sched.submit(prompt.clone(), long.clone()).unwrap();
    // Wait until it is generating, so the next job queues behind it.
    assert!(matches!(
        first.events.blocking_recv(),
        Some(SeqEvent::Piece(_))
    ));
    let queued = sched.submit(prompt.clone(), long.clone()).unwrap();
    wait_until("one running, one waiting", || {
        let l = sched.load();
        l.running == 1 && l.waiting == 1
    });
    match sched.submit(prompt.clone(), long.clone()) {
        Err(e @ SubmitError::Saturated { .. }) => {
            assert_eq!(e.to_string(), "all 1 slots and 1 queue places are taken")
        }
        other => panic!("expected saturation, got {:?}", other.map(|_| ())),
    }
    // Dropping the running job cancels it; the queued one gets the slot.
    drop(first);
    let mut queued = queued;
    assert!(matches!(
        queued.events.blocking_recv(),
        Some(SeqEvent::Piece(_))
    ));
    wait_until("queue empty", || sched.load().waiting == 0);
    drop(queued);
    wait_until("idle", || {
        let l = sched.load();
        l.running == 0 && l.kv_used_bytes == 0
    });
    let (_, g) = collect(
        sched
            .submit(
                prompt,
                SamplingParams {
                    max_tokens: 3,
                    ..long
                },
            )
            .unwrap(),
    );
    assert_eq!(g.completion_tokens, 3);
}

#[test]
fn a_job_larger_than_the_kv_budget_is_refused_up_front() {
    let f = safetensors(Arch::Llama);
    let model = Arc::new(TextModel::load(&f.path).unwrap());
    let per_token = model.kv_bytes_per_token();
    let sched = Scheduler::start(
        model.clone(),
        SchedulerConfig {
            max_concurrency: 4,
            max_queue: 4,
            kv_cache_bytes: per_token * 100,
        },
        Box::new(|| {}),
    )
    .unwrap();
    let prompt = model.encode_input(&chat("go")).unwrap();
    let err = sched
        .submit(
            prompt.clone(),
            SamplingParams {
                max_tokens: 500,
                ..SamplingParams::default()
            },
        )
        .err()
        .unwrap();
    assert!(matches!(err, SubmitError::TooLarge { .. }), "{err}");
    let (_, g) = collect(
        sched
            .submit(
                prompt,
                SamplingParams {
                    max_tokens: 10,
                    ..SamplingParams::default()
                },
            )
            .unwrap(),
    );
    assert!(g.completion_tokens <= 10);
}

/// A long prompt goes in a chunk at a time, round robin with other
/// prompts and between decode steps (issue 12, item 10): a short job
/// submitted right after a long one finishes well before it, and the long
/// one's output equals its run alone.
#[test]
fn a_long_prompt_does_not_hold_up_a_short_one() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_tiny_llama(dir.path(), 3, TinyConfig::default()).unwrap();
    let model = Arc::new(TextModel::load(dir.path()).unwrap());
    let long_prompt: Vec<u32> = (0..1800u32).map(|i| 3 + (i * 7 % 200)).collect();
    let one_token = SamplingParams {
        max_tokens: 1,
        temperature: 0.0,
        ..SamplingParams::default()
    };
    let mut alone = String::new();
    model
        .generate(&long_prompt, &one_token, |p| {
            alone.push_str(&p.text);
            true
        })
        .unwrap();
    let sched = Scheduler::start(
        model.clone(),
        SchedulerConfig {
            max_concurrency: 4,
            max_queue: 4,
            kv_cache_bytes: 256 << 20,
        },
        Box::new(|| {}),
    )
    .unwrap();
    let long = sched.submit(long_prompt, one_token.clone()).unwrap();
    let short = sched.submit(vec![3, 4, 5], one_token).unwrap();
    let done_at = |handle| {
        std::thread::spawn(move || {
            let (text, _) = collect(handle);
            (text, Instant::now())
        })
    };
    let (long, short) = (done_at(long), done_at(short));
    let (long_text, long_done) = long.join().unwrap();
    let (_, short_done) = short.join().unwrap();
    // Before, the long prompt went in whole, and the short job waited for it.
    assert!(
        short_done < long_done,
        "the short job was held behind the long prompt"
    );
    assert_eq!(long_text, alone, "chunked prefill gives the same output");
}

/// OpenAI's `logit_bias`: +100 all but forces a token, -100 bans one, and
/// a token id outside the vocabulary is an invalid request.
#[test]
fn logit_bias_forces_and_bans_tokens() {
    let llama = safetensors(Arch::Llama);
    let model = TextModel::load(&llama.path).unwrap();
    let greedy = SamplingParams {
        max_tokens: 6,
        temperature: 0.0,
        logprobs: true,
        ..SamplingParams::default()
    };
    let plain = run(&model, &chat("hi"), &greedy);
    let first = plain.logprobs[0].id;
    // 'z' (byte-level token 0x7a) forced.
    let forced = run(
        &model,
        &chat("hi"),
        &SamplingParams {
            logit_bias: vec![(u32::from(b'z'), 100.0)],
            ..greedy.clone()
        },
    );
    assert_eq!(forced.text, "zzzzzz");
    let banned = run(
        &model,
        &chat("hi"),
        &SamplingParams {
            logit_bias: vec![(first, -100.0)],
            ..greedy.clone()
        },
    );
    assert!(banned.logprobs.iter().all(|l| l.id != first));
    let prompt = model.encode_input(&chat("hi")).unwrap();
    let err = model
        .generate(
            &prompt,
            &SamplingParams {
                logit_bias: vec![(1_000_000, 5.0)],
                ..greedy
            },
            |_| true,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("logit_bias: token id 1000000"), "{err}");
}

/// The license a model's files state: GGUF `general.license`, or the
/// `license:` of a model card's front matter; none otherwise.
#[test]
fn licenses_come_from_gguf_metadata_or_the_model_card() {
    let gguf = gguf(Arch::Llama, GgmlDType::Q8_0);
    assert_eq!(
        TextModel::load(&gguf.path).unwrap().license(),
        Some("apache-2.0")
    );
    let folder = safetensors(Arch::Llama);
    assert_eq!(TextModel::load(&folder.path).unwrap().license(), None);
    std::fs::write(
        folder.path.join("README.md"),
        "---\nlanguage: en\nlicense: \"llama3.1\"\ntags: [chat]\n---\n# A model\nlicense: not-this\n",
    )
    .unwrap();
    assert_eq!(
        TextModel::load(&folder.path).unwrap().license(),
        Some("llama3.1")
    );
}

/// Issue 17: a generated model with a real model's vocabulary size (its
/// tokenizer's tokens, then word-like padding tokens) loads with that
/// many rows in its embedding and head, tokenizes as before, and
/// generates, as GGUF and as a safetensors folder.
#[test]
fn a_padded_vocabulary_loads_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("wide.gguf");
    let folder = dir.path().join("wide");
    let shape = TinyConfig {
        vocab_size: 5_000,
        ..TinyConfig::default()
    };
    tiny::write_tiny_gguf(&gguf, 7, shape, GgmlDType::Q8_0).unwrap();
    tiny::write_tiny_model(&folder, 7, shape).unwrap();
    for path in [gguf, folder] {
        let model = TextModel::load(&path).unwrap();
        assert_eq!(model.spec().vocab_size, 5_000);
        let prompt = model
            .encode_input(&JobInput::Prompt {
                prompt: "xxxx".into(),
            })
            .unwrap();
        assert_eq!(prompt.len(), 5, "BOS and one token per x: {prompt:?}");
        let (mut tokens, mut text) = (0, String::new());
        model
            .generate(
                &prompt,
                &SamplingParams {
                    max_tokens: 8,
                    temperature: 0.0,
                    ..SamplingParams::default()
                },
                |p| {
                    tokens += p.tokens;
                    text.push_str(&p.text);
                    true
                },
            )
            .unwrap();
        assert!(tokens > 0, "{}", path.display());
    }
}
