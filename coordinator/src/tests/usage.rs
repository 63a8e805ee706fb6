//! Issue 26, item 10, over real HTTP: every usage the coordinator returns
//! has OpenAI's `prompt_tokens_details` / `completion_tokens_details`
//! (Anthropic's cache counts) and says who counted the tokens, and the
//! receipt view, the generation facts and the dashboard say the same.
//!
//! Three scripted nodes: one serving a catalogued model the coordinator
//! counts (the catalog fixture's tiny llama: `hello` = 1, `world` = 2,
//! `</s>` = 4), one an uncatalogued model the operator allows, and one a
//! catalogued model whose tokenizer the coordinator does not hold.

use std::sync::Arc;

use serde_json::{Value, json};
use sharenet_p2p::Event;
use sharenet_proto::{ChatMessage, JobInput};
use tokio_util::sync::CancellationToken;

use crate::core::catalog::tests::hf_folder;
use crate::core::catalog::{Naming, entry_from_path};
use crate::core::dispatch::tests::{KEY, MODEL, Script, config, fake_network_with, setup};
use crate::core::now_ms;
use crate::tests::support::{PATIENCE, wait_for_state};
use crate::{Network, spawn};

/// Catalogued, with its tokenizer: the coordinator counts.
const COUNTED: &str = "test/tiny";
/// Catalogued without a tokenizer: the coordinator cannot count.
const BLIND: &str = "test/blind";

struct Served {
    handle: crate::CoordinatorHandle,
    http: reqwest::Client,
    _shutdown: tokio_util::sync::DropGuard,
    _events: tokio::sync::mpsc::Sender<Event>,
    _dir: tempfile::TempDir,
}

fn catalogue(core: &crate::core::Core, dir: &std::path::Path, id: &str, tokenizer: bool) {
    let naming = Naming {
        id: id.into(),
        license: "Apache-2.0".into(),
        aliases: Vec::new(),
        kind: String::new(),
    };
    let (entry, json) = entry_from_path(&hf_folder(&dir.join(id), 1), naming).unwrap();
    let json = tokenizer.then_some(json);
    core.catalog
        .add(entry, json.as_ref().map(|j| j.as_bytes()))
        .unwrap();
}

/// The prompt tokens the coordinator counts for one user message.
fn input_count(content: &str) -> u32 {
    let probe = setup(vec![]);
    let dir = tempfile::tempdir().unwrap();
    catalogue(&probe.core, dir.path(), COUNTED, true);
    let prompt = probe.core.catalog.prompt_model(COUNTED).unwrap();
    let input = JobInput::Chat {
        messages: vec![ChatMessage::new("user", content)],
    };
    prompt.count_prompt(&input, None).unwrap()
}

async fn serve() -> Served {
    let n = input_count("hello");
    let counted = Script::Counted {
        // "hello world" and the end of turn: 2 billed (the end is not).
        deltas: vec![("hello", vec![1]), (" world", vec![2]), ("", vec![4])],
        tokens: None,
        input: n,
        output: 2,
    };
    let scripts = vec![
        counted,
        Script::Serve(vec!["Hello", " world"]),
        Script::Serve(vec!["Hello", " world"]),
    ];
    let net = fake_network_with(scripts, &|i, ad| {
        ad.models[0].weights_sha256 = None;
        match i {
            0 => ad.models[0].id = COUNTED.into(),
            2 => ad.models[0].id = BLIND.into(),
            _ => {}
        }
    });
    let dir = tempfile::tempdir().unwrap();
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
    catalogue(&handle.core, dir.path(), COUNTED, true);
    catalogue(&handle.core, dir.path(), BLIND, false);
    wait_for_state(
        "the three scripted nodes to be live",
        PATIENCE,
        || match handle.core.registry.live_nodes(now_ms()) {
            live if live < 3 => Err(format!("{live} live")),
            _ => Ok(()),
        },
    )
    .await;
    Served {
        handle,
        http: reqwest::Client::new(),
        _shutdown: shutdown.drop_guard(),
        _events: events_tx,
        _dir: dir,
    }
}

