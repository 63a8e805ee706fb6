//! OpenAI's `tools`, `tool_choice` and `response_format`, as the
//! coordinator reads them from builders and a node sends them to its
//! upstream server, with the conversions to and from the job's own
//! `sharenet_proto` types.
//!
//! Reading is deliberately lenient where OpenAI's servers are (a
//! `description` that is not a string is no description, a missing
//! `json_schema.name` is `"response"`) and strict elsewhere, every refusal
//! a [`FieldError`] naming the field; so these types read themselves from
//! JSON with [`FromField`] rather than serde's derive.

use serde::{Serialize, Serializer};
use serde_json::Value;
use sharenet_proto::{MAX_TOOL_NAME, ToolSpec, valid_tool_name};

use crate::field::{FieldError, FromField};

/// One entry of `tools`: `{"type": "function", "function": {…}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: ToolKind,
    pub function: FunctionDef,
}

/// A tool's `type`: only functions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    #[default]
    Function,
}

/// A function the model may call. Empty, null and false fields are left
/// out when written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// A JSON schema for the arguments object; `null`: any object.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub parameters: Value,
    #[serde(skip_serializing_if = "is_false")]
    pub strict: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Tool {
    /// One `tools[]` entry; the error's `param` is within the entry
    /// (`type`, `function.name`).
    pub fn from_value(t: &Value) -> Result<Self, FieldError> {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(FieldError::new(
                "only tools of type \"function\" are supported",
                "type",
            ));
        }
        let Some(f) = t.get("function").filter(|f| f.is_object()) else {
            return Err(FieldError::new(
                "a function tool needs `function`",
                "function",
            ));
        };
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        if !valid_tool_name(name) {
            return Err(FieldError::new(
                format!("{name:?}: a function name is 1-{MAX_TOOL_NAME} of a-z, A-Z, 0-9, _ and -"),
                "function.name",
            ));
        }
        let parameters = f.get("parameters").cloned().unwrap_or(Value::Null);
        if !(parameters.is_null() || parameters.is_object()) {
            return Err(FieldError::new(
                "parameters must be a JSON schema object",
                "function.parameters",
            ));
        }
        Ok(Self {
            kind: ToolKind::Function,
            function: FunctionDef {
                name: name.to_owned(),
                description: f
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                parameters,
                strict: f.get("strict").and_then(Value::as_bool).unwrap_or(false),
            },
        })
    }

    /// The job's form of this tool.
    pub fn to_spec(&self) -> ToolSpec {
        let f = &self.function;
        ToolSpec {
            name: f.name.clone(),
            description: f.description.clone(),
            parameters: f.parameters.clone(),
            strict: f.strict,
        }
    }
}

impl From<&ToolSpec> for Tool {
    fn from(s: &ToolSpec) -> Self {
        Self {
            kind: ToolKind::Function,
            function: FunctionDef {
                name: s.name.clone(),
                description: s.description.clone(),
                parameters: s.parameters.clone(),
                strict: s.strict,
            },
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

/// `tool_choice`: `"none"`, `"auto"`, `"required"` or
/// `{"type": "function", "function": {"name": …}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Function(String),
}

#[derive(Serialize)]
struct NamedChoice<'a> {
    #[serde(rename = "type")]
    kind: ToolKind,
    function: FunctionName<'a>,
}

#[derive(Serialize)]
struct FunctionName<'a> {
    name: &'a str,
}

impl Serialize for ToolChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::None => s.serialize_str("none"),
            Self::Auto => s.serialize_str("auto"),
            Self::Required => s.serialize_str("required"),
            Self::Function(name) => NamedChoice {
                kind: ToolKind::Function,
                function: FunctionName { name },
            }
            .serialize(s),
        }
    }
}

