use super::*;

fn msgs() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "be brief"),
        ChatMessage::new("user", " hi "),
    ]
}

#[test]
fn fallback_renders_roles_in_order() {
    let t = ChatTemplate::new(None, "<s>".into(), "</s>".into()).unwrap();
    assert!(!t.is_own());
    assert_eq!(
        t.render(&msgs()).unwrap(),
        "<|system|>\nbe brief</s>\n<|user|>\n hi </s>\n<|assistant|>\n"
    );
}

#[test]
fn renders_chatml_as_qwen_ships_it() {
    let src = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let t = ChatTemplate::new(Some(src.into()), String::new(), "<|im_end|>".into()).unwrap();
    assert_eq!(
        t.render(&msgs()).unwrap(),
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n hi <|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn renders_llama3_style_with_python_methods_and_bos() {
    let src = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
    let t = ChatTemplate::new(
        Some(src.into()),
        "<|begin_of_text|>".into(),
        "<|eot_id|>".into(),
    )
    .unwrap();
    let out = t.render(&msgs()).unwrap();
    assert!(
        out.starts_with("<|begin_of_text|><|start_header_id|>system"),
        "{out}"
    );
    assert!(out.contains("\n\nhi<|eot_id|>"), "{out}");
    let py = ChatTemplate::new(
        Some("{{ messages[1]['content'].strip() }}{% if messages[0]['role'].startswith('sys') %}!{% endif %}".into()),
        String::new(),
        String::new(),
    )
    .unwrap();
    assert_eq!(py.render(&msgs()).unwrap(), "hi!");
}

#[test]
fn tools_and_calls_render_as_hugging_face_does() {
    use crate::tool_calls::ToolFormat;
    use sharenet_proto::ToolCall;
    let src = "{% for t in tools %}{{ t | tojson }}\n{% endfor %}{% for m in messages %}{% for c in m.tool_calls %}{{ c.function.name }}({{ c.function.arguments | tojson }}) {% endfor %}{% if m.tool_call_id %}[{{ m.tool_call_id }}]{{ m.content }}{% endif %}{% endfor %}<tool_call>";
    let t = ChatTemplate::new(Some(src.into()), String::new(), String::new()).unwrap();
    assert_eq!(t.tool_format(), Some(ToolFormat::Hermes));
    let mut call = ChatMessage::new("assistant", "");
    call.tool_calls.push(ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Paris <3"}"#.into(),
    });
    let mut result = ChatMessage::new("tool", "sunny");
    result.tool_call_id = Some("call_1".into());
    // Parsed, not `json!`: objects keep the order written whether or not
    // serde_json's `preserve_order` is on in this build.
    let tools = vec![
        Json::parse(r#"{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}"#)
            .unwrap(),
    ];
    let out = t
        .render_with_tools(
            &[ChatMessage::new("user", "hi"), call, result],
            Some(&tools),
        )
        .unwrap();
    assert_eq!(
        out,
        "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\"}}}\nget_weather({\"city\": \"Paris <3\"}) [call_1]sunny<tool_call>"
    );
    let no_tools = ChatTemplate::new(None, String::new(), "</s>".into()).unwrap();
    assert!(no_tools.render_with_tools(&msgs(), Some(&tools)).is_err());
}

#[test]
fn raise_exception_and_bad_templates_are_errors() {
    let t = ChatTemplate::new(
        Some("{{ raise_exception('roles must alternate') }}".into()),
        String::new(),
        String::new(),
    )
    .unwrap();
    let err = t.render(&msgs()).unwrap_err().to_string();
    assert!(err.contains("roles must alternate"), "{err}");
    assert!(ChatTemplate::new(Some("{% for %}".into()), String::new(), String::new()).is_err());
}
