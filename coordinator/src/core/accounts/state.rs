//! The in-memory view of the books every read and the embedded funds
//! check use: apps, keys, top-ups and charges per app, booked spend per
//! budget scope and window, live holds, usage, and the rate limiters. On
//! shared books it is the replica's view, kept up to date by the follow
//! loop (`follow.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use governor::DefaultDirectRateLimiter;
use sharenet_ledger::{AppRecord, Budgets, KeyRecord, LedgerEntry};

use super::types::{Scope, Window, scopes, windows};
use super::usage::Usage;

#[derive(Default)]
pub(super) struct State {
    pub(super) apps: HashMap<String, AppRecord>,
    pub(super) keys: HashMap<[u8; 32], KeyRecord>,
    pub(super) key_hash_by_id: HashMap<String, [u8; 32]>,
    pub(super) topped_up: HashMap<String, u128>,
    pub(super) charged: HashMap<String, u128>,
    /// Booked charges per budget scope and window.
    pub(super) spent: HashMap<(Scope, Window), u128>,
    /// Outstanding holds per scope (they count against every window).
    pub(super) held: HashMap<Scope, u128>,
    pub(super) usage: Usage,
    /// Key limiters (bounded by the keys the operator issued).
    pub(super) limiters: HashMap<(Scope, bool), Arc<DefaultDirectRateLimiter>>,
    /// End-customer limiters per app, each map capped.
    pub(super) customer_limiters:
        HashMap<String, HashMap<(Scope, bool), Arc<DefaultDirectRateLimiter>>>,
}

impl State {
    pub(super) fn key_budgets(&self, key_id: &str) -> Budgets {
        self.key_hash_by_id
            .get(key_id)
            .and_then(|h| self.keys.get(h))
            .map(|k| k.budgets)
            .unwrap_or_default()
    }

    /// Top-ups minus charges minus live holds.
    pub(super) fn balance(&self, app: &str) -> i128 {
        let get = |m: &HashMap<String, u128>| m.get(app).copied().unwrap_or(0) as i128;
        get(&self.topped_up)
            - get(&self.charged)
            - self.held.get(&Scope::App(app.into())).copied().unwrap_or(0) as i128
    }

    pub(super) fn add_key(&mut self, key: KeyRecord) {
        self.key_hash_by_id.insert(key.id.clone(), key.sha256);
        self.keys.insert(key.sha256, key);
    }

    /// Counts a durable entry: the charge, every budget window, usage.
    pub(super) fn book(&mut self, e: &LedgerEntry, key_id: &str) {
        let amount = u128::from(e.charge.total);
        *self.charged.entry(e.app.clone()).or_default() += amount;
        let at = e.recorded_at_ms;
        for scope in scopes(&e.app, key_id, e.end_customer.as_deref()) {
            for w in windows(at) {
                *self.spent.entry((scope.clone(), w)).or_default() += amount;
            }
        }
        self.usage.add(e);
    }

    /// Counts `amount` as held in every one of `scopes`.
    pub(super) fn hold(&mut self, scopes: Vec<Scope>, amount: u128) {
        for scope in scopes {
            *self.held.entry(scope).or_default() += amount;
        }
    }

    /// Takes `amount` off every one of `scopes` it was held in.
    pub(super) fn release(&mut self, scopes: Vec<Scope>, amount: u128) {
        for scope in scopes {
            // An entry at zero goes, so holds of end customers long gone
            // do not pile up.
            if let Some(h) = self.held.get_mut(&scope) {
                *h = h.saturating_sub(amount);
                if *h == 0 {
                    self.held.remove(&scope);
                }
            }
        }
    }
}
