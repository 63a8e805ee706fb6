//! The node's scheduler seen through the network: many concurrent streams
//! with independent outputs, a client that hangs up freeing its slot, and a
//! full node refusing with a clear reason.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use sharenet_engine::tiny::{TinyConfig, write_tiny_llama};
use sharenet_node::ModelConfig;
use sharenet_tests::{MODEL, PATIENCE, TestNet, sse_data, wait_for};

fn body(i: u64, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": format!("request number {i}")}],
        "max_tokens": 8 + (i % 5) * 4,
        "temperature": if i.is_multiple_of(4) { 0.0 } else { 0.9 },
        "seed": 100 + i,
        "stream": stream,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_simultaneous_streams_each_equal_the_same_request_alone() {
    let t = TestNet::start(1).await;
    let streamed = futures::future::join_all((0..16u64).map(|i| {
        let t = &t;
        async move {
            let raw = t
                .post("chat/completions", &body(i, true))
                .await
                .text()
                .await
                .unwrap();
            let mut text = String::new();
            for e in sse_data(&raw).iter().filter(|e| *e != "[DONE]") {
                let v: Value = serde_json::from_str(e).unwrap();
                assert!(v.get("error").is_none(), "request {i}: {v}");
                text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
            }
            text
        }
    }))
    .await;
    for (i, text) in streamed.iter().enumerate() {
        let alone: Value = t
            .post("chat/completions", &body(i as u64, false))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            text,
            alone["choices"][0]["message"]["content"].as_str().unwrap(),
            "request {i}"
        );
    }
    // Different seeds and prompts gave different outputs.
    let distinct: std::collections::HashSet<&String> = streamed.iter().collect();
    assert!(distinct.len() > 8, "{streamed:?}");
    t.stop().await;
}

async fn narrow_node(t: &TestNet, dir: &std::path::Path) -> sharenet_node::NodeHandle {
    write_tiny_llama(dir, 1, TinyConfig::default()).unwrap();
    t.add_node(vec![ModelConfig {
        max_concurrency: 1,
        max_queue: 0,
        ..ModelConfig::local("narrow", dir.to_path_buf(), 1, 1)
    }])
    .await
}

async fn wait_for_depth(node: &sharenet_node::NodeHandle, want: u32) {
    wait_for(&format!("queue depth {want}"), PATIENCE, || {
        std::future::ready(match node.queue_depth("narrow") {
            Some(depth) if depth == want => Ok(()),
            depth => Err(depth),
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_refuses_and_a_client_hanging_up_frees_its_slot() {
    let t = TestNet::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let node = narrow_node(&t, dir.path()).await;
    let long = json!({"model": "narrow", "messages": [{"role": "user", "content": "go"}],
                      "max_tokens": 1500, "temperature": 0, "stream": true});
    let first = t.post("chat/completions", &long).await;
    assert_eq!(first.status(), 200);
    let mut chunks = first.bytes_stream();
    assert!(chunks.next().await.is_some(), "the first job streams");
    wait_for_depth(&node, 1).await;

    // The only slot is taken and there is no queue: a clear 503.
    let second = t.post("chat/completions", &long).await;
    assert_eq!(second.status(), 503);
    assert!(second.headers().contains_key("retry-after"));
    let err: Value = second.json().await.unwrap();
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Saturated") && message.contains("slots"),
        "{message}"
    );

    // The builder hangs up: the node stops generating and frees the slot.
    // It keeps the last running receipt it sent (far short of the 1500
    // tokens a finished job would have), and the builder is charged for
    // what was generated until then, no more than that receipt covers.
    drop(chunks);
    wait_for_depth(&node, 0).await;
    // The node keeps the receipt and the coordinator books the part the
    // builder received just after the job stops: wait for both (a fixed
    // 300 ms once stood here).
    wait_for(
        "the abandoned job's receipt kept and booked",
        PATIENCE,
        || async {
            let kept = node.store.list(10).unwrap();
            let Some(first) = kept.first() else {
                return Err("the node kept no receipt yet".to_string());
            };
            let id = first.receipt().job_id.to_hex();
            match t.get(&format!("receipts/{id}")).await.status().as_u16() {
                200 => Ok(()),
                status => Err(format!("receipt {id} not booked yet: {status}")),
            }
        },
    )
    .await;
    // "Never countersigned" is a negative check: a bounded wait, in which
    // a countersignature (wrongly) sent with the booking would arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kept = node.store.list(10).unwrap();
    assert_eq!(kept.len(), 1, "one running receipt kept");
    assert!(
        matches!(kept[0], sharenet_ledger::StoredReceipt::NodeSigned(_)),
        "never countersigned"
    );
    let signed = kept[0].receipt().clone();
    assert!(
        signed.output_tokens < 1500,
        "the abandoned job stopped early"
    );
    let booked: Value = t
        .get(&format!("receipts/{}", signed.job_id.to_hex()))
        .await
        .json()
        .await
        .unwrap();
    let booked_out = booked["receipt"]["output_tokens"].as_u64().unwrap();
    assert!(
        booked_out >= 1 && booked_out <= u64::from(signed.output_tokens),
        "charged for what was generated: {booked}"
    );
    let third = t
        .post("chat/completions", &json!({"model": "narrow", "messages": [{"role": "user", "content": "go"}], "max_tokens": 4}))
        .await;
    assert_eq!(third.status(), 200);
    t.stop().await;
}
