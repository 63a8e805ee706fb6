//! Scenario files: the TOML a run is described by, parsed in two stages (a
//! serde mirror with `deny_unknown_fields`, then `validate`), with errors
//! that name the key and the line.
//!
//! Every key is documented in `simulations/README.md`.

use serde::{Deserialize, Serialize};
use sharenet_router::{BreakerParams, RouteParams, TrustParams, Weights};

use crate::dist::Dist;
use crate::error::SimError;

/// A whole scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seed of every random draw (`--seed` overrides it).
    #[serde(default = "one")]
    pub seed: u64,
    /// Builder requests to simulate (`--requests` overrides it).
    pub requests: u64,
    /// Width of a time-series row, simulated seconds.
    #[serde(default = "sixty")]
    pub window_s: f64,
    /// Requests per block when measuring the adversaries' share of traffic.
    #[serde(default = "thousand")]
    pub share_block: u64,
    #[serde(default)]
    pub network: NetworkCfg,
    pub models: Vec<ModelCfg>,
    pub nodes: NodesCfg,
    pub traffic: TrafficCfg,
    #[serde(default)]
    pub operator: OperatorCfg,
    #[serde(default)]
    pub settlement: SettlementCfg,
}

fn one() -> u64 {
    1
}
fn sixty() -> f64 {
    60.0
}
fn thousand() -> u64 {
    1_000
}

/// How nodes are reached and announce themselves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkCfg {
    /// A node re-signs its advert this often.
    pub advert_interval_s: f64,
    /// An advert not renewed for this long drops the node from routing.
    pub advert_ttl_s: f64,
}

impl Default for NetworkCfg {
    fn default() -> Self {
        Self {
            advert_interval_s: 10.0,
            advert_ttl_s: 30.0,
        }
    }
}

/// One model on the market.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCfg {
    pub name: String,
    /// Share of builder requests for this model (relative weight).
    pub traffic_share: f64,
    /// Share of nodes serving it (relative weight; each node serves one
    /// model).
    pub node_share: f64,
    /// Speeds are divided by this (a 70B model decodes slower than an 8B).
    #[serde(default = "one_f")]
    pub size_factor: f64,
    /// Node prices for this model are the drawn price times this.
    #[serde(default = "one_f")]
    pub price_factor: f64,
    #[serde(default = "ctx")]
    pub context_length: u32,
}

fn one_f() -> f64 {
    1.0
}
fn ctx() -> u32 {
    32_768
}

/// The provider side.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesCfg {
    /// Nodes at the start (joining nodes and Sybil groups come on top).
    pub count: u64,
    pub hardware: Vec<HardwareCfg>,
    /// nano-USD per generated token (before the model's `price_factor`).
    pub price_out: Dist,
    /// `price_in = price_out × price_in_ratio`.
    #[serde(default = "quarter")]
    pub price_in_ratio: f64,
    /// Round trip coordinator ↔ node, ms.
    pub rtt_ms: Dist,
    /// Share of nodes reached through a relay (RTT doubled).
    #[serde(default)]
    pub relayed_share: f64,
    /// Probability that an honest node refuses or fails a job before the
    /// first token.
    #[serde(default)]
    pub failure_rate: f64,
    /// Probability that an honest node accepts a job and never sends a first
    /// token (the coordinator times out).
    #[serde(default)]
    pub timeout_rate: f64,
    /// Completed jobs on record for each starting node (they have been on
    /// the network for a day: past probation). Joiners start with none.
    #[serde(default = "fifty")]
    pub history_jobs: u32,
    #[serde(default)]
    pub churn: ChurnCfg,
    #[serde(default)]
    pub adversaries: Vec<AdversaryCfg>,
}

fn fifty() -> u32 {
    50
}

fn quarter() -> f64 {
    0.25
}

/// A kind of hardware and its share of nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareCfg {
    pub name: String,
    pub share: f64,
    /// Decode speed one request sees, tokens/s (for a model of size 1).
    pub decode_tokens_per_s: f64,
    /// Prompt processing speed, tokens/s.
    pub prefill_tokens_per_s: f64,
    /// Jobs run at once.
    pub max_concurrency: u32,
    /// GPUs advertised.
    #[serde(default)]
    pub gpus: u32,
    /// Per-node speed spread: speeds are multiplied by a uniform draw in
    /// `[1 - jitter, 1 + jitter]`.
    #[serde(default = "tenth")]
    pub speed_jitter: f64,
}

fn tenth() -> f64 {
    0.1
}

