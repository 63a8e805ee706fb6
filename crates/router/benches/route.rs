#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One routing decision among 1,000 / 10,000 / 100,000 live candidates for
//! the requested model, with random but realistic offers and measurements.
//! Each decision is timed on its own (`Instant` around one call) and the
//! table gives p50 / p99 / max per decision, for both entry points:
//! `route` over `&[Candidate]` (pointers into the caller's `Offer`s and
//! `Observed`s) and `route_table` over a `CandidateTable` (compact rows kept
//! up to date by the caller, read through its block index; building it is
//! not timed, as it is maintained incrementally, not per request). The
//! table is built by upserts one node at a time, as a coordinator fills it,
//! and not regrouped afterwards (`reindex` is not called), so its index is as
//! a live table's would be. `table::route_table_scan` is the same decision
//! over the same table without the index (what `route_table` was before
//! it), timed in the same run as the baseline; the bench checks that all
//! three return the same list.
//!
//! `cargo bench -p sharenet-router` (add `-- --quick` for fewer decisions).

use std::hint::black_box;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sharenet_router::{
    Admit, CandidateTable, NodeKey, Observed, Offer, Preferences, Request, RouteCandidate,
    RouteParams, Sort, Weights, route, route_table, table::route_table_scan,
};

const REGIONS: [&str; 6] = [
    "eu-west",
    "eu-central",
    "us-east",
    "us-west",
    "ap-south",
    "sa-east",
];
const QUANTS: [&str; 4] = ["Q4K", "Q8_0", "F16", "BF16"];
const CONTEXTS: [u32; 4] = [4096, 8192, 32768, 131072];

struct Node {
    offer: Offer,
    observed: Observed,
    trust: f64,
    probation: bool,
    breaker: Admit,
}

fn random_node(rng: &mut StdRng, i: usize) -> Node {
    let mut node: NodeKey = [0; 32];
    rng.fill(&mut node[..]);
    // Keys must be unique; the index makes sure.
    node[..8].copy_from_slice(&(i as u64).to_be_bytes());
    // nano-USD per token, log-uniform from $0.02 to $2 per million.
    let price_in = (20.0 * 100f64.powf(rng.random::<f64>())) as u64;
    let price_out = price_in * rng.random_range(2..=4);
    let max_concurrency = rng.random_range(1..=32);
    let known = rng.random_bool(0.7);
    let ttft = rng.random_range(50.0..3000.0);
    Node {
        offer: Offer {
            node,
            price_in,
            price_out,
            context_length: CONTEXTS[rng.random_range(0..CONTEXTS.len())],
            weights_sha256: Some(if rng.random_bool(0.9) {
                [7; 32]
            } else {
                [8; 32]
            }),
            quantization: Some(QUANTS[rng.random_range(0..QUANTS.len())].to_string()),
            region: Some(REGIONS[rng.random_range(0..REGIONS.len())].to_string()),
            max_concurrency,
            queue_depth: rng.random_range(0..=2 * max_concurrency),
            advertised_tokens_per_sec: rng.random_bool(0.8).then(|| rng.random_range(20..2000)),
            relayed: rng.random_bool(0.2),
            gpus: rng.random_range(0..=8),
            capabilities: 0,
            license: None,
        },
        observed: Observed {
            rtt_ms: known.then(|| rng.random_range(5.0..300.0)),
            ttft_ewma_ms: known.then_some(ttft),
            ttft_peak_ms: known.then(|| ttft * rng.random_range(1.0..2.0)),
            tokens_per_sec_ewma: known.then(|| rng.random_range(10.0..200.0)),
            in_flight: rng.random_range(0..4),
            last_sample_ms: None,
            peak_updated_ms: None,
        },
        trust: rng.random_range(0.3..1.0),
        probation: rng.random_bool(0.05),
        breaker: match rng.random_range(0..100) {
            0..2 => Admit::No,
            2 => Admit::Probe,
            _ => Admit::Yes,
        },
    }
}

