#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Routing decisions, driven with fake time and seeded randomness.

use std::collections::HashMap;

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sharenet_router::{
    Admit, BreakerParams, Evidence, Filter, NoCandidate, NodeHealth, NodeKey, Observed, Offer,
    Preferences, PrivatePool, Request, RouteCandidate, RouteParams, Sort, TrustParams, Weights,
    route,
};

/// The capacity filter alone, as these tests were written for: a node is
/// full at twice its concurrency and nothing spills (the defaults, factor
/// 1 with spill at 5, are tested in `full_nodes_spill_into_their_queues`).
fn capacity_only() -> RouteParams {
    RouteParams {
        max_queue_factor: 2,
        spill_queue_factor: 2,
        ..Default::default()
    }
}

fn key(n: u8) -> NodeKey {
    [n; 32]
}

fn offer(n: u8) -> Offer {
    Offer {
        node: key(n),
        price_in: 100,
        price_out: 200,
        context_length: 8192,
        weights_sha256: Some([7; 32]),
        quantization: Some("Q8_0".into()),
        region: Some("eu-west".into()),
        max_concurrency: 4,
        queue_depth: 0,
        advertised_tokens_per_sec: Some(100),
        relayed: false,
        gpus: 1,
        capabilities: 0,
        license: None,
    }
}

/// A set of nodes with everything the router reads, editable per node.
struct Fleet {
    offers: Vec<Offer>,
    observed: Vec<Observed>,
    trust: Vec<f64>,
    probation: Vec<bool>,
    breaker: Vec<Admit>,
}

impl Fleet {
    /// Nodes 1..=n, identical.
    fn new(n: u8) -> Self {
        let offers: Vec<Offer> = (1..=n).map(offer).collect();
        let len = offers.len();
        Self {
            offers,
            observed: vec![Observed::default(); len],
            trust: vec![0.9; len],
            probation: vec![false; len],
            breaker: vec![Admit::Yes; len],
        }
    }

    fn at(&self, n: u8) -> usize {
        self.offers.iter().position(|o| o.node == key(n)).unwrap()
    }

    fn offer(&mut self, n: u8) -> &mut Offer {
        let i = self.at(n);
        &mut self.offers[i]
    }

    fn observed(&mut self, n: u8) -> &mut Observed {
        let i = self.at(n);
        &mut self.observed[i]
    }

    fn candidates(&self) -> Vec<RouteCandidate<'_>> {
        (0..self.offers.len())
            .map(|i| RouteCandidate {
                offer: &self.offers[i],
                observed: &self.observed[i],
                trust: self.trust[i],
                probation: self.probation[i],
                breaker: self.breaker[i],
            })
            .collect()
    }

    fn route_with(
        &self,
        req: &Request,
        params: &RouteParams,
        seed: u64,
    ) -> Result<Vec<u8>, NoCandidate> {
        let mut rng = StdRng::seed_from_u64(seed);
        route(
            &self.candidates(),
            req,
            &Weights::default(),
            params,
            &mut rng,
        )
        .map(|v| v.iter().map(|k| k[0]).collect())
    }

    fn route(&self, req: &Request) -> Result<Vec<u8>, NoCandidate> {
        self.route_with(req, &capacity_only(), 1)
    }

    /// How often each node comes first over `draws` decisions.
    fn first_picks(&self, req: &Request, params: &RouteParams, draws: usize) -> HashMap<u8, usize> {
        let mut rng = StdRng::seed_from_u64(42);
        let cands = self.candidates();
        let mut counts = HashMap::new();
        for _ in 0..draws {
            let v = route(&cands, req, &Weights::default(), params, &mut rng).unwrap();
            *counts.entry(v[0][0]).or_default() += 1;
        }
        counts
    }
}

fn req() -> Request {
    Request {
        input_tokens: 1000,
        max_output_tokens: 200,
        prefs: Preferences::default(),
    }
}

fn req_with(f: impl FnOnce(&mut Preferences)) -> Request {
    let mut r = req();
    f(&mut r.prefs);
    r
}

fn filtered(filter: Filter, before: usize) -> NoCandidate {
    NoCandidate::Filtered { filter, before }
}

/// Makes node 2 fail a constraint, checks it is dropped; then makes every
/// node fail it and checks the error names it.
fn check_filter(filter: Filter, breaks: impl Fn(&mut Fleet, u8), r: &Request) {
    let mut fleet = Fleet::new(3);
    breaks(&mut fleet, 2);
    let got = fleet.route(r).unwrap();
    assert!(!got.contains(&2), "{filter}: {got:?}");
    assert_eq!(got.len(), 2, "{filter}: {got:?}");
    breaks(&mut fleet, 1);
    breaks(&mut fleet, 3);
    assert_eq!(fleet.route(r), Err(filtered(filter, 3)), "{filter}");
}

