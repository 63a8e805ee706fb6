//! One routing decision: filter the live candidates for a model by the
//! request's hard constraints, rank the rest, return an ordered fallback list.
//!
//! # Filter
//!
//! In this order (the order only matters for naming the constraint that
//! emptied the list in `NoCandidate`): `only`, `ignore`, private pool,
//! context length, weights hash, quantization, region, max prices, trust
//! (`max(trust_floor, min_trust)`), breaker (`Admit::No`), capacity
//! (`max(queue_depth, in_flight) < max_concurrency * max_queue_factor`), and,
//! with `allow_fallbacks = false` and a non-empty `order`, "only the `order`
//! nodes".
//!
//! # Rank
//!
//! Each survivor gets three numbers: the expected price of this request
//! (`input_tokens * price_in + max_output_tokens * price_out`, integer
//! nano-USD), a predicted completion time (RTT + queue wait + time to first
//! token + `max_output_tokens / tokens_per_sec`, observed values preferred to
//! advertised ones), and its trust. The score (lower is better) is
//!
//! ```text
//! w.price * price / best_price + w.latency * time / best_time + w.trust * (1 - trust)
//! ```
//!
//! i.e. each of price and time as a multiple of the best survivor's, so the
//! weights mean the same thing whatever the model's price level or size.
//!
//! The list is then: the `order` nodes that survived, in that order; for an
//! app with a private pool that may spill, the pool's nodes; then the rest.
//! Within a group nodes go by `sort`'s key if one is given, then by score,
//! then by node key (so the order is total and deterministic).
//!
//! The *first* slot (unless an `order` node takes it) is not simply the best
//! node, or every coordinator would stampede the single cheapest one:
//! - without `sort`, it is drawn by power-of-two-choices among the best few
//!   (`p2c_top_k`, within `p2c_slack` of the best score): two random ones,
//!   and the one with the lower peak-EWMA load cost (`first-token time * (1 +
//!   load / max_concurrency)`) wins, so load spreads over near-equivalent
//!   nodes and moves away from one the moment its peak latency rises;
//! - nodes on probation may take it only with probability `probation_share`
//!   (when a non-probation node is available), so new nodes get some traffic
//!   to prove themselves but never more than that share of first picks.
//!
//! With `sort`, load balancing is off (as on OpenRouter): the first slot is
//! the best by that key, still subject to the probation cap.
//!
//! An `order` node in the first slot is the builder's explicit choice: the
//! probation cap and load balancing do not override it.
//!
//! # Cost
//!
//! One pass over the candidates and one over the survivors; no allocation
//! per candidate, no sort of the whole set (the best few per group are kept
//! in small sorted buffers, and most survivors cost one float comparison
//! there). The scan reads each candidate as plain numbers (`Facts`): without
//! key filters it has no data-dependent branch; speeds and concurrency are
//! stored as inverses so it does not divide. `route` builds those numbers
//! from the caller's `Offer`s and `Observed`s on every call (memory-bound at
//! 10,000+ nodes); `route_table` reads them from a `CandidateTable` the caller
//! keeps up to date, and only from the blocks of rows whose lower bounds
//! (price, first-token time, seconds per token, completion time, trust term;
//! see `index`) show they can hold the smallest price, the smallest time or
//! one of the best few (`route_indexed`): the same list as the full scan,
//! bit for bit, for a fraction of the reads. See `benches/route.rs`.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::breaker::Admit;
use crate::candidate::{NodeKey, Observed, Offer};
use crate::index::{BLOCK, HUGE_INV_TPS, LADDER, Summary};
use crate::table::CandidateTable;

/// A key that, when given, decides the order before the score (OpenRouter's
/// `provider.sort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sort {
    /// Lowest expected price of this request first.
    Price,
    /// Lowest predicted time to first token first (RTT + queue + TTFT).
    Latency,
    /// Highest predicted per-request decode speed first.
    Throughput,
}

/// An app's own nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivatePool {
    pub nodes: Vec<NodeKey>,
    /// The data must stay on these nodes: no public node, ever.
    pub sensitive: bool,
    /// For non-sensitive requests: public nodes may serve when the pool
    /// cannot (they come after every usable pool node). `false`: pool only.
    pub spill_to_public: bool,
}

/// Per-request routing preferences: OpenRouter's `provider` object plus the
/// app's routing rules (the private pool).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Preferences {
    pub sort: Option<Sort>,
    /// Try these nodes first, in this order (those that pass the filters).
    pub order: Vec<NodeKey>,
    /// If non-empty, only these nodes.
    pub only: Vec<NodeKey>,
    /// Never these nodes.
    pub ignore: Vec<NodeKey>,
    /// `false`: return only the first choice, or only the `order` nodes if
    /// `order` is given (OpenRouter's meaning: no nodes beyond the ones
    /// asked for). Default `true`.
    pub allow_fallbacks: bool,
    /// Highest acceptable nano-USD per prompt token.
    pub max_price_in: Option<u64>,
    /// Highest acceptable nano-USD per completion token.
    pub max_price_out: Option<u64>,
    /// Lowest acceptable trust score; only ever raises `trust_floor`.
    pub min_trust: Option<f64>,
    /// Only nodes in this region (ASCII case-insensitive).
    pub region: Option<String>,
    /// If non-empty, only nodes whose quantization is one of these (ASCII
    /// case-insensitive); a node with unknown quantization never matches.
    pub quantizations: Vec<String>,
    /// Only nodes serving exactly these weights.
    pub weights_sha256: Option<[u8; 32]>,
    /// Only nodes whose offer has every one of these capabilities
    /// (`sharenet_proto::Capabilities::bits`: tools, structured outputs;
    /// and [`NO_PROMPT_RETENTION`]); 0 asks for none.
    pub capabilities: u32,
    /// If non-empty, only models under one of these licenses (ASCII
    /// case-insensitive); a model with no stated license never matches.
    pub licenses: Vec<String>,
    pub private_pool: Option<PrivatePool>,
}

impl Default for Preferences {
    fn default() -> Self {
        Self {
            sort: None,
            order: Vec::new(),
            only: Vec::new(),
            ignore: Vec::new(),
            allow_fallbacks: true,
            max_price_in: None,
            max_price_out: None,
            min_trust: None,
            region: None,
            quantizations: Vec::new(),
            weights_sha256: None,
            capabilities: 0,
            licenses: Vec::new(),
            private_pool: None,
        }
    }
}

/// What is being routed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Prompt tokens (an estimate is fine: it only ranks and checks context).
    pub input_tokens: u32,
    /// The request's `max_tokens`: the worst case it may cost and take.
    pub max_output_tokens: u32,
    pub prefs: Preferences,
}

/// How much price, latency and trust count in the score. Negative or
/// non-finite weights count as 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Weights {
    /// Default 1: a node twice the best price adds 1 to the score.
    pub price: f64,
    /// Default 0.5: time matters, but half as much as money (builders pay
    /// for every token, they wait only for slow ones).
    pub latency: f64,
    /// Default 1: each 0.1 of trust is worth 10% of the best price.
    pub trust: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            price: 1.0,
            latency: 0.5,
            trust: 1.0,
        }
    }
}

