use sha2::{Digest, Sha256};

use super::*;
use crate::tokenizer::tests::gpt2_metadata;

/// A GGUF v3 file: `values` (key, type, encoded value), one tensor info,
/// then some data bytes.
fn write_gguf(path: &Path, values: &[(&str, u32, Vec<u8>)], tensor_type: u32) {
    let string = |s: &str| {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend(s.as_bytes());
        v
    };
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(1u64.to_le_bytes());
    out.extend((values.len() as u64).to_le_bytes());
    for (k, t, v) in values {
        out.extend(string(k));
        out.extend(t.to_le_bytes());
        out.extend(v);
    }
    out.extend(string("blk.0.attn_q.weight"));
    out.extend(2u32.to_le_bytes());
    out.extend(32u64.to_le_bytes());
    out.extend(4u64.to_le_bytes());
    out.extend(tensor_type.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend([7u8; 64]);
    std::fs::write(path, out).unwrap();
}

fn gguf_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend(s.as_bytes());
    v
}

fn gguf_strings(items: &[&str]) -> Vec<u8> {
    let mut v = 8u32.to_le_bytes().to_vec();
    v.extend((items.len() as u64).to_le_bytes());
    for i in items {
        v.extend(gguf_string(i));
    }
    v
}

/// The tokens and merges of [`gpt2_metadata`] as GGUF values.
fn tokenizer_values() -> Vec<(&'static str, u32, Vec<u8>)> {
    let md = gpt2_metadata();
    let strings = |key: &str| -> Vec<String> {
        md.get(key)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens");
    let merges = strings("tokenizer.ggml.merges");
    let refs = |v: &[String]| gguf_strings(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let mut types = 5u32.to_le_bytes().to_vec();
    types.extend((tokens.len() as u64).to_le_bytes());
    for t in &tokens {
        types.extend(if t.starts_with("<|") { 3i32 } else { 1 }.to_le_bytes());
    }
    vec![
        ("tokenizer.ggml.model", 8, gguf_string("gpt2")),
        ("tokenizer.ggml.tokens", 9, refs(&tokens)),
        ("tokenizer.ggml.merges", 9, refs(&merges)),
        ("tokenizer.ggml.token_type", 9, types),
    ]
}

const TEMPLATE: &str = "{% for m in messages %}<|start|>{{ m.content }}<|end|>{% endfor %}";

#[test]
fn a_gguf_file_gives_its_prompt_side_context_quantization_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let mut values = tokenizer_values();
    values.extend([
        ("general.architecture", 8, gguf_string("qwen2")),
        ("general.license", 8, gguf_string(" mit ")),
        ("general.name", 8, gguf_string("Tiny Q")),
        ("qwen2.context_length", 4, 32768u32.to_le_bytes().to_vec()),
        (
            "tokenizer.ggml.bos_token_id",
            4,
            1u32.to_le_bytes().to_vec(),
        ),
        (
            "tokenizer.ggml.eos_token_id",
            5,
            0i32.to_le_bytes().to_vec(),
        ),
        ("tokenizer.chat_template", 8, gguf_string(TEMPLATE)),
    ]);
    write_gguf(&path, &values, 8);
    let s = ModelSource::read(&path).unwrap();
    assert_eq!(s.format, FileFormat::Gguf);
    assert_eq!(s.quantization, "Q8_0");
    assert_eq!(s.architecture, "qwen2");
    assert_eq!(s.context_length, 32768);
    assert_eq!(s.eos_token_ids, vec![0]);
    assert_eq!(s.license.as_deref(), Some("mit"));
    assert_eq!(s.name.as_deref(), Some("Tiny Q"));
    let digest: [u8; 32] = Sha256::digest(std::fs::read(&path).unwrap()).into();
    assert_eq!(s.weights_sha256(), Some(digest));
    assert_eq!(s.weights[0].sha256, Some(digest));
    // Qwen2 adds no BOS unless it says; the BOS/EOS texts come from the
    // tokenizer.
    assert_eq!(s.prompt.bos_token.as_deref(), Some("<|start|>"));
    assert_eq!(s.prompt.eos_token.as_deref(), Some("<|end|>"));
    assert!(!s.prompt.add_bos);
    let p = s.prompt_model().unwrap();
    let input = sharenet_proto::JobInput::Chat {
        messages: vec![sharenet_proto::ChatMessage::new("user", "ab ab")],
    };
    assert_eq!(p.render(&input, None).unwrap(), "<|start|>ab ab<|end|>");
    assert_eq!(p.encode_request(&input, None).unwrap(), vec![1, 2, 3, 0]);
    // Without hashing: the same, no digests.
    let cheap = ModelSource::inspect(&path).unwrap();
    assert_eq!(cheap.weights_sha256(), None);
    assert_eq!(cheap.prompt, s.prompt);

    // A tokenizer.json beside the file is used instead of the metadata.
    std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
    let err = ModelSource::inspect(&path).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn a_malformed_gguf_is_a_parse_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    write_gguf(&path, &tokenizer_values(), 8);
    let bytes = std::fs::read(&path).unwrap();
    for cut in [3, 10, 30, 200, bytes.len() - 70] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert!(
            matches!(ModelSource::inspect(&path), Err(PromptError::Parse { .. })),
            "cut at {cut}"
        );
    }
    assert!(matches!(
        ModelSource::read(&dir.path().join("missing")),
        Err(PromptError::Read { .. })
    ));
}

