//! The model catalog through the HTTP API: the operator endpoints (key,
//! bad input, add from a path, remove) and the routing gate as a builder
//! meets it (a model outside the catalog is a 404 unless allowed).

use std::sync::Arc;

use serde_json::{Value, json};
use sharenet_p2p::Event;
use tokio_util::sync::CancellationToken;

use crate::config::CoordinatorConfig;
use crate::core::catalog::tests::hf_folder;
use crate::core::dispatch::tests::{KEY, MODEL, Script, config, fake_network};
use crate::core::now_ms;
use crate::tests::support::{PATIENCE, wait_for_state};
use crate::{Network, spawn};

const OPERATOR: &str = "op-catalog-test-key-0000";

struct Served {
    handle: crate::CoordinatorHandle,
    _shutdown: tokio_util::sync::DropGuard,
    _events: tokio::sync::mpsc::Sender<Event>,
    dir: tempfile::TempDir,
}

/// A coordinator over one scripted node advertising `MODEL` (outside any
/// catalog), its config adjusted by `adjust`, once the node is live.
async fn serve(adjust: impl FnOnce(&mut CoordinatorConfig)) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let net = fake_network(vec![Script::Serve(vec!["Hello", " world"])]);
    let (events_tx, events) = tokio::sync::mpsc::channel(16);
    for (source, data) in net.adverts {
        events_tx
            .send(Event::Advert { source, data })
            .await
            .unwrap();
    }
    let mut config = config(dir.path());
    config.operator_key = Some(OPERATOR.into());
    adjust(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let handle = spawn(
        listener,
        Network {
            transport: Arc::new(net.transport),
            events,
        },
        config,
        shutdown.clone(),
    )
    .await
    .unwrap();
    wait_for_state("the scripted node to be live", PATIENCE, || {
        match handle.core.registry.live_nodes(now_ms()) {
            0 => Err("none live"),
            _ => Ok(()),
        }
    })
    .await;
    Served {
        handle,
        _shutdown: shutdown.drop_guard(),
        _events: events_tx,
        dir,
    }
}

async fn chat(s: &Served) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/chat/completions", s.handle.base_url()))
        .bearer_auth(KEY)
        .json(&json!({"model": MODEL, "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

/// Issue 26, item 1 (attack): a node advertising a model no one vetted
/// was routed to, its counts taken as given. Now it is a 404 (the advert
/// counted in /metrics); with `allow_uncatalogued` it serves again, and
/// its offer says the node alone counted.
#[tokio::test]
async fn a_model_outside_the_catalog_is_not_served_unless_allowed() {
    let closed = serve(|c| c.catalog.allow_uncatalogued = false).await;
    let r = chat(&closed).await;
    assert_eq!(r.status(), 404, "{:?}", r.text().await);
    let metrics = reqwest::get(format!(
        "{}/metrics",
        closed.handle.base_url().trim_end_matches("/v1")
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("sharenet_uncatalogued_adverts_total "))
        .unwrap_or_default();
    assert!(!line.ends_with(" 0") && !line.is_empty(), "{line}");

    let open = serve(|c| c.catalog.allow_uncatalogued = true).await;
    let r = chat(&open).await;
    assert_eq!(r.status(), 200);
    let crate::core::registry::Lookup::Found(offers) =
        open.handle.core.registry.lookup(MODEL, now_ms())
    else {
        panic!("allowed, so routable");
    };
    assert_eq!(offers[0].counted_by, sharenet_api::catalog::CountedBy::Node);
}

#[tokio::test]
async fn the_operator_api_adds_lists_and_removes_with_the_operator_key_only() {
    let s = serve(|_| {}).await;
    let http = reqwest::Client::new();
    let url = format!(
        "{}/operator/catalog",
        s.handle.base_url().trim_end_matches("/v1")
    );
    let folder = hf_folder(&s.dir.path().join("tiny"), 1);
    let body = json!({"path": folder, "id": "test/tiny", "license": "mit", "aliases": ["tiny"]});

    // No key, a builder's key: refused, nothing added.
    let anonymous = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(anonymous.status(), 403);
    let builder = http.get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(builder.status(), 403);
    assert!(s.handle.core.catalog.entries().is_empty());

    let op = |r: reqwest::RequestBuilder| r.bearer_auth(OPERATOR).send();
    let added = op(http.post(&url).json(&body)).await.unwrap();
    assert_eq!(added.status(), 200);
    let added: Value = added.json().await.unwrap();
    assert_eq!(added["id"], "test/tiny");
    assert_eq!(added["weights"][0]["format"], "safetensors");
    assert!(s.handle.core.catalog.prompt_model("test/tiny").is_some());
    // Written to this replica's file before the answer.
    let file = std::fs::read_to_string(s.handle.core.catalog.path()).unwrap();
    assert!(file.contains("test/tiny"));

    // Bad input: each a 400 naming what was wrong.
    for (bad, says) in [
        (body.clone(), "already in the catalog"),
        (
            json!({"path": s.dir.path().join("nope"), "id": "test/x", "license": "mit"}),
            "no such file",
        ),
        (
            json!({"path": folder, "id": "Not A Slug", "license": "mit"}),
            "not a model slug",
        ),
        (json!({"path": folder}), "needs `id`"),
        (json!({"nonsense": 1}), "invalid JSON body"),
    ] {
        let r = op(http.post(&url).json(&bad)).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let text = r.text().await.unwrap();
        assert!(text.contains(says), "{bad}: {text}");
    }

    let list: Value = op(http.get(&url)).await.unwrap().json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let one = op(http.get(format!("{url}/test/tiny"))).await.unwrap();
    assert_eq!(one.status(), 200);
    let gone = op(http.delete(format!("{url}/test/tiny"))).await.unwrap();
    assert_eq!(gone.status(), 200);
    let again = op(http.delete(format!("{url}/test/tiny"))).await.unwrap();
    assert_eq!(again.status(), 404);
    assert!(s.handle.core.catalog.entries().is_empty());
}
