//! Per-request routing preferences: OpenRouter's `provider` object and the
//! `models` fallback list, parsed strictly (an unknown field in `provider`
//! is a 400 naming it).
//!
//! Differences from OpenRouter, because sharenet's providers are nodes and
//! money is integers: `order` / `only` / `ignore` name nodes by their
//! ed25519 public key in hex (as receipts show them); `max_price` is in
//! nano-USD per token (`{"prompt": 200, "completion": 400}` = $0.20 / $0.40
//! per million tokens), integers only.

use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// What to optimise first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    Price,
    Latency,
    Throughput,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxPrice {
    /// nano-USD per prompt token.
    pub prompt: Option<u64>,
    /// nano-USD per completion token.
    pub completion: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderFile {
    sort: Option<SortKey>,
    #[serde(default)]
    order: Vec<String>,
    #[serde(default)]
    only: Vec<String>,
    #[serde(default)]
    ignore: Vec<String>,
    allow_fallbacks: Option<bool>,
    max_price: Option<MaxPrice>,
    min_trust: Option<f64>,
    region: Option<String>,
    #[serde(default)]
    quantizations: Vec<String>,
    /// Only the app's private pool may serve this request.
    sensitive: Option<bool>,
    /// Only nodes serving exactly these weights (SHA-256, hex).
    weights_sha256: Option<String>,
}

/// Validated preferences.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderPrefs {
    pub sort: Option<SortKey>,
    pub order: Vec<[u8; 32]>,
    pub only: Vec<[u8; 32]>,
    pub ignore: Vec<[u8; 32]>,
    pub allow_fallbacks: bool,
    pub max_price: MaxPrice,
    pub min_trust: Option<f64>,
    pub region: Option<String>,
    pub quantizations: Vec<String>,
    pub sensitive: bool,
    pub weights_sha256: Option<[u8; 32]>,
}

fn nodes(field: &str, ids: &[String]) -> Result<Vec<[u8; 32]>, ApiError> {
    ids.iter()
        .enumerate()
        .map(|(i, s)| {
            let bytes = hex::decode(s)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok());
            bytes.ok_or_else(|| {
                ApiError::bad_request(
                    format!("provider.{field}[{i}]: {s:?} is not a node key (64 hex characters)"),
                    Some(&format!("provider.{field}[{i}]")),
                )
            })
        })
        .collect()
}

impl ProviderPrefs {
    /// Parses the request's `provider` value (absent: the defaults).
    pub fn parse(v: Option<&Value>) -> Result<Self, ApiError> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(Self {
                allow_fallbacks: true,
                ..Self::default()
            });
        };
        let f: ProviderFile = serde_json::from_value(v.clone())
            .map_err(|e| ApiError::bad_request(format!("provider: {e}"), Some("provider")))?;
        if let Some(t) = f.min_trust
            && !(0.0..=1.0).contains(&t)
        {
            return Err(ApiError::bad_request(
                "provider.min_trust: must be between 0 and 1",
                Some("provider.min_trust"),
            ));
        }
        Ok(Self {
            sort: f.sort,
            order: nodes("order", &f.order)?,
            only: nodes("only", &f.only)?,
            ignore: nodes("ignore", &f.ignore)?,
            allow_fallbacks: f.allow_fallbacks.unwrap_or(true),
            max_price: f.max_price.unwrap_or_default(),
            min_trust: f.min_trust,
            region: f.region,
            quantizations: f.quantizations,
            sensitive: f.sensitive.unwrap_or(false),
            weights_sha256: match f.weights_sha256 {
                None => None,
                Some(h) => Some(
                    hex::decode(&h)
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| {
                            ApiError::bad_request(
                                format!("provider.weights_sha256: {h:?} is not a SHA-256 (64 hex characters)"),
                                Some("provider.weights_sha256"),
                            )
                        })?,
                ),
            },
        })
    }
}

/// The models to try in order: `model`, then the `models` fallbacks.
pub fn model_list(model: &str, models: Option<&Vec<String>>) -> Result<Vec<String>, ApiError> {
    let mut out = vec![model.to_string()];
    for (i, m) in models.into_iter().flatten().enumerate() {
        if m.trim().is_empty() {
            return Err(ApiError::bad_request(
                format!("models[{i}] must not be empty"),
                Some(&format!("models[{i}]")),
            ));
        }
        if !out.contains(m) {
            out.push(m.clone());
        }
    }
    if out.len() > 8 {
        return Err(ApiError::bad_request("at most 8 models", Some("models")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_openrouter_shapes_and_names_unknown_fields() {
        let key = "ab".repeat(32);
        let p = ProviderPrefs::parse(Some(&json!({
            "sort": "latency", "order": [key], "allow_fallbacks": false,
            "max_price": {"prompt": 100, "completion": 300}, "min_trust": 0.7, "region": "eu"
        })))
        .unwrap();
        assert_eq!(p.sort, Some(SortKey::Latency));
        assert_eq!(p.order, vec![[0xab; 32]]);
        assert!(!p.allow_fallbacks);
        assert_eq!(p.max_price.completion, Some(300));
        assert!(ProviderPrefs::parse(None).unwrap().allow_fallbacks);

        let err = ProviderPrefs::parse(Some(&json!({"sortt": "price"}))).unwrap_err();
        assert!(err.to_string().contains("unknown field `sortt`"), "{err}");
        let err = ProviderPrefs::parse(Some(&json!({"only": ["node-1"]}))).unwrap_err();
        assert!(
            matches!(err, ApiError::BadRequest { param: Some(ref p), .. } if p == "provider.only[0]")
        );
        assert!(ProviderPrefs::parse(Some(&json!({"sort": "cheapest"}))).is_err());
        assert!(ProviderPrefs::parse(Some(&json!({"max_price": {"prompt": 0.5}}))).is_err());
        assert!(ProviderPrefs::parse(Some(&json!({"min_trust": 2}))).is_err());
    }

    #[test]
    fn model_lists_dedupe_and_validate() {
        let l = model_list("a", Some(&vec!["b".into(), "a".into()])).unwrap();
        assert_eq!(l, vec!["a", "b"]);
        assert!(model_list("a", Some(&vec![String::new()])).is_err());
    }
}
