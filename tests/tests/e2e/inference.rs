//! Inference features end to end through a real coordinator and nodes:
//! legacy completions with logprobs, embeddings on real all-MiniLM-L6-v2
//! weights, and a node that forwards to a real llama.cpp server.

use std::time::Duration;

use candle_core::quantized::GgmlDType;
use serde_json::{Value, json};
use sharenet_engine::tiny::{TinyConfig, write_tiny_gguf};
use sharenet_node::{ModelConfig, ModelSource, UpstreamConfig};
use sharenet_tests::{MODEL, TestNet, minilm_dir, sse_data};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_with_logprobs_stream_and_settle_like_chat() {
    let t = TestNet::start(1).await;
    let body = json!({"model": MODEL, "prompt": "Once upon", "max_tokens": 10,
                      "temperature": 0, "logprobs": 3});
    let r: Value = t.post("completions", &body).await.json().await.unwrap();
    assert_eq!(r["object"], "text_completion", "{r}");
    let text = r["choices"][0]["text"].as_str().unwrap().to_string();
    let lp = &r["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), text);
    let n = tokens.len();
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
    assert_eq!(lp["text_offset"][0], 0);
    for top in lp["top_logprobs"].as_array().unwrap() {
        assert_eq!(
            top.as_object().unwrap().len().min(3),
            top.as_object().unwrap().len()
        );
    }
    let completion_tokens = r["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    let stopped = r["choices"][0]["finish_reason"] == "stop";
    assert_eq!(n + usize::from(stopped), completion_tokens);

    // Streamed: the same text and logprobs, chunk by chunk.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let raw = t.post("completions", &sbody).await.text().await.unwrap();
    let events = sse_data(&raw);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut streamed = String::new();
    let mut streamed_tokens = Vec::new();
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "text_completion");
        streamed.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
        if let Some(ts) = v["choices"][0]["logprobs"]["tokens"].as_array() {
            streamed_tokens.extend(ts.iter().map(|t| t.as_str().unwrap().to_string()));
        }
    }
    assert_eq!(streamed, text);
    assert_eq!(streamed_tokens.concat(), text);

    // The receipt covers exactly that completion.
    let id = r["receipt_id"].as_str().unwrap();
    let receipt: Value = t.get(&format!("receipts/{id}")).await.json().await.unwrap();
    assert_eq!(
        receipt["receipt"]["output_tokens"].as_u64().unwrap() as usize,
        completion_tokens
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_on_real_minilm_weights_are_metered_and_receipted() {
    let t = TestNet::start(1).await;
    let _node = t
        .add_node(vec![ModelConfig::local("minilm", minilm_dir(), 20, 0)])
        .await;
    let r = t
        .post(
            "embeddings",
            &json!({"model": "minilm", "input": ["This is an example sentence", "another one"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let first: Vec<f64> = v["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(first.len(), 384);
    for (got, want) in first.iter().zip([0.0677, 0.0635, 0.0487]) {
        assert!((got - want).abs() < 1e-4, "{:?}", &first[..3]);
    }
    assert_eq!(v["data"][1]["index"], 1);
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens >= 8, "{v}");
    assert_eq!(
        v["usage"]["cost_details"]["provider_nano_usd"]
            .as_u64()
            .unwrap(),
        20 * prompt_tokens
    );
    let id = v["receipt_id"].as_str().unwrap();
    let receipt: Value = t.get(&format!("receipts/{id}")).await.json().await.unwrap();
    assert_eq!(
        receipt["receipt"]["input_tokens"].as_u64().unwrap(),
        prompt_tokens
    );
    assert_eq!(receipt["receipt"]["output_tokens"], 0);

    // The wrong endpoint for each kind of model is a 400 naming `model`.
    let r = t
        .post(
            "chat/completions",
            &json!({"model": "minilm", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "model", "{e}");
    let r = t
        .post("embeddings", &json!({"model": MODEL, "input": "x"}))
        .await;
    assert_eq!(r.status(), 400);
    t.stop().await;
}

/// Model `id` served by the OpenAI-compatible server at `base` (as
/// `model`), at 7 / 11 nano-USD per token, declaring `capabilities`.
fn upstream(
    id: &str,
    base: &str,
    model: &str,
    timeout_secs: u64,
    capabilities: sharenet_proto::Capabilities,
) -> ModelConfig {
    ModelConfig {
        source: ModelSource::Upstream(UpstreamConfig {
            base_url: base.to_owned(),
            model: model.into(),
            api_key: None,
            context_length: 1024,
            timeout: Duration::from_secs(timeout_secs),
            capabilities,
            tokenizer: None,
        }),
        ..ModelConfig::local(id, Default::default(), 7, 11)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_forwarding_to_a_real_llama_cpp_server_streams_and_bills_what_it_counted() {
    let t = TestNet::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    write_tiny_gguf(&gguf, 3, TinyConfig::default(), GgmlDType::Q8_0).unwrap();
    let (_server, base) = sharenet_tests::start_llama_server(&gguf, "tiny", 1024).await;
    let http = reqwest::Client::new();
    // The node counts the output with the model's tokenizer (read from
    // the GGUF the server runs), never the server's usage.
    let mut counted = upstream("tiny-upstream", &base, "tiny", 60, Default::default());
    if let ModelSource::Upstream(u) = &mut counted.source {
        u.tokenizer = Some(gguf.clone());
    }
    let _node = t.add_node(vec![counted]).await;

    let messages = json!([{"role": "user", "content": "hello there"}]);
    let direct: Value = http
        .post(format!("{base}/chat/completions"))
        .json(&json!({"model": "tiny", "messages": messages, "max_tokens": 12, "temperature": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let want_text = direct["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    // The prompt as the coordinator counts it (the node, given the model's
    // file, counts it with the same renderer): the tiny GGUF has no chat
    // template, so the documented fallback, not llama.cpp's own default.
    let prompt = sharenet_prompt::ModelSource::inspect(&gguf)
        .unwrap()
        .prompt_model()
        .unwrap();
    let input = sharenet_proto::JobInput::Chat {
        messages: vec![sharenet_proto::ChatMessage::new("user", "hello there")],
    };
    let want_in = u64::from(prompt.count_prompt(&input, None).unwrap());
    assert!(direct["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(direct["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    // What the node bills: the text it streamed, re-tokenized.
    let tokenizer = sharenet_engine::load_tokenizer(&gguf).unwrap();
    let want_out = tokenizer
        .encode(want_text.as_str(), false)
        .unwrap()
        .get_ids()
        .len() as u64;

    // Non-streaming through the network: the upstream's text, and its
    // prompt count; the output as the node counted it.
    let body =
        json!({"model": "tiny-upstream", "messages": messages, "max_tokens": 12, "temperature": 0});
    let r: Value = t
        .post("chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["choices"][0]["message"]["content"],
        want_text.as_str(),
        "{r}"
    );
    assert_eq!(r["usage"]["prompt_tokens"].as_u64().unwrap(), want_in);
    assert_eq!(r["usage"]["completion_tokens"].as_u64().unwrap(), want_out);
    let id = r["receipt_id"].as_str().unwrap();
    let receipt: Value = t.get(&format!("receipts/{id}")).await.json().await.unwrap();
    assert_eq!(
        receipt["receipt"]["input_tokens"].as_u64().unwrap(),
        want_in
    );
    assert_eq!(
        receipt["receipt"]["output_tokens"].as_u64().unwrap(),
        want_out
    );
    assert_eq!(
        receipt["receipt"]["amount"].as_u64().unwrap(),
        7 * want_in + 11 * want_out
    );

    // Streaming: passed through chunk by chunk, same text, usage at the end.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let raw = t
        .post("chat/completions", &sbody)
        .await
        .text()
        .await
        .unwrap();
    let events = sse_data(&raw);
    let mut text = String::new();
    let mut content_chunks = 0;
    let mut usage = Value::Null;
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        if let Some(c) = v["choices"][0]["delta"]["content"]
            .as_str()
            .filter(|c| !c.is_empty())
        {
            text.push_str(c);
            content_chunks += 1;
        }
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
    }
    assert_eq!(text, want_text);
    // A word at a time: the node re-tokenizes at word boundaries.
    let words = want_text.split_whitespace().count();
    assert!(
        content_chunks > 1 || words <= 1,
        "streamed in {content_chunks} chunks"
    );
    assert_eq!(usage["completion_tokens"].as_u64().unwrap(), want_out);

    // Legacy completions are forwarded too.
    let r: Value = t
        .post("completions", &json!({"model": "tiny-upstream", "prompt": "hello", "max_tokens": 5, "temperature": 0}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["object"], "text_completion", "{r}");
    assert!(r["usage"]["completion_tokens"].as_u64().unwrap() >= 1);

    // Tools and JSON mode pass through to the server on a model whose
    // node declares them (llama-cpp-python enforces a named tool_choice
    // and json_object with grammars; it ignores json_schema, so that is
    // not declared here). The same server without the declaration is
    // never sent tools: the request is a 503 naming the capability.
    let _tools_node = t
        .add_node(vec![upstream(
            "tiny-upstream-tools",
            &base,
            "tiny",
            60,
            sharenet_proto::Capabilities {
                tools: true,
                structured_outputs: true,
            },
        )])
        .await;
    let weather = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                       "required": ["city"]}}}]);
    let forced = json!({"type": "function", "function": {"name": "get_weather"}});
    let tools_body = json!({"model": "tiny-upstream-tools", "messages": messages, "max_tokens": 60,
        "temperature": 0, "tools": weather, "tool_choice": forced});
    let r: Value = t
        .post("chat/completions", &tools_body)
        .await
        .json()
        .await
        .unwrap();
    let call = &r["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather", "{r}");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or("")).unwrap();
    assert!(args.is_object(), "{r}");
    let receipt: Value = t
        .get(&format!("receipts/{}", r["receipt_id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        receipt["receipt"]["response_digest"].as_str().unwrap(),
        hex::encode(sharenet_proto::response_digest(
            r["choices"][0]["message"]["content"].as_str().unwrap_or(""),
            &[sharenet_proto::ToolCall {
                id: call["id"].as_str().unwrap().into(),
                name: "get_weather".into(),
                arguments: call["function"]["arguments"].as_str().unwrap().into(),
            }]
        )),
        "the receipt covers the call"
    );
    let mut streamed = tools_body.clone();
    streamed["stream"] = json!(true);
    let raw = t
        .post("chat/completions", &streamed)
        .await
        .text()
        .await
        .unwrap();
    let (mut name, mut arguments) = (String::new(), String::new());
    for e in sse_data(&raw).iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        for tc in v["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            name.push_str(tc["function"]["name"].as_str().unwrap_or(""));
            arguments.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(name, "get_weather", "{raw}");
    assert_eq!(
        arguments,
        call["function"]["arguments"].as_str().unwrap(),
        "{raw}"
    );
    let json_mode: Value = t
        .post(
            "chat/completions",
            &json!({"model": "tiny-upstream-tools", "messages": messages, "max_tokens": 60,
                    "temperature": 0, "response_format": {"type": "json_object"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    // The server's grammar holds the answer to a JSON object: it opens one
    // whatever the random weights say, and parses when it ends in time.
    let content = json_mode["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("");
    assert!(content.trim_start().starts_with('{'), "{json_mode}");
    if json_mode["choices"][0]["finish_reason"] == "stop" {
        assert!(
            serde_json::from_str::<Value>(content).is_ok(),
            "{json_mode}"
        );
    }
    let mut undeclared = tools_body.clone();
    undeclared["model"] = json!("tiny-upstream");
    let r = t.post("chat/completions", &undeclared).await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("tools"));

    // A builder that hangs up mid-stream pays for what it received, and
    // the provider is paid for it (issue 12, item 4): the node now sends
    // running receipts for upstream streams too (this server reports no
    // usage in streams, so the node asks for the prompt's size first).
    let before = listed(&t).await.len();
    let mut long = body.clone();
    long["stream"] = json!(true);
    long["max_tokens"] = json!(990);
    let mut resp = t.post("chat/completions", &long).await;
    assert_eq!(resp.status(), 200);
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || seen.matches("data:").count() < 3 {
        let chunk = resp.chunk().await.unwrap().expect("the stream goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(resp);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let partial = loop {
        let now = listed(&t).await;
        if now.len() > before {
            break now.last().cloned().unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the part the builder received was never booked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = partial["receipt"]["output_tokens"].as_u64().unwrap();
    assert!((1..990).contains(&out), "a part of the job: {out} tokens");
    assert_eq!(
        partial["receipt"]["input_tokens"].as_u64().unwrap(),
        want_in,
        "the prompt's size as the upstream counts it"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_clear_error_not_a_hang() {
    let t = TestNet::start(1).await;
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    let _node = t
        .add_node(vec![ModelConfig {
            price_in: 1,
            price_out: 1,
            ..upstream("gone-upstream", &dead, "x", 5, Default::default())
        }])
        .await;
    let r = t
        .post(
            "chat/completions",
            &json!({"model": "gone-upstream", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Upstream") && message.contains("unreachable"),
        "{message}"
    );
    t.stop().await;
}

/// The caller's receipts, oldest first.
async fn listed(t: &TestNet) -> Vec<Value> {
    let v: Value = t.get("receipts?limit=1000").await.json().await.unwrap();
    v["data"].as_array().cloned().unwrap_or_default()
}
