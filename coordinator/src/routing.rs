//! The coordinator's routing index: one [`CandidateTable`] per model and
//! kind (text / embedding), kept in step with the registry and with each
//! node's health, so a routing decision reads the table (`route_table`,
//! which skips whole blocks of nodes that cannot win) instead of every
//! advert.
//!
//! Kept in step by the writers, not by the reader:
//! - an accepted advert upserts the node's rows (and drops the rows of
//!   models it no longer serves);
//! - an expired advert removes them (the registry's prune, every second);
//! - every job outcome, RTT sample and probe updates the node's rows from
//!   its `NodeHealth`;
//! - a refresh every second applies time: trust and measurement decay,
//!   breaker cool-downs ending.
//!
//! So what routing sees lags the truth by at most the refresh interval for
//! time-driven changes, and not at all for events. An advert that expired
//! since the last prune can still come out of the table; dispatch checks
//! liveness in the registry before using a node.
//!
//! Lock order: the health map, then this index (never the reverse).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use rand::Rng;
use sharenet_proto::{Advert, ModelKind};
use sharenet_router::{
    CandidateTable, NoCandidate, NodeHealth, NodeKey, Offer, Request, RouteParams, TrustParams,
    Weights, route_table,
};

/// A table's key: the model id and whether it embeds.
type TableKey = (String, bool);

#[derive(Default)]
struct Inner {
    tables: HashMap<TableKey, CandidateTable>,
    /// The tables each node has a row in.
    rows: HashMap<NodeKey, Vec<TableKey>>,
}

/// See the module docs.
#[derive(Default)]
pub struct RoutingIndex {
    inner: Mutex<Inner>,
}

fn key_of(model: &str, kind: ModelKind) -> TableKey {
    (model.to_owned(), kind == ModelKind::Embedding)
}

impl RoutingIndex {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic mid-update of plain tables; the
        // next advert or refresh rewrites the affected rows.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's rows for its new advert, with its health at `now_ms`.
    pub fn upsert(&self, advert: &Advert, health: &NodeHealth, now_ms: u64, tp: &TrustParams) {
        let mut inner = self.lock();
        let Inner { tables, rows } = &mut *inner;
        let new: Vec<TableKey> = advert
            .models
            .iter()
            .map(|m| key_of(&m.id, m.kind))
            .collect();
        if let Some(old) = rows.get(&advert.node) {
            for k in old.iter().filter(|k| !new.contains(k)) {
                if let Some(t) = tables.get_mut(k) {
                    t.remove(&advert.node);
                    if t.is_empty() {
                        tables.remove(k);
                    }
                }
            }
        }
        for m in &advert.models {
            let offer = Offer::from_advert(advert, m);
            tables
                .entry(key_of(&m.id, m.kind))
                .or_default()
                .upsert(&health.candidate(&offer, now_ms, tp));
        }
        rows.insert(advert.node, new);
    }

    /// Drops the node (its advert expired).
    pub fn remove(&self, node: &NodeKey) {
        let mut inner = self.lock();
        let Inner { tables, rows } = &mut *inner;
        for k in rows.remove(node).unwrap_or_default() {
            if let Some(t) = tables.get_mut(&k) {
                t.remove(node);
                if t.is_empty() {
                    tables.remove(&k);
                }
            }
        }
    }

    /// Refreshes the node's rows from its health at `now_ms`.
    pub fn update(&self, node: &NodeKey, health: &NodeHealth, now_ms: u64, tp: &TrustParams) {
        let mut inner = self.lock();
        let Inner { tables, rows } = &mut *inner;
        let Some(keys) = rows.get(node) else {
            return;
        };
        let trust = health.trust.score(now_ms, tp);
        let probation = health.trust.is_probation(now_ms, tp);
        let admit = health.breaker.allow(now_ms);
        for k in keys {
            if let Some(t) = tables.get_mut(k) {
                t.update_state(node, &health.observed, trust, probation, admit);
            }
        }
    }

    /// Nodes with rows.
    pub fn nodes(&self) -> Vec<NodeKey> {
        self.lock().rows.keys().copied().collect()
    }

    /// Whether any node serves `model` as `kind`.
    pub fn serves(&self, model: &str, kind: ModelKind) -> bool {
        self.lock()
            .tables
            .get(&key_of(model, kind))
            .is_some_and(|t| !t.is_empty())
    }

    /// One routing decision among the nodes serving `model` as `kind`.
    pub fn route<R: Rng + ?Sized>(
        &self,
        model: &str,
        kind: ModelKind,
        req: &Request,
        weights: &Weights,
        params: &RouteParams,
        rng: &mut R,
    ) -> Result<Vec<NodeKey>, NoCandidate> {
        match self.lock().tables.get(&key_of(model, kind)) {
            Some(t) => route_table(t, req, weights, params, rng),
            None => Err(NoCandidate::NoNodes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharenet_proto::ModelOffer;
    use sharenet_router::BreakerParams;

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
                })
                .collect(),
            gpus: Vec::new(),
            region: String::new(),
            relayed: false,
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

    #[test]
    fn follows_adverts_expiry_and_health() {
        let idx = RoutingIndex::default();
        let tp = TrustParams::default();
        let h = NodeHealth::new(0, BreakerParams::default());
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        let route = |idx: &RoutingIndex, rng: &mut rand::rngs::StdRng| {
            idx.route(
                "m",
                ModelKind::Text,
                &req(),
                &Weights::default(),
                &RouteParams::default(),
                rng,
            )
        };
        assert!(matches!(route(&idx, &mut rng), Err(NoCandidate::NoNodes)));
        idx.upsert(&advert(1, &[("m", ModelKind::Text, 5)]), &h, 0, &tp);
        idx.upsert(
            &advert(
                2,
                &[("m", ModelKind::Text, 9), ("e", ModelKind::Embedding, 1)],
            ),
            &h,
            0,
            &tp,
        );
        assert!(idx.serves("e", ModelKind::Embedding));
        assert!(!idx.serves("e", ModelKind::Text));
        assert_eq!(route(&idx, &mut rng).unwrap().len(), 2);

        // Node 2 stops serving "m": only node 1 is left for it.
        idx.upsert(&advert(2, &[("e", ModelKind::Embedding, 1)]), &h, 0, &tp);
        assert_eq!(route(&idx, &mut rng).unwrap(), vec![[1; 32]]);

        // Health: a node caught cheating falls under the trust floor.
        let mut bad = NodeHealth::new(0, BreakerParams::default());
        bad.trust
            .record(sharenet_router::Evidence::SpotCheckFailed, 0, &tp);
        idx.update(&[1; 32], &bad, 0, &tp);
        assert!(route(&idx, &mut rng).is_err());
        idx.update(&[1; 32], &h, 0, &tp);
        assert_eq!(route(&idx, &mut rng).unwrap(), vec![[1; 32]]);

        // Expiry removes every row; empty tables go.
        idx.remove(&[1; 32]);
        idx.remove(&[2; 32]);
        assert!(matches!(route(&idx, &mut rng), Err(NoCandidate::NoNodes)));
        assert!(!idx.serves("e", ModelKind::Embedding));
        assert!(idx.nodes().is_empty());
    }
}