#[test]
fn each_filter_drops_its_nodes_and_is_named_when_it_empties_the_list() {
    check_filter(
        Filter::ContextLength,
        |f, n| f.offer(n).context_length = 1199,
        &req(),
    );
    check_filter(
        Filter::WeightsSha256,
        |f, n| f.offer(n).weights_sha256 = if n == 1 { None } else { Some([8; 32]) },
        &req_with(|p| p.weights_sha256 = Some([7; 32])),
    );
    check_filter(
        Filter::Quantization,
        |f, n| f.offer(n).quantization = if n == 1 { None } else { Some("Q4K".into()) },
        &req_with(|p| p.quantizations = vec!["q8_0".into(), "F16".into()]),
    );
    check_filter(
        Filter::Region,
        |f, n| f.offer(n).region = if n == 1 { None } else { Some("us".into()) },
        &req_with(|p| p.region = Some("EU-West".into())),
    );
    check_filter(
        Filter::MaxPriceIn,
        |f, n| f.offer(n).price_in = 101,
        &req_with(|p| p.max_price_in = Some(100)),
    );
    check_filter(
        Filter::MaxPriceOut,
        |f, n| f.offer(n).price_out = 201,
        &req_with(|p| p.max_price_out = Some(200)),
    );
    check_filter(
        Filter::TrustFloor,
        |f, n| {
            let i = f.at(n);
            f.trust[i] = if n == 1 { f64::NAN } else { 0.49 };
        },
        &req(),
    );
    check_filter(
        Filter::MinTrust,
        |f, n| {
            let i = f.at(n);
            f.trust[i] = 0.79;
        },
        &req_with(|p| p.min_trust = Some(0.8)),
    );
    check_filter(
        Filter::Breaker,
        |f, n| {
            let i = f.at(n);
            f.breaker[i] = Admit::No;
        },
        &req(),
    );
    check_filter(
        Filter::Capacity,
        |f, n| {
            if n == 1 {
                // Our own in-flight jobs count even if the advert is stale.
                f.observed(n).in_flight = 8;
            } else {
                f.offer(n).queue_depth = 8;
            }
        },
        &req(),
    );
    check_filter(
        Filter::Capacity,
        |f, n| f.offer(n).max_concurrency = 0,
        &req(),
    );
}

#[test]
fn a_min_trust_below_the_floor_does_not_lower_it() {
    let mut fleet = Fleet::new(2);
    fleet.trust = vec![0.45, 0.45];
    let r = req_with(|p| p.min_trust = Some(0.1));
    assert_eq!(fleet.route(&r), Err(filtered(Filter::TrustFloor, 2)));
}

#[test]
fn probe_admitted_nodes_are_routable() {
    let mut fleet = Fleet::new(2);
    fleet.breaker = vec![Admit::Probe, Admit::No];
    assert_eq!(fleet.route(&req()).unwrap(), vec![1]);
}

#[test]
fn no_candidate_message_names_the_constraint_and_the_count() {
    let mut fleet = Fleet::new(12);
    for o in &mut fleet.offers {
        o.price_out = 500;
    }
    let err = fleet
        .route(&req_with(|p| p.max_price_out = Some(400)))
        .unwrap_err();
    assert_eq!(err, filtered(Filter::MaxPriceOut, 12));
    assert_eq!(
        err.to_string(),
        "no node left after max_price_out (12 nodes before it)"
    );

    // Earlier filters took some: `before` counts what reached the culprit.
    let mut fleet = Fleet::new(5);
    fleet.offer(1).region = Some("us".into());
    fleet.offer(2).region = Some("us".into());
    fleet.offer(3).region = Some("us".into());
    let err = fleet
        .route(&req_with(|p| {
            p.region = Some("eu-west".into());
            p.max_price_in = Some(1);
        }))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no node left after max_price_in (2 nodes before it)"
    );

    let err = fleet
        .route(&req_with(|p| p.only = vec![key(99)]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no node left after only (5 nodes before it)"
    );
    let one = Fleet::new(1);
    assert_eq!(
        one.route(&req_with(|p| p.ignore = vec![key(1)]))
            .unwrap_err()
            .to_string(),
        "no node left after ignore (1 node before it)"
    );

    let empty = Fleet::new(0);
    assert_eq!(empty.route(&req()), Err(NoCandidate::NoNodes));
    assert_eq!(
        NoCandidate::NoNodes.to_string(),
        "no live node serves this model"
    );
    // Loggable.
    let json = serde_json::to_string(&filtered(Filter::MaxPriceOut, 12)).unwrap();
    assert!(json.contains("max_price_out"), "{json}");
}

