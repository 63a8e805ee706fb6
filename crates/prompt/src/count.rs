//! The output count both sides bill: what a job's token ids decode to,
//! checked against the text the builder received, and the rule that
//! turns the ids into billable tokens.
//!
//! A node streams the ids of the tokens it generated with the text they
//! make (`JobEvent::Delta::ids`). [`OutputCount`] decodes them the way the
//! engine's streamer does (incrementally, from the last complete
//! character, skipping special tokens) so `D`, the decoded ids, is the
//! same string on the node and the coordinator. [`check_served`] holds `D`
//! against `T`, the text relayed, and [`OutputCount::billable`] is the
//! number of output tokens the job is billed:
//!
//! ```text
//! billable = min(ids, count_text(D) + min(special ids, 2 × calls))
//! ```
//!
//! so a node gains nothing by splitting text into more, smaller tokens
//! (`count_text` re-tokenizes `D` canonically) or by padding with ids that
//! decode to nothing (only two markers per tool call count). The end of
//! turn is not billed, as llama.cpp and OpenAI-compatible servers count
//! completions, so a job costs the same whichever backend served it. The
//! bound on overbilling: the canonical token count of what was served,
//! plus two per call.

use std::collections::HashSet;

use tokenizers::Tokenizer;

use crate::error::PromptError;

/// Most bytes the ids of a job may decode past its text at a stop
/// sequence's cut: the rest of the one token that completed the stop
/// sequence (real vocabularies' longest tokens are far shorter).
pub const MAX_TOKEN_BYTES: usize = 256;

/// Bytes of call markup (the family's `<tool_call>` tags, JSON braces and
/// keys) a tool call may take in the ids beyond its name and arguments.
pub const CALL_MARKUP_BYTES: usize = 256;

/// Incremental decoding of one job's output ids (see the module docs).
#[derive(Debug)]
pub struct OutputCount {
    /// The tokenizer's special ids (they decode to nothing).
    special: HashSet<u32>,
    ids: Vec<u32>,
    /// `ids[prev..cur]` decoded to the text already in `decoded`.
    prev: usize,
    cur: usize,
    decoded: String,
    specials: u32,
}

impl OutputCount {
    pub fn new(tokenizer: &Tokenizer) -> Self {
        Self {
            special: special_ids(tokenizer),
            ids: Vec::new(),
            prev: 0,
            cur: 0,
            decoded: String::new(),
            specials: 0,
        }
    }

    /// Adds a delta's ids; `decoded` grows by the complete characters
    /// they make.
    pub fn push(&mut self, tokenizer: &Tokenizer, ids: &[u32]) -> Result<(), PromptError> {
        if ids.is_empty() {
            return Ok(());
        }
        let n = ids.iter().filter(|i| self.special.contains(i)).count();
        self.specials = self
            .specials
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        self.ids.extend_from_slice(ids);
        self.decode_new(tokenizer, false)
    }

    /// Decodes what is left, incomplete characters included (as the
    /// engine does when a job ends).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<(), PromptError> {
        self.decode_new(tokenizer, true)
    }

    fn decode_new(&mut self, tokenizer: &Tokenizer, force: bool) -> Result<(), PromptError> {
        let decode = |ids: &[u32]| {
            tokenizer
                .decode(ids, true)
                .map_err(|e| PromptError::Tokenizer(e.to_string()))
        };
        let before = decode(&self.ids[self.prev..self.cur])?;
        let all = decode(&self.ids[self.prev..])?;
        if all.len() > before.len()
            && (force || !all.ends_with('\u{FFFD}'))
            && let Some(new) = all.get(before.len()..)
        {
            self.decoded.push_str(new);
            self.prev = self.cur;
            self.cur = self.ids.len();
        }
        Ok(())
    }

    /// The ids so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// `D`: what the ids decode to so far.
    pub fn decoded(&self) -> &str {
        &self.decoded
    }

    /// Ids that are special tokens (end of turn, markers).
    pub fn special_ids(&self) -> u32 {
        self.specials
    }

    /// The output tokens billed for the ids so far with `calls` tool calls
    /// made (see the module docs), counting what [`Self::finish`] would
    /// add without changing the count: the same number whichever way the
    /// ids were split into pushes (what a running receipt carries).
    pub fn billable(&self, tokenizer: &Tokenizer, calls: usize) -> Result<u32, PromptError> {
        let decode = |ids: &[u32]| {
            tokenizer
                .decode(ids, true)
                .map_err(|e| PromptError::Tokenizer(e.to_string()))
        };
        let before = decode(&self.ids[self.prev..self.cur])?;
        let all = decode(&self.ids[self.prev..])?;
        let rest = all.get(before.len()..).unwrap_or_default();
        let text = [self.decoded.as_str(), rest].concat();
        let own = tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| PromptError::Tokenizer(e.to_string()))?
            .get_ids()
            .len();
        let own = u32::try_from(own).unwrap_or(u32::MAX);
        let markers = u32::try_from(calls.saturating_mul(2)).unwrap_or(u32::MAX);
        let ids = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        Ok(ids.min(own.saturating_add(self.specials.min(markers))))
    }
}

