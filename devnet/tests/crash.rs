//! Crash safety of the books: the coordinator process is killed with
//! SIGKILL while requests are in flight; after a restart on the same data,
//! every receipt a builder was told about is there, none twice, and the
//! usage totals equal the receipts' charges.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const KEY: &str = "sk-devnet-local-only-0000";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn devnet(dir: &std::path::Path, port: u16) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sharenet-devnet"))
        .args(["--nodes", "2", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--dir")
        .arg(dir)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the devnet binary")
}

async fn wait_healthy(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ok = http
            .get(format!("{base}/health"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success());
        if let Some(r) = ok {
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if v["live_nodes"].as_u64().unwrap_or(0) >= 2 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "devnet did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_receipts_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    let mut child = devnet(dir.path(), port);
    wait_healthy(&http, &base).await;

    // Load: concurrent clients, each remembering what it was told.
    let acknowledged: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..6 {
        let (http, base, acknowledged, stop) = (
            http.clone(),
            base.clone(),
            acknowledged.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let body = json!({"model": "tiny-llama", "max_tokens": 4, "user": format!("c{c}"),
                                  "messages": [{"role": "user", "content": format!("client {c} request {i}")}]});
                let Ok(r) = http
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(KEY)
                    .json(&body)
                    .send()
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                if r.status() != 200 {
                    continue;
                }
                let Ok(v) = r.json::<Value>().await else { continue };
                if let (Some(id), Some(charge)) = (
                    v["receipt_id"].as_str(),
                    v["usage"]["cost_details"]["charge_nano_usd"].as_u64(),
                ) {
                    acknowledged.lock().unwrap().push((id.to_string(), charge));
                }
            }
        }));
    }
    // Let acknowledged work pile up, then kill the process mid-flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 20 {
        assert!(Instant::now() < deadline, "no load went through");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    // Restart on the same data.
    let mut child = devnet(dir.path(), port);
    wait_healthy(&http, &base).await;
    let get = |path: String| {
        let req = http.get(format!("{base}/v1/{path}")).bearer_auth(KEY);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let listed = get("receipts?limit=1000".into()).await;
    let listed = listed["data"].as_array().unwrap();
    let ids: Vec<&str> = listed.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no receipt twice");
    for (id, charge) in &acknowledged {
        let r = get(format!("receipts/{id}")).await;
        assert_eq!(r["id"], id.as_str(), "acknowledged receipt {id} lost: {r}");
        assert_eq!(r["cost"]["charge_nano_usd"].as_u64().unwrap(), *charge);
    }
    // Usage is rebuilt from the books: it equals the receipts' charges.
    let usage = get("usage".into()).await;
    let from_usage: u64 = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["charged_nano_usd"].as_u64().unwrap())
        .sum();
    let from_receipts: u64 = listed
        .iter()
        .map(|r| r["cost"]["charge_nano_usd"].as_u64().unwrap())
        .sum();
    assert_eq!(from_usage, from_receipts);
    let told: u64 = acknowledged.iter().map(|(_, c)| c).sum();
    assert!(from_receipts >= told);
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
