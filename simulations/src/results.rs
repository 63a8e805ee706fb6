//! What a run produced, as data: the summary (`summary.json`), the time
//! series, per-node, per-adversary and per-block rows, and the money
//! totals and counters the event loop keeps. The summary is computed here
//! from the loop's totals ([`build_summary`]); nothing here writes a file
//! (`report.rs` and `charts.rs` do, reading these types) or reads the wall
//! clock, so a result is a function of the scenario and the seed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sharenet_market::Settlement as SignedSettlement;
use sharenet_market::pricing::Charge;

use crate::error::SimError;
use crate::scenario::Scenario;

/// Money totals, every sum checked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub jobs: u64,
    pub charged: u64,
    pub provider: u64,
    pub network_fee: u64,
    pub margin: u64,
}

impl Totals {
    pub(crate) fn add(&mut self, c: &Charge) -> Result<(), SimError> {
        let add =
            |a: u64, b: u64, what: &'static str| a.checked_add(b).ok_or(SimError::Overflow(what));
        self.jobs = add(self.jobs, 1, "jobs")?;
        self.charged = add(self.charged, c.total, "total charged")?;
        self.provider = add(self.provider, c.provider_cost, "provider total")?;
        self.network_fee = add(self.network_fee, c.network_fee, "network fee")?;
        self.margin = add(self.margin, c.margin, "margin")?;
        Ok(())
    }

    /// `charged = provider + network_fee + margin`, exactly.
    pub fn balances(&self) -> bool {
        self.provider
            .checked_add(self.network_fee)
            .and_then(|s| s.checked_add(self.margin))
            == Some(self.charged)
    }
}

/// Counters the summary reports.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Counters {
    pub arrivals: u64,
    pub served: u64,
    pub served_unbilled: u64,
    pub failed: u64,
    pub failed_no_candidate: u64,
    pub failed_attempts_exhausted: u64,
    pub no_candidate_by_filter: BTreeMap<String, u64>,
    pub attempts: u64,
    pub attempt_failures: u64,
    pub fallbacks_used: u64,
    pub timeouts: u64,
    pub connect_failures: u64,
    pub refusals: u64,
    pub rejected_receipts: u64,
    pub garbage_served: u64,
    /// Input tokens billed beyond the real ones by input-inflating nodes.
    pub inflated_input_tokens: u64,
    pub spot_checks: u64,
    pub spot_checks_failed: u64,
    pub spot_checks_inconclusive: u64,
    pub spot_check_false_positives: u64,
    /// Of those, failed because the arbiter was itself a cheat.
    pub spot_check_false_positives_bad_arbiter: u64,
    pub builder_tokens: u64,
    pub events: u64,
}

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
    /// Honest nodes' failed checks.
    pub false_positives: u64,
    /// Of those, the ones an arbiter that was itself cheating caused: it
    /// agreed with neither run, and the shared verdict fails whoever
    /// disagrees with the arbiter (the coordinator's rule). Every false
    /// positive is one of these.
    pub false_positives_bad_arbiter: u64,
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

/// What the summary is computed from, besides the scenario and the rows:
/// the event loop's counters and money totals.
pub(crate) struct RunTotals<'a> {
    pub counters: &'a Counters,
    /// Every billed job, builders' and spot checks'.
    pub totals: &'a Totals,
    /// The spot-check runs alone.
    pub checks: &'a Totals,
    /// The signed sample's jobs.
    pub sample: &'a Totals,
    /// Builders' time to first token and total time.
    pub latency: (Latency, Latency),
    /// What the builders' apps were charged, and paid out as margins.
    pub builder_charged: u64,
    pub builder_payout: u64,
    /// The signed sample's statement, when there was a sample.
    pub statement: Option<&'a SignedSettlement>,
    pub simulated_s: f64,
}

/// `summary.json` from a finished run.
pub(crate) fn build_summary(
    sc: &Scenario,
    t: &RunTotals<'_>,
    nodes: &[NodeRow],
    adversaries: &[AdversaryRow],
    blocks: &[ShareBlock],
) -> Result<Summary, SimError> {
    let c = t.counters;
    Ok(Summary {
        scenario: sc.name.clone(),
        description: sc.description.clone(),
        seed: sc.seed,
        nodes_start: sc.nodes.count,
        requests_target: sc.requests,
        simulated_s: t.simulated_s,
        events: c.events,
        requests: requests_summary(c),
        latency_ms: LatencySummary {
            ttft: t.latency.0,
            total: t.latency.1,
        },
        cost: cost_summary(t.builder_charged, c.builder_tokens),
        providers: providers_summary(nodes),
        adversaries: adversaries_summary(sc, t, nodes, adversaries, blocks),
        spot_checks: SpotChecks {
            rate: sc.operator.spot_check_rate,
            checks: c.spot_checks,
            failed: c.spot_checks_failed,
            inconclusive: c.spot_checks_inconclusive,
            false_positives: c.spot_check_false_positives,
            false_positives_bad_arbiter: c.spot_check_false_positives_bad_arbiter,
            cost: t.checks.charged,
        },
        settlement: settlement_summary(t, nodes)?,
    })
}