impl Served {
    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.handle.base_url()))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.handle.base_url()))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    /// A chat answer's usage and receipt id, streamed or not.
    async fn chat(&self, model: &str, stream: bool) -> (Value, String) {
        let r = self
            .post(
                "/chat/completions",
                json!({"model": model, "max_tokens": 100, "stream": stream,
                    "stream_options": stream.then(|| json!({"include_usage": true})),
                    "messages": [{"role": "user", "content": "hello"}]}),
            )
            .await;
        assert_eq!(r.status(), 200, "{model}");
        if !stream {
            let body: Value = r.json().await.unwrap();
            return (
                body["usage"].clone(),
                body["receipt_id"].as_str().unwrap().into(),
            );
        }
        let text = r.text().await.unwrap();
        let last = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|j| serde_json::from_str::<Value>(j).ok())
            .find(|c| !c["usage"].is_null())
            .unwrap_or_else(|| panic!("no usage chunk: {text}"));
        (
            last["usage"].clone(),
            last["receipt_id"].as_str().unwrap_or_default().into(),
        )
    }

    /// What the receipt view, the generation facts and the dashboard say
    /// counted the job `id`.
    async fn stored(&self, id: &str) -> [Value; 3] {
        let receipt = self.get(&format!("/receipts/{id}")).await;
        let generation = self.get(&format!("/generation?id={id}")).await;
        let dashboard = self.get("/dashboard").await;
        let recent = dashboard["recent"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {dashboard}"));
        [
            receipt["counted_by"].clone(),
            generation["data"]["counted_by"].clone(),
            recent["counted_by"].clone(),
        ]
    }
}

fn assert_openai_details(usage: &Value) {
    assert_eq!(
        usage["prompt_tokens_details"],
        json!({"cached_tokens": 0}),
        "{usage}"
    );
    assert_eq!(
        usage["completion_tokens_details"],
        json!({"reasoning_tokens": 0, "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0}),
        "{usage}"
    );
}

#[tokio::test]
async fn usage_has_openais_details_and_says_who_counted_everywhere() {
    let s = serve().await;
    for (model, by) in [(COUNTED, "coordinator"), (MODEL, "node")] {
        for stream in [false, true] {
            let (usage, id) = s.chat(model, stream).await;
            assert_openai_details(&usage);
            assert_eq!(usage["counted_by"], by, "{model} stream={stream}: {usage}");
            if model == COUNTED {
                assert_eq!(usage["completion_tokens"], 2, "{usage}");
            }
            assert_eq!(
                s.stored(&id).await,
                [json!(by), json!(by), json!(by)],
                "{model} stream={stream}"
            );
        }
    }
    // Legacy completions carry the same usage object.
    let r = s
        .post(
            "/completions",
            json!({"model": MODEL, "max_tokens": 100, "prompt": "hello"}),
        )
        .await;
    let body: Value = r.json().await.unwrap();
    assert_openai_details(&body["usage"]);
    assert_eq!(body["usage"]["counted_by"], "node", "{body}");
    // Anthropic's usage: its cache counts, and who counted.
    for (model, by) in [(COUNTED, "coordinator"), (MODEL, "node")] {
        let r = s
            .post(
                "/messages",
                json!({"model": model, "max_tokens": 100,
                    "messages": [{"role": "user", "content": "hello"}]}),
            )
            .await;
        assert_eq!(r.status(), 200, "{model}");
        let body: Value = r.json().await.unwrap();
        let usage = &body["usage"];
        assert_eq!(usage["cache_creation_input_tokens"], 0, "{body}");
        assert_eq!(usage["cache_read_input_tokens"], 0, "{body}");
        assert_eq!(usage["counted_by"], by, "{body}");
    }
}

/// The attack: a node serving a model that is in the catalog but whose
/// tokenizer the coordinator does not hold signs whatever counts it likes
/// (bounded only by what it streamed). Before, `counted_by` was a name
/// lookup: the answer said nothing (read as the coordinator's count), the
/// stream and the receipt said nothing either. Now all of them say the
/// counts are the node's word.
#[tokio::test]
async fn a_catalogued_model_the_coordinator_cannot_count_is_the_nodes_word() {
    let s = serve().await;
    for stream in [false, true] {
        let (usage, id) = s.chat(BLIND, stream).await;
        assert_eq!(usage["counted_by"], "node", "stream={stream}: {usage}");
        assert_eq!(
            s.stored(&id).await,
            [json!("node"), json!("node"), json!("node")],
            "stream={stream}"
        );
    }
}
