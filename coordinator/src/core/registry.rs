//! The coordinator's view of the network: live, verified adverts, one per
//! peer. Routing state (health, candidate tables) lives in `routing.rs`;
//! the registry answers "is this node's advert live, and what does it
//! offer", which dispatch asks before using a node the index picked.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sharenet_api::catalog::CountedBy;
use sharenet_p2p::{PeerId, peer_id_of};
use sharenet_proto::{Advert, Capabilities, ModelKind, ModelOffer, SignedAdvert};

use crate::config::PriceCeiling;
use crate::core::catalog::{Catalog, Verdict};

/// At most this many nodes are tracked; adverts from more are refused.
pub const MAX_NODES: usize = 100_000;
/// Adverts issued further than this in the future are refused.
const MAX_CLOCK_SKEW_MS: u64 = 60_000;
/// (node, model) pairs whose uncatalogued offer was logged; past this
/// many, offers are still counted but no longer logged (a node inventing
/// names cannot grow the set without bound).
const MAX_LOGGED_UNCATALOGUED: usize = 10_000;

/// Why an advert was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvertRejection {
    #[error("undecodable or badly signed: {0}")]
    Invalid(String),
    #[error("signed by a key other than the publishing peer's")]
    WrongSigner,
    #[error("expired")]
    Expired,
    #[error("issued in the future")]
    FromTheFuture,
    #[error("sequence number not newer than the last advert")]
    Stale,
    #[error("registry full")]
    Full,
}

/// Counters, for `/metrics` and logs.
#[derive(Debug, Default)]
pub struct AdvertStats {
    pub accepted: AtomicU64,
    pub invalid: AtomicU64,
    pub wrong_signer: AtomicU64,
    pub expired: AtomicU64,
    pub from_the_future: AtomicU64,
    pub stale: AtomicU64,
    pub full: AtomicU64,
    /// Nodes without history evicted to make room for one with history.
    pub evicted: AtomicU64,
    pub pruned: AtomicU64,
    /// Adverts with at least one offer above the price ceiling (those
    /// offers were dropped).
    pub over_price_ceiling: AtomicU64,
    /// Offers for a model the catalog does not know (dropped unless
    /// `allow_uncatalogued`).
    pub uncatalogued: AtomicU64,
    /// Offers under a catalogued name with weights (or a kind) the
    /// catalog does not accept (always dropped).
    pub catalog_mismatch: AtomicU64,
}

#[derive(Debug, Clone)]
struct Live {
    advert: Advert,
    rtt: Option<Duration>,
    /// Ids of the advert's offers outside the catalog (kept only under
    /// `allow_uncatalogued`): their usage is the node's word.
    uncatalogued: HashSet<String>,
}

impl Live {
    fn new(advert: Advert, uncatalogued: HashSet<String>) -> Self {
        Self {
            advert,
            rtt: None,
            uncatalogued,
        }
    }

    fn counted_by(&self, model: &ModelOffer) -> CountedBy {
        if self.uncatalogued.contains(&model.id) {
            CountedBy::Node
        } else {
            CountedBy::Coordinator
        }
    }
}

/// A node that serves a model, as dispatch needs it.
#[derive(Debug, Clone)]
pub struct Offer {
    pub peer: PeerId,
    pub advert: Advert,
    pub offer: ModelOffer,
    /// Who counts this offer's tokens: the node alone for a model outside
    /// the catalog (routable only under `allow_uncatalogued`), whose
    /// usage, receipt and statement lines say so.
    pub counted_by: CountedBy,
}

/// What a model lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// No live node at all.
    NoNodes,
    /// Live nodes, none serving the model.
    UnknownModel,
    Found(Vec<Offer>),
}

#[derive(Default)]
pub struct Registry {
    nodes: Mutex<HashMap<PeerId, Live>>,
    /// Offers above it are dropped from adverts as they arrive (`None`:
    /// no ceiling).
    ceiling: Option<PriceCeiling>,
    /// Nodes tracked at most (`MAX_NODES` unless set).
    capacity: Option<usize>,
    /// The model catalog, the routing gate (None: every offer passes, as
    /// in tests of other parts).
    catalog: Option<Arc<Catalog>>,
    /// (node, model) pairs already logged as uncatalogued.
    logged: Mutex<HashSet<([u8; 32], String)>>,
    pub stats: AdvertStats,
}

