//! Receipts as builders read them (`/v1/receipts`), and inclusion proofs.

use serde::{Deserialize, Serialize};
use sharenet_market::merkle::InclusionProof;
use sharenet_proto::Receipt;

use crate::Cost;

/// One job's receipt: the node's receipt fields, who it was for, what it
/// cost, both signatures and the countersigned bytes (what
/// `sharenet-verify receipt` checks offline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptObject {
    /// The receipt id (= the job id, 32 hex digits).
    pub id: String,
    /// `"receipt"`.
    pub object: String,
    pub receipt: Receipt,
    pub end_customer: Option<String>,
    pub key_id: String,
    pub cost: Cost,
    pub recorded_at_ms: u64,
    /// Who counted the tokens charged: `coordinator` (with the model's
    /// catalogued tokenizer; the node's signed counts had to match) or
    /// `node` (its word). Absent for receipts booked before it was kept.
    /// Not part of the signed receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_by: Option<crate::catalog::CountedBy>,
    /// Hex.
    pub node_signature: String,
    /// Hex.
    pub coordinator_signature: String,
    /// Hex of the canonical countersigned receipt.
    pub countersigned_bytes: String,
}

/// Query of `GET /v1/receipts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptFilter {
    pub end_customer: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// `GET /v1/receipts/{id}/proof`: the receipt's inclusion in the
/// statement that settled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProofObject {
    /// `"inclusion_proof"`.
    pub object: String,
    pub receipt_id: String,
    /// The statement's label.
    pub statement: String,
    pub proof: InclusionProof,
}