/// Nodes leaving and joining during the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChurnCfg {
    /// Share of the starting nodes that go away (silently: the coordinator
    /// learns it when their advert expires or their jobs fail).
    pub leave_share: f64,
    /// New nodes joining, as a share of `count`.
    pub join_share: f64,
    /// Leaves and joins are spread uniformly over `[start_s, end_s]`
    /// (`end_s` default: the expected length of the run).
    pub start_s: f64,
    pub end_s: Option<f64>,
}

/// What a dishonest node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdversaryKind {
    /// Serves cheap wrong output (another model, random text).
    Garbage,
    /// Claims more output tokens in its receipts than it streamed.
    InflateTokens,
    /// Bills more input tokens than the prompt had, within the hold's
    /// bound (every prompt byte a token), so its receipts pass; only a spot
    /// check, which compares input counts with the reference's, tells.
    InflateInput,
    /// Accepts jobs, then never sends a first token.
    Stall,
}

/// A group of adversary nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdversaryCfg {
    pub kind: AdversaryKind,
    /// Share of `count` (taken from the starting nodes), or ...
    #[serde(default)]
    pub share: Option<f64>,
    /// ... an exact number of nodes.
    #[serde(default)]
    pub count: Option<u64>,
    /// Their prices are the drawn price times this (cheaters undercut).
    #[serde(default = "one_f")]
    pub price_factor: f64,
    /// Probability of cheating on each job (1: always).
    #[serde(default = "one_f")]
    pub rate: f64,
    /// `inflate_tokens`: claimed output = real output × this;
    /// `inflate_input`: billed input = real input × this (at most the
    /// hold's bound, about four times the real count).
    #[serde(default = "inflate")]
    pub inflate_factor: f64,
    /// A Sybil group: the nodes are extra identities that all join at this
    /// simulated second (instead of being among the starting nodes).
    #[serde(default)]
    pub join_at_s: Option<f64>,
}

fn inflate() -> f64 {
    1.5
}

/// The builder side.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficCfg {
    /// Mean builder requests per simulated second.
    pub rate_per_s: f64,
    #[serde(default)]
    pub arrival: Arrival,
    /// `diurnal`: the rate swings by ± this share ...
    #[serde(default = "half")]
    pub diurnal_amplitude: f64,
    /// ... over this period (seconds).
    #[serde(default = "day")]
    pub diurnal_period_s: f64,
    /// Bursts multiply the rate (in any arrival mode).
    #[serde(default)]
    pub bursts: Vec<BurstCfg>,
    /// Apps (each a builder with its margin and routing preferences).
    pub builders: u32,
    /// End customers per builder (metered, not billed by the network).
    #[serde(default = "hundred")]
    pub customers_per_builder: u32,
    /// Each builder's margin, basis points of the provider cost.
    #[serde(default = "zero_dist")]
    pub margin_bps: Dist,
    /// Each builder's surcharge, nano-USD per 1M tokens.
    #[serde(default = "zero_dist")]
    pub margin_per_mtok: Dist,
    pub prompt_tokens: Dist,
    pub output_tokens: Dist,
    /// The requests' `max_tokens` (routing's worst case; output is capped).
    #[serde(default = "max_tokens")]
    pub max_tokens: u32,
    /// Routing preference profiles; builders are dealt to them by share,
    /// the remainder uses the defaults.
    #[serde(default)]
    pub preferences: Vec<PreferenceCfg>,
}

fn half() -> f64 {
    0.5
}
fn day() -> f64 {
    86_400.0
}
fn hundred() -> u32 {
    100
}
fn zero_dist() -> Dist {
    Dist::constant(0.0)
}
fn max_tokens() -> u32 {
    1_024
}

/// The arrival process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    #[default]
    Poisson,
    /// Poisson with a sinusoidal rate.
    Diurnal,
}

/// A burst of traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstCfg {
    pub start_s: f64,
    pub duration_s: f64,
    pub multiplier: f64,
}

/// A routing preference profile (OpenRouter's `provider` object).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceCfg {
    /// Share of builders using it.
    pub share: f64,
    #[serde(default)]
    pub sort: Option<SortCfg>,
    #[serde(default)]
    pub max_price_in: Option<u64>,
    #[serde(default)]
    pub max_price_out: Option<u64>,
    #[serde(default)]
    pub min_trust: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortCfg {
    Price,
    Latency,
    Throughput,
}

/// The operator's parameters under test.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorCfg {
    /// Network fee, basis points of the provider cost.
    pub network_fee_bps: u32,
    /// Share of served jobs re-run as spot checks.
    pub spot_check_rate: f64,
    /// Output tokens of a spot-check run.
    pub spot_check_tokens: u32,
    /// Nodes tried per request (the fallback list is cut to this).
    pub max_attempts: u32,
    /// A job with no first token after this long is failed over.
    pub first_token_timeout_ms: f64,
    /// Opening a stream to a node that is gone fails after this long.
    pub connect_timeout_ms: f64,
    /// Trust, probation and breaker states are re-read into the routing
    /// table this often (and at every event that changes them).
    pub refresh_interval_ms: f64,
    pub weights: WeightsCfg,
    pub route: RouteCfg,
    pub trust: TrustCfg,
    pub breaker: BreakerCfg,
}

