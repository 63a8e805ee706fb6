//! Limits both sides of a job stream apply: the JSON-schema limits of a
//! node's constraint compiler (the coordinator refuses a request over them
//! with a 400 before any node is dialled, so a node's refusal for them
//! never happens and any other refusal is the node's own), and the per-job
//! byte budget that bounds what a node may make the coordinator keep
//! (text, tool calls and logprob entries).

use serde_json::Value;

use crate::{ProtoError, SamplingParams, TokenLogprob, ToolCall};

/// Largest grammar compiled: bytes of a JSON schema (serialized compactly)
/// or of a Lark grammar's source. OpenAI's structured outputs cap a schema
/// at 5,000 properties and 120,000 characters of names and values, which
/// fits with room; compile work grows with the grammar, and a job frame
/// (1 MiB) would otherwise let four times as much through.
pub const MAX_GRAMMAR_BYTES: usize = 256 * 1024;

/// Most properties one object of a schema may declare. llguidance's
/// compile time grows with the square of an object's optional properties:
/// unoptimized, 1,000 took 1 s, 4,000 took 17 s and 8,000 (a 76 KB schema)
/// 56 s; required ones cost a tenth of that.
pub const MAX_OBJECT_PROPERTIES: usize = 1000;

/// Most properties a job's schemas may declare in all: OpenAI's own cap
/// for structured outputs.
pub const MAX_SCHEMA_PROPERTIES: usize = 5000;

/// Most bytes the parameter schemas of a request's tools may take in all
/// (compact JSON). A forced call compiles one Lark grammar that embeds
/// every callable tool's schema, each wrapped in about 200 bytes of its own
/// (the name as a constant, `required`, `additionalProperties`); keeping
/// 512 bytes per tool for that wrapping (64 KiB at [`crate::MAX_TOOLS`])
/// keeps the grammar under [`MAX_GRAMMAR_BYTES`], so a node never refuses a
/// request the coordinator let through for its grammar's size.
pub const MAX_TOOL_SCHEMA_BYTES: usize = MAX_GRAMMAR_BYTES - crate::MAX_TOOLS * 512;

/// Most bytes one token's text may take (a streamed token's share of text,
/// a logprob entry's `token` and `bytes`): the longest tokens of real
/// vocabularies are far shorter, so a node that sends more is flooding,
/// not generating.
pub const MAX_TOKEN_BYTES: usize = 256;

/// What one logprob entry (the chosen token or one alternative) may cost
/// a job on average: `token` and `bytes` at 64 bytes each and 32 for the id,
/// the logprob and framing. Real vocabularies average under 8 bytes a
/// token and a step's alternatives are mostly ordinary tokens, so an honest
/// node stays far below it even when some tokens are long; each single
/// entry is still capped at [`MAX_TOKEN_BYTES`] per string.
pub const LOGPROB_ENTRY_BYTES: u64 = 160;

/// Bytes a job may keep beyond its tokens' share: held-back stop-string
/// prefixes and partial UTF-8 released late, tool-call ids.
pub const JOB_SLACK_BYTES: u64 = 4096;

/// What a logprob entry costs against the job's budget: its strings plus
/// a fixed 16 bytes for the id and the logprob.
pub fn logprob_entry_bytes(e: &TokenLogprob) -> u64 {
    let strings = |token: &str, bytes: &[u8]| (token.len() + bytes.len()) as u64 + 16;
    e.top
        .iter()
        .map(|t| strings(&t.token, &t.bytes))
        .fold(strings(&e.token, &e.bytes), u64::saturating_add)
}

/// What a tool call costs against the job's budget: its three strings.
pub fn tool_call_bytes(c: &ToolCall) -> u64 {
    (c.id.len() + c.name.len() + c.arguments.len()) as u64
}

/// The per-job byte budget: every byte of text, tool calls and logprob
/// entries a node sends for one job counts against it, and a node that
/// goes over fails the job.
///
/// ```text
/// budget = max_tokens × (MAX_TOKEN_BYTES + entries × LOGPROB_ENTRY_BYTES) + JOB_SLACK_BYTES
/// entries = 1 + top_logprobs when logprobs were asked for, else 0
/// ```
///
/// Why: everything a node sends is made of the tokens it may generate, so
/// the budget grows with `max_tokens` and with what the builder asked to
/// see per token, and nothing else. With the defaults (256 tokens, no
/// logprobs) a job may keep 68 KiB; the worst a job can ask for (32,768
/// tokens, 20 alternatives) 113 MiB, where nothing bounded logprobs before
/// (up to a 1 MiB frame per event, about 32 GiB per job).
pub fn job_byte_budget(params: &SamplingParams) -> u64 {
    let entries = if params.logprobs {
        1 + u64::from(params.top_logprobs)
    } else {
        0
    };
    let per_token = MAX_TOKEN_BYTES as u64 + entries * LOGPROB_ENTRY_BYTES;
    u64::from(params.max_tokens)
        .saturating_mul(per_token)
        .saturating_add(JOB_SLACK_BYTES)
}

/// Why a logprob entry breaks the job's terms, if it does: sent when
/// logprobs were not asked for, more alternatives than `top_logprobs`, or
/// a string over [`MAX_TOKEN_BYTES`].
pub fn bad_logprob(params: &SamplingParams, e: &TokenLogprob) -> Option<&'static str> {
    if !params.logprobs {
        return Some("logprobs that were not asked for");
    }
    if e.top.len() > usize::from(params.top_logprobs) {
        return Some("more alternatives per token than top_logprobs");
    }
    let long = |token: &str, bytes: &[u8]| token.len() > MAX_TOKEN_BYTES || bytes.len() > MAX_TOKEN_BYTES;
    if long(&e.token, &e.bytes) || e.top.iter().any(|t| long(&t.token, &t.bytes)) {
        return Some("a logprob token longer than any token");
    }
    None
}

