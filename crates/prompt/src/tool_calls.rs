//! Tool calls in the model's own format: which format a model family
//! writes, the grammar that forces a call (`tool_choice` `required` or a
//! named function), and a streaming parser that turns the model's text
//! into plain content plus [`ToolCall`]s.
//!
//! | format | families | a call looks like |
//! |---|---|---|
//! | [`ToolFormat::Hermes`] | Qwen2.5, Hermes, the tiny models | `<tool_call>\n{"name": "f", "arguments": {…}}\n</tool_call>` |
//! | [`ToolFormat::Llama3`] | Llama 3.1 / 3.2 | the whole reply is `{"name": "f", "parameters": {…}}` (optionally after `<\|python_tag\|>`) |
//! | [`ToolFormat::Mistral`] | Mistral | `[TOOL_CALLS] [{"name": "f", "arguments": {…}}, …]` |
//!
//! A call that does not parse stays in the content as text: a malformed
//! call is never a crash and never silently dropped.

use serde_json::{Value, json};
use sharenet_proto::{ToolCall, ToolChoice, Tools};

use crate::json::Json;

/// How a model family writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3,
    Mistral,
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";
const MISTRAL_TAG: &str = "[TOOL_CALLS]";

impl ToolFormat {
    /// The format a chat template writes, if it takes `tools` at all.
    pub fn of_template(source: &str) -> Option<Self> {
        if !source.contains("tools") {
            return None;
        }
        if source.contains(HERMES_OPEN) {
            Some(Self::Hermes)
        } else if source.contains(MISTRAL_TAG) {
            Some(Self::Mistral)
        } else if source.contains(PYTHON_TAG) || source.contains("<|start_header_id|>") {
            Some(Self::Llama3)
        } else {
            None
        }
    }

    /// A Lark grammar for a reply that is nothing but calls to the
    /// callable tools (one, or several when `parallel`), with arguments
    /// matching each function's schema.
    pub fn forced_call_grammar(self, tools: &Tools) -> String {
        let calls: Vec<Value> = tools
            .callable()
            .map(|t| {
                let params = if t.parameters.is_null() {
                    json!({"type": "object"})
                } else {
                    t.parameters.clone()
                };
                let args_key = if self == Self::Llama3 {
                    "parameters"
                } else {
                    "arguments"
                };
                json!({
                    "type": "object",
                    "properties": {"name": {"const": t.name}, args_key: params},
                    "required": ["name", args_key],
                    "additionalProperties": false,
                })
            })
            .collect();
        let call = json!({
            "anyOf": calls,
            "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "},
        });
        let call = format!("%json {call}");
        match self {
            Self::Hermes => {
                let one = format!("\"{HERMES_OPEN}\\n\" call \"\\n{HERMES_CLOSE}\"");
                let body = if tools.parallel {
                    format!("{one} (\"\\n\" {one})*")
                } else {
                    one
                };
                format!("start: {body}\ncall: {call}\n")
            }
            Self::Mistral => {
                let body = if tools.parallel {
                    "\"[\" call (\", \" call)* \"]\""
                } else {
                    "\"[\" call \"]\""
                };
                format!("start: \"{MISTRAL_TAG} \" {body}\ncall: {call}\n")
            }
            // Llama 3 writes one call per reply.
            Self::Llama3 => format!("start: call\ncall: {call}\n"),
        }
    }
}

/// Whether a job's tools ask for a forced call.
pub fn forces_call(tools: &Tools) -> bool {
    matches!(tools.choice, ToolChoice::Required | ToolChoice::Function(_))
}

/// The tools as Hugging Face chat templates take them:
/// `[{"type": "function", "function": {name, parameters, description}}]`
/// (keys in that order, whatever the build's `serde_json` features; see
/// [`Json`]). A function without parameters gets an empty object schema.
pub fn template_tools(tools: &Tools) -> Vec<Json> {
    tools
        .specs
        .iter()
        .filter(|_| tools.choice != ToolChoice::None)
        .map(|t| {
            let params = if t.parameters.is_null() {
                Json::object([
                    ("type", Json::from("object")),
                    ("properties", Json::Object(Vec::new())),
                ])
            } else {
                Json::from(&t.parameters)
            };
            let mut f = Json::object([
                ("name", Json::from(t.name.as_str())),
                ("parameters", params),
            ]);
            if !t.description.is_empty() {
                f.insert("description", Json::from(t.description.as_str()));
            }
            Json::object([("type", Json::from("function")), ("function", f)])
        })
        .collect()
}

/// Splits a model's streamed text into content and tool calls.
pub struct ToolCallParser {
    format: ToolFormat,
    /// Text not yet released: a possible call, or the start of a marker.
    pending: String,
    /// Inside a Hermes `<tool_call>`; or, for the whole-reply formats, the
    /// reply started like a call and is held to the end.
    in_call: bool,
    /// Nothing but whitespace released so far (whole-reply formats decide
    /// on the first non-blank text).
    at_start: bool,
    calls: usize,
    /// Prefix for call ids, unique per job.
    id_prefix: String,
}

/// What a piece of text turned into.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub text: String,
    pub calls: Vec<ToolCall>,
}

