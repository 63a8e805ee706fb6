//! Pieces of OpenAI's answers that both the JSON bodies (`openai.rs`) and
//! the stream's chunks (`openai_stream.rs`) carry: logprobs in the chat
//! and legacy shapes, and usage with its cost.

use sharenet_api::Cost;
use sharenet_api::openai::{ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob, Usage};
use sharenet_proto::TokenLogprob;

use crate::core::dispatch::{Finished, summed};

/// The usage and charge of all the choices of one request together; the
/// coordinator's count only if it counted every choice.
pub(super) fn totals(all: &[Box<Finished>]) -> (Usage, sharenet_market::Charge) {
    let (usage, charge) = summed(all);
    let by = sharenet_api::catalog::CountedBy::all(all.iter().map(|f| f.counted_by));
    (
        Usage::new(usage.input_tokens, usage.output_tokens, Cost::from(&charge)).counted_by(by),
        charge,
    )
}

/// The `usage` object of a booked job.
pub(super) fn usage(f: &Finished) -> Usage {
    Usage::new(
        f.usage.input_tokens,
        f.usage.output_tokens,
        Cost::from(&f.charge),
    )
    .counted_by(f.counted_by)
}

/// Chat logprobs: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub(super) fn chat_logprobs(lps: &[TokenLogprob]) -> ChatLogprobs {
    ChatLogprobs {
        content: lps
            .iter()
            .map(|l| ChatTokenLogprob {
                token: l.token.clone(),
                logprob: l.logprob,
                bytes: l.bytes.clone(),
                top_logprobs: l
                    .top
                    .iter()
                    .map(|t| TopLogprob {
                        token: t.token.clone(),
                        logprob: t.logprob,
                        bytes: t.bytes.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Legacy completions logprobs: parallel arrays; `offset` is where the
/// first token's text starts in the whole completion.
pub(super) fn completion_logprobs(lps: &[TokenLogprob], offset: usize) -> CompletionLogprobs {
    let mut text_offset = Vec::with_capacity(lps.len());
    let mut at = offset;
    for l in lps {
        text_offset.push(at);
        at += l.bytes.len();
    }
    CompletionLogprobs {
        tokens: lps.iter().map(|l| l.token.clone()).collect(),
        token_logprobs: lps.iter().map(|l| l.logprob).collect(),
        top_logprobs: lps
            .iter()
            .map(|l| l.top.iter().map(|t| (t.token.clone(), t.logprob)).collect())
            .collect(),
        text_offset,
    }
}
