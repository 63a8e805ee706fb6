//! Turns generated token ids into text pieces: incremental decoding that
//! never splits a UTF-8 character, and stop sequences that may span token
//! boundaries (text that could be the start of a stop sequence is held back
//! until it is known not to be one).
//!
//! Every token is accounted for in exactly one [`Piece`], which carries its
//! id, so the sum of the pieces' token counts is the completion token count
//! and the number of their ids, and the concatenated piece texts are the
//! completion text. A piece carries the ids of the tokens pushed since the
//! last one, so text never runs ahead of its ids: the concatenated texts so
//! far are a prefix of the concatenated ids decoded, and at the end they
//! are equal, but for a stop sequence's cut (what the ids decode to past
//! the text starts with the stop sequence, completed by the last id).

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
    /// Ids pushed since the last piece, sent with the next one.
    pending_ids: Vec<u32>,
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
            pending_ids: Vec::new(),
            stopped: false,
        }
    }

    /// Counts a token that produces no text (e.g. end of sequence).
    pub(crate) fn push_silent(&mut self, token: u32) {
        self.pending_ids.push(token);
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
        self.pending_ids.push(token);
        self.tokens.push(token);
        self.decode_new(decode, false)?;
        Ok(self.release())
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    fn take_piece(&mut self, end: usize) -> Option<Piece> {
        if end <= self.emitted && self.pending_ids.is_empty() {
            return None;
        }
        let text = self
            .text
            .get(self.emitted..end)
            .unwrap_or_default()
            .to_string();
        self.emitted = end.max(self.emitted);
        let ids = std::mem::take(&mut self.pending_ids);
        Some(Piece {
            text,
            tokens: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            ids,
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
        a.ids.extend(b.ids);
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

    /// The texts and token counts, after checking the ids' contract
    /// (`JobEvent::Delta`'s `ids`) piece by piece: a piece counts its ids;
    /// the text so far is a prefix of the ids so far decoded; at the end
    /// they are equal, or what the ids decode to past the text starts
    /// with a stop sequence that the last id completed.
    fn joined_checked(pieces: &[Piece], bytes: &'static [u8], stops: &[String]) -> (String, u32) {
        let d = decoder(bytes);
        let (mut text, mut ids) = (String::new(), Vec::new());
        for p in pieces {
            assert_eq!(p.tokens as usize, p.ids.len(), "{p:?}");
            text.push_str(&p.text);
            ids.extend_from_slice(&p.ids);
            let decoded = d(&ids).unwrap();
            assert!(decoded.starts_with(&text), "{decoded:?} vs {text:?}");
        }
        let decoded = d(&ids).unwrap();
        if decoded != text {
            let rest = &decoded[text.len()..];
            let stop = stops.iter().find(|s| rest.starts_with(s.as_str()));
            let stop = stop.unwrap_or_else(|| panic!("{rest:?} is not a stop cut"));
            let before = d(&ids[..ids.len() - 1]).unwrap();
            assert!(!before.contains(&format!("{text}{stop}")), "{before:?}");
        }
        (text, pieces.iter().map(|p| p.tokens).sum())
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
        assert_eq!(joined_checked(&pieces, b"hello", &[]), ("hello".into(), 5));
        assert_eq!(
            pieces.iter().map(|p| p.ids.clone()).collect::<Vec<_>>(),
            [[0], [1], [2], [3], [4]]
        );
        assert_eq!(pieces.len(), 5);
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let (pieces, _) = run("a€b".as_bytes(), &[]);
        assert_eq!(
            joined_checked(&pieces, "a€b".as_bytes(), &[]),
            ("a€b".into(), 5)
        );
        // The character's three tokens go out together, with its text.
        assert!(pieces.iter().any(|p| p.text == "€" && p.ids == [1, 2, 3]));
        assert!(pieces.iter().all(|p| !p.text.contains('\u{FFFD}')));
    }

    #[test]
    fn stop_spanning_tokens_is_cut_and_tokens_still_counted() {
        let stops = vec!["END".to_string()];
        let (pieces, text) = run(b"abcENDxyz", &stops);
        assert_eq!(text, "abc");
        // a, b, c, E, N, D were generated; x y z never were.
        assert_eq!(
            joined_checked(&pieces, b"abcENDxyz", &stops),
            ("abc".into(), 6)
        );
    }

    #[test]
    fn partial_stop_prefix_is_released_at_the_end() {
        let stops = vec!["ENDING".to_string()];
        let (pieces, _) = run(b"abEND", &stops);
        assert_eq!(
            joined_checked(&pieces, b"abEND", &stops),
            ("abEND".into(), 5)
        );
    }

    #[test]
    fn false_start_of_stop_is_released() {
        let stops = vec!["ab!".to_string()];
        let (pieces, text) = run(b"xabyab!z", &stops);
        assert_eq!(text, "xaby");
        assert_eq!(
            joined_checked(&pieces, b"xabyab!z", &stops),
            ("xaby".into(), 7)
        );
    }

    #[test]
    fn silent_tokens_are_counted() {
        let mut s = Streamer::new(Vec::new());
        let d = decoder(b"hi");
        let mut pieces = Vec::new();
        for i in 0..2 {
            pieces.extend(s.push(i, &d).unwrap());
        }
        s.push_silent(9);
        pieces.extend(s.finish(&d).unwrap());
        assert_eq!(joined(&pieces), ("hi".into(), 3));
        assert_eq!(pieces.last().map(|p| p.ids.clone()), Some(vec![9]));
    }
}
