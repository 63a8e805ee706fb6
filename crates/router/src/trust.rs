//! Per-node trust: evidence that decays with time, turned into a score in
//! [0, 1].
//!
//! The score is a Beta-posterior mean over ordinary evidence (completed jobs
//! and passed spot checks for, failed jobs and late first tokens against)
//! times a penalty for severe evidence (failed spot checks, rejected
//! receipts):
//!
//! ```text
//! score = (prior_good + G) / (prior_good + prior_bad + G + B) / (1 + S)
//! ```
//!
//! Why the penalty is a divisor and not more weight in `B`: a node with a
//! long clean history must still fall below the trust floor after one failed
//! spot check (it returned wrong output; it may be cheating), whatever its
//! record. With the defaults `1 / (1 + 3) = 0.25`, so one failed spot check
//! caps the score at 0.25 < 0.5 (the default floor) no matter what, and it
//! takes both time (severe evidence halves every 48 h) and a good record to
//! climb back: about 3 days for a node that keeps working well, about 6 for
//! one that stays idle and falls back to the prior.
//!
//! All evidence decays exponentially (it halves every `half_life_ms`), so a
//! node's past does not dominate its present, and old sins are eventually
//! forgiven. Time is an argument; a `now_ms` earlier than the last update is
//! treated as no time passing.

use serde::{Deserialize, Serialize};

/// One piece of evidence about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// A job finished with a valid receipt.
    Completed,
    /// A job failed on the node's side (refusal after accepting, dropped
    /// stream, timeout).
    Failed,
    /// The first token came later than the node's advert promised. Recorded
    /// in addition to `Completed`/`Failed`.
    SlowFirstToken,
    /// The node's receipt did not check out (bad signature, wrong counts or
    /// digests): weighs heavily.
    RejectedReceipt,
    /// A re-run of a deterministic job on a trusted node matched.
    SpotCheckPassed,
    /// A re-run did not match: weighs heaviest.
    SpotCheckFailed,
}

/// Knobs of the trust score. The defaults are starting points for the
/// simulator to tune, chosen so the properties in the module docs hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrustParams {
    /// Ordinary evidence halves every this long. Default 24 h: yesterday's
    /// behaviour counts half as much as today's.
    pub half_life_ms: u64,
    /// Severe evidence (failed spot checks, rejected receipts) halves every
    /// this long. Default 48 h: slower than ordinary evidence, so a caught
    /// node cannot wash its record with a burst of cheap jobs.
    pub severe_half_life_ms: u64,
    /// Pseudo-count of good evidence before any is seen. Default 2.
    pub prior_good: f64,
    /// Pseudo-count of bad evidence before any is seen. Default 1, so a new
    /// node starts at 2/3: above the 0.5 floor (it can get traffic) and
    /// below any node with a real record.
    pub prior_bad: f64,
    /// Good evidence per completed job. Default 1.
    pub weight_completed: f64,
    /// Bad evidence per failed job. Default 1: a node failing half its jobs
    /// sits at the floor.
    pub weight_failed: f64,
    /// Bad evidence per late first token. Default 0.5: late is not broken.
    pub weight_slow_first_token: f64,
    /// Good evidence per passed spot check. Default 3: a spot check is
    /// stronger evidence of honesty than a job finishing.
    pub weight_spot_passed: f64,
    /// Severe-penalty units per failed spot check. Default 3 (caps the score
    /// at 1/4).
    pub penalty_spot_failed: f64,
    /// Severe-penalty units per rejected receipt. Default 1.5 (caps the score
    /// at 0.4: a receipt can be rejected for a bug, not only for cheating).
    pub penalty_rejected_receipt: f64,
    /// A node is on probation until it has completed this many jobs.
    /// Default 20.
    pub probation_min_jobs: u64,
    /// ... and until it is at least this old. Default 1 h, so a node cannot
    /// race out of probation with a burst of tiny jobs.
    pub probation_min_age_ms: u64,
}

impl Default for TrustParams {
    fn default() -> Self {
        Self {
            half_life_ms: 24 * 3_600_000,
            severe_half_life_ms: 48 * 3_600_000,
            prior_good: 2.0,
            prior_bad: 1.0,
            weight_completed: 1.0,
            weight_failed: 1.0,
            weight_slow_first_token: 0.5,
            weight_spot_passed: 3.0,
            penalty_spot_failed: 3.0,
            penalty_rejected_receipt: 1.5,
            probation_min_jobs: 20,
            probation_min_age_ms: 3_600_000,
        }
    }
}

