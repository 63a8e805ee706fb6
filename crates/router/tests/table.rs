#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `route_table` over a `CandidateTable` gives exactly what `route` gives over
//! the same candidates, through inserts, replacements, state updates and
//! removals.

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sharenet_router::{
    Admit, CandidateTable, NodeKey, Observed, Offer, Preferences, PrivatePool, Request,
    RouteCandidate, RouteParams, Sort, Weights, route, route_table,
};

const REGIONS: [&str; 3] = ["eu", "EU", "us"];
const QUANTS: [&str; 3] = ["Q8_0", "q4k", "F16"];

#[derive(Debug, Clone)]
struct Node {
    offer: Offer,
    observed: Observed,
    trust: f64,
    probation: bool,
    breaker: Admit,
}

fn arb_node() -> impl Strategy<Value = Node> {
    (
        (
            0u8..80,
            0u64..500,
            0u64..500,
            prop_oneof![Just(1000u32), Just(4000), Just(100_000)],
            proptest::option::of(0u8..2),
            proptest::option::of(0usize..3),
            proptest::option::of(0usize..3),
            1u32..8,
            0u32..10,
            proptest::option::of(0u32..500),
            any::<bool>(),
        ),
        (
            proptest::option::of(0.0f64..300.0),
            proptest::option::of(0.0f64..2000.0),
            proptest::option::of(0.0f64..3000.0),
            proptest::option::of(-5.0f64..200.0),
            0u32..8,
            0.3f64..1.0,
            any::<bool>(),
            prop_oneof![8 => Just(0usize), 1 => Just(1), 1 => Just(2)],
        ),
    )
        .prop_map(
            |(
                (n, pin, pout, ctx, w, q, r, conc, queue, adv, relayed),
                (rtt, ttft, peak, tps, fl, trust, probation, br),
            )| Node {
                offer: Offer {
                    node: [n; 32],
                    price_in: pin,
                    price_out: pout,
                    context_length: ctx,
                    weights_sha256: w.map(|w| [w; 32]),
                    quantization: q.map(|q| QUANTS[q].to_string()),
                    region: r.map(|r| REGIONS[r].to_string()),
                    max_concurrency: conc,
                    queue_depth: queue,
                    advertised_tokens_per_sec: adv,
                    relayed,
                    gpus: 1,
                    // Tools and structured outputs vary from node to node.
                    capabilities: u32::from(n % 4),
                    license: [
                        None,
                        Some("mit".to_string()),
                        Some("Apache-2.0".to_string()),
                    ][usize::from(n % 3)]
                    .clone(),
                },
                observed: Observed {
                    rtt_ms: rtt,
                    ttft_ewma_ms: ttft,
                    ttft_peak_ms: peak,
                    tokens_per_sec_ewma: tps,
                    in_flight: fl,
                    ..Observed::default()
                },
                trust,
                probation,
                breaker: [Admit::Yes, Admit::Probe, Admit::No][br],
            },
        )
}

