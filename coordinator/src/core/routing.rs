//! The coordinator's routing state, in one type: every node's health
//! (measurements, trust evidence, circuit breaker) and the routing index
//! built from it (one [`CandidateTable`] per model and kind), behind one
//! lock, so the two can never disagree.
//!
//! Every change goes through a method here: an accepted advert
//! ([`Routing::on_advert`]), an RTT sample ([`Routing::on_rtt`]), a job's
//! outcome or spot-check verdict ([`Routing::record`]), a breaker probe
//! ([`Routing::begin_probe`]), a job sent or ended ([`Routing::begin_job`]
//! and its [`InFlight`] guard: the coordinator's own jobs on a node count
//! towards its load at once, where the node's advert lags by seconds), an
//! expiry ([`Routing::remove`]) and the
//! once-a-second refresh that applies time ([`Routing::refresh`]: trust and
//! measurement decay, breaker cool-downs). Each updates the health and the
//! node's table rows under the same lock.
//!
//! What routing sees lags the truth by at most the refresh interval for
//! time-driven changes, and not at all for events. An advert that expired
//! since the last prune can still come out of a table; dispatch checks
//! liveness in the registry before using a node.
//!
//! A node's health outlives its advert (an expired node that comes back
//! keeps its history, so leaving and rejoining does not wash its trust),
//! for [`HEALTH_TTL_MS`]; after that, and beyond [`MAX_HEALTH`] entries
//! (throwaway identities), the longest-gone nodes are forgotten.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand::rngs::StdRng;
use sharenet_proto::{Advert, ModelKind};
use sharenet_router::{
    BreakerParams, CandidateTable, Evidence, NoCandidate, NodeHealth, NodeKey, Offer, Request,
    RouteParams, TrustParams, Weights, route_table,
};

use crate::core::sync::lock;

/// What a node did, as evidence for its health.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Refused, or failed before the first token or mid-stream.
    Failed,
    /// Served: time to first token, tokens, total time.
    Served {
        ttft_ms: f64,
        tokens: u32,
        duration_ms: f64,
    },
    /// Its receipt did not check out.
    RejectedReceipt,
    /// A spot check of its output agreed with the reference.
    SpotCheckPassed,
    /// A spot check caught it serving something else than it advertises.
    SpotCheckFailed,
}

/// How long the health of a node whose advert expired is kept.
pub const HEALTH_TTL_MS: u64 = 24 * 3600 * 1000;
/// Health entries kept at most (twice the registry's node cap).
pub const MAX_HEALTH: usize = 2 * crate::core::registry::MAX_NODES;

/// A table's key: the model id and whether it embeds.
type TableKey = (String, bool);

fn key_of(model: &str, kind: ModelKind) -> TableKey {
    (model.to_owned(), kind == ModelKind::Embedding)
}

struct Inner {
    health: HashMap<NodeKey, NodeHealth>,
    tables: HashMap<TableKey, CandidateTable>,
    /// The tables each node has a row in.
    rows: HashMap<NodeKey, Vec<TableKey>>,
    /// When each node without rows lost them (its advert expired).
    gone_at: HashMap<NodeKey, u64>,
    /// The routing decision's randomness (power of two choices, probation).
    rng: StdRng,
}

impl Inner {
    fn health(&mut self, node: NodeKey, now_ms: u64) -> &mut NodeHealth {
        self.health
            .entry(node)
            .or_insert_with(|| NodeHealth::new(now_ms, BreakerParams::default()))
    }

    /// Rewrites the node's rows from its health at `now_ms`.
    fn sync_rows(&mut self, node: &NodeKey, now_ms: u64, tp: &TrustParams) {
        let (Some(keys), Some(h)) = (self.rows.get(node), self.health.get(node)) else {
            return;
        };
        let trust = h.trust.score(now_ms, tp);
        let probation = h.trust.is_probation(now_ms, tp);
        let admit = h.breaker.allow(now_ms);
        for k in keys {
            if let Some(t) = self.tables.get_mut(k) {
                t.update_state(node, &h.observed, trust, probation, admit);
            }
        }
    }

    fn drop_rows(&mut self, node: &NodeKey, keep: &[TableKey]) {
        for k in self.rows.get(node).into_iter().flatten() {
            if keep.contains(k) {
                continue;
            }
            if let Some(t) = self.tables.get_mut(k) {
                t.remove(node);
                if t.is_empty() {
                    self.tables.remove(k);
                }
            }
        }
    }
}