/// Network-wide routing knobs (not per request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteParams {
    /// Most first picks that may go to nodes on probation. Default 0.1.
    pub probation_share: f64,
    /// Nodes below this trust never get traffic. Default 0.5 (one failed spot
    /// check puts a node under it, see `TrustParams`).
    pub trust_floor: f64,
    /// Length of the fallback list. Default 8. At least 1 is returned.
    pub max_candidates: usize,
    /// A node is full when `max(queue_depth, in_flight)` reaches
    /// `max_concurrency * max_queue_factor`. Default 1: no waiting at a node
    /// while another has a free slot (chosen with the simulator: against 2,
    /// time-to-first-token p95 falls from 2.7 s to 0.47 s in the baseline
    /// scenario at the same cost; see BENCHMARKS.md).
    pub max_queue_factor: u32,
    /// When every node is full at `max_queue_factor`, the decision is made
    /// again with this factor instead, so a burst waits in the nodes' own
    /// queues rather than failing. Default 5. At most `max_queue_factor`
    /// turns it off.
    pub spill_queue_factor: u32,
    /// Power-of-two-choices draws among at most this many best nodes.
    /// Default 4.
    pub p2c_top_k: usize,
    /// ... and only among those whose score is within this fraction of the
    /// best. Default 0.2: a node 50% dearer is not "near-equivalent".
    pub p2c_slack: f64,
    /// RTT assumed for a node never pinged (doubled when relayed), ms.
    /// Default 100.
    pub unknown_rtt_ms: f64,
    /// Time to first token assumed for a node never measured, ms. Default
    /// 500: pessimistic enough not to prefer the unknown, not so much that
    /// new nodes never win.
    pub unknown_ttft_ms: f64,
    /// Per-request decode speed assumed when neither measured nor
    /// advertised, tokens/s. Default 20.
    pub unknown_tokens_per_sec: f64,
    /// Size of a job already in a node's queue, in output tokens, to turn
    /// queue depth into waiting time. Default 256.
    pub typical_job_tokens: u32,
}

impl Default for RouteParams {
    fn default() -> Self {
        Self {
            probation_share: 0.1,
            trust_floor: 0.5,
            max_candidates: 8,
            max_queue_factor: 1,
            spill_queue_factor: 5,
            p2c_top_k: 4,
            p2c_slack: 0.2,
            unknown_rtt_ms: 100.0,
            unknown_ttft_ms: 500.0,
            unknown_tokens_per_sec: 20.0,
            typical_job_tokens: 256,
        }
    }
}

/// One node serving the requested model, with everything time-dependent
/// already evaluated at the decision's `now_ms` by the caller: `trust` from
/// `Trust::score`, `probation` from `Trust::is_probation`, `breaker` from
/// `Breaker::allow`, and `observed` decayed with `Observed::decay` (see
/// `NodeHealth::candidate`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Candidate<'a> {
    pub offer: &'a Offer,
    pub observed: &'a Observed,
    pub trust: f64,
    pub probation: bool,
    pub breaker: Admit,
}

/// A constraint of the routing filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    Only,
    Ignore,
    PrivatePool,
    ContextLength,
    WeightsSha256,
    Quantization,
    Region,
    /// The request needs tools, structured outputs, or a node that keeps
    /// no prompts.
    Capabilities,
    /// `licenses`.
    License,
    MaxPriceIn,
    MaxPriceOut,
    /// The network's `RouteParams::trust_floor`.
    TrustFloor,
    /// The request's `min_trust` (when above the floor).
    MinTrust,
    /// Open circuit breaker.
    Breaker,
    /// Queue full.
    Capacity,
    /// `allow_fallbacks = false` with `order`: only the `order` nodes.
    Order,
}

impl Filter {
    /// The name used in messages (the preference's field name where there is
    /// one).
    pub fn name(self) -> &'static str {
        match self {
            Filter::Only => "only",
            Filter::Ignore => "ignore",
            Filter::PrivatePool => "private_pool",
            Filter::ContextLength => "context_length",
            Filter::WeightsSha256 => "weights_sha256",
            Filter::Quantization => "quantizations",
            Filter::Region => "region",
            Filter::Capabilities => "capabilities",
            Filter::License => "licenses",
            Filter::MaxPriceIn => "max_price_in",
            Filter::MaxPriceOut => "max_price_out",
            Filter::TrustFloor => "trust_floor",
            Filter::MinTrust => "min_trust",
            Filter::Breaker => "circuit_breaker",
            Filter::Capacity => "capacity",
            Filter::Order => "order with allow_fallbacks=false",
        }
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn nodes_word(n: &usize) -> &'static str {
    if *n == 1 { "node" } else { "nodes" }
}

/// Why no node can serve the request, precise enough to tell the builder
/// which constraint to relax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum NoCandidate {
    /// No live node serves the model at all.
    #[error("no live node serves this model")]
    NoNodes,
    /// `filter` removed the last `before` nodes (those that passed every
    /// filter before it).
    #[error(
        "no node left after {filter} ({before} {} before it)",
        nodes_word(before)
    )]
    Filtered { filter: Filter, before: usize },
}

/// The filter stages in evaluation order; index = stage number. `Trust` is
/// named per request (floor or `min_trust`).
const STAGES: [Filter; 15] = [
    Filter::Only,
    Filter::Ignore,
    Filter::PrivatePool,
    Filter::ContextLength,
    Filter::WeightsSha256,
    Filter::Quantization,
    Filter::Region,
    Filter::Capabilities,
    Filter::License,
    Filter::MaxPriceIn,
    Filter::MaxPriceOut,
    Filter::TrustFloor,
    Filter::Breaker,
    Filter::Capacity,
    Filter::Order,
];
const S_ONLY: u8 = 0;
const S_IGNORE: u8 = 1;
const S_POOL: u8 = 2;
const S_CONTEXT: u8 = 3;
const S_WEIGHTS: u8 = 4;
const S_QUANT: u8 = 5;
const S_REGION: u8 = 6;
const S_CAPS: u8 = 7;
const S_LICENSE: u8 = 8;
const S_PRICE_IN: u8 = 9;
const S_PRICE_OUT: u8 = 10;
const S_TRUST: u8 = 11;
const S_BREAKER: u8 = 12;
const S_CAPACITY: u8 = 13;
const S_ORDER: u8 = 14;

/// A sorted set of node keys (binary search: `only` lists can be long).
struct KeySet(Vec<NodeKey>);

impl KeySet {
    fn new(keys: &[NodeKey]) -> Self {
        let mut v = keys.to_vec();
        v.sort_unstable();
        v.dedup();
        Self(v)
    }
    fn contains(&self, k: &NodeKey) -> bool {
        self.0.binary_search(k).is_ok()
    }
}

/// Sentinel for "not in `order`".
const NOT_ORDERED: u32 = u32::MAX;

/// `if c { a } else { b }` without a branch (bit masks), whatever the
/// values (NaN included).
#[inline(always)]
fn select(c: bool, a: f64, b: f64) -> f64 {
    let mask = 0u64.wrapping_sub(u64::from(c));
    f64::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
}

fn finite_or(x: f64, default: f64) -> f64 {
    if x.is_finite() { x } else { default }
}

fn weight(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

fn positive(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite() && *v > 0.0)
}

fn non_negative(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite() && *v >= 0.0)
}

