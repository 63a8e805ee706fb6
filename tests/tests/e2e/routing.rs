//! Routing preferences and fallback through a real coordinator and nodes.

use serde_json::{Value, json};
use sharenet_node::ModelConfig;
use sharenet_tests::{MODEL, PATIENCE, TestNet, wait_for};

fn ask(provider: Value) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
           "provider": provider})
}

fn node_key(t: &TestNet, i: usize) -> String {
    hex::encode(t.net().nodes[i].public_key())
}

/// Which node served a response (its receipt's signer).
async fn served_by(t: &TestNet, v: &Value) -> String {
    let id = v["receipt_id"].as_str().unwrap_or_else(|| panic!("{v}"));
    let r: Value = t.get(&format!("receipts/{id}")).await.json().await.unwrap();
    r["receipt"]["node"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_preferences_pick_and_exclude_nodes() {
    let t = TestNet::start(3).await;
    let (cheap, mid, dear) = (node_key(&t, 0), node_key(&t, 1), node_key(&t, 2));

    // weights_sha256: only nodes with exactly those weights; a bad hash is
    // a 400 naming the field, an unknown one a 503 naming the filter.
    let weights = match t.net().coordinator.core.registry.lookup(
        MODEL,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    ) {
        sharenet_coordinator::core::registry::Lookup::Found(o) => {
            o[0].offer.weights_sha256.unwrap()
        }
        other => panic!("{other:?}"),
    };
    let r = t
        .post(
            "chat/completions",
            &ask(json!({"weights_sha256": hex::encode(weights)})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = t
        .post("chat/completions", &ask(json!({"weights_sha256": "abc"})))
        .await;
    assert_eq!(r.status(), 400);
    let r = t
        .post(
            "chat/completions",
            &ask(json!({"weights_sha256": hex::encode([7u8; 32])})),
        )
        .await;
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("weights"),
        "{e}"
    );

    // sort: price → the cheapest node.
    let v: Value = t
        .post("chat/completions", &ask(json!({"sort": "price"})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(served_by(&t, &v).await, cheap);
    // order puts a node first; ignore and only exclude.
    let v: Value = t
        .post("chat/completions", &ask(json!({"order": [dear]})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(served_by(&t, &v).await, dear);
    let v: Value = t
        .post(
            "chat/completions",
            &ask(json!({"ignore": [cheap], "sort": "price"})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(served_by(&t, &v).await, mid);
    let v: Value = t
        .post("chat/completions", &ask(json!({"only": [dear]})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(served_by(&t, &v).await, dear);
    // max_price excludes the dearer nodes (node i charges 200 + 100 i per output token).
    let v: Value = t
        .post(
            "chat/completions",
            &ask(json!({"order": [dear], "max_price": {"completion": 250}})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(served_by(&t, &v).await, cheap);

    // Nothing left: 503 naming the constraint that emptied the list.
    let r = t
        .post(
            "chat/completions",
            &ask(json!({"max_price": {"completion": 10}})),
        )
        .await;
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_price"),
        "{e}"
    );
    // Unknown fields in provider: 400 naming the field.
    let r = t
        .post("chat/completions", &ask(json!({"sortt": "price"})))
        .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("sortt"),
        "{e}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_before_its_first_token_falls_back_cleanly_unless_fallbacks_are_off() {
    // A long advert TTL keeps the dead node in routing for the whole test,
    // and a short connect timeout makes trying it quick.
    let t = TestNet::start_with(2, |o| {
        o.advert_ttl = std::time::Duration::from_secs(60);
        o.timeouts.connect = std::time::Duration::from_millis(1500);
    })
    .await;
    let (cheap, dear) = (node_key(&t, 0), node_key(&t, 1));
    // The cheapest node dies; its advert is still live for up to the TTL.
    t.net().nodes[0].shutdown();
    // Dead means its network has stopped (its client's commands fail),
    // not that 200 ms have passed: on a loaded machine it could still have
    // taken the job then.
    let dead = &t.net().nodes[0].client;
    wait_for("the cheapest node's network to stop", PATIENCE, || async {
        match dead.connected_peers().await {
            Err(stopped) => Ok(stopped),
            Ok(peers) => Err(format!("still running, connected to {peers:?}")),
        }
    })
    .await;
    let r = t
        .post("chat/completions", &ask(json!({"order": [cheap]})))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        served_by(&t, &v).await,
        dear,
        "served by the other node, one clean response"
    );
    // With fallbacks off, the builder gets the failure instead.
    let r = t
        .post(
            "chat/completions",
            &ask(json!({"order": [cheap], "allow_fallbacks": false})),
        )
        .await;
    assert_eq!(r.status(), 503);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_list_falls_back_to_the_next_model() {
    let t = TestNet::start(1).await;
    let body = json!({"model": "no-such-model", "models": [MODEL],
                      "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let r = t.post("chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["model"], MODEL,
        "the response names the model that served it"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_keeps_heartbeating_while_other_adverts_arrive() {
    // Each node hears the others' adverts every interval (1 s here); those
    // events must not keep pushing its own heartbeat back (they once did,
    // and healthy nodes expired from routing after the 3 s TTL).
    let t = TestNet::start(3).await;
    // A negative check, so a bounded wait: for more than two TTLs, no
    // node expired.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(t.net().coordinator.core.registry.live_nodes(now), 3);
    let url = format!("{}/metrics", t.base_url().trim_end_matches("/v1"));
    let m = t.http.get(url).send().await.unwrap().text().await.unwrap();
    assert!(
        m.lines().any(|l| l == "sharenet_adverts_pruned_total 0"),
        "no advert expired:\n{m}"
    );
    t.stop().await;
}

/// Licenses and data policy (OpenRouter's `provider.data_collection`, and
/// `provider.licenses`): a request goes only to nodes that match, the
/// models list shows the licenses on offer, and a request nothing matches
/// is a 503 naming the constraint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn licenses_and_data_policy_pick_the_nodes() {
    let t = TestNet::start(1).await;
    let models = tempfile::tempdir().expect("tempdir");
    let dir = models.path().join("licensed");
    sharenet_engine::tiny::write_tiny_llama(&dir, 2, Default::default()).expect("model");
    let offer = |license: &str| ModelConfig {
        license: Some(license.into()),
        ..ModelConfig::local("licensed", dir.clone(), 10, 20)
    };
    // A keeps prompts (say, an upstream that logs them) under MIT; B keeps
    // none, under Apache-2.0.
    let a = t
        .add_node_with(vec![offer("MIT")], |c| c.keeps_prompts = true)
        .await;
    let b = t.add_node(vec![offer("apache-2.0")]).await;
    let ask = |provider: Value| {
        json!({"model": "licensed", "max_tokens": 2, "provider": provider,
               "messages": [{"role": "user", "content": "hi"}]})
    };
    let served_by = |v: &Value| v["provider"].as_str().unwrap_or("").to_owned();
    for _ in 0..4 {
        let r = t
            .post("chat/completions", &ask(json!({"licenses": ["mit"]})))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(served_by(&r.json().await.unwrap()), a.peer_id.to_string());
        let r = t
            .post("chat/completions", &ask(json!({"data_collection": "deny"})))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(served_by(&r.json().await.unwrap()), b.peer_id.to_string());
    }
    let r = t
        .post(
            "chat/completions",
            &ask(json!({"data_collection": "deny", "licenses": ["MIT"]})),
        )
        .await;
    // Each node fails one of the two: the message names a constraint.
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("data_collection") || m.contains("MIT")),
        "{v}"
    );
    let r = t
        .post("chat/completions", &ask(json!({"licenses": ["gpl-3.0"]})))
        .await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("gpl-3.0")),
        "{v}"
    );
    let r = t
        .post(
            "chat/completions",
            &ask(json!({"data_collection": "sometimes"})),
        )
        .await;
    assert_eq!(r.status(), 400);
    let m: Value = t.get("models/licensed").await.json().await.unwrap();
    assert_eq!(m["licenses"], json!(["apache-2.0", "mit"]), "{m}");
    drop((a, b));
    t.stop().await;
}

/// Canonical names and aliases: two nodes serve the same weights under
/// their own local ids, advertise the same canonical name, and are one
/// market under it; an operator's alias reaches it too; each node's own id
/// still reaches only that node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_same_weights_are_one_market_under_their_canonical_name() {
    let canonical = "sharenet/tiny-chat:f32";
    let t = TestNet::start_with(1, |o| {
        o.aliases.insert("tiny-chat".into(), canonical.into());
    })
    .await;
    let models = tempfile::tempdir().expect("tempdir");
    let dir = models.path().join("weights");
    sharenet_engine::tiny::write_tiny_llama(&dir, 4, Default::default()).expect("model");
    let local = |id: &str| ModelConfig {
        canonical: Some("Sharenet/Tiny Chat:F32".into()),
        ..ModelConfig::local(id, dir.clone(), 10, 20)
    };
    let a = t.add_node(vec![local("alpha")]).await;
    let b = t.add_node(vec![local("beta")]).await;
    let ask = |model: &str| json!({"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
    let mut served = std::collections::BTreeSet::new();
    for i in 0..16 {
        let model = if i % 2 == 0 { canonical } else { "tiny-chat" };
        let r = t.post("chat/completions", &ask(model)).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["model"], canonical, "{v}");
        served.insert(v["provider"].as_str().unwrap_or("").to_owned());
        // The receipt names the market, and its signer is one of the two.
        let receipt: Value = t
            .get(&format!("receipts/{}", v["receipt_id"].as_str().unwrap()))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(receipt["receipt"]["model"], canonical);
    }
    let both: std::collections::BTreeSet<String> =
        [a.peer_id.to_string(), b.peer_id.to_string()].into();
    assert_eq!(served, both, "the load spread over both nodes");
    // A node's own id still reaches that node only.
    for _ in 0..3 {
        let r = t.post("chat/completions", &ask("alpha")).await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["provider"], a.peer_id.to_string());
    }
    let listed: Value = t
        .get(&format!("models/{canonical}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["nodes"], 2, "{listed}");
    t.stop().await;
}
