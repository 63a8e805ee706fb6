//! Ranking: each survivor's predictions (expected price, completion time,
//! trust term; see the `route` module docs for the rules), its score, and
//! the list: the `order` nodes, then the groups (pool, public) best first,
//! with the first slot drawn by the probation coin and power-of-two-choices.
//!
//! Both walks rank with the same [`Ranking`]: the full scan offers it every
//! survivor at once; the indexed walk offers survivors as it reads blocks
//! and asks it which blocks can still matter ([`Ranking::can_enter`]).

use std::cmp::Ordering;

use rand::Rng;

use crate::candidate::NodeKey;
use crate::facts::{Facts, Source, finite_or, non_negative, positive, select, weight};
use crate::filter::{Filters, NOT_ORDERED};
use crate::request::{Request, RouteParams, Sort, Weights};
use crate::topk::{SMALL_K, TopK};

/// The request's numbers for predicting a candidate's price and times, the
/// same for every candidate.
pub(crate) struct Predictor {
    pub(crate) input_tokens: u32,
    pub(crate) max_out: u32,
    pub(crate) unknown_rtt_ms: f64,
    pub(crate) unknown_ttft_ms: f64,
    pub(crate) inv_unknown_tps: f64,
    typical_job_ms_x_tps: f64,
    pub(crate) gen_ms_x_tps: f64,
    sort: Option<Sort>,
    pub(crate) trust_weight: f64,
}

impl Predictor {
    pub(crate) fn new(req: &Request, params: &RouteParams, weights: &Weights) -> Self {
        Self {
            input_tokens: req.input_tokens,
            max_out: req.max_output_tokens,
            unknown_rtt_ms: non_negative(Some(params.unknown_rtt_ms)).unwrap_or(0.0),
            unknown_ttft_ms: non_negative(Some(params.unknown_ttft_ms)).unwrap_or(0.0),
            inv_unknown_tps: 1.0 / positive(Some(params.unknown_tokens_per_sec)).unwrap_or(1.0),
            typical_job_ms_x_tps: f64::from(params.typical_job_tokens) * 1000.0,
            gen_ms_x_tps: f64::from(req.max_output_tokens) * 1000.0,
            sort: req.prefs.sort,
            trust_weight: weight(weights.trust),
        }
    }

    /// Predictions for a candidate. Only meaningful if it passed the
    /// filters (`max_concurrency >= 1` then, by the capacity filter), but
    /// safe to compute for any: the unkeyed scan computes it for every
    /// candidate and keeps it or not without a branch.
    #[inline]
    pub(crate) fn predict(&self, f: &Facts, idx: usize) -> Scored {
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
}

/// What `Predictor::predict` leaves out because it needs the node key.
#[inline]
pub(crate) fn place(s: &mut Scored, filters: &Filters, key: &NodeKey) {
    s.order_pos = filters.order_pos(key);
    s.pool = filters.prefer_pool && filters.in_pool(key);
}

/// A survivor of the filter, with its predictions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scored {
    /// Index into the source.
    pub(crate) idx: u32,
    pub(crate) order_pos: u32,
    pub(crate) price: u64,
    pub(crate) total_ms: f64,
    /// `w.trust * (1 - trust)`.
    pub(crate) trust_term: f64,
    /// Without `sort`: the power-of-two-choices load cost, first-token time
    /// times (1 + load / max_concurrency); with `sort = latency`: first-token
    /// time; with `sort = throughput`: seconds per token.
    pub(crate) aux: f64,
    pub(crate) score: f64,
    pub(crate) probation: bool,
    pub(crate) pool: bool,
}

/// The survivors a walk has found so far, with the smallest price and
/// completion time among them (the score's normalisers).
pub(crate) struct Survivors {
    pub(crate) list: Vec<Scored>,
    pub(crate) min_price: u64,
    pub(crate) min_time: f64,
}

