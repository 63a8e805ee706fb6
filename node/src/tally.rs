//! The output count a node signs: the coordinator's rule
//! (`sharenet_prompt::count`), applied to the ids the node streams, so a
//! receipt claims exactly what the coordinator counts for the same ids.
//!
//! `billable = min(ids, canonical count of what the ids decode to + two markers
//! per call)`. Every delta carries a running receipt for everything sent so
//! far (a broken stream is booked for exactly what the builder received),
//! so the decoded text is re-tokenized at every delta: O(n²) in the job's
//! length. An incremental count (re-tokenizing only from the last
//! pre-token boundary) is the known next step (issue 30).

use sharenet_prompt::OutputCount;
use tokenizers::Tokenizer;

/// One job's output count (see the module docs).
pub(crate) struct Tally {
    count: OutputCount,
    calls: usize,
}

impl Tally {
    pub(crate) fn new(tokenizer: &Tokenizer) -> Self {
        Self {
            count: OutputCount::new(tokenizer),
            calls: 0,
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

    /// The output count for a running receipt (every delta carries one).
    pub(crate) fn running(&self, tokenizer: &Tokenizer) -> Option<u32> {
        self.billable(tokenizer)
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
