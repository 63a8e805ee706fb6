//! `CandidateTable` itself: the live candidates for one model as compact
//! rows, with labels interned and the block index (`crate::index`) kept in
//! step by every change. Why it exists and how it is used: see `table`,
//! its public face.

use std::collections::BTreeMap;

use crate::breaker::Admit;
use crate::candidate::{NodeKey, Observed};
use crate::facts::{Candidate, Facts, Source};
use crate::index::Index;
use crate::request::Preferences;

/// Label id meaning "none" (unset on the node).
const NO_LABEL: u32 = u32::MAX;

/// Reference-counted interning of labels, so ids of labels no node uses any
/// more are reused and the table's memory is bounded by its live nodes
/// (nodes choose their labels; they must not be able to grow it for ever).
#[derive(Debug, Clone)]
struct Interner<T: Ord + Clone> {
    ids: BTreeMap<T, u32>,
    counts: Vec<u32>,
    values: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T: Ord + Clone> Default for Interner<T> {
    fn default() -> Self {
        Self {
            ids: BTreeMap::new(),
            counts: Vec::new(),
            values: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Ord + Clone> Interner<T> {
    fn acquire(&mut self, v: Option<T>) -> u32 {
        let Some(v) = v else { return NO_LABEL };
        if let Some(&id) = self.ids.get(&v) {
            if let Some(c) = self.counts.get_mut(id as usize) {
                *c = c.saturating_add(1);
            }
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                if let (Some(c), Some(slot)) = (
                    self.counts.get_mut(id as usize),
                    self.values.get_mut(id as usize),
                ) {
                    *c = 1;
                    *slot = Some(v.clone());
                }
                id
            }
            None => {
                // At most one label per field per live node, and the table
                // holds fewer than u32::MAX nodes, so this never saturates.
                let id = u32::try_from(self.counts.len()).unwrap_or(NO_LABEL - 1);
                self.counts.push(1);
                self.values.push(Some(v.clone()));
                id
            }
        };
        self.ids.insert(v, id);
        id
    }

    fn release(&mut self, id: u32) {
        let Some(c) = self.counts.get_mut(id as usize) else {
            return;
        };
        *c = c.saturating_sub(1);
        if *c == 0
            && let Some(v) = self.values.get_mut(id as usize).and_then(Option::take)
        {
            self.ids.remove(&v);
            self.free.push(id);
        }
    }

    fn get(&self, v: &T) -> Option<u32> {
        self.ids.get(v).copied()
    }
}

fn lower(s: &Option<String>) -> Option<String> {
    s.as_ref().map(|s| s.to_ascii_lowercase())
}

/// The interned labels of one row.
#[derive(Debug, Clone, Copy)]
struct RowLabels {
    weights: u32,
    quantization: u32,
    region: u32,
    /// Capability bits, as advertised.
    caps: u32,
    license: u32,
}

/// The live candidates for one model, compact; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct CandidateTable {
    facts: Vec<Facts>,
    keys: Vec<NodeKey>,
    labels: Vec<RowLabels>,
    index: BTreeMap<NodeKey, usize>,
    weights: Interner<[u8; 32]>,
    quantizations: Interner<String>,
    regions: Interner<String>,
    licenses: Interner<String>,
    /// Blocks of rows with bounds, kept up to date by every change.
    blocks: Index,
}

impl CandidateTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn contains(&self, node: &NodeKey) -> bool {
        self.index.contains_key(node)
    }

    /// Whether some row offers every capability bit in `need`.
    pub fn any_with_capabilities(&self, need: u32) -> bool {
        self.labels.iter().any(|r| r.caps & need == need)
    }

    /// Inserts the candidate, or replaces what the table holds for its node
    /// (a new advert).
    pub fn upsert(&mut self, c: &Candidate<'_>) {
        let o = c.offer;
        let labels = RowLabels {
            weights: self.weights.acquire(o.weights_sha256),
            quantization: self.quantizations.acquire(lower(&o.quantization)),
            region: self.regions.acquire(lower(&o.region)),
            caps: o.capabilities,
            license: self.licenses.acquire(lower(&o.license)),
        };
        let facts = Facts::of(c);
        match self.index.get(&o.node).copied() {
            Some(i) => {
                if let Some(old) = self.labels.get(i).copied() {
                    self.release(old);
                }
                if let (Some(f), Some(l)) = (self.facts.get_mut(i), self.labels.get_mut(i)) {
                    let old = *f;
                    *f = facts;
                    *l = labels;
                    self.blocks.changed(&self.facts, i, &old);
                }
            }
            None => {
                self.index.insert(o.node, self.keys.len());
                self.keys.push(o.node);
                self.facts.push(facts);
                self.labels.push(labels);
                self.blocks.push(&self.facts);
            }
        }
    }

    /// Updates what changes between adverts (measurements, trust, probation,
    /// breaker) for a node already in the table, keeping its advert. Returns
    /// whether the node was there. Cheaper than `upsert` (no label lookups).
    pub fn update_state(
        &mut self,
        node: &NodeKey,
        observed: &Observed,
        trust: f64,
        probation: bool,
        breaker: Admit,
    ) -> bool {
        let Some(&i) = self.index.get(node) else {
            return false;
        };
        let Some(f) = self.facts.get_mut(i) else {
            return false;
        };
        let old = *f;
        f.set_state(observed, trust, probation, breaker);
        self.blocks.changed(&self.facts, i, &old);
        true
    }

    /// Drops a node (its advert expired). Returns whether it was there.
    pub fn remove(&mut self, node: &NodeKey) -> bool {
        let Some(i) = self.index.remove(node) else {
            return false;
        };
        if i >= self.keys.len() {
            return false;
        }
        self.keys.swap_remove(i);
        self.facts.swap_remove(i);
        let old = self.labels.swap_remove(i);
        self.release(old);
        self.blocks.remove(&self.facts, i);
        if let Some(moved) = self.keys.get(i) {
            self.index.insert(*moved, i);
        }
        true
    }

    /// The block index (see `index`).
    pub(crate) fn blocks(&self) -> &Index {
        &self.blocks
    }

    /// Regroups the rows for the fastest decisions now. Optional: the table
    /// regroups itself once enough rows were added or changed, and decisions
    /// are exact whatever the grouping; call this after loading a fleet if
    /// the very next decisions must be as fast as possible.
    pub fn reindex(&mut self) {
        self.blocks.rebuild(&self.facts);
    }

    fn release(&mut self, l: RowLabels) {
        self.weights.release(l.weights);
        self.quantizations.release(l.quantization);
        self.regions.release(l.region);
        self.licenses.release(l.license);
    }
}

/// A label filter resolved against the table's interners.
#[derive(Debug, Clone)]
pub(crate) enum Want {
    /// The request does not filter on this label.
    Any,
    /// Only rows with one of these ids (empty: the label is unknown to the
    /// table, so nothing matches).
    Ids(Vec<u32>),
}

impl Want {
    #[inline]
    fn admits(&self, id: u32) -> bool {
        match self {
            Want::Any => true,
            Want::Ids(ids) => id != NO_LABEL && ids.contains(&id),
        }
    }
}

pub(crate) struct TableLabels {
    weights: Want,
    quantization: Want,
    region: Want,
    license: Want,
}

impl Source for CandidateTable {
    type Labels = TableLabels;

