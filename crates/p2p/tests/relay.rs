//! A relay reserves slots only for peers that serve (issue 12, item 13):
//! a peer that has published no accepted advert is refused, and the same
//! peer gets its slot once it advertises (a refused reservation is
//! retried).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use sharenet_p2p::{Identity, NetworkConfig, Protocol};
use sharenet_proto::{Advert, ModelKind, ModelOffer, SignedAdvert};
use tokio_util::sync::CancellationToken;

fn advert(signer: &Identity) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let advert = Advert {
        node: signer.public_key(),
        models: vec![ModelOffer {
            id: "m".into(),
            price_in: 1,
            price_out: 2,
            context_length: 4096,
            kind: ModelKind::Text,
            quantization: String::new(),
            tokens_per_sec: 0,
            weights_sha256: None,
        }],
        gpus: Vec::new(),
        region: String::new(),
        relayed: true,
        max_concurrency: 1,
        queue_depth: 0,
        seq: 1,
        issued_at_ms: now,
        expires_at_ms: now + 30_000,
    };
    SignedAdvert::sign(advert, signer.signing_key())
        .unwrap()
        .to_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_reserves_slots_only_for_peers_that_serve() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let cancel = CancellationToken::new();
    let mut cfg = NetworkConfig::loopback(Identity::generate());
    cfg.relay_server = true;
    let relay = sharenet_p2p::start(cfg, cancel.clone()).await.unwrap();
    // Listen addresses come with `/p2p/<id>` already.
    let addr = relay.client.listen_addrs()[0].clone();
    assert!(matches!(addr.iter().last(), Some(Protocol::P2p(_))));

    // A peer behind "NAT": no listen address, only the relay.
    let id = Identity::generate();
    let mut cfg = NetworkConfig::loopback(id.clone());
    cfg.listen = Vec::new();
    cfg.bootstrap = vec![addr.clone()];
    cfg.relays = vec![addr];
    let peer = sharenet_p2p::start(cfg, cancel.clone()).await.unwrap();
    let traversal = relay.client.traversal();

    // It serves nothing yet: refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while traversal.reservations_denied.load(Ordering::Relaxed) == 0 {
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "relay peers {:?}, peer's peers {:?}, accepted {}",
                relay.client.connected_peers().await,
                peer.client.connected_peers().await,
                traversal.reservations_accepted.load(Ordering::Relaxed)
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never refused the reservation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(traversal.reservations_accepted.load(Ordering::Relaxed), 0);

    // Once it advertises, its retried reservation is granted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while peer.client.publish_advert(advert(&id)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "could not publish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while traversal.reservations_accepted.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never granted the serving peer a slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
}
