use super::*;

fn tokenizer() -> (tempfile::TempDir, Arc<Tokenizer>) {
    let dir = tempfile::tempdir().unwrap();
    sharenet_engine::tiny::write_tiny_llama(dir.path(), 1, Default::default()).unwrap();
    let t = load(dir.path()).unwrap();
    (dir, t)
}

const TEXT: &str = "Hello world, this is  a test.\nNew line\n\n  indented héllo €uro done";

/// Streams `chunks` through a recount; checks each piece's ids decode to
/// its text; returns the pieces.
fn stream(r: &mut Recount, t: &Tokenizer, chunks: &[&str]) -> Vec<Counted> {
    let mut out: Vec<Counted> = chunks.iter().filter_map(|c| r.push(c)).collect();
    out.extend(r.finish());
    for c in &out {
        assert_eq!(c.tokens as usize, c.ids.len());
        assert_eq!(t.decode(&c.ids, true).unwrap(), c.text, "{c:?}");
    }
    out
}

#[test]
fn streamed_text_gets_the_ids_of_the_whole_text() {
    let (_dir, t) = tokenizer();
    let whole = t.encode(TEXT, false).unwrap().get_ids().to_vec();
    let chars: Vec<String> = TEXT.chars().map(String::from).collect();
    let by_char: Vec<&str> = chars.iter().map(String::as_str).collect();
    let by_three: Vec<&str> = TEXT
        .char_indices()
        .step_by(3)
        .map(|(i, _)| {
            let end = TEXT[i..]
                .char_indices()
                .nth(3)
                .map_or(TEXT.len(), |(j, _)| i + j);
            &TEXT[i..end]
        })
        .collect();
    for chunks in [vec![TEXT], by_char, by_three] {
        let mut r = Recount::new(Some(t.clone()));
        let out = stream(&mut r, &t, &chunks);
        let text: String = out.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(text, TEXT);
        let ids: Vec<u32> = out.iter().flat_map(|c| c.ids.clone()).collect();
        // Cut at word boundaries: exactly the whole text's tokenization,
        // however the server chunked it.
        assert_eq!(ids, whole);
        assert_eq!(r.mismatches, 0);
    }
}

#[test]
fn text_waits_for_a_word_boundary_but_not_forever() {
    let (_dir, t) = tokenizer();
    let mut r = Recount::new(Some(t.clone()));
    assert_eq!(r.push("Hello"), None);
    let first = r.push(" world").unwrap();
    assert_eq!(first.text, "Hello");
    // "!" starts a piece of its own (the GPT-2 pattern): " world" is final.
    assert_eq!(r.push("!").unwrap().text, " world");
    assert_eq!(r.push("!"), None);
    assert_eq!(r.finish().unwrap().text, "!!");
    // A run with no whitespace goes out once it passes the bound.
    let mut r = Recount::new(Some(t.clone()));
    let long = "x".repeat(40);
    let out: Vec<Counted> = (0..20).filter_map(|_| r.push(&long)).collect();
    assert!(!out.is_empty());
    assert!(
        out.iter()
            .all(|c| c.text.len() <= MAX_HOLD_BYTES + long.len())
    );
}

#[test]
fn without_a_tokenizer_each_chunk_is_one_token_and_no_ids() {
    let mut r = Recount::new(None);
    let c = r.push("Hello wor").unwrap();
    assert_eq!(
        (c.text.as_str(), c.tokens, c.ids.len()),
        ("Hello wor", 1, 0)
    );
    assert_eq!(r.push(""), None);
    assert_eq!(r.finish(), None);
    assert_eq!(r.calls(&[], 3), (Vec::new(), 3));
}

#[test]
fn tool_calls_count_their_name_and_arguments() {
    let (_dir, t) = tokenizer();
    let mut r = Recount::new(Some(t.clone()));
    let call = ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"city": "Paris"}"#.into(),
    };
    let (ids, tokens) = r.calls(std::slice::from_ref(&call), 40);
    assert_eq!(tokens as usize, ids.len());
    assert_eq!(
        t.decode(&ids, true).unwrap(),
        format!("{}{}", call.name, call.arguments)
    );
}

/// The tokenizer a GGUF carries in its metadata (as llama.cpp serves it)
/// counts the same ids as the model's `tokenizer.json`.
#[test]
fn a_gguf_tokenizer_counts_the_same_ids() {
    let (_dir, json) = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    sharenet_engine::tiny::write_tiny_gguf(
        &path,
        1,
        Default::default(),
        candle_core::quantized::GgmlDType::Q8_0,
    )
    .unwrap();
    let gguf = load(&path).unwrap();
    let chunks: Vec<&str> = TEXT.split_inclusive(' ').collect();
    let ids = |t: &Arc<Tokenizer>| -> Vec<u32> {
        let mut r = Recount::new(Some(t.clone()));
        stream(&mut r, t, &chunks)
            .into_iter()
            .flat_map(|c| c.ids)
            .collect()
    };
    assert_eq!(ids(&gguf), ids(&json));
    assert!(load(&dir.path().join("missing.gguf")).is_err());
}

/// SmolLM2-135M-Instruct's own tokenizer (from the GGUF the real-model
/// tests serve with llama.cpp): text streamed a token or a character at a
/// time gets exactly the whole text's ids, paragraph breaks included
/// (GPT-2's `\s+(?!\S)` splits `"\n\n"` before a word differently from
/// at the end of the text, so a segment is encoded with what follows it).
#[test]
fn smollm2_text_streamed_in_any_chunks_gets_the_whole_texts_ids() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let gguf = std::env::var_os("SHARENET_SMOLLM2").map_or_else(
        || root.join("target/test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        std::path::PathBuf::from,
    );
    assert!(
        gguf.exists(),
        "{} is missing: run scripts/setup-test-deps (or set SHARENET_SMOLLM2)",
        gguf.display()
    );
    let t = load(&gguf).unwrap();
    let text = "Sure! Here's a story.\n\nOnce upon a time, in 1987, a cat named \"Mittens\" \
        lived...\n\n```python\ndef rev(s):\n    return s[::-1]\n```\n\n- item one;\n- item \
        two:   spaced   out.\tTab!?\n\nThe end. ÉTÉ 12345678 café — done.";
    let whole = t.encode(text, false).unwrap().get_ids().to_vec();
    let by_token: Vec<String> = whole
        .iter()
        .map(|&i| t.decode(&[i], true).unwrap())
        .collect();
    let by_char: Vec<String> = text.chars().map(String::from).collect();
    for chunks in [by_token, by_char] {
        let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let mut r = Recount::new(Some(t.clone()));
        let out = stream(&mut r, &t, &chunks);
        let ids: Vec<u32> = out.iter().flat_map(|c| c.ids.clone()).collect();
        assert_eq!(ids, whole);
        assert_eq!(r.mismatches, 0);
        assert!(out.len() > 20, "a word at a time: {} pieces", out.len());
    }
}
