//! The block index of a `CandidateTable`: the rows grouped into blocks of
//! [`BLOCK`], each with a summary from which a routing decision computes a
//! *lower bound* of every row's price, predicted time, trust term and sort
//! key, and whether any row of the block can pass the request's filters.
//!
//! `route_table` visits blocks best bound first and stops as soon as no
//! unvisited block can hold a row that would change the answer (the minimum
//! price, the minimum time, the best few by the ranking's order), so a
//! decision reads a few blocks instead of every row. The answer is exactly
//! the full scan's (tested against `route`): the bounds are only ever
//! compared, never used as values.
//!
//! Correctness does not depend on how rows are grouped, only speed does:
//! a summary is recomputed from its rows whenever one of them changes, so it
//! is always exact. The grouping is rebuilt (rows sorted into price strata,
//! each sorted by a reference completion time, then cut into blocks) when
//! enough rows have been added or have moved since the last rebuild; until
//! then new rows go into the last block.

use crate::breaker::Admit;
use crate::facts::Facts;

/// Rows per block (one `u64` of probation bits).
pub(crate) const BLOCK: usize = 64;

/// A row whose measured seconds per token is above this is "exotic": its
/// predicted time may overflow to infinity, where the bounds argument (all
/// terms finite) does not hold, so its block is always scanned.
pub(crate) const HUGE_INV_TPS: f64 = 1e200;

/// Completion lengths (output tokens) at which a block stores the best
/// completion time of its fully measured rows; a request uses the largest
/// one not above its `max_output_tokens` (a row's time only grows with it).
pub(crate) const LADDER: [u32; 20] = [
    0, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 8192, 16384,
    65536,
];

/// What a decision needs to know about one block without reading its rows.
///
/// Rows are "measured" when RTT, time to first token and a speed (measured,
/// else advertised) are all known: their predicted time does not depend on
/// the request's `RouteParams` defaults, so the block keeps the exact best
/// `rtt + ttft + out * 1000 / speed` of them at each `LADDER` length. For the
/// other rows it keeps minima field by field, and "unknown" flags saying
/// that some row will use the request's default for that field.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    pub(crate) min_price_in: u64,
    pub(crate) min_price_out: u64,
    pub(crate) max_context: u32,
    /// Largest trust (NaN ignored); `-inf` if none.
    pub(crate) max_trust: f64,
    /// Measured rows: best `(rtt + ttft) + LADDER[j] * 1000 * inv_tps`,
    /// with the advertised aggregate speed as the speed where none was
    /// measured (a request's share is never more); `+inf` if none.
    pub(crate) measured_time: [f64; LADDER.len()],
    /// Measured rows: smallest seconds per token (as above).
    pub(crate) measured_inv_tps: f64,
    /// Some row is not measured; the fields below are over those rows.
    pub(crate) any_other: bool,
    /// Smallest measured RTT; `+inf` if none.
    pub(crate) min_rtt: f64,
    pub(crate) unknown_rtt: bool,
    /// Smallest measured time to first token; `+inf` if none.
    pub(crate) min_ttft: f64,
    pub(crate) unknown_ttft: bool,
    /// Smallest seconds per token, measured or advertised; `+inf` if none.
    pub(crate) min_inv_tps: f64,
    pub(crate) unknown_tps: bool,
    /// Some row is not `Admit::No`.
    pub(crate) admits: bool,
    /// Some row's numbers are outside the range the bounds argument covers.
    pub(crate) exotic: bool,
    /// Bit `i`: the block's `i`-th row is on probation.
    pub(crate) probation: u64,
}

impl Summary {
    const EMPTY: Summary = Summary {
        min_price_in: u64::MAX,
        min_price_out: u64::MAX,
        max_context: 0,
        max_trust: f64::NEG_INFINITY,
        measured_time: [f64::INFINITY; LADDER.len()],
        measured_inv_tps: f64::INFINITY,
        any_other: false,
        min_rtt: f64::INFINITY,
        unknown_rtt: false,
        min_ttft: f64::INFINITY,
        unknown_ttft: false,
        min_inv_tps: f64::INFINITY,
        unknown_tps: false,
        admits: false,
        exotic: false,
        probation: 0,
    };