/// What the router reads about one candidate apart from its key and labels,
/// flattened into plain numbers: the hot loop is the same code whether it
/// reads `Candidate`s (pointers into the caller's structures) or a
/// `CandidateTable` (these, stored compactly). Speeds and concurrency are
/// stored as inverses so a decision divides nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts {
    pub(crate) price_in: u64,
    pub(crate) price_out: u64,
    pub(crate) trust: f64,
    /// Measured RTT; NaN when unknown.
    pub(crate) rtt_ms: f64,
    /// Peak-EWMA TTFT, else the EWMA; NaN when unknown.
    pub(crate) ttft_ms: f64,
    /// 1 / measured per-request decode speed; NaN when unknown.
    pub(crate) inv_tps: f64,
    /// 1 / advertised aggregate decode speed; NaN when unknown.
    pub(crate) inv_advertised_tps: f64,
    /// 1 / max(max_concurrency, 1).
    pub(crate) inv_concurrency: f64,
    pub(crate) context_length: u32,
    pub(crate) max_concurrency: u32,
    pub(crate) queue_depth: u32,
    pub(crate) in_flight: u32,
    pub(crate) probation: bool,
    pub(crate) relayed: bool,
    pub(crate) admit: Admit,
}

impl Facts {
    /// Stands in for an out-of-range index (which never happens): passes no
    /// filter.
    pub(crate) const NEVER: Facts = Facts {
        price_in: u64::MAX,
        price_out: u64::MAX,
        trust: f64::NAN,
        rtt_ms: f64::NAN,
        ttft_ms: f64::NAN,
        inv_tps: f64::NAN,
        inv_advertised_tps: f64::NAN,
        inv_concurrency: 1.0,
        context_length: 0,
        max_concurrency: 0,
        queue_depth: 0,
        in_flight: 0,
        probation: false,
        relayed: false,
        admit: Admit::No,
    };

    #[inline]
    pub(crate) fn of(c: &Candidate<'_>) -> Self {
        Self::with_state(c.offer, c.observed, c.trust, c.probation, c.breaker)
    }

    #[inline]
    pub(crate) fn with_state(
        o: &Offer,
        ob: &Observed,
        trust: f64,
        probation: bool,
        admit: Admit,
    ) -> Self {
        let mut f = Self {
            price_in: o.price_in,
            price_out: o.price_out,
            context_length: o.context_length,
            max_concurrency: o.max_concurrency,
            queue_depth: o.queue_depth,
            inv_advertised_tps: match o.advertised_tokens_per_sec {
                Some(t) if t > 0 => 1.0 / f64::from(t),
                _ => f64::NAN,
            },
            inv_concurrency: 1.0 / f64::from(o.max_concurrency.max(1)),
            relayed: o.relayed,
            ..Self::NEVER
        };
        f.set_state(ob, trust, probation, admit);
        f
    }

    /// Replaces what changes between adverts.
    #[inline]
    pub(crate) fn set_state(&mut self, ob: &Observed, trust: f64, probation: bool, admit: Admit) {
        self.trust = trust;
        self.rtt_ms = non_negative(ob.rtt_ms).unwrap_or(f64::NAN);
        self.ttft_ms = non_negative(ob.ttft_peak_ms)
            .or(non_negative(ob.ttft_ewma_ms))
            .unwrap_or(f64::NAN);
        self.inv_tps = positive(ob.tokens_per_sec_ewma).map_or(f64::NAN, |t| 1.0 / t);
        self.in_flight = ob.in_flight;
        self.probation = probation;
        self.admit = admit;
    }

    /// Jobs on the node: our own in-flight jobs are a lower bound on its real
    /// queue; the advert's depth is stale but includes other coordinators'.
    #[inline]
    fn load(&self) -> u32 {
        self.queue_depth.max(self.in_flight)
    }
}

/// Where `route_core` reads candidates from.
pub(crate) trait Source {
    /// The request's label filters (weights hash, quantizations, region) in
    /// the form this source compares fastest.
    type Labels;
    fn count(&self) -> usize;
    fn facts(&self, i: usize) -> Facts;
    /// The facts as one contiguous slice, when the source stores them so
    /// (the scan then reads them in place).
    fn facts_slice(&self) -> Option<&[Facts]> {
        None
    }
    fn key(&self, i: usize) -> &NodeKey;
    fn labels(&self, prefs: &Preferences) -> Self::Labels;
    fn weights_ok(&self, i: usize, l: &Self::Labels) -> bool;
    fn quantization_ok(&self, i: usize, l: &Self::Labels) -> bool;
    fn region_ok(&self, i: usize, l: &Self::Labels) -> bool;
    /// Whether candidate `i` has every capability in `need`.
    fn caps_ok(&self, i: usize, need: u32) -> bool;
    fn license_ok(&self, i: usize, l: &Self::Labels) -> bool;
}

/// The request's label filters, for `Candidate`s (string comparisons).
pub(crate) struct SliceLabels {
    weights: Option<[u8; 32]>,
    quantizations: Vec<String>,
    region: Option<String>,
    licenses: Vec<String>,
}

impl Source for [Candidate<'_>] {
    type Labels = SliceLabels;
    fn count(&self) -> usize {
        self.len()
    }
    #[inline]
    fn facts(&self, i: usize) -> Facts {
        self.get(i).map_or(Facts::NEVER, Facts::of)
    }
    #[inline]
    fn key(&self, i: usize) -> &NodeKey {
        self.get(i).map_or(&[0; 32], |c| &c.offer.node)
    }
    fn labels(&self, prefs: &Preferences) -> SliceLabels {
        SliceLabels {
            weights: prefs.weights_sha256,
            quantizations: prefs.quantizations.clone(),
            region: prefs.region.clone(),
            licenses: prefs.licenses.clone(),
        }
    }
    fn weights_ok(&self, i: usize, l: &SliceLabels) -> bool {
        l.weights.is_none()
            || self
                .get(i)
                .is_some_and(|c| c.offer.weights_sha256 == l.weights)
    }
    fn quantization_ok(&self, i: usize, l: &SliceLabels) -> bool {
        l.quantizations.is_empty()
            || self
                .get(i)
                .and_then(|c| c.offer.quantization.as_deref())
                .is_some_and(|q| l.quantizations.iter().any(|w| w.eq_ignore_ascii_case(q)))
    }
    fn region_ok(&self, i: usize, l: &SliceLabels) -> bool {
        l.region.as_deref().is_none_or(|want| {
            self.get(i)
                .and_then(|c| c.offer.region.as_deref())
                .is_some_and(|r| r.eq_ignore_ascii_case(want))
        })
    }
    fn caps_ok(&self, i: usize, need: u32) -> bool {
        self.get(i)
            .is_some_and(|c| c.offer.capabilities & need == need)
    }
    fn license_ok(&self, i: usize, l: &SliceLabels) -> bool {
        l.licenses.is_empty()
            || self
                .get(i)
                .and_then(|c| c.offer.license.as_deref())
                .is_some_and(|x| l.licenses.iter().any(|w| w.eq_ignore_ascii_case(x)))
    }
}

