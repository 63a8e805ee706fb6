//! The per-job byte budget ([`sharenet_proto::job_byte_budget`]): every
//! byte of text, tool calls and logprob entries a node sends for one job
//! counts against one budget derived from the job's `max_tokens` (and
//! `top_logprobs`), so what the coordinator keeps of a job is bounded
//! whatever the node sends. Logprob entries must also keep to what was
//! asked: none unless `logprobs`, at most one per token, at most
//! `top_logprobs` alternatives each, no string longer than a token.
//! Breaking any of this is the node's failure (`ActiveJob` records it).

use sharenet_proto::job_budget::{bad_logprob, logprob_entry_bytes, tool_call_bytes};
use sharenet_proto::{SamplingParams, TokenLogprob, ToolCall, job_byte_budget};

/// What one job has spent of its budget.
#[derive(Debug)]
pub(super) struct Budget {
    limit: u64,
    used: u64,
}

impl Budget {
    pub fn for_job(params: &SamplingParams) -> Self {
        Self {
            limit: job_byte_budget(params),
            used: 0,
        }
    }

    /// Charges one delta (`tokens` tokens, its text, logprob entries and
    /// calls) against the budget; why it breaks the job's terms, if it
    /// does (nothing is charged then: the job ends).
    pub fn charge(
        &mut self,
        params: &SamplingParams,
        tokens: u32,
        text: &str,
        logprobs: &[TokenLogprob],
        calls: &[ToolCall],
    ) -> Result<(), String> {
        if logprobs.len() > tokens as usize {
            return Err("the node sent logprobs that do not match its tokens".into());
        }
        if let Some(why) = logprobs.iter().find_map(|e| bad_logprob(params, e)) {
            return Err(format!("the node sent {why}"));
        }
        let cost = logprobs
            .iter()
            .map(logprob_entry_bytes)
            .chain(calls.iter().map(tool_call_bytes))
            .fold(text.len() as u64, u64::saturating_add);
        let used = self.used.saturating_add(cost);
        if used > self.limit {
            return Err(format!(
                "the node sent more text, tool calls and logprobs than the job's budget of {} bytes (for max_tokens {})",
                self.limit, params.max_tokens
            ));
        }
        self.used = used;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_spent_once_and_refuses_past_its_limit() {
        let params = SamplingParams {
            max_tokens: 2,
            ..SamplingParams::default()
        };
        let limit = job_byte_budget(&params) as usize;
        let mut b = Budget::for_job(&params);
        assert!(
            b.charge(&params, 1, &"x".repeat(limit - 1), &[], &[])
                .is_ok()
        );
        assert!(b.charge(&params, 1, "x", &[], &[]).is_ok());
        let err = b.charge(&params, 0, "x", &[], &[]).unwrap_err();
        assert!(err.contains("more text"), "{err}");
    }
}
