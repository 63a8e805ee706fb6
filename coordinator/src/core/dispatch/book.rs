//! The one check-and-book step, used when a job finishes and when a broken
//! stream is charged from its last running receipt: check the node's
//! receipt against what the coordinator saw and the job's bounds,
//! countersign it, and turn the hold into the real charge, durably, before
//! anyone is told.

use sharenet_ledger::{LedgerEntry, StoreError};
use sharenet_market::CountedBy;
use sharenet_p2p::PeerId;
use sharenet_proto::{CountersignedReceipt, JobId};

use crate::core::accounts::{CommitError, Hold};
use crate::core::error::Error;
use crate::core::receipts::{Expected, ReceiptRejection, check_receipt};
use crate::core::routing::Outcome;
use crate::core::{Core, now_ms};

/// What a job was agreed at: who serves it, at what prices, for which
/// request, and the most input tokens it may be charged for.
#[derive(Debug, Clone)]
pub(super) struct Terms {
    pub job_id: JobId,
    pub peer: PeerId,
    pub node: [u8; 32],
    pub model: String,
    pub price_in: u64,
    pub price_out: u64,
    pub request_digest: [u8; 32],
    /// The hold's bound on input tokens (the coordinator's count, or
    /// every prompt byte a token).
    pub max_input_tokens: u64,
    /// The prompt's tokens as the coordinator counted them (a catalogued
    /// text model): the receipt must carry exactly this.
    pub input_tokens: Option<u32>,
    /// The model's renderer and tokenizer, to count the output with.
    pub prompt: Option<std::sync::Arc<sharenet_prompt::PromptModel>>,
}

impl Terms {
    /// Who counts this job's tokens: the coordinator exactly when it has
    /// the model's renderer and tokenizer (a catalogued text model; the
    /// receipt must then carry its counts), else the node (an
    /// uncatalogued model allowed by the operator, or embeddings).
    pub fn counted_by(&self) -> CountedBy {
        if self.prompt.is_some() {
            CountedBy::Coordinator
        } else {
            CountedBy::Node
        }
    }
}

/// What the node claims, next to what the coordinator relayed.
pub(super) struct Claim<'a> {
    /// The node-signed receipt.
    pub receipt: &'a [u8],
    /// Output tokens the node's deltas added up to (what was relayed).
    pub streamed_tokens: u32,
    /// The counts the node reported beside the receipt (its `Done` usage;
    /// for a running receipt, the receipt's own).
    pub reported_input_tokens: u32,
    pub reported_output_tokens: u32,
    /// SHA-256 of exactly what was relayed to the builder.
    pub response_digest: [u8; 32],
    /// The output tokens the coordinator counted from the node's ids
    /// (`count.rs`), when it counts them: the receipt must carry exactly
    /// this.
    pub counted_output_tokens: Option<u32>,
}

/// Checks `claim` against `terms`; on success countersigns and books it
/// with `hold`. A rejection is counted, logged and recorded against the
/// node (`RejectedReceipt`), and the hold is released: nothing is charged.
pub(super) async fn check_and_book(
    core: &Core,
    terms: &Terms,
    hold: Hold,
    claim: Claim<'_>,
) -> Result<(LedgerEntry, CountersignedReceipt), Error> {
    let checked = check(core, terms, &claim);
    let signed = match checked {
        Ok(s) => s,
        Err(rejection) => {
            reject(
                core,
                terms,
                rejection.reason(),
                &rejection.to_string(),
                claim.receipt,
            );
            return Err(Error::BadGateway(format!(
                "the node's receipt was rejected: {rejection}"
            )));
        }
    };
    let countersigned = CountersignedReceipt::countersign(signed, core.identity.signing_key())
        .map_err(|e| Error::Internal(format!("countersign receipt: {e}")))?;
    let to_book = countersigned.clone();
    // A task of its own: once handed to the books the entry is booked,
    // even if this request is dropped meanwhile; no thread waits for the
    // flush.
    match tokio::spawn(hold.commit_counted_async(to_book, Some(terms.counted_by()), now_ms()))
        .await?
    {
        Ok(entry) => {
            core.metrics.receipts_accepted.inc();
            Ok((entry, countersigned))
        }
        Err(CommitError::Store(StoreError::Duplicate(id))) => {
            core.metrics.receipt_rejected("replay");
            Err(Error::BadGateway(format!(
                "receipt {id} was already recorded"
            )))
        }
        Err(e @ CommitError::OverHold { .. }) => {
            reject(core, terms, "over_hold", &e.to_string(), claim.receipt);
            Err(Error::BadGateway(format!(
                "the node's receipt was rejected: {e}"
            )))
        }
        Err(e @ CommitError::HoldLapsed { .. }) => {
            // Not the node's fault: the books refused to charge a hold
            // admissions had stopped counting (logged by the accounts).
            // Neither charged nor paid; the builder hears why.
            core.metrics.receipt_rejected("hold_lapsed");
            tracing::warn!(job = %terms.job_id, node = %terms.peer, error = %e, "job not booked");
            Err(e.into())
        }
        // Busy books: a 503 with `Retry-After`; anything else: a 500.
        Err(e) => Err(e.into()),
    }
}

fn check(
    core: &Core,
    terms: &Terms,
    claim: &Claim<'_>,
) -> Result<sharenet_proto::SignedReceipt, ReceiptRejection> {
    if let Some(counted) = terms.input_tokens
        && claim.reported_input_tokens != counted
    {
        return Err(ReceiptRejection::InputCount {
            claimed: claim.reported_input_tokens,
            counted,
        });
    }
    if let Some(counted) = claim.counted_output_tokens
        && claim.reported_output_tokens != counted
    {
        return Err(ReceiptRejection::OutputCount {
            claimed: claim.reported_output_tokens,
            counted,
        });
    }
    let output_tokens = claim
        .counted_output_tokens
        .unwrap_or(claim.reported_output_tokens);
    if u64::from(claim.reported_input_tokens) > terms.max_input_tokens {
        return Err(ReceiptRejection::InputTokensOverBound {
            claimed: claim.reported_input_tokens,
            bound: terms.max_input_tokens,
        });
    }
    // A model the coordinator cannot count: the node's word, bounded by
    // the tokens it streamed (a node signs the billing rule's count, which
    // may be fewer).
    if claim.counted_output_tokens.is_none() && claim.reported_output_tokens > claim.streamed_tokens
    {
        return Err(ReceiptRejection::OutputTokens {
            claimed: claim.reported_output_tokens,
            streamed: claim.streamed_tokens,
        });
    }
    check_receipt(
        claim.receipt,
        &Expected {
            job_id: terms.job_id,
            node: terms.node,
            coordinator: core.identity.public_key(),
            model: terms.model.clone(),
            price_in: terms.price_in,
            price_out: terms.price_out,
            streamed_tokens: output_tokens,
            reported_input_tokens: claim.reported_input_tokens,
            request_digest: terms.request_digest,
            response_digest: claim.response_digest,
        },
    )
}

fn reject(core: &Core, terms: &Terms, label: &'static str, reason: &str, receipt: &[u8]) {
    core.metrics.receipt_rejected(label);
    core.routing
        .record(terms.node, Outcome::RejectedReceipt, now_ms());
    // The receipt is the node's bytes: log a bounded prefix only.
    let shown = &receipt[..receipt.len().min(512)];
    tracing::warn!(
        job = %terms.job_id, node = %terms.peer, %reason,
        receipt_prefix = %hex::encode(shown), receipt_len = receipt.len(),
        "receipt rejected"
    );
}