/// Everything about the request that is the same for every candidate.
struct Ctx {
    only: Option<KeySet>,
    ignore: Option<KeySet>,
    pool: Option<KeySet>,
    /// Non-pool nodes are filtered out.
    pool_only: bool,
    /// Pool nodes go before public ones.
    prefer_pool: bool,
    /// `order` keys with their first position, sorted by key.
    order: Vec<(NodeKey, u32)>,
    order_only: bool,
    weights_filter: bool,
    quantization_filter: bool,
    region_filter: bool,
    /// Capability bits the request needs (0: none).
    caps: u32,
    license_filter: bool,
    /// Some key or label filter is on.
    any_optional: bool,
    needed_context: u64,
    max_price_in: u64,
    max_price_out: u64,
    trust_min: f64,
    trust_filter: Filter,
    queue_factor: u64,
    input_tokens: u32,
    max_out: u32,
    unknown_rtt_ms: f64,
    unknown_ttft_ms: f64,
    inv_unknown_tps: f64,
    typical_job_ms_x_tps: f64,
    gen_ms_x_tps: f64,
    sort: Option<Sort>,
    trust_weight: f64,
    /// The candidate key is needed in the scan (key filters, `order`, pool
    /// preference).
    keyed: bool,
}

impl Ctx {
    fn new(req: &Request, params: &RouteParams, weights: &Weights) -> Self {
        let prefs = &req.prefs;
        let set = |keys: &[NodeKey]| (!keys.is_empty()).then(|| KeySet::new(keys));
        let (pool, pool_only, prefer_pool) = match &prefs.private_pool {
            None => (None, false, false),
            Some(p) => {
                let only = p.sensitive || !p.spill_to_public;
                (Some(KeySet::new(&p.nodes)), only, !only)
            }
        };
        let mut order: Vec<(NodeKey, u32)> = prefs
            .order
            .iter()
            .enumerate()
            .map(|(i, k)| (*k, u32::try_from(i).unwrap_or(NOT_ORDERED - 1)))
            .collect();
        // Sort by key then position, keep each key's first position.
        order.sort_unstable();
        order.dedup_by(|later, first| later.0 == first.0);
        let floor = finite_or(params.trust_floor, 0.5);
        let (trust_min, trust_filter) = match prefs.min_trust.filter(|t| t.is_finite()) {
            Some(t) if t > floor => (t, Filter::MinTrust),
            _ => (floor, Filter::TrustFloor),
        };
        let order_only = !prefs.allow_fallbacks && !order.is_empty();
        let weights_filter = prefs.weights_sha256.is_some();
        let quantization_filter = !prefs.quantizations.is_empty();
        let region_filter = prefs.region.is_some();
        Self {
            only: set(&prefs.only),
            ignore: set(&prefs.ignore),
            any_optional: !prefs.only.is_empty()
                || !prefs.ignore.is_empty()
                || pool_only
                || weights_filter
                || quantization_filter
                || region_filter
                || prefs.capabilities != 0
                || !prefs.licenses.is_empty()
                || order_only,
            caps: prefs.capabilities,
            license_filter: !prefs.licenses.is_empty(),
            pool,
            pool_only,
            prefer_pool,
            order_only,
            order,
            weights_filter,
            quantization_filter,
            region_filter,
            needed_context: u64::from(req.input_tokens) + u64::from(req.max_output_tokens),
            max_price_in: prefs.max_price_in.unwrap_or(u64::MAX),
            max_price_out: prefs.max_price_out.unwrap_or(u64::MAX),
            trust_min,
            trust_filter,
            queue_factor: u64::from(params.max_queue_factor),
            input_tokens: req.input_tokens,
            max_out: req.max_output_tokens,
            unknown_rtt_ms: non_negative(Some(params.unknown_rtt_ms)).unwrap_or(0.0),
            unknown_ttft_ms: non_negative(Some(params.unknown_ttft_ms)).unwrap_or(0.0),
            inv_unknown_tps: 1.0 / positive(Some(params.unknown_tokens_per_sec)).unwrap_or(1.0),
            typical_job_ms_x_tps: f64::from(params.typical_job_tokens) * 1000.0,
            gen_ms_x_tps: f64::from(req.max_output_tokens) * 1000.0,
            sort: prefs.sort,
            trust_weight: weight(weights.trust),
            keyed: !prefs.only.is_empty()
                || !prefs.ignore.is_empty()
                || prefs.private_pool.is_some()
                || weights_filter
                || quantization_filter
                || region_filter
                || prefs.capabilities != 0
                || !prefs.licenses.is_empty()
                || !prefs.order.is_empty(),
        }
    }

    #[inline]
    fn order_pos(&self, k: &NodeKey) -> u32 {
        if self.order.is_empty() {
            return NOT_ORDERED;
        }
        match self.order.binary_search_by(|(key, _)| key.cmp(k)) {
            Ok(i) => self.order.get(i).map_or(NOT_ORDERED, |(_, p)| *p),
            Err(_) => NOT_ORDERED,
        }
    }

    #[inline]
    fn in_pool(&self, k: &NodeKey) -> bool {
        self.pool.as_ref().is_some_and(|s| s.contains(k))
    }

    /// The filters on plain numbers, evaluated without short-circuit (`&`,
    /// not `&&`): a candidate costs one hard-to-predict branch, not one per
    /// filter.
    #[inline]
    fn numeric_ok(&self, f: &Facts) -> bool {
        (u64::from(f.context_length) >= self.needed_context)
            & (f.price_in <= self.max_price_in)
            & (f.price_out <= self.max_price_out)
            // A NaN trust is incomparable, and fails.
            & (f.trust >= self.trust_min)
            & (f.admit != Admit::No)
            & (u64::from(f.load()) < u64::from(f.max_concurrency) * self.queue_factor)
    }

    /// The filters that are off unless the request sets them (behind one
    /// per-request flag, which predicts perfectly).
    fn optional_ok<S: Source + ?Sized>(&self, src: &S, i: usize, l: &S::Labels) -> bool {
        let k = src.key(i);
        self.only.as_ref().is_none_or(|s| s.contains(k))
            && self.ignore.as_ref().is_none_or(|s| !s.contains(k))
            && (!self.pool_only || self.in_pool(k))
            && (!self.weights_filter || src.weights_ok(i, l))
            && (!self.quantization_filter || src.quantization_ok(i, l))
            && (!self.region_filter || src.region_ok(i, l))
            && (self.caps == 0 || src.caps_ok(i, self.caps))
            && (!self.license_filter || src.license_ok(i, l))
            && (!self.order_only || self.order_pos(k) != NOT_ORDERED)
    }

    /// The first filter stage candidate `i` fails (in `STAGES` order), if
    /// any: the same predicate as `numeric_ok && optional_ok`, stage by stage.
    /// Only used once the fast path found no survivor, to name the culprit.
    fn first_failure<S: Source + ?Sized>(&self, src: &S, i: usize, l: &S::Labels) -> Option<u8> {
        let f = src.facts(i);
        let k = src.key(i);
        let checks: [(u8, bool); 15] = [
            (S_ONLY, self.only.as_ref().is_none_or(|s| s.contains(k))),
            (
                S_IGNORE,
                self.ignore.as_ref().is_none_or(|s| !s.contains(k)),
            ),
            (S_POOL, !self.pool_only || self.in_pool(k)),
            (
                S_CONTEXT,
                u64::from(f.context_length) >= self.needed_context,
            ),
            (S_WEIGHTS, !self.weights_filter || src.weights_ok(i, l)),
            (
                S_QUANT,
                !self.quantization_filter || src.quantization_ok(i, l),
            ),
            (S_REGION, !self.region_filter || src.region_ok(i, l)),
            (S_CAPS, self.caps == 0 || src.caps_ok(i, self.caps)),
            (S_LICENSE, !self.license_filter || src.license_ok(i, l)),
            (S_PRICE_IN, f.price_in <= self.max_price_in),
            (S_PRICE_OUT, f.price_out <= self.max_price_out),
            (S_TRUST, f.trust >= self.trust_min),
            (S_BREAKER, f.admit != Admit::No),
            (
                S_CAPACITY,
                u64::from(f.load()) < u64::from(f.max_concurrency) * self.queue_factor,
            ),
            (
                S_ORDER,
                !self.order_only || self.order_pos(k) != NOT_ORDERED,
            ),
        ];
        checks.iter().find(|(_, ok)| !ok).map(|(s, _)| *s)
    }