    fn count(&self) -> usize {
        self.keys.len()
    }

    #[inline]
    fn facts(&self, i: usize) -> Facts {
        self.facts.get(i).copied().unwrap_or(Facts::NEVER)
    }

    fn facts_slice(&self) -> Option<&[Facts]> {
        Some(&self.facts)
    }

    #[inline]
    fn key(&self, i: usize) -> &NodeKey {
        self.keys.get(i).unwrap_or(&[0; 32])
    }

    fn labels(&self, prefs: &Preferences) -> TableLabels {
        let one = |id: Option<u32>| Want::Ids(id.into_iter().collect());
        TableLabels {
            weights: match &prefs.weights_sha256 {
                None => Want::Any,
                Some(w) => one(self.weights.get(w)),
            },
            quantization: if prefs.quantizations.is_empty() {
                Want::Any
            } else {
                Want::Ids(
                    prefs
                        .quantizations
                        .iter()
                        .filter_map(|q| self.quantizations.get(&q.to_ascii_lowercase()))
                        .collect(),
                )
            },
            region: match &prefs.region {
                None => Want::Any,
                Some(r) => one(self.regions.get(&r.to_ascii_lowercase())),
            },
            license: if prefs.licenses.is_empty() {
                Want::Any
            } else {
                Want::Ids(
                    prefs
                        .licenses
                        .iter()
                        .filter_map(|x| self.licenses.get(&x.to_ascii_lowercase()))
                        .collect(),
                )
            },
        }
    }

    fn weights_ok(&self, i: usize, l: &TableLabels) -> bool {
        self.labels
            .get(i)
            .is_some_and(|r| l.weights.admits(r.weights))
    }

    fn quantization_ok(&self, i: usize, l: &TableLabels) -> bool {
        self.labels
            .get(i)
            .is_some_and(|r| l.quantization.admits(r.quantization))
    }

    fn region_ok(&self, i: usize, l: &TableLabels) -> bool {
        self.labels
            .get(i)
            .is_some_and(|r| l.region.admits(r.region))
    }

    fn caps_ok(&self, i: usize, need: u32) -> bool {
        self.labels.get(i).is_some_and(|r| r.caps & need == need)
    }

    fn license_ok(&self, i: usize, l: &TableLabels) -> bool {
        self.labels
            .get(i)
            .is_some_and(|r| l.license.admits(r.license))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn interner_reuses_released_ids_and_forgets_labels() {
        let mut i = Interner::<String>::default();
        let a = i.acquire(Some("eu".into()));
        let b = i.acquire(Some("us".into()));
        assert_eq!(i.acquire(Some("eu".into())), a);
        assert_eq!(i.acquire(None), NO_LABEL);
        i.release(a);
        assert_eq!(i.get(&"eu".into()), Some(a), "still one user");
        i.release(a);
        assert_eq!(i.get(&"eu".into()), None);
        let c = i.acquire(Some("ap".into()));
        assert_eq!(c, a, "freed id reused");
        assert_ne!(b, c);
        i.release(NO_LABEL);
        assert_eq!(i.counts.len(), 2, "memory bounded by live labels");
    }
}