#[test]
fn only_and_ignore() {
    let fleet = Fleet::new(5);
    let mut got = fleet
        .route(&req_with(|p| p.only = vec![key(4), key(2), key(99)]))
        .unwrap();
    got.sort();
    assert_eq!(got, vec![2, 4]);
    let got = fleet
        .route(&req_with(|p| {
            p.only = vec![key(4), key(2)];
            p.ignore = vec![key(2)];
        }))
        .unwrap();
    assert_eq!(got, vec![4]);
    let got = fleet
        .route(&req_with(|p| p.ignore = vec![key(1), key(3)]))
        .unwrap();
    assert_eq!(got.len(), 3);
    assert!(!got.contains(&1) && !got.contains(&3));
}

#[test]
fn sort_by_price() {
    let mut fleet = Fleet::new(4);
    fleet.offer(1).price_out = 400;
    fleet.offer(2).price_out = 100;
    fleet.offer(3).price_out = 300;
    fleet.offer(4).price_out = 150;
    // Make the cheapest also the slowest, so price really is primary.
    fleet.observed(2).ttft_ewma_ms = Some(5_000.0);
    let r = req_with(|p| p.sort = Some(Sort::Price));
    for seed in 0..20 {
        let got = fleet.route_with(&r, &capacity_only(), seed).unwrap();
        assert_eq!(got, vec![2, 4, 3, 1]);
    }
}

#[test]
fn sort_by_latency_uses_time_to_first_token() {
    let mut fleet = Fleet::new(4);
    fleet.observed(1).ttft_ewma_ms = Some(300.0);
    fleet.observed(2).ttft_ewma_ms = Some(100.0);
    fleet.observed(3).ttft_ewma_ms = Some(200.0);
    fleet.observed(4).ttft_ewma_ms = Some(100.0);
    // Node 4: same TTFT as 2, but its peak says it just spiked.
    fleet.observed(4).ttft_peak_ms = Some(250.0);
    // Node 2 is the dearest: latency is primary anyway.
    fleet.offer(2).price_out = 1000;
    let r = req_with(|p| p.sort = Some(Sort::Latency));
    assert_eq!(fleet.route(&r).unwrap(), vec![2, 3, 4, 1]);
    // RTT counts too.
    fleet.observed(2).rtt_ms = Some(500.0);
    assert_eq!(fleet.route(&r).unwrap()[0], 3);
}

#[test]
fn sort_by_throughput_prefers_observed_over_advertised() {
    let mut fleet = Fleet::new(4);
    fleet.offer(1).advertised_tokens_per_sec = Some(400); // /1 sequence: 400 tok/s
    fleet.offer(2).advertised_tokens_per_sec = Some(4000); // claims a lot...
    fleet.observed(2).tokens_per_sec_ewma = Some(50.0); // ...delivers little
    fleet.offer(3).advertised_tokens_per_sec = None; // unknown: 20 tok/s default
    fleet.observed(4).tokens_per_sec_ewma = Some(800.0);
    let r = req_with(|p| p.sort = Some(Sort::Throughput));
    assert_eq!(fleet.route(&r).unwrap(), vec![4, 1, 2, 3]);
}

#[test]
fn default_ranking_trades_price_latency_and_trust() {
    let mut fleet = Fleet::new(3);
    // 1: cheapest, 2: 10% dearer, 3: 3x dearer.
    fleet.offer(1).price_out = 100;
    fleet.offer(1).price_in = 50;
    fleet.offer(2).price_out = 110;
    fleet.offer(2).price_in = 55;
    fleet.offer(3).price_out = 300;
    fleet.offer(3).price_in = 150;
    let params = RouteParams {
        p2c_top_k: 1, // no load balancing: the plain ranking
        ..capacity_only()
    };
    assert_eq!(fleet.route_with(&req(), &params, 0).unwrap(), vec![1, 2, 3]);
    // Low trust costs more than 10% of price...
    let i = fleet.at(1);
    fleet.trust[i] = 0.6;
    assert_eq!(fleet.route_with(&req(), &params, 0).unwrap(), vec![2, 1, 3]);
    fleet.trust[i] = 0.9;
    // ... and so does being much slower.
    fleet.observed(1).ttft_ewma_ms = Some(3_000.0);
    assert_eq!(fleet.route_with(&req(), &params, 0).unwrap(), vec![2, 1, 3]);
}

