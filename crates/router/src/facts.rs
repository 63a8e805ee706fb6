//! What a candidate is and what the router knows about it: [`Candidate`]
//! (one node for the requested model, evaluated at the decision's instant),
//! `Facts` (the same, flattened into the plain numbers the filters and the
//! ranking read), and `Source`, the one interface both walks read rows
//! through (a slice of `Candidate`s or a `CandidateTable`). Also the rules
//! for numbers that are not usable: NaN or negative measurements are
//! "unknown", non-finite or negative knobs fall back.

use serde::Serialize;

use crate::breaker::Admit;
use crate::candidate::{NodeKey, Observed, Offer};
use crate::request::Preferences;

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

/// `if c { a } else { b }` without a branch (bit masks), whatever the
/// values (NaN included).
#[inline(always)]
pub(crate) fn select(c: bool, a: f64, b: f64) -> f64 {
    let mask = 0u64.wrapping_sub(u64::from(c));
    f64::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
}

/// `x`, or `default` when it is NaN or infinite.
pub(crate) fn finite_or(x: f64, default: f64) -> f64 {
    if x.is_finite() { x } else { default }
}

/// A weight or slack: non-finite or negative counts as 0.
pub(crate) fn weight(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

/// A measurement that must be above 0 to mean anything (a speed).
pub(crate) fn positive(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite() && *v > 0.0)
}

/// A measurement that must be at least 0 to mean anything (a time).
pub(crate) fn non_negative(x: Option<f64>) -> Option<f64> {
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
    pub(crate) fn load(&self) -> u32 {
        self.queue_depth.max(self.in_flight)
    }
}

/// Where a decision reads candidates from: both walks (the full scan and
/// the indexed walk) read rows only through this.
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
