//! A rogue node on the real network (its own libp2p peer over QUIC) that
//! streams tokens and then sends forged receipts. The coordinator must
//! refuse each forgery, store nothing for it, and count it.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use sharenet_p2p::{Identity, NetworkConfig, read_frame, write_frame};
use sharenet_proto::{
    Advert, FinishReason, JobEvent, JobInput, JobRequest, MAX_FRAME_BYTES, ModelOffer, Receipt,
    SignedAdvert, SignedReceipt, SigningKey, Usage, sha256,
};
use sharenet_tests::{TestNet, sse_data};
use tokio_util::sync::CancellationToken;

const ROGUE_MODEL: &str = "rogue-model";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Starts the rogue node; it forges according to the last user message.
async fn start_rogue(t: &TestNet, cancel: CancellationToken) -> Identity {
    let identity = Identity::generate();
    let mut config = NetworkConfig::loopback(identity.clone());
    config.bootstrap = t
        .net()
        .coordinator
        .p2p_addrs
        .iter()
        .filter(|a| a.to_string().contains("quic"))
        .cloned()
        .collect();
    let net = sharenet_p2p::start(config, cancel.clone()).await.unwrap();
    let mut incoming = net.client.accept_jobs().unwrap();

    let client = net.client.clone();
    let id = identity.clone();
    tokio::spawn(async move {
        let mut seq = 0;
        while !cancel.is_cancelled() {
            seq += 1;
            let advert = Advert {
                node: id.public_key(),
                models: vec![ModelOffer {
                    id: ROGUE_MODEL.into(),
                    price_in: 1,
                    price_out: 1,
                    context_length: 512,
                    kind: sharenet_proto::ModelKind::Text,
                    quantization: String::new(),
                    tokens_per_sec: 0,
                    weights_sha256: None,
                    capabilities: Default::default(),
                    license: String::new(),
                    canonical: String::new(),
                }],
                gpus: Vec::new(),
                region: String::new(),
                relayed: false,
                keeps_prompts: false,
                max_concurrency: 8,
                queue_depth: 0,
                seq,
                issued_at_ms: now_ms(),
                expires_at_ms: now_ms() + 3_000,
            };
            let signed = SignedAdvert::sign(advert, id.signing_key()).unwrap();
            let _ = client.publish_advert(signed.to_bytes()).await;
            // The rogue's advert interval (part of the scenario).
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });

    let id = identity.clone();
    tokio::spawn(async move {
        while let Some((_peer, mut stream)) = incoming.next().await {
            let id = id.clone();
            tokio::spawn(async move {
                let frame = read_frame(&mut stream, MAX_FRAME_BYTES).await.unwrap();
                let request: JobRequest = serde_json::from_slice(&frame).unwrap();
                let JobInput::Chat { messages } = &request.input else {
                    panic!("chat expected")
                };
                let mode = messages.last().unwrap().content.clone();
                let text = "hi";
                let delta = JobEvent::Delta {
                    text: text.into(),
                    tokens: 1,
                    ids: Vec::new(),
                    logprobs: Vec::new(),
                    tool_calls: Vec::new(),
                    receipt: None,
                };
                write_frame(&mut stream, &serde_json::to_vec(&delta).unwrap())
                    .await
                    .unwrap();

                let mut receipt = Receipt {
                    job_id: request.job_id,
                    node: id.public_key(),
                    coordinator: request.coordinator,
                    model: request.model.clone(),
                    input_tokens: 3,
                    output_tokens: 1,
                    price_in: 1,
                    price_out: 1,
                    amount: 4,
                    started_at_ms: now_ms(),
                    finished_at_ms: now_ms(),
                    request_digest: sha256(&frame),
                    response_digest: sha256(text.as_bytes()),
                };
                let bytes = match mode.as_str() {
                    "honest" => SignedReceipt::sign(receipt, id.signing_key())
                        .unwrap()
                        .to_bytes(),
                    "bad-signature" => {
                        let mut b = SignedReceipt::sign(receipt, id.signing_key())
                            .unwrap()
                            .to_bytes();
                        let n = b.len();
                        b[n - 1] ^= 0x01;
                        b
                    }
                    "wrong-signer" => {
                        let other = SigningKey::from_bytes(&[42; 32]);
                        SignedReceipt::sign(receipt, &other).unwrap().to_bytes()
                    }
                    "inflated" => {
                        receipt.output_tokens = 5;
                        receipt.amount = 3 + 5;
                        SignedReceipt::sign(receipt, id.signing_key())
                            .unwrap()
                            .to_bytes()
                    }
                    "wrong-price" => {
                        receipt.price_out = 7;
                        receipt.amount = 3 + 7;
                        SignedReceipt::sign(receipt, id.signing_key())
                            .unwrap()
                            .to_bytes()
                    }
                    other => panic!("unknown mode {other}"),
                };
                let output_tokens = if mode == "inflated" { 5 } else { 1 };
                let done = JobEvent::Done {
                    finish_reason: FinishReason::Length,
                    usage: Usage {
                        input_tokens: 3,
                        output_tokens,
                    },
                    receipt: bytes,
                };
                let _ = write_frame(&mut stream, &serde_json::to_vec(&done).unwrap()).await;
                // Wait for the countersignature or the close.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    read_frame(&mut stream, MAX_FRAME_BYTES),
                )
                .await;
            });
        }
    });
    identity
}

