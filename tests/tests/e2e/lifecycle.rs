//! Stopping drains (issue 15, lifecycle). A node: the job it is
//! streaming finishes and its receipt is booked, while new jobs are
//! refused and its adverts stop offering models. A coordinator: the
//! streams it is relaying finish and are booked before it stops. And a
//! node reloaded with new prices (SIGHUP) advertises them at once while
//! the job it is running finishes at the old ones.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use sharenet_tests::{TestNet, sse_data};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_finishes_its_stream_and_takes_no_new_jobs() {
    // A slower model, so the job is still running when the drain starts.
    let (t, node, mut stream, mut text) = slow_stream(300).await;
    // Read until the first content arrives, then drain while it streams.
    while !sse_data(&text)
        .iter()
        .any(|d| d.contains("\"content\":\"") && !d.contains("\"content\":\"\""))
    {
        let chunk = stream.next().await.expect("stream ended early").unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(
        node.jobs_in_flight(),
        1,
        "the job is running when the drain starts"
    );
    let read_rest = async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        text
    };
    // What a SIGTERM does: drain, then stop.
    let drain_then_stop = async {
        let left = node.drain(Duration::from_secs(60)).await;
        node.shutdown();
        left
    };
    // Meanwhile new jobs for its model are not served by it, and its next
    // advert offers no models.
    let during = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = t
                .post(
                    "chat/completions",
                    &json!({"model": "slow-model", "max_tokens": 4,
                            "messages": [{"role": "user", "content": "hello?"}]}),
                )
                .await;
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert!([404, 503].contains(&status), "{status}: {v}");
            let models: Value = t.get("models").await.json().await.unwrap();
            let listed = models["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == "slow-model");
            if !listed {
                return node.jobs_in_flight();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the draining node still advertises its model"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (left, text, running_when_unlisted) = tokio::join!(drain_then_stop, read_rest, during);
    assert_eq!(left, 0, "every job finished within the drain");
    assert_eq!(
        running_when_unlisted, 1,
        "the model was withdrawn while its job still ran"
    );

    // The stream ended normally, with its usage and receipt.
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    let usage: Value = events
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .expect("a usage chunk");
    let receipt_id = usage["receipt_id"].as_str().unwrap().to_string();
    let receipt = t.get(&format!("receipts/{receipt_id}")).await;
    assert_eq!(receipt.status(), 200, "the drained job's receipt is booked");
    node.shutdown();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_coordinator_finishes_its_streams_before_it_stops() {
    let t = TestNet::start(1).await;
    let body = json!({"model": sharenet_tests::MODEL, "stream": true, "max_tokens": 200,
                      "temperature": 0, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "tell me a long story"}]});
    let r = t.post("chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    let first = stream.next().await.expect("a first chunk").unwrap();
    text.push_str(&String::from_utf8_lossy(&first));
    let read_rest = async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        text
    };
    // What a SIGTERM does: drain, then stop everything.
    let cancel = t.cancel_token();
    let coordinator = &t.net().coordinator;
    let drain_then_stop = async {
        let drained = coordinator.drain(Duration::from_secs(60)).await;
        cancel.cancel();
        drained
    };
    let (drained, text) = tokio::join!(drain_then_stop, read_rest);
    assert!(drained, "every response finished within the drain");
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    let usage = events
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .expect("a usage chunk");
    let id = usage["receipt_id"].as_str().unwrap();
    let job: sharenet_proto::JobId = id.parse().unwrap();
    assert!(
        t.net()
            .coordinator
            .core
            .accounts
            .books()
            .entry(&job)
            .unwrap()
            .is_some(),
        "the drained stream's receipt is in the books"
    );
    t.stop().await;
}

/// A devnet with a slow node, and a stream of `max_tokens` on it that has
/// started: the stream and the text of its first chunk.
async fn slow_stream(max_tokens: u32) -> (TestNet, sharenet_node::NodeHandle, Chunks, String) {
    let t = TestNet::start(1).await;
    let node = t.add_slow_node().await;
    let body = json!({"model": "slow-model", "stream": true, "max_tokens": max_tokens,
                      "temperature": 0, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "tell me a long story"}]});
    let r = t.post("chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream().map(|c| c.map(|b| b.to_vec())).boxed();
    let text = String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()).to_string();
    (t, node, stream, text)
}