    fn add(&mut self, bit: usize, f: &Facts) {
        self.min_price_in = self.min_price_in.min(f.price_in);
        self.min_price_out = self.min_price_out.min(f.price_out);
        self.max_context = self.max_context.max(f.context_length);
        if f.trust > self.max_trust {
            self.max_trust = f.trust;
        }
        // The same "known" tests as `Predictor::predict`.
        let inv = if f.inv_tps > 0.0 {
            Some(f.inv_tps)
        } else if f.inv_advertised_tps > 0.0 {
            Some(f.inv_advertised_tps)
        } else {
            None
        };
        // Stored measurements are finite by construction (`Facts::set_state`);
        // anything else is read rather than bounded.
        self.exotic |= f.rtt_ms.is_infinite()
            || f.ttft_ms.is_infinite()
            || inv.is_some_and(|x| x.is_nan() || x > HUGE_INV_TPS);
        match inv {
            Some(inv) if f.rtt_ms >= 0.0 && f.ttft_ms >= 0.0 => {
                let first_token = f.rtt_ms + f.ttft_ms;
                for (t, &out) in self.measured_time.iter_mut().zip(&LADDER) {
                    *t = t.min(first_token + f64::from(out) * 1000.0 * inv);
                }
                self.measured_inv_tps = self.measured_inv_tps.min(inv);
            }
            _ => {
                self.any_other = true;
                if f.rtt_ms >= 0.0 {
                    self.min_rtt = self.min_rtt.min(f.rtt_ms);
                } else {
                    self.unknown_rtt = true;
                }
                if f.ttft_ms >= 0.0 {
                    self.min_ttft = self.min_ttft.min(f.ttft_ms);
                } else {
                    self.unknown_ttft = true;
                }
                match inv {
                    Some(inv) => self.min_inv_tps = self.min_inv_tps.min(inv),
                    None => self.unknown_tps = true,
                }
            }
        }
        self.admits |= f.admit != Admit::No;
        if f.probation {
            self.probation |= 1u64 << (bit % BLOCK);
        }
    }
}

/// Sort key for the price strata: the price of a request with four prompt
/// tokens per completion token (a typical chat request).
fn price_key(f: &Facts) -> u64 {
    f.price_in.saturating_mul(4).saturating_add(f.price_out)
}

/// Sort key within a stratum: a rough completion time of a 256-token answer
/// with the default `RouteParams` (only for grouping; never for answers).
fn time_key(f: &Facts) -> f64 {
    let rtt = if f.rtt_ms >= 0.0 { f.rtt_ms } else { 100.0 };
    let ttft = if f.ttft_ms >= 0.0 { f.ttft_ms } else { 500.0 };
    let inv = if f.inv_tps > 0.0 {
        f.inv_tps
    } else if f.inv_advertised_tps > 0.0 {
        f.inv_advertised_tps
    } else {
        1.0 / 20.0
    };
    let t = rtt + ttft + 256_000.0 * inv;
    if t.is_nan() { f64::INFINITY } else { t }
}

/// Whether a changed row has moved enough to count towards a rebuild.
fn moved(old: &Facts, new: &Facts) -> bool {
    if price_key(old) != price_key(new) {
        return true;
    }
    let (a, b) = (time_key(old), time_key(new));
    !(b <= 2.0 * a && a <= 2.0 * b)
}

/// The block structure over a table's rows; see the module docs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    /// Row numbers in block order: block `b` is `perm[b * BLOCK..]`, at most
    /// `BLOCK` of them.
    pub(crate) perm: Vec<u32>,
    /// Row number -> position in `perm`.
    slot: Vec<u32>,
    pub(crate) blocks: Vec<Summary>,
    /// Rows added or moved since the last rebuild.
    dirty: usize,
}

impl Index {
    /// Whether the index describes exactly `rows` rows (always, unless a
    /// bug; the caller then falls back to the full scan).
    pub(crate) fn covers(&self, rows: usize) -> bool {
        self.perm.len() == rows
            && self.slot.len() == rows
            && self.blocks.len() == rows.div_ceil(BLOCK)
    }

    /// The rows of block `b`.
    pub(crate) fn rows(&self, b: usize) -> &[u32] {
        let start = b.saturating_mul(BLOCK).min(self.perm.len());
        let end = start.saturating_add(BLOCK).min(self.perm.len());
        self.perm.get(start..end).unwrap_or(&[])
    }

    fn summarize(&mut self, facts: &[Facts], b: usize) {
        let mut s = Summary::EMPTY;
        for (bit, &r) in self.rows(b).iter().enumerate() {
            if let Some(f) = facts.get(r as usize) {
                s.add(bit, f);
            }
        }
        if let Some(slot) = self.blocks.get_mut(b) {
            *slot = s;
        }
    }