fn request(mode: &str, stream: bool) -> Value {
    json!({
        "model": ROGUE_MODEL,
        "messages": [{"role": "user", "content": mode}],
        "max_tokens": 8,
        "stream": stream,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_receipts_are_rejected_and_never_stored() {
    let t = TestNet::start(1).await;
    let cancel = t.cancel_token();
    start_rogue(&t, cancel).await;
    let state = t.net().coordinator.core.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !matches!(
        state.registry.lookup(ROGUE_MODEL, now_ms()),
        sharenet_coordinator::core::registry::Lookup::Found(_)
    ) {
        assert!(
            std::time::Instant::now() < deadline,
            "rogue advert never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Control: the harness's honest mode is accepted, so the refusals below
    // are about the forgeries and nothing else.
    let resp = t.post("chat/completions", &request("honest", false)).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(state.accounts.books().entry_count(), 1);
    assert_eq!(state.metrics.receipts_rejected_total(), 0);

    for (i, (mode, reason)) in [
        ("bad-signature", "does not verify"),
        ("wrong-signer", "signed by a node other than"),
        ("inflated", "5 output tokens but only 1 were streamed"),
        ("wrong-price", "are above the advert"),
    ]
    .into_iter()
    .enumerate()
    {
        // Each rejected receipt costs the rogue its trust, so it would get no
        // more traffic (checked below); forget that here to test every check.
        state.routing.reset(now_ms());
        let resp = t.post("chat/completions", &request(mode, false)).await;
        assert_eq!(resp.status(), 502, "{mode}");
        let body: Value = resp.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("receipt was rejected"),
            "{mode}: {message}"
        );
        assert!(message.contains(reason), "{mode}: {message}");
        assert_eq!(state.metrics.receipts_rejected_total(), i as u64 + 1);
        assert_eq!(
            state.accounts.books().entry_count(),
            1,
            "{mode}: nothing stored for a forged receipt"
        );
    }

    // A node whose receipt was rejected falls below the trust floor: the
    // next request finds no node it may use.
    let resp = t.post("chat/completions", &request("honest", false)).await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("trust"),
        "{body}"
    );
    state.routing.reset(now_ms());

    // Streaming: the token already went out, so the stream ends with an
    // OpenAI error event instead of usage and [DONE].
    let resp = t.post("chat/completions", &request("inflated", true)).await;
    assert_eq!(resp.status(), 200);
    let data = sse_data(&resp.text().await.unwrap());
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rejected")
    );
    assert!(!data.iter().any(|d| d == "[DONE]"));
    assert_eq!(state.accounts.books().entry_count(), 1);

    t.stop().await;
}
