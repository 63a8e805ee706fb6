//! Chat rendering with the model's own Jinja template.
//!
//! The template comes from `tokenizer_config.json` (`chat_template`, a string
//! or a list of named templates, of which `default` is used) or from GGUF
//! metadata (`tokenizer.chat_template`). It is rendered with minijinja plus
//! Python string-method compatibility (`.strip()`, `.startswith()`, ...), with
//! `messages`, `add_generation_prompt = true`, `bos_token`, `eos_token` and
//! `raise_exception` in scope, as Hugging Face renders it.
//!
//! A model without a template gets this documented fallback (Zephyr style):
//!
//! ```text
//! <|system|>\n{content}{eos}\n<|user|>\n{content}{eos}\n<|assistant|>\n
//! ```

use minijinja::{Environment, Error, ErrorKind, context};
use sharenet_proto::ChatMessage;

use crate::error::PromptError;
use crate::json::Json;
use crate::tool_calls::ToolFormat;

const NAME: &str = "chat";

/// A compiled chat template (or the fallback).
pub struct ChatTemplate {
    env: Option<Environment<'static>>,
    bos: String,
    eos: String,
    /// How the template writes tool calls, when it takes `tools`.
    tool_format: Option<ToolFormat>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("own_template", &self.env.is_some())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Python's `json.dumps` separators, `", "` and `": "`, as Hugging Face's
/// `tojson` writes them (models are trained on that spelling of tools and
/// call arguments).
struct PySeparators;

impl serde_json::ser::Formatter for PySeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// `tojson` as Hugging Face renders it: no HTML escaping, Python's
/// separators, `indent=n` for pretty output.
fn tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> Result<minijinja::Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let result = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(&pad),
            );
            serde::Serialize::serialize(&value, &mut ser)
        }
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut out, PySeparators);
            serde::Serialize::serialize(&value, &mut ser)
        }
    };
    result.map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let text = String::from_utf8(out)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(minijinja::Value::from_safe_string(text))
}

impl ChatTemplate {
    /// Compiles `source` (if any); a template that does not compile is an
    /// error here, at load, not at the first request.
    pub fn new(source: Option<String>, bos: String, eos: String) -> Result<Self, String> {
        let tool_format = source.as_deref().and_then(ToolFormat::of_template);
        let env = match source {
            None => None,
            Some(src) => {
                let mut env = Environment::new();
                env.set_unknown_method_callback(
                    minijinja_contrib::pycompat::unknown_method_callback,
                );
                env.add_function("raise_exception", raise_exception);
                env.add_filter("tojson", tojson);
                env.add_template_owned(NAME, src)
                    .map_err(|e| format!("chat template does not compile: {e}"))?;
                Some(env)
            }
        };
        Ok(Self {
            env,
            bos,
            eos,
            tool_format,
        })
    }

    /// How the model writes tool calls; `None` when its template does not
    /// take tools (then the model is not offered for tool calling).
    pub fn tool_format(&self) -> Option<ToolFormat> {
        self.tool_format
    }

    /// Whether the model brought its own template.
    pub fn is_own(&self) -> bool {
        self.env.is_some()
    }

    /// The beginning-of-sequence text the template is given (`bos_token`;
    /// empty when the model has none).
    pub fn bos(&self) -> &str {
        &self.bos
    }

    /// The end-of-sequence text the template is given (`eos_token`;
    /// `</s>` when the model names none).
    pub fn eos(&self) -> &str {
        &self.eos
    }

    /// Renders the conversation, ending where the assistant's reply starts.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, PromptError> {
        self.render_with_tools(messages, None)
    }

    /// Renders the conversation with the tools the model may call (in
    /// Hugging Face's shape, see [`crate::tool_calls::template_tools`]).
    /// Assistant tool calls and `tool` results are passed as templates
    /// expect them: `tool_calls[].function.arguments` an object (parsed
    /// with its keys in the order written, see [`Json`]).
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[Json]>,
    ) -> Result<String, PromptError> {
        let Some(env) = &self.env else {
            if tools.is_some() {
                return Err(PromptError::Unsupported(
                    "this model's chat template does not take tools".into(),
                ));
            }
            return Ok(render_fallback(messages, &self.eos));
        };
        let tmpl = env
            .get_template(NAME)
            .map_err(|e| PromptError::InvalidInput(format!("chat template: {e}")))?;
        let messages: Vec<Json> = messages.iter().map(template_message).collect();
        tmpl.render(context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => true,
            bos_token => &self.bos,
            eos_token => &self.eos,
        })
        .map_err(|e| PromptError::InvalidInput(format!("render chat template: {e}")))
    }
}

/// One message as chat templates read it: `role`, `content`, then
/// `tool_calls` and `tool_call_id` when present, in that order.
fn template_message(m: &ChatMessage) -> Json {
    let mut v = Json::object([
        ("role", Json::from(m.role.as_str())),
        ("content", Json::from(m.content.as_str())),
    ]);
    if !m.tool_calls.is_empty() {
        let calls = m
            .tool_calls
            .iter()
            .map(|c| {
                let args =
                    Json::parse(&c.arguments).unwrap_or_else(|_| Json::from(c.arguments.as_str()));
                let function =
                    Json::object([("name", Json::from(c.name.as_str())), ("arguments", args)]);
                Json::object([
                    ("id", Json::from(c.id.as_str())),
                    ("type", Json::from("function")),
                    ("function", function),
                ])
            })
            .collect();
        v.insert("tool_calls", Json::Array(calls));
    }
    if let Some(id) = &m.tool_call_id {
        v.insert("tool_call_id", Json::from(id.as_str()));
    }
    v
}

pub(crate) fn render_fallback(messages: &[ChatMessage], eos: &str) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str("<|");
        out.push_str(&m.role);
        out.push_str("|>\n");
        out.push_str(&m.content);
        out.push_str(eos);
        out.push('\n');
    }
    out.push_str("<|assistant|>\n");
    out
}

#[cfg(test)]
mod tests;
