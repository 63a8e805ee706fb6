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

// The schema limits are the network's, shared with the coordinator
// (`sharenet_proto::schema_limits`), which refuses a request over them
// before any node sees it: a node's refusal for them is never the
// request's fault.
use sharenet_proto::schema_limits::MAX_GRAMMAR_BYTES;

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

    /// A constraint for `grammar`; a grammar llguidance cannot compile, or
    /// one over [`MAX_GRAMMAR_BYTES`], is an invalid request naming the
    /// construct.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, EngineError> {
        grammar.check_size()?;
        self.compile_unchecked(grammar)
    }

    /// Compiles on a thread of its own, with a stack deep enough for what
    /// llguidance's recursion can reach on a grammar within the limits.
    fn compile_unchecked(&self, grammar: &Grammar) -> Result<Constraint, EngineError> {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("sharenet-grammar".into())
                .stack_size(COMPILE_STACK_BYTES)
                .spawn_scoped(scope, || self.compile_here(grammar))
                .map_err(|e| internal(format!("start the grammar compiler: {e}")))?
                .join()
                .map_err(|_| internal("the grammar compiler panicked".into()))?
        })
    }

    fn compile_here(&self, grammar: &Grammar) -> Result<Constraint, EngineError> {
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

impl Grammar {
    /// Refuses a grammar over [`MAX_GRAMMAR_BYTES`], or a schema with more
    /// properties than [`Grammar::check_properties`] allows (cheap: a
    /// schema is measured by serializing it into a counter that stops at
    /// the limit, then walked once).
    pub fn check_size(&self) -> Result<(), EngineError> {
        let (fits, what) = match self {
            Self::JsonSchema(schema) => (
                sharenet_proto::schema_limits::schemas_fit([schema], MAX_GRAMMAR_BYTES),
                "response_format: the schema",
            ),
            Self::Lark(src) => (
                src.len() <= MAX_GRAMMAR_BYTES,
                "tools: the forced call's grammar",
            ),
        };
        if !fits {
            return Err(EngineError::InvalidInput(format!(
                "{what} is over {MAX_GRAMMAR_BYTES} bytes"
            )));
        }
        match self {
            Self::JsonSchema(schema) => Self::check_properties([schema], "response_format"),
            Self::Lark(_) => Ok(()),
        }
    }

    /// Refuses schemas declaring more than
    /// [`sharenet_proto::MAX_OBJECT_PROPERTIES`] in one object or
    /// [`sharenet_proto::MAX_SCHEMA_PROPERTIES`] in all (every `properties` map
    /// anywhere in them counts; the shared check,
    /// `sharenet_proto::schema_limits::check_schema_properties`). `what` names them
    /// in the error.
    pub fn check_properties<'a>(
        schemas: impl IntoIterator<Item = &'a Value>,
        what: &str,
    ) -> Result<(), EngineError> {
        sharenet_proto::schema_limits::check_schema_properties(schemas, "schema").map_err(|e| {
            let reason = match e {
                sharenet_proto::ProtoError::Invalid { reason, .. } => reason,
                other => other.to_string(),
            };
            EngineError::InvalidInput(format!("{what}: {reason}"))
        })
    }
}

/// The stack a compile runs on. llguidance's JSON compiler recurses once
/// per property of an object (`Compiler::ordered_sequence`), about 1 KiB a
/// level unoptimized: a schema under [`MAX_GRAMMAR_BYTES`] of 26,000
/// `"63ff": {}` properties overflowed the 2 MiB of a tokio blocking thread
/// and aborted the process. Only the pages a compile touches are
/// committed, and compiles at once are bounded by the node's admission.
const COMPILE_STACK_BYTES: usize = 64 * 1024 * 1024;

fn internal(message: String) -> EngineError {
    EngineError::Inference(candle_core::Error::Msg(message))
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

#[cfg(test)]
mod tests {
    use super::*;
    use sharenet_proto::MAX_OBJECT_PROPERTIES;

    fn schema_of(bytes: usize) -> Grammar {
        // `{"enum":["aaa…"]}` is 13 bytes around the string.
        Grammar::JsonSchema(json!({"enum": ["a".repeat(bytes - 13)]}))
    }

    fn object_of(n: usize, required: bool) -> Value {
        let properties: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("{i:x}"), json!({}))).collect();
        let names: Vec<&String> = properties.keys().collect();
        if required {
            json!({"type": "object", "properties": properties, "required": names})
        } else {
            json!({"type": "object", "properties": properties})
        }
    }

    /// llguidance recurses once per property of an object: 3,000 (past
    /// the limits, so compiled unchecked) overflowed a tokio blocking
    /// thread's 2 MiB unoptimized and aborted the process. Compiled from
    /// such a thread, they now run on the compiler's own stack.
    #[test]
    fn constraint_compiles_run_on_a_stack_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let shape = crate::tiny::TinyConfig {
            arch: crate::Arch::Qwen2,
            ..Default::default()
        };
        crate::tiny::write_tiny_model(dir.path(), 3, shape).unwrap();
        let tokenizer = Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        let grammars = Grammars::new(&tokenizer, shape.vocab_size, &[0]).unwrap();
        let schema = Grammar::JsonSchema(object_of(3000, true));
        let compiled = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || grammars.compile_unchecked(&schema).map(|_| ()))
            .unwrap()
            .join()
            .unwrap();
        assert!(compiled.is_ok(), "{:?}", compiled.err());
    }

    #[test]
    fn constraint_schemas_with_too_many_properties_are_refused_before_compiling() {
        let wide = Grammar::JsonSchema(object_of(MAX_OBJECT_PROPERTIES + 1, false));
        let err = wide.check_size().err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("1001 properties")),
            "{err:?}"
        );
        assert!(
            Grammar::JsonSchema(object_of(MAX_OBJECT_PROPERTIES, false))
                .check_size()
                .is_ok()
        );
        // Six objects of 1,000, nested anywhere: over 5,000 in all.
        let many = json!({"anyOf": (0..6).map(|_| json!({"items": object_of(1000, false)})).collect::<Vec<_>>()});
        let err = Grammar::JsonSchema(many)
            .check_size()
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("over 5000 properties")),
            "{err:?}"
        );
        let tools: Vec<Value> = (0..6).map(|_| object_of(1000, false)).collect();
        let err = Grammar::check_properties(&tools, "tools")
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with("invalid input: tools:")),
            "{err:?}"
        );
    }

    #[test]
    fn constraint_grammars_over_the_size_limit_are_refused_before_compiling() {
        let len = |g: &Grammar| match g {
            Grammar::JsonSchema(v) => serde_json::to_vec(v).map(|v| v.len()).unwrap_or(0),
            Grammar::Lark(src) => src.len(),
        };
        let at_limit = schema_of(MAX_GRAMMAR_BYTES);
        assert_eq!(len(&at_limit), MAX_GRAMMAR_BYTES);
        assert!(at_limit.check_size().is_ok());
        let err = schema_of(MAX_GRAMMAR_BYTES + 1)
            .check_size()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("response_format") && err.contains("262144"),
            "{err}"
        );
        assert!(
            Grammar::Lark("x".repeat(MAX_GRAMMAR_BYTES))
                .check_size()
                .is_ok()
        );
        let err = Grammar::Lark("x".repeat(MAX_GRAMMAR_BYTES + 1))
            .check_size()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("tools"), "{err}");
    }
}
