//! Anthropic's `tools` and `tool_choice` on `POST /v1/messages`, read
//! with [`FromField`] so a wrong field is a [`FieldError`] naming it, and
//! converted into the job's own `sharenet_proto` types (the same ones
//! OpenAI's `tools.rs` reads into).
//!
//! Only client tools (`{name, description, input_schema}`) are taken;
//! Anthropic's server tools, which carry a `type` other than `"custom"`,
//! are refused. Names are not checked here: the job's `Tools::validate`
//! checks them once every entry has been read, as for OpenAI's tools.

use serde::{Serialize, Serializer};
use serde_json::Value;
use sharenet_proto::{ToolSpec, Tools};

use crate::field::{FieldError, FromField};

/// One entry of `tools`: a client tool. A `description` that is not a
/// string is no description.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tool {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// A JSON schema object for the tool's input.
    pub input_schema: Value,
}

impl Tool {
    /// One `tools[]` entry; the error's `param` is within the entry
    /// (`type`, `input_schema`).
    pub fn from_value(t: &Value) -> Result<Self, FieldError> {
        if let Some(kind) = t.get("type").and_then(Value::as_str)
            && kind != "custom"
        {
            return Err(FieldError::new(
                format!("server tools ({kind:?}) are not supported; only client tools"),
                "type",
            ));
        }
        let Some(schema) = t.get("input_schema").filter(|s| s.is_object()) else {
            return Err(FieldError::new(
                "input_schema must be a JSON schema object",
                "input_schema",
            ));
        };
        Ok(Self {
            name: t
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            description: t
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            input_schema: schema.clone(),
        })
    }

    /// The job's form of this tool (Anthropic has no `strict`).
    pub fn to_spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            parameters: self.input_schema.clone(),
            strict: false,
        }
    }
}

/// The `tools` field: an array, each entry read by [`Tool::from_value`]
/// (`param` `tools[i]…`).
impl FromField for Vec<Tool> {
    fn from_field(v: &Value) -> Result<Self, FieldError> {
        let Value::Array(list) = v else {
            return Err(FieldError::new("tools must be an array", "tools"));
        };
        list.iter()
            .enumerate()
            .map(|(i, t)| Tool::from_value(t).map_err(|e| e.within(&format!("tools[{i}]"))))
            .collect()
    }
}

/// `tool_choice`: `{"type": "auto" | "any" | "tool" | "none", "name",
/// "disable_parallel_tool_use"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolChoice {
    #[serde(flatten)]
    pub kind: ChoiceKind,
    /// At most one call in the turn. Anything but `true` is `false`.
    #[serde(skip_serializing_if = "is_false")]
    pub disable_parallel_tool_use: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What `tool_choice` asks of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChoiceKind {
    /// The model decides.
    Auto,
    /// At least one call, to any tool (OpenAI's `required`).
    Any,
    /// A call to the named tool.
    Tool(String),
    /// No calls.
    None,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ChoiceWire<'a> {
    Auto,
    Any,
    Tool { name: &'a str },
    None,
}

impl Serialize for ChoiceKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => ChoiceWire::Auto,
            Self::Any => ChoiceWire::Any,
            Self::Tool(name) => ChoiceWire::Tool { name },
            Self::None => ChoiceWire::None,
        }
        .serialize(s)
    }
}

