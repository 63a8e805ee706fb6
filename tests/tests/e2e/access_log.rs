//! One access-log line per API request (issue 15, logs): for a whole
//! request, a stream (written when it ends) and a refusal, as JSON with
//! `--log-format json`'s formatter.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use sharenet_tests::{MODEL, PATIENCE, TestNet, sse_data, wait_for};

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
    // The stream's line is written when its relay ends, just after the
    // client has read the last event: wait for the three lines.
    let lines = wait_for("three access lines for the chats", PATIENCE, || {
        let lines = access_lines(&captured);
        let chats = lines
            .iter()
            .filter(|v| v["path"] == "/v1/chat/completions")
            .count();
        std::future::ready(if chats >= 3 { Ok(lines) } else { Err(lines) })
    })
    .await;
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

/// The private metrics page (`metrics_listen`) passes `promtool check
/// metrics` (Debian's `prometheus` package, installed by
/// scripts/setup-test-deps), and its series add up to what the requests
/// were told: requests by model, status and app, tokens, spend,
/// time-to-first-token samples, live nodes; the public `/metrics` passes
/// too and has the totals without any app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_add_up_to_the_requests() {
    let t = TestNet::start(1).await;
    let mut out_tokens = 0;
    let mut spend = 0;
    for stream in [false, true] {
        let body = json!({"model": MODEL, "max_tokens": 5, "stream": stream,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}]});
        let r = t.post("chat/completions", &body).await;
        assert_eq!(r.status(), 200);
        let usage = if stream {
            let text = r.text().await.unwrap();
            let last = sse_data(&text)
                .into_iter()
                .filter(|d| d != "[DONE]")
                .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
                .find(|v| !v["usage"].is_null())
                .expect("a usage chunk");
            last["usage"].clone()
        } else {
            r.json::<Value>().await.unwrap()["usage"].clone()
        };
        out_tokens += usage["completion_tokens"].as_u64().unwrap();
        spend += usage["cost_details"]["charge_nano_usd"].as_u64().unwrap();
    }
    assert_eq!(t.get("models").await.status(), 200);
    // The streamed request's line (and numbers) are written when its relay
    // ends, just after the last event: wait until both requests are
    // counted.
    // The per-app series are on the private metrics listener (the
    // devnet's, on loopback); the API port's page is checked below.
    let root = format!(
        "http://{}",
        t.net()
            .coordinator
            .metrics_addr
            .expect("a metrics listener")
    );
    let counted = [
        format!(
            r#"sharenet_inference_requests_total{{app="default",model="{MODEL}",status="200"}} "#
        ),
        format!(r#"sharenet_time_to_first_token_seconds_count{{model="{MODEL}"}} "#),
    ];
    let text = wait_for("both requests in the metrics", PATIENCE, || async {
        let text = reqwest::get(format!("{root}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let both = counted.iter().all(|series| {
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|v| v.trim().parse::<f64>().ok())
                == Some(2.0)
        });
        if both { Ok(text) } else { Err(text) }
    })
    .await;
    let series = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
    };
    let labels = format!(r#"{{app="default",model="{MODEL}"}}"#);
    assert_eq!(
        series(&format!("sharenet_generation_tokens_total{labels}")),
        out_tokens as f64
    );
    assert_eq!(
        series(&format!("sharenet_spend_nano_usd_total{labels}")),
        spend as f64
    );
    assert_eq!(
        series(&format!(
            r#"sharenet_inference_requests_total{{app="default",model="{MODEL}",status="200"}}"#
        )),
        2.0
    );
    assert_eq!(
        series(&format!(
            r#"sharenet_time_to_first_token_seconds_count{{model="{MODEL}"}}"#
        )),
        2.0
    );
    assert_eq!(
        series(r#"sharenet_http_requests_total{path="/v1/models",status="200"}"#),
        1.0
    );
    assert_eq!(
        series(&format!(r#"sharenet_live_nodes{{model="{MODEL}"}}"#)),
        1.0
    );
    // Prometheus's own linter accepts the page.
    sharenet_tests::promtool_check(&text).await;
    // The public page (the API port, no key): the same totals, no app.
    let public = reqwest::get(format!("{}/metrics", t.base_url().trim_end_matches("/v1")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!public.contains("app="), "{public}");
    assert!(
        public.contains(&format!(
            r#"sharenet_spend_nano_usd_total{{model="{MODEL}"}} {spend}"#
        )),
        "{public}"
    );
    sharenet_tests::promtool_check(&public).await;
    t.stop().await;
}
