//! Trust end to end: spot checks catch a node serving other weights under an
//! honest model's name; a stream that breaks after its first token ends in
//! an error event and a partial charge; a slow node loses traffic to a fast
//! one; sensitive requests stay on the app's private pool.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use sharenet_coordinator::core::registry::Lookup;
use sharenet_engine::tiny::{TinyConfig, write_tiny_llama};
use sharenet_node::ModelConfig;
use sharenet_tests::{MODEL, PATIENCE, TestNet, sse_data, wait_for};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn ask(provider: Value, max_tokens: u32) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "tell me a story"}],
           "max_tokens": max_tokens, "provider": provider})
}

fn hex_key(k: [u8; 32]) -> String {
    hex::encode(k)
}

/// Which node served a response (its receipt's signer).
async fn served_by(t: &TestNet, v: &Value) -> String {
    let id = v["receipt_id"].as_str().unwrap_or_else(|| panic!("{v}"));
    let r: Value = t.get(&format!("receipts/{id}")).await.json().await.unwrap();
    r["receipt"]["node"].as_str().unwrap().to_string()
}

fn honest_weights(t: &TestNet) -> [u8; 32] {
    match t.net().coordinator.core.registry.lookup(MODEL, now_ms()) {
        Lookup::Found(offers) => offers[0].offer.weights_sha256.expect("a weights hash"),
        other => panic!("no offers: {other:?}"),
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn metrics(t: &TestNet) -> String {
    let url = format!("{}/metrics", t.base_url().trim_end_matches("/v1"));
    t.http.get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serving_other_weights_is_caught_by_spot_checks_and_gets_no_more_traffic() {
    let t = TestNet::start_with(2, |o| o.spot_check_rate = 1.0).await;
    let honest = honest_weights(&t);
    // The cheater serves a different (cheaper to make) model under the
    // honest name and claims the honest weights hash; it is also the
    // cheapest node, so price routing sends it traffic at first.
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path(), 999, TinyConfig::default()).unwrap();
    let cheater = t
        .add_node(vec![ModelConfig {
            claimed_weights_sha256: Some(honest),
            ..ModelConfig::local(MODEL, dir.path().to_path_buf(), 1, 1)
        }])
        .await;
    let cheater = hex_key(cheater.public_key());

    // Builders even ask for the cheater first by name: once caught, it is
    // under the trust floor and requests fall back to honest nodes.
    let mut by_cheater = Vec::new();
    let mut m = String::new();
    for i in 0..40 {
        if i == 20 {
            // Checks run in the background, as long as they take (on a
            // loaded machine, longer than twenty requests): wait for the
            // cheater to be caught, and the honest nodes checked, before
            // the second half, whose share of the cheater is asserted.
            m = wait_for("a failed spot check and a passed one", PATIENCE, || async {
                let m = metrics(&t).await;
                let failed = metric(&m, "sharenet_spot_checks_failed_total");
                let checks = metric(&m, "sharenet_spot_checks_total");
                if failed >= 1 && checks >= 2 {
                    Ok(m)
                } else {
                    Err(format!("{failed} failed of {checks} spot checks"))
                }
            })
            .await;
        }
        let r = t
            .post("chat/completions", &ask(json!({"order": [cheater]}), 8))
            .await;
        assert_eq!(r.status(), 200, "request {i}");
        let v: Value = r.json().await.unwrap();
        by_cheater.push(served_by(&t, &v).await == cheater);
        // Pacing, as before (the checks share the nodes with the
        // requests); what is waited for is waited for above.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(by_cheater[0], "the cheater served until caught");
    assert!(
        metric(&m, "sharenet_spot_checks_failed_total") >= 1,
        "a failed spot check was recorded:\n{m}"
    );
    let last: usize = by_cheater[20..].iter().filter(|b| **b).count();
    assert_eq!(
        last, 0,
        "the caught node's traffic share is zero: {by_cheater:?}"
    );
    // The honest nodes passed their checks and keep serving.
    assert!(metric(&m, "sharenet_spot_checks_total") >= 2, "{m}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_ends_in_an_error_event_and_a_partial_charge() {
    let t = TestNet::start(1).await;
    // A slower model, so the job is still running when the node dies.
    let victim = t.add_slow_node().await;
    // Greedy, so the run is the same every time (sampling could draw the
    // end-of-sequence token after a few tokens and finish before the kill).
    let body = json!({"model": "slow-model", "stream": true, "max_tokens": 2000,
                      "temperature": 0,
                      "messages": [{"role": "user", "content": "tell me a long story"}]});
    let r = t.post("chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    let receipt_id = r
        .headers()
        .get("x-sharenet-receipt-id")
        .map(|v| v.to_str().unwrap().to_string());
    let mut stream = r.bytes_stream();
    let mut body = String::new();
    // Kill the node after a few content chunks.
    let content_chunks = |body: &str| {
        sse_data(body)
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
            })
            .count()
    };
    while content_chunks(&body) < 3 {
        let chunk = stream.next().await.expect("more chunks").unwrap();
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    victim.shutdown();
    while let Some(chunk) = stream.next().await {
        body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let events = sse_data(&body);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"].is_string(),
        "the stream ends with an error event, not [DONE]: {last}"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"));
    let received: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    // The charge covers what was received, not max_tokens.
    let usage = &last["usage"];
    let out = usage["completion_tokens"]
        .as_u64()
        .expect("usage on the error event");
    assert!(!received.is_empty());
    assert!((1..2000).contains(&out), "{usage}");
    let cost = &usage["cost_details"];
    let charged = cost["charge_nano_usd"].as_u64().unwrap();
    let input = usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        cost["provider_nano_usd"].as_u64().unwrap(),
        input * 100 + out * 1000
    );
    assert!(charged > 0);
    // Booked in the ledger under the job's id, for exactly that text.
    let id = last["receipt_id"].as_str().unwrap();
    assert_eq!(Some(id.to_string()), receipt_id);
    let r: Value = t.get(&format!("receipts/{id}")).await.json().await.unwrap();
    assert_eq!(r["receipt"]["output_tokens"].as_u64(), Some(out));
    let digest = sharenet_proto::sha256(received.as_bytes());
    assert_eq!(
        r["receipt"]["response_digest"].as_str(),
        Some(hex::encode(digest).as_str()),
        "the receipt covers exactly the text the builder received"
    );
    // The generation lookup says it was cut short.
    let g: Value = t
        .get(&format!("generation?id={id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(g["data"]["cancelled"], true, "{g}");
    assert_eq!(g["data"]["finish_reason"], Value::Null, "{g}");
    assert_eq!(g["data"]["tokens_completion"].as_u64(), Some(out));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_node_loses_traffic_to_a_fast_one() {
    // One fast node (the devnet's tiny model) and one slow node (a bigger
    // model under the same name), at the same price.
    let t = TestNet::start(1).await;
    let fast = hex_key(t.net().nodes[0].public_key());
    let price = match t.net().coordinator.core.registry.lookup(MODEL, now_ms()) {
        Lookup::Found(o) => (o[0].offer.price_in, o[0].offer.price_out),
        other => panic!("{other:?}"),
    };
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(
        dir.path(),
        1,
        // Far slower than the tiny model, so the gap outlasts what both
        // nodes spend per token besides the model (signing, counting) on a
        // busy machine.
        TinyConfig {
            hidden_size: 512,
            intermediate_size: 1536,
            num_hidden_layers: 6,
            ..TinyConfig::default()
        },
    )
    .unwrap();
    // The operator accepts these weights too (the same tokenizer and
    // template): the catalog routes a model's name only to weights it lists.
    let catalog = &t.net().coordinator.core.catalog;
    let (other, _) = sharenet_coordinator::core::catalog::entry_from_path(
        dir.path(),
        sharenet_coordinator::core::catalog::Naming {
            id: MODEL.into(),
            license: "apache-2.0".into(),
            aliases: Vec::new(),
            kind: String::new(),
        },
    )
    .unwrap();
    let mut entry = (*catalog.get(MODEL).unwrap()).clone();
    entry.weights.extend(other.weights);
    catalog.replace(entry, None).unwrap();
    let slow = t
        .add_node(vec![ModelConfig::local(
            MODEL,
            dir.path().to_path_buf(),
            price.0,
            price.1,
        )])
        .await;
    let slow = hex_key(slow.public_key());
    // Both are new (on probation); a few requests name the slow node first
    // so the coordinator has measured both.
    let mut served: Vec<String> = Vec::new();
    for _ in 0..4 {
        let v: Value = t
            .post("chat/completions", &ask(json!({"order": [slow]}), 24))
            .await
            .json()
            .await
            .unwrap();
        served.push(served_by(&t, &v).await);
    }
    for _ in 0..26 {
        let v: Value = t
            .post("chat/completions", &ask(json!({}), 24))
            .await
            .json()
            .await
            .unwrap();
        served.push(served_by(&t, &v).await);
    }
    let count = |from: usize, who: &str| served[from..].iter().filter(|s| *s == who).count();
    assert!(count(0, &slow) >= 1, "the new node was tried: {served:?}");
    assert!(
        count(10, &fast) >= 17,
        "once measured, the fast node takes the traffic ({} of the last 20): {served:?}",
        count(10, &fast)
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_requests_never_reach_a_public_node() {
    let t = TestNet::start(3).await;
    let keys: Vec<[u8; 32]> = t.net().nodes.iter().map(|n| n.public_key()).collect();
    let (status, _) = t
        .operator(
            reqwest::Method::POST,
            "apps",
            Some(json!({"id": "clinic", "builder": "acme",
                        "routing": {"private_pool": [hex_key(keys[2])], "spill_to_public": true}})),
        )
        .await;
    assert_eq!(status, 200);
    t.operator(
        reqwest::Method::POST,
        "apps/clinic/topup",
        Some(json!({"amount_nano_usd": 1_000_000_000_000u64})),
    )
    .await;
    let (_, key) = t
        .operator(reqwest::Method::POST, "apps/clinic/keys", None)
        .await;
    let key = key["key"].as_str().unwrap().to_string();
    let post = |body: Value| {
        let (http, url, key) = (t.http.clone(), t.base_url(), key.clone());
        async move {
            http.post(format!("{url}/chat/completions"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };

    // Sensitive requests, with the pool node the most expensive and the
    // builder asking for the cheapest: all on the pool node.
    let mut sensitive_ids = Vec::new();
    for _ in 0..12 {
        let r = post(ask(json!({"sensitive": true, "sort": "price"}), 4)).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        sensitive_ids.push(v["receipt_id"].as_str().unwrap().to_string());
    }
    // Even when the builder excludes the pool node: refused, not leaked.
    let r = post(ask(
        json!({"sensitive": true, "ignore": [hex_key(keys[2])]}),
        4,
    ))
    .await;
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("private_pool"),
        "{e}"
    );
    // Checked from the nodes' own receipt stores.
    let on = |i: usize| -> Vec<String> {
        t.net().nodes[i]
            .store
            .list(usize::MAX)
            .unwrap()
            .iter()
            .map(|r| r.receipt().job_id.to_hex())
            .collect()
    };
    for id in &sensitive_ids {
        assert!(on(2).contains(id), "served by the pool node");
        assert!(!on(0).contains(id) && !on(1).contains(id), "never public");
    }
    // The pool spills non-sensitive traffic to the public network.
    let r = post(ask(json!({"ignore": [hex_key(keys[2])]}), 4)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // An app whose rules make everything sensitive, pool only.
    let (status, app) = t
        .operator(
            reqwest::Method::PUT,
            "apps/clinic/routing",
            Some(json!({"private_pool": [hex_key(keys[1])], "sensitive": true})),
        )
        .await;
    assert_eq!(status, 200, "{app}");
    let mut served: HashMap<String, usize> = HashMap::new();
    for _ in 0..6 {
        let r = post(ask(json!({"sort": "price"}), 4)).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        *served.entry(served_by_key(&t, &key, &v).await).or_default() += 1;
    }
    assert_eq!(served.len(), 1, "{served:?}");
    assert_eq!(served.get(&hex_key(keys[1])), Some(&6));
    // A sensitive request from an app with no pool is a clear 400.
    let r = t
        .post("chat/completions", &ask(json!({"sensitive": true}), 4))
        .await;
    assert_eq!(r.status(), 400);
    t.stop().await;
}

async fn served_by_key(t: &TestNet, key: &str, v: &Value) -> String {
    let id = v["receipt_id"].as_str().unwrap();
    let r: Value = t
        .http
        .get(format!("{}/receipts/{id}", t.base_url()))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["receipt"]["node"].as_str().unwrap().to_string()
}