    /// Predictions for a candidate. Only meaningful if it passed the
    /// filters (`max_concurrency >= 1` then, by the capacity filter), but
    /// safe to compute for any: the unkeyed scan computes it for every
    /// candidate and keeps it or not without a branch.
    #[inline]
    fn predict(&self, f: &Facts, idx: usize) -> Scored {
        let load = f.load();
        let conc = f.max_concurrency.max(1);
        let load_f = f64::from(load);
        // Measured speed first; else the advert's, which is the node's
        // aggregate: one request gets its share among the sequences that will
        // be running with it.
        // Known-or-default choices are `select`s, not branches: which nodes
        // have measurements is random from the CPU's point of view, and a
        // mispredicted branch per candidate costs more than the arithmetic.
        let active = (load_f + 1.0).min(f64::from(conc));
        let inv_tps = select(
            f.inv_tps > 0.0,
            f.inv_tps,
            select(
                f.inv_advertised_tps > 0.0,
                active * f.inv_advertised_tps,
                self.inv_unknown_tps,
            ),
        );
        let rtt = select(
            f.rtt_ms >= 0.0,
            f.rtt_ms,
            select(f.relayed, 2.0 * self.unknown_rtt_ms, self.unknown_rtt_ms),
        );
        let ttft = select(f.ttft_ms >= 0.0, f.ttft_ms, self.unknown_ttft_ms);
        // Jobs that must finish before ours starts, each a typical job
        // spread over `conc` slots.
        let waiting = f64::from(load.saturating_add(1).saturating_sub(conc));
        let queue_ms = waiting * f.inv_concurrency * self.typical_job_ms_x_tps * inv_tps;
        let first_token_ms = rtt + queue_ms + ttft;
        let total_ms = first_token_ms + self.gen_ms_x_tps * inv_tps;
        let price = u64::from(self.input_tokens)
            .saturating_mul(f.price_in)
            .saturating_add(u64::from(self.max_out).saturating_mul(f.price_out));
        let aux = match self.sort {
            // Power-of-two-choices' peak-EWMA load cost.
            None => first_token_ms * (1.0 + load_f * f.inv_concurrency),
            Some(Sort::Price) => 0.0,
            Some(Sort::Latency) => first_token_ms,
            // Fastest first = smallest time per token first.
            Some(Sort::Throughput) => inv_tps,
        };
        Scored {
            idx: u32::try_from(idx).unwrap_or(u32::MAX),
            order_pos: NOT_ORDERED,
            price,
            total_ms,
            trust_term: self.trust_weight * (1.0 - f.trust.min(1.0)),
            aux,
            score: 0.0,
            probation: f.probation,
            pool: false,
        }
    }

    /// What `predict` leaves out because it needs the node key.
    #[inline]
    fn place(&self, s: &mut Scored, key: &NodeKey) {
        s.order_pos = self.order_pos(key);
        s.pool = self.prefer_pool && self.in_pool(key);
    }
}

/// A survivor of the filter, with its predictions.
#[derive(Debug, Clone, Copy)]
struct Scored {
    /// Index into the source.
    idx: u32,
    order_pos: u32,
    price: u64,
    total_ms: f64,
    /// `w.trust * (1 - trust)`.
    trust_term: f64,
    /// Without `sort`: the power-of-two-choices load cost, first-token time
    /// times (1 + load / max_concurrency); with `sort = latency`: first-token
    /// time; with `sort = throughput`: seconds per token.
    aux: f64,
    score: f64,
    probation: bool,
    pool: bool,
}

/// The best `k` survivors seen so far, best first (indices into the
/// survivors, with their quick keys). With a small `k` (the usual fallback
/// list) a new survivor usually costs one float comparison against the
/// current k-th: the quick key is the first component of the full order, so
/// a strictly larger quick key is strictly worse. A large `k` (a caller asking
/// for hundreds of fallbacks) would make insertion quadratic, so then
/// everything is kept and selected once at the end instead.
struct TopK {
    k: usize,
    small: bool,
    items: Vec<(usize, f64)>,
    /// Quick key of the current k-th (infinite until full).
    worst: f64,
}

/// Above this `k`, `TopK` selects at the end instead of inserting.
const SMALL_K: usize = 32;

impl TopK {
    fn new(k: usize) -> Self {
        let small = k <= SMALL_K;
        Self {
            k,
            small,
            items: Vec::with_capacity(if small { k + 1 } else { 0 }),
            worst: f64::INFINITY,
        }
    }

    /// Considers survivor `i`: the common case (worse than the k-th) is one
    /// inlined comparison; the rest is out of line.
    #[inline(always)]
    fn offer(&mut self, i: usize, quick: f64, cmp: impl Fn(usize, usize) -> Ordering) {
        if quick > self.worst {
            return;
        }
        self.push(i, quick, cmp);
    }

    #[inline(never)]
    fn push(&mut self, i: usize, quick: f64, cmp: impl Fn(usize, usize) -> Ordering) {
        if !self.small {
            self.items.push((i, quick));
            return;
        }
        if self.items.len() >= self.k {
            match self.items.last() {
                Some(&(last, _)) if cmp(i, last) == Ordering::Less => {
                    self.items.pop();
                }
                _ => return,
            }
        }
        let pos = self
            .items
            .partition_point(|&(j, _)| cmp(j, i) == Ordering::Less);
        self.items.insert(pos, (i, quick));
        if self.items.len() >= self.k {
            self.worst = self.items.last().map_or(f64::INFINITY, |&(_, q)| q);
        }
    }

    /// Puts the items in order (a no-op for a small `k`).
    fn finish(&mut self, cmp: impl Fn(usize, usize) -> Ordering) {
        if self.small {
            return;
        }
        if self.items.len() > self.k && self.k > 0 {
            self.items
                .select_nth_unstable_by(self.k - 1, |&(a, _), &(b, _)| cmp(a, b));
            self.items.truncate(self.k);
        }
        self.items.sort_unstable_by(|&(a, _), &(b, _)| cmp(a, b));
    }

    fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.items.iter().map(|&(i, _)| i)
    }

    fn first(&self) -> Option<usize> {
        self.items.first().map(|&(i, _)| i)
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// One ranking group (pool or public): the best overall, the best among
/// nodes not on probation, and whether it has any node on probation.
struct Group {
    all: TopK,
    trusted: TopK,
    has_probation: bool,
}

impl Group {
    fn new(k: usize, p2c: usize) -> Self {
        Self {
            all: TopK::new(k),
            trusted: TopK::new(p2c),
            has_probation: false,
        }
    }
}

/// Ranks `candidates` for `req`; see the module docs for the rules. Returns
/// node keys, first = try first, at most `params.max_candidates` long (at
/// least one), or the constraint that left no node.
///
/// Deterministic: the same inputs and the same `rng` state give the same
/// list. The `rng` is used for the probation coin and the two P2C draws only.
pub fn route<R: Rng + ?Sized>(
    candidates: &[Candidate<'_>],
    req: &Request,
    weights: &Weights,
    params: &RouteParams,
    rng: &mut R,
) -> Result<Vec<NodeKey>, NoCandidate> {
    with_spill(params, |p| route_core(candidates, req, weights, p, rng))
}

/// Runs `decide` with `params`; if only capacity emptied the list, again
/// with `spill_queue_factor` (see [`RouteParams::spill_queue_factor`]).
pub(crate) fn with_spill(
    params: &RouteParams,
    mut decide: impl FnMut(&RouteParams) -> Result<Vec<NodeKey>, NoCandidate>,
) -> Result<Vec<NodeKey>, NoCandidate> {
    match decide(params) {
        Err(NoCandidate::Filtered {
            filter: Filter::Capacity,
            ..
        }) if params.spill_queue_factor > params.max_queue_factor => decide(&RouteParams {
            max_queue_factor: params.spill_queue_factor,
            ..params.clone()
        }),
        decided => decided,
    }
}

/// The decision itself, over any candidate source.
pub(crate) fn route_core<S: Source + ?Sized, R: Rng + ?Sized>(
    src: &S,
    req: &Request,
    weights: &Weights,
    params: &RouteParams,
    rng: &mut R,
) -> Result<Vec<NodeKey>, NoCandidate> {
    let n = src.count();
    if n == 0 {
        return Err(NoCandidate::NoNodes);
    }
    let ctx = Ctx::new(req, params, weights);
    let labels = src.labels(&req.prefs);

    // Pass 1: filter and predict.
    let mut survivors: Vec<Scored> = Vec::with_capacity(n);
    let (min_price, min_time) = match src.facts_slice() {
        Some(facts) if !ctx.keyed => scan_unkeyed(&ctx, facts.iter().copied(), &mut survivors),
        _ if !ctx.keyed => scan_unkeyed(&ctx, (0..n).map(|i| src.facts(i)), &mut survivors),
        _ => scan_keyed(&ctx, src, &labels, &mut survivors),
    };
    if survivors.is_empty() {
        let mut fails = [0usize; STAGES.len()];
        for idx in 0..n {
            if let Some(f) = ctx
                .first_failure(src, idx, &labels)
                .and_then(|s| fails.get_mut(usize::from(s)))
            {
                *f += 1;
            }
        }
        return Err(emptied_by(&fails, n, ctx.trust_filter));
    }

    rank(
        src, &ctx, survivors, min_price, min_time, false, req, weights, params, rng,
    )
}

/// Lower bounds, for one request, of what any row of one block can score
/// (see `index`): every row that passes the filters has a price, first-token
/// time, seconds per token, completion time and trust term at least these.
/// Each is computed with the same floating-point operations, in the same
/// order, as `Ctx::predict` and `rank` compute a row's, from values no larger
/// than the row's; rounding is monotone, so the bound holds exactly.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    price: u64,
    first_token: f64,
    inv_tps: f64,
    time: f64,
    trust_term: f64,
}

impl Bounds {
    /// `None` when no row of the block can pass the numeric filters.
    fn of(s: &Summary, ctx: &Ctx) -> Option<Bounds> {
        let feasible = u64::from(s.max_context) >= ctx.needed_context
            && s.min_price_in <= ctx.max_price_in
            && s.min_price_out <= ctx.max_price_out
            && s.max_trust >= ctx.trust_min
            && s.admits;
        if !feasible {
            return None;
        }
        let price = u64::from(ctx.input_tokens)
            .saturating_mul(s.min_price_in)
            .saturating_add(u64::from(ctx.max_out).saturating_mul(s.min_price_out));
        // Rows that lack a measurement: field by field, the default where
        // some row lacks it (an unknown RTT is the default, or twice it when
        // relayed: not less).
        let (other_first_token, other_inv_tps, other_time) = if s.any_other {
            let rtt = if s.unknown_rtt {
                s.min_rtt.min(ctx.unknown_rtt_ms)
            } else {
                s.min_rtt
            };
            let ttft = if s.unknown_ttft {
                s.min_ttft.min(ctx.unknown_ttft_ms)
            } else {
                s.min_ttft
            };
            // The advertised speed is shared by at least one sequence.
            let inv_tps = if s.unknown_tps {
                s.min_inv_tps.min(ctx.inv_unknown_tps)
            } else {
                s.min_inv_tps
            };
            // A row's first-token time is (rtt + queue) + ttft, queue >= 0.
            let first_token = rtt + ttft;
            (
                first_token,
                inv_tps,
                first_token + ctx.gen_ms_x_tps * inv_tps,
            )
        } else {
            (f64::INFINITY, f64::INFINITY, f64::INFINITY)
        };
        // Fully measured rows: the best time at the longest ladder length
        // not above this request's (a row's time is increasing in it).
        let rung = LADDER
            .iter()
            .rposition(|&out| out <= ctx.max_out)
            .unwrap_or(0);
        let measured_time = s.measured_time.get(rung).copied().unwrap_or(0.0);
        let measured_first_token = s.measured_time.first().copied().unwrap_or(0.0);
        Some(Bounds {
            price,
            first_token: measured_first_token.min(other_first_token),
            inv_tps: s.measured_inv_tps.min(other_inv_tps),
            time: measured_time.min(other_time),
            trust_term: ctx.trust_weight * (1.0 - s.max_trust.min(1.0)),
        })
    }
}

/// What the block walks of `route_indexed` have read so far.
struct Walk {
    read: Vec<bool>,
    survivors: Vec<Scored>,
    min_price: u64,
    min_time: f64,
}

/// A non-negative float as an integer with the same order (NaN and
/// negatives as 0, i.e. visited first, which is always safe).
fn order_bits(x: f64) -> u64 {
    if x > 0.0 { x.to_bits() } else { 0 }
}

/// Filters and predicts the given rows, as `scan_keyed` does for all.
fn scan_rows<S: Source + ?Sized>(
    ctx: &Ctx,
    src: &S,
    labels: &S::Labels,
    rows: &[u32],
    out: &mut Vec<Scored>,
    min_price: &mut u64,
    min_time: &mut f64,
) {
    for &r in rows {
        let idx = r as usize;
        let f = src.facts(idx);
        if ctx.numeric_ok(&f) && (!ctx.any_optional || ctx.optional_ok(src, idx, labels)) {
            let mut s = ctx.predict(&f, idx);
            ctx.place(&mut s, src.key(idx));
            *min_price = (*min_price).min(s.price);
            *min_time = min_time.min(s.total_ms);
            out.push(s);
        }
    }
}

/// `route_core` over a `CandidateTable` through its block index: the same
/// list, reading only the blocks that can matter (see `index`).
///
/// Three walks over the blocks, each best bound first and each stopping at
/// the first block whose bound cannot improve what it looks for: the
/// smallest price among survivors, the smallest completion time among
/// survivors (the score's normalisers, exact), then the best few by the
/// ranking's order (a block is skipped only when its bound is strictly worse
/// than the current k-th of both the list and the best non-probation
/// nodes, so ties are always read). Rows read by one walk are not read
/// again. Whether any skipped survivor is on probation (it changes the rng
/// draws) is checked on the probation rows alone.
///
/// Falls back to the full scan for `order` and private pools (their
/// placement needs every key), lists longer than `SMALL_K`, defaults that
/// would make a bound non-finite, and when nothing survives (to name the
/// constraint).
pub(crate) fn route_indexed<R: Rng + ?Sized>(
    table: &CandidateTable,
    req: &Request,
    weights: &Weights,
    params: &RouteParams,
    rng: &mut R,
) -> Result<Vec<NodeKey>, NoCandidate> {
    let ix = table.blocks();
    let n = table.count();
    let prefs = &req.prefs;
    let max = params.max_candidates.max(1);
    let p2c_k = params.p2c_top_k.max(1);
    let k_all = max.max(p2c_k);
    if n == 0
        || !prefs.order.is_empty()
        || prefs.private_pool.is_some()
        || k_all > SMALL_K
        || !ix.covers(n)
    {
        return route_core(table, req, weights, params, rng);
    }
    let ctx = Ctx::new(req, params, weights);
    if ctx.inv_unknown_tps.is_nan() || ctx.inv_unknown_tps > HUGE_INV_TPS {
        return route_core(table, req, weights, params, rng);
    }
    let labels = table.labels(prefs);
    let bounds: Vec<Option<Bounds>> = ix.blocks.iter().map(|s| Bounds::of(s, &ctx)).collect();
    let mut w = Walk {
        read: vec![false; bounds.len()],
        survivors: Vec::with_capacity(BLOCK * 8),
        min_price: u64::MAX,
        min_time: f64::INFINITY,
    };
    let scan = |w: &mut Walk, b: usize| -> bool {
        match w.read.get_mut(b) {
            Some(r) if !*r => *r = true,
            _ => return false,
        }
        scan_rows(
            &ctx,
            table,
            &labels,
            ix.rows(b),
            &mut w.survivors,
            &mut w.min_price,
            &mut w.min_time,
        );
        true
    };
    let feasible = || {
        bounds
            .iter()
            .enumerate()
            .filter_map(|(b, x)| x.map(|x| (b, x)))
    };

    // Blocks with rows outside the bounds argument: always read.
    for (b, _) in feasible() {
        if ix.blocks.get(b).is_some_and(|s| s.exotic) {
            scan(&mut w, b);
        }
    }
    // Walk 1: the smallest price.
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> =
        feasible().map(|(b, x)| Reverse((x.price, b))).collect();
    while let Some(Reverse((lb, b))) = heap.pop() {
        if lb >= w.min_price {
            break;
        }
        scan(&mut w, b);
    }
    // Walk 2: the smallest time.
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = feasible()
        .map(|(b, x)| Reverse((order_bits(x.time), b)))
        .collect();
    while let Some(Reverse((_, b))) = heap.pop() {
        let lb = bounds.get(b).copied().flatten().map_or(0.0, |x| x.time);
        if lb >= w.min_time {
            break;
        }
        scan(&mut w, b);
    }
    if w.survivors.is_empty() {
        // Every block that could hold a survivor was read: none. Name the
        // constraint the usual way.
        return route_core(table, req, weights, params, rng);
    }

    // Walk 3: the best few by the ranking's order.
    let (wp, wl) = score_weights(weights, w.min_price, w.min_time);
    let sort = prefs.sort;
    let lb_quick = |x: &Bounds| -> f64 {
        match sort {
            None => wp * x.price as f64 + wl * x.time + x.trust_term,
            Some(Sort::Price) => x.price as f64,
            Some(Sort::Latency) => x.first_token,
            Some(Sort::Throughput) => x.inv_tps,
        }
    };
    let mut all = TopK::new(k_all);
    let mut trusted = TopK::new(p2c_k);
    let offer_from =
        |from: usize, survivors: &mut Vec<Scored>, all: &mut TopK, trusted: &mut TopK| {
            for s in survivors.iter_mut().skip(from) {
                s.score = wp * s.price as f64 + wl * s.total_ms + s.trust_term;
            }
            let survivors = &*survivors;
            let cmp = |i: usize, j: usize| -> Ordering {
                match (survivors.get(i), survivors.get(j)) {
                    (Some(a), Some(b)) => cmp_scored(table, sort, a, b),
                    _ => i.cmp(&j),
                }
            };
            for (i, s) in survivors.iter().enumerate().skip(from) {
                let q = quick_key(sort, s);
                all.offer(i, q, cmp);
                if !s.probation {
                    trusted.offer(i, q, cmp);
                }
            }
            survivors.len()
        };
    let mut offered = offer_from(0, &mut w.survivors, &mut all, &mut trusted);
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = feasible()
        .filter(|(b, _)| !w.read.get(*b).copied().unwrap_or(true))
        .map(|(b, x)| Reverse((order_bits(lb_quick(&x)), b)))
        .collect();
    while let Some(Reverse((_, b))) = heap.pop() {
        let lb = bounds
            .get(b)
            .copied()
            .flatten()
            .map_or(0.0, |x| lb_quick(&x));
        // Strictly worse than both k-ths: no row here can enter either.
        if lb > all.worst && lb > trusted.worst {
            break;
        }
        if scan(&mut w, b) {
            offered = offer_from(offered, &mut w.survivors, &mut all, &mut trusted);
        }
    }

    // A survivor on probation left unread still changes the draws.
    let mut more_probation = false;
    'blocks: for (b, _) in feasible() {
        let Some(s) = ix.blocks.get(b) else { continue };
        if s.probation == 0 || w.read.get(b).copied().unwrap_or(true) {
            continue;
        }
        for (bit, &r) in ix.rows(b).iter().enumerate() {
            let idx = r as usize;
            if s.probation & (1u64 << bit) != 0
                && ctx.numeric_ok(&table.facts(idx))
                && (!ctx.any_optional || ctx.optional_ok(table, idx, &labels))
            {
                more_probation = true;
                break 'blocks;
            }
        }
    }
    rank(
        table,
        &ctx,
        w.survivors,
        w.min_price,
        w.min_time,
        more_probation,
        req,
        weights,
        params,
        rng,
    )
}