impl Registry {
    /// An empty registry that drops offers priced above `ceiling`.
    pub fn new(ceiling: PriceCeiling) -> Self {
        Self {
            ceiling: Some(ceiling),
            ..Self::default()
        }
    }

    /// As [`Registry::new`], holding at most `capacity` nodes.
    pub fn with_capacity(ceiling: PriceCeiling, capacity: usize) -> Self {
        Self {
            capacity: Some(capacity),
            ..Self::new(ceiling)
        }
    }

    /// The same registry, gating offers through `catalog`.
    pub fn with_catalog(self, catalog: Arc<Catalog>) -> Self {
        Self {
            catalog: Some(catalog),
            ..self
        }
    }

    /// The catalog the registry gates offers with.
    pub fn catalog(&self) -> Option<&Arc<Catalog>> {
        self.catalog.as_ref()
    }

    /// The catalog's gate over an advert's offers: catalogued offers are
    /// listed under their canonical id alone (id and canonical name both:
    /// the node accepts jobs under it, every node serving it is one market
    /// under that name, and the coordinator counts with that entry),
    /// mismatched ones dropped, uncatalogued ones dropped unless allowed. Counted, and logged once per (node, model).
    /// Returns the ids of the uncatalogued offers kept.
    fn gate(&self, advert: &mut Advert) -> HashSet<String> {
        let mut kept = HashSet::new();
        let Some(catalog) = &self.catalog else {
            return kept;
        };
        let node = advert.node;
        advert.models.retain_mut(|m| match catalog.check(m) {
            Verdict::Catalogued(id) => {
                m.id.clone_from(&id);
                m.canonical = id;
                true
            }
            Verdict::Uncatalogued => {
                self.stats.uncatalogued.fetch_add(1, Ordering::Relaxed);
                let allowed = catalog.allows_uncatalogued();
                if self.first_time(node, &m.id) {
                    tracing::warn!(node = %hex::encode(node), model = %m.id.escape_debug(),
                        routable = allowed, "advert for a model outside the catalog");
                }
                if allowed {
                    kept.insert(m.id.clone());
                }
                allowed
            }
            Verdict::Mismatch { id, why } => {
                self.stats.catalog_mismatch.fetch_add(1, Ordering::Relaxed);
                if self.first_time(node, &m.id) {
                    tracing::warn!(node = %hex::encode(node), model = %m.id.escape_debug(),
                        catalogued = %id, why, "advert for a catalogued model refused");
                }
                false
            }
        });
        kept
    }

