//! `TopK`: the best few survivors of a decision, kept in a small sorted
//! buffer as they are offered, so a decision never sorts the whole set.

use std::cmp::Ordering;

/// The best `k` survivors seen so far, best first (indices into the
/// survivors, with their quick keys). With a small `k` (the usual fallback
/// list) a new survivor usually costs one float comparison against the
/// current k-th: the quick key is the first component of the full order, so
/// a strictly larger quick key is strictly worse. A large `k` (a caller asking
/// for hundreds of fallbacks) would make insertion quadratic, so then
/// everything is kept and selected once at the end instead.
pub(crate) struct TopK {
    k: usize,
    small: bool,
    items: Vec<(usize, f64)>,
    /// Quick key of the current k-th (infinite until full).
    worst: f64,
}

/// Above this `k`, `TopK` selects at the end instead of inserting.
pub(crate) const SMALL_K: usize = 32;

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
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
    pub(crate) fn offer(&mut self, i: usize, quick: f64, cmp: impl Fn(usize, usize) -> Ordering) {
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
    pub(crate) fn finish(&mut self, cmp: impl Fn(usize, usize) -> Ordering) {
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

    pub(crate) fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.items.iter().map(|&(i, _)| i)
    }

    pub(crate) fn first(&self) -> Option<usize> {
        self.items.first().map(|&(i, _)| i)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Quick key of the current k-th (infinite until full): a survivor with
    /// a strictly larger quick key cannot enter.
    pub(crate) fn worst(&self) -> f64 {
        self.worst
    }
}