/// The ranking's weights per unit of price and of time: each as a multiple
/// of the best survivor's.
fn score_weights(weights: &Weights, min_price: u64, min_time: f64) -> (f64, f64) {
    (
        weight(weights.price) / (min_price.max(1) as f64),
        weight(weights.latency) / min_time.max(1.0),
    )
}

/// The full order of survivors: `sort`'s key, score, node key.
#[inline]
fn cmp_scored<S: Source + ?Sized>(src: &S, sort: Option<Sort>, a: &Scored, b: &Scored) -> Ordering {
    let primary = match sort {
        None => Ordering::Equal,
        Some(Sort::Price) => a.price.cmp(&b.price),
        Some(Sort::Latency | Sort::Throughput) => a.aux.total_cmp(&b.aux),
    };
    primary
        .then_with(|| a.score.total_cmp(&b.score))
        .then_with(|| src.key(a.idx as usize).cmp(src.key(b.idx as usize)))
}

/// The first component of that order that is not always equal, as a float
/// (`as f64` is monotone on u64, so a larger float is never a smaller
/// price).
#[inline]
fn quick_key(sort: Option<Sort>, s: &Scored) -> f64 {
    match sort {
        None => s.score,
        Some(Sort::Price) => s.price as f64,
        Some(Sort::Latency | Sort::Throughput) => s.aux,
    }
}

