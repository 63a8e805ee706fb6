//! One access-log line per API request (issue 15, logs): for a whole
//! request, a stream (written when it ends) and a refusal, as JSON with
//! `--log-format json`'s formatter.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use sharenet_tests::{MODEL, TestNet, sse_data};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn access_lines(c: &Captured) -> Vec<Value> {
    String::from_utf8_lossy(&c.0.lock().unwrap())
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v: &Value| v["target"] == "sharenet::access")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_access_line_with_its_node_tokens_and_cost() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter("sharenet::access=info")
        .with_writer(move || writer.clone())
        .init();
    let t = TestNet::start(1).await;

    let whole: Value = t
        .post(
            "chat/completions",
            &json!({"model": MODEL, "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let streamed = t
        .post(
            "chat/completions",
            &json!({"model": MODEL, "max_tokens": 5, "stream": true,
                    "stream_options": {"include_usage": true},
                    "messages": [{"role": "user", "content": "hi again"}]}),
        )
        .await
        .text()
        .await
        .unwrap();
    let stream_usage: Value = sse_data(&streamed)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .unwrap();
    let refused = t
        .http
        .post(format!("{}/chat/completions", t.base_url()))
        .bearer_auth("sk-wrong")
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let lines = access_lines(&captured);
    let chats: Vec<&Value> = lines
        .iter()
        .filter(|v| v["path"] == "/v1/chat/completions")
        .collect();
    assert_eq!(chats.len(), 3, "one line per request: {lines:#?}");
    for (line, answer) in [
        (
            &whole,
            chats
                .iter()
                .find(|v| v["receipt_id"] == whole["receipt_id"]),
        ),
        (
            &stream_usage,
            chats
                .iter()
                .find(|v| v["receipt_id"] == stream_usage["receipt_id"]),
        ),
    ] {
        let l = answer.unwrap_or_else(|| panic!("no line for {line}: {lines:#?}"));
        assert_eq!(l["status"], 200);
        assert_eq!(l["model"], MODEL);
        assert!(!l["node"].as_str().unwrap().is_empty());
        assert_eq!(l["output_tokens"], line["usage"]["completion_tokens"]);
        assert_eq!(l["input_tokens"], line["usage"]["prompt_tokens"]);
        assert_eq!(
            l["cost_nano_usd"],
            line["usage"]["cost_details"]["charge_nano_usd"]
        );
        assert_ne!(l["app"], "-");
    }
    let stream_line = chats
        .iter()
        .find(|v| v["receipt_id"] == stream_usage["receipt_id"])
        .unwrap();
    assert!(
        stream_line["ttft_ms"].as_f64().unwrap() > 0.0,
        "{stream_line}"
    );
    assert!(
        chats.iter().any(|v| v["status"] == 401 && v["app"] == "-"),
        "{lines:#?}"
    );
    t.stop().await;
}
