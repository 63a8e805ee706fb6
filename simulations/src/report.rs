//! What a run produces: the summary (JSON), time series and per-node tables
//! (CSV), the signed sample statement, and the charts (SVG, `charts.rs`).
//! Nothing here depends on the wall clock, so the files are a function of
//! the scenario and the seed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sharenet_market::Settlement as SignedSettlement;

use crate::SimError;
use crate::scenario::Scenario;
use crate::sim::{Builder, Counters, Totals};

/// Latency percentiles, ms (nearest rank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Latency {
    /// Percentiles of `v` (sorted in place); zeros when empty.
    pub fn of(v: &mut [f32]) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable_by(|a, b| a.total_cmp(b));
        let at = |q: f64| {
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            f64::from(v.get(i).copied().unwrap_or(0.0))
        };
        let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len() as f64;
        Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            mean,
        }
    }
}

/// One row of `timeseries.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct WindowRow {
    /// End of the window, simulated seconds.
    pub t_s: f64,
    pub arrivals: u64,
    pub served: u64,
    pub failed: u64,
    pub success_rate: f64,
    pub ttft: Latency,
    pub total: Latency,
    /// What builders paid per 1M tokens in the window, USD.
    pub usd_per_mtok: f64,
    pub adversary_traffic_share: f64,
    pub trust_honest: f64,
    /// NaN when no adversary is live.
    pub trust_adversary: f64,
    pub live_nodes: u64,
}

/// One row of `nodes.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub node: u32,
    pub model: String,
    pub hardware: String,
    pub behaviour: String,
    pub price_out: u64,
    pub joined_s: f64,
    pub left_s: Option<f64>,
    pub last_dispatch_s: Option<f64>,
    pub jobs: u64,
    pub dispatches: u64,
    /// nano-USD, builder jobs and spot-check runs.
    pub earned: u64,
    pub check_earned: u64,
    pub trust_end: f64,
    pub spot_failed: u64,
    /// Whether the node was on the network at some point (joiners whose
    /// time came after the run ended never were).
    pub ever_joined: bool,
}

/// One row of `adversaries.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct AdversaryRow {
    pub node: u32,
    pub kind: String,
    pub group: u16,
    pub joined_s: f64,
    /// From joining until its trust fell under the floor (no more traffic).
    pub caught_after_s: Option<f64>,
    pub served_before_caught: u64,
    pub earned_before_caught: u64,
    pub earned: u64,
    pub dispatches: u64,
}

/// Attempts in one block of `share_block` consecutive requests.
#[derive(Debug, Clone, Serialize)]
pub struct ShareBlock {
    pub first_request: u64,
    pub attempts: u64,
    pub adversary_attempts: u64,
}

