//! One generation in flight: its KV cache, sampler, text streamer and
//! stopping rules. The single-sequence [`TextModel::generate`] (defined
//! here) and the batching [`crate::Scheduler`] drive the same type, so they
//! cannot drift.

use sharenet_proto::{FinishReason, SamplingParams, TokenLogprob, TopLogprob};

use crate::EngineError;
use crate::constraint::Constraint;
use crate::model::TextModel;
use crate::output::{Generation, Piece};
use crate::sampling::Sampler;
use crate::streamer::Streamer;
use crate::transformer::{SeqCache, Transformer};

pub(crate) struct Sequence {
    cache: SeqCache,
    sampler: Sampler,
    streamer: Streamer,
    prompt_len: usize,
    max_new: usize,
    generated: usize,
    last: u32,
    finish: Option<FinishReason>,
    logprobs: bool,
    pending_lp: Vec<TokenLogprob>,
    prompt: Vec<u32>,
    /// Prompt tokens already run through the model.
    prefilled: usize,
    /// The grammar the output must match, if any.
    constraint: Option<Constraint>,
}

/// Prompt tokens run through the model in one pass at most. A long prompt
/// is prefilled in chunks: its attention scores take `heads × chunk ×
/// context` floats instead of `heads × prompt²`, and the scheduler runs
/// other sequences' decode steps between its chunks.
pub const PREFILL_CHUNK: usize = 256;

impl Sequence {
    /// Checks the prompt against the model and sets up the state. The KV
    /// cache is sized for the prompt plus the tokens it may generate.
    pub(crate) fn new(
        model: &TextModel,
        prompt: Vec<u32>,
        params: &SamplingParams,
        constraint: Option<Constraint>,
    ) -> Result<Self, EngineError> {
        let context = model.context_length();
        if prompt.is_empty() || prompt.len() >= context {
            return Err(EngineError::ContextLengthExceeded {
                prompt: prompt.len(),
                context,
            });
        }
        let vocab = model.spec().vocab_size;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary"
            )));
        }
        if let Some(&(bad, _)) = params.logit_bias.iter().find(|(t, _)| *t as usize >= vocab) {
            return Err(EngineError::InvalidInput(format!(
                "logit_bias: token id {bad} is outside the vocabulary ({vocab} tokens)"
            )));
        }
        let max_new = (params.max_tokens as usize).min(context - prompt.len());
        Ok(Self {
            cache: model.transformer.new_cache(prompt.len() + max_new),
            sampler: Sampler::new(params, &prompt, vocab),
            streamer: Streamer::new(params.stop.clone()),
            prompt_len: prompt.len(),
            max_new,
            generated: 0,
            last: 0,
            finish: None,
            logprobs: params.logprobs,
            pending_lp: Vec::new(),
            prompt,
            prefilled: 0,
            constraint,
        })
    }

    /// Runs the whole prompt through the model, chunk by chunk; returns
    /// the next-token logits.
    pub(crate) fn prefill(&mut self, model: &TextModel) -> Result<Vec<f32>, EngineError> {
        loop {
            if let Some(logits) = self.prefill_chunk(model)? {
                return Ok(logits);
            }
        }
    }

    /// Runs the next [`PREFILL_CHUNK`] prompt tokens through the model;
    /// the next-token logits once the whole prompt is in.
    pub(crate) fn prefill_chunk(
        &mut self,
        model: &TextModel,
    ) -> Result<Option<Vec<f32>>, EngineError> {
        let end = (self.prefilled + PREFILL_CHUNK).min(self.prompt.len());
        let chunk = self.prompt.get(self.prefilled..end).unwrap_or_default();
        let logits = model.transformer.prefill(chunk, &mut self.cache)?;
        self.prefilled = end;
        if end < self.prompt.len() {
            return Ok(None);
        }
        self.prompt = Vec::new();
        Ok(Some(Transformer::rows(&logits)?.pop().unwrap_or_default()))
    }

    pub(crate) fn last_token(&self) -> u32 {
        self.last
    }

    pub(crate) fn cache_mut(&mut self) -> &mut SeqCache {
        &mut self.cache
    }

    /// The result, once the sequence has finished.
    pub(crate) fn finished(&self) -> Option<Generation> {
        self.finish.map(|finish_reason| Generation {
            prompt_tokens: self.prompt_len as u32,
            completion_tokens: self.generated as u32,
            finish_reason,
        })
    }

    /// Samples the next token from `logits` and returns the text it makes
    /// (none, one piece, or a last piece when the sequence finishes).
    pub(crate) fn advance(
        &mut self,
        model: &TextModel,
        logits: &mut [f32],
    ) -> Result<Vec<Piece>, EngineError> {
        let mut out = Vec::new();
        if self.finish.is_some() {
            return Ok(out);
        }
        if let Some(c) = &mut self.constraint {
            c.mask(logits)?;
        }
        let sampled = self.sampler.sample(logits);
        self.generated += 1;
        self.last = sampled.token;
        if let Some(c) = &mut self.constraint {
            c.commit(sampled.token)?;
        }
        let decode = |ids: &[u32]| model.decode(ids);
        // A grammar that is complete ends the reply as end-of-sequence would.
        let grammar_done = self.constraint.as_ref().is_some_and(Constraint::is_done);
        if model.eos().contains(&sampled.token) {
            self.streamer.push_silent();
            self.finish = Some(FinishReason::Stop);
        } else {
            if self.logprobs {
                let entry = |id: u32, logprob: f32| {
                    let bytes = model.token_bytes(id);
                    (String::from_utf8_lossy(&bytes).into_owned(), bytes, logprob)
                };
                let (token, bytes, logprob) = entry(sampled.token, sampled.logprob);
                let top = sampled
                    .top
                    .iter()
                    .map(|&(id, lp)| {
                        let (token, bytes, logprob) = entry(id, lp);
                        TopLogprob {
                            id,
                            token,
                            bytes,
                            logprob,
                        }
                    })
                    .collect();
                self.pending_lp.push(TokenLogprob {
                    id: sampled.token,
                    token,
                    bytes,
                    logprob,
                    top,
                });
            }
            if let Some(piece) = self.streamer.push(sampled.token, &decode)? {
                out.push(piece);
            }
            if self.streamer.stopped() || grammar_done {
                self.finish = Some(FinishReason::Stop);
            } else if self.generated >= self.max_new {
                self.finish = Some(FinishReason::Length);
            }
        }
        if self.finish.is_some()
            && let Some(piece) = self.streamer.finish(&decode)?
        {
            out.push(piece);
        }
        if let Some(first) = out.first_mut() {
            first.logprobs = std::mem::take(&mut self.pending_lp);
        }
        Ok(out)
    }
}

