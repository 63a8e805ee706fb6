//! A relay reserves slots only for peers that serve (issue 12, item 13):
//! a peer that has published no accepted advert is refused, and the same
//! peer gets its slot once it advertises (a refused reservation is
//! retried); and a circuit is cut once it has carried its byte limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use sharenet_p2p::{Identity, NetworkConfig, Protocol};
use tokio_util::sync::CancellationToken;

mod common;
use common::signed_advert;

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
    while peer
        .client
        .publish_advert(signed_advert(&id, 1, true))
        .await
        .is_err()
    {
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

/// Someone pushes data through a relayed connection: the relay cuts the
/// circuit at its byte limit (here 64 KiB; 256 MiB in production, where
/// the relay would otherwise be free transit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_circuit_is_cut_past_its_byte_limit() {
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    const LIMIT: u64 = 64 << 10;
    let cancel = CancellationToken::new();
    let mut cfg = NetworkConfig::loopback(Identity::generate());
    cfg.relay_server = true;
    cfg.relay_max_circuit_bytes = LIMIT;
    let relay = sharenet_p2p::start(cfg, cancel.clone()).await.unwrap();
    let addr = relay.client.listen_addrs()[0].clone();

    // A serving peer behind NAT, reachable only through the relay.
    let a_id = Identity::generate();
    let mut cfg = NetworkConfig::loopback(a_id.clone());
    cfg.listen = Vec::new();
    cfg.bootstrap = vec![addr.clone()];
    cfg.relays = vec![addr.clone()];
    let a = sharenet_p2p::start(cfg, cancel.clone()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while relay
        .client
        .traversal()
        .reservations_accepted
        .load(Ordering::Relaxed)
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "no reservation");
        let _ = a.client.publish_advert(signed_advert(&a_id, 1, true)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let received = Arc::new(AtomicUsize::new(0));
    let mut incoming = a.client.accept_jobs().unwrap();
    let counted = received.clone();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 << 10];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    counted.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
    });

    // Another peer with no address of its own (so no hole punching): it
    // reaches A through the circuit and pushes 1 MiB.
    let mut cfg = NetworkConfig::loopback(Identity::generate());
    cfg.listen = Vec::new();
    cfg.bootstrap = vec![addr.clone()];
    let b = sharenet_p2p::start(cfg, cancel.clone()).await.unwrap();
    let a_peer = a.client.peer_id();
    let circuit: sharenet_p2p::Multiaddr =
        format!("{addr}/p2p-circuit/p2p/{a_peer}").parse().unwrap();
    let mut stream = loop {
        let _ = b.client.dial(circuit.clone()).await;
        if let Ok(s) = b.client.open_job_stream(a_peer).await {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "no circuit to A");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(b.client.is_relayed(a_peer).await.unwrap(), Some(true));
    let chunk = vec![7u8; 8 << 10];
    let mut sent = 0usize;
    let pushed = tokio::time::timeout(Duration::from_secs(20), async {
        while sent < 1 << 20 {
            stream.write_all(&chunk).await?;
            stream.flush().await?;
            sent += chunk.len();
        }
        stream.close().await
    })
    .await;
    // Whatever the writer saw, the other side got no more than the limit.
    // A negative check, so a bounded wait: bytes still in flight would
    // arrive within it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = received.load(Ordering::Relaxed);
    assert!(
        !matches!(pushed, Ok(Ok(()))) || got < 1 << 20,
        "1 MiB went through a circuit limited to {LIMIT} bytes"
    );
    assert!(
        (got as u64) <= LIMIT,
        "{got} bytes arrived through a circuit limited to {LIMIT} (sent {sent})"
    );
    cancel.cancel();
}
