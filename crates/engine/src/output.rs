//! What generation hands out: the text [`Piece`]s as they are produced,
//! and the [`Generation`] summary when a sequence ends. A leaf, shared by
//! the model, the sequence, the streamer and the scheduler.

use sharenet_proto::FinishReason;

/// Text handed out during generation, how many tokens produced it and,
/// when asked, each token's log probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub tokens: u32,
    pub logprobs: Vec<sharenet_proto::TokenLogprob>,
}

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: FinishReason,
}
