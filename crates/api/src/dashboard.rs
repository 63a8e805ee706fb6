//! What the web dashboard (`/dashboard`) reads: one document per view,
//! computed by the coordinator. Money is integer nano-USD sent as decimal
//! strings (JavaScript numbers lose integers above 2^53).

use serde::{Deserialize, Serialize};

/// `GET /v1/dashboard`: the builder's view of its own app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuilderDashboard {
    /// `"builder_dashboard"`.
    pub object: String,
    pub app: String,
    pub balance_nano_usd: String,
    /// The last [`DAYS`] UTC days, oldest first, days without spend
    /// included.
    pub spend_by_day: Vec<DaySpend>,
    /// This calendar month, by model, most spent first.
    pub by_model: Vec<UsageRow>,
    /// This calendar month, by end customer (`""`: none named), most
    /// spent first.
    pub by_end_customer: Vec<UsageRow>,
    /// The most recent requests, newest first.
    pub recent: Vec<RecentRequest>,
    /// The app's API keys (handles only, never the secrets).
    pub keys: Vec<KeyView>,
}

/// Days of spend the builder view charts.
pub const DAYS: usize = 30;
/// Requests the builder view lists.
pub const RECENT: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaySpend {
    /// The UTC day's first millisecond.
    pub start_ms: u64,
    pub requests: u64,
    pub charged_nano_usd: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The model, or the end customer.
    pub name: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub charged_nano_usd: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentRequest {
    /// The receipt id.
    pub id: String,
    pub model: String,
    /// The node that served it (peer id).
    pub provider: String,
    pub end_customer: Option<String>,
    pub recorded_at_ms: u64,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Who counted those tokens (`coordinator` or `node`); `None` for
    /// jobs booked before it was kept.
    #[serde(default)]
    pub counted_by: Option<crate::catalog::CountedBy>,
    pub charged_nano_usd: String,
    /// From sending the job to its end, and to its first token (ms);
    /// `None` where the coordinator kept no timing.
    pub latency_ms: Option<u64>,
    pub ttft_ms: Option<u64>,
    /// Both signatures re-checked now, and the receipt made out to this
    /// coordinator.
    pub verified: bool,
    /// The settlement statement whose period holds it, once settled.
    pub settled_in: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub id: String,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// `GET /operator/dashboard`: the network as the operator runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorDashboard {
    /// `"operator_dashboard"`.
    pub object: String,
    pub now_ms: u64,
    /// Nodes with a live advert.
    pub nodes: Vec<NodeView>,
    /// Inference requests per minute over the last hour, oldest first.
    pub minutes: Vec<MinuteStats>,
    /// Settled periods, newest first.
    pub statements: Vec<StatementView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub peer_id: String,
    pub region: String,
    pub relayed: bool,
    pub models: Vec<NodeModel>,
    /// 0 to 1.
    pub trust: f64,
    /// `closed`, `open` or `half_open`.
    pub breaker: String,
    pub ttft_ms: Option<f64>,
    pub tokens_per_sec: Option<f64>,
    pub rtt_ms: Option<f64>,
    /// This coordinator's jobs on it now.
    pub in_flight: u32,
    /// As its last advert says.
    pub queue_depth: u32,
    pub max_concurrency: u32,
    pub gpus: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeModel {
    pub id: String,
    /// Nano-USD per token.
    pub price_in: u64,
    pub price_out: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinuteStats {
    /// The minute's start, Unix ms.
    pub start_ms: u64,
    pub requests: u64,
    /// 4xx answers (the builder's requests refused).
    pub client_errors: u64,
    /// 5xx answers (no node, nodes failing).
    pub server_errors: u64,
    /// Mean time to first token of the minute's answered requests.
    pub ttft_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementView {
    pub label: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub jobs: u64,
    pub charged_nano_usd: String,
    pub provider_nano_usd: String,
    pub network_fee_nano_usd: String,
    pub merkle_root: String,
}