#[test]
fn order_goes_first_in_its_order_then_the_ranking() {
    let mut fleet = Fleet::new(5);
    fleet.offer(5).price_out = 1000;
    fleet.offer(4).price_out = 900;
    fleet.offer(3).price_in = 10_000;
    let r = req_with(|p| p.order = vec![key(5), key(3), key(77), key(4), key(5)]);
    let got = fleet.route(&r).unwrap();
    assert_eq!(&got[..3], &[5, 3, 4]);
    assert_eq!(got.len(), 5);
    // An ordered node that fails a filter is skipped.
    let r = req_with(|p| {
        p.order = vec![key(5), key(3)];
        p.max_price_in = Some(1000);
    });
    assert_eq!(fleet.route(&r).unwrap()[0], 5);
    assert!(!fleet.route(&r).unwrap().contains(&3));
}

#[test]
fn allow_fallbacks_false() {
    let fleet = Fleet::new(5);
    let r = req_with(|p| p.allow_fallbacks = false);
    assert_eq!(fleet.route(&r).unwrap().len(), 1);
    // With `order`: exactly the ordered nodes, nothing else.
    let r = req_with(|p| {
        p.allow_fallbacks = false;
        p.order = vec![key(3), key(1)];
    });
    assert_eq!(fleet.route(&r).unwrap(), vec![3, 1]);
    let r = req_with(|p| {
        p.allow_fallbacks = false;
        p.order = vec![key(3)];
        p.ignore = vec![key(3)];
    });
    assert_eq!(fleet.route(&r), Err(filtered(Filter::Order, 4)));
    assert_eq!(
        fleet.route(&r).unwrap_err().to_string(),
        "no node left after order with allow_fallbacks=false (4 nodes before it)"
    );
    // With fallbacks: the list is as long as allowed.
    let big = Fleet::new(20);
    assert_eq!(big.route(&req()).unwrap().len(), 8);
    let params = RouteParams {
        max_candidates: 3,
        ..capacity_only()
    };
    assert_eq!(big.route_with(&req(), &params, 0).unwrap().len(), 3);
}

#[test]
fn sensitive_requests_only_get_the_pool() {
    let mut fleet = Fleet::new(6);
    // The pool is dearer than the public nodes.
    for n in [5, 6] {
        fleet.offer(n).price_out = 1000;
    }
    let pool = |spill| PrivatePool {
        nodes: vec![key(5), key(6), key(42)],
        sensitive: true,
        spill_to_public: spill,
    };
    for spill in [false, true] {
        let r = req_with(|p| p.private_pool = Some(pool(spill)));
        let mut got = fleet.route(&r).unwrap();
        got.sort();
        assert_eq!(got, vec![5, 6]);
    }
    // Pool nodes unusable: fail rather than leak, even with spill.
    let i5 = fleet.at(5);
    let i6 = fleet.at(6);
    fleet.breaker[i5] = Admit::No;
    fleet.breaker[i6] = Admit::No;
    let r = req_with(|p| p.private_pool = Some(pool(true)));
    assert_eq!(fleet.route(&r), Err(filtered(Filter::Breaker, 2)));
    let r = req_with(|p| {
        p.private_pool = Some(PrivatePool {
            nodes: vec![],
            sensitive: true,
            spill_to_public: true,
        })
    });
    assert_eq!(fleet.route(&r), Err(filtered(Filter::PrivatePool, 6)));
}

#[test]
fn non_sensitive_pool_requests_prefer_the_pool_and_spill_only_if_allowed() {
    let mut fleet = Fleet::new(6);
    for n in [5, 6] {
        fleet.offer(n).price_out = 1000;
    }
    let pool = |spill| PrivatePool {
        nodes: vec![key(5), key(6)],
        sensitive: false,
        spill_to_public: spill,
    };
    // Spill allowed: pool first although dearer, public after.
    let r = req_with(|p| p.private_pool = Some(pool(true)));
    for seed in 0..20 {
        let got = fleet.route_with(&r, &capacity_only(), seed).unwrap();
        assert_eq!(got.len(), 6);
        let mut head = got[..2].to_vec();
        head.sort();
        assert_eq!(head, vec![5, 6], "{got:?}");
    }
    // No spill: pool only.
    let r = req_with(|p| p.private_pool = Some(pool(false)));
    let mut got = fleet.route(&r).unwrap();
    got.sort();
    assert_eq!(got, vec![5, 6]);
    // Pool full: spill goes public, no-spill fails on capacity.
    fleet.offer(5).queue_depth = 8;
    fleet.offer(6).queue_depth = 8;
    let r = req_with(|p| p.private_pool = Some(pool(true)));
    let got = fleet.route(&r).unwrap();
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|n| *n <= 4));
    let r = req_with(|p| p.private_pool = Some(pool(false)));
    assert_eq!(fleet.route(&r), Err(filtered(Filter::Capacity, 2)));
}

