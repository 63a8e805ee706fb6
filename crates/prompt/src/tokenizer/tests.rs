use std::collections::HashMap;

use super::*;
use crate::gguf::Value as G;

/// GGUF tokenizer metadata of a small byte-level BPE vocabulary: two
/// control tokens (ids 0 and 1), `ab` (2), `Ġab` (3), `Ġ` (a space, 4)
/// and the letters a-z, with two merges.
pub(crate) fn gpt2_metadata() -> Metadata {
    let letters: Vec<String> = ('a'..='z').map(String::from).collect();
    let mut tokens: Vec<&str> = vec!["<|end|>", "<|start|>", "ab", "Ġab", "Ġ"];
    tokens.extend(letters.iter().map(String::as_str));
    let types: Vec<i32> = tokens
        .iter()
        .map(|t| if t.starts_with("<|") { 3 } else { 1 })
        .collect();
    let merges = ["a b", "Ġ ab"];
    let strings = |v: &[&str]| G::Array(v.iter().map(|s| G::String((*s).into())).collect());
    let values = HashMap::from([
        ("tokenizer.ggml.model".to_owned(), G::String("gpt2".into())),
        ("tokenizer.ggml.tokens".to_owned(), strings(&tokens)),
        (
            "tokenizer.ggml.token_type".to_owned(),
            G::Array(types.iter().map(|t| G::I32(*t)).collect()),
        ),
        ("tokenizer.ggml.merges".to_owned(), strings(&merges)),
    ]);
    Metadata {
        version: 3,
        values,
        tensors: Vec::new(),
    }
}

#[test]
fn a_gpt2_tokenizer_is_rebuilt_from_metadata() {
    let path = Path::new("m.gguf");
    let (tok, text) = tokenizer_from_gguf(path, &gpt2_metadata()).unwrap();
    let ids = tok
        .encode("ab ab<|end|>", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids, vec![2, 3, 0]);
    // Control tokens are special: skipped when decoding without them.
    assert_eq!(tok.decode(&ids, true).unwrap(), "ab ab");
    assert_eq!(tok.decode(&ids, false).unwrap(), "ab ab<|end|>");
    // The JSON text is the same tokenizer.
    let again = text.parse::<Tokenizer>().unwrap();
    assert_eq!(
        again.encode("ab ab<|end|>", false).unwrap().get_ids(),
        &ids[..]
    );
}

#[test]
fn unsupported_or_malformed_tokenizer_metadata_is_an_error() {
    let path = Path::new("/m/x.gguf");
    let mut md = gpt2_metadata();
    md.values
        .insert("tokenizer.ggml.model".into(), G::String("llama".into()));
    let err = tokenizer_from_gguf(path, &md).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("/m/x.gguf"),
        "{err}"
    );

    let mut md = gpt2_metadata();
    md.values.remove("tokenizer.ggml.tokens");
    let err = tokenizer_from_gguf(path, &md).unwrap_err().to_string();
    assert!(err.contains("missing tokenizer.ggml.tokens"), "{err}");

    let mut md = gpt2_metadata();
    md.values.insert(
        "tokenizer.ggml.tokens".into(),
        G::Array(vec![G::String("a".into()), G::U32(3)]),
    );
    let err = tokenizer_from_gguf(path, &md).unwrap_err().to_string();
    assert!(err.contains("token 1"), "{err}");

    assert!(matches!(
        load_tokenizer_file(Path::new("/no/such/tokenizer.json")),
        Err(PromptError::Read { .. })
    ));
}

#[test]
fn special_tokens_and_templates_from_tokenizer_config() {
    assert_eq!(special_text(Some(&json!("<s>"))), Some("<s>".into()));
    assert_eq!(
        special_text(Some(&json!({"content": "</s>", "lstrip": false}))),
        Some("</s>".into())
    );
    assert_eq!(special_text(Some(&json!(3))), None);
    assert_eq!(special_text(None), None);
    assert_eq!(
        template_source(Some(&json!("{{ x }}"))),
        Some("{{ x }}".into())
    );
    let list = json!([{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]);
    assert_eq!(template_source(Some(&list)), Some("D".into()));
    let list = json!([{"name": "rag", "template": "R"}]);
    assert_eq!(template_source(Some(&list)), Some("R".into()));
    assert_eq!(template_source(Some(&json!({}))), None);
}