impl FromField for ToolChoice {
    fn from_field(v: &Value) -> Result<Self, FieldError> {
        if let Value::String(s) = v {
            return match s.as_str() {
                "auto" => Ok(Self::Auto),
                "none" => Ok(Self::None),
                "required" => Ok(Self::Required),
                other => Err(FieldError::new(
                    format!(
                        "{other:?} is not one of \"auto\", \"none\", \"required\" or a named function"
                    ),
                    "tool_choice",
                )),
            };
        }
        match v
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) if v.get("type").and_then(Value::as_str) == Some("function") => {
                Ok(Self::Function(name.to_owned()))
            }
            _ => Err(FieldError::new(
                "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": …}}",
                "tool_choice",
            )),
        }
    }
}

impl From<&ToolChoice> for sharenet_proto::ToolChoice {
    fn from(c: &ToolChoice) -> Self {
        match c {
            ToolChoice::None => Self::None,
            ToolChoice::Auto => Self::Auto,
            ToolChoice::Required => Self::Required,
            ToolChoice::Function(name) => Self::Function(name.clone()),
        }
    }
}

impl From<&sharenet_proto::ToolChoice> for ToolChoice {
    fn from(c: &sharenet_proto::ToolChoice) -> Self {
        use sharenet_proto::ToolChoice as Job;
        match c {
            Job::None => Self::None,
            Job::Auto => Self::Auto,
            Job::Required => Self::Required,
            Job::Function(name) => Self::Function(name.clone()),
        }
    }
}

/// `response_format`: `{"type": "text"}`, `{"type": "json_object"}` or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonSchemaFormat {
    /// `"response"` when the request names none.
    pub name: String,
    /// A JSON schema: an object, or `true` / `false`.
    pub schema: Value,
    pub strict: bool,
}

impl FromField for ResponseFormat {
    fn from_field(v: &Value) -> Result<Self, FieldError> {
        match v.get("type").and_then(Value::as_str) {
            Some("text") => Ok(Self::Text),
            Some("json_object") => Ok(Self::JsonObject),
            Some("json_schema") => {
                let Some(js) = v.get("json_schema").filter(|j| j.is_object()) else {
                    return Err(FieldError::new(
                        "type json_schema needs a `json_schema` object",
                        "response_format.json_schema",
                    ));
                };
                let Some(schema) = js.get("schema").filter(|s| s.is_object() || s.is_boolean())
                else {
                    return Err(FieldError::new(
                        "json_schema needs a `schema` (a JSON schema object)",
                        "response_format.json_schema.schema",
                    ));
                };
                Ok(Self::JsonSchema {
                    json_schema: JsonSchemaFormat {
                        name: js
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("response")
                            .to_owned(),
                        schema: schema.clone(),
                        strict: js.get("strict").and_then(Value::as_bool).unwrap_or(false),
                    },
                })
            }
            other => Err(FieldError::new(
                format!(
                    "type {:?} is not one of \"text\", \"json_object\", \"json_schema\"",
                    other.unwrap_or("")
                ),
                "response_format.type",
            )),
        }
    }
}

impl ResponseFormat {
    /// The job's form (`text` asks for nothing, so it is none).
    pub fn to_job(&self) -> Option<sharenet_proto::ResponseFormat> {
        match self {
            Self::Text => None,
            Self::JsonObject => Some(sharenet_proto::ResponseFormat::JsonObject),
            Self::JsonSchema { json_schema: js } => {
                Some(sharenet_proto::ResponseFormat::JsonSchema {
                    name: js.name.clone(),
                    schema: js.schema.clone(),
                    strict: js.strict,
                })
            }
        }
    }
}