/// Single-sequence generation lives here, beside the [`Sequence`] it
/// drives, so the model (`model.rs`) needs nothing from this file.
impl TextModel {
    /// Generates a completion for `prompt` alone (no batching), calling
    /// `emit` with text as it is produced; `emit` returns false to cancel.
    /// Blocking. The node serves through [`crate::Scheduler`] instead; this
    /// is the same per-sequence logic, used by tests and benchmarks.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &SamplingParams,
        emit: impl FnMut(Piece) -> bool,
    ) -> Result<Generation, EngineError> {
        self.generate_constrained(prompt, params, None, emit)
    }

    /// [`Self::generate`] with the output held to a grammar.
    pub fn generate_constrained(
        &self,
        prompt: &[u32],
        params: &SamplingParams,
        constraint: Option<Constraint>,
        mut emit: impl FnMut(Piece) -> bool,
    ) -> Result<Generation, EngineError> {
        let mut seq = Sequence::new(self, prompt.to_vec(), params, constraint)?;
        let mut logits = seq.prefill(self)?;
        loop {
            for piece in seq.advance(self, &mut logits)? {
                if !emit(piece) {
                    return Err(EngineError::Cancelled);
                }
            }
            if let Some(g) = seq.finished() {
                return Ok(g);
            }
            let t = self
                .transformer
                .decode(&[seq.last_token()], &mut [seq.cache_mut()])?;
            logits = Transformer::rows(&t)?.pop().unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiny::{TinyConfig, write_tiny_llama};

    /// A prompt prefilled in chunks gives the same next-token logits as the
    /// same prompt in one pass (issue 12, item 10).
    #[test]
    fn chunked_prefill_equals_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_llama(dir.path(), 5, TinyConfig::default()).unwrap();
        let model = TextModel::load(dir.path()).unwrap();
        let prompt: Vec<u32> = (0..700u32).map(|i| 3 + (i * 11 % 200)).collect();
        let params = SamplingParams {
            max_tokens: 4,
            ..SamplingParams::default()
        };
        let mut cache = model.transformer.new_cache(prompt.len() + 4);
        let whole = model.transformer.prefill(&prompt, &mut cache).unwrap();
        let whole = Transformer::rows(&whole).unwrap().pop().unwrap();
        let mut seq = Sequence::new(&model, prompt.clone(), &params, None).unwrap();
        let mut chunks = 0;
        let chunked = loop {
            chunks += 1;
            if let Some(logits) = seq.prefill_chunk(&model).unwrap() {
                break logits;
            }
        };
        assert_eq!(chunks, prompt.len().div_ceil(PREFILL_CHUNK));
        let worst = whole
            .iter()
            .zip(&chunked)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-3, "logits differ by up to {worst}");
    }
}