#[test]
fn probation_share_stays_under_its_cap() {
    let mut fleet = Fleet::new(20);
    // Probation nodes 1..=10 are the cheapest: unchecked they'd win always.
    for n in 1..=10 {
        fleet.offer(n).price_out = 50;
        let i = fleet.at(n);
        fleet.probation[i] = true;
        fleet.trust[i] = 2.0 / 3.0;
    }
    let params = capacity_only();
    let draws = 20_000;
    let picks = fleet.first_picks(&req(), &params, draws);
    let probation: usize = (1..=10).map(|n| picks.get(&n).copied().unwrap_or(0)).sum();
    let share = probation as f64 / draws as f64;
    // Binomial(20000, 0.1): sd ~0.002; the cap is 0.1.
    assert!(share <= 0.1 + 0.007, "share {share}");
    assert!(share > 0.08, "probation nodes do get their share: {share}");
    // Probation nodes still appear as fallbacks.
    let got = fleet.route(&req()).unwrap();
    assert!(got.iter().any(|n| *n <= 10), "{got:?}");

    // A share of 0 keeps them out of first place entirely.
    let zero = RouteParams {
        probation_share: 0.0,
        ..capacity_only()
    };
    let picks = fleet.first_picks(&req(), &zero, 2_000);
    assert!((1..=10).all(|n| !picks.contains_key(&n)), "{picks:?}");

    // Only probation nodes: they must serve (the cap needs an alternative).
    let mut new = Fleet::new(3);
    new.probation = vec![true; 3];
    assert_eq!(new.route(&req()).unwrap().len(), 3);
}

#[test]
fn p2c_spreads_first_picks_over_near_equal_nodes() {
    let fleet = Fleet::new(5);
    let picks = fleet.first_picks(&req(), &capacity_only(), 10_000);
    // Top-4 pool; every node of it wins some pairs.
    assert_eq!(picks.len(), 4, "{picks:?}");
    assert!(picks.values().all(|&c| c > 1000), "{picks:?}");
}

#[test]
fn a_clearly_cheapest_node_wins_until_its_peak_latency_or_load_rises() {
    let mut fleet = Fleet::new(5);
    fleet.offer(1).price_in = 60;
    fleet.offer(1).price_out = 120;
    let params = capacity_only();
    let picks = fleet.first_picks(&req(), &params, 2_000);
    assert_eq!(
        picks.get(&1),
        Some(&2_000),
        "40% cheaper wins all: {picks:?}"
    );

    // Its peak TTFT jumps: the others become near-equivalent and P2C moves
    // most first picks away from it.
    fleet.observed(1).ttft_ewma_ms = Some(500.0);
    fleet.observed(1).ttft_peak_ms = Some(4_000.0);
    let picks = fleet.first_picks(&req(), &params, 2_000);
    assert!(picks.get(&1).copied().unwrap_or(0) < 1_000, "{picks:?}");
    assert!(picks.len() >= 3, "{picks:?}");
}

#[test]
fn the_cheapest_node_is_not_stampeded_by_a_burst() {
    // Nodes 1..=4 within a few % on price; node 1 the cheapest. A burst of
    // requests arrives; each first pick adds to that node's in-flight jobs
    // (as the coordinator's `Observed::begin_job` does), none finishes.
    let mut fleet = Fleet::new(4);
    for n in 1..=4 {
        fleet.offer(n).price_out = 200 + u64::from(n);
        fleet.offer(n).max_concurrency = 16;
        fleet.observed(n).ttft_ewma_ms = Some(200.0);
        fleet.observed(n).ttft_peak_ms = Some(200.0);
    }
    let mut rng = StdRng::seed_from_u64(9);
    let mut picks = HashMap::<u8, u32>::new();
    for _ in 0..40 {
        let first = {
            let cands = fleet.candidates();
            route(
                &cands,
                &req(),
                &Weights::default(),
                &capacity_only(),
                &mut rng,
            )
            .unwrap()[0][0]
        };
        *picks.entry(first).or_default() += 1;
        fleet.observed(first).begin_job(0);
    }
    // Load-aware: no node takes more than half, all take some.
    assert_eq!(picks.len(), 4, "{picks:?}");
    assert!(picks.values().all(|&c| c <= 20), "{picks:?}");
    let max = picks.values().max().unwrap();
    let min = picks.values().min().unwrap();
    assert!(max - min <= 4, "spread evenly by in-flight load: {picks:?}");
}

