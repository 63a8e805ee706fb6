//! Builder apps and keys as the operator API reads and writes them
//! (`/operator/*`), and the budget, rate-limit and routing-rule types the
//! books store.

use serde::{Deserialize, Serialize};
use sharenet_proto::NanoUsd;

/// Spending caps in nano-USD; `None` is no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    #[serde(default)]
    pub daily: Option<NanoUsd>,
    #[serde(default)]
    pub monthly: Option<NanoUsd>,
    #[serde(default)]
    pub total: Option<NanoUsd>,
}

/// Requests and tokens per minute; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
}

/// An app's routing rules: its private pool of self-hosted nodes, and
/// where sensitive requests may go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRouting {
    /// The builder's own nodes (ed25519 public keys, hex in JSON).
    #[serde(default, with = "crate::hex_keys")]
    pub private_pool: Vec<[u8; 32]>,
    /// Every request of this app is sensitive: only the private pool may
    /// serve it, never a public node. (A request can also mark itself
    /// sensitive with `provider.sensitive`.)
    #[serde(default)]
    pub sensitive: bool,
    /// Whether a non-sensitive request may go to public nodes when the
    /// private pool is full or down. Without it, the private pool only.
    #[serde(default)]
    pub spill_to_public: bool,
    /// Only nodes that state they keep no prompts, for every request of
    /// this app (as `provider.data_collection: "deny"`).
    #[serde(default)]
    pub deny_data_collection: bool,
    /// Only models under these licenses, for every request of this app
    /// (a request's `provider.licenses` narrows it further).
    #[serde(default)]
    pub licenses: Vec<String>,
}

/// `POST /operator/apps`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApp {
    pub id: String,
    pub builder: String,
    #[serde(default)]
    pub name: String,
    /// Basis points of provider cost (100 = 1%).
    #[serde(default)]
    pub margin_bps: u32,
    /// nano-USD per 1M tokens.
    #[serde(default)]
    pub margin_per_mtok: NanoUsd,
    #[serde(default)]
    pub budgets: Budgets,
    #[serde(default)]
    pub customer_budgets: Budgets,
    #[serde(default)]
    pub key_limits: RateLimits,
    #[serde(default)]
    pub customer_limits: RateLimits,
    #[serde(default)]
    pub routing: AppRouting,
}

/// `POST /operator/apps/{app}/keys` (the body may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    #[serde(default)]
    pub budgets: Budgets,
}

/// `POST /operator/apps/{app}/topup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUpRequest {
    pub amount_nano_usd: NanoUsd,
}

/// `POST /operator/settle` (the body may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    /// Any moment inside the period to settle; default: the last period
    /// that has ended.
    pub at_ms: Option<u64>,
}

/// Query of `GET /operator/statements/{label}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementFormat {
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarginObject {
    pub bps: u32,
    pub per_mtok_nano_usd: NanoUsd,
}

/// An app as the operator API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppObject {
    /// `"app"`.
    pub object: String,
    pub id: String,
    pub builder: String,
    pub name: String,
    pub margin: MarginObject,
    pub budgets: Budgets,
    pub customer_budgets: Budgets,
    pub key_limits: RateLimits,
    pub customer_limits: RateLimits,
    pub routing: AppRouting,
    /// A decimal string.
    pub balance_nano_usd: String,
    pub created_at_ms: u64,
}

/// An API key as the operator API shows it; `key` (the plaintext) only in
/// the answer that created it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyObject {
    /// `"api_key"`.
    pub object: String,
    pub id: String,
    pub app: String,
    pub budgets: Budgets,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `POST /operator/apps/{app}/topup`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceObject {
    /// `"balance"`.
    pub object: String,
    pub app: String,
    /// A decimal string.
    pub balance_nano_usd: String,
}