/// A safetensors file whose header lists `tensors` (name, dtype).
fn write_safetensors(path: &Path, tensors: &[(&str, &str)]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    for (name, dtype) in tensors {
        header.insert(
            (*name).into(),
            json!({"dtype": dtype, "shape": [1], "data_offsets": [0, 2]}),
        );
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend([0u8; 2]);
    std::fs::write(path, out).unwrap();
}

fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let (_, tokenizer_json) = tokenizer_from_gguf(Path::new("m"), &gpt2_metadata()).unwrap();
    std::fs::write(p.join("tokenizer.json"), tokenizer_json).unwrap();
    std::fs::write(
        p.join("config.json"),
        r#"{"model_type": "llama", "max_position_embeddings": 8192, "bos_token_id": 1,
            "eos_token_id": [4], "_name_or_path": "org/tiny"}"#,
    )
    .unwrap();
    std::fs::write(
        p.join("tokenizer_config.json"),
        serde_json::to_string(&json!({
            "bos_token": {"content": "<|start|>"},
            "eos_token": "<|end|>",
            "chat_template": [{"name": "default", "template": TEMPLATE}],
        }))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(p.join("generation_config.json"), r#"{"eos_token_id": 2}"#).unwrap();
    std::fs::write(
        p.join("README.md"),
        "---\nlicense: \"apache-2.0\"\n---\n# Tiny\n",
    )
    .unwrap();
    write_safetensors(
        &p.join("model-00002-of-00002.safetensors"),
        &[("lm_head.weight", "BF16")],
    );
    write_safetensors(
        &p.join("model-00001-of-00002.safetensors"),
        &[("a", "BF16"), ("norm", "F32")],
    );
    dir
}

#[test]
fn a_hugging_face_folder_gives_the_same_fields_and_hashes_every_shard() {
    let dir = folder();
    let s = ModelSource::read(dir.path()).unwrap();
    assert_eq!(s.format, FileFormat::Safetensors);
    assert_eq!(s.quantization, "BF16");
    assert_eq!(s.architecture, "llama");
    assert_eq!(s.context_length, 8192);
    // config.json, the eos_token's id and generation_config.json, sorted.
    assert_eq!(s.eos_token_ids, vec![0, 2, 4]);
    assert_eq!(s.license.as_deref(), Some("apache-2.0"));
    assert_eq!(s.name.as_deref(), Some("org/tiny"));
    assert!(s.prompt.add_bos);
    assert_eq!(s.prompt.bos_token.as_deref(), Some("<|start|>"));
    assert_eq!(s.prompt.chat_template.as_deref(), Some(TEMPLATE));
    // Shards in name order; the whole digest over their bytes in order.
    let names: Vec<_> = s
        .weights
        .iter()
        .map(|w| w.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"
        ]
    );
    let mut all = Sha256::new();
    for w in &s.weights {
        let bytes = std::fs::read(&w.path).unwrap();
        assert_eq!(w.bytes, bytes.len() as u64);
        assert_eq!(w.sha256, Some(Sha256::digest(&bytes).into()));
        all.update(&bytes);
    }
    assert_eq!(s.weights_sha256(), Some(all.finalize().into()));
    // The template writes the BOS text itself: no second BOS id.
    let p = s.prompt_model().unwrap();
    let input = sharenet_proto::JobInput::Chat {
        messages: vec![sharenet_proto::ChatMessage::new("user", "ab")],
    };
    assert_eq!(p.encode_request(&input, None).unwrap(), vec![1, 2, 0]);
}

#[test]
fn broken_folders_are_errors_that_name_the_file() {
    let dir = folder();
    let p = dir.path();
    std::fs::write(
        p.join("model-00001-of-00002.safetensors"),
        u64::MAX.to_le_bytes(),
    )
    .unwrap();
    let err = ModelSource::inspect(p).unwrap_err().to_string();
    assert!(
        err.contains("model-00001") && err.contains("header"),
        "{err}"
    );

    let dir = folder();
    let p = dir.path();
    std::fs::write(
        p.join("tokenizer_config.json"),
        r#"{"chat_template": "{% for %}"}"#,
    )
    .unwrap();
    let s = ModelSource::inspect(p).unwrap();
    let err = s.prompt_model().unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json"), "{err}");

    let dir = folder();
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "safetensors") {
            std::fs::remove_file(f).unwrap();
        }
    }
    let err = ModelSource::inspect(dir.path()).unwrap_err().to_string();
    assert!(err.contains("no *.safetensors"), "{err}");
}
