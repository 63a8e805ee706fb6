//! The per-job byte budget: what a node may make the coordinator keep of
//! one job (text, tool calls and logprob entries), derived from the job's
//! `max_tokens` and what it asked to see per token. The coordinator ends a
//! job whose node goes over it as the node's failure.

use crate::{SamplingParams, TokenLogprob, ToolCall};

/// Most bytes one token's text may take (a streamed token's share of text,
/// a logprob entry's `token` and `bytes`): the longest tokens of real
/// vocabularies are far shorter, so a node that sends more is flooding,
/// not generating.
pub const MAX_TOKEN_BYTES: usize = 256;

/// What one logprob entry (the chosen token or one alternative) may cost
/// a job on average: `token` and `bytes` at 64 bytes each and 32 for the id,
/// the logprob and framing. Real vocabularies average under 8 bytes a
/// token and a step's alternatives are mostly ordinary tokens, so an honest
/// node stays far below it even when some tokens are long; each single
/// entry is still capped at [`MAX_TOKEN_BYTES`] per string.
pub const LOGPROB_ENTRY_BYTES: u64 = 160;

/// Bytes a job may keep beyond its tokens' share: held-back stop-string
/// prefixes and partial UTF-8 released late, tool-call ids.
pub const JOB_SLACK_BYTES: u64 = 4096;

/// What a logprob entry costs against the job's budget: its strings plus
/// a fixed 16 bytes for the id and the logprob.
pub fn logprob_entry_bytes(e: &TokenLogprob) -> u64 {
    let strings = |token: &str, bytes: &[u8]| (token.len() + bytes.len()) as u64 + 16;
    e.top
        .iter()
        .map(|t| strings(&t.token, &t.bytes))
        .fold(strings(&e.token, &e.bytes), u64::saturating_add)
}

/// What a tool call costs against the job's budget: its three strings.
pub fn tool_call_bytes(c: &ToolCall) -> u64 {
    (c.id.len() + c.name.len() + c.arguments.len()) as u64
}

/// The per-job byte budget: every byte of text, tool calls and logprob
/// entries a node sends for one job counts against it, and a node that
/// goes over fails the job.
///
/// ```text
/// budget = max_tokens × (MAX_TOKEN_BYTES + entries × LOGPROB_ENTRY_BYTES) + JOB_SLACK_BYTES
/// entries = 1 + top_logprobs when logprobs were asked for, else 0
/// ```
///
/// Why: everything a node sends is made of the tokens it may generate, so
/// the budget grows with `max_tokens` and with what the builder asked to
/// see per token, and nothing else. With the defaults (256 tokens, no
/// logprobs) a job may keep 68 KiB; the worst a job can ask for (32,768
/// tokens, 20 alternatives) 113 MiB, where nothing bounded logprobs before
/// (up to a 1 MiB frame per event, about 32 GiB per job).
pub fn job_byte_budget(params: &SamplingParams) -> u64 {
    let entries = if params.logprobs {
        1 + u64::from(params.top_logprobs)
    } else {
        0
    };
    let per_token = MAX_TOKEN_BYTES as u64 + entries * LOGPROB_ENTRY_BYTES;
    u64::from(params.max_tokens)
        .saturating_mul(per_token)
        .saturating_add(JOB_SLACK_BYTES)
}

/// Why a logprob entry breaks the job's terms, if it does: sent when
/// logprobs were not asked for, more alternatives than `top_logprobs`, or
/// a string over [`MAX_TOKEN_BYTES`].
pub fn bad_logprob(params: &SamplingParams, e: &TokenLogprob) -> Option<&'static str> {
    if !params.logprobs {
        return Some("logprobs that were not asked for");
    }
    if e.top.len() > usize::from(params.top_logprobs) {
        return Some("more alternatives per token than top_logprobs");
    }
    let long =
        |token: &str, bytes: &[u8]| token.len() > MAX_TOKEN_BYTES || bytes.len() > MAX_TOKEN_BYTES;
    if long(&e.token, &e.bytes) || e.top.iter().any(|t| long(&t.token, &t.bytes)) {
        return Some("a logprob token longer than any token");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TopLogprob;

    fn entry(token: &str, top: usize) -> TokenLogprob {
        TokenLogprob {
            id: 1,
            token: token.into(),
            bytes: token.as_bytes().to_vec(),
            logprob: -0.5,
            top: (0..top)
                .map(|i| TopLogprob {
                    id: i as u32,
                    token: token.into(),
                    bytes: token.as_bytes().to_vec(),
                    logprob: -1.0,
                })
                .collect(),
        }
    }

    #[test]
    fn the_budget_grows_with_max_tokens_and_what_was_asked_per_token() {
        let plain = SamplingParams {
            max_tokens: 256,
            ..SamplingParams::default()
        };
        assert_eq!(job_byte_budget(&plain), 256 * 256 + JOB_SLACK_BYTES);
        let top = SamplingParams {
            logprobs: true,
            top_logprobs: 20,
            max_tokens: crate::MAX_JOB_TOKENS,
            ..SamplingParams::default()
        };
        assert!(job_byte_budget(&top) < 120 * 1024 * 1024);
        // An honest entry of ordinary tokens is well inside its share.
        assert!(logprob_entry_bytes(&entry("hello", 20)) < 21 * LOGPROB_ENTRY_BYTES);
    }

    #[test]
    fn logprob_entries_keep_to_what_was_asked() {
        let asked = SamplingParams {
            logprobs: true,
            top_logprobs: 2,
            ..SamplingParams::default()
        };
        assert_eq!(bad_logprob(&asked, &entry("a", 2)), None);
        assert!(bad_logprob(&asked, &entry("a", 3)).is_some());
        assert!(bad_logprob(&asked, &entry(&"a".repeat(MAX_TOKEN_BYTES + 1), 0)).is_some());
        assert!(bad_logprob(&SamplingParams::default(), &entry("a", 0)).is_some());
    }
}
