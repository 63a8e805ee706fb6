//! The routing filter: the request's hard constraints, one predicate per
//! [`Filter`], and the naming of the constraint that left no node
//! ([`NoCandidate`]). The order the filters run in is written once, as the
//! order of [`Filter`]'s variants ([`Filter::ALL`]).
//!
//! Both walks (the full scan and the indexed walk) decide whether a row
//! survives with [`Filters::passes`], which is the conjunction of the same
//! per-filter predicates [`Filters::first_failure`] checks one by one in
//! `Filter` order.

use serde::{Deserialize, Serialize};

use crate::breaker::Admit;
use crate::candidate::NodeKey;
use crate::facts::{Facts, Source, finite_or};
use crate::request::{Request, RouteParams};

/// A constraint of the routing filter. The variants are listed in the order
/// the filters run, which is [`Filter::ALL`]'s order: it only matters for
/// naming the constraint that emptied the list in [`NoCandidate`] (the first
/// filter in this order after which no node was left). `TrustFloor` and
/// `MinTrust` are one check, named per request: `max(trust_floor,
/// min_trust)`, `MinTrust` when the request's is the higher.
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
    /// Every filter, in the order they run (the declaration order).
    pub const ALL: [Filter; 16] = [
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
        Filter::MinTrust,
        Filter::Breaker,
        Filter::Capacity,
        Filter::Order,
    ];

    /// This filter's position in [`Filter::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

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
pub(crate) const NOT_ORDERED: u32 = u32::MAX;

/// The request's filters, the same for every candidate.
pub(crate) struct Filters {
    only: Option<KeySet>,
    ignore: Option<KeySet>,
    pool: Option<KeySet>,
    /// Non-pool nodes are filtered out.
    pool_only: bool,
    /// Pool nodes go before public ones.
    pub(crate) prefer_pool: bool,
    /// `order` keys with their first position, sorted by key.
    order: Vec<(NodeKey, u32)>,
    /// `allow_fallbacks = false` with a non-empty `order`.
    pub(crate) order_only: bool,
    weights_filter: bool,
    quantization_filter: bool,
    region_filter: bool,
    /// Capability bits the request needs (0: none).
    caps: u32,
    license_filter: bool,
    /// Some key or label filter is on.
    any_optional: bool,
    pub(crate) needed_context: u64,
    pub(crate) max_price_in: u64,
    pub(crate) max_price_out: u64,
    pub(crate) trust_min: f64,
    /// How the trust check is named: `TrustFloor` or `MinTrust`.
    trust_filter: Filter,
    queue_factor: u64,
    /// The candidate key is needed in the scan (key filters, `order`, pool
    /// preference).
    pub(crate) keyed: bool,
}

