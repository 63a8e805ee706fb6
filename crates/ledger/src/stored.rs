//! The types the books store inside their records, owned here so the
//! ledger depends on no HTTP type: an app's budgets, rate limits and
//! routing rules (inside `AppRecord` and `KeyRecord`, `books.rs`),
//! and a booked job's facts for `generation` lookups.
//!
//! Their JSON is stored data (sled and PostgreSQL): field names and serde
//! attributes must stay as they are so existing records read back. The
//! operator API has wire types of the same shape (`sharenet_api`); the
//! coordinator converts between the two.

use serde::{Deserialize, Serialize};
use sharenet_market::Charge;
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
    #[serde(default, with = "sharenet_proto::hex_keys")]
    pub private_pool: Vec<[u8; 32]>,
    /// Every request of this app is sensitive: only the private pool may
    /// serve it, never a public node.
    #[serde(default)]
    pub sensitive: bool,
    /// Whether a non-sensitive request may go to public nodes when the
    /// private pool is full or down. Without it, the private pool only.
    #[serde(default)]
    pub spill_to_public: bool,
    /// Only nodes that state they keep no prompts, for every request of
    /// this app.
    #[serde(default)]
    pub deny_data_collection: bool,
    /// Only models under these licenses, for every request of this app.
    #[serde(default)]
    pub licenses: Vec<String>,
}

/// What a booked job was charged and its parts, in integer nano-USD
/// (`charge = provider + network_fee + margin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostFacts {
    pub charge_nano_usd: u64,
    pub provider_nano_usd: u64,
    pub network_fee_nano_usd: u64,
    pub margin_nano_usd: u64,
    /// Always `"nano-USD"`.
    pub unit: String,
}

impl CostFacts {
    /// The charge in USD, for display: computed from the integer, never
    /// summed or stored as money.
    pub fn usd(&self) -> f64 {
        self.charge_nano_usd as f64 / 1e9
    }
}

impl From<&Charge> for CostFacts {
    fn from(c: &Charge) -> Self {
        Self {
            charge_nano_usd: c.total,
            provider_nano_usd: c.provider_cost,
            network_fee_nano_usd: c.network_fee,
            margin_nano_usd: c.margin,
            unit: "nano-USD".into(),
        }
    }
}

/// One booked job's facts, kept for `generation` lookups: what ran where,
/// for how long, and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationFacts {
    /// The receipt id (the job id in hex).
    pub id: String,
    pub model: String,
    /// The node that served (peer id).
    pub provider_name: String,
    /// The app that paid (only it can look the generation up).
    pub app_id: String,
    /// Unix milliseconds when the request reached a node.
    pub created_at_ms: u64,
    pub tokens_prompt: u32,
    pub tokens_completion: u32,
    /// USD, from `cost_details`.
    pub total_cost: f64,
    pub cost_details: CostFacts,
    /// From sending the job to its end, ms.
    pub latency: u64,
    /// Time to the first token, ms.
    pub time_to_first_token: u64,
    /// From the first token to the end, ms.
    pub generation_time: u64,
    /// `stop`, `length`, `tool_calls`; `null` when cancelled.
    pub finish_reason: Option<String>,
    /// The client went away or the node broke mid-stream: the part
    /// delivered was booked.
    pub cancelled: bool,
    /// Who counted the tokens; absent in facts kept before it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_by: Option<sharenet_market::CountedBy>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records written before these types moved here read back, and are
    /// written the same way.
    #[test]
    fn stored_json_is_unchanged() {
        let routing = r#"{"private_pool":["0101010101010101010101010101010101010101010101010101010101010101"],"sensitive":true,"spill_to_public":false,"deny_data_collection":true,"licenses":["mit"]}"#;
        let r: AppRouting = serde_json::from_str(routing).unwrap();
        assert_eq!(r.private_pool, vec![[1u8; 32]]);
        assert_eq!(serde_json::to_string(&r).unwrap(), routing);
        let budgets = r#"{"daily":1,"monthly":null,"total":3}"#;
        let b: Budgets = serde_json::from_str(budgets).unwrap();
        assert_eq!(serde_json::to_string(&b).unwrap(), budgets);
        let b: Budgets = serde_json::from_str("{}").unwrap();
        assert_eq!(b, Budgets::default());
        let limits = r#"{"requests_per_minute":4,"tokens_per_minute":null}"#;
        let l: RateLimits = serde_json::from_str(limits).unwrap();
        assert_eq!(serde_json::to_string(&l).unwrap(), limits);
        let facts = r#"{"id":"00","model":"m","provider_name":"p","app_id":"a","created_at_ms":1,"tokens_prompt":2,"tokens_completion":3,"total_cost":1e-9,"cost_details":{"charge_nano_usd":1,"provider_nano_usd":1,"network_fee_nano_usd":0,"margin_nano_usd":0,"unit":"nano-USD"},"latency":4,"time_to_first_token":5,"generation_time":6,"finish_reason":null,"cancelled":true}"#;
        let g: GenerationFacts = serde_json::from_str(facts).unwrap();
        assert_eq!(serde_json::to_string(&g).unwrap(), facts);
        assert_eq!(g.counted_by, None, "kept before who counted was");
        let counted = facts.replace(
            r#""cancelled":true}"#,
            r#""cancelled":true,"counted_by":"coordinator"}"#,
        );
        let g: GenerationFacts = serde_json::from_str(&counted).unwrap();
        assert_eq!(g.counted_by, Some(sharenet_market::CountedBy::Coordinator));
        assert_eq!(serde_json::to_string(&g).unwrap(), counted);
    }
}
