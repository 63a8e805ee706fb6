//! The node's own count of what an upstream server streamed: token ids for
//! the text, re-tokenized with the model's tokenizer, so the output a
//! builder pays for is what the node counted, never the server's `usage`.
//!
//! Text is re-tokenized a segment at a time, each segment ending before
//! the last whitespace that begins a word (where every supported
//! pre-tokenizer splits: GPT-2 / Llama 3 style byte-level regexes keep a
//! run's last space with the next word, SentencePiece puts `▁` in front of
//! it), so the ids of a segment do not change with the text that follows.
//! A segment is encoded after the one before it (its context) and only the
//! ids past the context are kept, so a tokenizer that prepends a space or
//! `▁` to its input adds it once. Each segment's ids are checked to decode
//! to exactly its text; the text waiting for a word boundary (at most
//! [`MAX_HOLD_BYTES`]) goes out with the next segment or at the end, with
//! its ids. So every delta's ids decode to its text (the contract of
//! `JobEvent::Delta`'s `ids`, held delta by delta here).
//!
//! Without a tokenizer each non-empty streamed chunk counts as one token
//! (servers stream a token per chunk) and no ids are sent.

use std::sync::Arc;

use sharenet_proto::ToolCall;
use tokenizers::Tokenizer;

/// Most text held back waiting for a word boundary: a longer run without
/// whitespace (code, a URL) is cut where it stands, at the cost of maybe
/// one token counted more than the whole text would take.
pub(crate) const MAX_HOLD_BYTES: usize = 256;

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
        if self.tokenizer.is_none() {
            return Some(Counted {
                text: text.to_owned(),
                ids: Vec::new(),
                tokens: 1,
            });
        }
        self.pending.push_str(text);
        let cut = if self.pending.len() > MAX_HOLD_BYTES {
            self.pending.len()
        } else {
            word_boundary(&self.pending)
        };
        if cut == 0 {
            return None;
        }
        let rest = self.pending.split_off(cut);
        let segment = std::mem::replace(&mut self.pending, rest);
        Some(self.count(segment))
    }

    /// Whatever is still held back, at the end of the stream.
    pub(crate) fn finish(&mut self) -> Option<Counted> {
        if self.pending.is_empty() {
            return None;
        }
        let segment = std::mem::take(&mut self.pending);
        Some(self.count(segment))
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

    fn count(&mut self, segment: String) -> Counted {
        let ids = self
            .in_context(&segment)
            .or_else(|| self.alone(&segment))
            .unwrap_or_else(|| {
                self.mismatches += 1;
                self.encode(&segment).unwrap_or_default()
            });
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

    /// The segment's ids encoded after the context, if they decode (after
    /// the context's) to exactly the segment.
    fn in_context(&self, segment: &str) -> Option<Vec<u32>> {
        let tokenizer = self.tokenizer.as_ref()?;
        let ctx = self.context.len();
        let whole = format!("{}{segment}", self.context);
        let encoding = tokenizer.encode(whole.as_str(), false).ok()?;
        let offsets = encoding.get_offsets();
        let split = offsets
            .iter()
            .position(|&(start, _)| start >= ctx)
            .unwrap_or(offsets.len());
        // A token across the boundary: the segment has no ids of its own.
        if offsets[..split].iter().any(|&(_, end)| end > ctx) {
            return None;
        }
        let ids = encoding.get_ids();
        let head = self.decode(&ids[..split])?;
        let all = self.decode(ids)?;
        (all.strip_prefix(head.as_str())? == segment).then(|| ids[split..].to_vec())
    }

    /// The segment encoded alone, if that decodes to exactly it.
    fn alone(&self, segment: &str) -> Option<Vec<u32>> {
        let ids = self.encode(segment)?;
        (self.decode(&ids)? == segment).then_some(ids)
    }
}

/// Where the text may be cut: before the last whitespace character that is
/// followed by a non-whitespace one (0: nowhere yet).
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