impl Filters {
    pub(crate) fn new(req: &Request, params: &RouteParams) -> Self {
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

    /// `k`'s first position in `order`, or `NOT_ORDERED`.
    #[inline]
    pub(crate) fn order_pos(&self, k: &NodeKey) -> u32 {
        if self.order.is_empty() {
            return NOT_ORDERED;
        }
        match self.order.binary_search_by(|(key, _)| key.cmp(k)) {
            Ok(i) => self.order.get(i).map_or(NOT_ORDERED, |(_, p)| *p),
            Err(_) => NOT_ORDERED,
        }
    }

    #[inline]
    pub(crate) fn in_pool(&self, k: &NodeKey) -> bool {
        self.pool.as_ref().is_some_and(|s| s.contains(k))
    }

    // One predicate per filter, in `Filter` order.

    fn only_ok(&self, k: &NodeKey) -> bool {
        self.only.as_ref().is_none_or(|s| s.contains(k))
    }

    fn ignore_ok(&self, k: &NodeKey) -> bool {
        self.ignore.as_ref().is_none_or(|s| !s.contains(k))
    }

    fn pool_ok(&self, k: &NodeKey) -> bool {
        !self.pool_only || self.in_pool(k)
    }

    #[inline(always)]
    fn context_ok(&self, f: &Facts) -> bool {
        u64::from(f.context_length) >= self.needed_context
    }

    fn weights_ok<S: Source + ?Sized>(&self, src: &S, i: usize, l: &S::Labels) -> bool {
        !self.weights_filter || src.weights_ok(i, l)
    }

    fn quantization_ok<S: Source + ?Sized>(&self, src: &S, i: usize, l: &S::Labels) -> bool {
        !self.quantization_filter || src.quantization_ok(i, l)
    }

    fn region_ok<S: Source + ?Sized>(&self, src: &S, i: usize, l: &S::Labels) -> bool {
        !self.region_filter || src.region_ok(i, l)
    }

    fn caps_ok<S: Source + ?Sized>(&self, src: &S, i: usize) -> bool {
        self.caps == 0 || src.caps_ok(i, self.caps)
    }

    fn license_ok<S: Source + ?Sized>(&self, src: &S, i: usize, l: &S::Labels) -> bool {
        !self.license_filter || src.license_ok(i, l)
    }

    #[inline(always)]
    fn price_in_ok(&self, f: &Facts) -> bool {
        f.price_in <= self.max_price_in
    }

    #[inline(always)]
    fn price_out_ok(&self, f: &Facts) -> bool {
        f.price_out <= self.max_price_out
    }

    /// A NaN trust is incomparable, and fails.
    #[inline(always)]
    fn trust_ok(&self, f: &Facts) -> bool {
        f.trust >= self.trust_min
    }

    #[inline(always)]
    fn breaker_ok(&self, f: &Facts) -> bool {
        f.admit != Admit::No
    }

    #[inline(always)]
    fn capacity_ok(&self, f: &Facts) -> bool {
        u64::from(f.load()) < u64::from(f.max_concurrency) * self.queue_factor
    }

    fn order_ok(&self, k: &NodeKey) -> bool {
        !self.order_only || self.order_pos(k) != NOT_ORDERED
    }

    /// Whether row `i` (with facts `f`) passes `filter`.
    fn check<S: Source + ?Sized>(
        &self,
        filter: Filter,
        src: &S,
        i: usize,
        f: &Facts,
        l: &S::Labels,
    ) -> bool {
        let k = src.key(i);
        match filter {
            Filter::Only => self.only_ok(k),
            Filter::Ignore => self.ignore_ok(k),
            Filter::PrivatePool => self.pool_ok(k),
            Filter::ContextLength => self.context_ok(f),
            Filter::WeightsSha256 => self.weights_ok(src, i, l),
            Filter::Quantization => self.quantization_ok(src, i, l),
            Filter::Region => self.region_ok(src, i, l),
            Filter::Capabilities => self.caps_ok(src, i),
            Filter::License => self.license_ok(src, i, l),
            Filter::MaxPriceIn => self.price_in_ok(f),
            Filter::MaxPriceOut => self.price_out_ok(f),
            // One check, under the name this request gives it.
            Filter::TrustFloor | Filter::MinTrust => {
                filter != self.trust_filter || self.trust_ok(f)
            }
            Filter::Breaker => self.breaker_ok(f),
            Filter::Capacity => self.capacity_ok(f),
            Filter::Order => self.order_ok(k),
        }
    }

    /// The filters on plain numbers, evaluated without short-circuit (`&`,
    /// not `&&`): a candidate costs one hard-to-predict branch, not one per
    /// filter.
    #[inline]
    pub(crate) fn numeric_ok(&self, f: &Facts) -> bool {
        self.context_ok(f)
            & self.price_in_ok(f)
            & self.price_out_ok(f)
            & self.trust_ok(f)
            & self.breaker_ok(f)
            & self.capacity_ok(f)
    }

    /// The filters that are off unless the request sets them (behind one
    /// per-request flag, which predicts perfectly).
    fn optional_ok<S: Source + ?Sized>(&self, src: &S, i: usize, l: &S::Labels) -> bool {
        let k = src.key(i);
        self.only_ok(k)
            && self.ignore_ok(k)
            && self.pool_ok(k)
            && self.weights_ok(src, i, l)
            && self.quantization_ok(src, i, l)
            && self.region_ok(src, i, l)
            && self.caps_ok(src, i)
            && self.license_ok(src, i, l)
            && self.order_ok(k)
    }

    /// Whether row `i`, with facts `f`, passes every filter: what both walks
    /// ask of each row they read. Without key or label filters (`!keyed`)
    /// this is `numeric_ok` alone.
    #[inline]
    pub(crate) fn passes<S: Source + ?Sized>(
        &self,
        src: &S,
        i: usize,
        f: &Facts,
        l: &S::Labels,
    ) -> bool {
        self.numeric_ok(f) && (!self.any_optional || self.optional_ok(src, i, l))
    }

    /// The first filter (in `Filter` order) row `i` fails, if any: the same
    /// predicates as `passes`, one by one.
    fn first_failure<S: Source + ?Sized>(
        &self,
        src: &S,
        i: usize,
        l: &S::Labels,
    ) -> Option<Filter> {
        let f = src.facts(i);
        Filter::ALL
            .into_iter()
            .find(|&filter| !self.check(filter, src, i, &f, l))
    }

    /// Names the constraint that left no node, once a walk found no
    /// survivor: every row is charged to the first filter it fails, and the
    /// answer is the first filter (in `Filter` order) after which none was
    /// left, with how many were left before it.
    pub(crate) fn emptied<S: Source + ?Sized>(&self, src: &S, l: &S::Labels) -> NoCandidate {
        let total = src.count();
        let mut rejected = [0usize; Filter::ALL.len()];
        for i in 0..total {
            if let Some(n) = self
                .first_failure(src, i, l)
                .and_then(|filter| rejected.get_mut(filter.index()))
            {
                *n += 1;
            }
        }
        let mut left = total;
        for (&filter, &n) in Filter::ALL.iter().zip(&rejected) {
            let before = left;
            left = left.saturating_sub(n);
            if left == 0 {
                return NoCandidate::Filtered { filter, before };
            }
        }
        NoCandidate::NoNodes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::candidate::{Observed, Offer};
    use crate::facts::Candidate;
    use crate::request::{Preferences, PrivatePool};

    /// `passes` (what the walks ask) and `first_failure` (what names the
    /// culprit, in `Filter` order) are built from the same predicates: a
    /// row fails one exactly when it fails the other.
    #[test]
    fn passes_is_no_first_failure() {
        let mut rng = StdRng::seed_from_u64(25);
        let pick = |rng: &mut StdRng, xs: &[&str]| -> Option<String> {
            let i = rng.random_range(0..=xs.len());
            xs.get(i).map(|x| x.to_string())
        };
        for _ in 0..200 {
            let offers: Vec<Offer> = (0..12u8)
                .map(|n| Offer {
                    node: [n; 32],
                    price_in: rng.random_range(0..300),
                    price_out: rng.random_range(0..300),
                    context_length: rng.random_range(0..9000),
                    weights_sha256: rng.random_bool(0.7).then_some([7; 32]),
                    quantization: pick(&mut rng, &["Q8_0", "q4k"]),
                    region: pick(&mut rng, &["eu", "US"]),
                    max_concurrency: rng.random_range(0..4),
                    queue_depth: rng.random_range(0..6),
                    advertised_tokens_per_sec: None,
                    relayed: false,
                    gpus: 0,
                    capabilities: rng.random_range(0..8),
                    license: pick(&mut rng, &["mit", "apache-2.0"]),
                })
                .collect();
            let observed: Vec<Observed> = offers
                .iter()
                .map(|_| Observed {
                    in_flight: rng.random_range(0..6),
                    ..Observed::default()
                })
                .collect();
            let admits = [Admit::Yes, Admit::No, Admit::Probe];
            let candidates: Vec<Candidate<'_>> = offers
                .iter()
                .zip(&observed)
                .map(|(offer, observed)| Candidate {
                    offer,
                    observed,
                    trust: rng.random_range(0.0..1.0),
                    probation: rng.random_bool(0.3),
                    breaker: admits[rng.random_range(0..admits.len())],
                })
                .collect();
            let some_keys = |rng: &mut StdRng| -> Vec<NodeKey> {
                (0..12u8)
                    .filter(|_| rng.random_bool(0.3))
                    .map(|n| [n; 32])
                    .collect()
            };
            let prefs = Preferences {
                order: some_keys(&mut rng),
                only: if rng.random_bool(0.3) {
                    some_keys(&mut rng)
                } else {
                    Vec::new()
                },
                ignore: some_keys(&mut rng),
                allow_fallbacks: rng.random_bool(0.5),
                max_price_in: rng.random_bool(0.3).then(|| rng.random_range(0..300)),
                max_price_out: rng.random_bool(0.3).then(|| rng.random_range(0..300)),
                min_trust: rng.random_bool(0.3).then(|| rng.random_range(0.0..1.0)),
                region: pick(&mut rng, &["EU"]),
                quantizations: pick(&mut rng, &["q8_0"]).into_iter().collect(),
                weights_sha256: rng.random_bool(0.3).then_some([7; 32]),
                capabilities: rng.random_range(0..4),
                licenses: pick(&mut rng, &["MIT"]).into_iter().collect(),
                private_pool: rng.random_bool(0.3).then(|| PrivatePool {
                    nodes: some_keys(&mut rng),
                    sensitive: rng.random_bool(0.5),
                    spill_to_public: rng.random_bool(0.5),
                }),
                ..Preferences::default()
            };
            let req = Request {
                input_tokens: rng.random_range(0..4000),
                max_output_tokens: rng.random_range(0..4000),
                prefs,
            };
            let filters = Filters::new(&req, &RouteParams::default());
            let src: &[Candidate<'_>] = &candidates;
            let labels = src.labels(&req.prefs);
            for i in 0..src.len() {
                let f = src.facts(i);
                assert_eq!(
                    filters.passes(src, i, &f, &labels),
                    filters.first_failure(src, i, &labels).is_none(),
                    "row {i} of {req:?}"
                );
            }
        }
    }

    #[test]
    fn all_lists_every_filter_once_in_declaration_order() {
        for (i, f) in Filter::ALL.iter().enumerate() {
            assert_eq!(f.index(), i, "{f}");
        }
        let names: std::collections::BTreeSet<&str> =
            Filter::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), Filter::ALL.len());
    }
}
