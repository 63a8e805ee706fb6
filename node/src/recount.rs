//! The node's own count of what an upstream server streamed: token ids for
//! the text, re-tokenized with the model's tokenizer, so the output a
//! builder pays for is what the node counted, never the server's `usage`.
//!
//! Text is re-tokenized a segment at a time, each segment ending where the
//! tokenizer's own pre-tokenizer starts its last piece (a word, a run of
//! whitespace or punctuation that more text may still extend: Llama 3's
//! `.\n\n` is one piece), so the ids of a segment do not change with the
//! text that follows; a tokenizer without a pre-tokenizer is cut before
//! the last whitespace that begins a word.
//!
//! A segment is encoded between the one before it (its context) and the
//! text held after it, and only its own ids are kept: a tokenizer that
//! prepends a space or `▁` to its input adds it once, and a pre-tokenizer's
//! lookahead (GPT-2's `\s+(?!\S)` splits `"\n\n"` differently before a
//! word and at the end) sees what follows. Each segment's ids are checked
//! to decode to exactly its text; the held piece (at most
//! [`MAX_HOLD_BYTES`]) goes out with the next segment or at the end, with
//! its ids. So every delta's ids decode to its text (the contract of
//! `JobEvent::Delta`'s `ids`, held delta by delta here).
//!
//! Without a tokenizer each non-empty streamed chunk counts as one token
//! (servers stream a token per chunk) and no ids are sent.

use std::sync::Arc;

use sharenet_proto::ToolCall;
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, Tokenizer};

/// Most text held back waiting for a word boundary: a longer run without
/// whitespace (code, a URL) is cut where it stands, at the cost of maybe
/// one token counted more than the whole text would take.
pub(crate) const MAX_HOLD_BYTES: usize = 256;

/// Loads a model's tokenizer for counting (`sharenet_engine::load_tokenizer`:
/// a `tokenizer.json`, a folder, or a `.gguf`): never truncating, padding
/// or adding tokens, with offsets untrimmed (the text is cut by them).
pub(crate) fn load(path: &std::path::Path) -> anyhow::Result<Arc<Tokenizer>> {
    use anyhow::Context;
    let mut t = sharenet_engine::load_tokenizer(path)
        .with_context(|| format!("load the upstream model's tokenizer {}", path.display()))?;
    t.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
    t.with_padding(None);
    t.with_truncation(None)
        .map_err(|e| anyhow::anyhow!("turn off the tokenizer's truncation: {e}"))?;
    Ok(Arc::new(t))
}

/// Text to hand on, with the ids the node counted for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Counted {
    pub text: String,
    pub ids: Vec<u32>,
    pub tokens: u32,
}

/// One job's output count.
pub(crate) struct Recount {
    tokenizer: Option<Arc<Tokenizer>>,
    /// Text received, not yet handed on.
    pending: String,
    /// The last segment handed on: the next is encoded after it.
    context: String,
    /// Segments whose ids did not decode to their text (a tokenizer that
    /// does not round-trip, or one that is not the server's).
    pub(crate) mismatches: u32,
}

impl Recount {
    pub(crate) fn new(tokenizer: Option<Arc<Tokenizer>>) -> Self {
        Self {
            tokenizer,
            pending: String::new(),
            context: String::new(),
            mismatches: 0,
        }
    }

    /// Whether deltas carry ids.
    pub(crate) fn has_tokenizer(&self) -> bool {
        self.tokenizer.is_some()
    }

    /// Takes a streamed chunk; returns the text that can go out now.
    pub(crate) fn push(&mut self, text: &str) -> Option<Counted> {
        if text.is_empty() {
            return None;
        }
        let Some(tokenizer) = &self.tokenizer else {
            return Some(Counted {
                text: text.to_owned(),
                ids: Vec::new(),
                tokens: 1,
            });
        };
        self.pending.push_str(text);
        let cut = if self.pending.len() > MAX_HOLD_BYTES {
            self.pending.len()
        } else {
            last_piece(tokenizer, &self.pending)
        };
        if cut == 0 {
            return None;
        }
        Some(self.take(cut))
    }

    /// Whatever is still held back, at the end of the stream.
    pub(crate) fn finish(&mut self) -> Option<Counted> {
        if self.pending.is_empty() {
            return None;
        }
        Some(self.take(self.pending.len()))
    }