/// Evidence about one node, each counter as it stood at `updated_ms`
/// (decayed lazily: reading at a later time applies the decay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trust {
    /// When the node was first seen (starts the probation clock).
    pub first_seen_ms: u64,
    /// When the counters were last brought up to date.
    pub updated_ms: u64,
    pub completed: f64,
    pub failed: f64,
    pub slow_first_token: f64,
    pub spot_passed: f64,
    pub spot_failed: f64,
    pub rejected_receipts: f64,
    /// Completed jobs ever (not decayed): the probation count.
    pub completed_total: u64,
}

/// `2^(-dt / half_life)`; a zero half-life forgets at once.
fn decay_factor(dt_ms: u64, half_life_ms: u64) -> f64 {
    if dt_ms == 0 {
        return 1.0;
    }
    if half_life_ms == 0 {
        return 0.0;
    }
    (-(dt_ms as f64) / half_life_ms as f64).exp2()
}

impl Trust {
    /// A node first seen at `now_ms`, with no evidence (score = the prior).
    pub fn new(now_ms: u64) -> Self {
        Self {
            first_seen_ms: now_ms,
            updated_ms: now_ms,
            completed: 0.0,
            failed: 0.0,
            slow_first_token: 0.0,
            spot_passed: 0.0,
            spot_failed: 0.0,
            rejected_receipts: 0.0,
            completed_total: 0,
        }
    }

    fn decay_to(&mut self, now_ms: u64, p: &TrustParams) {
        let dt = now_ms.saturating_sub(self.updated_ms);
        if dt == 0 {
            return;
        }
        let f = decay_factor(dt, p.half_life_ms);
        let s = decay_factor(dt, p.severe_half_life_ms);
        self.completed *= f;
        self.failed *= f;
        self.slow_first_token *= f;
        self.spot_passed *= f;
        self.spot_failed *= s;
        self.rejected_receipts *= s;
        self.updated_ms = now_ms;
    }

    /// Adds one piece of evidence observed at `now_ms`.
    pub fn record(&mut self, evidence: Evidence, now_ms: u64, p: &TrustParams) {
        self.decay_to(now_ms, p);
        match evidence {
            Evidence::Completed => {
                self.completed += 1.0;
                self.completed_total = self.completed_total.saturating_add(1);
            }
            Evidence::Failed => self.failed += 1.0,
            Evidence::SlowFirstToken => self.slow_first_token += 1.0,
            Evidence::RejectedReceipt => self.rejected_receipts += 1.0,
            Evidence::SpotCheckPassed => self.spot_passed += 1.0,
            Evidence::SpotCheckFailed => self.spot_failed += 1.0,
        }
    }