fn arb_prefs() -> impl Strategy<Value = Preferences> {
    let keys = || proptest::collection::vec((0u8..80).prop_map(|n| [n; 32]), 0..4);
    let rarely = 0.2;
    (
        (
            proptest::option::of(0usize..3),
            keys(),
            keys(),
            keys(),
            proptest::bool::weighted(0.8),
            proptest::option::weighted(rarely, 0u64..500),
            proptest::option::weighted(rarely, 0u64..500),
            proptest::option::weighted(rarely, 0.0f64..1.0),
        ),
        (
            proptest::option::weighted(rarely, 0usize..3),
            proptest::collection::vec(0usize..3, 0..2),
            proptest::option::weighted(rarely, 0u8..3),
            proptest::option::weighted(
                rarely,
                (
                    proptest::collection::vec((0u8..80).prop_map(|n| [n; 32]), 0..40),
                    any::<bool>(),
                    any::<bool>(),
                ),
            ),
        ),
    )
        .prop_map(
            |(
                (sort, order, only, ignore, fallbacks, max_in, max_out, min_trust),
                (region, quants, weights, pool),
            )| Preferences {
                sort: sort.map(|s| [Sort::Price, Sort::Latency, Sort::Throughput][s]),
                order,
                // `only` rarely set, or most cases would just be empty.
                only: if only.len() > 2 { only } else { vec![] },
                quantizations: if quants.len() > 1 {
                    quants.into_iter().map(|q| QUANTS[q].to_string()).collect()
                } else {
                    vec![]
                },
                ignore,
                allow_fallbacks: fallbacks,
                max_price_in: max_in,
                max_price_out: max_out,
                min_trust,
                region: region.map(|r| REGIONS[r].to_string()),
                weights_sha256: weights.map(|w| [w; 32]),
                // A request needing tools, structured outputs or both, now
                // and then.
                capabilities: u32::from(max_in.is_some() && fallbacks)
                    | (u32::from(max_out.is_some() && !fallbacks) << 1),
                licenses: if min_trust.is_some() {
                    vec!["MIT".into(), "apache-2.0".into()]
                } else {
                    vec![]
                },
                private_pool: pool.map(|(nodes, sensitive, spill)| PrivatePool {
                    nodes,
                    sensitive,
                    spill_to_public: spill,
                }),
            },
        )
}

fn candidates(nodes: &[Node]) -> Vec<RouteCandidate<'_>> {
    nodes
        .iter()
        .map(|n| RouteCandidate {
            offer: &n.offer,
            observed: &n.observed,
            trust: n.trust,
            probation: n.probation,
            breaker: n.breaker,
        })
        .collect()
}

fn unique(mut nodes: Vec<Node>) -> Vec<Node> {
    let mut seen = std::collections::BTreeSet::new();
    nodes.retain(|n| seen.insert(n.offer.node));
    nodes
}

fn both(
    nodes: &[Node],
    table: &CandidateTable,
    req: &Request,
    params: &RouteParams,
    seed: u64,
) -> (
    Result<Vec<NodeKey>, sharenet_router::NoCandidate>,
    Result<Vec<NodeKey>, sharenet_router::NoCandidate>,
) {
    let w = Weights::default();
    let a = route(
        &candidates(nodes),
        req,
        &w,
        params,
        &mut StdRng::seed_from_u64(seed),
    );
    let b = route_table(table, req, &w, params, &mut StdRng::seed_from_u64(seed));
    (a, b)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn table_routes_exactly_like_the_slice(
        nodes in proptest::collection::vec(arb_node(), 0..60),
        prefs in arb_prefs(),
        input in 0u32..3000,
        output in 0u32..1500,
        max_candidates in 1usize..50,
        seed in any::<u64>(),
        // Some nodes get replaced, updated and removed before routing.
        churn in proptest::collection::vec((any::<prop::sample::Index>(), arb_node(), 0u8..3), 0..10),
    ) {
        let mut nodes = unique(nodes);
        let mut table = CandidateTable::new();
        // Insert in reverse, so table order differs from slice order.
        for n in nodes.iter().rev() {
            table.upsert(&candidates(std::slice::from_ref(n))[0]);
        }
        for (at, new, op) in churn {
            if nodes.is_empty() {
                break;
            }
            let i = at.index(nodes.len());
            match op {
                // A new advert for an existing node.
                0 => {
                    let mut n = new;
                    n.offer.node = nodes[i].offer.node;
                    table.upsert(&candidates(std::slice::from_ref(&n))[0]);
                    nodes[i] = n;
                }
                // New measurements / trust / breaker, same advert.
                1 => {
                    nodes[i].observed = new.observed;
                    nodes[i].trust = new.trust;
                    nodes[i].probation = new.probation;
                    nodes[i].breaker = new.breaker;
                    let n = &nodes[i];
                    prop_assert!(table.update_state(&n.offer.node, &n.observed, n.trust, n.probation, n.breaker));
                }
                // The advert expired.
                _ => {
                    let n = nodes.remove(i);
                    prop_assert!(table.remove(&n.offer.node));
                    prop_assert!(!table.remove(&n.offer.node));
                }
            }
        }
        prop_assert_eq!(table.len(), nodes.len());
        let req = Request { input_tokens: input, max_output_tokens: output, prefs };
        let params = RouteParams { max_candidates, ..RouteParams::default() };
        let (a, b) = both(&nodes, &table, &req, &params, seed);
        prop_assert_eq!(a, b);
    }
}

