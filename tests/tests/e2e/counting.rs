//! Issue 26's real-model check of "the coordinator counts every token":
//! SmolLM2-135M-Instruct served by a real llama.cpp server
//! (llama-cpp-python's) behind an unmodified node, through a proxy that
//! multiplies every `usage` the server reports by ten (in answers, in
//! streams and in the node's prompt-size probes), and the same GGUF on the
//! native engine. The builder pays llama.cpp's honest counts, not the
//! proxy's, and the native engine's jobs are counted the same way.
//! (`json_schema`: llama-cpp-python's server does not serve it, so it is
//! not compared here.)

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sharenet_devnet::DevnetModel;
use sharenet_node::{ModelConfig, ModelSource, UpstreamConfig};
use sharenet_tests::{TestNet, sse_data, workspace_root};

/// The name builders use; the devnet catalogues the GGUF under its
/// canonical id with this alias.
const ALIAS: &str = "smollm2-135m-instruct";

/// `usage` with every count multiplied by ten.
fn inflate(usage: &mut Value) {
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        if let Some(n) = usage[k].as_u64() {
            usage[k] = json!(n * 10);
        }
    }
}

/// Forwards to llama.cpp and lies about usage.
async fn lie(State(base): State<String>, uri: axum::http::Uri, body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let resp = reqwest::Client::new()
        .post(format!("{base}{}", uri.path().trim_start_matches("/v1")))
        .json(&req)
        .send()
        .await
        .expect("reach llama.cpp");
    if req["stream"] == json!(true) {
        let text = resp.text().await.unwrap_or_default();
        let mut out = String::new();
        for line in text.lines() {
            match line.strip_prefix("data: ") {
                Some(data) if data != "[DONE]" => {
                    let mut v: Value = serde_json::from_str(data).unwrap();
                    if !v["usage"].is_null() {
                        inflate(&mut v["usage"]);
                    }
                    out.push_str(&format!("data: {v}\n"));
                }
                _ => out.push_str(&format!("{line}\n")),
            }
        }
        ([(header::CONTENT_TYPE, "text/event-stream")], out).into_response()
    } else {
        let mut v: Value = resp.json().await.unwrap();
        inflate(&mut v["usage"]);
        axum::Json(v).into_response()
    }
}

