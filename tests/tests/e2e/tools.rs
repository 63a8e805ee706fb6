//! Tools and structured outputs end to end with the official OpenAI Python
//! client (`tests/python/openai_tools_check.py`): a tool-calling round trip
//! streamed and not, `response_format` json_schema on 50 seeds validated
//! with `jsonschema`, the SDK's parse and stream helpers, the cost fields,
//! and every refusal naming its parameter. The model is a random-weight
//! tiny Qwen2: only constrained decoding makes its answers parse.

use serde_json::{Value, json};
use sharenet_engine::Arch;
use sharenet_engine::tiny::{TinyConfig, write_tiny_model};
use sharenet_node::ModelConfig;
use sharenet_tests::{MODEL, TestNet, python, run_client_check, workspace_root};

const TOOLS_MODEL: &str = "tiny-qwen";

/// A one-node devnet plus a node serving the tiny Qwen2; the node and its
/// model folder live as long as the returned handles.
async fn with_qwen() -> (TestNet, sharenet_node::NodeHandle, tempfile::TempDir) {
    let t = TestNet::start(1).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join(TOOLS_MODEL);
    let shape = TinyConfig {
        arch: Arch::Qwen2,
        ..TinyConfig::default()
    };
    write_tiny_model(&dir, 3, shape).expect("write the tiny qwen");
    let node = t
        .add_node(vec![ModelConfig::local(TOOLS_MODEL, dir, 100, 200)])
        .await;
    (t, node, tmp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_client_calls_tools_and_gets_schema_valid_json() {
    let (t, _node, _models) = with_qwen().await;
    run_client_check(
        python(),
        &["tests/python/openai_tools_check.py"],
        &workspace_root(),
        &[
            ("OPENAI_BASE_URL", t.base_url()),
            ("OPENAI_API_KEY", t.key().to_owned()),
            ("SHARENET_TOOLS_MODEL", TOOLS_MODEL.into()),
            ("SHARENET_PLAIN_MODEL", MODEL.into()),
        ],
    )
    .await;
    t.stop().await;
}

/// The official OpenAI JS client (`tests/js/tools_check.mjs`): a tool
/// round trip streamed and not, the SDK's stream helper, json_schema on 50
/// seeds, n = 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_js_client_calls_tools_and_gets_schema_shaped_json() {
    let (t, _node, _models) = with_qwen().await;
    let dir = workspace_root().join("tests/js");
    assert!(
        dir.join("node_modules/openai").exists(),
        "the JS client is missing: run scripts/setup-test-deps (needs node and npm)"
    );
    run_client_check(
        "node",
        &["tools_check.mjs"],
        &dir,
        &[
            ("OPENAI_BASE_URL", t.base_url()),
            ("OPENAI_API_KEY", t.key().to_owned()),
            ("SHARENET_TOOLS_MODEL", TOOLS_MODEL.into()),
        ],
    )
    .await;
    t.stop().await;
}

/// The official `anthropic` client against `/v1/messages`: text, the
/// SDK's stream accumulator, a forced tool call and its result, streamed
/// tool input, and Anthropic-shaped errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_anthropic_client_speaks_messages() {
    let (t, _node, _models) = with_qwen().await;
    let root = t.base_url().trim_end_matches("/v1").to_owned();
    run_client_check(
        python(),
        &["tests/python/anthropic_client_check.py"],
        &workspace_root(),
        &[
            ("ANTHROPIC_BASE_URL", root),
            ("ANTHROPIC_API_KEY", t.key().to_owned()),
            ("SHARENET_TOOLS_MODEL", TOOLS_MODEL.into()),
            ("SHARENET_PLAIN_MODEL", MODEL.into()),
        ],
    )
    .await;
    t.stop().await;
}

/// The models list says which models take tools and structured outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_shows_capabilities() {
    let (t, _node, _models) = with_qwen().await;
    let v: Value = t.get("models").await.json().await.expect("json");
    let caps = |id: &str| {
        v["data"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["id"] == id))
            .map(|m| m["capabilities"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        caps(TOOLS_MODEL),
        json!({"tools": true, "structured_outputs": true})
    );
    assert_eq!(
        caps(MODEL),
        json!({"tools": false, "structured_outputs": true})
    );
    t.stop().await;
}

/// `GET /v1/generation?id=` (OpenRouter's lookup): a response's facts by
/// its own id, the same numbers as its usage; another app gets a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_is_looked_up_by_its_response_id() {
    let t = TestNet::start(1).await;
    let r = t
        .post(
            "chat/completions",
            &json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    let id = body["id"].as_str().expect("id");
    for path in [
        format!("generation?id={id}"),
        format!(
            "generation?id={}",
            body["receipt_id"].as_str().expect("receipt")
        ),
    ] {
        let v: Value = t.get(&path).await.json().await.expect("json");
        let g = &v["data"];
        assert_eq!(g["id"], body["receipt_id"], "{v}");
        assert_eq!(g["tokens_prompt"], body["usage"]["prompt_tokens"]);
        assert_eq!(g["tokens_completion"], body["usage"]["completion_tokens"]);
        assert_eq!(g["total_cost"], body["usage"]["cost"]);
        assert_eq!(g["cost_details"], body["usage"]["cost_details"]);
        assert_eq!(g["provider_name"], body["provider"]);
        assert_eq!(g["finish_reason"], body["choices"][0]["finish_reason"]);
        assert_eq!(g["cancelled"], false);
        assert!(
            g["latency"].as_u64() >= g["time_to_first_token"].as_u64(),
            "{g}"
        );
    }
    // Also at OpenRouter's path.
    let root = t.base_url().trim_end_matches("/v1").to_owned();
    let r = reqwest::Client::new()
        .get(format!("{root}/api/v1/generation?id={id}"))
        .bearer_auth(t.key())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    // Another app cannot read it.
    let other = t.funded_app("other-app", 0).await;
    let r = reqwest::Client::new()
        .get(format!("{}/generation?id={id}", t.base_url()))
        .bearer_auth(other)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
    assert_eq!(t.get("generation?id=chatcmpl-zz").await.status(), 400);
    t.stop().await;
}

/// A `models` fallback list skips a model no node serves with the tools
/// the request needs; alone, that model is a 503 naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_models_are_chosen_by_the_capability_the_request_needs() {
    let (t, _node, _models) = with_qwen().await;
    let tools =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let body = |models: Value| {
        json!({"model": MODEL, "models": models, "tools": tools, "tool_choice": "required",
               "max_tokens": 40, "messages": [{"role": "user", "content": "call f"}]})
    };
    let r = t
        .post("chat/completions", &body(json!([TOOLS_MODEL])))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], TOOLS_MODEL, "{v}");
    let r = t.post("chat/completions", &body(json!([]))).await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("tools"));
    t.stop().await;
}
