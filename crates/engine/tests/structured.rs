//! Structured outputs and forced tool calls on a random-weight model: the
//! constraint alone must make every answer parse, whatever the weights
//! would have said.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use sharenet_engine::tiny::{TinyConfig, write_tiny_model};
use sharenet_engine::{Arch, Grammar, TextModel, ToolCallParser, ToolFormat};
use sharenet_proto::{
    ChatMessage, FinishReason, JobInput, SamplingParams, ToolChoice, ToolSpec, Tools,
};

fn qwen() -> (tempfile::TempDir, TextModel) {
    let dir = tempfile::tempdir().unwrap();
    let shape = TinyConfig {
        arch: Arch::Qwen2,
        ..TinyConfig::default()
    };
    write_tiny_model(dir.path(), 3, shape).unwrap();
    let model = TextModel::load(dir.path()).unwrap();
    (dir, model)
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "mood": {"enum": ["happy", "sad", "calm"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3}
        },
        "required": ["name", "age", "mood"],
        "additionalProperties": false
    })
}

/// The checks the schema makes, written out (no validator crate needed for
/// one schema).
fn check_person(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    for k in o.keys() {
        if !["name", "age", "mood", "tags"].contains(&k.as_str()) {
            return Err(format!("unexpected key {k}"));
        }
    }
    let name = o.get("name").and_then(Value::as_str).ok_or("name")?;
    if name.chars().count() > 12 {
        return Err("name too long".into());
    }
    let age = o.get("age").and_then(Value::as_i64).ok_or("age")?;
    if !(0..=150).contains(&age) {
        return Err(format!("age {age}"));
    }
    let mood = o.get("mood").and_then(Value::as_str).ok_or("mood")?;
    if !["happy", "sad", "calm"].contains(&mood) {
        return Err(format!("mood {mood}"));
    }
    if let Some(tags) = o.get("tags") {
        let tags = tags.as_array().ok_or("tags")?;
        if tags.len() > 3
            || tags
                .iter()
                .any(|t| t.as_str().is_none_or(|s| s.chars().count() > 8))
        {
            return Err("tags".into());
        }
    }
    Ok(())
}

fn chat(text: &str) -> JobInput {
    JobInput::Chat {
        messages: vec![ChatMessage::new("user", text)],
    }
}

fn run(model: &TextModel, prompt: &[u32], seed: u64, grammar: &Grammar) -> (String, FinishReason) {
    let params = SamplingParams {
        max_tokens: 400,
        temperature: 1.0,
        seed: Some(seed),
        ..SamplingParams::default()
    };
    let constraint = model.constraint(grammar).unwrap();
    let mut text = String::new();
    let g = model
        .generate_constrained(prompt, &params, Some(constraint), |p| {
            text.push_str(&p.text);
            true
        })
        .unwrap();
    (text, g.finish_reason)
}

#[test]
fn json_schema_output_validates_on_fifty_seeds() {
    let (_dir, model) = qwen();
    let prompt = model.encode_input(&chat("Describe someone.")).unwrap();
    let grammar = Grammar::JsonSchema(person_schema());
    for seed in 0..50 {
        let (text, finish) = run(&model, &prompt, seed, &grammar);
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}: {e} in {text:?}"));
        check_person(&v).unwrap_or_else(|e| panic!("seed {seed}: {e} in {text}"));
        assert_eq!(finish, FinishReason::Stop, "seed {seed}: {text}");
    }
}

#[test]
fn unconstrained_output_is_not_json() {
    // The control: the same model and seeds without the constraint do not
    // produce the schema's JSON, so the test above measures the constraint.
    let (_dir, model) = qwen();
    let prompt = model.encode_input(&chat("Describe someone.")).unwrap();
    let params = SamplingParams {
        max_tokens: 64,
        temperature: 1.0,
        seed: Some(0),
        ..SamplingParams::default()
    };
    let mut text = String::new();
    model
        .generate(&prompt, &params, |p| {
            text.push_str(&p.text);
            true
        })
        .unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text:?}");
}

#[test]
fn a_forced_call_always_parses_into_the_named_function() {
    let (_dir, model) = qwen();
    assert_eq!(model.tool_format(), Some(ToolFormat::Hermes));
    let tools = Tools {
        specs: vec![
            ToolSpec {
                name: "get_weather".into(),
                description: "Current weather in a city".into(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "maxLength": 10},
                        "unit": {"enum": ["c", "f"]}
                    },
                    "required": ["city", "unit"],
                    "additionalProperties": false
                }),
                strict: true,
            },
            ToolSpec {
                name: "get_time".into(),
                description: String::new(),
                parameters: Value::Null,
                strict: false,
            },
        ],
        choice: ToolChoice::Function("get_weather".into()),
        parallel: false,
    };
    let prompt = model
        .encode_request(&chat("Weather in Paris?"), Some(&tools))
        .unwrap();
    // The tools reached the prompt through the model's own template.
    let rendered = model.encode_input(&chat("Weather in Paris?")).unwrap();
    assert!(prompt.len() > rendered.len() + 50);
    let grammar = Grammar::Lark(ToolFormat::Hermes.forced_call_grammar(&tools));
    for seed in 0..20 {
        let (text, finish) = run(&model, &prompt, seed, &grammar);
        assert_eq!(finish, FinishReason::Stop, "seed {seed}: {text}");
        let mut parser = ToolCallParser::new(ToolFormat::Hermes, "t");
        let mut out = parser.push(&text);
        let rest = parser.finish();
        out.text.push_str(&rest.text);
        out.calls.extend(rest.calls);
        assert_eq!(out.text, "", "seed {seed}: {text}");
        assert_eq!(out.calls.len(), 1, "seed {seed}: {text}");
        assert_eq!(out.calls[0].name, "get_weather");
        let args: Value = serde_json::from_str(&out.calls[0].arguments).unwrap();
        assert!(
            args["city"]
                .as_str()
                .is_some_and(|c| c.chars().count() <= 10),
            "{args}"
        );
        assert!(
            ["c", "f"].contains(&args["unit"].as_str().unwrap_or("")),
            "{args}"
        );
    }
}

#[test]
fn a_schema_the_compiler_cannot_take_is_an_invalid_request() {
    let (_dir, model) = qwen();
    let bad = Grammar::JsonSchema(
        json!({"type": "object", "properties": {"a": {"$ref": "https://example.com/remote.json"}}}),
    );
    let err = model.constraint(&bad).err().expect("refused").to_string();
    assert!(err.contains("invalid input: response_format"), "{err}");
    assert!(err.contains("https://example.com/remote.json"), "{err}");
}