impl Survivors {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            list: Vec::with_capacity(n),
            min_price: u64::MAX,
            min_time: f64::INFINITY,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, s: Scored) {
        self.min_price = self.min_price.min(s.price);
        self.min_time = self.min_time.min(s.total_ms);
        self.list.push(s);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// The score: price and time each as a multiple of the best survivor's,
/// plus the trust term (lower is better).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scorer {
    /// Weight per nano-USD.
    wp: f64,
    /// Weight per millisecond.
    wl: f64,
}

impl Scorer {
    pub(crate) fn new(weights: &Weights, min_price: u64, min_time: f64) -> Self {
        Self {
            wp: weight(weights.price) / (min_price.max(1) as f64),
            wl: weight(weights.latency) / min_time.max(1.0),
        }
    }

    /// The score of a price, a completion time and a trust term: for a
    /// survivor, or for a block's lower bounds (the same operations, so a
    /// bound's score is a bound of its rows' scores).
    #[inline]
    pub(crate) fn score(&self, price: u64, time: f64, trust_term: f64) -> f64 {
        self.wp * price as f64 + self.wl * time + trust_term
    }
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

    /// Considers survivor `i`.
    #[inline]
    fn offer(&mut self, i: usize, s: &Scored, quick: f64, cmp: &impl Fn(usize, usize) -> Ordering) {
        self.all.offer(i, quick, cmp);
        self.has_probation |= s.probation;
        if !s.probation {
            self.trusted.offer(i, quick, cmp);
        }
    }
}

/// The ranking of one decision, fed survivors as a walk finds them.
pub(crate) struct Ranking {
    scorer: Scorer,
    sort: Option<Sort>,
    /// Pool nodes (with a pool that may spill), then public ones.
    groups: [Group; 2],
    /// Survivors in `order`: (position in `order`, survivor).
    ordered: Vec<(u32, usize)>,
    /// Survivors before this one were scored and offered.
    offered: usize,
    /// Length of the list.
    limit: usize,
    p2c_k: usize,
    p2c_slack: f64,
    probation_share: f64,
}

impl Ranking {
    /// `survivors`' minima must be those of every survivor (the walks
    /// guarantee it before they rank).
    pub(crate) fn new(
        req: &Request,
        weights: &Weights,
        params: &RouteParams,
        filters: &Filters,
        survivors: &Survivors,
    ) -> Self {
        let max = params.max_candidates.max(1);
        let p2c_k = params.p2c_top_k.max(1);
        Self {
            scorer: Scorer::new(weights, survivors.min_price, survivors.min_time),
            sort: req.prefs.sort,
            groups: [
                Group::new(max.max(p2c_k), p2c_k),
                Group::new(max.max(p2c_k), p2c_k),
            ],
            ordered: Vec::new(),
            offered: 0,
            limit: if req.prefs.allow_fallbacks || filters.order_only {
                max
            } else {
                1
            },
            p2c_k,
            p2c_slack: params.p2c_slack,
            probation_share: params.probation_share,
        }
    }

    /// Scores every survivor not offered yet and offers it to its group's
    /// best few (or to the `order` list), in the order they were found.
    pub(crate) fn offer_new<S: Source + ?Sized>(&mut self, src: &S, survivors: &mut [Scored]) {
        let from = self.offered;
        for s in survivors.iter_mut().skip(from) {
            s.score = self.scorer.score(s.price, s.total_ms, s.trust_term);
        }
        let survivors = &*survivors;
        let sort = self.sort;
        let cmp = |i: usize, j: usize| -> Ordering {
            match (survivors.get(i), survivors.get(j)) {
                (Some(a), Some(b)) => cmp_scored(src, sort, a, b),
                _ => i.cmp(&j),
            }
        };
        for (i, s) in survivors.iter().enumerate().skip(from) {
            if s.order_pos != NOT_ORDERED {
                self.ordered.push((s.order_pos, i));
                continue;
            }
            let g = &mut self.groups[usize::from(!s.pool)];
            g.offer(i, s, quick_key(sort, s), &cmp);
        }
        self.offered = survivors.len();
    }

