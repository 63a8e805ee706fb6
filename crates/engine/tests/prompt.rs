//! One renderer for both sides: what the coordinator counts with
//! `sharenet-prompt` (a model's files read by `ModelSource`, its
//! `PromptSpec` stored as JSON and compiled back, as a catalog does) is
//! exactly what the engine feeds its model: the same prompt text, the same
//! ids, the same count, on the tiny models of every format and, when it is
//! installed (`scripts/setup-test-deps`), SmolLM2-135M-Instruct's GGUF.
//! The candle-free GGUF reader also reads every tokenizer value exactly as
//! candle's does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, gguf_file};
use sharenet_engine::tiny::{TinyConfig, write_tiny_gguf, write_tiny_model};
use sharenet_engine::{Arch, TextModel, WeightsFormat};
use sharenet_prompt::gguf::{Metadata, Value};
use sharenet_prompt::{ModelSource, PromptSpec};
use sharenet_proto::{ChatMessage, JobInput, ToolCall, ToolChoice, ToolSpec, Tools};

fn chat(messages: Vec<ChatMessage>) -> JobInput {
    JobInput::Chat { messages }
}

fn tools(choice: ToolChoice) -> Tools {
    Tools {
        specs: vec![ToolSpec {
            name: "get_weather".into(),
            description: "Weather in a city".into(),
            // Keys out of alphabetical order: a sorted map would move them.
            parameters: serde_json::from_str(
                r#"{"type": "object", "properties": {"unit": {"enum": ["c", "f"]}, "city": {"type": "string"}}, "required": ["city"]}"#,
            )
            .unwrap(),
            strict: false,
        }],
        choice,
        parallel: false,
    }
}

/// Requests of every shape the coordinator counts.
fn requests() -> Vec<(JobInput, Option<Tools>)> {
    let mut call = ChatMessage::new("assistant", "");
    call.tool_calls.push(ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"unit": "c", "city": "Paris <3"}"#.into(),
    });
    let mut result = ChatMessage::new("tool", "sunny, 21");
    result.tool_call_id = Some("call_1".into());
    vec![
        (chat(vec![ChatMessage::new("user", "hi")]), None),
        (
            chat(vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "  What is 2+2? héllo 😀\n"),
            ]),
            None,
        ),
        (
            chat(vec![ChatMessage::new("user", "Weather in Paris?")]),
            Some(tools(ToolChoice::Auto)),
        ),
        (
            chat(vec![
                ChatMessage::new("user", "Weather in Paris?"),
                call,
                result,
            ]),
            Some(tools(ToolChoice::Required)),
        ),
        (
            chat(vec![ChatMessage::new("user", "no tools")]),
            Some(tools(ToolChoice::None)),
        ),
        (
            JobInput::Prompt {
                prompt: "Once upon a time".into(),
            },
            None,
        ),
    ]
}

/// Renders and counts every request both ways and compares.
fn agree(path: &Path) -> usize {
    let engine = TextModel::load(path).unwrap();
    let source = ModelSource::read(path).unwrap();
    // Through storage, as a catalog keeps it.
    let stored = serde_json::to_string(&source.prompt).unwrap();
    let spec: PromptSpec = serde_json::from_str(&stored).unwrap();
    let prompt = spec.compile().unwrap();

    assert_eq!(source.weights_sha256(), Some(engine.weights_sha256()));
    assert_eq!(source.context_length as usize, engine.context_length());
    assert_eq!(source.eos_token_ids, engine.eos_tokens());
    assert_eq!(source.license.as_deref(), engine.license());
    assert_eq!(source.name.as_deref(), engine.weights_name());
    if let WeightsFormat::Gguf { dtype } = engine.format() {
        assert_eq!(&source.quantization, dtype);
    }
    assert_eq!(prompt.tool_format(), engine.tool_format());

    let mut compared = 0;
    for (input, tools) in requests() {
        let ours = engine.encode_request(&input, tools.as_ref());
        let theirs = prompt.encode_request(&input, tools.as_ref());
        match (ours, theirs) {
            (Ok(ids), Ok(counted)) => {
                assert_eq!(ids, counted, "{path:?}: {input:?}");
                let n = prompt.count_prompt(&input, tools.as_ref()).unwrap();
                assert_eq!(n as usize, ids.len());
                // The text renders the same from the engine's own prompt
                // side, and encodes to the ids the engine feeds.
                let text = prompt.render(&input, tools.as_ref()).unwrap();
                assert_eq!(
                    text,
                    engine.prompt().render(&input, tools.as_ref()).unwrap()
                );
                assert_eq!(prompt.encode_prompt(&text).unwrap(), ids);
                compared += 1;
            }
            // A model without a tool template refuses tools on both sides.
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("{path:?}: engine {a:?}, prompt crate {b:?}"),
        }
    }
    compared
}

