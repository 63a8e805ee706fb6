//! The `provider` routing object of chat, completions, embeddings and
//! Messages requests (OpenRouter's shape), read strictly: an unknown field
//! is refused by name, and the node keys and weights hash must be 64 hex
//! characters.
//!
//! Differences from OpenRouter, because sharenet's providers are nodes and
//! money is integers: `order` / `only` / `ignore` name nodes by their
//! ed25519 public key in hex (as receipts show them); `max_price` is in
//! nano-USD per token (`{"prompt": 200, "completion": 400}` = $0.20 /
//! $0.40 per million tokens), integers only.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::field::{FieldError, FromField};

/// The `provider` object (OpenRouter's shape). Differences, because
/// sharenet's providers are nodes and money is integers: `order` / `only`
/// / `ignore` name nodes by their ed25519 public key in hex (as receipts
/// show them); `max_price` is in nano-USD per token, integers only.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderPreferences {
    pub sort: Option<SortKey>,
    #[serde(default)]
    pub order: Vec<String>,
    #[serde(default)]
    pub only: Vec<String>,
    #[serde(default)]
    pub ignore: Vec<String>,
    pub allow_fallbacks: Option<bool>,
    pub max_price: Option<MaxPrice>,
    pub min_trust: Option<f64>,
    pub region: Option<String>,
    #[serde(default)]
    pub quantizations: Vec<String>,
    /// Only the app's private pool may serve this request.
    pub sensitive: Option<bool>,
    /// Only nodes serving exactly these weights (SHA-256, hex).
    pub weights_sha256: Option<String>,
    /// `"deny"`: only nodes that state they keep no prompts (OpenRouter's
    /// meaning); `"allow"` (the default): any.
    pub data_collection: Option<DataCollection>,
    /// Only models under one of these licenses (e.g. `["apache-2.0",
    /// "mit"]`, case-insensitive); a model with no stated license never
    /// matches.
    #[serde(default)]
    pub licenses: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataCollection {
    Allow,
    Deny,
}

/// What to optimise first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    Price,
    Latency,
    Throughput,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaxPrice {
    /// nano-USD per prompt token.
    pub prompt: Option<u64>,
    /// nano-USD per completion token.
    pub completion: Option<u64>,
}

/// Serde's shape, an error being `provider: {serde's reason}`; what serde
/// cannot check is checked as it is read, by the methods below.
impl FromField for ProviderPreferences {
    fn from_field(v: &Value) -> Result<Self, FieldError> {
        serde_json::from_value(v.clone())
            .map_err(|e| FieldError::new(format!("provider: {e}"), "provider"))
    }
}

impl ProviderPreferences {
    /// `min_trust` must be between 0 and 1.
    pub fn check_min_trust(&self) -> Result<(), FieldError> {
        match self.min_trust {
            Some(t) if !(0.0..=1.0).contains(&t) => Err(FieldError::new(
                "provider.min_trust: must be between 0 and 1",
                "provider.min_trust",
            )),
            _ => Ok(()),
        }
    }

    /// `order` as node keys.
    pub fn order_keys(&self) -> Result<Vec<[u8; 32]>, FieldError> {
        node_keys("order", &self.order)
    }

    /// `only` as node keys.
    pub fn only_keys(&self) -> Result<Vec<[u8; 32]>, FieldError> {
        node_keys("only", &self.only)
    }

    /// `ignore` as node keys.
    pub fn ignore_keys(&self) -> Result<Vec<[u8; 32]>, FieldError> {
        node_keys("ignore", &self.ignore)
    }

    /// `weights_sha256` as the 32 bytes of the hash.
    pub fn weights_hash(&self) -> Result<Option<[u8; 32]>, FieldError> {
        let Some(h) = &self.weights_sha256 else {
            return Ok(None);
        };
        hex32(h).map(Some).ok_or_else(|| {
            FieldError::new(
                format!("provider.weights_sha256: {h:?} is not a SHA-256 (64 hex characters)"),
                "provider.weights_sha256",
            )
        })
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
}

fn node_keys(field: &str, ids: &[String]) -> Result<Vec<[u8; 32]>, FieldError> {
    ids.iter()
        .enumerate()
        .map(|(i, s)| {
            hex32(s).ok_or_else(|| {
                FieldError::new(
                    format!("provider.{field}[{i}]: {s:?} is not a node key (64 hex characters)"),
                    format!("provider.{field}[{i}]"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_strictly_and_names_the_field() {
        let key = "ab".repeat(32);
        let p = ProviderPreferences::from_field(&json!({"order": [key], "only": ["x"],
            "weights_sha256": "cd".repeat(32), "min_trust": 0.5}))
        .unwrap();
        assert_eq!(p.order_keys().unwrap(), vec![[0xab; 32]]);
        assert_eq!(p.weights_hash().unwrap(), Some([0xcd; 32]));
        assert!(p.check_min_trust().is_ok());
        let e = p.only_keys().unwrap_err();
        assert_eq!(e.param, "provider.only[0]");
        assert_eq!(
            e.message,
            "provider.only[0]: \"x\" is not a node key (64 hex characters)"
        );

        let e = ProviderPreferences::from_field(&json!({"sortt": "price"})).unwrap_err();
        assert_eq!(e.param, "provider");
        assert!(
            e.message.starts_with("provider: unknown field `sortt`"),
            "{e}"
        );
        let p = ProviderPreferences::from_field(&json!({"min_trust": 2})).unwrap();
        assert_eq!(p.check_min_trust().unwrap_err().param, "provider.min_trust");
        let p = ProviderPreferences::from_field(&json!({"weights_sha256": "abc"})).unwrap();
        assert_eq!(
            p.weights_hash().unwrap_err().param,
            "provider.weights_sha256"
        );
    }
}