    /// Whether a public survivor whose quick key is `quick` could still
    /// enter the best few, of all or of those not on probation (ties can).
    /// Only for a decision without a pool preference or `order`.
    pub(crate) fn can_enter(&self, quick: f64) -> bool {
        let g = &self.groups[1];
        quick <= g.all.worst() || quick <= g.trusted.worst()
    }

    /// The lower bound of the quick key for a row with at least these
    /// price, completion time, trust term and sort keys.
    pub(crate) fn quick_bound(
        &self,
        price: u64,
        time: f64,
        trust_term: f64,
        first_token: f64,
        inv_tps: f64,
    ) -> f64 {
        match self.sort {
            None => self.scorer.score(price, time, trust_term),
            Some(Sort::Price) => price as f64,
            Some(Sort::Latency) => first_token,
            Some(Sort::Throughput) => inv_tps,
        }
    }

    /// The list, from every survivor offered. `more_probation` says whether
    /// a survivor never offered is on probation (the indexed walk's unread
    /// blocks; it changes the draws).
    pub(crate) fn finish<S: Source + ?Sized, R: Rng + ?Sized>(
        mut self,
        src: &S,
        survivors: &[Scored],
        more_probation: bool,
        rng: &mut R,
    ) -> Vec<NodeKey> {
        let sort = self.sort;
        let cmp = |i: usize, j: usize| -> Ordering {
            match (survivors.get(i), survivors.get(j)) {
                (Some(a), Some(b)) => cmp_scored(src, sort, a, b),
                _ => i.cmp(&j),
            }
        };
        self.ordered.sort_unstable();
        // The indexed walk has no pool preference: every survivor is public.
        self.groups[1].has_probation |= more_probation;
        for g in &mut self.groups {
            g.all.finish(cmp);
            g.trusted.finish(cmp);
        }
        let first = self.first(survivors, rng);
        self.list(src, survivors, first)
    }

    /// The first slot: the first `order` node, else from the first
    /// non-empty group, by the probation coin then `pick_first`.
    fn first<R: Rng + ?Sized>(&self, survivors: &[Scored], rng: &mut R) -> Option<usize> {
        match self.ordered.first() {
            Some(&(_, i)) => Some(i),
            None => self.groups.iter().find(|g| !g.all.is_empty()).map(|g| {
                let share = finite_or(self.probation_share, 0.0);
                let src =
                    if g.has_probation && !g.trusted.is_empty() && rng.random::<f64>() >= share {
                        &g.trusted
                    } else {
                        &g.all
                    };
                pick_first(
                    src,
                    survivors,
                    self.sort.is_some(),
                    self.p2c_k,
                    self.p2c_slack,
                    rng,
                )
            }),
        }
    }

    /// The list: first, the `order` nodes, then each group best first.
    fn list<S: Source + ?Sized>(
        &self,
        src: &S,
        survivors: &[Scored],
        first: Option<usize>,
    ) -> Vec<NodeKey> {
        let limit = self.limit;
        let mut out: Vec<NodeKey> = Vec::with_capacity(limit.min(src.count()));
        let rest = self
            .ordered
            .iter()
            .map(|&(_, i)| i)
            .chain(self.groups.iter().flat_map(|g| g.all.indices()));
        // Duplicate keys (a caller passing a node twice) are dropped; a long
        // list dedups through a set instead of a quadratic scan.
        let mut seen = std::collections::BTreeSet::new();
        for i in first.into_iter().chain(rest) {
            if out.len() >= limit {
                break;
            }
            let Some(s) = survivors.get(i) else { continue };
            let k = *src.key(s.idx as usize);
            let new = if limit <= SMALL_K {
                !out.contains(&k)
            } else {
                seen.insert(k)
            };
            if new {
                out.push(k);
            }
        }
        out
    }
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
