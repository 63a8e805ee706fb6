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
            self.streamer.push_silent(sampled.token);
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

    /// Checks a whole job's pieces against the ids' contract
    /// (`sharenet_proto::JobEvent::Delta`'s `ids`) with the model's own
    /// tokenizer; returns the text and whether a stop sequence was cut.
    fn check_ids(
        model: &TextModel,
        pieces: &[Piece],
        g: &Generation,
        stops: &[String],
    ) -> (String, bool) {
        let (mut text, mut ids) = (String::new(), Vec::new());
        for p in pieces {
            assert_eq!(p.tokens as usize, p.ids.len(), "{p:?}");
            text.push_str(&p.text);
            ids.extend_from_slice(&p.ids);
            let decoded = model.decode(&ids).unwrap();
            assert!(decoded.starts_with(&text), "{decoded:?} / {text:?}");
        }
        assert_eq!(ids.len(), g.completion_tokens as usize);
        let decoded = model.decode(&ids).unwrap();
        if decoded != text {
            let rest = &decoded[text.len()..];
            let stop = stops
                .iter()
                .find(|s| rest.starts_with(s.as_str()))
                .unwrap_or_else(|| panic!("{rest:?} past {text:?} is not a stop cut"));
            let before = model.decode(&ids[..ids.len() - 1]).unwrap();
            assert!(!before.contains(&format!("{text}{stop}")));
        }
        let cut = decoded != text;
        (text, cut)
    }

    /// Over whole jobs on the tiny model, alone and through the scheduler:
    /// the ids decode to the text (or past it by a stop sequence the last
    /// id completed), and they are the completion's count.
    #[test]
    fn pieces_carry_the_ids_that_make_their_text() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_llama(dir.path(), 3, TinyConfig::default()).unwrap();
        let model = std::sync::Arc::new(TextModel::load(dir.path()).unwrap());
        let prompt = model
            .encode_input(&sharenet_proto::JobInput::Prompt {
                prompt: "Once upon a time".into(),
            })
            .unwrap();
        let greedy = SamplingParams {
            max_tokens: 48,
            temperature: 0.0,
            ..SamplingParams::default()
        };
        let run = |params: &SamplingParams| {
            let mut pieces = Vec::new();
            let g = model
                .generate(&prompt, params, |p| {
                    pieces.push(p);
                    true
                })
                .unwrap();
            let (text, cut) = check_ids(&model, &pieces, &g, &params.stop);
            (text, g, cut)
        };
        let (full, _, _) = run(&greedy);
        assert!(full.chars().count() > 8, "{full:?}");
        // Stops cut from the middle of the text, spanning tokens.
        let mut jobs = vec![greedy.clone()];
        for (skip, take) in [(3, 2), (5, 4), (1, 1)] {
            let stop: String = full.chars().skip(skip).take(take).collect();
            jobs.push(SamplingParams {
                stop: vec![stop, "\u{1}never".into()],
                ..greedy.clone()
            });
        }
        for seed in 0..4 {
            jobs.push(SamplingParams {
                temperature: 1.0,
                seed: Some(seed),
                max_tokens: 40,
                ..SamplingParams::default()
            });
        }
        let mut cuts = 0;
        for params in &jobs {
            let (text, g, cut) = run(params);
            if !params.stop.is_empty() && params.temperature == 0.0 {
                assert!(full.starts_with(&text) && text.len() < full.len());
                assert_eq!(g.finish_reason, FinishReason::Stop);
                cuts += usize::from(cut);
            }
        }
        assert!(cuts > 0, "no job ended on a stop sequence");
        // The scheduler hands out the very same pieces.
        let sched = crate::Scheduler::start(
            model.clone(),
            crate::SchedulerConfig {
                max_concurrency: 4,
                max_queue: 8,
                kv_cache_bytes: 64 << 20,
            },
            Box::new(|| {}),
        )
        .unwrap();
        let handles: Vec<_> = jobs
            .iter()
            .map(|p| sched.submit(prompt.clone(), p.clone()).unwrap())
            .collect();
        for (mut h, params) in handles.into_iter().zip(&jobs) {
            let mut pieces = Vec::new();
            let g = loop {
                match h.events.blocking_recv().unwrap() {
                    crate::SeqEvent::Piece(p) => pieces.push(p),
                    crate::SeqEvent::Done(g) => break g,
                    crate::SeqEvent::Failed(e) => panic!("{e}"),
                }
            };
            check_ids(&model, &pieces, &g, &params.stop);
        }
    }

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