struct Scenario {
    name: &'static str,
    prefs: fn() -> Preferences,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "default prefs",
        prefs: Preferences::default,
    },
    Scenario {
        name: "region + max_price + weights",
        prefs: || Preferences {
            region: Some("eu-west".into()),
            max_price_out: Some(1500),
            weights_sha256: Some([7; 32]),
            ..Preferences::default()
        },
    },
    Scenario {
        name: "sort = price",
        prefs: || Preferences {
            sort: Some(Sort::Price),
            ..Preferences::default()
        },
    },
    Scenario {
        name: "sort = latency",
        prefs: || Preferences {
            sort: Some(Sort::Latency),
            ..Preferences::default()
        },
    },
    Scenario {
        name: "sort = throughput",
        prefs: || Preferences {
            sort: Some(Sort::Throughput),
            ..Preferences::default()
        },
    },
];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: [(usize, usize); 3] = if quick {
        [(1_000, 2_000), (10_000, 500), (100_000, 50)]
    } else {
        [(1_000, 20_000), (10_000, 5_000), (100_000, 500)]
    };
    let weights = Weights::default();
    let params = RouteParams::default();
    println!(
        "| candidates | entry point | scenario | survivors | decisions | p50 | p99 | max | p50 scan / p50 indexed |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|");
    for (n, decisions) in sizes {
        let mut gen_rng = StdRng::seed_from_u64(n as u64);
        let nodes: Vec<Node> = (0..n).map(|i| random_node(&mut gen_rng, i)).collect();
        let cands: Vec<RouteCandidate<'_>> = nodes
            .iter()
            .map(|x| RouteCandidate {
                offer: &x.offer,
                observed: &x.observed,
                trust: x.trust,
                probation: x.probation,
                breaker: x.breaker,
            })
            .collect();
        let mut table = CandidateTable::new();
        for c in &cands {
            table.upsert(c);
        }
        for sc in &SCENARIOS {
            let prefs = (sc.prefs)();
            // Survivors of the filter, counted once outside the timing.
            let live = count_survivors(&table, &prefs, &params);
            // Every entry point gives the same list (checked untimed).
            let mut req_rng = StdRng::seed_from_u64(11);
            for seed in 0..20 {
                let req = Request {
                    input_tokens: req_rng.random_range(100..4000),
                    max_output_tokens: req_rng.random_range(64..1024),
                    prefs: prefs.clone(),
                };
                let a = route(
                    &cands,
                    &req,
                    &weights,
                    &params,
                    &mut StdRng::seed_from_u64(seed),
                );
                let b = route_table(
                    &table,
                    &req,
                    &weights,
                    &params,
                    &mut StdRng::seed_from_u64(seed),
                );
                let c = route_table_scan(
                    &table,
                    &req,
                    &weights,
                    &params,
                    &mut StdRng::seed_from_u64(seed),
                );
                assert_eq!(a, b, "route_table differs from route");
                assert_eq!(b, c, "route_table differs from route_table_scan");
            }
            let mut p50_scan = Duration::ZERO;
            for entry in ["route", "route_table_scan", "route_table"] {
                let mut rng = StdRng::seed_from_u64(7);
                let mut req_rng = StdRng::seed_from_u64(11);
                let mut times = Vec::with_capacity(decisions);
                for d in 0..decisions + decisions / 10 {
                    let req = Request {
                        input_tokens: req_rng.random_range(100..4000),
                        max_output_tokens: req_rng.random_range(64..1024),
                        prefs: prefs.clone(),
                    };
                    let t = Instant::now();
                    let out = match entry {
                        "route" => route(black_box(&cands), &req, &weights, &params, &mut rng),
                        "route_table_scan" => {
                            route_table_scan(black_box(&table), &req, &weights, &params, &mut rng)
                        }
                        _ => route_table(black_box(&table), &req, &weights, &params, &mut rng),
                    };
                    let el = t.elapsed();
                    black_box(out).expect("some node survives");
                    // The first tenth warms caches and the allocator.
                    if d >= decisions / 10 {
                        times.push(el);
                    }
                }
                times.sort_unstable();
                let p50 = percentile(&times, 0.5);
                if entry == "route_table_scan" {
                    p50_scan = p50;
                }
                let speedup = if entry == "route_table" {
                    format!("×{:.1}", p50_scan.as_secs_f64() / p50.as_secs_f64())
                } else {
                    String::new()
                };
                println!(
                    "| {n} | `{entry}` | {} | {live} | {} | {} | {} | {} | {speedup} |",
                    sc.name,
                    times.len(),
                    us(p50),
                    us(percentile(&times, 0.99)),
                    us(*times.last().unwrap()),
                );
            }
        }
    }
}

/// How many candidates pass the filter for requests like the timed ones (a
/// full list, via a huge `max_candidates`).
fn count_survivors(table: &CandidateTable, prefs: &Preferences, params: &RouteParams) -> usize {
    let all = RouteParams {
        max_candidates: table.len(),
        ..params.clone()
    };
    let req = Request {
        input_tokens: 2000,
        max_output_tokens: 512,
        prefs: prefs.clone(),
    };
    let mut rng = StdRng::seed_from_u64(0);
    route_table(table, &req, &Weights::default(), &all, &mut rng)
        .map(|v| v.len())
        .unwrap_or(0)
}
