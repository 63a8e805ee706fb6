//! Constrained decoding: JSON schemas and tool-call grammars enforced
//! token by token with [llguidance](https://github.com/guidance-ai/llguidance).
//!
//! Each model builds one [`Grammars`] the first time a job asks for a
//! constraint: a token trie of its vocabulary (every token's exact bytes)
//! and llguidance's parser factory. A job's [`Constraint`] masks the logits
//! before each draw (disallowed tokens get `-inf`) and is told the token
//! drawn; when the grammar is complete only end-of-sequence stays allowed,
//! so the answer always parses, even from a random-weight model.
//!
//! Whitespace between JSON tokens is fixed (`", "` and `": "`), not free:
//! with free whitespace a weak model can spend its whole budget on spaces.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};
use tokenizers::{DecoderWrapper, Tokenizer};

use crate::EngineError;

/// The vocabulary as llguidance sees it: each token's bytes.
struct Vocab {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for Vocab {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_else(|_| self.trie.greedy_tokenize(text.as_bytes()))
        })
    }
}

/// How the tokenizer spells bytes in its vocabulary.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spelling {
    /// GPT-2 style: every byte is a printable character (`Ġ` is a space).
    ByteLevel,
    /// SentencePiece style: `▁` is a space, `<0x0A>` a raw byte.
    Metaspace,
}

fn spelling(d: Option<&DecoderWrapper>) -> Option<Spelling> {
    match d? {
        DecoderWrapper::ByteLevel(_) => Some(Spelling::ByteLevel),
        DecoderWrapper::ByteFallback(_) | DecoderWrapper::Metaspace(_) => Some(Spelling::Metaspace),
        DecoderWrapper::Sequence(seq) => seq.get_decoders().iter().find_map(|d| spelling(Some(d))),
        _ => None,
    }
}

/// GPT-2's printable character for each byte, reversed.
fn byte_level_map() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map = std::collections::HashMap::with_capacity(256);
    let mut next = 256u32;
    for b in 0..=255u8 {
        if printable(b) {
            map.insert(char::from(b), b);
        } else {
            if let Some(c) = char::from_u32(next) {
                map.insert(c, b);
            }
            next += 1;
        }
    }
    map
}

/// Every token's exact bytes; special tokens are marked as llguidance
/// expects (so a grammar never produces them as text).
fn token_bytes(tokenizer: &Tokenizer, vocab_size: usize) -> Result<Vec<Vec<u8>>, EngineError> {
    let spelling = spelling(tokenizer.get_decoder()).ok_or_else(|| {
        EngineError::Unsupported(
            "constrained decoding: the tokenizer's decoder is neither byte-level nor byte-fallback"
                .into(),
        )
    })?;
    let specials: std::collections::HashSet<u32> = tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect();
    let map = byte_level_map();
    let mut out = Vec::with_capacity(vocab_size);
    for id in 0..vocab_size as u32 {
        let Some(name) = tokenizer.id_to_token(id) else {
            // A padded vocabulary slot: never allowed as text.
            let mut b = format!("<[{id}]>").into_bytes();
            b.insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
            out.push(b);
            continue;
        };
        let bytes = if specials.contains(&id) {
            let mut b = name.into_bytes();
            b.insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
            b
        } else {
            match spelling {
                Spelling::ByteLevel => name
                    .chars()
                    .map(|c| map.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    // Added tokens are spelled as plain text.
                    .unwrap_or_else(|| name.into_bytes()),
                Spelling::Metaspace => match name
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => vec![b],
                    None => name.replace('\u{2581}', " ").into_bytes(),
                },
            }
        };
        out.push(bytes);
    }
    Ok(out)
}

/// One model's constraint compiler, built once.
pub struct Grammars {
    factory: ParserFactory,
    eos: Vec<u32>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").field("eos", &self.eos).finish()
    }
}

impl Grammars {
    pub(crate) fn new(
        tokenizer: &Tokenizer,
        vocab_size: usize,
        eos: &[u32],
    ) -> Result<Self, EngineError> {
        let first_eos = eos.first().copied().ok_or_else(|| {
            EngineError::Unsupported("constrained decoding needs an end-of-sequence token".into())
        })?;
        let words = token_bytes(tokenizer, vocab_size)?;
        let info = TokRxInfo::new(vocab_size as u32, first_eos);
        let vocab = Vocab {
            trie: TokTrie::from(&info, &words),
            tokenizer: tokenizer.clone(),
        };
        let env: TokEnv = Arc::new(vocab);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Unsupported(format!("constrained decoding: {e}")))?;
        factory.quiet();
        Ok(Self {
            factory,
            eos: eos.to_vec(),
        })
    }

    /// A constraint for `grammar`; a grammar llguidance cannot compile is
    /// an invalid request naming the construct.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, EngineError> {
        // Errors name what the builder sent: the schema, or the tools.
        let (top, what) = match grammar {
            Grammar::JsonSchema(schema) => (
                TopLevelGrammar::from_json_schema(with_fixed_whitespace(schema)),
                "response_format",
            ),
            Grammar::Lark(src) => (TopLevelGrammar::from_lark(src.clone()), "tools"),
        };
        let parser = self
            .factory
            .create_parser(top)
            .map_err(|e| EngineError::InvalidInput(format!("{what}: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(EngineError::InvalidInput(format!("{what}: {e}")));
        }
        Ok(Constraint {
            matcher,
            eos: self.eos.clone(),
        })
    }
}

/// What a job's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// A JSON schema (`response_format`).
    JsonSchema(Value),
    /// A Lark grammar (tool calls in the model's own format).
    Lark(String),
}

/// Compact, fixed separators unless the schema sets its own.
fn with_fixed_whitespace(schema: &Value) -> Value {
    let mut schema = match schema {
        Value::Bool(true) => json!({}),
        other => other.clone(),
    };
    if let Some(obj) = schema.as_object_mut()
        && !obj.contains_key("x-guidance")
    {
        obj.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// One job's grammar state.
pub struct Constraint {
    matcher: Matcher,
    eos: Vec<u32>,
}

impl Constraint {
    /// Sets every token the grammar does not allow next to `-inf`. When
    /// the grammar is complete only end-of-sequence is allowed.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), EngineError> {
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| EngineError::InvalidInput(format!("constrained decoding: {e}")))?;
        let eos_ok = mask.is_allowed(self.eos[0]);
        for (id, l) in logits.iter_mut().enumerate() {
            let id = id as u32;
            let allowed = if self.eos.contains(&id) {
                eos_ok
            } else {
                mask.is_allowed(id)
            };
            if !allowed {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances the grammar by the token drawn.
    pub fn commit(&mut self, token: u32) -> Result<(), EngineError> {
        if self.eos.contains(&token) {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| EngineError::InvalidInput(format!("constrained decoding: {e}")))
    }

    /// The grammar is complete and allows nothing more.
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }
}
