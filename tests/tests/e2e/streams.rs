//! A node's job streams are for its coordinators only (issue 12, item 8):
//! any other libp2p peer that opens one is refused before the node reads
//! its request, and nothing runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sharenet_p2p::{Identity, NetworkConfig, read_frame, write_frame};
use sharenet_proto::{
    ChatMessage, JobErrorCode, JobEvent, JobId, JobInput, JobRequest, MAX_FRAME_BYTES,
    SamplingParams,
};
use sharenet_tests::{MODEL, TestNet};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_peer_that_is_not_a_listed_coordinator_gets_no_inference() {
    let t = TestNet::start(1).await;
    let node = &t.net().nodes[0];
    let receipts_before = node.store.len();

    // A stranger joins the network and opens a job stream to the node,
    // naming itself as the coordinator (so the old peer check passes).
    let cancel = CancellationToken::new();
    let stranger = Identity::generate();
    let mut config = NetworkConfig::loopback(stranger.clone());
    config.bootstrap = node
        .listen_addrs
        .iter()
        .filter(|a| a.to_string().contains("quic"))
        .cloned()
        .collect();
    let net = sharenet_p2p::start(config, cancel.clone()).await.unwrap();
    let request = JobRequest {
        job_id: JobId([9; 16]),
        coordinator: stranger.public_key(),
        model: MODEL.into(),
        input: JobInput::Chat {
            messages: vec![ChatMessage::new("user", "free inference, please")],
        },
        params: SamplingParams {
            max_tokens: 8,
            ..SamplingParams::default()
        },
        tools: None,
        response_format: None,
        traceparent: None,
    };
    let mut stream = tokio::time::timeout(
        Duration::from_secs(10),
        net.client.open_job_stream(node.peer_id),
    )
    .await
    .unwrap()
    .unwrap();
    let _ = write_frame(&mut stream, &serde_json::to_vec(&request).unwrap()).await;
    let frame = tokio::time::timeout(
        Duration::from_secs(10),
        read_frame(&mut stream, MAX_FRAME_BYTES),
    )
    .await
    .unwrap()
    .unwrap();
    let event: JobEvent = serde_json::from_slice(&frame).unwrap();
    assert!(
        matches!(
            event,
            JobEvent::Error {
                code: JobErrorCode::WrongCoordinator,
                ..
            }
        ),
        "{event:?}"
    );
    assert_eq!(node.store.len(), receipts_before, "nothing ran");

    // The real coordinator is still served.
    let r = t
        .post(
            "chat/completions",
            &serde_json::json!({"model": MODEL, "max_tokens": 4,
                "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    cancel.cancel();
    t.stop().await;
}