#[test]
fn same_seed_same_list_and_seeds_matter() {
    let mut fleet = Fleet::new(30);
    for (i, o) in fleet.offers.iter_mut().enumerate() {
        o.price_out = 200 + (i as u64 % 3);
    }
    fleet.probation[3] = true;
    let mut firsts = std::collections::HashSet::new();
    for seed in 0..50 {
        let a = fleet.route_with(&req(), &capacity_only(), seed).unwrap();
        let b = fleet.route_with(&req(), &capacity_only(), seed).unwrap();
        assert_eq!(a, b);
        firsts.insert(a[0]);
    }
    assert!(firsts.len() > 1, "the rng is used: {firsts:?}");
    // Candidate order does not matter for the result set ranking: reversed
    // input, same sorted ranking (with P2C off).
    let params = RouteParams {
        p2c_top_k: 1,
        ..capacity_only()
    };
    let a = fleet.route_with(&req(), &params, 3).unwrap();
    fleet.offers.reverse();
    fleet.observed.reverse();
    fleet.trust.reverse();
    fleet.probation.reverse();
    fleet.breaker.reverse();
    let b = fleet.route_with(&req(), &params, 3).unwrap();
    assert_eq!(a, b);
}

#[test]
fn node_health_ties_trust_breaker_and_routing_together() {
    // A node caught by a spot check leaves the list; its breaker opening
    // removes it too; time brings both back.
    let tp = TrustParams::default();
    let offers: Vec<Offer> = (1..=3).map(offer).collect();
    let mut health: Vec<NodeHealth> = (0..3)
        .map(|_| NodeHealth::new(0, BreakerParams::default()))
        .collect();
    let day = 24 * 3_600_000;
    for h in &mut health {
        for t in 0..30 {
            h.trust.record(Evidence::Completed, t, &tp);
        }
    }
    let route_at = |health: &[NodeHealth], now: u64| -> Vec<u8> {
        let cands: Vec<_> = health
            .iter()
            .zip(&offers)
            .map(|(h, o)| h.candidate(o, now, &tp))
            .collect();
        let mut rng = StdRng::seed_from_u64(now);
        let mut v: Vec<u8> = route(
            &cands,
            &req(),
            &Weights::default(),
            &capacity_only(),
            &mut rng,
        )
        .unwrap()
        .iter()
        .map(|k| k[0])
        .collect();
        v.sort();
        v
    };
    assert_eq!(route_at(&health, day), vec![1, 2, 3]);
    health[0].trust.record(Evidence::SpotCheckFailed, day, &tp);
    assert_eq!(route_at(&health, day), vec![2, 3]);
    for _ in 0..3 {
        health[1].breaker.record_failure(day);
    }
    assert_eq!(route_at(&health, day), vec![3]);
    // After the cooldown node 2 is back as a probe; a week on, node 1 too.
    assert_eq!(route_at(&health, day + 1_000), vec![2, 3]);
    assert_eq!(route_at(&health, 8 * day), vec![1, 2, 3]);
}

