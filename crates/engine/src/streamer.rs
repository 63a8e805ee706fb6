//! Turns generated token ids into text pieces: incremental decoding that
//! never splits a UTF-8 character, and stop sequences that may span token
//! boundaries (text that could be the start of a stop sequence is held back
//! until it is known not to be one).
//!
//! Every token is accounted for in exactly one [`Piece`], so the sum of the
//! pieces' token counts is the completion token count, and the concatenated
//! piece texts are the completion text.

use crate::EngineError;
use crate::output::Piece;

/// Decodes token ids to text (the model's tokenizer).
pub(crate) type Decode<'a> = &'a dyn Fn(&[u32]) -> Result<String, EngineError>;

pub(crate) struct Streamer {
    stops: Vec<String>,
    tokens: Vec<u32>,
    prev: usize,
    cur: usize,
    text: String,
    emitted: usize,
    pending_tokens: u32,
    stopped: bool,
}

impl Streamer {
    pub(crate) fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            tokens: Vec::new(),
            prev: 0,
            cur: 0,
            text: String::new(),
            emitted: 0,
            pending_tokens: 0,
            stopped: false,
        }
    }

    /// Counts a token that produces no text (e.g. end of sequence).
    pub(crate) fn push_silent(&mut self) {
        self.pending_tokens += 1;
    }

    /// Decodes whatever new text the tokens since `prev` make.
    fn decode_new(&mut self, decode: Decode<'_>, force: bool) -> Result<(), EngineError> {
        let before = decode(&self.tokens[self.prev..self.cur])?;
        let all = decode(&self.tokens[self.prev..])?;
        if all.len() > before.len()
            && (force || !all.ends_with('\u{FFFD}'))
            && let Some(new) = all.get(before.len()..)
        {
            self.text.push_str(new);
            self.prev = self.cur;
            self.cur = self.tokens.len();
        }
        Ok(())
    }

    /// Adds a generated token. Returns a piece to hand out, if any; after a
    /// stop sequence matched, [`Streamer::stopped`] is true.
    pub(crate) fn push(
        &mut self,
        token: u32,
        decode: Decode<'_>,
    ) -> Result<Option<Piece>, EngineError> {
        self.pending_tokens += 1;
        self.tokens.push(token);
        self.decode_new(decode, false)?;
        Ok(self.release())
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    fn take_piece(&mut self, end: usize) -> Option<Piece> {
        if end <= self.emitted && self.pending_tokens == 0 {
            return None;
        }
        let text = self
            .text
            .get(self.emitted..end)
            .unwrap_or_default()
            .to_string();
        self.emitted = end.max(self.emitted);
        let tokens = std::mem::take(&mut self.pending_tokens);
        Some(Piece {
            text,
            tokens,
            logprobs: Vec::new(),
        })
    }

    fn release(&mut self) -> Option<Piece> {
        if self.stopped {
            return None;
        }
        // A stop match can only start at or after `emitted` (see module docs).
        let tail = self.text.get(self.emitted..).unwrap_or_default();
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| tail.find(s.as_str()))
            .min()
        {
            let end = self.emitted + pos;
            self.text.truncate(end);
            self.stopped = true;
            return self.take_piece(end);
        }
        let hold = self.holdback();
        let end = self.text.len() - hold;
        if end > self.emitted {
            self.take_piece(end)
        } else {
            None
        }
    }

    /// Length of the longest suffix of the text that starts some stop sequence.
    fn holdback(&self) -> usize {
        let text = &self.text[self.emitted..];
        let mut best = 0;
        for stop in &self.stops {
            for k in (1..stop.len().min(text.len() + 1)).rev() {
                let start = text.len() - k;
                if k <= best {
                    break;
                }
                if text.is_char_boundary(start)
                    && stop.is_char_boundary(k)
                    && stop.as_bytes().starts_with(&text.as_bytes()[start..])
                {
                    best = k;
                    break;
                }
            }
        }
        best
    }

    /// Flushes everything left: held-back text and uncounted tokens.
    pub(crate) fn finish(&mut self, decode: Decode<'_>) -> Result<Option<Piece>, EngineError> {
        if !self.stopped {
            self.decode_new(decode, true)?;
            // Text held back for a stop that never came is released now,
            // unless a stop sequence completes in it.
            if let Some(piece) = self.release() {
                if self.stopped {
                    return Ok(Some(piece));
                }
                let rest = self.take_piece(self.text.len());
                return Ok(Some(merge(piece, rest)));
            }
            return Ok(self.take_piece(self.text.len()));
        }
        Ok(self.take_piece(self.emitted))
    }

    #[cfg(test)]
    pub(crate) fn text(&self) -> &str {
        &self.text
    }
}

