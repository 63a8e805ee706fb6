//! Token selection: penalties, temperature, top-k, top-p, min-p, a seeded
//! RNG per sequence, and log probabilities.
//!
//! Order of operations (as in vLLM / Hugging Face): `logit_bias`, then
//! repetition penalty over
//! prompt and output, presence/frequency penalties over the output, then
//! the log-softmax that logprobs report (of the penalised logits, before
//! temperature and truncation, as OpenAI documents), then temperature,
//! top-k, top-p and min-p, then a draw. Temperature 0 is greedy.

use std::collections::HashMap;

use rand::{Rng, SeedableRng, rngs::StdRng};
use sharenet_proto::SamplingParams;

/// The chosen token with its log probability and, if asked, alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    /// Likeliest tokens at this step, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Per-sequence sampling state.
pub(crate) struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Occurrences of each token in the output so far.
    counts: HashMap<u32, u32>,
    /// Tokens seen in prompt or output (for the repetition penalty).
    seen: Vec<bool>,
}

impl Sampler {
    pub(crate) fn new(params: &SamplingParams, prompt: &[u32], vocab: usize) -> Self {
        let seed = params.seed.unwrap_or_else(rand::random);
        let mut seen = vec![false; vocab];
        if params.repetition_penalty != 1.0 {
            for &t in prompt {
                if let Some(s) = seen.get_mut(t as usize) {
                    *s = true;
                }
            }
        }
        Self {
            params: params.clone(),
            rng: StdRng::seed_from_u64(seed),
            counts: HashMap::new(),
            seen,
        }
    }

    /// Picks the next token from raw logits and records it.
    pub(crate) fn sample(&mut self, logits: &mut [f32]) -> Sampled {
        for &(id, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        self.apply_penalties(logits);
        let logprobs = log_softmax(logits);
        let token = if self.params.temperature <= 0.0 {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        let top = if self.params.logprobs && self.params.top_logprobs > 0 {
            top_n(&logprobs, self.params.top_logprobs as usize)
        } else {
            Vec::new()
        };
        let logprob = logprobs.get(token as usize).copied().unwrap_or(f32::MIN);
        *self.counts.entry(token).or_insert(0) += 1;
        if let Some(s) = self.seen.get_mut(token as usize) {
            *s = true;
        }
        Sampled {
            token,
            logprob,
            top,
        }
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let rp = self.params.repetition_penalty as f32;
        if rp != 1.0 {
            for (l, _) in logits.iter_mut().zip(&self.seen).filter(|(_, s)| **s) {
                *l = if *l > 0.0 { *l / rp } else { *l * rp };
            }
        }
        let (pp, fp) = (
            self.params.presence_penalty as f32,
            self.params.frequency_penalty as f32,
        );
        if pp != 0.0 || fp != 0.0 {
            for (&t, &c) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= pp + fp * c as f32;
                }
            }
        }
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let t = self.params.temperature as f32;
        // Candidates sorted by logit, most likely first.
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = match self.params.top_k {
            0 => logits.len(),
            k => (k as usize).min(logits.len()),
        };
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, by_logit);
            idx.truncate(k);
        }
        idx.sort_unstable_by(by_logit);
        let max = idx.first().map(|&i| logits[i as usize]).unwrap_or(0.0);
        let mut probs: Vec<f32> = idx
            .iter()
            .map(|&i| ((logits[i as usize] - max) / t).exp())
            .collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        // min-p: drop tokens below min_p × the top probability.
        let mut keep = probs.len();
        if self.params.min_p > 0.0 {
            let floor = probs.first().copied().unwrap_or(0.0) * self.params.min_p as f32;
            keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
        }
        // top-p: the smallest prefix whose mass reaches top_p.
        if self.params.top_p < 1.0 {
            let mut mass = 0.0;
            let mut n = 0;
            for &p in &probs[..keep] {
                mass += p;
                n += 1;
                if mass >= self.params.top_p as f32 {
                    break;
                }
            }
            keep = n.max(1);
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, &p) in probs[..keep].iter().enumerate() {
            if r < p {
                return idx[i];
            }
            r -= p;
        }
        idx[keep - 1]
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

