//! Per-node circuit breaker.
//!
//! Trust says how much a node deserves traffic over hours; the breaker says
//! whether it can take any *right now*. After `failure_threshold` failures in
//! a row the breaker opens: the node gets nothing for a cooldown. When the
//! cooldown ends it is half-open: exactly one probe request may go; success
//! closes it, failure re-opens it with the cooldown multiplied by `factor`
//! (capped at `max_cooldown_ms`), so a dead node costs the network one request
//! per (growing) cooldown instead of one per job.
//!
//! `allow` is a pure query, so the router can ask it for every candidate; the
//! caller marks the probe as sent (`begin_probe`) only for the node it
//! actually dispatches to. A probe whose outcome is never reported (lost
//! stream, coordinator bug) is forgotten after `probe_timeout_ms`, so a
//! breaker cannot stay half-open and closed to traffic for ever.

use serde::{Deserialize, Serialize};

/// Breaker knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerParams {
    /// Consecutive failures that open a closed breaker. Default 3: one or two
    /// failures are the fallback list's business, three in a row is a node
    /// problem.
    pub failure_threshold: u32,
    /// First cooldown. Default 1 s.
    pub base_cooldown_ms: u64,
    /// Each failed probe multiplies the cooldown by this. Default 2.
    pub factor: u32,
    /// Cooldowns never exceed this. Default 5 min, so a node that comes back
    /// is found within minutes.
    pub max_cooldown_ms: u64,
    /// A sent probe with no reported outcome is given up after this long and
    /// another probe is allowed. Default 30 s.
    pub probe_timeout_ms: u64,
}

impl Default for BreakerParams {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            base_cooldown_ms: 1_000,
            factor: 2,
            max_cooldown_ms: 300_000,
            probe_timeout_ms: 30_000,
        }
    }
}

/// Whether a node may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admit {
    /// Closed: normal traffic.
    Yes,
    /// Half-open: one request may go, as a probe (call `begin_probe` when it
    /// is sent).
    Probe,
    /// Open (or its probe is out): no traffic.
    No,
}

/// The breaker's state at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    /// No traffic until `until_ms`.
    Open {
        until_ms: u64,
    },
    HalfOpen,
}