impl Default for OperatorCfg {
    fn default() -> Self {
        Self {
            network_fee_bps: 500,
            spot_check_rate: 0.01,
            spot_check_tokens: 16,
            max_attempts: 3,
            first_token_timeout_ms: 10_000.0,
            connect_timeout_ms: 1_000.0,
            refresh_interval_ms: 1_000.0,
            weights: WeightsCfg::default(),
            route: RouteCfg::default(),
            trust: TrustCfg::default(),
            breaker: BreakerCfg::default(),
        }
    }
}

/// `sharenet_router::Weights`; unset keys keep the router's defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightsCfg {
    pub price: Option<f64>,
    pub latency: Option<f64>,
    pub trust: Option<f64>,
}

/// `sharenet_router::RouteParams`; unset keys keep the router's defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteCfg {
    pub probation_share: Option<f64>,
    pub trust_floor: Option<f64>,
    pub max_candidates: Option<usize>,
    pub max_queue_factor: Option<u32>,
    pub spill_queue_factor: Option<u32>,
    pub p2c_top_k: Option<usize>,
    pub p2c_slack: Option<f64>,
    pub unknown_rtt_ms: Option<f64>,
    pub unknown_ttft_ms: Option<f64>,
    pub unknown_tokens_per_sec: Option<f64>,
    pub typical_job_tokens: Option<u32>,
}

/// `sharenet_router::TrustParams` (times in hours / seconds); unset keys
/// keep the router's defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustCfg {
    pub half_life_h: Option<f64>,
    pub severe_half_life_h: Option<f64>,
    pub prior_good: Option<f64>,
    pub prior_bad: Option<f64>,
    pub weight_completed: Option<f64>,
    pub weight_failed: Option<f64>,
    pub weight_slow_first_token: Option<f64>,
    pub weight_spot_passed: Option<f64>,
    pub penalty_spot_failed: Option<f64>,
    pub penalty_rejected_receipt: Option<f64>,
    pub probation_min_jobs: Option<u64>,
    pub probation_min_age_s: Option<f64>,
}

/// `sharenet_router::BreakerParams`; unset keys keep the defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerCfg {
    pub failure_threshold: Option<u32>,
    pub base_cooldown_ms: Option<u64>,
    pub factor: Option<u32>,
    pub max_cooldown_ms: Option<u64>,
    pub probe_timeout_ms: Option<u64>,
}

/// How the period is settled.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SettlementCfg {
    /// The first this many billed jobs get real ed25519-signed,
    /// countersigned receipts and go through `sharenet_market::settle`
    /// (signing is ~50 µs a job, too slow for millions); every job is
    /// priced with `sharenet_market::pricing::charge` and aggregated.
    pub signed_sample: u64,
    /// Unix ms of simulated time 0 (default 2026-11-01T00:00Z).
    pub epoch_ms: u64,
}

impl Default for SettlementCfg {
    fn default() -> Self {
        Self {
            signed_sample: 2_000,
            epoch_ms: 1_793_491_200_000,
        }
    }
}

fn ms_of_hours(h: f64) -> u64 {
    (h * 3_600_000.0).round().max(0.0) as u64
}

impl OperatorCfg {
    pub fn weights(&self) -> Weights {
        let d = Weights::default();
        Weights {
            price: self.weights.price.unwrap_or(d.price),
            latency: self.weights.latency.unwrap_or(d.latency),
            trust: self.weights.trust.unwrap_or(d.trust),
        }
    }

    pub fn route_params(&self) -> RouteParams {
        let d = RouteParams::default();
        let r = &self.route;
        RouteParams {
            probation_share: r.probation_share.unwrap_or(d.probation_share),
            trust_floor: r.trust_floor.unwrap_or(d.trust_floor),
            max_candidates: r.max_candidates.unwrap_or(d.max_candidates),
            max_queue_factor: r.max_queue_factor.unwrap_or(d.max_queue_factor),
            spill_queue_factor: r.spill_queue_factor.unwrap_or(d.spill_queue_factor),
            p2c_top_k: r.p2c_top_k.unwrap_or(d.p2c_top_k),
            p2c_slack: r.p2c_slack.unwrap_or(d.p2c_slack),
            unknown_rtt_ms: r.unknown_rtt_ms.unwrap_or(d.unknown_rtt_ms),
            unknown_ttft_ms: r.unknown_ttft_ms.unwrap_or(d.unknown_ttft_ms),
            unknown_tokens_per_sec: r.unknown_tokens_per_sec.unwrap_or(d.unknown_tokens_per_sec),
            typical_job_tokens: r.typical_job_tokens.unwrap_or(d.typical_job_tokens),
        }
    }