    /// The trust score at `now_ms`, in [0, 1] (0 if the parameters make it
    /// undefined, e.g. negative priors: an unscoreable node is not trusted).
    pub fn score(&self, now_ms: u64, p: &TrustParams) -> f64 {
        let dt = now_ms.saturating_sub(self.updated_ms);
        let f = decay_factor(dt, p.half_life_ms);
        let s = decay_factor(dt, p.severe_half_life_ms);
        let good = p.prior_good
            + f * (p.weight_completed * self.completed + p.weight_spot_passed * self.spot_passed);
        let bad = p.prior_bad
            + f * (p.weight_failed * self.failed
                + p.weight_slow_first_token * self.slow_first_token);
        let severe = s
            * (p.penalty_spot_failed * self.spot_failed
                + p.penalty_rejected_receipt * self.rejected_receipts);
        let score = good / (good + bad) / (1.0 + severe);
        if score.is_finite() {
            score.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// New nodes are on probation (a capped share of first picks, see
    /// `RouteParams::probation_share`) until they have both completed
    /// `probation_min_jobs` jobs and been known for `probation_min_age_ms`.
    pub fn is_probation(&self, now_ms: u64, p: &TrustParams) -> bool {
        self.completed_total < p.probation_min_jobs
            || now_ms.saturating_sub(self.first_seen_ms) < p.probation_min_age_ms
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const H: u64 = 3_600_000;

    #[test]
    fn new_node_is_on_probation_with_the_neutral_prior() {
        let p = TrustParams::default();
        let t = Trust::new(0);
        assert!((t.score(0, &p) - 2.0 / 3.0).abs() < 1e-12);
        assert!(t.score(0, &p) > 0.5, "prior clears the default floor");
        assert!(t.is_probation(0, &p));
    }

    #[test]
    fn probation_needs_both_jobs_and_age() {
        let p = TrustParams::default();
        let mut t = Trust::new(0);
        for i in 0..20 {
            t.record(Evidence::Completed, i, &p);
        }
        assert!(t.is_probation(20, &p), "too young");
        assert!(!t.is_probation(H, &p));
        let mut young = Trust::new(0);
        young.record(Evidence::Completed, 0, &p);
        assert!(young.is_probation(10 * H, &p), "too few jobs");
    }

    #[test]
    fn rises_with_good_jobs() {
        let p = TrustParams::default();
        let mut t = Trust::new(0);
        let mut last = t.score(0, &p);
        for i in 1..=50 {
            t.record(Evidence::Completed, i * 1000, &p);
            let s = t.score(i * 1000, &p);
            assert!(s > last);
            last = s;
        }
        assert!(last > 0.95, "{last}");
    }

    #[test]
    fn failures_pull_it_down() {
        let p = TrustParams::default();
        let mut t = Trust::new(0);
        for _ in 0..10 {
            t.record(Evidence::Completed, 0, &p);
            t.record(Evidence::Failed, 0, &p);
            t.record(Evidence::Failed, 0, &p);
        }
        assert!(t.score(0, &p) < 0.5);
        let mut slow = Trust::new(0);
        slow.record(Evidence::Completed, 0, &p);
        let before = slow.score(0, &p);
        slow.record(Evidence::SlowFirstToken, 0, &p);
        assert!(slow.score(0, &p) < before);
    }

    #[test]
    fn one_failed_spot_check_drops_below_the_floor_whatever_the_history() {
        let p = TrustParams::default();
        let mut t = Trust::new(0);
        for i in 0..10_000 {
            t.record(Evidence::Completed, i, &p);
        }
        t.record(Evidence::SpotCheckPassed, 10_000, &p);
        assert!(t.score(10_000, &p) > 0.99);
        t.record(Evidence::SpotCheckFailed, 10_000, &p);
        let s = t.score(10_000, &p);
        assert!(s <= 0.25 + 1e-12, "{s}");
        // A day of more good work is not enough to clear it...
        for i in 0..1000u64 {
            t.record(Evidence::Completed, 10_000 + i * 86, &p);
        }
        assert!(t.score(24 * H, &p) < 0.5);
        // ... but it decays away with time: recovered within a week even idle.
        assert!(
            t.score(7 * 24 * H, &p) >= 0.5,
            "{}",
            t.score(7 * 24 * H, &p)
        );
    }

    #[test]
    fn a_rejected_receipt_also_drops_below_the_floor() {
        let p = TrustParams::default();
        let mut t = Trust::new(0);
        for _ in 0..1000 {
            t.record(Evidence::Completed, 0, &p);
        }
        t.record(Evidence::RejectedReceipt, 0, &p);
        assert!(t.score(0, &p) < 0.5);
    }

    #[test]
    fn evidence_decays_with_the_half_life() {
        let p = TrustParams::default();
        let mut t = Trust::new(0);
        for _ in 0..9 {
            t.record(Evidence::Failed, 0, &p);
        }
        // good = 2, bad = 1 + 9 = 10.
        assert!((t.score(0, &p) - 2.0 / 12.0).abs() < 1e-12);
        // One half-life later: bad = 1 + 4.5.
        assert!((t.score(24 * H, &p) - 2.0 / 7.5).abs() < 1e-12);
        // Long after: back to the prior.
        assert!((t.score(1000 * 24 * H, &p) - 2.0 / 3.0).abs() < 1e-9);
        // Reading does not change the record; recording applies the decay.
        let mut u = t.clone();
        u.record(Evidence::Completed, 24 * H, &p);
        assert!((u.failed - 4.5).abs() < 1e-12);
        assert_eq!(u.updated_ms, 24 * H);
    }

    #[test]
    fn score_stays_in_unit_interval_and_clock_steps_back_are_harmless() {
        let p = TrustParams::default();
        let mut t = Trust::new(1000);
        t.record(Evidence::Completed, 500, &p);
        assert_eq!(t.updated_ms, 1000);
        assert!((0.0..=1.0).contains(&t.score(0, &p)));
        let bad = TrustParams {
            prior_good: -1.0,
            prior_bad: 1.0,
            ..TrustParams::default()
        };
        assert_eq!(Trust::new(0).score(0, &bad), 0.0);
    }
}