/// Every metadata value the tokenizer is built from, as candle reads it
/// and as `sharenet-prompt` reads it.
fn same_metadata(path: &Path) {
    let mut file = std::fs::File::open(path).unwrap();
    let candle = gguf_file::Content::read(&mut file).unwrap();
    let ours = Metadata::read(path).unwrap();
    assert_eq!(candle.metadata.len(), ours.values.len());
    assert_eq!(candle.tensor_infos.len(), ours.tensors.len());
    for (key, value) in &candle.metadata {
        assert!(same(value, ours.get(key).unwrap()), "{key}");
    }
}

fn same(c: &gguf_file::Value, o: &Value) -> bool {
    use gguf_file::Value as C;
    match (c, o) {
        (C::U8(a), Value::U8(b)) => a == b,
        (C::I8(a), Value::I8(b)) => a == b,
        (C::U16(a), Value::U16(b)) => a == b,
        (C::I16(a), Value::I16(b)) => a == b,
        (C::U32(a), Value::U32(b)) => a == b,
        (C::I32(a), Value::I32(b)) => a == b,
        (C::U64(a), Value::U64(b)) => a == b,
        (C::I64(a), Value::I64(b)) => a == b,
        (C::F32(a), Value::F32(b)) => a.to_bits() == b.to_bits(),
        (C::F64(a), Value::F64(b)) => a.to_bits() == b.to_bits(),
        (C::Bool(a), Value::Bool(b)) => a == b,
        (C::String(a), Value::String(b)) => a == b,
        (C::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        _ => false,
    }
}

#[test]
fn tiny_models_render_and_count_the_same_with_the_prompt_crate() {
    let dir = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for (i, arch) in [Arch::Llama, Arch::Mistral, Arch::Qwen2]
        .into_iter()
        .enumerate()
    {
        let shape = TinyConfig {
            arch,
            ..TinyConfig::default()
        };
        let folder = dir.path().join(format!("folder{i}"));
        write_tiny_model(&folder, 7, shape).unwrap();
        // A model card with a license, as Hugging Face folders carry.
        std::fs::write(folder.join("README.md"), "---\nlicense: apache-2.0\n---\n").unwrap();
        compared += agree(&folder);
        let gguf = dir.path().join(format!("gguf{i}/model.gguf"));
        write_tiny_gguf(&gguf, 7, shape, GgmlDType::Q8_0).unwrap();
        same_metadata(&gguf);
        compared += agree(&gguf);
    }
    assert!(compared >= 18, "compared {compared}");
}

fn smollm2() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [
        std::env::var_os("SHARENET_SMOLLM2").map(PathBuf::from),
        Some(root.join("target/test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")),
        std::env::var_os("CARGO_TARGET_DIR")
            .map(|t| PathBuf::from(t).join("test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

#[test]
fn smollm2_renders_and_counts_the_same_with_the_prompt_crate() {
    let Some(path) = smollm2() else {
        eprintln!("SmolLM2 GGUF not installed (scripts/setup-test-deps): skipped");
        return;
    };
    same_metadata(&path);
    let compared = agree(&path);
    assert!(compared >= 4, "compared {compared}");
    // Its real template and tokenizer: a known rendering and count.
    let prompt = ModelSource::inspect(&path).unwrap().prompt_model().unwrap();
    let input = chat(vec![ChatMessage::new(
        "user",
        "What is the capital of France?",
    )]);
    let text = prompt.render(&input, None).unwrap();
    assert!(
        text.starts_with("<|im_start|>system\n") && text.ends_with("<|im_start|>assistant\n"),
        "{text}"
    );
    let ids = prompt.encode_request(&input, None).unwrap();
    let plain = prompt.encode(&text).unwrap();
    assert!(ids.ends_with(&plain) && ids.len() - plain.len() <= 1);
    assert_eq!(prompt.count_text(&text).unwrap() as usize, plain.len());
    assert_eq!(prompt.decode(&plain, false).unwrap(), text);
}
