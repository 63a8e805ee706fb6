//! The HTTP wire types of sharenet, in one place: the OpenAI-compatible
//! requests and responses the coordinator speaks, the receipt, proof and
//! statement JSON builders and providers read, and the operator API's
//! bodies. The coordinator writes them, and `sharenet-node reconcile`,
//! `sharenet-verify` and the end-to-end tests read them, so every side
//! agrees on one definition.
//!
//! Architecture invariant: serde types only. This crate knows nothing of
//! HTTP servers, storage or networks (it depends on `serde` and the pure
//! `proto` and `market` crates), and holds no logic beyond constructors,
//! conversions to and from `proto`'s job types, and the reading of the
//! request fields that check themselves (`field.rs`: `tools`,
//! `tool_choice`, `response_format`, `provider`), every refusal naming
//! the field.

pub mod accounts;
pub mod anthropic;
pub mod dashboard;
pub mod field;
pub mod openai;
pub mod provider;
pub mod receipts;
pub mod statements;
pub mod tools;

use serde::{Deserialize, Serialize};

/// `{"object": "list", "data": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct List<T> {
    pub object: String,
    pub data: Vec<T>,
}

impl<T> List<T> {
    pub fn new(data: Vec<T>) -> Self {
        Self {
            object: "list".into(),
            data,
        }
    }
}

/// The `cost` object: what the builder was charged for a job and its
/// parts, in integer nano-USD (`charge = provider + network_fee + margin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    pub charge_nano_usd: u64,
    pub provider_nano_usd: u64,
    pub network_fee_nano_usd: u64,
    pub margin_nano_usd: u64,
    /// Always `"nano-USD"`.
    pub unit: String,
}

impl Cost {
    /// The charge in USD, for display (`usage.cost`): computed from the
    /// integer, never summed or stored.
    pub fn usd(&self) -> f64 {
        self.charge_nano_usd as f64 / 1e9
    }
}

impl From<&sharenet_market::Charge> for Cost {
    fn from(c: &sharenet_market::Charge) -> Self {
        Self {
            charge_nano_usd: c.total,
            provider_nano_usd: c.provider_cost,
            network_fee_nano_usd: c.network_fee,
            margin_nano_usd: c.margin,
            unit: "nano-USD".into(),
        }
    }
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`
/// (also sent as an SSE event when a stream fails; then it may carry the
/// `usage` and `receipt_id` of what was delivered and charged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorObject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<openai::Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// Serde for lists of 32-byte keys as hex strings.
pub mod hex_keys {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|h| {
                hex::decode(h)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        serde::de::Error::custom(format!(
                            "{h:?} is not a node key (64 hex characters)"
                        ))
                    })
            })
            .collect()
    }
}
