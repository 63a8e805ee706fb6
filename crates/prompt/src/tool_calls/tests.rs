use super::*;
use sharenet_proto::ToolSpec;

fn run(format: ToolFormat, pieces: &[&str]) -> Parsed {
    let mut p = ToolCallParser::new(format, "x");
    let mut all = Parsed::default();
    for piece in pieces {
        let got = p.push(piece);
        all.text.push_str(&got.text);
        all.calls.extend(got.calls);
    }
    let got = p.finish();
    all.text.push_str(&got.text);
    all.calls.extend(got.calls);
    all
}

#[test]
fn hermes_calls_split_across_pieces_are_parsed() {
    let out = run(
        ToolFormat::Hermes,
        &[
            "Let me check.\n<tool",
            "_call>\n{\"name\": \"get_weather\", \"argu",
            "ments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
        ],
    );
    assert_eq!(out.text, "Let me check.");
    assert_eq!(out.calls.len(), 2);
    assert_eq!(out.calls[0].name, "get_weather");
    assert_eq!(out.calls[0].arguments, r#"{"city":"Paris"}"#);
    assert_eq!(out.calls[0].id, "call_x_0");
    assert_eq!(out.calls[1].name, "get_time");
}

#[test]
fn plain_text_and_false_starts_pass_through() {
    let out = run(ToolFormat::Hermes, &["a <b> c <tool", "box>"]);
    assert_eq!(out.text, "a <b> c <toolbox>");
    assert!(out.calls.is_empty());
}

#[test]
fn malformed_calls_stay_text() {
    let out = run(
        ToolFormat::Hermes,
        &["<tool_call>\n{\"name\": \"f\", \"arguments\": [1]}\n</tool_call>"],
    );
    assert!(out.calls.is_empty());
    assert!(out.text.contains("\"arguments\": [1]"), "{out:?}");
    let cut = run(ToolFormat::Hermes, &["<tool_call>\n{\"name\": \"f\", "]);
    assert!(cut.calls.is_empty());
    assert_eq!(cut.text, "<tool_call>\n{\"name\": \"f\", ");
    let bad_name = run(
        ToolFormat::Hermes,
        &["<tool_call>{\"name\": \"rm -rf\", \"arguments\": {}}</tool_call>"],
    );
    assert!(bad_name.calls.is_empty());
}

#[test]
fn llama3_and_mistral_replies() {
    let l = run(
        ToolFormat::Llama3,
        &[
            "<|python_tag|>{\"name\": \"f\", ",
            "\"parameters\": {\"a\": 1}}",
        ],
    );
    assert_eq!(l.calls.len(), 1);
    assert_eq!(l.calls[0].arguments, r#"{"a":1}"#);
    assert_eq!(l.text, "");
    let text = run(ToolFormat::Llama3, &["Hello {there}"]);
    assert_eq!(text.text, "Hello {there}");
    let m = run(
        ToolFormat::Mistral,
        &[
            "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {}}, {\"name\": \"g\", \"arguments\": {\"b\": true}}]",
        ],
    );
    assert_eq!(m.calls.len(), 2);
    assert_eq!(m.calls[1].arguments, r#"{"b":true}"#);
    let broken = run(ToolFormat::Mistral, &["[TOOL_CALLS] [{\"name\""]);
    assert!(broken.calls.is_empty());
    assert_eq!(broken.text, "[TOOL_CALLS] [{\"name\"");
}

#[test]
fn formats_come_from_templates() {
    assert_eq!(
        ToolFormat::of_template("{% if tools %}<tool_call>{% endif %}"),
        Some(ToolFormat::Hermes)
    );
    assert_eq!(
        ToolFormat::of_template("{% if tools %}<|start_header_id|>{% endif %}"),
        Some(ToolFormat::Llama3)
    );
    assert_eq!(
        ToolFormat::of_template("[TOOL_CALLS] {{ tools }}"),
        Some(ToolFormat::Mistral)
    );
    assert_eq!(ToolFormat::of_template("<|im_start|>"), None);
}

#[test]
fn forced_grammar_names_the_function() {
    let tools = Tools {
        specs: vec![ToolSpec {
            name: "f".into(),
            description: String::new(),
            parameters: json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
            strict: true,
        }],
        choice: ToolChoice::Function("f".into()),
        parallel: false,
    };
    let g = ToolFormat::Hermes.forced_call_grammar(&tools);
    assert!(g.starts_with("start: \"<tool_call>\\n\" call"), "{g}");
    assert!(g.contains(r#""const":"f""#), "{g}");
    assert!(forces_call(&tools));
}