/// One of this coordinator's jobs on a node (see [`Routing::begin_job`]).
/// Dropped without [`InFlight::served`] (a failure, a refusal, a client
/// that hung up), it just stops counting.
pub struct InFlight {
    routing: Arc<Routing>,
    node: NodeKey,
    ended: bool,
}

impl InFlight {
    /// The job was served: its measurements go in and it stops counting.
    pub fn served(mut self, ttft_ms: f64, tokens: u32, duration_ms: f64, now_ms: u64) {
        self.ended = true;
        self.routing.record(
            self.node,
            Outcome::Served {
                ttft_ms,
                tokens,
                duration_ms,
            },
            now_ms,
        );
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.ended {
            self.routing
                .end_job(&self.node, crate::core::clock::now_ms());
        }
    }
}

/// See the module docs.
pub struct Routing {
    inner: Mutex<Inner>,
    trust: TrustParams,
    /// A first token later than this is `SlowFirstToken` evidence (half the
    /// first-token timeout: late is not broken, but it counts).
    slow_first_token_ms: f64,
}

impl Routing {
    /// Empty routing state; `seed` seeds the decisions' randomness.
    pub fn new(seed: u64, slow_first_token_ms: f64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                health: HashMap::new(),
                tables: HashMap::new(),
                rows: HashMap::new(),
                gone_at: HashMap::new(),
                rng: StdRng::seed_from_u64(seed),
            }),
            trust: TrustParams::default(),
            slow_first_token_ms,
        }
    }

    /// A node's new (verified, live) advert: its rows for the models it
    /// serves now, and none for those it dropped.
    pub fn on_advert(&self, advert: &Advert, now_ms: u64) {
        let mut inner = lock(&self.inner);
        // Each model is a row under the node's own id and, when it has
        // one, under its canonical name: the market across nodes.
        let names = |m: &sharenet_proto::ModelOffer| {
            let canonical = (!m.canonical.is_empty() && m.canonical != m.id)
                .then(|| key_of(&m.canonical, m.kind));
            std::iter::once(key_of(&m.id, m.kind)).chain(canonical)
        };
        let new: Vec<TableKey> = advert.models.iter().flat_map(names).collect();
        inner.drop_rows(&advert.node, &new);
        let h = inner.health(advert.node, now_ms);
        h.decay(now_ms);
        let h = h.clone();
        for m in &advert.models {
            let offer = Offer::from_advert(advert, m);
            for key in names(m) {
                inner.tables.entry(key).or_default().upsert(&h.candidate(
                    &offer,
                    now_ms,
                    &self.trust,
                ));
            }
        }
        inner.rows.insert(advert.node, new);
        inner.gone_at.remove(&advert.node);
    }

    /// A ping round trip to the node.
    pub fn on_rtt(&self, node: NodeKey, rtt_ms: f64, now_ms: u64) {
        let mut inner = lock(&self.inner);
        inner.health(node, now_ms).observed.record_rtt(rtt_ms);
        inner.sync_rows(&node, now_ms, &self.trust);
    }

    /// Evidence from a job or a spot check.
    pub fn record(&self, node: NodeKey, outcome: Outcome, now_ms: u64) {
        let p = &self.trust;
        let mut inner = lock(&self.inner);
        let h = inner.health(node, now_ms);
        match outcome {
            Outcome::Failed => {
                h.breaker.record_failure(now_ms);
                h.trust.record(Evidence::Failed, now_ms, p);
            }
            Outcome::Served {
                ttft_ms,
                tokens,
                duration_ms,
            } => {
                h.breaker.record_success(now_ms);
                h.trust.record(Evidence::Completed, now_ms, p);
                if ttft_ms > self.slow_first_token_ms {
                    h.trust.record(Evidence::SlowFirstToken, now_ms, p);
                }
                h.observed.record_job(ttft_ms, tokens, duration_ms, now_ms);
            }
            Outcome::RejectedReceipt => {
                h.breaker.record_failure(now_ms);
                h.trust.record(Evidence::RejectedReceipt, now_ms, p);
            }
            Outcome::SpotCheckPassed => h.trust.record(Evidence::SpotCheckPassed, now_ms, p),
            Outcome::SpotCheckFailed => h.trust.record(Evidence::SpotCheckFailed, now_ms, p),
        }
        inner.sync_rows(&node, now_ms, p);
    }

    /// A job sent to `node`: it counts towards the node's load until the
    /// returned guard is served ([`InFlight::served`]) or dropped.
    pub fn begin_job(self: &Arc<Self>, node: NodeKey, now_ms: u64) -> InFlight {
        let mut inner = lock(&self.inner);
        inner.health(node, now_ms).observed.begin_job(now_ms);
        inner.sync_rows(&node, now_ms, &self.trust);
        InFlight {
            routing: self.clone(),
            node,
            ended: false,
        }
    }

    fn end_job(&self, node: &NodeKey, now_ms: u64) {
        let mut inner = lock(&self.inner);
        if let Some(h) = inner.health.get_mut(node) {
            h.observed.abandon_job(now_ms);
        }
        inner.sync_rows(node, now_ms, &self.trust);
    }

    /// A node whose breaker is half-open gets one probe: marks it taken,
    /// so concurrent requests do not all probe at once.
    pub fn begin_probe(&self, node: NodeKey, now_ms: u64) {
        let mut inner = lock(&self.inner);
        let Some(h) = inner.health.get_mut(&node) else {
            return;
        };
        if h.breaker.allow(now_ms) == sharenet_router::Admit::Probe {
            h.breaker.begin_probe(now_ms);
            inner.sync_rows(&node, now_ms, &self.trust);
        }
    }

    /// Drops the node's rows (its advert expired at `now_ms`); its health
    /// stays for [`HEALTH_TTL_MS`].
    pub fn remove(&self, node: &NodeKey, now_ms: u64) {
        let mut inner = lock(&self.inner);
        inner.drop_rows(node, &[]);
        if inner.rows.remove(node).is_some() {
            inner.gone_at.insert(*node, now_ms);
        }
    }

    /// Applies time to every node (decay, breaker cool-downs) and forgets
    /// nodes gone too long (see the module docs); once a second.
    pub fn refresh(&self, now_ms: u64) {
        let mut inner = lock(&self.inner);
        let Inner {
            health, gone_at, ..
        } = &mut *inner;
        gone_at.retain(|node, at| {
            let keep = now_ms.saturating_sub(*at) < HEALTH_TTL_MS;
            if !keep {
                health.remove(node);
            }
            keep
        });
        if health.len() > MAX_HEALTH {
            let mut oldest: Vec<(u64, NodeKey)> = gone_at.iter().map(|(k, t)| (*t, *k)).collect();
            oldest.sort_unstable();
            for (_, node) in oldest.into_iter().take(health.len() - MAX_HEALTH) {
                health.remove(&node);
                gone_at.remove(&node);
            }
        }
        let nodes: Vec<NodeKey> = inner.health.keys().copied().collect();
        for node in nodes {
            if let Some(h) = inner.health.get_mut(&node) {
                h.decay(now_ms);
            }
            inner.sync_rows(&node, now_ms, &self.trust);
        }
    }

    /// Forgets every node's history (trust, measurements, breakers), as
    /// for a fresh coordinator; for tests and operators.
    pub fn reset(&self, now_ms: u64) {
        let mut inner = lock(&self.inner);
        inner.health.clear();
        let nodes: Vec<NodeKey> = inner.rows.keys().copied().collect();
        for node in nodes {
            inner.health(node, now_ms);
            inner.sync_rows(&node, now_ms, &self.trust);
        }
    }

    /// Replaces a node's health (benchmarks and tests set up histories).
    pub fn set_health(&self, node: NodeKey, health: NodeHealth, now_ms: u64) {
        let mut inner = lock(&self.inner);
        inner.health.insert(node, health);
        inner.sync_rows(&node, now_ms, &self.trust);
    }

    /// A copy of the node's health, if it has any.
    pub fn health(&self, node: &NodeKey) -> Option<NodeHealth> {
        lock(&self.inner).health.get(node).cloned()
    }

    /// Whether the node has a history here: evidence past its probation.
    pub fn has_history(&self, node: &NodeKey, now_ms: u64) -> bool {
        lock(&self.inner)
            .health
            .get(node)
            .is_some_and(|h| !h.trust.is_probation(now_ms, &self.trust))
    }

    /// Each node's trust score at `now_ms` (0 for a node never seen).
    pub fn trust_of(&self, nodes: &[NodeKey], now_ms: u64) -> Vec<f64> {
        let inner = lock(&self.inner);
        nodes
            .iter()
            .map(|n| {
                inner
                    .health
                    .get(n)
                    .map_or(0.0, |h| h.trust.score(now_ms, &self.trust))
            })
            .collect()
    }

    /// For `/metrics`: nodes with an open breaker; nodes by trust band
    /// (below 0.5, 0.5 to 0.8, 0.8 and above); our jobs in flight.
    pub fn summary(&self, now_ms: u64) -> (i64, [i64; 3], i64) {
        let inner = lock(&self.inner);
        let (mut open, mut bands, mut in_flight) = (0i64, [0i64; 3], 0i64);
        for (node, h) in &inner.health {
            if !inner.rows.contains_key(node) {
                continue;
            }
            if matches!(
                h.breaker.state(now_ms),
                sharenet_router::BreakerState::Open { .. }
            ) {
                open += 1;
            }
            let t = h.trust.score(now_ms, &self.trust);
            bands[usize::from(t >= 0.5) + usize::from(t >= 0.8)] += 1;
            in_flight += i64::from(h.observed.in_flight);
        }
        (open, bands, in_flight)
    }

    /// What the dashboard shows of each node with rows: trust score,
    /// breaker state and measurements at `now_ms`.
    pub fn node_states(
        &self,
        now_ms: u64,
    ) -> HashMap<
        NodeKey,
        (
            f64,
            sharenet_router::BreakerState,
            sharenet_router::Observed,
        ),
    > {
        let inner = lock(&self.inner);
        inner
            .health
            .iter()
            .filter(|(node, _)| inner.rows.contains_key(*node))
            .map(|(node, h)| {
                let mut observed = h.observed.clone();
                observed.decay(now_ms);
                (
                    *node,
                    (
                        h.trust.score(now_ms, &self.trust),
                        h.breaker.state(now_ms),
                        observed,
                    ),
                )
            })
            .collect()
    }

    /// Nodes with rows.
    pub fn nodes(&self) -> Vec<NodeKey> {
        lock(&self.inner).rows.keys().copied().collect()
    }

    /// Whether any node serves `model` as `kind`.
    pub fn serves(&self, model: &str, kind: ModelKind) -> bool {
        self.serves_with(model, kind, 0)
    }

    /// Whether some node serves `model` with every capability bit in `need`.
    pub fn serves_with(&self, model: &str, kind: ModelKind, need: u32) -> bool {
        lock(&self.inner)
            .tables
            .get(&key_of(model, kind))
            .is_some_and(|t| !t.is_empty() && t.any_with_capabilities(need))
    }

    /// One routing decision among the nodes serving `model` as `kind`
    /// (`route_table`, which skips whole blocks of nodes that cannot win).
    pub fn route(
        &self,
        model: &str,
        kind: ModelKind,
        req: &Request,
        weights: &Weights,
        params: &RouteParams,
    ) -> Result<Vec<NodeKey>, NoCandidate> {
        let mut inner = lock(&self.inner);
        let Inner { tables, rng, .. } = &mut *inner;
        match tables.get(&key_of(model, kind)) {
            Some(t) => route_table(t, req, weights, params, rng),
            None => Err(NoCandidate::NoNodes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharenet_proto::ModelOffer;

    fn advert(node: u8, models: &[(&str, ModelKind, u64)]) -> Advert {
        Advert {
            node: [node; 32],
            models: models
                .iter()
                .map(|(id, kind, price)| ModelOffer {
                    id: (*id).into(),
                    price_in: *price,
                    price_out: *price,
                    context_length: 4096,
                    kind: *kind,
                    quantization: String::new(),
                    tokens_per_sec: 0,
                    weights_sha256: None,
                    capabilities: Default::default(),
                    license: String::new(),
                    canonical: String::new(),
                })
                .collect(),
            gpus: Vec::new(),
            region: String::new(),
            relayed: false,
            keeps_prompts: false,
            max_concurrency: 4,
            queue_depth: 0,
            seq: 1,
            issued_at_ms: 0,
            expires_at_ms: 10_000,
        }
    }

    fn req() -> Request {
        Request {
            input_tokens: 10,
            max_output_tokens: 10,
            prefs: Default::default(),
        }
    }

    fn route(r: &Routing) -> Result<Vec<NodeKey>, NoCandidate> {
        r.route(
            "m",
            ModelKind::Text,
            &req(),
            &Weights::default(),
            &RouteParams::default(),
        )
    }

    #[test]
    fn our_own_jobs_fill_a_node_at_once_and_free_it_when_they_end() {
        let r = Arc::new(Routing::new(1, 15_000.0));
        r.on_advert(&advert(1, &[("m", ModelKind::Text, 5)]), 0);
        let full_at_one = RouteParams {
            max_queue_factor: 1,
            spill_queue_factor: 1,
            ..RouteParams::default()
        };
        let route = |r: &Routing| {
            r.route(
                "m",
                ModelKind::Text,
                &req(),
                &Weights::default(),
                &full_at_one,
            )
        };
        // The advert says the node is idle (queue 0 of 4); four jobs of
        // ours fill it before its next advert could say so.
        let jobs: Vec<InFlight> = (0..4).map(|_| r.begin_job([1; 32], 0)).collect();
        assert!(route(&r).is_err(), "a node with 4 of our jobs is full");
        let mut jobs = jobs.into_iter();
        // A served job and a dropped one (failed, hung up) both stop counting.
        jobs.next().unwrap().served(10.0, 5, 50.0, 1);
        assert_eq!(route(&r).unwrap(), vec![[1; 32]]);
        drop(jobs.next());
        assert_eq!(r.health(&[1; 32]).unwrap().observed.in_flight, 2);
        drop(jobs);
        assert_eq!(r.health(&[1; 32]).unwrap().observed.in_flight, 0);
    }

    #[test]
    fn follows_adverts_expiry_and_evidence() {
        let r = Routing::new(1, 15_000.0);
        assert!(matches!(route(&r), Err(NoCandidate::NoNodes)));
        r.on_advert(&advert(1, &[("m", ModelKind::Text, 5)]), 0);
        r.on_advert(
            &advert(
                2,
                &[("m", ModelKind::Text, 9), ("e", ModelKind::Embedding, 1)],
            ),
            0,
        );
        assert!(r.serves("e", ModelKind::Embedding));
        assert!(!r.serves("e", ModelKind::Text));
        assert_eq!(route(&r).unwrap().len(), 2);

        // Node 2 stops serving "m": only node 1 is left for it.
        r.on_advert(&advert(2, &[("e", ModelKind::Embedding, 1)]), 0);
        assert_eq!(route(&r).unwrap(), vec![[1; 32]]);

        // A failed spot check puts the node under the trust floor at once,
        // in the same step as the evidence (no separate index update).
        r.record([1; 32], Outcome::SpotCheckFailed, 0);
        assert!(route(&r).is_err());
        r.reset(0);
        assert_eq!(route(&r).unwrap(), vec![[1; 32]]);

        // Expiry removes every row; empty tables go; health stays.
        r.remove(&[1; 32], 0);
        r.remove(&[2; 32], 0);
        assert!(matches!(route(&r), Err(NoCandidate::NoNodes)));
        assert!(!r.serves("e", ModelKind::Embedding));
        assert!(r.nodes().is_empty());
        assert!(r.health(&[1; 32]).is_some());
    }

    #[test]
    fn a_node_that_rejoins_keeps_its_history() {
        let r = Routing::new(1, 15_000.0);
        r.on_advert(&advert(1, &[("m", ModelKind::Text, 5)]), 0);
        r.record([1; 32], Outcome::SpotCheckFailed, 0);
        r.remove(&[1; 32], 0);
        r.refresh(HEALTH_TTL_MS / 2);
        r.on_advert(&advert(1, &[("m", ModelKind::Text, 5)]), HEALTH_TTL_MS / 2);
        assert!(
            route(&r).is_err(),
            "a caught node may not wash its trust by leaving"
        );
    }

    #[test]
    fn the_health_of_nodes_gone_a_day_is_forgotten() {
        // Issue 12, item 15: health used to be kept forever, one entry per
        // identity ever seen.
        let r = Routing::new(1, 15_000.0);
        r.on_advert(&advert(1, &[("m", ModelKind::Text, 5)]), 0);
        r.on_advert(&advert(2, &[("m", ModelKind::Text, 5)]), 0);
        r.remove(&[1; 32], 1_000);
        r.refresh(1_000 + HEALTH_TTL_MS - 1);
        assert!(r.health(&[1; 32]).is_some());
        r.refresh(1_000 + HEALTH_TTL_MS);
        assert!(r.health(&[1; 32]).is_none(), "gone a day: forgotten");
        assert!(r.health(&[2; 32]).is_some(), "a live node is kept");
    }
}