/// A response body's chunks.
type Chunks = futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reprice_reaches_the_next_advert_and_running_jobs_keep_their_price() {
    let (t, node, mut stream, mut text) = slow_stream(100).await;
    assert_eq!(node.jobs_in_flight(), 1);

    // The operator raises the price and reloads.
    let mut config = node.config().clone();
    config.models[0].price_in = 150;
    config.models[0].price_out = 1500;
    let reload = node.reload(&config).await;
    assert_eq!(reload.repriced.len(), 1, "{reload:?}");
    assert!(reload.needs_restart.is_empty(), "{reload:?}");

    let advertised = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let models: Value = t.get("models").await.json().await.unwrap();
            let price = models["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["id"] == "slow-model")
                .map(|m| m["pricing"]["completion_nano_usd_per_token"].clone());
            if price == Some(json!(1500)) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "still {price:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let read_rest = async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        text
    };
    let ((), text) = tokio::join!(advertised, read_rest);
    let usage = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .unwrap_or_else(|| panic!("no usage chunk: {text}"));
    let id = usage["receipt_id"].as_str().unwrap();
    let receipt: Value = t.get(&format!("receipts/{id}")).await.json().await.unwrap();
    assert_eq!(
        receipt["receipt"]["price_out"], 1000,
        "the running job kept its price: {receipt}"
    );
    node.shutdown();
    t.stop().await;
}

/// SIGHUP's model-list changes: a model removed from the config stops being
/// advertised while its running stream finishes; a model added is loaded
/// and served; one that cannot load is reported, and the rest applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_models_and_the_removed_ones_stream_finishes() {
    let (t, node, mut stream, mut text) = slow_stream(60).await;

    let mut config = node.config().clone();
    let slow = config.models[0].clone();
    let mut second = slow.clone();
    second.id = "second-model".into();
    let mut broken = slow.clone();
    broken.id = "broken-model".into();
    broken.source =
        sharenet_node::config::ModelSource::Local(std::path::PathBuf::from("/nonexistent/model"));
    config.models = vec![second, broken];
    let reload = node.reload(&config).await;
    assert_eq!(reload.removed, vec!["slow-model".to_string()], "{reload:?}");
    assert_eq!(reload.added, vec!["second-model".to_string()], "{reload:?}");
    assert!(
        reload.failed.len() == 1 && reload.failed[0].starts_with("broken-model"),
        "{reload:?}"
    );

    // The removed model's stream runs to its end and is billed.
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(events.iter().any(|e| e.contains("receipt_id")), "{text}");

    // The next advert offers the new list.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let models: Value = t.get("models").await.json().await.unwrap();
        let ids: Vec<&str> = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["id"].as_str())
            .collect();
        if ids.contains(&"second-model") && !ids.contains(&"slow-model") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {ids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = t
        .post(
            "chat/completions",
            &json!({"model": "second-model", "max_tokens": 3,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    node.shutdown();
    t.stop().await;
}

/// The node's local API (`admin_listen`): health, readiness, a status that
/// shows its model and this period's earnings once a job is served, and
/// `/metrics` that counts the job and passes `promtool check metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reports_its_status_and_metrics_on_loopback() {
    let t = TestNet::start(1).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let admin: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().join("admin-model");
    sharenet_engine::tiny::write_tiny_llama(&dir, 5, Default::default()).unwrap();
    let _node = t
        .add_node_with(
            vec![sharenet_node::ModelConfig::local("admin-model", dir, 3, 9)],
            |c| c.admin_listen = Some(admin),
        )
        .await;
    let base = format!("http://{admin}");
    let get = |path: &str| reqwest::get(format!("{base}{path}"));
    assert_eq!(get("/health").await.unwrap().status(), 200);
    assert_eq!(get("/ready").await.unwrap().status(), 200);
    let r = t
        .post(
            "chat/completions",
            &json!({"model": "admin-model", "max_tokens": 4,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let usage = r.json::<Value>().await.unwrap()["usage"].clone();
    let provider_cost = usage["cost_details"]["provider_nano_usd"].as_u64().unwrap();
    // The receipt counts as earned once its countersigned copy is stored
    // (it rides on the store's next flush, within half a second).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status: Value = get("/status").await.unwrap().json().await.unwrap();
        if status["this_period"]["jobs"] == 1 {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["models"][0]["id"], "admin-model", "{status}");
    assert_eq!(status["models"][0]["price_in"], 3, "{status}");
    assert_eq!(status["receipts"]["countersigned"], 1, "{status}");
    assert_eq!(
        status["this_period"]["earned_nano_usd"].as_u64(),
        Some(provider_cost),
        "{status}"
    );
    let text = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        text.contains(r#"sharenet_node_jobs_total{finish_reason="#)
            && text.contains(&format!(
                r#"sharenet_node_earned_nano_usd_total{{model="admin-model"}} {provider_cost}"#
            )),
        "{text}"
    );
    sharenet_tests::promtool_check(&text).await;
    t.stop().await;
}
