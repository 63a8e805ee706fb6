//! The entry point as a test drives it: [`crate::spawn`] on a port-0
//! listener over a scripted network (adverts arrive as network events),
//! real HTTP in and out, and a shutdown that ends every task it started,
//! including a stream in flight.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod catalog;
pub(crate) mod support;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use sharenet_api::openai::ChatCompletion;
use sharenet_p2p::Event;
use tokio_util::sync::CancellationToken;

use crate::core::dispatch::tests::{KEY, MODEL, Script, config, fake_network};
use crate::core::now_ms;
use crate::tests::support::{PATIENCE, wait_for_state};
use crate::{Network, spawn};

/// A coordinator from [`spawn`] on a port-0 listener over scripted nodes
/// whose adverts arrive as network events.
struct Served {
    handle: crate::CoordinatorHandle,
    shutdown: CancellationToken,
    keys: Vec<[u8; 32]>,
    _events: tokio::sync::mpsc::Sender<Event>,
    _dir: tempfile::TempDir,
}

async fn serve(scripts: Vec<Script>) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let net = fake_network(scripts);
    let (events_tx, events) = tokio::sync::mpsc::channel(16);
    for (source, data) in net.adverts {
        events_tx
            .send(Event::Advert { source, data })
            .await
            .unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let handle = spawn(
        listener,
        Network {
            transport: Arc::new(net.transport),
            events,
        },
        config(dir.path()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    Served {
        handle,
        shutdown,
        keys: net.keys,
        _events: events_tx,
        _dir: dir,
    }
}

#[tokio::test]
async fn spawn_serves_over_a_scripted_network_and_shutdown_ends_every_task() {
    let Served {
        handle,
        shutdown,
        keys,
        _dir,
        _events,
    } = serve(vec![
        Script::Serve(vec!["Hello", " world"]),
        Script::Trickle(1000, Duration::from_millis(20)),
    ])
    .await;
    let http = reqwest::Client::new();
    let root = handle.base_url().trim_end_matches("/v1").to_string();
    wait_for_state("both scripted nodes to be live", PATIENCE, || match handle
        .core
        .registry
        .live_nodes(now_ms())
    {
        live if live < 2 => Err(format!("{live} live")),
        _ => Ok(()),
    })
    .await;
    // Live nodes: ready (liveness is 200 regardless).
    let ready = http.get(format!("{root}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        http.get(format!("{root}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let url = format!("{}/chat/completions", handle.base_url());
    let chat = |node: [u8; 32], stream: bool| {
        http.post(&url).bearer_auth(KEY).json(&serde_json::json!({
            "model": MODEL, "stream": stream, "max_tokens": 1000,
            "messages": [{"role": "user", "content": "hi"}],
            "provider": {"only": [hex::encode(node)]},
        }))
    };

    // A whole request, typed with the shared wire types.
    let r = chat(keys[0], false).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let done: ChatCompletion = r.json().await.unwrap();
    assert_eq!(
        done.choices[0].message.content.as_deref(),
        Some("Hello world")
    );
    assert_eq!(done.usage.completion_tokens, 2);
    assert_eq!(done.usage.cost_details.provider_nano_usd, 5 * 10 + 2 * 20);

    // A stream that would run for 20 s is cut by shutdown: the client gets
    // an error event, what it received is charged, and every task ends.
    let mut stream = chat(keys[1], true).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("chat.completion.chunk"));
    // The partial booking needs a running receipt, which comes with each
    // token: shut down once the client has a token, not after a time
    // (the first chunk may be the role-only opening).
    let mut received = String::from_utf8_lossy(&first).into_owned();
    let token = r#""content":"x""#;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !received.contains(token) {
        match tokio::time::timeout_at(deadline, stream.chunk()).await {
            Ok(Ok(Some(chunk))) => received.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(other) => panic!("the stream ended before its first token: {other:?}; {received}"),
            Err(_) => panic!(
                "timed out after {PATIENCE:?} waiting for the first token; received: {received}"
            ),
        }
    }
    shutdown.cancel();
    let mut rest = String::new();
    while let Ok(Some(chunk)) = stream.chunk().await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(rest.contains("shutting_down"), "{rest}");
    let core = handle.core.clone();
    tokio::time::timeout(Duration::from_secs(5), handle.wait())
        .await
        .expect("every task ends within 5 s of shutdown");
    assert_eq!(
        core.accounts.books().entry_count(),
        2,
        "the whole job and the part of the cut stream the client received"
    );
}

#[tokio::test]
async fn ready_only_with_a_live_node() {
    let Served {
        handle,
        shutdown,
        _dir,
        _events,
        ..
    } = serve(Vec::new()).await;
    let root = handle.base_url().trim_end_matches("/v1").to_string();
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{root}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = http.get(format!("{root}/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "no live nodes");
    shutdown.cancel();
    handle.wait().await;
}

#[tokio::test]
async fn http_rejections_are_openai_json() {
    // Issue 12, item 19: an oversized body was a plain-text 413.
    let Served {
        handle,
        shutdown,
        _dir,
        _events,
        ..
    } = serve(vec![Script::Serve(vec!["ok"])]).await;
    let http = reqwest::Client::new();
    let huge = format!(
        r#"{{"model": "m", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "x".repeat(3 << 20)
    );
    let r = http
        .post(format!("{}/chat/completions", handle.base_url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: sharenet_api::ErrorResponse = r.json().await.unwrap();
    assert_eq!(body.error.code.as_deref(), Some("request_too_large"));
    assert_eq!(body.error.kind, "invalid_request_error");

    let r = http
        .get(format!("{}/receipts?bogus=1", handle.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: sharenet_api::ErrorResponse = r.json().await.unwrap();
    assert!(
        body.error.message.contains("bogus"),
        "{}",
        body.error.message
    );
    shutdown.cancel();
    handle.wait().await;
}
