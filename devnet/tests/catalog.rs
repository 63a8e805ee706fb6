//! The devnet's model catalog: what it serves is catalogued (read from
//! its files), nodes advertise catalog ids, and the old short names still
//! work through the catalog's aliases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::quantized::GgmlDType;
use serde_json::{Value, json};
use sharenet_coordinator::core::catalog::{Catalog, known};
use sharenet_devnet::{DEVNET_MODEL, DevnetOptions, write_catalog};
use sharenet_engine::tiny::{TinyConfig, write_tiny_gguf, write_tiny_llama};
use tokio_util::sync::CancellationToken;

#[test]
fn a_tiny_gguf_and_the_tiny_folder_are_catalogued_from_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinator/catalog.json");
    let gguf = dir.path().join("tiny.gguf");
    write_tiny_gguf(&gguf, 7, TinyConfig::default(), GgmlDType::Q8_0).unwrap();
    let id = write_catalog(&path, dir.path(), "tiny-gguf", &gguf).unwrap();
    assert_eq!(id, "local/tiny-gguf");
    let catalog = Catalog::open(&path, false).unwrap();
    let e = catalog.get("tiny-gguf").expect("the old name is an alias");
    assert_eq!(e.weights[0].format, "gguf");
    assert_eq!(e.weights[0].quantization, "Q8_0");
    let digest = sharenet_proto_sha256(&std::fs::read(&gguf).unwrap());
    assert_eq!(e.weights[0].weights_sha256, digest);
    assert!(catalog.prompt_model("local/tiny-gguf").is_some());

    // The tiny llama the devnet generates is the project's, by digest.
    let folder = dir.path().join("models/tiny-llama");
    write_tiny_llama(&folder, 1, TinyConfig::default()).unwrap();
    let id = write_catalog(&path, dir.path(), "anything", &folder).unwrap();
    assert_eq!(id, DEVNET_MODEL);
    let catalog = Catalog::open(&path, false).unwrap();
    let tiny = catalog.get("tiny-llama").unwrap();
    assert_eq!(tiny.id, known::TINY_LLAMA);
    assert_eq!(
        tiny.weights[0].weights_sha256,
        known::PROJECT_MODELS[0].weights_sha256,
        "the published digest of write_tiny_llama(dir, 1, default)"
    );
    assert!(catalog.prompt_model(DEVNET_MODEL).is_some());
    // The project's other models, under their canonical ids only.
    for id in [known::SMOLLM2, known::MINILM] {
        let e = catalog.get(id).unwrap();
        assert!(e.aliases.is_empty(), "{id}: {:?}", e.aliases);
    }
}

fn sharenet_proto_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// README's devnet command: builders still ask for `tiny-llama`; nodes
/// advertise `sharenet/tiny-llama`, the only model routable (the devnet
/// command allows nothing outside its catalog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_name_reaches_the_catalogued_model() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let net = sharenet_devnet::start(
        DevnetOptions {
            allow_uncatalogued: false,
            ..DevnetOptions::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap(), 1)
        },
        cancel.clone(),
    )
    .await
    .unwrap();
    assert_eq!(net.model, DEVNET_MODEL);
    let http = reqwest::Client::new();
    let base = net.coordinator.base_url();
    let models: Value = http
        .get(format!("{base}/models"))
        .bearer_auth(&net.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], DEVNET_MODEL, "{models}");
    for name in ["tiny-llama", DEVNET_MODEL] {
        let r = http
            .post(format!("{base}/chat/completions"))
            .bearer_auth(&net.api_key)
            .json(&json!({"model": name, "max_tokens": 4,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["model"], DEVNET_MODEL);
    }
    cancel.cancel();
    net.wait().await;
}
