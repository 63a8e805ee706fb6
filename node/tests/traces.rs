//! One trace across two processes: this test process runs a coordinator
//! (its spans exported as `sharenet-coordinator`), a real `sharenet-node`
//! process serves the job (exported as `sharenet-node`), and both send
//! OTLP/HTTP (JSON) to a collector the test runs. The node's job span is a
//! child of the coordinator's, through the `traceparent` in the job
//! request. While the node runs, `sharenet-node receipts` and `earnings`
//! read its store through its local API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use serde_json::{Value, json};
use sharenet_coordinator::{CoordinatorConfig, Timeouts};

mod common;

/// A span as a collector received it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

fn spans(body: &Value) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in body["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_owned();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
                out.push(Span {
                    service: service.clone(),
                    name: text("name"),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                });
            }
        }
    }
    out
}

#[cfg(unix)]
#[test]
fn one_trace_spans_the_coordinator_and_the_node() {
    // The collector's port first: the exporter reads it from the
    // environment when logging starts, before any other thread runs.
    let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    collector.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let otel_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    for (k, v) in otel_env {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var(k, v) };
    }
    let telemetry = sharenet_daemon::init_logs(None, "sharenet-coordinator").unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let received: Arc<Mutex<Vec<Span>>> = Arc::default();
    let dir = tempfile::tempdir().unwrap();
    let mut node = runtime.block_on(async {
        let sink = received.clone();
        let app = Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                sink.lock().unwrap().extend(spans(&v));
                axum::Json(json!({}))
            }),
        );
        let listener = tokio::net::TcpListener::from_std(collector).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let cancel = tokio_util::sync::CancellationToken::new();
        let key = "sk-trace-test".to_owned();
        let coordinator = sharenet_coordinator::start(
            CoordinatorConfig {
                identity: sharenet_p2p::Identity::generate(),
                data_dir: dir.path().join("coordinator"),
                http_listen: "127.0.0.1:0".parse().unwrap(),
                p2p_listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
                bootstrap: Vec::new(),
                api_keys: vec![key.clone()],
                network_fee_bps: 500,
                operator_key: None,
                bootstrap_balance: 1_000_000_000_000,
                period_rule: sharenet_market::PeriodRule::CalendarMonth,
                max_attempts: 2,
                timeouts: Timeouts::default(),
                spot_check_rate: 0.0,
                relay_server: false,
                spot_check_funding: 0,
                price_ceiling: Default::default(),
                spill_queue_factor: 5,
                aliases: Default::default(),
                // Models outside the (empty) catalog are routable here.
                catalog: sharenet_coordinator::config::CatalogConfig {
                    file: None,
                    allow_uncatalogued: true,
                },
                database: None,
            },
            cancel.clone(),
        )
        .await
        .unwrap();

        // A real node process, told to serve this coordinator.
        let node_dir = dir.path().join("node");
        let bin = env!("CARGO_BIN_EXE_sharenet-node");
        let addr = coordinator.p2p_addrs[0].to_string();
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new(bin)
            .args(["init", "--dir"])
            .arg(&node_dir)
            .args(["--coordinator", &addr]));
        ok(Command::new(bin)
            .arg("gen-tiny-model")
            .arg(node_dir.join("models/tiny-llama")));
        let config = node_dir.join("node.toml");
        common::on_loopback(&config);
        let node = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .envs(otel_env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while coordinator
            .core
            .registry
            .live_nodes(sharenet_coordinator::core::now_ms())
            == 0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the node never advertised"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let r = reqwest::Client::new()
            .post(format!("{}/chat/completions", coordinator.base_url()))
            .bearer_auth(&key)
            .json(&json!({"model": "tiny-llama", "max_tokens": 4,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

        // Both processes export within their batch delay.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = received.lock().unwrap().clone();
            let node_job = got
                .iter()
                .find(|s| s.service == "sharenet-node" && s.name == "job");
            if node_job.is_some() || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The daemon holds the receipt store: `receipts` and `earnings`
        // ask its local API instead.
        let out = Command::new(bin)
            .args(["receipts", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && listed.contains("tiny-llama")
                && listed.contains("1 receipts in store"),
            "{listed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(bin)
            .args(["earnings", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let earned = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && earned.lines().count() == 2,
            "{earned}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cancel.cancel();
        node
    });
    let _ = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status();
    let _ = node.wait();
    drop(telemetry);

    let got = received.lock().unwrap().clone();
    let by_id: HashMap<&str, &Span> = got.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let node_job = got
        .iter()
        .find(|s| s.service == "sharenet-node" && s.name == "job")
        .unwrap_or_else(|| panic!("no job span from the node: {got:#?}"));
    let parent = by_id
        .get(node_job.parent_span_id.as_str())
        .unwrap_or_else(|| panic!("the node's job span has no parent among {got:#?}"));
    assert_eq!(parent.service, "sharenet-coordinator");
    assert_eq!(parent.name, "job");
    assert_eq!(parent.trace_id, node_job.trace_id);
    let request = by_id
        .get(parent.parent_span_id.as_str())
        .unwrap_or_else(|| panic!("the coordinator's job span has no parent among {got:#?}"));
    assert_eq!(request.name, "POST /v1/chat/completions");
    assert_eq!(request.trace_id, node_job.trace_id, "one trace");
}
