//! Chat completions end to end: HTTP -> coordinator -> libp2p (QUIC) ->
//! node -> candle, streamed and not, with receipts checked on both sides.

use std::time::Duration;

use serde_json::{Value, json};
use sharenet_api::openai::ChatCompletion;
use sharenet_ledger::StoredReceipt;
use sharenet_p2p::peer_id_of;
use sharenet_proto::{CountersignedReceipt, JobId, sha256};
use sharenet_tests::{MODEL, PATIENCE, TestNet, sse_data, wait_for};

fn chat(stream: bool, include_usage: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say something."}
        ],
        "max_tokens": 24,
        "temperature": 0.8,
        "top_p": 0.95,
        "seed": 7,
        "stream": stream,
        "stream_options": {"include_usage": include_usage},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_text_equals_non_streamed_text_and_receipts_verify() {
    let t = TestNet::start(2).await;

    // Non-streaming.
    let resp = t.post("chat/completions", &chat(false, false)).await;
    assert_eq!(resp.status(), 200);
    let header_id = resp
        .headers()
        .get("x-sharenet-receipt-id")
        .expect("receipt id header")
        .to_str()
        .unwrap()
        .to_string();
    // Typed with the one wire definition the coordinator writes.
    let body: ChatCompletion = resp.json().await.unwrap();
    assert_eq!(body.object, "chat.completion");
    assert_eq!(body.model, MODEL);
    assert_eq!(body.choices[0].message.role, "assistant");
    let text = body.choices[0].message.content.clone().unwrap_or_default();
    let usage = &body.usage;
    let completion_tokens = u64::from(usage.completion_tokens);
    let prompt_tokens = u64::from(usage.prompt_tokens);
    assert!((1..=24).contains(&completion_tokens));
    assert_eq!(usage.total_tokens, prompt_tokens + completion_tokens);
    assert_eq!(
        usage.cost_details.charge_nano_usd,
        usage.cost_details.provider_nano_usd
            + usage.cost_details.network_fee_nano_usd
            + usage.cost_details.margin_nano_usd
    );
    assert_eq!(body.receipt_id, header_id);
    let finish = body.choices[0].finish_reason.as_str();
    assert!(finish == "length" || finish == "stop");

    // Streaming, same seed: same text, token by token.
    let resp = t.post("chat/completions", &chat(true, true)).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let sse = resp.text().await.unwrap();
    let data = sse_data(&sse);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        streamed, text,
        "streamed and non-streamed text differ for one seed"
    );
    let content_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert!(
        content_chunks > 1 || completion_tokens <= 1,
        "tokens should arrive as separate chunks"
    );
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], completion_tokens);
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], prompt_tokens);
    let finish_chunk = &chunks[chunks.len() - 2];
    assert_eq!(finish_chunk["choices"][0]["finish_reason"], finish);

    // Without include_usage there is no usage chunk.
    let resp = t.post("chat/completions", &chat(true, false)).await;
    let data = sse_data(&resp.text().await.unwrap());
    assert!(data.iter().all(|d| !d.contains("\"usage\"")));

    // The receipt: node-signed by the cheapest node, countersigned by us.
    let resp = t.get(&format!("receipts/{header_id}")).await;
    assert_eq!(resp.status(), 200);
    let view: Value = resp.json().await.unwrap();
    let bytes = hex::decode(view["countersigned_bytes"].as_str().unwrap()).unwrap();
    let receipt = CountersignedReceipt::from_bytes(&bytes).expect("both signatures verify");
    let r = receipt.receipt();
    let cheapest = &t.net().nodes[0];
    assert_eq!(
        peer_id_of(&r.node).unwrap(),
        cheapest.peer_id,
        "served by the cheapest node"
    );
    assert_eq!(
        r.coordinator,
        t.net().coordinator.core.identity.public_key(),
        "made out to and countersigned by the coordinator"
    );
    assert_eq!(u64::from(r.output_tokens), completion_tokens);
    assert_eq!(u64::from(r.input_tokens), prompt_tokens);
    let (price_in, price_out) = sharenet_devnet::node_prices(0);
    assert_eq!((r.price_in, r.price_out), (price_in, price_out));
    assert_eq!(
        r.amount,
        prompt_tokens * price_in + completion_tokens * price_out
    );
    assert_eq!(body.usage.cost_details.provider_nano_usd, r.amount);
    assert_eq!(r.response_digest, sha256(text.as_bytes()));

    // The node kept its own copy and upgraded it to the countersigned one.
    let job_id: JobId = header_id.parse().unwrap();
    let stored = wait_for(
        "the node to store the countersigned receipt",
        PATIENCE,
        || {
            std::future::ready(match cheapest.store.get(&job_id) {
                Ok(Some(StoredReceipt::Countersigned(c))) => Ok(Some(c)),
                other => Err(other),
            })
        },
    )
    .await;
    assert_eq!(
        stored.as_ref(),
        Some(&receipt),
        "node stores the countersigned receipt"
    );

    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_openai_shaped() {
    let t = TestNet::start(1).await;
    let url = format!("{}/chat/completions", t.base_url());

    let missing = t
        .http
        .post(&url)
        .json(&chat(false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");

    let wrong = t
        .http
        .post(&url)
        .bearer_auth("sk-wrong-wrong-wrong")
        .json(&chat(false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let bad_json = t
        .http
        .post(&url)
        .bearer_auth(t.key())
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);
    let body: Value = bad_json.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let mut unknown = chat(false, false);
    unknown["model"] = json!("no-such-model");
    let resp = t.post("chat/completions", &unknown).await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");

    let mut bad_param = chat(false, false);
    bad_param["temperature"] = json!(9);
    let resp = t.post("chat/completions", &bad_param).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["param"], "temperature");

    let resp = t.get("receipts/00000000000000000000000000000000").await;
    assert_eq!(resp.status(), 404);

    let models: Value = t.get("models").await.json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);

    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_live_node_is_503_and_a_silent_node_leaves_routing_within_its_ttl() {
    let t = TestNet::start(1).await;
    // Stop the only node: its advert expires (TTL 3 s in the harness).
    let live = |t: &TestNet| t.net().coordinator.core.registry.live_nodes(now_ms());
    assert_eq!(live(&t), 1);
    t.net().nodes[0].shutdown();
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while live(&t) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "advert still live after its TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = t.post("chat/completions", &chat(false, false)).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    t.stop().await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