/// The ids of a tokenizer's special added tokens.
fn special_ids(tokenizer: &Tokenizer) -> HashSet<u32> {
    tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect()
}

/// How the served text failed to match its ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("the text ran ahead of the ids that make it")]
    TextAhead,
    #[error("the text is not what the ids decode to")]
    Differs,
    #[error("the ids decode to more than the text, and not at a stop sequence")]
    Unserved,
    #[error("the ids decode to more than the tool calls' markup can take")]
    CallsTooLong,
}

/// What a finished job served, to check its ids against.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// `T`: the text relayed to the builder.
    pub text: &'a str,
    /// The job's stop sequences, and whether one of them ended it.
    pub stops: &'a [String],
    pub stopped: bool,
    /// Bytes of the calls made (names and arguments), and how many.
    pub call_bytes: usize,
    pub calls: usize,
    /// The job offered tools (its text may skip call markup).
    pub tools: bool,
}

/// While streaming: what `T(k)` and `D(k)` both hold must agree (a job
/// without tools). `checked` is how much of `T` was already compared;
/// returns the new mark. Text may run ahead of its ids by what they do
/// not decode to yet (an incomplete character the engine released at its
/// end): that part is held against the ids at the end
/// ([`check_served`]), where the text and the ids must be equal.
pub fn check_prefix(decoded: &str, text: &str, checked: usize) -> Result<usize, Mismatch> {
    let end = text.len().min(decoded.len());
    let (Some(t), Some(d)) = (
        text.as_bytes().get(checked..end),
        decoded.as_bytes().get(checked..end),
    ) else {
        return Ok(checked);
    };
    if t != d {
        return Err(Mismatch::Differs);
    }
    Ok(end.max(checked))
}

/// At the end: `D = T`, or `D = T + R` with `R` a stop sequence and the
/// rest of its last token; in a job with tool calls, `T` is `D` with the
/// calls' markup taken out (a subsequence, at most the calls' size plus
/// [`CALL_MARKUP_BYTES`] each shorter).
pub fn check_served(decoded: &str, served: &Served<'_>) -> Result<(), Mismatch> {
    let text = served.text;
    if served.tools && served.calls > 0 {
        let room = served.call_bytes.saturating_add(
            served
                .calls
                .saturating_mul(CALL_MARKUP_BYTES)
                .saturating_add(MAX_TOKEN_BYTES),
        );
        if !is_subsequence(text.as_bytes(), decoded.as_bytes()) {
            return Err(Mismatch::Differs);
        }
        if decoded.len() - text.len() > room {
            return Err(Mismatch::CallsTooLong);
        }
        return Ok(());
    }
    let Some(rest) = decoded.strip_prefix(text) else {
        return Err(if text.len() > decoded.len() {
            Mismatch::TextAhead
        } else {
            Mismatch::Differs
        });
    };
    if rest.is_empty() {
        return Ok(());
    }
    let cut = served.stopped
        && served
            .stops
            .iter()
            .any(|s| rest.starts_with(s.as_str()) && rest.len() <= s.len() + MAX_TOKEN_BYTES);
    if cut { Ok(()) } else { Err(Mismatch::Unserved) }
}

/// Whether `needle` is `hay` with some bytes left out.
fn is_subsequence(needle: &[u8], hay: &[u8]) -> bool {
    let mut it = hay.iter();
    needle.iter().all(|b| it.any(|h| h == b))
}

#[cfg(test)]
mod tests;