#[test]
fn labels_match_case_insensitively_and_unknown_labels_match_nothing() {
    let mk = |n: u8, region: &str| Node {
        offer: Offer {
            node: [n; 32],
            price_in: 1,
            price_out: 1,
            context_length: 10_000,
            weights_sha256: None,
            quantization: None,
            region: Some(region.into()),
            max_concurrency: 4,
            queue_depth: 0,
            advertised_tokens_per_sec: None,
            relayed: false,
            gpus: 0,
            capabilities: 0,
            license: None,
        },
        observed: Observed::default(),
        trust: 0.9,
        probation: false,
        breaker: Admit::Yes,
    };
    let nodes = vec![mk(1, "EU-West"), mk(2, "us")];
    let mut table = CandidateTable::new();
    for c in candidates(&nodes) {
        table.upsert(&c);
    }
    let req = |r: &str| Request {
        input_tokens: 10,
        max_output_tokens: 10,
        prefs: Preferences {
            region: Some(r.into()),
            ..Preferences::default()
        },
    };
    let params = RouteParams::default();
    let (a, b) = both(&nodes, &table, &req("eu-west"), &params, 1);
    assert_eq!(a.unwrap(), vec![[1; 32]]);
    assert_eq!(b.unwrap(), vec![[1; 32]]);
    let (a, b) = both(&nodes, &table, &req("mars"), &params, 1);
    assert_eq!(a, b);
    assert_eq!(
        b.unwrap_err().to_string(),
        "no node left after region (2 nodes before it)"
    );
    // The last node with a label leaves: the label is forgotten.
    assert!(table.remove(&[1; 32]));
    let (_, b) = both(&nodes[1..], &table, &req("eu-west"), &params, 1);
    assert!(b.is_err());
    assert!(!table.update_state(&[1; 32], &Observed::default(), 1.0, false, Admit::Yes));
    assert!(table.contains(&[2; 32]) && !table.contains(&[1; 32]));
}