    /// Whether (node, model) is logged for the first time.
    fn first_time(&self, node: [u8; 32], model: &str) -> bool {
        let mut logged = crate::core::sync::lock(&self.logged);
        if logged.len() >= MAX_LOGGED_UNCATALOGUED {
            return false;
        }
        logged.insert((node, model.to_owned()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Live>> {
        crate::core::sync::lock(&self.nodes)
    }

    /// Verifies and records an advert that `source` published.
    pub fn ingest(&self, source: PeerId, data: &[u8], now_ms: u64) -> Result<(), AdvertRejection> {
        self.ingest_preferring(source, data, now_ms, &|_| false)
            .map(|_| ())
    }

    /// As [`Registry::ingest`]; when the registry is full, a newcomer for
    /// which `has_history` holds (a node the coordinator has served jobs
    /// with, back after its advert expired) takes the place of a node
    /// without history, so throwaway identities that filled the registry
    /// first cannot lock established nodes out. Returns the node evicted.
    /// `has_history` runs under the registry's lock and may take routing's
    /// (routing never takes the registry's: no cycle).
    pub fn ingest_preferring(
        &self,
        source: PeerId,
        data: &[u8],
        now_ms: u64,
        has_history: &dyn Fn(&[u8; 32]) -> bool,
    ) -> Result<Option<[u8; 32]>, AdvertRejection> {
        let result = self.try_ingest(source, data, now_ms, has_history);
        let counter = match &result {
            Ok(_) => &self.stats.accepted,
            Err(AdvertRejection::Invalid(_)) => &self.stats.invalid,
            Err(AdvertRejection::WrongSigner) => &self.stats.wrong_signer,
            Err(AdvertRejection::Expired) => &self.stats.expired,
            Err(AdvertRejection::FromTheFuture) => &self.stats.from_the_future,
            Err(AdvertRejection::Stale) => &self.stats.stale,
            Err(AdvertRejection::Full) => &self.stats.full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn try_ingest(
        &self,
        source: PeerId,
        data: &[u8],
        now_ms: u64,
        has_history: &dyn Fn(&[u8; 32]) -> bool,
    ) -> Result<Option<[u8; 32]>, AdvertRejection> {
        let mut advert = SignedAdvert::from_bytes(data)
            .map_err(|e| AdvertRejection::Invalid(e.to_string()))?
            .into_advert();
        if let Some(c) = self.ceiling {
            let before = advert.models.len();
            advert
                .models
                .retain(|m| m.price_in <= c.price_in && m.price_out <= c.price_out);
            if advert.models.len() < before {
                self.stats
                    .over_price_ceiling
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if peer_id_of(&advert.node).ok() != Some(source) {
            return Err(AdvertRejection::WrongSigner);
        }
        let uncatalogued = self.gate(&mut advert);
        if !advert.is_live(now_ms) {
            return Err(AdvertRejection::Expired);
        }
        if advert.issued_at_ms > now_ms + MAX_CLOCK_SKEW_MS {
            return Err(AdvertRejection::FromTheFuture);
        }
        let mut nodes = self.lock();
        let full = nodes.len() >= self.capacity.unwrap_or(MAX_NODES);
        match nodes.get_mut(&source) {
            Some(live) if live.advert.seq >= advert.seq => Err(AdvertRejection::Stale),
            Some(live) => {
                live.advert = advert;
                live.uncatalogued = uncatalogued;
                Ok(None)
            }
            None if full => {
                if !has_history(&advert.node) {
                    return Err(AdvertRejection::Full);
                }
                let victim = nodes
                    .iter()
                    .find(|(_, l)| !has_history(&l.advert.node))
                    .map(|(peer, l)| (*peer, l.advert.node));
                let Some((peer, node)) = victim else {
                    return Err(AdvertRejection::Full);
                };
                nodes.remove(&peer);
                nodes.insert(source, Live::new(advert, uncatalogued));
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                Ok(Some(node))
            }
            None => {
                nodes.insert(source, Live::new(advert, uncatalogued));
                Ok(None)
            }
        }
    }

    /// The node key (receipt signer) behind a live peer.
    pub fn node_key(&self, peer: &PeerId) -> Option<[u8; 32]> {
        self.lock().get(peer).map(|l| l.advert.node)
    }

    pub fn set_rtt(&self, peer: PeerId, rtt: Duration) {
        if let Some(live) = self.lock().get_mut(&peer) {
            live.rtt = Some(rtt);
        }
    }

    /// Drops expired adverts; returns the nodes dropped.
    pub fn prune(&self, now_ms: u64) -> Vec<[u8; 32]> {
        let mut nodes = self.lock();
        let mut gone = Vec::new();
        nodes.retain(|_, l| {
            let live = l.advert.is_live(now_ms);
            if !live {
                gone.push(l.advert.node);
            }
            live
        });
        let pruned = gone.len();
        if pruned > 0 {
            self.stats
                .pruned
                .fetch_add(pruned as u64, Ordering::Relaxed);
            tracing::info!(pruned, "expired adverts dropped");
        }
        gone
    }

    /// The live advert a peer published last.
    pub fn advert(&self, peer: &PeerId) -> Option<Advert> {
        self.lock().get(peer).map(|l| l.advert.clone())
    }

    /// What `node` offers for `model`, if its advert is live.
    pub fn offer_of(&self, node: &[u8; 32], model: &str, now_ms: u64) -> Option<Offer> {
        let peer = peer_id_of(node).ok()?;
        let nodes = self.lock();
        let live = nodes.get(&peer).filter(|l| l.advert.is_live(now_ms))?;
        let offer = live.advert.offer(model)?;
        Some(Offer {
            peer,
            counted_by: live.counted_by(offer),
            offer: offer.clone(),
            advert: live.advert.clone(),
        })
    }

    /// Every live advert with its publisher.
    pub fn live_adverts(&self, now_ms: u64) -> Vec<(PeerId, Advert)> {
        self.lock()
            .iter()
            .filter(|(_, l)| l.advert.is_live(now_ms))
            .map(|(p, l)| (*p, l.advert.clone()))
            .collect()
    }

    pub fn live_nodes(&self, now_ms: u64) -> usize {
        self.lock()
            .values()
            .filter(|l| l.advert.is_live(now_ms))
            .count()
    }

    /// Live nodes serving `model`.
    pub fn lookup(&self, model: &str, now_ms: u64) -> Lookup {
        let nodes = self.lock();
        let mut any_live = false;
        let mut found = Vec::new();
        for (peer, live) in nodes.iter() {
            if !live.advert.is_live(now_ms) {
                continue;
            }
            any_live = true;
            if let Some(offer) = live.advert.offer(model) {
                found.push(Offer {
                    peer: *peer,
                    advert: live.advert.clone(),
                    counted_by: live.counted_by(offer),
                    offer: offer.clone(),
                });
            }
        }
        match (any_live, found.is_empty()) {
            (false, _) => Lookup::NoNodes,
            (true, true) => Lookup::UnknownModel,
            (true, false) => Lookup::Found(found),
        }
    }

    /// Every model on the network with the number of live nodes serving it
    /// and the lowest prices, sorted by model id.
    /// Every model on offer, summed over its live nodes, sorted by id.
    pub fn models(&self, now_ms: u64) -> Vec<ModelSummary> {
        let nodes = self.lock();
        let mut by_model: HashMap<&str, ModelSummary> = HashMap::new();
        for live in nodes.values().filter(|l| l.advert.is_live(now_ms)) {
            // A model is listed under the node's id and under its
            // canonical name (the market across nodes).
            let names = live.advert.models.iter().flat_map(|m| {
                let canonical = (!m.canonical.is_empty() && m.canonical != m.id)
                    .then_some((m.canonical.as_str(), m));
                std::iter::once((m.id.as_str(), m)).chain(canonical)
            });
            for (name, m) in names {
                let e = by_model.entry(name).or_insert_with(|| ModelSummary {
                    id: name.to_owned(),
                    kind: m.kind,
                    nodes: 0,
                    price_in: (u64::MAX, 0),
                    price_out: (u64::MAX, 0),
                    context_length: 0,
                    capabilities: Capabilities::default(),
                    quantizations: Vec::new(),
                    licenses: Vec::new(),
                });
                e.nodes += 1;
                e.price_in = (e.price_in.0.min(m.price_in), e.price_in.1.max(m.price_in));
                e.price_out = (
                    e.price_out.0.min(m.price_out),
                    e.price_out.1.max(m.price_out),
                );
                e.context_length = e.context_length.max(m.context_length);
                e.capabilities =
                    Capabilities::from_bits(e.capabilities.bits() | m.capabilities.bits());
                if !m.quantization.is_empty() && !e.quantizations.contains(&m.quantization) {
                    e.quantizations.push(m.quantization.clone());
                }
                let license = m.license.to_ascii_lowercase();
                if !license.is_empty() && !e.licenses.contains(&license) {
                    e.licenses.push(license);
                }
            }
        }
        let mut out: Vec<ModelSummary> = by_model.into_values().collect();
        for m in &mut out {
            m.quantizations.sort();
            m.licenses.sort();
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// One model across the network's live adverts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSummary {
    pub id: String,
    pub kind: ModelKind,
    /// Live nodes serving it.
    pub nodes: usize,
    /// (lowest, highest) nano-USD per prompt token.
    pub price_in: (u64, u64),
    /// (lowest, highest) nano-USD per completion token.
    pub price_out: (u64, u64),
    /// The longest window any node offers.
    pub context_length: u32,
    /// What at least one node offers (requests needing it go only there).
    pub capabilities: Capabilities,
    pub quantizations: Vec<String>,
    /// Licenses the nodes state (lowercase), for `provider.licenses`.
    pub licenses: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharenet_p2p::Identity;

    fn advert(id: &Identity, seq: u64, issued: u64, ttl: u64) -> Vec<u8> {
        SignedAdvert::sign(
            Advert {
                node: id.public_key(),
                models: vec![ModelOffer {
                    id: "m".into(),
                    price_in: 1,
                    price_out: 2,
                    context_length: 64,
                    kind: sharenet_proto::ModelKind::Text,
                    quantization: String::new(),
                    tokens_per_sec: 0,
                    weights_sha256: None,
                    capabilities: Default::default(),
                    license: String::new(),
                    canonical: String::new(),
                }],
                gpus: Vec::new(),
                region: String::new(),
                relayed: false,
                keeps_prompts: false,
                max_concurrency: 1,
                queue_depth: 0,
                seq,
                issued_at_ms: issued,
                expires_at_ms: issued + ttl,
            },
            id.signing_key(),
        )
        .unwrap()
        .to_bytes()
    }

    #[test]
    fn accepts_verified_and_refuses_the_rest_with_counts() {
        let reg = Registry::default();
        let a = Identity::generate();
        let b = Identity::generate();
        assert_eq!(
            reg.ingest(a.peer_id(), &advert(&a, 2, 1000, 5000), 1000),
            Ok(())
        );
        assert_eq!(
            reg.ingest(a.peer_id(), &advert(&a, 2, 1000, 5000), 1000),
            Err(AdvertRejection::Stale)
        );
        assert_eq!(
            reg.ingest(b.peer_id(), &advert(&a, 3, 1000, 5000), 1000),
            Err(AdvertRejection::WrongSigner)
        );
        assert_eq!(
            reg.ingest(b.peer_id(), &advert(&b, 1, 1000, 5000), 7000),
            Err(AdvertRejection::Expired)
        );
        let mut forged = advert(&b, 1, 1000, 5000);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(
            reg.ingest(b.peer_id(), &forged, 1000),
            Err(AdvertRejection::Invalid(_))
        ));
        assert_eq!(reg.stats.accepted.load(Ordering::Relaxed), 1);
        assert_eq!(reg.stats.stale.load(Ordering::Relaxed), 1);
        assert_eq!(reg.stats.wrong_signer.load(Ordering::Relaxed), 1);
        assert_eq!(reg.stats.expired.load(Ordering::Relaxed), 1);
        assert_eq!(reg.stats.invalid.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn lookup_distinguishes_no_nodes_unknown_model_and_expiry() {
        let reg = Registry::default();
        assert!(matches!(reg.lookup("m", 0), Lookup::NoNodes));
        let a = Identity::generate();
        reg.ingest(a.peer_id(), &advert(&a, 1, 1000, 5000), 1000)
            .unwrap();
        assert!(matches!(reg.lookup("m", 2000), Lookup::Found(v) if v.len() == 1));
        assert!(matches!(reg.lookup("other", 2000), Lookup::UnknownModel));
        // After the TTL the node is gone from routing, even before pruning.
        assert!(matches!(reg.lookup("m", 6000), Lookup::NoNodes));
        reg.prune(6000);
        assert_eq!(reg.live_nodes(6000), 0);
        assert_eq!(reg.stats.pruned.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn when_full_a_node_with_history_displaces_one_without() {
        // Issue 12, item 12: throwaway identities that filled the registry
        // first locked every other node out, established ones included.
        let reg = Registry::with_capacity(PriceCeiling::default(), 2);
        let sybils = [Identity::generate(), Identity::generate()];
        for s in &sybils {
            reg.ingest(s.peer_id(), &advert(s, 1, 1000, 5000), 1000)
                .unwrap();
        }
        let newcomer = Identity::generate();
        assert_eq!(
            reg.ingest(newcomer.peer_id(), &advert(&newcomer, 1, 1000, 5000), 1000),
            Err(AdvertRejection::Full),
            "a node without history waits"
        );
        let established = Identity::generate();
        let known = established.public_key();
        let evicted = reg
            .ingest_preferring(
                established.peer_id(),
                &advert(&established, 1, 1000, 5000),
                1000,
                &|n: &[u8; 32]| *n == known,
            )
            .unwrap();
        assert!(evicted.is_some_and(|n| sybils.iter().any(|s| s.public_key() == n)));
        assert!(reg.advert(&established.peer_id()).is_some());
        assert_eq!(reg.live_nodes(1000), 2);
        assert_eq!(reg.stats.evicted.load(Ordering::Relaxed), 1);
    }
}