    /// The ids of tool calls the server made (whole, from its
    /// `delta.tool_calls`): each call's name, then its arguments; without
    /// a tokenizer, one token per streamed fragment.
    pub(crate) fn calls(&mut self, calls: &[ToolCall], fragments: u32) -> (Vec<u32>, u32) {
        let Some(tokenizer) = &self.tokenizer else {
            return (Vec::new(), fragments.max(calls.len() as u32));
        };
        let mut ids = Vec::new();
        for c in calls {
            for part in [&c.name, &c.arguments] {
                match tokenizer.encode(part.as_str(), false) {
                    Ok(e) => ids.extend_from_slice(e.get_ids()),
                    Err(_) => self.mismatches += 1,
                }
            }
        }
        let tokens = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        (ids, tokens)
    }

    /// Hands on the first `cut` bytes of the pending text with their ids.
    fn take(&mut self, cut: usize) -> Counted {
        let ids = match self.in_context(cut) {
            Some(ids) => ids,
            None => {
                let segment = self.pending.get(..cut).unwrap_or_default();
                match self.alone(segment) {
                    Some(ids) => ids,
                    None => {
                        let ids = self.encode(segment).unwrap_or_default();
                        self.mismatches += 1;
                        ids
                    }
                }
            }
        };
        let rest = self.pending.split_off(cut);
        let segment = std::mem::replace(&mut self.pending, rest);
        self.context.clone_from(&segment);
        Counted {
            text: segment,
            tokens: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            ids,
        }
    }

    fn encode(&self, text: &str) -> Option<Vec<u32>> {
        let tokenizer = self.tokenizer.as_ref()?;
        Some(tokenizer.encode(text, false).ok()?.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32]) -> Option<String> {
        self.tokenizer.as_ref()?.decode(ids, true).ok()
    }

    /// The ids of the first `cut` bytes of the pending text, encoded
    /// between the context before them and the held text after them (a
    /// pre-tokenizer's lookahead, as GPT-2's `\s+(?!\S)`, sees the next
    /// character), if they decode (after the context's) to exactly them.
    fn in_context(&self, cut: usize) -> Option<Vec<u32>> {
        let tokenizer = self.tokenizer.as_ref()?;
        let segment = self.pending.get(..cut)?;
        let (from, to) = (self.context.len(), self.context.len() + cut);
        let whole = format!("{}{}", self.context, self.pending);
        let encoding = tokenizer.encode(whole.as_str(), false).ok()?;
        let offsets = encoding.get_offsets();
        let first = offsets
            .iter()
            .position(|&(start, _)| start >= from)
            .unwrap_or(offsets.len());
        let end = offsets
            .iter()
            .position(|&(start, _)| start >= to)
            .unwrap_or(offsets.len());
        // A token across either boundary: the segment has no ids of its own.
        if offsets[..first].iter().any(|&(_, e)| e > from)
            || offsets[first..end].iter().any(|&(_, e)| e > to)
        {
            return None;
        }
        let ids = encoding.get_ids();
        let head = self.decode(&ids[..first])?;
        let all = self.decode(&ids[..end])?;
        (all.strip_prefix(head.as_str())? == segment).then(|| ids[first..end].to_vec())
    }

    /// The segment encoded alone, if that decodes to exactly it.
    fn alone(&self, segment: &str) -> Option<Vec<u32>> {
        let ids = self.encode(segment)?;
        (self.decode(&ids)? == segment).then_some(ids)
    }
}

/// Where the text may be cut (0: nowhere yet): where the tokenizer's
/// pre-tokenizer starts its last piece, or, without one, at
/// [`word_boundary`].
fn last_piece(tokenizer: &Tokenizer, text: &str) -> usize {
    let Some(pre) = tokenizer.get_pre_tokenizer() else {
        return word_boundary(text);
    };
    let mut pieces = PreTokenizedString::from(text);
    if pre.pre_tokenize(&mut pieces).is_err() {
        return word_boundary(text);
    }
    let splits = pieces.get_splits(OffsetReferential::Original, OffsetType::Byte);
    match splits.last() {
        Some((_, (start, _), _)) if *start <= text.len() && text.is_char_boundary(*start) => *start,
        _ => 0,
    }
}

/// Before the last whitespace character that is followed by a
/// non-whitespace one (0: nowhere yet).
fn word_boundary(text: &str) -> usize {
    let mut cut = 0;
    let mut prev: Option<(usize, char)> = None;
    for (i, c) in text.char_indices() {
        if let Some((at, p)) = prev
            && p.is_whitespace()
            && !c.is_whitespace()
            && at > 0
        {
            cut = at;
        }
        prev = Some((i, c));
    }
    cut
}

#[cfg(test)]
mod tests;
