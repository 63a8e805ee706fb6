//! `sharenet-coordinator init` and `catalog add|list|remove` as an
//! operator runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

/// A word-level tokenizer small enough to write inline.
const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"<unk>":0,"hello":1,"world":2},"unk_token":"<unk>"}}"#;

/// A Hugging Face folder of a meaningless tiny model.
fn hf_folder(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type":"llama","max_position_embeddings":256}"#,
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER).unwrap();
    let header =
        br#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&[1; 16]);
    std::fs::write(dir.join("model.safetensors"), st).unwrap();
}

fn coordinator(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sharenet-coordinator"))
        .args(args)
        // No model files where init looks by default.
        .current_dir(dir)
        .env("SHARENET_CACHE", dir.join("no-cache"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn init_writes_the_projects_models_and_the_catalog_commands_change_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let init = coordinator(d, &["init", "--dir", "."]);
    assert!(init.status.success(), "{}", text(&init));
    let catalog = std::fs::read_to_string(d.join("data/catalog.json")).unwrap();
    for id in [
        "sharenet/tiny-llama",
        "huggingfacetb/smollm2-135m-instruct",
        "sentence-transformers/all-minilm-l6-v2",
    ] {
        assert!(catalog.contains(id), "{id}: {catalog}");
    }
    let config = d.join("coordinator.toml");
    let config = config.to_str().unwrap();

    hf_folder(&d.join("tiny"));
    let tiny = d.join("tiny");
    let tiny = tiny.to_str().unwrap();
    let add = |id: &str| {
        coordinator(
            d,
            &[
                "catalog",
                "add",
                tiny,
                "--id",
                id,
                "--license",
                "mit",
                "--alias",
                "tiny",
                "--config",
                config,
            ],
        )
    };
    let added = add("test/tiny");
    assert!(added.status.success(), "{}", text(&added));
    assert!(text(&added).contains("weights sha256"), "{}", text(&added));
    let list = coordinator(d, &["catalog", "list", "--config", config]);
    assert!(text(&list).contains("test/tiny"), "{}", text(&list));
    let json = coordinator(d, &["catalog", "list", "--json", "--config", config]);
    let entries: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 4);

    // Bad input: refused, naming what was wrong.
    let dup = add("test/tiny");
    assert!(!dup.status.success());
    assert!(
        text(&dup).contains("already in the catalog"),
        "{}",
        text(&dup)
    );
    let slug = add("Test Tiny");
    assert!(text(&slug).contains("not a model slug"), "{}", text(&slug));
    let missing = coordinator(
        d,
        &[
            "catalog",
            "add",
            "nope.gguf",
            "--id",
            "test/x",
            "--license",
            "mit",
            "--config",
            config,
        ],
    );
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("no such file"),
        "{}",
        text(&missing)
    );
    std::fs::write(d.join("junk.gguf"), b"junk").unwrap();
    let junk = coordinator(
        d,
        &[
            "catalog",
            "add",
            "junk.gguf",
            "--id",
            "test/x",
            "--license",
            "mit",
            "--config",
            config,
        ],
    );
    assert!(!junk.status.success());
    assert!(
        text(&junk).contains("not a readable GGUF"),
        "{}",
        text(&junk)
    );

    let removed = coordinator(d, &["catalog", "remove", "test/tiny", "--config", config]);
    assert!(removed.status.success(), "{}", text(&removed));
    let again = coordinator(d, &["catalog", "remove", "test/tiny", "--config", config]);
    assert!(
        text(&again).contains("not in the catalog"),
        "{}",
        text(&again)
    );
    let list = coordinator(d, &["catalog", "list", "--config", config]);
    assert!(!text(&list).contains("test/tiny"), "{}", text(&list));
}