impl ToolCallParser {
    /// `id_prefix` makes call ids (`call_{prefix}_{n}`) unique across jobs.
    pub fn new(format: ToolFormat, id_prefix: &str) -> Self {
        Self {
            format,
            pending: String::new(),
            in_call: false,
            at_start: true,
            calls: 0,
            id_prefix: id_prefix.to_owned(),
        }
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    fn next_id(&mut self) -> String {
        self.calls += 1;
        format!("call_{}_{}", self.id_prefix, self.calls - 1)
    }

    /// Feeds newly generated text.
    pub fn push(&mut self, text: &str) -> Parsed {
        self.pending.push_str(text);
        match self.format {
            ToolFormat::Hermes => self.hermes(false),
            ToolFormat::Llama3 | ToolFormat::Mistral => self.whole_reply(false),
        }
    }

    /// The generation ended: everything left, as calls or text.
    pub fn finish(&mut self) -> Parsed {
        match self.format {
            ToolFormat::Hermes => self.hermes(true),
            ToolFormat::Llama3 | ToolFormat::Mistral => self.whole_reply(true),
        }
    }

    fn hermes(&mut self, end: bool) -> Parsed {
        let mut out = Parsed::default();
        loop {
            if self.in_call {
                let Some(close) = self.pending.find(HERMES_CLOSE) else {
                    if end {
                        // An unterminated call: try it as it is, else text.
                        let body = std::mem::take(&mut self.pending);
                        self.in_call = false;
                        match self.parse_call(&body, "arguments") {
                            Some(c) => out.calls.push(c),
                            None => {
                                out.text.push_str(HERMES_OPEN);
                                out.text.push_str(&body);
                            }
                        }
                    }
                    return out;
                };
                let body: String = self.pending.drain(..close + HERMES_CLOSE.len()).collect();
                let body = &body[..close];
                self.in_call = false;
                match self.parse_call(body, "arguments") {
                    Some(c) => out.calls.push(c),
                    None => {
                        out.text.push_str(HERMES_OPEN);
                        out.text.push_str(body);
                        out.text.push_str(HERMES_CLOSE);
                    }
                }
                continue;
            }
            match self.pending.find(HERMES_OPEN) {
                Some(open) => {
                    let before: String = self.pending.drain(..open + HERMES_OPEN.len()).collect();
                    // The blank lines around calls are not content.
                    let before = before[..open].trim_end();
                    if !(self.calls > 0 && before.trim().is_empty()) {
                        out.text.push_str(before);
                    }
                    self.in_call = true;
                }
                None => {
                    // Hold back what may be the start of `<tool_call>`,
                    // and the whitespace before it.
                    let mut keep = 0;
                    if !end {
                        keep = partial_suffix(&self.pending, HERMES_OPEN);
                        let head = &self.pending[..self.pending.len() - keep];
                        keep += head.len() - head.trim_end().len();
                    }
                    let release: String = self.pending.drain(..self.pending.len() - keep).collect();
                    if !(self.calls > 0 && release.trim().is_empty()) {
                        out.text.push_str(&release);
                    }
                    return out;
                }
            }
        }
    }

    fn whole_reply(&mut self, end: bool) -> Parsed {
        let mut out = Parsed::default();
        if self.at_start {
            let t = self.pending.trim_start();
            if t.is_empty() {
                if end {
                    out.text = std::mem::take(&mut self.pending);
                }
                return out;
            }
            let (tag, opener) = match self.format {
                ToolFormat::Mistral => (MISTRAL_TAG, None),
                _ => (PYTHON_TAG, Some('{')),
            };
            if !end && t.len() < tag.len() && tag.starts_with(t) {
                // Too early to tell.
                return out;
            }
            let starts_call = t.starts_with(tag) || opener.is_some_and(|o| t.starts_with(o));
            self.at_start = false;
            self.in_call = starts_call;
        }
        if !self.in_call {
            out.text = std::mem::take(&mut self.pending);
            return out;
        }
        if !end {
            return out;
        }
        let reply = std::mem::take(&mut self.pending);
        let parsed = match self.format {
            ToolFormat::Mistral => reply
                .trim_start()
                .strip_prefix(MISTRAL_TAG)
                .and_then(|rest| serde_json::from_str::<Vec<Value>>(rest.trim()).ok())
                .and_then(|calls| {
                    calls
                        .iter()
                        .map(|c| self.parse_value(c, "arguments"))
                        .collect::<Option<Vec<_>>>()
                }),
            _ => {
                let body = reply.trim_start();
                let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body);
                // One call, or several separated by `;` as Llama 3.2 may.
                body.split(';')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| self.parse_call(s, "parameters"))
                    .collect::<Option<Vec<_>>>()
                    .filter(|v| !v.is_empty())
            }
        };
        match parsed {
            Some(calls) => out.calls = calls,
            None => {
                // Ids handed out for a failed parse are not reused; fine.
                out.text = reply;
            }
        }
        out
    }

    fn parse_call(&mut self, body: &str, args_key: &str) -> Option<ToolCall> {
        let v: Value = serde_json::from_str(body.trim()).ok()?;
        self.parse_value(&v, args_key)
    }

    fn parse_value(&mut self, v: &Value, args_key: &str) -> Option<ToolCall> {
        let name = v.get("name")?.as_str()?;
        if !sharenet_proto::valid_tool_name(name) {
            return None;
        }
        let args = v
            .get(args_key)
            .or_else(|| v.get("arguments"))
            .cloned()
            .unwrap_or_else(|| json!({}));
        // Arguments are a JSON object; some models write it as a string.
        let arguments = match args {
            Value::String(s) if serde_json::from_str::<Value>(&s).is_ok_and(|v| v.is_object()) => s,
            Value::Object(_) => args.to_string(),
            _ => return None,
        };
        Some(ToolCall {
            id: self.next_id(),
            name: name.to_owned(),
            arguments,
        })
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of
/// `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
