//! Settled periods: the public bundle providers reconcile against, the
//! builder's view of its own line, the operator's statements, and usage.

use serde::{Deserialize, Serialize};
use sharenet_market::BuilderProof;
use sharenet_market::merkle::InclusionProof;
use sharenet_proto::{NanoUsd, PublicKey};

/// One leaf of a statement bundle, in Merkle (job id) order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleLeaf {
    #[serde(with = "hex::serde")]
    pub job_id: [u8; 16],
    #[serde(with = "hex::serde")]
    pub node: PublicKey,
    pub amount: NanoUsd,
    /// The RFC 6962 leaf hash of the countersigned receipt.
    #[serde(with = "hex::serde")]
    pub leaf: [u8; 32],
}

/// `GET /statements/{label}` (public): the signed statement and, per
/// receipt in Merkle order, its job id, node, amount and leaf hash, so
/// anyone can recompute the root and each node can check its receipts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementBundle {
    /// `"statement_bundle"`.
    pub object: String,
    pub label: String,
    /// The canonical signed statement, hex.
    #[serde(with = "hex::serde")]
    pub signed_statement: Vec<u8>,
    pub leaves: Vec<BundleLeaf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodRange {
    pub start_ms: u64,
    pub end_ms: u64,
}

/// `GET /v1/statements`: one settled period with the caller's app's line
/// and its proof against the signed statement's `builders_root`. The
/// signed statement names no builder: other apps' lines are not shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderStatement {
    /// `"statement"`.
    pub object: String,
    pub label: String,
    pub period: PeriodRange,
    /// Hex.
    pub merkle_root: String,
    /// Hex: the root over the period's salted builder lines.
    pub builders_root: String,
    pub app: String,
    pub jobs: u64,
    pub charged_nano_usd: NanoUsd,
    pub payout_nano_usd: NanoUsd,
    /// Hex of the line's salt; absent when the app had no jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_salt: Option<String>,
    /// The line's audit path to `builders_root`; absent when the app had
    /// no jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_proof: Option<InclusionProof>,
    /// Hex of the signed statement.
    pub signed_bytes: String,
}

impl BuilderStatement {
    /// The line as [`sharenet_market::Statement::includes_builder`] checks
    /// it; `None` when the app had no jobs (no salt or proof) or the salt
    /// is not 32 bytes of hex.
    pub fn builder_proof(&self) -> Option<BuilderProof> {
        let salt = hex::decode(self.line_salt.as_deref()?)
            .ok()?
            .try_into()
            .ok()?;
        Some(BuilderProof {
            app: self.app.clone(),
            jobs: self.jobs,
            charged: self.charged_nano_usd,
            payout: self.payout_nano_usd,
            salt,
            proof: self.line_proof.clone()?,
        })
    }
}

/// An operator's view of a statement (`/operator/settle`,
/// `/operator/statements`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementObject {
    /// `"statement"`.
    pub object: String,
    pub label: String,
    /// The statement as JSON (`SignedStatement::to_json`).
    pub statement: serde_json::Value,
    /// Hex of the signed statement.
    pub signed_bytes: String,
    /// On `/operator/settle`: whether this call settled the period (false
    /// when it was settled before and the stored statement is returned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newly_settled: Option<bool>,
}

/// `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// `"usage"`.
    pub object: String,
    pub app: String,
    /// A decimal string (balances may exceed JSON's safe integers).
    pub balance_nano_usd: String,
    pub data: Vec<UsageLine>,
}

/// Usage of one end customer (null: the app's own calls) in one month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageLine {
    pub end_customer: Option<String>,
    /// `YYYY-MM`.
    pub period: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub charged_nano_usd: NanoUsd,
    pub provider_nano_usd: NanoUsd,
    pub network_fee_nano_usd: NanoUsd,
    pub margin_nano_usd: NanoUsd,
}
