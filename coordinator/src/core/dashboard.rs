//! The documents the web dashboard reads (`sharenet_api::dashboard`):
//! the builder's view of one app, and the operator's view of the network.
//! Built from in-memory aggregates where they exist (running totals of
//! usage by day, model and end customer, kept as entries are booked;
//! routing state; the request timeline) and from the books only for the
//! newest receipts and, for each, the statement that settled it (one
//! lookup in the job → statement index), so a page load costs the same
//! whatever an app's history and however many jobs are settled.

use std::collections::HashMap;

use sharenet_api::dashboard::{
    BuilderDashboard, DAYS, DaySpend, KeyView, NodeModel, NodeView, OperatorDashboard, RECENT,
    RecentRequest, StatementView, UsageRow,
};
use sharenet_proto::CountersignedReceipt;
use sharenet_router::BreakerState;

use crate::core::accounts::{DAY_MS, UsageLine, month_start};
use crate::core::error::Error;
use crate::core::{Core, now_ms};

fn row(name: String, u: &UsageLine) -> UsageRow {
    UsageRow {
        name,
        requests: u.requests,
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        charged_nano_usd: u.charged.to_string(),
    }
}

/// Rows most spent first (then by name, so the order is stable).
fn ranked(mut rows: Vec<(String, UsageLine)>) -> Vec<UsageRow> {
    rows.sort_by(|a, b| b.1.charged.cmp(&a.1.charged).then(a.0.cmp(&b.0)));
    rows.iter().map(|(n, u)| row(n.clone(), u)).collect()
}

impl Core {
    /// `GET /v1/dashboard` for `app`.
    pub async fn builder_dashboard(&self, app: &str) -> Result<BuilderDashboard, Error> {
        let now = now_ms();
        let today = now / DAY_MS;
        let first_day = today.saturating_sub(DAYS as u64 - 1);
        let by_day: HashMap<u64, UsageLine> = self
            .accounts
            .usage_by_day(app, first_day)
            .into_iter()
            .collect();
        let spend_by_day = (first_day..=today)
            .map(|d| {
                let u = by_day.get(&d).copied().unwrap_or_default();
                DaySpend {
                    start_ms: d * DAY_MS,
                    requests: u.requests,
                    charged_nano_usd: u.charged.to_string(),
                }
            })
            .collect();
        let month = month_start(now);
        let by_model = ranked(self.accounts.usage_by_model(app, month));
        let by_end_customer = ranked(
            self.accounts
                .usage(app)
                .into_iter()
                .filter(|(_, m, _)| *m == month)
                .map(|(c, _, u)| (c, u))
                .collect(),
        );
        let keys = self
            .accounts
            .keys(app)
            .into_iter()
            .map(|k| KeyView {
                id: k.id,
                created_at_ms: k.created_at_ms,
                revoked_at_ms: k.revoked_at_ms,
            })
            .collect();
        let ours = self.accounts.countersigners(&self.identity.public_key());
        let owner = app.to_owned();
        let recent = self
            .read_books(move |books| {
                let mut out = Vec::with_capacity(RECENT);
                for e in books.recent_entries_of_app(&owner, RECENT) {
                    let e = e?;
                    let r = e.receipt.receipt();
                    let timing = books.generation(&r.job_id)?;
                    // Re-checked from the stored bytes: both signatures,
                    // and made out to this coordinator.
                    let verified = ours.contains(&r.coordinator)
                        && CountersignedReceipt::from_bytes(&e.receipt.to_bytes()).is_ok();
                    out.push(RecentRequest {
                        id: r.job_id.to_hex(),
                        model: r.model.clone(),
                        provider: sharenet_p2p::peer_id_of(&r.node)
                            .map(|p| p.to_string())
                            .unwrap_or_default(),
                        end_customer: e.end_customer.clone(),
                        recorded_at_ms: e.recorded_at_ms,
                        input_tokens: r.input_tokens,
                        output_tokens: r.output_tokens,
                        counted_by: e.counted_by,
                        charged_nano_usd: e.charge.total.to_string(),
                        latency_ms: timing.as_ref().map(|g| g.latency),
                        ttft_ms: timing.as_ref().map(|g| g.time_to_first_token),
                        verified,
                        // The statement that covers it: one index lookup.
                        settled_in: books.settled_in(&r.job_id)?,
                    });
                }
                Ok(out)
            })
            .await?;
        Ok(BuilderDashboard {
            object: "builder_dashboard".into(),
            app: app.to_owned(),
            balance_nano_usd: self.accounts.balance(app).max(0).to_string(),
            spend_by_day,
            by_model,
            by_end_customer,
            recent,
            keys,
        })
    }

    /// `GET /operator/dashboard`.
    pub async fn operator_dashboard(&self) -> Result<OperatorDashboard, Error> {
        let now = now_ms();
        let states = self.routing.node_states(now);
        let mut nodes: Vec<NodeView> = self
            .registry
            .live_adverts(now)
            .into_iter()
            .map(|(peer, a)| {
                let state = states.get(&a.node);
                let observed = state.map(|s| &s.2);
                NodeView {
                    peer_id: peer.to_string(),
                    region: a.region.clone(),
                    relayed: a.relayed,
                    models: a
                        .models
                        .iter()
                        .map(|m| NodeModel {
                            id: m.id.clone(),
                            price_in: m.price_in,
                            price_out: m.price_out,
                        })
                        .collect(),
                    trust: state.map_or(0.0, |s| s.0),
                    breaker: match state.map(|s| s.1) {
                        Some(BreakerState::Open { .. }) => "open",
                        Some(BreakerState::HalfOpen) => "half_open",
                        _ => "closed",
                    }
                    .into(),
                    ttft_ms: observed.and_then(|o| o.ttft_ewma_ms),
                    tokens_per_sec: observed.and_then(|o| o.tokens_per_sec_ewma),
                    rtt_ms: observed.and_then(|o| o.rtt_ms),
                    in_flight: observed.map_or(0, |o| o.in_flight),
                    queue_depth: a.queue_depth,
                    max_concurrency: a.max_concurrency,
                    gpus: a
                        .gpus
                        .iter()
                        .map(|g| format!("{} ({} MiB)", g.name, g.memory_mib))
                        .collect(),
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        let mut statements: Vec<StatementView> = self
            .statements()
            .await?
            .iter()
            .map(|s| {
                let st = s.statement();
                StatementView {
                    label: st.period.label(),
                    start_ms: st.period.start_ms,
                    end_ms: st.period.end_ms,
                    jobs: st.receipts,
                    charged_nano_usd: st.total_charged.to_string(),
                    provider_nano_usd: st.total_provider.to_string(),
                    network_fee_nano_usd: st.total_network_fee.to_string(),
                    merkle_root: hex::encode(st.merkle_root),
                }
            })
            .collect();
        statements.sort_by_key(|s| std::cmp::Reverse(s.start_ms));
        Ok(OperatorDashboard {
            object: "operator_dashboard".into(),
            now_ms: now,
            nodes,
            minutes: self.metrics.timeline(now),
            statements,
        })
    }
}