    /// Row `facts.len() - 1` was just appended.
    pub(crate) fn push(&mut self, facts: &[Facts]) {
        let row = facts.len().saturating_sub(1);
        let pos = self.perm.len();
        self.perm.push(u32::try_from(row).unwrap_or(u32::MAX));
        self.slot.push(u32::try_from(pos).unwrap_or(u32::MAX));
        let b = pos / BLOCK;
        if self.blocks.len() <= b {
            self.blocks.push(Summary::EMPTY);
        }
        self.summarize(facts, b);
        self.dirty = self.dirty.saturating_add(1);
        self.maybe_rebuild(facts);
    }

    /// Row `row` changed from `old` to what `facts` now holds.
    pub(crate) fn changed(&mut self, facts: &[Facts], row: usize, old: &Facts) {
        let Some(&pos) = self.slot.get(row) else {
            return;
        };
        self.summarize(facts, pos as usize / BLOCK);
        if facts.get(row).is_some_and(|new| moved(old, new)) {
            self.dirty = self.dirty.saturating_add(1);
            self.maybe_rebuild(facts);
        }
    }

    /// Row `row` was removed with `swap_remove` (the last row, if another,
    /// now has number `row`); `facts` is the table after the removal.
    pub(crate) fn remove(&mut self, facts: &[Facts], row: usize) {
        let last = facts.len();
        let Some(&p) = self.slot.get(row) else {
            return;
        };
        let Some(q) = self.perm.len().checked_sub(1) else {
            return;
        };
        let p = p as usize;
        // Take `row` out of `perm`: the last position's row fills its place.
        if let Some(&moved_row) = self.perm.get(q) {
            if let Some(x) = self.perm.get_mut(p) {
                *x = moved_row;
            }
            if let Some(s) = self.slot.get_mut(moved_row as usize) {
                *s = u32::try_from(p).unwrap_or(u32::MAX);
            }
        }
        self.perm.pop();
        // Row `last` is now called `row`.
        if row != last
            && let Some(&pos) = self.slot.get(last)
        {
            if let Some(x) = self.perm.get_mut(pos as usize) {
                *x = u32::try_from(row).unwrap_or(u32::MAX);
            }
            if let Some(s) = self.slot.get_mut(row) {
                *s = pos;
            }
        }
        self.slot.truncate(last);
        self.blocks.truncate(self.perm.len().div_ceil(BLOCK));
        if p < self.perm.len() {
            self.summarize(facts, p / BLOCK);
        }
        if let Some(b) = self.perm.len().checked_sub(1) {
            self.summarize(facts, b / BLOCK);
        }
        self.dirty = self.dirty.saturating_add(1);
        self.maybe_rebuild(facts);
    }

    fn maybe_rebuild(&mut self, facts: &[Facts]) {
        if self.dirty > facts.len() / 16 + BLOCK / 4 {
            self.rebuild(facts);
        }
    }

    /// Regroups every row: price strata (about as many as there are blocks
    /// per stratum), each sorted by `time_key`, cut into blocks.
    pub(crate) fn rebuild(&mut self, facts: &[Facts]) {
        let n = facts.len();
        let mut rows: Vec<(u64, u32)> = facts
            .iter()
            .enumerate()
            .map(|(i, f)| (price_key(f), u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        rows.sort_unstable();
        let blocks = n.div_ceil(BLOCK);
        let strata = (blocks as f64).sqrt().round().max(1.0) as usize;
        let per = blocks.div_ceil(strata).max(1) * BLOCK;
        let mut keyed: Vec<(f64, u32)> = Vec::with_capacity(per.min(n));
        self.perm.clear();
        for stratum in rows.chunks(per) {
            keyed.clear();
            keyed.extend(stratum.iter().map(|&(_, r)| {
                let k = facts.get(r as usize).map_or(f64::INFINITY, time_key);
                (k, r)
            }));
            keyed.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            self.perm.extend(keyed.iter().map(|&(_, r)| r));
        }
        self.slot.clear();
        self.slot.resize(n, 0);
        for (pos, &r) in self.perm.iter().enumerate() {
            if let Some(s) = self.slot.get_mut(r as usize) {
                *s = u32::try_from(pos).unwrap_or(u32::MAX);
            }
        }
        self.blocks.clear();
        self.blocks.resize(blocks, Summary::EMPTY);
        for b in 0..blocks {
            self.summarize(facts, b);
        }
        self.dirty = 0;
    }
}
