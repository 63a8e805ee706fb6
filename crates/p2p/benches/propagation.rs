//! Advert propagation: how long until a new advert published by one peer
//! reaches the others, in a network of 50 peers on loopback (QUIC), all
//! bootstrapped from one seed peer (as nodes are from a coordinator).
//!
//!     cargo bench -p sharenet-p2p --bench propagation
//!
//! Reports, over several adverts from different publishers, when 50%, 95%
//! and 100% of the other peers had each one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use sharenet_p2p::{Event, Identity, NetworkConfig};
use tokio_util::sync::CancellationToken;

#[path = "../tests/common/mod.rs"]
mod common;
use common::signed_advert;

const PEERS: usize = 50;
const ROUNDS: usize = 10;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cancel = CancellationToken::new();
    let mut clients = Vec::new();
    let mut identities = Vec::new();
    let mut receivers = Vec::new();
    let mut seed_addr: Option<sharenet_p2p::Multiaddr> = None;
    for i in 0..PEERS {
        let identity = Identity::generate();
        identities.push(identity.clone());
        let mut cfg = NetworkConfig::loopback(identity);
        cfg.listen.truncate(1); // QUIC only
        if let Some(a) = &seed_addr {
            cfg.bootstrap = vec![a.clone()];
        }
        let net = sharenet_p2p::start(cfg, cancel.clone()).await.unwrap();
        if i == 0 {
            let addr = net.client.listen_addrs()[0]
                .clone()
                .with(libp2p::multiaddr::Protocol::P2p(net.client.peer_id()));
            seed_addr = Some(addr);
        }
        clients.push(net.client);
        receivers.push(net.events);
    }
    // Let the mesh form.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Vec<u8>, Instant)>(100_000);
    for (i, mut events) in receivers.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let Event::Advert { data, .. } = ev {
                    let _ = tx.send((i, data, Instant::now())).await;
                }
            }
        });
    }
    let mut p50 = Vec::new();
    let mut p95 = Vec::new();
    let mut p100 = Vec::new();
    let mut reached_all = 0;
    for round in 0..ROUNDS {
        let publisher = 1 + (round * 7) % (PEERS - 1);
        // A real signed advert: peers forward only what verifies.
        let payload = signed_advert(&identities[publisher], round as u64 + 1, false);
        let start = Instant::now();
        clients[publisher]
            .publish_advert(payload.clone())
            .await
            .unwrap();
        let mut times = Vec::new();
        let deadline = start + Duration::from_secs(10);
        while times.len() < PEERS - 1 {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some((who, data, at))) if data == payload && who != publisher => {
                    times.push(at - start)
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        times.sort();
        let at = |q: f64| {
            let need = ((PEERS - 1) as f64 * q).ceil() as usize;
            times.get(need.saturating_sub(1)).copied()
        };
        let ms = |d: Option<Duration>| d.map_or(f64::INFINITY, |d| d.as_secs_f64() * 1e3);
        p50.push(ms(at(0.5)));
        p95.push(ms(at(0.95)));
        p100.push(ms(at(1.0)));
        if times.len() == PEERS - 1 {
            reached_all += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let worst = |v: &Vec<f64>| v.iter().copied().fold(0.0, f64::max);
    println!(
        "{PEERS} peers on loopback (QUIC), bootstrapped from one seed; {ROUNDS} adverts from different publishers"
    );
    println!("| share of other peers reached | median ms | worst ms |");
    println!("|---|---|---|");
    println!(
        "| 50% | {:.0} | {:.0} |",
        med(&mut p50.clone()),
        worst(&p50)
    );
    println!(
        "| 95% | {:.0} | {:.0} |",
        med(&mut p95.clone()),
        worst(&p95)
    );
    println!(
        "| 100% | {:.0} | {:.0} |",
        med(&mut p100.clone()),
        worst(&p100)
    );
    println!("adverts that reached every peer within 10 s: {reached_all} of {ROUNDS}");
    cancel.cancel();
}
