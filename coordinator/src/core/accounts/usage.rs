//! Usage for the dashboard and the builder API: requests, tokens and money
//! per end customer and month, per model and month, and per UTC day,
//! summed from booked ledger entries.

use std::collections::BTreeMap;

use serde::Serialize;
use sharenet_ledger::LedgerEntry;
use sharenet_proto::NanoUsd;

use super::types::{DAY_MS, month_start};

/// Usage of one end customer (or of the app's own calls) in one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UsageLine {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub charged: NanoUsd,
    pub provider_cost: NanoUsd,
    pub network_fee: NanoUsd,
    pub margin: NanoUsd,
}

impl UsageLine {
    fn add(&mut self, e: &LedgerEntry) {
        let r = e.receipt.receipt();
        self.requests += 1;
        self.input_tokens += u64::from(r.input_tokens);
        self.output_tokens += u64::from(r.output_tokens);
        self.charged = self.charged.saturating_add(e.charge.total);
        self.provider_cost = self.provider_cost.saturating_add(e.charge.provider_cost);
        self.network_fee = self.network_fee.saturating_add(e.charge.network_fee);
        self.margin = self.margin.saturating_add(e.charge.margin);
    }
}

/// Every app's usage, as booked so far.
#[derive(Default)]
pub(super) struct Usage {
    /// (app, end customer or "", month start) → usage.
    by_customer: BTreeMap<(String, String, u64), UsageLine>,
    /// (app, model, month start) → usage.
    by_model: BTreeMap<(String, String, u64), UsageLine>,
    /// (app, UTC day number) → usage.
    by_day: BTreeMap<(String, u64), UsageLine>,
}

impl Usage {
    /// Counts a booked entry.
    pub(super) fn add(&mut self, e: &LedgerEntry) {
        let at = e.recorded_at_ms;
        let customer = e.end_customer.clone().unwrap_or_default();
        self.by_customer
            .entry((e.app.clone(), customer, month_start(at)))
            .or_default()
            .add(e);
        let model = e.receipt.receipt().model.clone();
        self.by_model
            .entry((e.app.clone(), model, month_start(at)))
            .or_default()
            .add(e);
        self.by_day
            .entry((e.app.clone(), at / DAY_MS))
            .or_default()
            .add(e);
    }

    /// Usage lines of an app: (end customer, month start ms, usage).
    pub(super) fn of_app(&self, app: &str) -> Vec<(String, u64, UsageLine)> {
        self.by_customer
            .iter()
            .filter(|((a, _, _), _)| a == app)
            .map(|((_, c, m), u)| (c.clone(), *m, *u))
            .collect()
    }

    /// An app's usage per model in the month starting at `month_start_ms`.
    pub(super) fn by_model(&self, app: &str, month_start_ms: u64) -> Vec<(String, UsageLine)> {
        self.by_model
            .iter()
            .filter(|((a, _, m), _)| a == app && *m == month_start_ms)
            .map(|((_, model, _), u)| (model.clone(), *u))
            .collect()
    }

    /// An app's usage per UTC day from `first_day` on.
    pub(super) fn by_day(&self, app: &str, first_day: u64) -> Vec<(u64, UsageLine)> {
        self.by_day
            .range((app.to_owned(), first_day)..=(app.to_owned(), u64::MAX))
            .map(|((_, day), u)| (*day, *u))
            .collect()
    }
}
