use tokenizers::Tokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use super::*;

/// A byte-level BPE over the 256 byte symbols, with merges that make
/// "hello" and " world" one token each, and one special end token.
fn tokenizer() -> Tokenizer {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let mut vocab = serde_json::Map::new();
    for (i, c) in alphabet.iter().enumerate() {
        vocab.insert(c.to_string(), i.into());
    }
    let mut merges = Vec::new();
    for word in ["hello", "Ġworld"] {
        let chars: Vec<String> = word.chars().map(|c| c.to_string()).collect();
        let mut acc = chars[0].clone();
        for c in &chars[1..] {
            merges.push(format!("{acc} {c}"));
            acc.push_str(c);
            let next = vocab.len();
            vocab.entry(acc.clone()).or_insert(next.into());
        }
    }
    let end = vocab.len();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    serde_json::json!({
        "version": "1.0",
        "added_tokens": [{
            "id": end, "content": "<|end|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "vocab": vocab, "merges": merges},
    })
    .to_string()
    .parse()
    .unwrap()
}

fn ids(t: &Tokenizer, text: &str) -> Vec<u32> {
    t.encode(text, false).unwrap().get_ids().to_vec()
}

fn end(t: &Tokenizer) -> u32 {
    t.token_to_id("<|end|>").unwrap()
}

fn count(t: &Tokenizer, chunks: &[&[u32]]) -> OutputCount {
    let mut c = OutputCount::new(t);
    for ids in chunks {
        c.push(t, ids).unwrap();
    }
    c.finish(t).unwrap();
    c
}

#[test]
fn honest_ids_bill_what_they_are() {
    let t = tokenizer();
    let all = ids(&t, "hello world");
    assert_eq!(all.len(), 2);
    let chunks: Vec<&[u32]> = all.chunks(1).collect();
    let c = count(&t, &chunks);
    assert_eq!(c.decoded(), "hello world");
    assert_eq!(c.billable(&t, 0).unwrap(), 2);
}

#[test]
fn splitting_text_into_more_tokens_gains_nothing() {
    let t = tokenizer();
    // The same text as one id per byte: 11 ids, canonically 2 tokens.
    let bytes: Vec<u32> = "hello world"
        .chars()
        .flat_map(|ch| ids(&t, &ch.to_string()))
        .collect();
    assert_eq!(bytes.len(), 11);
    let c = count(&t, &[&bytes]);
    assert_eq!(c.decoded(), "hello world");
    assert_eq!(c.billable(&t, 0).unwrap(), 2);
}

#[test]
fn padding_with_special_ids_bills_nothing_but_call_markers() {
    let t = tokenizer();
    let mut all = ids(&t, "hello world");
    all.extend(std::iter::repeat_n(end(&t), 50));
    let c = count(&t, &[&all]);
    assert_eq!(c.decoded(), "hello world");
    assert_eq!(c.special_ids(), 50);
    // The end of turn is not billed (as llama.cpp counts completions).
    assert_eq!(c.billable(&t, 0).unwrap(), 2);
    // Two markers per tool call are.
    assert_eq!(c.billable(&t, 2).unwrap(), 6);
}

#[test]
fn never_more_than_the_ids_sent() {
    let t = tokenizer();
    // Fewer ids than the text's canonical count is impossible for real
    // ids, but the rule is a minimum either way.
    let c = count(&t, &[&ids(&t, "hello")]);
    assert_eq!(c.billable(&t, 5).unwrap(), 1);
}

#[test]
fn multibyte_characters_split_across_ids_decode_whole() {
    let t = tokenizer();
    let all = ids(&t, "héllo ✓");
    let mut c = OutputCount::new(&t);
    for id in &all {
        c.push(&t, &[*id]).unwrap();
        assert!(!c.decoded().contains('\u{FFFD}'), "{:?}", c.decoded());
    }
    c.finish(&t).unwrap();
    assert_eq!(c.decoded(), "héllo ✓");
}

#[test]
fn text_ahead_of_its_ids_or_other_than_them_is_caught() {
    assert_eq!(check_prefix("hello", "hel", 0), Ok(3));
    assert_eq!(check_prefix("hello", "hello", 3), Ok(5));
    // Text ahead of its ids waits for them (or for the end's check).
    assert_eq!(check_prefix("hel", "hello", 0), Ok(3));
    assert_eq!(check_prefix("hel", "helps", 0), Ok(3));
    assert_eq!(check_prefix("hex", "hello", 0), Err(Mismatch::Differs));
    assert_eq!(check_prefix("hello", "help", 0), Err(Mismatch::Differs));
    // Only the new part is compared, but it is compared.
    assert_eq!(
        check_prefix("hello world", "hello there", 5),
        Err(Mismatch::Differs)
    );
}

fn served<'a>(text: &'a str, stops: &'a [String], stopped: bool) -> Served<'a> {
    Served {
        text,
        stops,
        stopped,
        call_bytes: 0,
        calls: 0,
        tools: false,
    }
}

#[test]
fn at_the_end_the_ids_are_the_text_but_for_a_stop_cut() {
    let stops = vec!["\n\n".to_string()];
    assert_eq!(
        check_served("hello", &served("hello", &stops, false)),
        Ok(())
    );
    assert_eq!(
        check_served("hello\n\nmore", &served("hello", &stops, true)),
        Ok(())
    );
    // Extra decoded text without a stop: ids the builder never received.
    assert_eq!(
        check_served("hello world", &served("hello", &stops, false)),
        Err(Mismatch::Unserved)
    );
    assert_eq!(
        check_served("hello world", &served("hello", &stops, true)),
        Err(Mismatch::Unserved)
    );
    let long = format!("hello\n\n{}", "x".repeat(MAX_TOKEN_BYTES + 1));
    assert_eq!(
        check_served(&long, &served("hello", &stops, true)),
        Err(Mismatch::Unserved)
    );
    assert_eq!(
        check_served("help", &served("hello", &stops, false)),
        Err(Mismatch::TextAhead)
    );
    assert_eq!(
        check_served("jello", &served("hello", &stops, false)),
        Err(Mismatch::Differs)
    );
}

#[test]
fn tool_call_markup_may_be_left_out_of_the_text_but_only_so_much() {
    let decoded = r#"Sure.<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>"#;
    let ok = Served {
        text: "Sure.",
        stops: &[],
        stopped: false,
        call_bytes: "f".len() + r#"{"x": 1}"#.len(),
        calls: 1,
        tools: true,
    };
    assert_eq!(check_served(decoded, &ok), Ok(()));
    assert_eq!(
        check_served(
            decoded,
            &Served {
                text: "Sorry.",
                ..ok
            }
        ),
        Err(Mismatch::Differs)
    );
    let padded = format!(
        "{decoded}{}",
        "y".repeat(2 * CALL_MARKUP_BYTES + MAX_TOKEN_BYTES)
    );
    assert_eq!(check_served(&padded, &ok), Err(Mismatch::CallsTooLong));
}

#[test]
fn the_count_does_not_depend_on_how_ids_were_split() {
    let t = tokenizer();
    let all = ids(&t, "héllo wörld ✓ hello");
    // Every prefix, pushed one id at a time or all at once, bills the same
    // (a running receipt's count is the coordinator's for the same ids).
    for n in 1..=all.len() {
        let mut one = OutputCount::new(&t);
        for id in &all[..n] {
            one.push(&t, &[*id]).unwrap();
        }
        let mut batch = OutputCount::new(&t);
        batch.push(&t, &all[..n]).unwrap();
        assert_eq!(
            one.billable(&t, 0).unwrap(),
            batch.billable(&t, 0).unwrap(),
            "{n}"
        );
    }
}