fn invalid(field: &'static str, reason: String) -> ProtoError {
    ProtoError::Invalid { field, reason }
}

/// Counts bytes written, failing past a limit.
struct Counter {
    written: usize,
    limit: usize,
}

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written = self.written.saturating_add(buf.len());
        if self.written > self.limit {
            return Err(std::io::Error::other("over the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `schemas`, serialized compactly, take at most `limit` bytes in
/// all (cheap: serialization stops at the limit).
pub fn schemas_fit<'a>(schemas: impl IntoIterator<Item = &'a Value>, limit: usize) -> bool {
    let mut counter = Counter { written: 0, limit };
    schemas
        .into_iter()
        .all(|s| serde_json::to_writer(&mut counter, s).is_ok())
}

/// Refuses schemas declaring more than [`MAX_OBJECT_PROPERTIES`] in one
/// object or [`MAX_SCHEMA_PROPERTIES`] in all (every `properties` map
/// anywhere in them counts). `field` names them in the error. Walks
/// without recursion.
pub fn check_schema_properties<'a>(
    schemas: impl IntoIterator<Item = &'a Value>,
    field: &'static str,
) -> Result<(), ProtoError> {
    let mut total = 0usize;
    let mut todo: Vec<&Value> = schemas.into_iter().collect();
    while let Some(v) = todo.pop() {
        match v {
            Value::Object(map) => {
                if let Some(Value::Object(props)) = map.get("properties") {
                    if props.len() > MAX_OBJECT_PROPERTIES {
                        return Err(invalid(
                            field,
                            format!(
                                "an object of the schema has {} properties; at most {MAX_OBJECT_PROPERTIES} are compiled",
                                props.len()
                            ),
                        ));
                    }
                    total += props.len();
                    if total > MAX_SCHEMA_PROPERTIES {
                        return Err(invalid(
                            field,
                            format!("the schema has over {MAX_SCHEMA_PROPERTIES} properties in all"),
                        ));
                    }
                }
                todo.extend(map.values());
            }
            Value::Array(items) => todo.extend(items),
            _ => {}
        }
    }
    Ok(())
}

/// The limits of a node's constraint compiler on schemas: at most `limit`
/// bytes in all, then the property counts.
pub fn check_schemas<'a>(
    schemas: impl IntoIterator<Item = &'a Value> + Clone,
    limit: usize,
    field: &'static str,
) -> Result<(), ProtoError> {
    if !schemas_fit(schemas.clone(), limit) {
        return Err(invalid(
            field,
            format!("the schema is over {limit} bytes (compact JSON)"),
        ));
    }
    check_schema_properties(schemas, field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TopLogprob;
    use serde_json::json;

    fn entry(token: &str, top: usize) -> TokenLogprob {
        TokenLogprob {
            id: 1,
            token: token.into(),
            bytes: token.as_bytes().to_vec(),
            logprob: -0.5,
            top: (0..top)
                .map(|i| TopLogprob {
                    id: i as u32,
                    token: token.into(),
                    bytes: token.as_bytes().to_vec(),
                    logprob: -1.0,
                })
                .collect(),
        }
    }

    #[test]
    fn the_budget_grows_with_max_tokens_and_what_was_asked_per_token() {
        let plain = SamplingParams {
            max_tokens: 256,
            ..SamplingParams::default()
        };
        assert_eq!(job_byte_budget(&plain), 256 * 256 + JOB_SLACK_BYTES);
        let top = SamplingParams {
            logprobs: true,
            top_logprobs: 20,
            max_tokens: crate::MAX_JOB_TOKENS,
            ..SamplingParams::default()
        };
        assert!(job_byte_budget(&top) < 120 * 1024 * 1024);
        // An honest entry of ordinary tokens is well inside its share.
        assert!(logprob_entry_bytes(&entry("hello", 20)) < 21 * LOGPROB_ENTRY_BYTES);
    }

    #[test]
    fn logprob_entries_keep_to_what_was_asked() {
        let asked = SamplingParams {
            logprobs: true,
            top_logprobs: 2,
            ..SamplingParams::default()
        };
        assert_eq!(bad_logprob(&asked, &entry("a", 2)), None);
        assert!(bad_logprob(&asked, &entry("a", 3)).is_some());
        assert!(bad_logprob(&asked, &entry(&"a".repeat(MAX_TOKEN_BYTES + 1), 0)).is_some());
        assert!(bad_logprob(&SamplingParams::default(), &entry("a", 0)).is_some());
    }

    #[test]
    fn schema_limits_count_bytes_and_properties() {
        let object = |n: usize| {
            let props: serde_json::Map<String, Value> =
                (0..n).map(|i| (format!("{i:x}"), json!({}))).collect();
            json!({"type": "object", "properties": props})
        };
        assert!(check_schemas([&object(10)], MAX_GRAMMAR_BYTES, "response_format").is_ok());
        assert!(check_schemas([&object(1001)], MAX_GRAMMAR_BYTES, "response_format").is_err());
        let six: Vec<Value> = (0..6).map(|_| object(1000)).collect();
        assert!(check_schemas(&six, MAX_GRAMMAR_BYTES, "tools").is_err());
        let big = json!({"enum": ["a".repeat(MAX_GRAMMAR_BYTES)]});
        assert!(check_schemas([&big], MAX_GRAMMAR_BYTES, "response_format").is_err());
    }
}