async fn models(State(base): State<String>) -> Response {
    let v: Value = reqwest::get(format!("{base}/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    axum::Json(v).into_response()
}

/// The lying proxy's base URL.
async fn start_proxy(llama: String) -> String {
    let app = Router::new()
        .route("/v1/chat/completions", post(lie))
        .route("/v1/completions", post(lie))
        .route("/v1/models", get(models))
        .with_state(llama);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

/// A request through the network, pinned (`only`) or kept off (`ignore`)
/// a node: its usage and its text (streamed or not).
async fn through(t: &TestNet, body: &Value, provider: Value) -> (Value, String) {
    let mut body = body.clone();
    body["model"] = json!(ALIAS);
    body["provider"] = provider;
    let resp = t.post("chat/completions", &body).await;
    assert_eq!(resp.status(), 200, "{body}");
    if body["stream"] == json!(true) {
        let raw = resp.text().await.unwrap();
        let (mut text, mut usage) = (String::new(), Value::Null);
        for e in sse_data(&raw).iter().filter(|e| *e != "[DONE]") {
            let v: Value = serde_json::from_str(e).unwrap();
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(c);
            }
            if !v["usage"].is_null() {
                usage = v["usage"].clone();
            }
        }
        (usage, text)
    } else {
        let v: Value = resp.json().await.unwrap();
        let message = &v["choices"][0]["message"];
        let text = message["content"].as_str().unwrap_or_default().to_owned();
        (v["usage"].clone(), text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builders_pay_llama_cpps_honest_counts_through_a_lying_upstream_and_the_same_natively() {
    let gguf = workspace_root().join("target/test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.exists(),
        "{} is missing: run scripts/setup-test-deps",
        gguf.display()
    );
    let t = TestNet::start_with(1, |o| {
        o.model = DevnetModel::Path {
            id: ALIAS.into(),
            path: gguf.clone(),
        }
    })
    .await;
    let catalog_id = t
        .net()
        .coordinator
        .core
        .catalog
        .resolve(ALIAS)
        .expect("the devnet catalogues SmolLM2");
    let native = hex::encode(t.net().nodes[0].public_key());

    let (_server, llama) = sharenet_tests::start_llama_server(&gguf, "smollm2", 2048).await;
    let http = reqwest::Client::new();
    let proxy = start_proxy(llama.clone()).await;

    // An unmodified node in front of the lying proxy, given the model's
    // file (its tokenizer and template) as the README tells providers.
    let upstream_node = t
        .add_node(vec![ModelConfig {
            source: ModelSource::Upstream(UpstreamConfig {
                base_url: proxy.clone(),
                model: "smollm2".into(),
                api_key: None,
                context_length: 2048,
                timeout: Duration::from_secs(120),
                capabilities: sharenet_proto::Capabilities {
                    tools: true,
                    structured_outputs: true,
                },
                tokenizer: Some(gguf.clone()),
            }),
            ..ModelConfig::local(&catalog_id, Default::default(), 7, 11)
        }])
        .await;
    let upstream = hex::encode(upstream_node.public_key());
    let tokenizer = sharenet_engine::load_tokenizer(&gguf).unwrap();
    let count = |text: &str| tokenizer.encode(text, false).unwrap().get_ids().len() as u64;

    let question = json!([{"role": "user", "content": "What is the capital of France? Answer in a sentence."}]);
    let cases = [
        (
            "plain",
            json!({"messages": question, "max_tokens": 24, "temperature": 0}),
        ),
        (
            "streamed",
            json!({"messages": question, "max_tokens": 24, "temperature": 0, "stream": true,
                   "stream_options": {"include_usage": true}}),
        ),
    ];
    for (name, body) in cases {
        // llama.cpp's own, honest counts for the same request.
        let mut direct = body.clone();
        direct["model"] = json!("smollm2");
        direct["stream"] = json!(false);
        direct.as_object_mut().unwrap().remove("stream_options");
        let honest: Value = http
            .post(format!("{llama}/chat/completions"))
            .json(&direct)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let honest_in = honest["usage"]["prompt_tokens"].as_u64().unwrap();
        let honest_out = honest["usage"]["completion_tokens"].as_u64().unwrap();
        // The proxy does lie.
        let lied: Value = http
            .post(format!("{proxy}/chat/completions"))
            .json(&direct)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            lied["usage"]["completion_tokens"].as_u64(),
            Some(honest_out * 10)
        );

        let (usage, text) = through(&t, &body, json!({"only": [upstream]})).await;
        let billed_in = usage["prompt_tokens"].as_u64().unwrap();
        let billed_out = usage["completion_tokens"].as_u64().unwrap();
        eprintln!(
            "{name}: llama.cpp {honest_in}/{honest_out}, billed {billed_in}/{billed_out}, text {text:?}"
        );
        assert_eq!(billed_out, honest_out, "{name}: completion exact");
        assert_eq!(billed_out, count(&text), "{name}: the text's own count");
        // The documented slack is none: both render SmolLM2's template from
        // the GGUF and tokenize with its vocabulary.
        assert_eq!(
            billed_in, honest_in,
            "{name}: prompt as llama.cpp counts it"
        );

        // The native engine on the same GGUF: the same prompt count, and its
        // own text counted the same way.
        let (nusage, ntext) = through(&t, &body, json!({"only": [native]})).await;
        let n_in = nusage["prompt_tokens"].as_u64().unwrap();
        let n_out = nusage["completion_tokens"].as_u64().unwrap();
        eprintln!("{name}: native {n_in}/{n_out}, text {ntext:?}");
        assert_eq!(n_in, billed_in, "{name}: one renderer, one prompt count");
        assert_eq!(n_out, count(&ntext), "{name}: the native text's own count");
        if ntext == text {
            assert_eq!(n_out, billed_out, "{name}: same text, same bill");
        }
    }

    // Tools: SmolLM2's chat template takes none, so the coordinator cannot
    // render (and count) a request with tools for it, and refuses it before
    // any node is dialled, whatever llama-cpp-python would make of it (its
    // own function-calling prompt is not the model's). Tools on every model
    // are issue 29; tool-call counting is covered by the scripted nodes of
    // `core::dispatch::tests::count` and `sharenet_prompt::count`.
    let weather = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]);
    let tools = json!({"model": ALIAS, "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": weather, "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 60, "temperature": 0, "provider": {"only": [upstream]}});
    let r = t.post("chat/completions", &tools).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("tools"));
    t.stop().await;
}
