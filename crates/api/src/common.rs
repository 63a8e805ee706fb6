//! The small shapes every endpoint shares: `List` and `Cost`.

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