/// One node's breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breaker {
    pub params: BreakerParams,
    /// Failures since the last success (while closed).
    pub consecutive_failures: u32,
    /// How many times it has opened since it was last closed (the backoff
    /// exponent).
    pub opens: u32,
    /// Set while open or half-open: the end of the current cooldown.
    pub open_until_ms: Option<u64>,
    /// When the outstanding probe was sent, if one is.
    pub probe_sent_ms: Option<u64>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new(BreakerParams::default())
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new(params: BreakerParams) -> Self {
        Self {
            params,
            consecutive_failures: 0,
            opens: 0,
            open_until_ms: None,
            probe_sent_ms: None,
        }
    }

    /// The cooldown after the `opens`-th opening in a row:
    /// `min(max, base * factor^(opens - 1))`, saturating.
    pub fn cooldown_ms(&self, opens: u32) -> u64 {
        let p = &self.params;
        let exp = opens.saturating_sub(1);
        let mul = u64::from(p.factor).saturating_pow(exp);
        p.base_cooldown_ms
            .saturating_mul(mul)
            .min(p.max_cooldown_ms)
    }

    pub fn state(&self, now_ms: u64) -> BreakerState {
        match self.open_until_ms {
            None => BreakerState::Closed,
            Some(until_ms) if now_ms < until_ms => BreakerState::Open { until_ms },
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// May a request go to this node at `now_ms`? Changes nothing.
    pub fn allow(&self, now_ms: u64) -> Admit {
        match self.state(now_ms) {
            BreakerState::Closed => Admit::Yes,
            BreakerState::Open { .. } => Admit::No,
            BreakerState::HalfOpen => match self.probe_sent_ms {
                Some(t) if now_ms.saturating_sub(t) < self.params.probe_timeout_ms => Admit::No,
                _ => Admit::Probe,
            },
        }
    }

    /// The caller sent the probe `allow` admitted. Until its outcome is
    /// recorded (or it times out) no other request is admitted.
    pub fn begin_probe(&mut self, now_ms: u64) {
        if self.state(now_ms) == BreakerState::HalfOpen {
            self.probe_sent_ms = Some(now_ms);
        }
    }

    /// A request succeeded: the node works, so the breaker closes whatever
    /// its state (a late success while open is still evidence of life).
    pub fn record_success(&mut self, _now_ms: u64) {
        self.consecutive_failures = 0;
        self.opens = 0;
        self.open_until_ms = None;
        self.probe_sent_ms = None;
    }

    /// A request failed. Closed: counts towards the threshold. Half-open (the
    /// probe failed): re-opens with a longer cooldown. Open: a straggler from
    /// before it opened; the cooldown is not extended, so the backoff only
    /// grows with failed probes.
    pub fn record_failure(&mut self, now_ms: u64) {
        match self.state(now_ms) {
            BreakerState::Closed => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures >= self.params.failure_threshold.max(1) {
                    self.open(now_ms);
                }
            }
            BreakerState::HalfOpen => self.open(now_ms),
            BreakerState::Open { .. } => {}
        }
    }

    fn open(&mut self, now_ms: u64) {
        self.opens = self.opens.saturating_add(1);
        self.open_until_ms = Some(now_ms.saturating_add(self.cooldown_ms(self.opens)));
        self.probe_sent_ms = None;
        self.consecutive_failures = 0;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn tripped(at: u64) -> Breaker {
        let mut b = Breaker::default();
        for _ in 0..3 {
            assert_eq!(b.allow(at), Admit::Yes);
            b.record_failure(at);
        }
        b
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_resets_the_count() {
        let mut b = Breaker::default();
        b.record_failure(0);
        b.record_failure(0);
        b.record_success(0);
        b.record_failure(0);
        b.record_failure(0);
        assert_eq!(b.state(0), BreakerState::Closed);
        b.record_failure(0);
        assert_eq!(b.state(0), BreakerState::Open { until_ms: 1_000 });
        assert_eq!(b.allow(999), Admit::No);
    }

    #[test]
    fn cooldown_then_one_probe_then_close() {
        let mut b = tripped(0);
        assert_eq!(b.allow(1_000), Admit::Probe);
        assert_eq!(b.allow(1_000), Admit::Probe, "allow is a pure query");
        b.begin_probe(1_000);
        assert_eq!(b.allow(1_001), Admit::No, "only one probe at a time");
        b.record_success(1_500);
        assert_eq!(b.state(1_500), BreakerState::Closed);
        assert_eq!(b.allow(1_500), Admit::Yes);
        assert_eq!(b.opens, 0);
    }

    #[test]
    fn failed_probes_back_off_exponentially_up_to_the_cap() {
        let mut b = tripped(0);
        let mut now = 1_000;
        let mut cooldowns = vec![];
        for _ in 0..12 {
            assert_eq!(b.allow(now), Admit::Probe);
            b.begin_probe(now);
            b.record_failure(now);
            let BreakerState::Open { until_ms } = b.state(now) else {
                panic!("a failed probe re-opens");
            };
            cooldowns.push(until_ms - now);
            assert_eq!(b.allow(until_ms - 1), Admit::No);
            now = until_ms;
        }
        assert_eq!(
            &cooldowns[..6],
            &[2_000, 4_000, 8_000, 16_000, 32_000, 64_000]
        );
        assert_eq!(*cooldowns.last().unwrap(), 300_000);
        // Success closes it and the next trip starts from the base again.
        b.record_success(now);
        let mut b2 = b.clone();
        for _ in 0..3 {
            b2.record_failure(now);
        }
        assert_eq!(
            b2.state(now),
            BreakerState::Open {
                until_ms: now + 1_000
            }
        );
    }

    #[test]
    fn stragglers_while_open_do_not_extend_the_cooldown() {
        let mut b = tripped(0);
        b.record_failure(500);
        assert_eq!(b.state(500), BreakerState::Open { until_ms: 1_000 });
    }

    #[test]
    fn a_lost_probe_times_out() {
        let mut b = tripped(0);
        b.begin_probe(1_000);
        assert_eq!(b.allow(30_999), Admit::No);
        assert_eq!(b.allow(31_000), Admit::Probe);
    }

    #[test]
    fn huge_exponents_saturate() {
        let b = Breaker::default();
        assert_eq!(b.cooldown_ms(u32::MAX), 300_000);
        assert_eq!(b.cooldown_ms(1), 1_000);
        assert_eq!(b.cooldown_ms(0), 1_000);
    }
}
