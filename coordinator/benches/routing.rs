//! The coordinator's routing path as a request takes it, at fleet sizes
//! well past the test network: the routing index's decision
//! (`Routing::route`, i.e. `route_table` on the model's table) plus
//! resolving the chosen nodes' live adverts in the registry
//! (`Registry::offer_of`). Adverts are real signed adverts ingested by the
//! registry, as from gossip.
//!
//! `cargo bench -p sharenet-coordinator --bench routing`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use rand::{Rng, SeedableRng};
use sharenet_coordinator::core::registry::Registry;
use sharenet_coordinator::core::routing::Routing;
use sharenet_p2p::Identity;
use sharenet_proto::{Advert, ModelKind, ModelOffer, SignedAdvert};
use sharenet_router::{BreakerParams, NodeHealth, Request, RouteParams, TrustParams, Weights};

const NOW: u64 = 1_800_000_000_000;

fn fleet(n: usize, rng: &mut impl Rng) -> (Registry, Routing) {
    let registry = Registry::default();
    let index = Routing::new(7, 15_000.0);
    let tp = TrustParams::default();
    for _ in 0..n {
        let id = Identity::generate();
        let advert = Advert {
            node: id.public_key(),
            models: vec![ModelOffer {
                id: "llama-3.1-8b".into(),
                price_in: rng.random_range(50..500),
                price_out: rng.random_range(100..1500),
                context_length: 8192,
                kind: ModelKind::Text,
                quantization: "Q8_0".into(),
                tokens_per_sec: rng.random_range(20..200),
                weights_sha256: Some([7; 32]),
                capabilities: Default::default(),
                license: String::new(),
                canonical: String::new(),
            }],
            gpus: Vec::new(),
            region: "eu".into(),
            relayed: false,
            keeps_prompts: false,
            max_concurrency: 8,
            queue_depth: rng.random_range(0..10),
            seq: 1,
            issued_at_ms: NOW,
            expires_at_ms: NOW + 30_000,
        };
        let bytes = SignedAdvert::sign(advert, id.signing_key())
            .unwrap()
            .to_bytes();
        registry.ingest(id.peer_id(), &bytes, NOW).unwrap();
        let advert = registry.advert(&id.peer_id()).unwrap();
        let mut h = NodeHealth::new(NOW - 7_200_000, BreakerParams::default());
        for _ in 0..rng.random_range(0..40) {
            h.observed.record_job(
                rng.random_range(20.0..400.0),
                100,
                rng.random_range(500.0..5000.0),
                NOW - 1000,
            );
            h.trust
                .record(sharenet_router::Evidence::Completed, NOW - 1000, &tp);
        }
        h.observed.record_rtt(rng.random_range(1.0..120.0));
        index.on_advert(&advert, NOW);
        index.set_health(advert.node, h, NOW);
    }
    (registry, index)
}

fn main() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    println!("| nodes | decision p50 / p99 | with live adverts p50 / p99 | max |");
    println!("|---:|---:|---:|---:|");
    for n in [1_000, 10_000] {
        let (registry, index) = fleet(n, &mut rng);
        let req = Request {
            input_tokens: 200,
            max_output_tokens: 256,
            prefs: Default::default(),
        };
        let params = RouteParams {
            max_queue_factor: 5,
            unknown_ttft_ms: 20.0,
            unknown_tokens_per_sec: 500.0,
            ..RouteParams::default()
        };
        let runs = 5_000;
        let mut times = Vec::with_capacity(runs);
        let mut decisions = Vec::with_capacity(runs);
        for i in 0..runs + runs / 10 {
            let t = Instant::now();
            let ranked = index
                .route(
                    "llama-3.1-8b",
                    ModelKind::Text,
                    &req,
                    &Weights::default(),
                    &params,
                )
                .unwrap();
            let decided = t.elapsed();
            // What dispatch does next: the live adverts of the nodes to try.
            let live = ranked
                .iter()
                .take(3)
                .filter_map(|k| registry.offer_of(k, "llama-3.1-8b", NOW))
                .count();
            let dt = t.elapsed();
            assert!(live > 0);
            if i >= runs / 10 {
                times.push(dt.as_secs_f64() * 1e6);
                decisions.push(decided.as_secs_f64() * 1e6);
            }
        }
        times.sort_by(f64::total_cmp);
        decisions.sort_by(f64::total_cmp);
        let q = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p) as usize];
        println!(
            "| {n} | {:.1} / {:.1} µs | {:.1} / {:.1} µs | {:.1} µs |",
            q(&decisions, 0.5),
            q(&decisions, 0.99),
            q(&times, 0.5),
            q(&times, 0.99),
            times[times.len() - 1]
        );
    }
}
