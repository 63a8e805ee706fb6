//! What generation hands out: the text [`Piece`]s as they are produced,
//! and the [`Generation`] summary when a sequence ends. A leaf, shared by
//! the model, the sequence, the streamer and the scheduler.

use sharenet_proto::FinishReason;

/// Text handed out during generation, how many tokens produced it, their
/// ids and, when asked, each token's log probability.
///
/// `tokens == ids.len()`. The ids are those of the tokens sampled since the
/// last piece, end-of-sequence included; the text is what they released,
/// so it may lag them (text held back for an incomplete character or a
/// possible stop sequence comes in a later piece, without its ids): the
/// contract of `sharenet_proto::JobEvent::Delta`'s `ids`.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub tokens: u32,
    pub ids: Vec<u32>,
    pub logprobs: Vec<sharenet_proto::TokenLogprob>,
}

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: FinishReason,
}