/// Fleets large enough for many index blocks (64 rows each), with skewed
/// prices and measurements, churned after the index was built: the indexed
/// `route_table`, the full scan over the same table and `route` over the
/// same candidates agree on every request.
#[test]
fn indexed_table_matches_the_scan_on_large_churned_fleets() {
    use rand::Rng;
    use sharenet_router::table::route_table_scan;
    let mut rng = StdRng::seed_from_u64(42);
    for (n, requests) in [(700usize, 300usize), (3000, 150)] {
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| {
                let mut node: NodeKey = [0; 32];
                rng.fill(&mut node[..]);
                node[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let known = rng.random_bool(0.7);
                let conc = rng.random_range(1..=16);
                let pin = (5.0 * 100f64.powf(rng.random::<f64>())) as u64;
                Node {
                    offer: Offer {
                        node,
                        price_in: pin,
                        price_out: pin * rng.random_range(1..=4),
                        context_length: [2048, 8192, 131072][rng.random_range(0..3)],
                        weights_sha256: Some([rng.random_range(0..2u8); 32]),
                        quantization: Some(QUANTS[rng.random_range(0..3)].to_string()),
                        region: Some(REGIONS[rng.random_range(0..3)].to_string()),
                        max_concurrency: conc,
                        queue_depth: rng.random_range(0..=2 * conc),
                        advertised_tokens_per_sec: rng
                            .random_bool(0.7)
                            .then(|| rng.random_range(10..3000)),
                        relayed: rng.random_bool(0.2),
                        gpus: 1,
                        capabilities: 0,
                        license: None,
                    },
                    observed: Observed {
                        rtt_ms: (known || rng.random_bool(0.2))
                            .then(|| rng.random_range(1.0..300.0)),
                        ttft_ewma_ms: known.then(|| rng.random_range(30.0..3000.0)),
                        ttft_peak_ms: (known && rng.random_bool(0.5))
                            .then(|| rng.random_range(30.0..6000.0)),
                        tokens_per_sec_ewma: (known && rng.random_bool(0.8))
                            .then(|| rng.random_range(5.0..300.0)),
                        in_flight: rng.random_range(0..6),
                        ..Observed::default()
                    },
                    trust: rng.random_range(0.3..1.0),
                    probation: rng.random_bool(0.1),
                    breaker: [Admit::Yes, Admit::Yes, Admit::Probe, Admit::No]
                        [rng.random_range(0..4)],
                }
            })
            .collect();
        let mut table = CandidateTable::new();
        for c in candidates(&nodes) {
            table.upsert(&c);
        }
        // Churn: new adverts, state updates, removals, without a reindex.
        for _ in 0..n / 3 {
            let i = rng.random_range(0..nodes.len());
            match rng.random_range(0..3) {
                0 => {
                    nodes[i].offer.price_in = rng.random_range(1..600);
                    nodes[i].observed.rtt_ms = Some(rng.random_range(1.0..50.0));
                    table.upsert(&candidates(&nodes)[i]);
                }
                1 => {
                    let x = &mut nodes[i];
                    x.observed.in_flight = rng.random_range(0..40);
                    x.observed.tokens_per_sec_ewma = Some(rng.random_range(1.0..500.0));
                    x.trust = rng.random_range(0.0..1.0);
                    x.probation = rng.random_bool(0.3);
                    assert!(table.update_state(
                        &x.offer.node,
                        &x.observed,
                        x.trust,
                        x.probation,
                        x.breaker
                    ));
                }
                _ => {
                    let x = nodes.swap_remove(i);
                    assert!(table.remove(&x.offer.node));
                }
            }
        }
        assert_eq!(table.len(), nodes.len());
        for r in 0..requests {
            let prefs = Preferences {
                sort: [
                    None,
                    Some(Sort::Price),
                    Some(Sort::Latency),
                    Some(Sort::Throughput),
                ][r % 4],
                region: (r % 5 == 1).then(|| "eu".to_string()),
                max_price_out: (r % 7 == 2).then(|| rng.random_range(10..800)),
                min_trust: (r % 6 == 3).then(|| rng.random_range(0.5..0.95)),
                weights_sha256: (r % 9 == 4).then_some([1; 32]),
                quantizations: if r % 11 == 5 {
                    vec!["q8_0".into(), "F16".into()]
                } else {
                    vec![]
                },
                ..Preferences::default()
            };
            let req = Request {
                input_tokens: rng.random_range(0..6000),
                max_output_tokens: [0, 1, 17, 64, 300, 1000, 5000, 100_000][r % 8],
                prefs,
            };
            let params = RouteParams {
                max_candidates: [1, 3, 8, 20][r % 4],
                p2c_top_k: [1, 2, 4, 8][(r / 4) % 4],
                probation_share: [0.0, 0.1, 0.5][r % 3],
                ..RouteParams::default()
            };
            let w = [
                Weights::default(),
                Weights {
                    price: 0.0,
                    latency: 1.0,
                    trust: 0.2,
                },
                Weights {
                    price: 1.0,
                    latency: 0.0,
                    trust: 0.0,
                },
            ][r % 3];
            let seed = r as u64;
            let a = route(
                &candidates(&nodes),
                &req,
                &w,
                &params,
                &mut StdRng::seed_from_u64(seed),
            );
            let b = route_table(&table, &req, &w, &params, &mut StdRng::seed_from_u64(seed));
            let c = route_table_scan(&table, &req, &w, &params, &mut StdRng::seed_from_u64(seed));
            assert_eq!(a, c, "scan vs route, n={n}, request {r}");
            assert_eq!(
                b, c,
                "indexed vs scan, n={n}, request {r}: {req:?} {params:?}"
            );
        }
    }
}
