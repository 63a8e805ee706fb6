//! Tool calling and structured outputs on the wire between coordinator and
//! node: the functions a model may call, which of them it must call, the
//! calls it made, and the JSON shape its answer must take.
//!
//! JSON schemas stay [`serde_json::Value`]: the node's constraint compiler
//! (or its upstream server) is what reads them. Sizes are bounded here so a
//! request cannot make a node hold more than a frame's worth.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ProtoError;

/// Most tools one request may offer (OpenAI's own limit).
pub const MAX_TOOLS: usize = 128;
/// Longest function name (OpenAI: `^[a-zA-Z0-9_-]{1,64}$`).
pub const MAX_TOOL_NAME: usize = 64;

/// Most bytes the parameter schemas of a request's tools may take in all
/// (compact JSON). A forced call compiles one Lark grammar that embeds
/// every callable tool's schema, each wrapped in about 200 bytes of its own
/// (the name as a constant, `required`, `additionalProperties`); keeping
/// 512 bytes per tool for that wrapping (64 KiB at [`MAX_TOOLS`])
/// keeps the grammar under [`crate::MAX_GRAMMAR_BYTES`], so a node never refuses a
/// request the coordinator let through for its grammar's size.
pub const MAX_TOOL_SCHEMA_BYTES: usize = crate::schema_limits::MAX_GRAMMAR_BYTES - MAX_TOOLS * 512;

/// A function the model may call (OpenAI's `tools[].function`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// A JSON schema for the arguments object; `null` means any object.
    #[serde(default)]
    pub parameters: Value,
    /// The arguments must match `parameters` exactly (constrained decoding
    /// on nodes that have it).
    #[serde(default)]
    pub strict: bool,
}

/// Which tools the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides whether to call any.
    #[default]
    Auto,
    /// No tool calls; plain text.
    None,
    /// At least one call to any of the tools.
    Required,
    /// A call to this function.
    Function(String),
}

/// The tools offered with a chat job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tools {
    pub specs: Vec<ToolSpec>,
    #[serde(default)]
    pub choice: ToolChoice,
    /// Whether the model may make several calls in one turn.
    #[serde(default = "yes")]
    pub parallel: bool,
}

fn yes() -> bool {
    true
}

/// A call the model made: a function name and its arguments as the JSON
/// text the model wrote (OpenAI passes arguments as a string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// `call_…`, unique within the response.
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// The shape the answer must take (OpenAI's `response_format`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    /// Any JSON object.
    JsonObject,
    /// JSON matching `schema`.
    JsonSchema {
        name: String,
        schema: Value,
        #[serde(default)]
        strict: bool,
    },
}

/// What a model (or its upstream server) can do beyond plain text. Nodes
/// advertise it per model; the coordinator routes on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// `tools` / `tool_choice`, with `tool_calls` parsed out of the output.
    #[serde(default)]
    pub tools: bool,
    /// `response_format` `json_object` and `json_schema`, enforced.
    #[serde(default)]
    pub structured_outputs: bool,
}

impl Capabilities {
    const TOOLS: u32 = 1;
    const STRUCTURED: u32 = 2;

    /// The advert's encoding: a bit per capability.
    pub fn bits(self) -> u32 {
        (if self.tools { Self::TOOLS } else { 0 })
            | (if self.structured_outputs {
                Self::STRUCTURED
            } else {
                0
            })
    }

    /// Unknown bits (a newer peer's capabilities) are ignored.
    pub fn from_bits(bits: u32) -> Self {
        Self {
            tools: bits & Self::TOOLS != 0,
            structured_outputs: bits & Self::STRUCTURED != 0,
        }
    }

    /// Whether every capability in `need` is here.
    pub fn covers(self, need: Capabilities) -> bool {
        (need.bits() & !self.bits()) == 0
    }

