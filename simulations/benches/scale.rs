//! How run time grows with the fleet: the generated bench market
//! (`scenario::bench_scenario`) at 1,000 / 10,000 / 100,000 nodes with
//! 100,000 requests each, then 1,000,000 requests at 10,000 nodes.
//! Prints wall time, events/s and peak RSS (VmHWM: the process's peak so
//! far, so each row is at least the previous row's).
//!
//! `CARGO_TARGET_DIR=/work/target-sim cargo bench -p sharenet-sim --bench scale`
//! (`SIM_BENCH_QUICK=1`: 1,000 and 10,000 nodes only, no million).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use sharenet_sim::scenario::bench_scenario;
use sharenet_sim::simulate;

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0)
}

fn main() {
    let quick = std::env::var("SIM_BENCH_QUICK").is_ok();
    let mut runs = vec![(1_000, 100_000), (10_000, 100_000)];
    if !quick {
        runs.push((100_000, 100_000));
        runs.push((10_000, 1_000_000));
    }
    println!("| nodes | requests | events | wall (s) | events/s | requests/s | peak RSS (MiB) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (nodes, requests) in runs {
        let sc = bench_scenario(nodes, requests).unwrap();
        let t = Instant::now();
        let r = simulate(&sc, &mut |_, _| {}).unwrap();
        let wall = t.elapsed().as_secs_f64();
        assert!(r.summary.settlement.balances);
        println!(
            "| {nodes} | {requests} | {} | {wall:.2} | {:.0} | {:.0} | {:.0} |",
            r.summary.events,
            r.summary.events as f64 / wall,
            requests as f64 / wall,
            peak_rss_mib()
        );
    }
}