pub(crate) fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    let log_sum = sum.ln() + max;
    logits.iter().map(|l| l - log_sum).collect()
}

fn top_n(logprobs: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..logprobs.len() as u32).collect();
    let n = n.min(idx.len());
    if n == 0 {
        return Vec::new();
    }
    let cmp = |a: &u32, b: &u32| logprobs[*b as usize].total_cmp(&logprobs[*a as usize]);
    idx.select_nth_unstable_by(n - 1, cmp);
    idx.truncate(n);
    idx.sort_unstable_by(cmp);
    idx.into_iter().map(|i| (i, logprobs[i as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams {
            seed: Some(1),
            ..SamplingParams::default()
        }
    }

    #[test]
    fn greedy_picks_the_max_and_reports_its_logprob() {
        let mut s = Sampler::new(
            &SamplingParams {
                temperature: 0.0,
                logprobs: true,
                top_logprobs: 2,
                ..params()
            },
            &[],
            4,
        );
        let out = s.sample(&mut [0.0, 2.0, 1.0, -1.0]);
        assert_eq!(out.token, 1);
        let lp = log_softmax(&[0.0, 2.0, 1.0, -1.0]);
        assert!((out.logprob - lp[1]).abs() < 1e-6);
        assert_eq!(out.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn top_k_1_and_tiny_top_p_and_high_min_p_are_greedy() {
        let logits = [0.5f32, 0.4, 3.0, 0.1, 2.9];
        for p in [
            SamplingParams {
                top_k: 1,
                ..params()
            },
            SamplingParams {
                top_p: 0.01,
                ..params()
            },
            SamplingParams {
                min_p: 0.99,
                temperature: 0.1,
                ..params()
            },
        ] {
            let mut s = Sampler::new(&p, &[], logits.len());
            for _ in 0..50 {
                assert_eq!(s.sample(&mut logits.clone()).token, 2, "{p:?}");
            }
        }
    }

    #[test]
    fn top_k_2_only_draws_the_two_best() {
        let logits = [1.0f32, 1.1, 0.9, 1.05];
        let mut s = Sampler::new(
            &SamplingParams {
                top_k: 2,
                ..params()
            },
            &[],
            4,
        );
        let mut drawn = std::collections::BTreeSet::new();
        for _ in 0..200 {
            drawn.insert(s.sample(&mut logits.clone()).token);
        }
        assert_eq!(drawn.into_iter().collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits = [1.0f32, 1.1, 0.9, 1.05, 0.7];
        let run = |seed| {
            let mut s = Sampler::new(
                &SamplingParams {
                    seed: Some(seed),
                    ..params()
                },
                &[],
                5,
            );
            (0..64)
                .map(|_| s.sample(&mut logits.clone()).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    #[test]
    fn penalties_push_repeated_tokens_down() {
        // Without penalties greedy repeats token 0 forever.
        let base = [2.0f32, 1.5, 1.0];
        let mut plain = Sampler::new(
            &SamplingParams {
                temperature: 0.0,
                ..params()
            },
            &[],
            3,
        );
        assert_eq!(plain.sample(&mut base.clone()).token, 0);
        assert_eq!(plain.sample(&mut base.clone()).token, 0);

        let mut freq = Sampler::new(
            &SamplingParams {
                temperature: 0.0,
                frequency_penalty: 1.0,
                ..params()
            },
            &[],
            3,
        );
        let seq: Vec<u32> = (0..3)
            .map(|_| freq.sample(&mut base.clone()).token)
            .collect();
        assert_eq!(seq, vec![0, 1, 0]);

        let mut pres = Sampler::new(
            &SamplingParams {
                temperature: 0.0,
                presence_penalty: 2.0,
                ..params()
            },
            &[],
            3,
        );
        let seq: Vec<u32> = (0..3)
            .map(|_| pres.sample(&mut base.clone()).token)
            .collect();
        assert_eq!(seq, vec![0, 1, 2]);

        // Repetition penalty counts the prompt too.
        let mut rep = Sampler::new(
            &SamplingParams {
                temperature: 0.0,
                repetition_penalty: 2.0,
                ..params()
            },
            &[0],
            3,
        );
        assert_eq!(rep.sample(&mut base.clone()).token, 1);
    }
}