fn requests_summary(c: &Counters) -> Requests {
    Requests {
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
    }
}

fn cost_summary(builder_charged: u64, builder_tokens: u64) -> Cost {
    let nano_per_mtok = if builder_tokens == 0 {
        0
    } else {
        u64::try_from(u128::from(builder_charged) * 1_000_000 / u128::from(builder_tokens))
            .unwrap_or(u64::MAX)
    };
    Cost {
        builder_charged,
        builder_tokens,
        nano_usd_per_mtok: nano_per_mtok,
        usd_per_mtok: nano_per_mtok as f64 / 1e9,
    }
}

/// Earnings of the nodes that were on the network at some point.
fn providers_summary(nodes: &[NodeRow]) -> Providers {
    let on: Vec<&NodeRow> = nodes.iter().filter(|n| n.ever_joined).collect();
    let earnings: Vec<u64> = on.iter().map(|n| n.earned).collect();
    let honest: Vec<u64> = on
        .iter()
        .filter(|n| n.behaviour == "honest")
        .map(|n| n.earned)
        .collect();
    Providers {
        nodes: on.len() as u64,
        earning_nodes: earnings.iter().filter(|e| **e > 0).count() as u64,
        earnings: spread(&earnings),
        gini: gini(&earnings),
        honest_nodes: honest.len() as u64,
        honest_earned: honest.iter().sum(),
        gini_honest: gini(&honest),
    }
}

/// Per kind: nodes, caught, traffic and money shares.
fn by_kind(
    total_attempts: u64,
    total_provider: u64,
    nodes: &[NodeRow],
    adversaries: &[AdversaryRow],
) -> BTreeMap<String, KindSummary> {
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
    by_kind
}

fn adversaries_summary(
    sc: &Scenario,
    t: &RunTotals<'_>,
    nodes: &[NodeRow],
    adversaries: &[AdversaryRow],
    blocks: &[ShareBlock],
) -> Adversaries {
    let (c, total_provider) = (t.counters, t.totals.provider);
    let by_kind = by_kind(c.attempts, total_provider, nodes, adversaries);
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
    Adversaries {
        nodes: by_kind.values().map(|k| k.nodes).sum(),
        by_kind,
        traffic_share: ratio(adv_dispatches, c.attempts),
        money_share: ratio(adv_earned, total_provider),
        earned: adv_earned,
        garbage_served: c.garbage_served,
        inflated_input_tokens: c.inflated_input_tokens,
        rejected_receipts: c.rejected_receipts,
        share_block: sc.share_block,
        share_below_1pct_after_requests: below,
        share_first_below_1pct_at_request: first_below,
    }
}

/// The money totals and their balance checks.
fn settlement_summary(t: &RunTotals<'_>, nodes: &[NodeRow]) -> Result<Settlement, SimError> {
    let totals = t.totals;
    let providers_sum = nodes.iter().map(|n| n.earned).sum::<u64>();
    let apps_charged_sum = t
        .builder_charged
        .checked_add(t.checks.charged)
        .ok_or(SimError::Overflow("app charges"))?;
    let apps_payout_sum = t.builder_payout;
    let balances = totals.balances()
        && providers_sum == totals.provider
        && apps_charged_sum == totals.charged
        && apps_payout_sum == totals.margin;
    Ok(Settlement {
        jobs: totals.jobs,
        total_charged: totals.charged,
        total_provider: totals.provider,
        total_network_fee: totals.network_fee,
        total_margin: totals.margin,
        balances,
        providers_sum,
        apps_charged_sum,
        apps_payout_sum,
        signed_sample: t.statement.map(|s| signed_sample(s, t.sample)),
    })
}

/// The signed sample statement's totals, checked against the simulation's.
fn signed_sample(s: &SignedSettlement, sample: &Totals) -> SignedSample {
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
