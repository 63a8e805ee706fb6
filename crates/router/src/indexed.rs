//! The indexed walk: the decision over a `CandidateTable`, reading only the
//! blocks of its index (`crate::index`) whose lower bounds (price,
//! first-token time, seconds per token, completion time, trust term) show
//! they can hold the smallest price, the smallest time or one of the best
//! few. It reads rows with the full scan's `Reader` and ranks with the same
//! `Ranking`, so it returns the full scan's list, bit for bit: the bounds
//! only decide which blocks are read, never what is returned.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::Rng;

use crate::candidate::NodeKey;
use crate::candidate_table::CandidateTable;
use crate::facts::Source;
use crate::filter::{Filters, NoCandidate};
use crate::index::{BLOCK, HUGE_INV_TPS, Index, LADDER, Summary};
use crate::rank::{Predictor, Ranking, Survivors};
use crate::request::{Request, RouteParams, Weights};
use crate::scan::{Reader, route_core};
use crate::topk::SMALL_K;

/// Lower bounds, for one request, of what any row of one block can score
/// (see `index`): every row that passes the filters has a price, first-token
/// time, seconds per token, completion time and trust term at least these.
/// Each is computed with the same floating-point operations, in the same
/// order, as `Predictor::predict` and `Scorer::score` compute a row's, from values no larger
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
    fn of(s: &Summary, filters: &Filters, p: &Predictor) -> Option<Bounds> {
        let feasible = u64::from(s.max_context) >= filters.needed_context
            && s.min_price_in <= filters.max_price_in
            && s.min_price_out <= filters.max_price_out
            && s.max_trust >= filters.trust_min
            && s.admits;
        if !feasible {
            return None;
        }
        let price = u64::from(p.input_tokens)
            .saturating_mul(s.min_price_in)
            .saturating_add(u64::from(p.max_out).saturating_mul(s.min_price_out));
        // Rows that lack a measurement: field by field, the default where
        // some row lacks it (an unknown RTT is the default, or twice it when
        // relayed: not less).
        let (other_first_token, other_inv_tps, other_time) = if s.any_other {
            let rtt = if s.unknown_rtt {
                s.min_rtt.min(p.unknown_rtt_ms)
            } else {
                s.min_rtt
            };
            let ttft = if s.unknown_ttft {
                s.min_ttft.min(p.unknown_ttft_ms)
            } else {
                s.min_ttft
            };
            // The advertised speed is shared by at least one sequence.
            let inv_tps = if s.unknown_tps {
                s.min_inv_tps.min(p.inv_unknown_tps)
            } else {
                s.min_inv_tps
            };
            // A row's first-token time is (rtt + queue) + ttft, queue >= 0.
            let first_token = rtt + ttft;
            (first_token, inv_tps, first_token + p.gen_ms_x_tps * inv_tps)
        } else {
            (f64::INFINITY, f64::INFINITY, f64::INFINITY)
        };
        // Fully measured rows: the best time at the longest ladder length
        // not above this request's (a row's time is increasing in it).
        let rung = LADDER
            .iter()
            .rposition(|&out| out <= p.max_out)
            .unwrap_or(0);
        let measured_time = s.measured_time.get(rung).copied().unwrap_or(0.0);
        let measured_first_token = s.measured_time.first().copied().unwrap_or(0.0);
        Some(Bounds {
            price,
            first_token: measured_first_token.min(other_first_token),
            inv_tps: s.measured_inv_tps.min(other_inv_tps),
            time: measured_time.min(other_time),
            trust_term: p.trust_weight * (1.0 - s.max_trust.min(1.0)),
        })
    }

    /// A lower bound of the quick key (the ranking's first order component)
    /// of every row of the block that passes the filters.
    fn quick(&self, ranking: &Ranking) -> f64 {
        ranking.quick_bound(
            self.price,
            self.time,
            self.trust_term,
            self.first_token,
            self.inv_tps,
        )
    }
}

/// A non-negative float as an integer with the same order (NaN and
/// negatives as 0, i.e. visited first, which is always safe).
fn order_bits(x: f64) -> u64 {
    if x > 0.0 { x.to_bits() } else { 0 }
}

/// The blocks of one decision: the index, each block's bounds (`None`: no
/// row can pass the filters), and what has been read so far.
struct Walk<'a> {
    rd: &'a Reader<'a, CandidateTable>,
    ix: &'a Index,
    bounds: Vec<Option<Bounds>>,
    read: Vec<bool>,
    survivors: Survivors,
}