fn merge(mut a: Piece, b: Option<Piece>) -> Piece {
    if let Some(b) = b {
        a.text.push_str(&b.text);
        a.tokens += b.tokens;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token i decodes to the i-th byte of this text.
    fn decoder(bytes: &'static [u8]) -> impl Fn(&[u32]) -> Result<String, EngineError> {
        move |ids: &[u32]| {
            let raw: Vec<u8> = ids.iter().map(|&i| bytes[i as usize]).collect();
            Ok(String::from_utf8_lossy(&raw).into_owned())
        }
    }

    fn run(bytes: &'static [u8], stops: &[String]) -> (Vec<Piece>, String) {
        let mut s = Streamer::new(stops.to_vec());
        let d = decoder(bytes);
        let mut pieces = Vec::new();
        for i in 0..bytes.len() as u32 {
            if let Some(p) = s.push(i, &d).unwrap() {
                pieces.push(p);
            }
            if s.stopped() {
                break;
            }
        }
        if let Some(p) = s.finish(&d).unwrap() {
            pieces.push(p);
        }
        let text = s.text().to_string();
        (pieces, text)
    }

    fn joined(pieces: &[Piece]) -> (String, u32) {
        (
            pieces.iter().map(|p| p.text.as_str()).collect(),
            pieces.iter().map(|p| p.tokens).sum(),
        )
    }

    #[test]
    fn plain_text_streams_every_token() {
        let (pieces, _) = run(b"hello", &[]);
        assert_eq!(joined(&pieces), ("hello".into(), 5));
        assert_eq!(pieces.len(), 5);
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let (pieces, _) = run("a€b".as_bytes(), &[]);
        assert_eq!(joined(&pieces), ("a€b".into(), 5));
        assert!(pieces.iter().all(|p| !p.text.contains('\u{FFFD}')));
    }

    #[test]
    fn stop_spanning_tokens_is_cut_and_tokens_still_counted() {
        let stops = vec!["END".to_string()];
        let (pieces, text) = run(b"abcENDxyz", &stops);
        assert_eq!(text, "abc");
        // a, b, c, E, N, D were generated; x y z never were.
        assert_eq!(joined(&pieces), ("abc".into(), 6));
    }

    #[test]
    fn partial_stop_prefix_is_released_at_the_end() {
        let stops = vec!["ENDING".to_string()];
        let (pieces, _) = run(b"abEND", &stops);
        assert_eq!(joined(&pieces), ("abEND".into(), 5));
    }

    #[test]
    fn false_start_of_stop_is_released() {
        let stops = vec!["ab!".to_string()];
        let (pieces, text) = run(b"xabyab!z", &stops);
        assert_eq!(text, "xaby");
        assert_eq!(joined(&pieces), ("xaby".into(), 7));
    }

    #[test]
    fn silent_tokens_are_counted() {
        let mut s = Streamer::new(Vec::new());
        let d = decoder(b"hi");
        let mut total = 0;
        for i in 0..2 {
            total += s.push(i, &d).unwrap().map_or(0, |p| p.tokens);
        }
        s.push_silent();
        total += s.finish(&d).unwrap().map_or(0, |p| p.tokens);
        assert_eq!(total, 3);
    }
}