    pub fn trust_params(&self) -> TrustParams {
        let d = TrustParams::default();
        let t = &self.trust;
        TrustParams {
            half_life_ms: t.half_life_h.map_or(d.half_life_ms, ms_of_hours),
            severe_half_life_ms: t
                .severe_half_life_h
                .map_or(d.severe_half_life_ms, ms_of_hours),
            prior_good: t.prior_good.unwrap_or(d.prior_good),
            prior_bad: t.prior_bad.unwrap_or(d.prior_bad),
            weight_completed: t.weight_completed.unwrap_or(d.weight_completed),
            weight_failed: t.weight_failed.unwrap_or(d.weight_failed),
            weight_slow_first_token: t
                .weight_slow_first_token
                .unwrap_or(d.weight_slow_first_token),
            weight_spot_passed: t.weight_spot_passed.unwrap_or(d.weight_spot_passed),
            penalty_spot_failed: t.penalty_spot_failed.unwrap_or(d.penalty_spot_failed),
            penalty_rejected_receipt: t
                .penalty_rejected_receipt
                .unwrap_or(d.penalty_rejected_receipt),
            probation_min_jobs: t.probation_min_jobs.unwrap_or(d.probation_min_jobs),
            probation_min_age_ms: t.probation_min_age_s.map_or(d.probation_min_age_ms, |s| {
                (s * 1000.0).round().max(0.0) as u64
            }),
        }
    }

    pub fn breaker_params(&self) -> BreakerParams {
        let d = BreakerParams::default();
        let b = &self.breaker;
        BreakerParams {
            failure_threshold: b.failure_threshold.unwrap_or(d.failure_threshold),
            base_cooldown_ms: b.base_cooldown_ms.unwrap_or(d.base_cooldown_ms),
            factor: b.factor.unwrap_or(d.factor),
            max_cooldown_ms: b.max_cooldown_ms.unwrap_or(d.max_cooldown_ms),
            probe_timeout_ms: b.probe_timeout_ms.unwrap_or(d.probe_timeout_ms),
        }
    }
}

impl Scenario {
    /// Parses and validates scenario text; `--set` overrides (`key=value`,
    /// dotted keys, TOML values; a bare word is a string) are applied on
    /// top. Errors name the key and the line of the file.
    pub fn parse(src: &str, sets: &[String]) -> Result<Self, SimError> {
        let parsed: Scenario = toml::from_str(src).map_err(|e| SimError::Parse(e.to_string()))?;
        let scenario = if sets.is_empty() {
            parsed
        } else {
            let mut doc: toml::Table =
                toml::from_str(src).map_err(|e| SimError::Parse(e.to_string()))?;
            for s in sets {
                apply_set(&mut doc, s)?;
            }
            let text = toml::to_string(&doc).map_err(|e| SimError::Set {
                set: sets.join(" "),
                reason: e.to_string(),
            })?;
            toml::from_str(&text).map_err(|e| SimError::Set {
                set: sets.join(" "),
                reason: e.message().to_string(),
            })?
        };
        scenario.validate(src)?;
        Ok(scenario)
    }

    /// The expected length of the run in simulated seconds.
    pub fn expected_duration_s(&self) -> f64 {
        self.requests as f64 / self.traffic.rate_per_s.max(1e-9)
    }

    /// Semantic checks serde cannot make; `src` is used to find lines.
    pub fn validate(&self, src: &str) -> Result<(), SimError> {
        let bad = Bad { src };
        self.validate_run(&bad)?;
        self.validate_models(&bad)?;
        self.validate_nodes(&bad)?;
        self.validate_adversaries(&bad)?;
        self.validate_traffic(&bad)?;
        self.validate_operator(&bad)?;
        Ok(())
    }

    /// Run length, windows and the network.
    fn validate_run(&self, bad: &Bad<'_>) -> Result<(), SimError> {
        if self.requests == 0 {
            return Err(bad.at("requests", "must be at least 1"));
        }
        if !pos(self.window_s) {
            return Err(bad.at("window_s", "must be > 0"));
        }
        if self.share_block == 0 {
            return Err(bad.at("share_block", "must be at least 1"));
        }
        let n = &self.network;
        if !pos(n.advert_interval_s) {
            return Err(bad.at("network.advert_interval_s", "must be > 0"));
        }
        if !(n.advert_ttl_s.is_finite() && n.advert_ttl_s > n.advert_interval_s) {
            return Err(bad.at(
                "network.advert_ttl_s",
                "must be longer than advert_interval_s",
            ));
        }
        Ok(())
    }