impl ShareBlock {
    pub fn share(&self) -> f64 {
        if self.attempts == 0 {
            0.0
        } else {
            self.adversary_attempts as f64 / self.attempts as f64
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Requests {
    pub arrivals: u64,
    pub served: u64,
    /// Served but not billed (the receipt was rejected).
    pub served_unbilled: u64,
    pub failed: u64,
    pub failed_no_candidate: u64,
    pub failed_attempts_exhausted: u64,
    pub no_candidate_by_filter: BTreeMap<String, u64>,
    pub success_rate: f64,
    pub attempts: u64,
    pub attempt_failures: u64,
    pub fallbacks_used: u64,
    pub timeouts: u64,
    pub connect_failures: u64,
    pub refusals: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Time to first token as the builder sees it (incl. failed attempts).
    pub ttft: Latency,
    /// Arrival to last token.
    pub total: Latency,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cost {
    /// What builders' apps were charged, nano-USD (spot checks excluded).
    pub builder_charged: u64,
    pub builder_tokens: u64,
    /// Integer nano-USD per 1,000,000 tokens (rounded down).
    pub nano_usd_per_mtok: u64,
    pub usd_per_mtok: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spread {
    pub min: u64,
    pub p10: u64,
    pub p50: u64,
    pub p90: u64,
    pub max: u64,
    pub mean: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Providers {
    /// Nodes that were on the network at some point.
    pub nodes: u64,
    pub earning_nodes: u64,
    /// nano-USD per node (all nodes that were on the network).
    pub earnings: Spread,
    pub gini: f64,
    pub honest_nodes: u64,
    pub honest_earned: u64,
    pub gini_honest: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KindSummary {
    pub nodes: u64,
    /// Nodes that got at least one dispatch.
    pub active: u64,
    pub caught: u64,
    pub caught_after_s_mean: Option<f64>,
    pub caught_after_s_max: Option<f64>,
    /// Share of all dispatch attempts that went to this kind.
    pub traffic_share: f64,
    /// Share of provider earnings that went to this kind.
    pub money_share: f64,
    pub earned: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Adversaries {
    pub nodes: u64,
    pub by_kind: BTreeMap<String, KindSummary>,
    pub traffic_share: f64,
    pub money_share: f64,
    pub earned: u64,
    pub garbage_served: u64,
    /// Input tokens billed beyond the real ones by `inflate_input` nodes
    /// before spot checks caught them.
    pub inflated_input_tokens: u64,
    pub rejected_receipts: u64,
    pub share_block: u64,
    /// The first request from which every block of `share_block` requests
    /// sent under 1% of its attempts to adversaries (`null`: never).
    pub share_below_1pct_after_requests: Option<u64>,
    /// The first block under 1% (the start-up cheaters caught, before any
    /// later Sybil wave).
    pub share_first_below_1pct_at_request: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpotChecks {
    pub rate: f64,
    pub checks: u64,
    pub failed: u64,
    pub inconclusive: u64,
    /// Honest nodes that failed a check (must be 0).
    pub false_positives: u64,
    /// What the operator's spot-check app was charged, nano-USD.
    pub cost: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedSample {
    pub receipts: u64,
    pub total_charged: u64,
    pub total_provider: u64,
    pub total_network_fee: u64,
    pub total_margin: u64,
    pub merkle_root: String,
    /// The statement's totals equal the simulation's for the same jobs.
    pub matches_simulation: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settlement {
    pub jobs: u64,
    pub total_charged: u64,
    pub total_provider: u64,
    pub total_network_fee: u64,
    pub total_margin: u64,
    /// `total_charged = total_provider + total_network_fee + total_margin`,
    /// provider lines sum to `total_provider`, app lines to `total_charged`.
    pub balances: bool,
    pub providers_sum: u64,
    pub apps_charged_sum: u64,
    pub apps_payout_sum: u64,
    pub signed_sample: Option<SignedSample>,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: String,
    pub description: String,
    pub seed: u64,
    pub nodes_start: u64,
    pub requests_target: u64,
    pub simulated_s: f64,
    pub events: u64,
    pub requests: Requests,
    pub latency_ms: LatencySummary,
    pub cost: Cost,
    pub providers: Providers,
    pub adversaries: Adversaries,
    pub spot_checks: SpotChecks,
    pub settlement: Settlement,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub summary: Summary,
    pub windows: Vec<WindowRow>,
    pub nodes: Vec<NodeRow>,
    pub adversaries: Vec<AdversaryRow>,
    pub blocks: Vec<ShareBlock>,
    pub statement_json: Option<serde_json::Value>,
    pub statement_csv: Option<String>,
}

/// Gini coefficient of non-negative amounts (0: equal, →1: one takes all).
pub fn gini(values: &[u64]) -> f64 {
    let mut v: Vec<f64> = values.iter().map(|x| *x as f64).collect();
    let n = v.len();
    let sum: f64 = v.iter().sum();
    if n == 0 || sum <= 0.0 {
        return 0.0;
    }
    v.sort_unstable_by(|a, b| a.total_cmp(b));
    let weighted: f64 = v
        .iter()
        .enumerate()
        .map(|(i, x)| (2.0 * (i as f64 + 1.0) - n as f64 - 1.0) * x)
        .sum();
    weighted / (n as f64 * sum)
}

fn spread(values: &[u64]) -> Spread {
    let mut v = values.to_vec();
    v.sort_unstable();
    let at = |q: f64| {
        if v.is_empty() {
            return 0;
        }
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v.get(i).copied().unwrap_or(0)
    };
    Spread {
        min: v.first().copied().unwrap_or(0),
        p10: at(0.10),
        p50: at(0.50),
        p90: at(0.90),
        max: v.last().copied().unwrap_or(0),
        mean: if v.is_empty() {
            0.0
        } else {
            v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64
        },
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn build_summary(
    sc: &Scenario,
    c: &Counters,
    totals: &Totals,
    checks: &Totals,
    sample: &Totals,
    latency: (Latency, Latency),
    nodes: &[NodeRow],
    adversaries: &[AdversaryRow],
    blocks: &[ShareBlock],
    builders: &[Builder],
    statement: Option<&SignedSettlement>,
    simulated_s: f64,
) -> Result<Summary, SimError> {
    let builder_charged = builders.iter().map(|b| b.charged).sum::<u64>();
    let builder_tokens = c.builder_tokens;
    let nano_per_mtok = if builder_tokens == 0 {
        0
    } else {
        u64::try_from(u128::from(builder_charged) * 1_000_000 / u128::from(builder_tokens))
            .unwrap_or(u64::MAX)
    };
    let on: Vec<&NodeRow> = nodes.iter().filter(|n| n.ever_joined).collect();
    let earnings: Vec<u64> = on.iter().map(|n| n.earned).collect();
    let honest: Vec<u64> = on
        .iter()
        .filter(|n| n.behaviour == "honest")
        .map(|n| n.earned)
        .collect();
    let total_attempts = c.attempts;
    let total_provider = totals.provider;
    let mut by_kind: BTreeMap<String, KindSummary> = BTreeMap::new();
    for a in adversaries {
        let node = nodes.get(a.node as usize);
        if !node.is_some_and(|n| n.ever_joined) {
            continue;
        }
        let k = by_kind.entry(a.kind.clone()).or_insert(KindSummary {
            nodes: 0,
            active: 0,
            caught: 0,
            caught_after_s_mean: None,
            caught_after_s_max: None,
            traffic_share: 0.0,
            money_share: 0.0,
            earned: 0,
        });
        k.nodes += 1;
        k.active += u64::from(a.dispatches > 0);
        k.earned += a.earned;
        k.traffic_share += ratio(a.dispatches, total_attempts);
        if let Some(t) = a.caught_after_s {
            k.caught += 1;
            k.caught_after_s_mean = Some(k.caught_after_s_mean.unwrap_or(0.0) + t);
            k.caught_after_s_max = Some(k.caught_after_s_max.unwrap_or(0.0).max(t));
        }
    }
    for k in by_kind.values_mut() {
        if let Some(s) = k.caught_after_s_mean {
            k.caught_after_s_mean = Some(s / k.caught.max(1) as f64);
        }
        k.money_share = ratio(k.earned, total_provider);
    }
    let adv_dispatches: u64 = adversaries.iter().map(|a| a.dispatches).sum();
    let adv_earned: u64 = adversaries.iter().map(|a| a.earned).sum();
    // The first block after which every block is under 1%.
    let mut below = None;
    for b in blocks.iter().rev() {
        if b.share() < 0.01 {
            below = Some(b.first_request);
        } else {
            break;
        }
    }

    let first_below = blocks
        .iter()
        .find(|b| b.share() < 0.01)
        .map(|b| b.first_request);
    let providers_sum = nodes.iter().map(|n| n.earned).sum::<u64>();
    let apps_charged_sum = builder_charged
        .checked_add(checks.charged)
        .ok_or(SimError::Overflow("app charges"))?;
    let apps_payout_sum = builders.iter().map(|b| b.payout).sum::<u64>();
    let balances = totals.balances()
        && providers_sum == totals.provider
        && apps_charged_sum == totals.charged
        && apps_payout_sum == totals.margin;
    let signed_sample = statement.map(|s| {
        let st = s.statement();
        SignedSample {
            receipts: st.receipts,
            total_charged: st.total_charged,
            total_provider: st.total_provider,
            total_network_fee: st.total_network_fee,
            total_margin: st.total_margin,
            merkle_root: st.merkle_root.iter().fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            }),
            matches_simulation: st.receipts == sample.jobs
                && st.total_charged == sample.charged
                && st.total_provider == sample.provider
                && st.total_network_fee == sample.network_fee
                && st.total_margin == sample.margin,
        }
    });
    Ok(Summary {
        scenario: sc.name.clone(),
        description: sc.description.clone(),
        seed: sc.seed,
        nodes_start: sc.nodes.count,
        requests_target: sc.requests,
        simulated_s,
        events: c.events,
        requests: Requests {
            arrivals: c.arrivals,
            served: c.served,
            served_unbilled: c.served_unbilled,
            failed: c.failed,
            failed_no_candidate: c.failed_no_candidate,
            failed_attempts_exhausted: c.failed_attempts_exhausted,
            no_candidate_by_filter: c.no_candidate_by_filter.clone(),
            success_rate: ratio(c.served, c.served + c.failed),
            attempts: c.attempts,
            attempt_failures: c.attempt_failures,
            fallbacks_used: c.fallbacks_used,
            timeouts: c.timeouts,
            connect_failures: c.connect_failures,
            refusals: c.refusals,
        },
        latency_ms: LatencySummary {
            ttft: latency.0,
            total: latency.1,
        },
        cost: Cost {
            builder_charged,
            builder_tokens,
            nano_usd_per_mtok: nano_per_mtok,
            usd_per_mtok: nano_per_mtok as f64 / 1e9,
        },
        providers: Providers {
            nodes: on.len() as u64,
            earning_nodes: earnings.iter().filter(|e| **e > 0).count() as u64,
            earnings: spread(&earnings),
            gini: gini(&earnings),
            honest_nodes: honest.len() as u64,
            honest_earned: honest.iter().sum(),
            gini_honest: gini(&honest),
        },
        adversaries: Adversaries {
            nodes: by_kind.values().map(|k| k.nodes).sum(),
            by_kind,
            traffic_share: ratio(adv_dispatches, total_attempts),
            money_share: ratio(adv_earned, total_provider),
            earned: adv_earned,
            garbage_served: c.garbage_served,
            inflated_input_tokens: c.inflated_input_tokens,
            rejected_receipts: c.rejected_receipts,
            share_block: sc.share_block,
            share_below_1pct_after_requests: below,
            share_first_below_1pct_at_request: first_below,
        },
        spot_checks: SpotChecks {
            rate: sc.operator.spot_check_rate,
            checks: c.spot_checks,
            failed: c.spot_checks_failed,
            inconclusive: c.spot_checks_inconclusive,
            false_positives: c.spot_check_false_positives,
            cost: checks.charged,
        },
        settlement: Settlement {
            jobs: totals.jobs,
            total_charged: totals.charged,
            total_provider: totals.provider,
            total_network_fee: totals.network_fee,
            total_margin: totals.margin,
            balances,
            providers_sum,
            apps_charged_sum,
            apps_payout_sum,
            signed_sample,
        },
    })
}

fn f(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        String::new()
    }
}

fn opt(x: Option<f64>) -> String {
    x.map(f).unwrap_or_default()
}

impl RunResult {
    pub fn timeseries_csv(&self) -> String {
        let mut s = String::from(
            "t_s,arrivals,served,failed,success_rate,ttft_p50_ms,ttft_p95_ms,ttft_p99_ms,total_p50_ms,total_p95_ms,total_p99_ms,usd_per_mtok,adversary_traffic_share,trust_honest,trust_adversary,live_nodes\n",
        );
        for w in &self.windows {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{:.6},{:.5},{:.5},{},{}",
                f(w.t_s),
                w.arrivals,
                w.served,
                w.failed,
                f(w.success_rate),
                f(w.ttft.p50),
                f(w.ttft.p95),
                f(w.ttft.p99),
                f(w.total.p50),
                f(w.total.p95),
                f(w.total.p99),
                w.usd_per_mtok,
                w.adversary_traffic_share,
                w.trust_honest,
                if w.trust_adversary.is_finite() {
                    format!("{:.5}", w.trust_adversary)
                } else {
                    String::new()
                },
                w.live_nodes
            );
        }
        s
    }

    pub fn nodes_csv(&self) -> String {
        let mut s = String::from(
            "node,model,hardware,behaviour,price_out,joined_s,left_s,last_dispatch_s,jobs,dispatches,earned_nano_usd,check_earned_nano_usd,trust_end,spot_failed\n",
        );
        for n in self.nodes.iter().filter(|n| n.ever_joined) {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{},{:.5},{}",
                n.node,
                n.model,
                n.hardware,
                n.behaviour,
                n.price_out,
                f(n.joined_s),
                opt(n.left_s),
                opt(n.last_dispatch_s),
                n.jobs,
                n.dispatches,
                n.earned,
                n.check_earned,
                n.trust_end,
                n.spot_failed
            );
        }
        s
    }

    pub fn adversaries_csv(&self) -> String {
        let mut s = String::from(
            "node,kind,group,joined_s,caught_after_s,served_before_caught,earned_before_caught_nano_usd,earned_nano_usd,dispatches\n",
        );
        for a in &self.adversaries {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{}",
                a.node,
                a.kind,
                a.group,
                f(a.joined_s),
                opt(a.caught_after_s),
                a.served_before_caught,
                a.earned_before_caught,
                a.earned,
                a.dispatches
            );
        }
        s
    }

    pub fn blocks_csv(&self) -> String {
        let mut s = String::from("first_request,attempts,adversary_attempts,adversary_share\n");
        for b in &self.blocks {
            let _ = writeln!(
                s,
                "{},{},{},{:.5}",
                b.first_request,
                b.attempts,
                b.adversary_attempts,
                b.share()
            );
        }
        s
    }

    /// Writes every output file into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<(), SimError> {
        std::fs::create_dir_all(dir).map_err(|source| SimError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        let put = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, body).map_err(|source| SimError::Write {
                path: p.display().to_string(),
                source,
            })
        };
        let json = serde_json::to_string_pretty(&self.summary)
            .map_err(|e| SimError::Encode(e.to_string()))?;
        put("summary.json", &(json + "\n"))?;
        put("timeseries.csv", &self.timeseries_csv())?;
        put("nodes.csv", &self.nodes_csv())?;
        put("adversaries.csv", &self.adversaries_csv())?;
        put("adversary_share_blocks.csv", &self.blocks_csv())?;
        if let Some(j) = &self.statement_json {
            let s = serde_json::to_string_pretty(j).map_err(|e| SimError::Encode(e.to_string()))?;
            put("statement_sample.json", &(s + "\n"))?;
        }
        if let Some(c) = &self.statement_csv {
            put("statement_sample.csv", c)?;
        }
        crate::charts::write_all(self, dir)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn gini_of_equal_and_concentrated() {
        assert_eq!(gini(&[5, 5, 5, 5]), 0.0);
        let g = gini(&[0, 0, 0, 100]);
        assert!((g - 0.75).abs() < 1e-12, "{g}");
        assert_eq!(gini(&[]), 0.0);
    }

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<f32> = (1..=100).map(|x| x as f32).collect();
        let l = Latency::of(&mut v);
        assert_eq!((l.p50, l.p95, l.p99), (50.0, 95.0, 99.0));
    }
}