fn arb_offer() -> impl Strategy<Value = (Offer, Observed, f64, bool, u8)> {
    (
        (
            0u8..40,
            0u64..1000,
            0u64..1000,
            0u32..4000,
            any::<bool>(),
            0u32..6,
            0u32..12,
        ),
        (
            proptest::option::of(0.0f64..500.0),
            proptest::option::of(0.0f64..3000.0),
            proptest::option::of(0.0f64..300.0),
            0u32..10,
            0.0f64..1.0,
            any::<bool>(),
            0u8..3,
        ),
    )
        .prop_map(
            |((n, pin, pout, ctx, eu, conc, q), (rtt, ttft, tps, fl, trust, prob, br))| {
                let mut o = offer(n);
                o.price_in = pin;
                o.price_out = pout;
                o.context_length = ctx;
                o.region = eu.then(|| "eu".to_string());
                o.max_concurrency = conc;
                o.queue_depth = q;
                let ob = Observed {
                    rtt_ms: rtt,
                    ttft_ewma_ms: ttft,
                    tokens_per_sec_ewma: tps,
                    in_flight: fl,
                    ..Observed::default()
                };
                (o, ob, trust, prob, br)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sensitive_never_public_and_every_result_passes_the_filters(
        nodes in proptest::collection::vec(arb_offer(), 0..40),
        pool in proptest::collection::vec(0u8..40, 0..10),
        sensitive in any::<bool>(),
        spill in any::<bool>(),
        max_in in proptest::option::of(0u64..1000),
        region in any::<bool>(),
        sort in proptest::option::of(0u8..3),
        fallbacks in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let cands: Vec<RouteCandidate<'_>> = nodes
            .iter()
            .map(|(o, ob, t, p, b)| RouteCandidate {
                offer: o,
                observed: ob,
                trust: *t,
                probation: *p,
                breaker: [Admit::Yes, Admit::Probe, Admit::No][usize::from(*b)],
            })
            .collect();
        let pool_keys: Vec<NodeKey> = pool.iter().map(|n| key(*n)).collect();
        let r = Request {
            input_tokens: 500,
            max_output_tokens: 500,
            prefs: Preferences {
                sort: sort.map(|s| [Sort::Price, Sort::Latency, Sort::Throughput][usize::from(s)]),
                allow_fallbacks: fallbacks,
                max_price_in: max_in,
                region: region.then(|| "eu".to_string()),
                private_pool: Some(PrivatePool {
                    nodes: pool_keys.clone(),
                    sensitive,
                    spill_to_public: spill,
                }),
                ..Preferences::default()
            },
        };
        let params = capacity_only();
        let mut rng = StdRng::seed_from_u64(seed);
        let got = route(&cands, &r, &Weights::default(), &params, &mut rng);
        let mut rng2 = StdRng::seed_from_u64(seed);
        prop_assert_eq!(&got, &route(&cands, &r, &Weights::default(), &params, &mut rng2));
        match got {
            Ok(list) => {
                prop_assert!(!list.is_empty() && list.len() <= params.max_candidates);
                if !fallbacks {
                    prop_assert_eq!(list.len(), 1);
                }
                let mut dedup = list.clone();
                dedup.sort();
                dedup.dedup();
                prop_assert_eq!(dedup.len(), list.len());
                for k in &list {
                    if sensitive || !spill {
                        prop_assert!(pool_keys.contains(k), "public node {:?}", k[0]);
                    }
                    // Some candidate with this key passes every filter.
                    let ok = cands.iter().any(|c| {
                        c.offer.node == *k
                            && c.offer.context_length >= 1000
                            && max_in.is_none_or(|m| c.offer.price_in <= m)
                            && (!region || c.offer.region.as_deref() == Some("eu"))
                            && c.trust >= 0.5
                            && c.breaker != Admit::No
                            && c.offer.queue_depth.max(c.observed.in_flight)
                                < c.offer.max_concurrency * 2
                    });
                    prop_assert!(ok, "returned a filtered node {:?}", k[0]);
                }
                // Non-sensitive with spill: pool nodes come before public ones.
                if !sensitive && spill {
                    let first_public = list.iter().position(|k| !pool_keys.contains(k));
                    if let Some(p) = first_public {
                        prop_assert!(list.iter().skip(p).all(|k| !pool_keys.contains(k)));
                    }
                }
            }
            Err(NoCandidate::NoNodes) => prop_assert!(cands.is_empty()),
            Err(NoCandidate::Filtered { before, .. }) => {
                prop_assert!(before >= 1 && before <= cands.len());
            }
        }
    }
}

#[test]
fn long_lists_are_fully_ordered() {
    // More fallbacks than the small top-k buffers hold: the list must still
    // be the exact order (sort key, score, key).
    let mut fleet = Fleet::new(120);
    for (i, o) in fleet.offers.iter_mut().enumerate() {
        o.price_out = 100 + (i as u64 * 37) % 50; // many ties
    }
    let params = RouteParams {
        max_candidates: 100,
        ..capacity_only()
    };
    let r = req_with(|p| p.sort = Some(Sort::Price));
    let got = fleet.route_with(&r, &params, 5).unwrap();
    assert_eq!(got.len(), 100);
    let mut want: Vec<(u64, u8)> = fleet
        .offers
        .iter()
        .map(|o| (o.expected_price(1000, 200), o.node[0]))
        .collect();
    // Identical nodes but for price: score follows price, ties go by key.
    want.sort();
    let want: Vec<u8> = want.iter().take(100).map(|w| w.1).collect();
    assert_eq!(got, want);
}

#[test]
fn preferences_and_params_are_serde_round_trippable() {
    let r = req_with(|p| {
        p.sort = Some(Sort::Latency);
        p.order = vec![key(1)];
        p.private_pool = Some(PrivatePool {
            nodes: vec![key(2)],
            sensitive: true,
            spill_to_public: false,
        });
    });
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"latency\""), "{json}");
    let back: Request = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    // Missing fields take the documented defaults.
    let p: Preferences = serde_json::from_str("{}").unwrap();
    assert!(p.allow_fallbacks);
    let params: RouteParams = serde_json::from_str(r#"{"probation_share": 0.2}"#).unwrap();
    assert_eq!(params.probation_share, 0.2);
    assert_eq!(params.trust_floor, 0.5);
    let w: Weights = serde_json::from_str("{}").unwrap();
    assert_eq!(w, Weights::default());
}

#[test]
fn extreme_values_from_peers_do_not_panic() {
    let mut fleet = Fleet::new(4);
    for (i, o) in fleet.offers.iter_mut().enumerate() {
        o.price_in = u64::MAX;
        o.price_out = u64::MAX;
        o.context_length = u32::MAX;
        o.max_concurrency = u32::MAX / 2;
        o.queue_depth = if i == 0 { u32::MAX } else { u32::MAX - 1 };
        o.advertised_tokens_per_sec = Some(u32::MAX);
    }
    for (i, ob) in fleet.observed.iter_mut().enumerate() {
        ob.in_flight = u32::MAX;
        ob.rtt_ms = Some(if i == 1 { f64::INFINITY } else { f64::MAX });
        ob.ttft_peak_ms = Some(f64::NAN);
        ob.tokens_per_sec_ewma = Some(f64::MIN_POSITIVE);
    }
    fleet.trust = vec![f64::INFINITY, 1.0, 0.9, f64::NAN];
    let r = Request {
        input_tokens: u32::MAX / 2,
        max_output_tokens: u32::MAX / 2,
        prefs: Preferences {
            sort: Some(Sort::Throughput),
            ..Preferences::default()
        },
    };
    // Full queues everywhere: a clean error, no panic.
    assert_eq!(fleet.route(&r), Err(filtered(Filter::Capacity, 3)));
    for ob in &mut fleet.observed {
        ob.in_flight = 0;
    }
    for o in &mut fleet.offers {
        o.queue_depth = 0;
    }
    for sort in [
        None,
        Some(Sort::Price),
        Some(Sort::Latency),
        Some(Sort::Throughput),
    ] {
        let mut r = r.clone();
        r.prefs.sort = sort;
        let got = fleet.route(&r).unwrap();
        assert_eq!(got.len(), 3, "{sort:?}");
        assert!(!got.contains(&4), "NaN trust never routes");
    }
    let weird = RouteParams {
        probation_share: f64::NAN,
        trust_floor: f64::NAN,
        max_candidates: 0,
        max_queue_factor: 0,
        spill_queue_factor: 0,
        p2c_top_k: 0,
        p2c_slack: f64::NAN,
        unknown_rtt_ms: -1.0,
        unknown_ttft_ms: f64::NAN,
        unknown_tokens_per_sec: 0.0,
        typical_job_tokens: u32::MAX,
    };
    assert_eq!(
        fleet.route_with(&req(), &weird, 1),
        Err(filtered(Filter::Capacity, 3)),
        "a zero queue factor admits no node"
    );
    let weird = RouteParams {
        max_queue_factor: 1,
        ..weird
    };
    assert_eq!(fleet.route_with(&req(), &weird, 1).unwrap().len(), 1);
}

#[test]
fn full_nodes_spill_into_their_queues() {
    let mut fleet = Fleet::new(3);
    let defaults = RouteParams::default();
    assert_eq!(
        (defaults.max_queue_factor, defaults.spill_queue_factor),
        (1, 5)
    );
    // Node 2 is full at factor 1: it is left out while others have room.
    let cap = fleet.offer(2).max_concurrency;
    fleet.offer(2).queue_depth = cap;
    let got = fleet.route_with(&req(), &defaults, 1).unwrap();
    assert!(!got.contains(&2), "{got:?}");
    // Everyone full at factor 1 but not at 5: the decision spills, and
    // every node is a candidate again.
    fleet.offer(1).queue_depth = cap;
    fleet.offer(3).queue_depth = cap;
    let mut got = fleet.route_with(&req(), &defaults, 1).unwrap();
    got.sort();
    assert_eq!(got, vec![1, 2, 3]);
    // Full at the spill factor too: capacity is named.
    for n in 1..=3 {
        fleet.offer(n).queue_depth = 5 * cap;
    }
    assert_eq!(
        fleet.route_with(&req(), &defaults, 1),
        Err(filtered(Filter::Capacity, 3))
    );
    // Spill at or below the factor is off.
    let no_spill = RouteParams {
        spill_queue_factor: 1,
        ..RouteParams::default()
    };
    for n in 1..=3 {
        fleet.offer(n).queue_depth = cap;
    }
    assert_eq!(
        fleet.route_with(&req(), &no_spill, 1),
        Err(filtered(Filter::Capacity, 3))
    );
}
