//! The full scan: every candidate through the filters and the predictions,
//! then the ranking. The reference decision; the indexed walk
//! (`indexed`) reads its rows through the same [`Reader`] and ranks
//! with the same `Ranking`, so the two differ only in which rows they read.
//!
//! Cost: one pass over the candidates and one over the survivors; no
//! allocation per candidate, no sort of the whole set (the best few per
//! group are kept in small sorted buffers, and most survivors cost one float
//! comparison there). The scan reads each candidate as plain numbers
//! (`Facts`): without key filters it has no data-dependent branch; speeds
//! and concurrency are stored as inverses so it does not divide.

use rand::Rng;

use crate::candidate::NodeKey;
use crate::facts::{Facts, Source};
use crate::filter::{Filters, NoCandidate};
use crate::rank::{Predictor, Ranking, Survivors, place};
use crate::request::{Request, RouteParams, Weights};

/// One decision's view of a source: the request's filters and predictions,
/// compiled once, and its label filters in the source's form.
pub(crate) struct Reader<'a, S: Source + ?Sized> {
    pub(crate) src: &'a S,
    pub(crate) filters: Filters,
    pub(crate) predictor: Predictor,
    labels: S::Labels,
}

impl<'a, S: Source + ?Sized> Reader<'a, S> {
    pub(crate) fn new(src: &'a S, req: &Request, weights: &Weights, params: &RouteParams) -> Self {
        Self {
            src,
            filters: Filters::new(req, params),
            predictor: Predictor::new(req, params, weights),
            labels: src.labels(&req.prefs),
        }
    }

    /// Whether row `i` passes every filter.
    #[inline]
    pub(crate) fn survives(&self, i: usize) -> bool {
        let f = self.src.facts(i);
        self.filters.passes(self.src, i, &f, &self.labels)
    }

    /// Filters and predicts `rows`, keeping the survivors: the step both
    /// walks take for every row they read (the full scan for all rows when
    /// a filter or placement needs the key, the indexed walk block by
    /// block).
    pub(crate) fn read(&self, rows: impl IntoIterator<Item = usize>, out: &mut Survivors) {
        for idx in rows {
            let f = self.src.facts(idx);
            if self.filters.passes(self.src, idx, &f, &self.labels) {
                let mut s = self.predictor.predict(&f, idx);
                place(&mut s, &self.filters, self.src.key(idx));
                out.push(s);
            }
        }
    }

    /// `read` when no filter or placement needs the node key (then
    /// `passes` is `numeric_ok`): every candidate is predicted and pushed,
    /// then dropped again if it failed, so the loop has no data-dependent
    /// branch (a mispredicted one per candidate would cost more than the
    /// wasted arithmetic).
    #[inline]
    fn read_unkeyed(&self, facts: impl Iterator<Item = Facts>, out: &mut Survivors) {
        let mut min_price = out.min_price;
        let mut min_time = out.min_time;
        let list = &mut out.list;
        for (idx, f) in facts.enumerate() {
            let ok = self.filters.numeric_ok(&f);
            let s = self.predictor.predict(&f, idx);
            min_price = min_price.min(if ok { s.price } else { u64::MAX });
            min_time = min_time.min(if ok { s.total_ms } else { f64::INFINITY });
            list.push(s);
            let keep = list.len() - usize::from(!ok);
            list.truncate(keep);
        }
        out.min_price = min_price;
        out.min_time = min_time;
    }

    /// Names the constraint that left no node.
    pub(crate) fn emptied(&self) -> NoCandidate {
        self.filters.emptied(self.src, &self.labels)
    }
}

/// The decision itself, over any candidate source, reading every row.
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
    let rd = Reader::new(src, req, weights, params);

    // Pass 1: filter and predict.
    let mut survivors = Survivors::with_capacity(n);
    match src.facts_slice() {
        Some(facts) if !rd.filters.keyed => rd.read_unkeyed(facts.iter().copied(), &mut survivors),
        _ if !rd.filters.keyed => rd.read_unkeyed((0..n).map(|i| src.facts(i)), &mut survivors),
        _ => rd.read(0..n, &mut survivors),
    }
    if survivors.is_empty() {
        return Err(rd.emptied());
    }

    // Pass 2: score and keep the best few per group, then the list.
    let mut ranking = Ranking::new(req, weights, params, &rd.filters, &survivors);
    ranking.offer_new(src, &mut survivors.list);
    Ok(ranking.finish(src, &survivors.list, false, rng))
}