impl FromField for ToolChoice {
    fn from_field(v: &Value) -> Result<Self, FieldError> {
        let kind = match v.get("type").and_then(Value::as_str) {
            Some("auto") => ChoiceKind::Auto,
            Some("any") => ChoiceKind::Any,
            Some("none") => ChoiceKind::None,
            Some("tool") => match v.get("name").and_then(Value::as_str) {
                Some(name) => ChoiceKind::Tool(name.to_owned()),
                None => {
                    return Err(FieldError::new(
                        "a tool choice of type tool needs a name",
                        "tool_choice.name",
                    ));
                }
            },
            other => {
                return Err(FieldError::new(
                    format!(
                        "type {:?} is not one of auto, any, tool, none",
                        other.unwrap_or("")
                    ),
                    "tool_choice.type",
                ));
            }
        };
        Ok(Self {
            kind,
            disable_parallel_tool_use: v
                .get("disable_parallel_tool_use")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

impl From<&ChoiceKind> for sharenet_proto::ToolChoice {
    fn from(c: &ChoiceKind) -> Self {
        match c {
            ChoiceKind::Auto => Self::Auto,
            ChoiceKind::Any => Self::Required,
            ChoiceKind::Tool(name) => Self::Function(name.clone()),
            ChoiceKind::None => Self::None,
        }
    }
}

/// The job's tools from a request's (non-empty) `tools` and its
/// `tool_choice`: none is `auto` with parallel calls allowed. Not yet
/// validated (`Tools::validate` checks names and the forced tool).
pub fn to_job(tools: &[Tool], choice: Option<&ToolChoice>) -> Tools {
    Tools {
        specs: tools.iter().map(Tool::to_spec).collect(),
        choice: choice.map_or(sharenet_proto::ToolChoice::Auto, |c| (&c.kind).into()),
        parallel: choice.is_none_or(|c| !c.disable_parallel_tool_use),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tools(v: Value) -> Result<Vec<Tool>, FieldError> {
        Vec::<Tool>::from_field(&v)
    }

    fn choice(v: Value) -> Result<ToolChoice, FieldError> {
        ToolChoice::from_field(&v)
    }

    #[test]
    fn client_tools_read_leniently_and_become_specs() {
        let t = tools(json!([
            {"name": "f", "description": 7, "input_schema": {"type": "object"}, "x": 1},
            {"type": "custom", "name": "g", "description": "d", "input_schema": {}},
            {"type": 3, "input_schema": {}}
        ]))
        .unwrap();
        assert_eq!(t[0].description, "");
        assert_eq!(t[2].name, "");
        assert_eq!(
            serde_json::to_value(&t[0]).unwrap(),
            json!({"name": "f", "input_schema": {"type": "object"}})
        );
        assert_eq!(
            t[1].to_spec(),
            ToolSpec {
                name: "g".into(),
                description: "d".into(),
                parameters: json!({}),
                strict: false,
            }
        );
    }

    #[test]
    fn tool_refusals_name_the_field_with_todays_messages() {
        let e = tools(json!({"name": "f"})).unwrap_err();
        assert_eq!(
            (e.message.as_str(), e.param.as_str()),
            ("tools must be an array", "tools")
        );
        let e = tools(json!([{"name": "f", "input_schema": {}},
            {"type": "web_search_20250305", "name": "w"}]))
        .unwrap_err();
        assert_eq!(
            (e.message.as_str(), e.param.as_str()),
            (
                "server tools (\"web_search_20250305\") are not supported; only client tools",
                "tools[1].type"
            )
        );
        for bad in [
            json!([{"name": "f"}]),
            json!([{"name": "f", "input_schema": []}]),
            json!(["f"]),
        ] {
            let e = tools(bad).unwrap_err();
            assert_eq!(
                (e.message.as_str(), e.param.as_str()),
                (
                    "input_schema must be a JSON schema object",
                    "tools[0].input_schema"
                )
            );
        }
    }

    #[test]
    fn tool_choices_read_write_and_convert() {
        for (v, kind, job) in [
            (
                json!({"type": "auto"}),
                ChoiceKind::Auto,
                sharenet_proto::ToolChoice::Auto,
            ),
            (
                json!({"type": "any"}),
                ChoiceKind::Any,
                sharenet_proto::ToolChoice::Required,
            ),
            (
                json!({"type": "none"}),
                ChoiceKind::None,
                sharenet_proto::ToolChoice::None,
            ),
            (
                json!({"type": "tool", "name": "f"}),
                ChoiceKind::Tool("f".into()),
                sharenet_proto::ToolChoice::Function("f".into()),
            ),
        ] {
            let c = choice(v.clone()).unwrap();
            assert_eq!(c.kind, kind);
            assert!(!c.disable_parallel_tool_use);
            assert_eq!(serde_json::to_value(&c).unwrap(), v);
            assert_eq!(sharenet_proto::ToolChoice::from(&c.kind), job);
        }
        let c = choice(json!({"type": "any", "disable_parallel_tool_use": true})).unwrap();
        assert!(c.disable_parallel_tool_use);
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        let lenient = choice(json!({"type": "auto", "disable_parallel_tool_use": "yes"}));
        assert!(!lenient.unwrap().disable_parallel_tool_use);
    }

    #[test]
    fn tool_choice_refusals_name_the_field_with_todays_messages() {
        let e = choice(json!({"type": "tool"})).unwrap_err();
        assert_eq!(
            (e.message.as_str(), e.param.as_str()),
            (
                "a tool choice of type tool needs a name",
                "tool_choice.name"
            )
        );
        let e = choice(json!({"type": "sometimes"})).unwrap_err();
        assert_eq!(
            (e.message.as_str(), e.param.as_str()),
            (
                "type \"sometimes\" is not one of auto, any, tool, none",
                "tool_choice.type"
            )
        );
        for bad in [json!("auto"), json!({}), json!(3)] {
            let e = choice(bad).unwrap_err();
            assert_eq!(
                (e.message.as_str(), e.param.as_str()),
                (
                    "type \"\" is not one of auto, any, tool, none",
                    "tool_choice.type"
                )
            );
        }
    }

    #[test]
    fn the_job_defaults_to_auto_with_parallel_calls() {
        let t = tools(json!([{"name": "f", "input_schema": {}}])).unwrap();
        let job = to_job(&t, None);
        assert_eq!(job.choice, sharenet_proto::ToolChoice::Auto);
        assert!(job.parallel);
        assert_eq!(job.specs, vec![t[0].to_spec()]);
        let c = choice(json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true}))
            .unwrap();
        let job = to_job(&t, Some(&c));
        assert_eq!(job.choice, sharenet_proto::ToolChoice::Function("f".into()));
        assert!(!job.parallel);
    }
}