    /// The names of the capabilities in `self`, for messages.
    pub fn names(self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.tools {
            out.push("tools");
        }
        if self.structured_outputs {
            out.push("structured_outputs");
        }
        out
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ProtoError {
    ProtoError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// OpenAI's rule for function names.
pub fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Tools {
    pub fn validate(&self) -> Result<(), ProtoError> {
        if self.specs.is_empty() {
            return Err(invalid("tools", "must not be empty"));
        }
        if self.specs.len() > MAX_TOOLS {
            return Err(invalid("tools", format!("at most {MAX_TOOLS}")));
        }
        for (i, t) in self.specs.iter().enumerate() {
            if !valid_tool_name(&t.name) {
                return Err(invalid(
                    "tools",
                    format!(
                        "tools[{i}].function.name {:?} must be 1-{MAX_TOOL_NAME} of a-z, A-Z, 0-9, _ and -",
                        t.name
                    ),
                ));
            }
            if self.specs[..i].iter().any(|o| o.name == t.name) {
                return Err(invalid(
                    "tools",
                    format!("tools[{i}].function.name {:?} is given twice", t.name),
                ));
            }
            if !(t.parameters.is_null() || t.parameters.is_object()) {
                return Err(invalid(
                    "tools",
                    format!("tools[{i}].function.parameters must be a JSON schema object"),
                ));
            }
        }
        // A node's constraint compiler's limits, checked where every
        // request passes (see `schema_limits`).
        crate::schema_limits::check_schemas(
            self.specs.iter().map(|t| &t.parameters),
            MAX_TOOL_SCHEMA_BYTES,
            "tools",
        )?;
        if let ToolChoice::Function(name) = &self.choice
            && !self.specs.iter().any(|t| &t.name == name)
        {
            return Err(invalid(
                "tool_choice",
                format!("names {name:?}, which is not among the tools"),
            ));
        }
        Ok(())
    }

    /// The tools the model may call under `choice` (all, or the named one).
    pub fn callable(&self) -> impl Iterator<Item = &ToolSpec> {
        self.specs.iter().filter(move |t| match &self.choice {
            ToolChoice::Function(name) => &t.name == name,
            ToolChoice::None => false,
            _ => true,
        })
    }
}

impl ResponseFormat {
    pub fn validate(&self) -> Result<(), ProtoError> {
        if let Self::JsonSchema { name, schema, .. } = self {
            if !valid_tool_name(name) {
                return Err(invalid(
                    "response_format",
                    format!(
                        "json_schema.name {name:?} must be 1-{MAX_TOOL_NAME} of a-z, A-Z, 0-9, _ and -"
                    ),
                ));
            }
            if !(schema.is_object() || schema.is_boolean()) {
                return Err(invalid(
                    "response_format",
                    "json_schema.schema must be a JSON schema object",
                ));
            }
            crate::schema_limits::check_schemas(
                [schema],
                crate::schema_limits::MAX_GRAMMAR_BYTES,
                "response_format",
            )?;
        }
        Ok(())
    }

    /// The JSON schema the answer must match.
    pub fn schema(&self) -> Value {
        match self {
            Self::JsonObject => serde_json::json!({"type": "object"}),
            Self::JsonSchema { schema, .. } => schema.clone(),
        }
    }
}

/// SHA-256 of a response: its text, then each tool call as `0x00 id 0x00
/// name 0x00 arguments`. With no tool calls this is the SHA-256 of the
/// text, as before tools existed. Receipts carry it; node and coordinator
/// compute it the same way.
pub fn response_digest(text: &str, calls: &[ToolCall]) -> [u8; 32] {
    let mut h = ResponseHasher::default();
    h.text(text);
    for c in calls {
        h.call(c);
    }
    h.digest()
}

/// [`response_digest`] computed as the response streams: text and calls
/// may arrive interleaved; the digest is always text first, then calls.
#[derive(Clone, Default)]
pub struct ResponseHasher {
    text: sha2::Sha256,
    calls: Vec<u8>,
}

impl ResponseHasher {
    pub fn text(&mut self, text: &str) {
        use sha2::Digest;
        self.text.update(text.as_bytes());
    }

    pub fn call(&mut self, c: &ToolCall) {
        for part in [&c.id, &c.name, &c.arguments] {
            self.calls.push(0);
            self.calls.extend_from_slice(part.as_bytes());
        }
    }

    /// The digest of everything so far (the hasher goes on).
    pub fn digest(&self) -> [u8; 32] {
        use sha2::Digest;
        let mut h = self.text.clone();
        h.update(&self.calls);
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools(choice: ToolChoice) -> Tools {
        Tools {
            specs: vec![ToolSpec {
                name: "get_weather".into(),
                description: "Weather in a city".into(),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                strict: false,
            }],
            choice,
            parallel: true,
        }
    }

    #[test]
    fn tools_are_checked() {
        assert!(tools(ToolChoice::Auto).validate().is_ok());
        assert!(
            tools(ToolChoice::Function("get_weather".into()))
                .validate()
                .is_ok()
        );
        assert!(
            tools(ToolChoice::Function("nope".into()))
                .validate()
                .is_err()
        );
        let mut bad = tools(ToolChoice::Auto);
        bad.specs[0].name = "get weather".into();
        assert!(bad.validate().is_err());
        let mut twice = tools(ToolChoice::Auto);
        twice.specs.push(twice.specs[0].clone());
        assert!(twice.validate().is_err());
        let mut params = tools(ToolChoice::Auto);
        params.specs[0].parameters = json!("string");
        assert!(params.validate().is_err());
        assert_eq!(tools(ToolChoice::None).callable().count(), 0);
    }

    #[test]
    fn capabilities_round_trip_and_cover() {
        let both = Capabilities {
            tools: true,
            structured_outputs: true,
        };
        assert_eq!(Capabilities::from_bits(both.bits()), both);
        assert_eq!(Capabilities::from_bits(0x80), Capabilities::default());
        assert!(both.covers(Capabilities {
            tools: true,
            ..Default::default()
        }));
        assert!(!Capabilities::default().covers(both));
    }

    #[test]
    fn digest_without_calls_is_the_text_digest() {
        assert_eq!(response_digest("hi", &[]), crate::sha256(b"hi"));
        let call = ToolCall {
            id: "call_1".into(),
            name: "f".into(),
            arguments: "{}".into(),
        };
        assert_ne!(
            response_digest("hi", std::slice::from_ref(&call)),
            crate::sha256(b"hi")
        );
        // Where one field ends and the next begins is part of the digest.
        let shifted = ToolCall {
            name: "f{".into(),
            arguments: "}".into(),
            ..call.clone()
        };
        assert_ne!(
            response_digest("", &[call]),
            response_digest("", &[shifted])
        );
    }
}