impl From<&sharenet_proto::ResponseFormat> for ResponseFormat {
    fn from(f: &sharenet_proto::ResponseFormat) -> Self {
        match f {
            sharenet_proto::ResponseFormat::JsonObject => Self::JsonObject,
            sharenet_proto::ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            } => Self::JsonSchema {
                json_schema: JsonSchemaFormat {
                    name: name.clone(),
                    schema: schema.clone(),
                    strict: *strict,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tools(v: Value) -> Result<Vec<Tool>, FieldError> {
        Vec::<Tool>::from_field(&v)
    }

    #[test]
    fn tools_read_leniently_and_write_back_in_openai_shape() {
        let t = tools(json!([{"type": "function", "function": {"name": "f",
            "description": 7, "parameters": {"type": "object"}, "strict": "yes", "x": 1}}]))
        .unwrap();
        assert_eq!(t[0].function.description, "");
        assert!(!t[0].function.strict);
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
        );
        let spec = t[0].to_spec();
        assert_eq!(Tool::from(&spec), t[0]);
    }

    #[test]
    fn tool_refusals_name_the_field() {
        let param = |v: Value| tools(v).unwrap_err().param;
        assert_eq!(param(json!({"type": "function"})), "tools");
        assert_eq!(param(json!([{"type": "retrieval"}])), "tools[0].type");
        assert_eq!(param(json!(["f"])), "tools[0].type");
        assert_eq!(
            param(json!([{"type": "function", "function": "f"}])),
            "tools[0].function"
        );
        let e = tools(json!([{"type": "function", "function": {"name": 3}}])).unwrap_err();
        assert_eq!(e.param, "tools[0].function.name");
        assert_eq!(
            e.message,
            "\"\": a function name is 1-64 of a-z, A-Z, 0-9, _ and -"
        );
        assert_eq!(
            param(json!([{"type": "function", "function": {"name": "f"}},
                {"type": "function", "function": {"name": "g", "parameters": []}}])),
            "tools[1].function.parameters"
        );
    }

    #[test]
    fn tool_choices_read_and_write_every_shape() {
        for (v, c) in [
            (json!("none"), ToolChoice::None),
            (json!("auto"), ToolChoice::Auto),
            (json!("required"), ToolChoice::Required),
            (
                json!({"type": "function", "function": {"name": "f"}}),
                ToolChoice::Function("f".into()),
            ),
        ] {
            assert_eq!(ToolChoice::from_field(&v).unwrap(), c);
            assert_eq!(serde_json::to_value(&c).unwrap(), v);
            let job = sharenet_proto::ToolChoice::from(&c);
            assert_eq!(ToolChoice::from(&job), c);
        }
        let e = ToolChoice::from_field(&json!("sometimes")).unwrap_err();
        assert_eq!(e.param, "tool_choice");
        assert!(e.message.starts_with("\"sometimes\" is not one of"), "{e}");
        for bad in [json!({"function": {"name": "f"}}), json!(3)] {
            let e = ToolChoice::from_field(&bad).unwrap_err();
            assert!(e.message.starts_with("a named tool_choice is"), "{e}");
        }
    }

    #[test]
    fn response_formats_read_write_and_convert() {
        let f = ResponseFormat::from_field(&json!({"type": "json_schema",
            "json_schema": {"schema": true}}))
        .unwrap();
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            json!({"type": "json_schema",
                "json_schema": {"name": "response", "schema": true, "strict": false}})
        );
        let job = f.to_job().unwrap();
        assert_eq!(ResponseFormat::from(&job), f);
        assert_eq!(
            ResponseFormat::from_field(&json!({"type": "text"}))
                .unwrap()
                .to_job(),
            None
        );
        assert_eq!(
            serde_json::to_value(ResponseFormat::JsonObject).unwrap(),
            json!({"type": "json_object"})
        );
        let param = |v: Value| ResponseFormat::from_field(&v).unwrap_err().param;
        assert_eq!(param(json!({"type": "xml"})), "response_format.type");
        assert_eq!(param(json!("json")), "response_format.type");
        assert_eq!(
            param(json!({"type": "json_schema"})),
            "response_format.json_schema"
        );
        assert_eq!(
            param(json!({"type": "json_schema", "json_schema": {"schema": 1}})),
            "response_format.json_schema.schema"
        );
    }
}
