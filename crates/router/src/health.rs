//! Everything the coordinator (or the simulator) keeps per node for routing,
//! and the one place that turns it into a `Candidate` at a given instant.

use serde::{Deserialize, Serialize};

use crate::breaker::{Breaker, BreakerParams};
use crate::candidate::{Observed, Offer};
use crate::facts::Candidate;
use crate::trust::{Trust, TrustParams};

/// Per-node routing state: measurements, trust evidence, breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHealth {
    pub observed: Observed,
    pub trust: Trust,
    pub breaker: Breaker,
}

impl NodeHealth {
    /// A node first seen at `now_ms`: no measurements, the trust prior, on
    /// probation, breaker closed.
    pub fn new(now_ms: u64, breaker: BreakerParams) -> Self {
        Self {
            observed: Observed::default(),
            trust: Trust::new(now_ms),
            breaker: Breaker::new(breaker),
        }
    }

    /// Brings time-decayed measurements up to `now_ms`; call before
    /// `candidate` (it needs `&self` so many candidates can be borrowed at
    /// once).
    pub fn decay(&mut self, now_ms: u64) {
        self.observed.decay(now_ms);
    }

    /// This node as a routing candidate for `offer` at `now_ms`.
    pub fn candidate<'a>(
        &'a self,
        offer: &'a Offer,
        now_ms: u64,
        p: &TrustParams,
    ) -> Candidate<'a> {
        Candidate {
            offer,
            observed: &self.observed,
            trust: self.trust.score(now_ms, p),
            probation: self.trust.is_probation(now_ms, p),
            breaker: self.breaker.allow(now_ms),
        }
    }
}
