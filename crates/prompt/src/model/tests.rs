use std::path::Path;

use sharenet_proto::{ChatMessage, ToolSpec};

use super::*;
use crate::tokenizer::tokenizer_from_gguf;

const CHATML: &str = "{% for m in messages %}<|start|>{{ m.role }} {{ m.content }}<|end|>{% endfor %}{% if tools %}{{ tools | tojson }}<tool_call>{% endif %}{% if add_generation_prompt %}<|start|>assistant {% endif %}";

fn spec(template: Option<&str>, add_bos: bool) -> PromptSpec {
    let md = crate::tokenizer::tests::gpt2_metadata();
    let (_, tokenizer_json) = tokenizer_from_gguf(Path::new("m.gguf"), &md).unwrap();
    PromptSpec {
        tokenizer_json,
        chat_template: template.map(str::to_owned),
        bos_token: Some("<|start|>".into()),
        eos_token: Some("<|end|>".into()),
        bos_token_id: Some(1),
        add_bos,
    }
}

fn user(text: &str) -> JobInput {
    JobInput::Chat {
        messages: vec![ChatMessage::new("user", text)],
    }
}

fn weather(choice: ToolChoice) -> Tools {
    Tools {
        specs: vec![ToolSpec {
            name: "f".into(),
            description: String::new(),
            parameters: serde_json::Value::Null,
            strict: false,
        }],
        choice,
        parallel: false,
    }
}

#[test]
fn counts_are_the_ids_the_engine_feeds_bos_included() {
    let p = spec(None, true).compile().unwrap();
    let raw = JobInput::Prompt {
        prompt: "ab ab".into(),
    };
    assert_eq!(p.encode_request(&raw, None).unwrap(), vec![1, 2, 3]);
    assert_eq!(p.count_prompt(&raw, None).unwrap(), 3);
    assert_eq!(p.count_text("ab ab").unwrap(), 2);
    assert_eq!(p.encode("ab ab").unwrap(), vec![2, 3]);
    // A text that starts with the BOS text gets no second BOS.
    assert_eq!(p.encode_prompt("<|start|>ab").unwrap(), vec![1, 2]);
    // No BOS when the model adds none.
    let p = spec(None, false).compile().unwrap();
    assert_eq!(p.encode_request(&raw, None).unwrap(), vec![2, 3]);
    let empty = JobInput::Prompt {
        prompt: String::new(),
    };
    assert!(matches!(
        p.encode_request(&empty, None),
        Err(PromptError::InvalidInput(_))
    ));
}

#[test]
fn chats_render_with_the_template_or_the_fallback() {
    let p = spec(Some(CHATML), true).compile().unwrap();
    assert_eq!(
        p.render(&user("ab"), None).unwrap(),
        "<|start|>user ab<|end|><|start|>assistant "
    );
    // The template wrote the BOS text: no extra BOS id.
    let ids = p.encode_request(&user("ab"), None).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 2);
    let fallback = spec(None, false).compile().unwrap();
    assert_eq!(
        fallback.render(&user("ab"), None).unwrap(),
        "<|user|>\nab<|end|>\n<|assistant|>\n"
    );
}

#[test]
fn tools_render_in_hugging_face_shape_unless_the_choice_is_none() {
    let p = spec(Some(CHATML), true).compile().unwrap();
    assert_eq!(p.tool_format(), Some(ToolFormat::Hermes));
    let text = p
        .render(&user("a"), Some(&weather(ToolChoice::Auto)))
        .unwrap();
    assert!(
        text.contains(r#"[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]<tool_call>"#),
        "{text}"
    );
    let none = p
        .render(&user("a"), Some(&weather(ToolChoice::None)))
        .unwrap();
    assert_eq!(none, p.render(&user("a"), None).unwrap());
    // A template that takes no tools refuses them.
    let plain = spec(None, true).compile().unwrap();
    let err = plain
        .render(&user("a"), Some(&weather(ToolChoice::Auto)))
        .unwrap_err();
    assert!(matches!(err, PromptError::Unsupported(_)), "{err}");
    let embed = JobInput::Embed {
        inputs: vec!["a".into()],
    };
    assert!(matches!(
        p.render(&embed, None),
        Err(PromptError::Unsupported(_))
    ));
}

#[test]
fn a_spec_survives_storage_and_bad_specs_are_errors() {
    let s = spec(Some(CHATML), true);
    let back: PromptSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    let mut bad = s.clone();
    bad.tokenizer_json = "{".into();
    assert!(matches!(bad.compile(), Err(PromptError::Tokenizer(_))));
    let mut bad = s;
    bad.chat_template = Some("{% for %}".into());
    assert!(bad.compile().is_err());
    assert!(default_add_bos(Some(1), "llama"));
    assert!(!default_add_bos(Some(1), "qwen2"));
    assert!(!default_add_bos(None, "llama"));
}
