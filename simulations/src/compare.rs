//! A/B comparison: the same scenario and seed under two parameter sets,
//! and the differences of the headline figures in a table.

use std::fmt::Write as _;

use serde::Serialize;

use crate::results::Summary;

/// One compared figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub metric: &'static str,
    pub a: f64,
    pub b: f64,
    pub delta: f64,
    /// `delta / |a|`, `null` when `a` is 0.
    pub delta_pct: Option<f64>,
}

type Metric = (&'static str, fn(&Summary) -> f64);

const METRICS: &[Metric] = &[
    ("requests served", |s| s.requests.served as f64),
    ("requests failed", |s| s.requests.failed as f64),
    ("success rate", |s| s.requests.success_rate),
    ("TTFT p50 (ms)", |s| s.latency_ms.ttft.p50),
    ("TTFT p95 (ms)", |s| s.latency_ms.ttft.p95),
    ("TTFT p99 (ms)", |s| s.latency_ms.ttft.p99),
    ("total p50 (ms)", |s| s.latency_ms.total.p50),
    ("total p95 (ms)", |s| s.latency_ms.total.p95),
    ("total p99 (ms)", |s| s.latency_ms.total.p99),
    ("builder cost (USD / 1M tokens)", |s| s.cost.usd_per_mtok),
    ("builders charged (USD)", |s| {
        s.cost.builder_charged as f64 / 1e9
    }),
    ("provider earnings (USD)", |s| {
        s.settlement.total_provider as f64 / 1e9
    }),
    ("network fee (USD)", |s| {
        s.settlement.total_network_fee as f64 / 1e9
    }),
    ("builder margins (USD)", |s| {
        s.settlement.total_margin as f64 / 1e9
    }),
    ("provider earnings p50 (USD)", |s| {
        s.providers.earnings.p50 as f64 / 1e9
    }),
    ("provider earnings Gini", |s| s.providers.gini),
    ("honest providers' earnings (USD)", |s| {
        s.providers.honest_earned as f64 / 1e9
    }),
    ("adversaries' traffic share", |s| {
        s.adversaries.traffic_share
    }),
    ("adversaries' money share", |s| s.adversaries.money_share),
    ("garbage jobs served", |s| {
        s.adversaries.garbage_served as f64
    }),
    ("spot checks", |s| s.spot_checks.checks as f64),
    ("spot-check cost (USD)", |s| s.spot_checks.cost as f64 / 1e9),
];

/// The compared figures of two runs.
pub fn rows(a: &Summary, b: &Summary) -> Vec<Row> {
    METRICS
        .iter()
        .map(|(metric, get)| {
            let (x, y) = (get(a), get(b));
            let delta = y - x;
            Row {
                metric,
                a: x,
                b: y,
                delta,
                delta_pct: (x != 0.0 && x.is_finite()).then(|| delta / x.abs() * 100.0),
            }
        })
        .collect()
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    if x.abs() >= 1000.0 || x == x.trunc() {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

/// A Markdown table of `rows`; `b_label` says what B changed.
pub fn table(rows: &[Row], b_label: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| metric | A (scenario) | B ({b_label}) | B - A | change |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for r in rows {
        let pct = r
            .delta_pct
            .map_or_else(|| "-".to_string(), |p| format!("{p:+.1}%"));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.metric,
            num(r.a),
            num(r.b),
            num(r.delta),
            pct
        );
    }
    s
}