    /// `[[models]]`.
    fn validate_models(&self, bad: &Bad<'_>) -> Result<(), SimError> {
        if self.models.is_empty() {
            return Err(bad.at("models", "at least one [[models]] is needed"));
        }
        if self.models.len() > usize::from(u16::MAX) {
            return Err(bad.at("models", "too many models"));
        }
        for (i, m) in self.models.iter().enumerate() {
            let k = |f: &str| format!("models[{i}].{f}");
            if m.name.is_empty() {
                return Err(bad.at(&k("name"), "must not be empty"));
            }
            if !nonneg(m.traffic_share) {
                return Err(bad.at(&k("traffic_share"), "must be >= 0"));
            }
            if !nonneg(m.node_share) {
                return Err(bad.at(&k("node_share"), "must be >= 0"));
            }
            if !pos(m.size_factor) {
                return Err(bad.at(&k("size_factor"), "must be > 0"));
            }
            if !pos(m.price_factor) {
                return Err(bad.at(&k("price_factor"), "must be > 0"));
            }
        }
        if self.models.iter().map(|m| m.traffic_share).sum::<f64>() <= 0.0 {
            return Err(bad.at("models", "traffic_share: not all 0"));
        }
        if self.models.iter().map(|m| m.node_share).sum::<f64>() <= 0.0 {
            return Err(bad.at("models", "node_share: not all 0"));
        }
        Ok(())
    }

    /// `[nodes]`, its hardware and churn.
    fn validate_nodes(&self, bad: &Bad<'_>) -> Result<(), SimError> {
        let nd = &self.nodes;
        if nd.count == 0 || nd.count > 10_000_000 {
            return Err(bad.at("nodes.count", "must be 1..=10,000,000"));
        }
        if nd.hardware.is_empty() {
            return Err(bad.at("nodes.hardware", "at least one [[nodes.hardware]]"));
        }
        for (i, h) in nd.hardware.iter().enumerate() {
            let k = |f: &str| format!("nodes.hardware[{i}].{f}");
            if !nonneg(h.share) {
                return Err(bad.at(&k("share"), "must be >= 0"));
            }
            if !pos(h.decode_tokens_per_s) {
                return Err(bad.at(&k("decode_tokens_per_s"), "must be > 0"));
            }
            if !pos(h.prefill_tokens_per_s) {
                return Err(bad.at(&k("prefill_tokens_per_s"), "must be > 0"));
            }
            if h.max_concurrency == 0 || h.max_concurrency > 4096 {
                return Err(bad.at(&k("max_concurrency"), "must be 1..=4096"));
            }
            if !(nonneg(h.speed_jitter) && h.speed_jitter < 1.0) {
                return Err(bad.at(&k("speed_jitter"), "must be in [0, 1)"));
            }
        }
        if nd.hardware.iter().map(|h| h.share).sum::<f64>() <= 0.0 {
            return Err(bad.at("nodes.hardware", "share: not all 0"));
        }
        nd.price_out
            .check()
            .map_err(|r| bad.at("nodes.price_out", &r))?;
        nd.rtt_ms.check().map_err(|r| bad.at("nodes.rtt_ms", &r))?;
        if !nonneg(nd.price_in_ratio) {
            return Err(bad.at("nodes.price_in_ratio", "must be >= 0"));
        }
        for (key, v) in [
            ("nodes.relayed_share", nd.relayed_share),
            ("nodes.failure_rate", nd.failure_rate),
            ("nodes.timeout_rate", nd.timeout_rate),
            ("nodes.churn.leave_share", nd.churn.leave_share),
        ] {
            if !share(v) {
                return Err(bad.at(key, "must be in [0, 1]"));
            }
        }
        if !(nonneg(nd.churn.join_share) && nd.churn.join_share <= 10.0) {
            return Err(bad.at("nodes.churn.join_share", "must be in [0, 10]"));
        }
        if !nonneg(nd.churn.start_s) {
            return Err(bad.at("nodes.churn.start_s", "must be >= 0"));
        }
        if let Some(e) = nd.churn.end_s
            && !(e.is_finite() && e >= nd.churn.start_s)
        {
            return Err(bad.at("nodes.churn.end_s", "must be >= start_s"));
        }
        Ok(())
    }