/// Scores the survivors and builds the list. `survivors` may be a subset of
/// all survivors if it holds every one that can be in a group's best few,
/// `min_price` / `min_time` are over all survivors, and `more_probation`
/// says whether a survivor left out is on probation (the indexed path).
#[allow(clippy::too_many_arguments)]
fn rank<S: Source + ?Sized, R: Rng + ?Sized>(
    src: &S,
    ctx: &Ctx,
    mut survivors: Vec<Scored>,
    min_price: u64,
    min_time: f64,
    more_probation: bool,
    req: &Request,
    weights: &Weights,
    params: &RouteParams,
    rng: &mut R,
) -> Result<Vec<NodeKey>, NoCandidate> {
    let n = src.count();
    // Pass 2: score and keep the best few per group.
    let (wp, wl) = score_weights(weights, min_price, min_time);
    for s in &mut survivors {
        s.score = wp * s.price as f64 + wl * s.total_ms + s.trust_term;
    }
    let survivors = survivors;
    let sort = req.prefs.sort;
    let key = |s: &Scored| src.key(s.idx as usize);
    let quick = |s: &Scored| quick_key(sort, s);
    let cmp = |i: usize, j: usize| -> Ordering {
        match (survivors.get(i), survivors.get(j)) {
            (Some(a), Some(b)) => cmp_scored(src, sort, a, b),
            _ => i.cmp(&j),
        }
    };

    let max = params.max_candidates.max(1);
    let p2c_k = params.p2c_top_k.max(1);
    let mut groups = [
        Group::new(max.max(p2c_k), p2c_k),
        Group::new(max.max(p2c_k), p2c_k),
    ];
    let mut ordered: Vec<(u32, usize)> = Vec::new();
    for (i, s) in survivors.iter().enumerate() {
        if s.order_pos != NOT_ORDERED {
            ordered.push((s.order_pos, i));
            continue;
        }
        let q = quick(s);
        let g = &mut groups[usize::from(!s.pool)];
        g.all.offer(i, q, cmp);
        g.has_probation |= s.probation;
        if !s.probation {
            g.trusted.offer(i, q, cmp);
        }
    }
    ordered.sort_unstable();
    // The indexed path has no pool preference: every survivor is public.
    groups[1].has_probation |= more_probation;
    for g in &mut groups {
        g.all.finish(cmp);
        g.trusted.finish(cmp);
    }

    // The first slot.
    let first = match ordered.first() {
        Some(&(_, i)) => Some(i),
        None => groups.iter().find(|g| !g.all.is_empty()).map(|g| {
            let share = finite_or(params.probation_share, 0.0);
            let src = if g.has_probation && !g.trusted.is_empty() && rng.random::<f64>() >= share {
                &g.trusted
            } else {
                &g.all
            };
            pick_first(
                src,
                &survivors,
                sort.is_some(),
                p2c_k,
                params.p2c_slack,
                rng,
            )
        }),
    };

    // The list: first, the `order` nodes, then each group best first.
    let limit = if req.prefs.allow_fallbacks || ctx.order_only {
        max
    } else {
        1
    };
    let mut out: Vec<NodeKey> = Vec::with_capacity(limit.min(n));
    let rest = ordered
        .iter()
        .map(|&(_, i)| i)
        .chain(groups.iter().flat_map(|g| g.all.indices()));
    // Duplicate keys (a caller passing a node twice) are dropped; a long
    // list dedups through a set instead of a quadratic scan.
    let mut seen = std::collections::BTreeSet::new();
    for i in first.into_iter().chain(rest) {
        if out.len() >= limit {
            break;
        }
        let Some(s) = survivors.get(i) else { continue };
        let k = *key(s);
        let new = if limit <= SMALL_K {
            !out.contains(&k)
        } else {
            seen.insert(k)
        };
        if new {
            out.push(k);
        }
    }
    Ok(out)
}

/// Pass 1 when no filter or placement needs the node key: every candidate
/// is predicted and pushed, then dropped again if it failed, so the loop has
/// no data-dependent branch (a mispredicted one per candidate would cost more
/// than the wasted arithmetic). Returns the smallest price and time among
/// the survivors.
#[inline]
fn scan_unkeyed(
    ctx: &Ctx,
    facts: impl Iterator<Item = Facts>,
    out: &mut Vec<Scored>,
) -> (u64, f64) {
    let mut min_price = u64::MAX;
    let mut min_time = f64::INFINITY;
    for (idx, f) in facts.enumerate() {
        let ok = ctx.numeric_ok(&f);
        let s = ctx.predict(&f, idx);
        min_price = min_price.min(if ok { s.price } else { u64::MAX });
        min_time = min_time.min(if ok { s.total_ms } else { f64::INFINITY });
        out.push(s);
        let keep = out.len() - usize::from(!ok);
        out.truncate(keep);
    }
    (min_price, min_time)
}

/// Pass 1 with key or label filters, `order` or a pool preference.
fn scan_keyed<S: Source + ?Sized>(
    ctx: &Ctx,
    src: &S,
    labels: &S::Labels,
    out: &mut Vec<Scored>,
) -> (u64, f64) {
    let mut min_price = u64::MAX;
    let mut min_time = f64::INFINITY;
    for idx in 0..src.count() {
        let f = src.facts(idx);
        if ctx.numeric_ok(&f) && (!ctx.any_optional || ctx.optional_ok(src, idx, labels)) {
            let mut s = ctx.predict(&f, idx);
            ctx.place(&mut s, src.key(idx));
            min_price = min_price.min(s.price);
            min_time = min_time.min(s.total_ms);
            out.push(s);
        }
    }
    (min_price, min_time)
}

/// The first slot from `src` (best first): the best when sorting by a key,
/// otherwise power-of-two-choices over the near-best by peak-EWMA load cost.
fn pick_first<R: Rng + ?Sized>(
    src: &TopK,
    survivors: &[Scored],
    sorted: bool,
    p2c_k: usize,
    slack: f64,
    rng: &mut R,
) -> usize {
    let score = |i: usize| survivors.get(i).map_or(f64::INFINITY, |s| s.score);
    let cost = |i: usize| survivors.get(i).map_or(f64::INFINITY, |s| s.aux);
    let Some(best) = src.first() else {
        return usize::MAX;
    };
    if sorted {
        return best;
    }
    let limit = score(best) * (1.0 + weight(slack));
    let n = src
        .indices()
        .take(p2c_k)
        .take_while(|&i| score(i) <= limit)
        .count();
    if n < 2 {
        return best;
    }
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    let (Some(x), Some(y)) = (src.indices().nth(a), src.indices().nth(b)) else {
        return best;
    };
    // Ties go to the first draw, so equal nodes share load evenly.
    if cost(y) < cost(x) { y } else { x }
}

/// The first stage after which nothing was left, and how many were left
/// before it.
fn emptied_by(fails: &[usize; STAGES.len()], total: usize, trust: Filter) -> NoCandidate {
    let mut left = total;
    for (stage, &n) in STAGES.iter().zip(fails) {
        let before = left;
        left = left.saturating_sub(n);
        if left == 0 {
            let filter = if *stage == Filter::TrustFloor {
                trust
            } else {
                *stage
            };
            return NoCandidate::Filtered { filter, before };
        }
    }
    NoCandidate::NoNodes
}