impl Walk<'_> {
    /// The blocks that may hold a survivor, with their bounds.
    fn feasible(&self) -> impl Iterator<Item = (usize, Bounds)> + '_ {
        self.bounds
            .iter()
            .enumerate()
            .filter_map(|(b, x)| x.map(|x| (b, x)))
    }

    /// Reads block `b` unless it was read; whether it was read now.
    fn read(&mut self, b: usize) -> bool {
        match self.read.get_mut(b) {
            Some(r) if !*r => *r = true,
            _ => return false,
        }
        let rows = self.ix.rows(b).iter().map(|&r| r as usize);
        self.rd.read(rows, &mut self.survivors);
        true
    }

    fn unread(&self, b: usize) -> bool {
        !self.read.get(b).copied().unwrap_or(true)
    }

    /// Blocks with rows outside the bounds argument: always read.
    fn read_exotic(&mut self) {
        for b in 0..self.bounds.len() {
            let feasible = self.bounds.get(b).is_some_and(Option::is_some);
            if feasible && self.ix.blocks.get(b).is_some_and(|s| s.exotic) {
                self.read(b);
            }
        }
    }

    /// Walk 1: until the smallest price among survivors is exact.
    fn walk_price(&mut self) {
        let mut heap: BinaryHeap<Reverse<(u64, usize)>> = self
            .feasible()
            .map(|(b, x)| Reverse((x.price, b)))
            .collect();
        while let Some(Reverse((lb, b))) = heap.pop() {
            if lb >= self.survivors.min_price {
                break;
            }
            self.read(b);
        }
    }

    /// Walk 2: until the smallest completion time among survivors is exact.
    fn walk_time(&mut self) {
        let mut heap: BinaryHeap<Reverse<(u64, usize)>> = self
            .feasible()
            .map(|(b, x)| Reverse((order_bits(x.time), b)))
            .collect();
        while let Some(Reverse((_, b))) = heap.pop() {
            let lb = self
                .bounds
                .get(b)
                .copied()
                .flatten()
                .map_or(0.0, |x| x.time);
            if lb >= self.survivors.min_time {
                break;
            }
            self.read(b);
        }
    }

    /// Walk 3: until no unread block can hold one of the best few (by the
    /// ranking's order), offering what it reads to `ranking`.
    fn walk_best(&mut self, ranking: &mut Ranking) {
        let mut heap: BinaryHeap<Reverse<(u64, usize)>> = self
            .feasible()
            .filter(|&(b, _)| self.unread(b))
            .map(|(b, x)| Reverse((order_bits(x.quick(ranking)), b)))
            .collect();
        ranking.offer_new(self.rd.src, &mut self.survivors.list);
        while let Some(Reverse((_, b))) = heap.pop() {
            let lb = self
                .bounds
                .get(b)
                .copied()
                .flatten()
                .map_or(0.0, |x| x.quick(ranking));
            // Strictly worse than both k-ths: no row here can enter either.
            if !ranking.can_enter(lb) {
                break;
            }
            if self.read(b) {
                ranking.offer_new(self.rd.src, &mut self.survivors.list);
            }
        }
    }

    /// Whether a survivor left unread is on probation (it still changes the
    /// draws): checked on the probation rows of unread feasible blocks alone.
    fn probation_unread(&self) -> bool {
        for (b, _) in self.feasible() {
            let Some(s) = self.ix.blocks.get(b) else {
                continue;
            };
            if s.probation == 0 || !self.unread(b) {
                continue;
            }
            for (bit, &r) in self.ix.rows(b).iter().enumerate() {
                if s.probation & (1u64 << bit) != 0 && self.rd.survives(r as usize) {
                    return true;
                }
            }
        }
        false
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
    let k_all = params.max_candidates.max(1).max(params.p2c_top_k.max(1));
    if n == 0
        || !prefs.order.is_empty()
        || prefs.private_pool.is_some()
        || k_all > SMALL_K
        || !ix.covers(n)
    {
        return route_core(table, req, weights, params, rng);
    }
    let rd = Reader::new(table, req, weights, params);
    let inv_unknown_tps = rd.predictor.inv_unknown_tps;
    if inv_unknown_tps.is_nan() || inv_unknown_tps > HUGE_INV_TPS {
        return route_core(table, req, weights, params, rng);
    }
    let bounds: Vec<Option<Bounds>> = ix
        .blocks
        .iter()
        .map(|s| Bounds::of(s, &rd.filters, &rd.predictor))
        .collect();
    let mut w = Walk {
        rd: &rd,
        ix,
        read: vec![false; bounds.len()],
        bounds,
        survivors: Survivors::with_capacity(BLOCK * 8),
    };
    w.read_exotic();
    w.walk_price();
    w.walk_time();
    if w.survivors.is_empty() {
        // Every block that could hold a survivor was read: none. Name the
        // constraint the usual way.
        return route_core(table, req, weights, params, rng);
    }
    let mut ranking = Ranking::new(req, weights, params, &rd.filters, &w.survivors);
    w.walk_best(&mut ranking);
    let more_probation = w.probation_unread();
    Ok(ranking.finish(table, &w.survivors.list, more_probation, rng))
}