    /// `[[nodes.adversaries]]`.
    fn validate_adversaries(&self, bad: &Bad<'_>) -> Result<(), SimError> {
        let nd = &self.nodes;
        let mut from_start = 0.0;
        for (i, a) in nd.adversaries.iter().enumerate() {
            let k = |f: &str| format!("nodes.adversaries[{i}].{f}");
            match (a.share, a.count) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(bad.at(
                        &format!("nodes.adversaries[{i}]"),
                        "give exactly one of share and count",
                    ));
                }
                (Some(s), None) if !share(s) => {
                    return Err(bad.at(&k("share"), "must be in [0, 1]"));
                }
                _ => {}
            }
            if a.join_at_s.is_none() {
                from_start +=
                    a.share.unwrap_or(0.0) + a.count.unwrap_or(0) as f64 / nd.count as f64;
            }
            if !pos(a.price_factor) {
                return Err(bad.at(&k("price_factor"), "must be > 0"));
            }
            if !share(a.rate) {
                return Err(bad.at(&k("rate"), "must be in [0, 1]"));
            }
            if !(a.inflate_factor.is_finite() && a.inflate_factor >= 1.0) {
                return Err(bad.at(&k("inflate_factor"), "must be >= 1"));
            }
            if let Some(t) = a.join_at_s
                && !nonneg(t)
            {
                return Err(bad.at(&k("join_at_s"), "must be >= 0"));
            }
        }
        if from_start > 1.0 + 1e-9 {
            return Err(bad.at("nodes.adversaries", "more adversaries than starting nodes"));
        }
        Ok(())
    }

    /// `[traffic]`.
    fn validate_traffic(&self, bad: &Bad<'_>) -> Result<(), SimError> {
        let t = &self.traffic;
        if !pos(t.rate_per_s) {
            return Err(bad.at("traffic.rate_per_s", "must be > 0"));
        }
        if !share(t.diurnal_amplitude) {
            return Err(bad.at("traffic.diurnal_amplitude", "must be in [0, 1]"));
        }
        if !pos(t.diurnal_period_s) {
            return Err(bad.at("traffic.diurnal_period_s", "must be > 0"));
        }
        for (i, b) in t.bursts.iter().enumerate() {
            let k = |f: &str| format!("traffic.bursts[{i}].{f}");
            if !nonneg(b.start_s) {
                return Err(bad.at(&k("start_s"), "must be >= 0"));
            }
            if !nonneg(b.duration_s) {
                return Err(bad.at(&k("duration_s"), "must be >= 0"));
            }
            if !(nonneg(b.multiplier) && b.multiplier <= 1000.0) {
                return Err(bad.at(&k("multiplier"), "must be in [0, 1000]"));
            }
        }
        if t.builders == 0 {
            return Err(bad.at("traffic.builders", "must be at least 1"));
        }
        if t.customers_per_builder == 0 {
            return Err(bad.at("traffic.customers_per_builder", "must be at least 1"));
        }
        for (key, d) in [
            ("traffic.margin_bps", &t.margin_bps),
            ("traffic.margin_per_mtok", &t.margin_per_mtok),
            ("traffic.prompt_tokens", &t.prompt_tokens),
            ("traffic.output_tokens", &t.output_tokens),
        ] {
            d.check().map_err(|r| bad.at(key, &r))?;
        }
        if t.max_tokens == 0 {
            return Err(bad.at("traffic.max_tokens", "must be at least 1"));
        }
        for (i, p) in t.preferences.iter().enumerate() {
            if !share(p.share) {
                return Err(bad.at(
                    &format!("traffic.preferences[{i}].share"),
                    "must be in [0, 1]",
                ));
            }
        }
        if t.preferences.iter().map(|p| p.share).sum::<f64>() > 1.0 + 1e-9 {
            return Err(bad.at("traffic.preferences", "shares add up to more than 1"));
        }
        Ok(())
    }

    /// `[operator]`.
    fn validate_operator(&self, bad: &Bad<'_>) -> Result<(), SimError> {
        let o = &self.operator;
        if o.network_fee_bps > 100_000 {
            return Err(bad.at("operator.network_fee_bps", "must be <= 100000"));
        }
        if !share(o.spot_check_rate) {
            return Err(bad.at("operator.spot_check_rate", "must be in [0, 1]"));
        }
        if o.max_attempts == 0 {
            return Err(bad.at("operator.max_attempts", "must be at least 1"));
        }
        for (key, v) in [
            ("operator.first_token_timeout_ms", o.first_token_timeout_ms),
            ("operator.connect_timeout_ms", o.connect_timeout_ms),
            ("operator.refresh_interval_ms", o.refresh_interval_ms),
        ] {
            if !pos(v) {
                return Err(bad.at(key, "must be > 0"));
            }
        }
        Ok(())
    }
}

/// Builds the error for an invalid value, with the key's line in the
/// source when it can be found.
struct Bad<'a> {
    src: &'a str,
}

