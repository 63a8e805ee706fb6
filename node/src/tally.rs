//! The output count a node signs: the coordinator's rule
//! (`sharenet_prompt::count`), applied to the ids the node streams, so a
//! receipt claims exactly what the coordinator counts for the same ids.
//!
//! `billable = min(ids, canonical count of what the ids decode to + two markers
//! per call)`. Computing it re-tokenizes the decoded
//! text, so running receipts carry it every [`RECEIPT_EVERY_IDS`] ids
//! rather than every delta (a broken stream is then booked up to the last
//! one; the builder may get up to that many ids' text unbilled).

use sharenet_prompt::OutputCount;
use tokenizers::Tokenizer;

/// Ids between two running receipts (and the first delta carries one).
pub(crate) const RECEIPT_EVERY_IDS: usize = 16;

/// One job's output count (see the module docs).
pub(crate) struct Tally {
    count: OutputCount,
    calls: usize,
    /// Ids when the last running receipt was signed.
    at_receipt: Option<usize>,
}

impl Tally {
    pub(crate) fn new(tokenizer: &Tokenizer) -> Self {
        Self {
            count: OutputCount::new(tokenizer),
            calls: 0,
            at_receipt: None,
        }
    }

    /// A delta's ids and the calls it completes.
    pub(crate) fn push(&mut self, tokenizer: &Tokenizer, ids: &[u32], calls: usize) {
        self.calls += calls;
        if let Err(e) = self.count.push(tokenizer, ids) {
            // Ids the node's own tokenizer made or sampled always decode.
            tracing::warn!(error = %e, "decode the job's own ids");
        }
    }

    /// The output count for a running receipt, when one is due.
    pub(crate) fn running(&mut self, tokenizer: &Tokenizer) -> Option<u32> {
        let ids = self.count.ids().len();
        let due = match self.at_receipt {
            None => true,
            Some(at) => ids >= at + RECEIPT_EVERY_IDS,
        };
        if !due {
            return None;
        }
        let n = self.billable(tokenizer)?;
        self.at_receipt = Some(ids);
        Some(n)
    }

    /// The output count of the whole job.
    pub(crate) fn finish(&mut self, tokenizer: &Tokenizer) -> u32 {
        if let Err(e) = self.count.finish(tokenizer) {
            tracing::warn!(error = %e, "decode the job's own ids");
        }
        self.billable(tokenizer).unwrap_or(0)
    }

    fn billable(&self, tokenizer: &Tokenizer) -> Option<u32> {
        self.count
            .billable(tokenizer, self.calls)
            .inspect_err(|e| tracing::warn!(error = %e, "count the job's output"))
            .ok()
    }
}