impl Bad<'_> {
    fn at(&self, key: &str, reason: &str) -> SimError {
        SimError::Invalid {
            key: key.to_string(),
            line: locate(self.src, key),
            reason: reason.to_string(),
        }
    }
}

/// In [0, 1].
fn share(x: f64) -> bool {
    x.is_finite() && (0.0..=1.0).contains(&x)
}

/// Finite and above 0.
fn pos(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// Finite and not negative.
fn nonneg(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

/// Sets `path = value` in a TOML document. `path` is dotted; `name[i]`
/// indexes an array of tables. The value is parsed as TOML, or taken as a
/// string when it does not parse.
fn apply_set(doc: &mut toml::Table, set: &str) -> Result<(), SimError> {
    let err = |reason: &str| SimError::Set {
        set: set.to_string(),
        reason: reason.to_string(),
    };
    let (path, raw) = set
        .split_once('=')
        .ok_or_else(|| err("expected key=value"))?;
    let (path, raw) = (path.trim(), raw.trim());
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = path.split('.').collect();
    let Some((last, parents)) = parts.split_last() else {
        return Err(err("empty key"));
    };
    let mut table = doc;
    for p in parents {
        let (name, index) = split_index(p).ok_or_else(|| err("bad index"))?;
        let entry = table
            .entry(name.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let target = match (entry, index) {
            (toml::Value::Table(t), None) => t,
            (toml::Value::Array(a), Some(i)) => match a.get_mut(i) {
                Some(toml::Value::Table(t)) => t,
                _ => return Err(err(&format!("{name}[{i}] does not exist"))),
            },
            _ => return Err(err(&format!("{name} is not a table"))),
        };
        table = target;
    }
    table.insert((*last).to_string(), value);
    Ok(())
}

fn split_index(part: &str) -> Option<(&str, Option<usize>)> {
    match part.split_once('[') {
        None => Some((part, None)),
        Some((name, rest)) => {
            let i = rest.strip_suffix(']')?.parse().ok()?;
            Some((name, Some(i)))
        }
    }
}

/// The 1-based line where `key` (dotted, `name[i]` for arrays of tables) is
/// set in `src`, or where its table starts; `None` when it is not written
/// out (a default).
pub fn locate(src: &str, key: &str) -> Option<usize> {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, parents) = parts.split_last()?;
    let mut header_path: Vec<String> = Vec::new();
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    // The table path each line is under, with array indices resolved.
    let want: Vec<String> = parents.iter().map(|s| s.to_string()).collect();
    let (last_name, last_index) = split_index(last)?;
    for (n, line) in src.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix("[[").and_then(|r| r.split_once("]]")) {
            let name = h.0.trim().to_string();
            let c = counts.entry(name.clone()).or_insert(0);
            let idx = *c;
            *c += 1;
            header_path = indexed_path(&name, idx, &header_path);
            let me = format!("{name}[{idx}]");
            if parents.is_empty() && last_index.is_some() && me == *last
                || joined(&want, last) == joined(&header_path, "")
            {
                return Some(n + 1);
            }
        } else if let Some(h) = l.strip_prefix('[').and_then(|r| r.split_once(']')) {
            let name = h.0.trim();
            header_path = name.split('.').map(|s| s.trim().to_string()).collect();
            fix_indices(&mut header_path, &counts);
            if joined(&want, last) == joined(&header_path, "") {
                return Some(n + 1);
            }
        } else if let Some((k, _)) = l.split_once('=') {
            let k = k.trim();
            let mut full = header_path.clone();
            full.extend(k.split('.').map(|s| s.trim().to_string()));
            let mut w = want.clone();
            w.push(last_name.to_string());
            if full == w {
                return Some(n + 1);
            }
        }
    }
    None
}

fn joined(parts: &[String], last: &str) -> String {
    let mut s = parts.join(".");
    if !last.is_empty() {
        if !s.is_empty() {
            s.push('.');
        }
        s.push_str(last);
    }
    s
}

/// `a.b` as the `idx`-th `[[a.b]]`: `["a", "b[idx]"]`, with earlier
/// segments indexed as their latest array element.
fn indexed_path(name: &str, idx: usize, _prev: &[String]) -> Vec<String> {
    let mut parts: Vec<String> = name.split('.').map(|s| s.trim().to_string()).collect();
    if let Some(l) = parts.last_mut() {
        *l = format!("{l}[{idx}]");
    }
    parts
}

/// In a `[a.b]` header under an array of tables `[[a]]`, `a` means its
/// latest element.
fn fix_indices(parts: &mut [String], counts: &std::collections::BTreeMap<String, usize>) {
    let mut prefix = String::new();
    for p in parts.iter_mut() {
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(p);
        if let Some(c) = counts.get(&prefix)
            && *c > 0
        {
            *p = format!("{p}[{}]", c - 1);
        }
    }
}

/// The generated market the `bench` subcommand and `benches/scale.rs` time:
/// `nodes` nodes over four models, `requests` requests at half a request
/// per node per second (about a third of the fleet's capacity), 5%
/// cheaters, 10% churn, default operator parameters.
pub fn bench_scenario(nodes: u64, requests: u64) -> Result<Scenario, SimError> {
    let rate = (nodes as f64 * 0.5).max(1.0);
    let src = format!(
        r#"
name = "bench-{nodes}-{requests}"
requests = {requests}
seed = 42
window_s = 30

[[models]]
name = "llama-3.1-8b"
traffic_share = 0.4
node_share = 0.4

[[models]]
name = "qwen2.5-14b"
traffic_share = 0.3
node_share = 0.3
size_factor = 1.7
price_factor = 1.6

[[models]]
name = "mistral-small-24b"
traffic_share = 0.2
node_share = 0.2
size_factor = 2.5
price_factor = 2.5

[[models]]
name = "llama-3.3-70b"
traffic_share = 0.1
node_share = 0.1
size_factor = 5
price_factor = 6

[nodes]
count = {nodes}
price_out = {{ dist = "lognormal", median = 150, sigma = 0.4 }}
rtt_ms = {{ dist = "lognormal", median = 40, sigma = 0.6, max = 400 }}
relayed_share = 0.1
failure_rate = 0.005
timeout_rate = 0.001

[nodes.churn]
leave_share = 0.1
join_share = 0.1

[[nodes.hardware]]
name = "rtx-4090"
share = 0.6
decode_tokens_per_s = 60
prefill_tokens_per_s = 3000
max_concurrency = 4

[[nodes.hardware]]
name = "h100"
share = 0.4
decode_tokens_per_s = 110
prefill_tokens_per_s = 10000
max_concurrency = 16

[[nodes.adversaries]]
kind = "garbage"
share = 0.05
price_factor = 0.7

[traffic]
rate_per_s = {rate}
builders = 200
prompt_tokens = {{ dist = "lognormal", median = 400, sigma = 0.8, max = 8000 }}
output_tokens = {{ dist = "lognormal", median = 150, sigma = 0.7, max = 1024 }}
margin_bps = {{ dist = "choice", values = [0, 500, 1000] }}

[operator]
spot_check_rate = 0.02
"#
    );
    Scenario::parse(&src, &[])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const SRC: &str = r#"
name = "t"
requests = 10

[[models]]
name = "a"
traffic_share = 1
node_share = 1

[[models]]
name = "b"
traffic_share = 1
node_share = -1

[nodes]
count = 10
price_out = 100
rtt_ms = 20

[[nodes.hardware]]
name = "gpu"
share = 1
decode_tokens_per_s = 50
prefill_tokens_per_s = 1000
max_concurrency = 4

[traffic]
rate_per_s = 10
builders = 2
prompt_tokens = 100
output_tokens = 100

[operator]
spot_check_rate = 0.5
"#;

    #[test]
    fn semantic_errors_name_key_and_line() {
        let e = Scenario::parse(SRC, &[]).unwrap_err().to_string();
        assert!(e.contains("models[1].node_share"), "{e}");
        assert!(e.contains("line 13"), "{e}");
    }

    #[test]
    fn unknown_keys_name_key_and_line() {
        let src = SRC.replace("rate_per_s = 10", "rate_per_s = 10\nrate = 3");
        let e = Scenario::parse(&src, &[]).unwrap_err().to_string();
        assert!(e.contains("rate"), "{e}");
        assert!(e.contains("line 29"), "{e}");
    }

    #[test]
    fn sets_override_and_fix_values() {
        let s = Scenario::parse(
            SRC,
            &[
                "models[1].node_share=2".into(),
                "operator.network_fee_bps=300".into(),
                "operator.weights.price=2.5".into(),
            ],
        )
        .unwrap();
        assert_eq!(s.operator.network_fee_bps, 300);
        assert_eq!(s.operator.weights().price, 2.5);
        assert_eq!(s.operator.spot_check_rate, 0.5);
        let e = Scenario::parse(SRC, &["operator.nope=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn locate_finds_nested_and_array_keys() {
        assert_eq!(locate(SRC, "nodes.hardware[0].max_concurrency"), Some(25));
        assert_eq!(locate(SRC, "operator.spot_check_rate"), Some(34));
        assert_eq!(locate(SRC, "nodes.count"), Some(16));
        assert_eq!(locate(SRC, "operator.network_fee_bps"), None);
    }
}
