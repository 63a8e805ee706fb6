//! Anthropic's Messages API, `POST /v1/messages`, over the same dispatch as
//! OpenAI's chat: the request becomes a chat job (system prompt, turns,
//! `tool_use` and `tool_result` blocks, tools and `tool_choice`), and the
//! answer comes back as Anthropic's message or its event stream
//! (`message_start`, content blocks, `message_delta`, `message_stop`),
//! both shaped in `anthropic_reply.rs`.
//! Errors are Anthropic's `{"type": "error", "error": {"type", "message"}}`
//! with the statuses `error.rs` gives every core error.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sharenet_api::anthropic::MessagesRequest;
use sharenet_api::anthropic_tools;
use sharenet_api::field::{Checked, FieldError};
use sharenet_proto::{ChatMessage, JobInput, SamplingParams, ToolCall, Tools};

use super::access::{self, access_of};
use super::anthropic_reply::{Events, Head, message};
use super::error::anthropic_error_body;
use super::headers::{cost_header, end_customer, receipt_header};
use super::relay;
use super::request::{
    DEFAULT_MAX_TOKENS, param_error, parse_body, provider_prefs, validated_tools,
};
use crate::core::Core;
use crate::core::accounts::Principal;
use crate::core::dispatch::start_job;
use crate::core::error::Error;
use crate::core::job::{Job, JobKind};

/// A core error shaped as Anthropic's error body.
pub(super) struct AnthropicError(Error);

impl<E: Into<Error>> From<E> for AnthropicError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        // The status and headers (Retry-After, WWW-Authenticate) every
        // core error gets; only the body's shape differs.
        let body = anthropic_error_body(&self.0);
        let mut response = super::error::ApiError(self.0).into_response();
        let status = response.status();
        let mut headers = std::mem::take(response.headers_mut());
        headers.remove(axum::http::header::CONTENT_LENGTH);
        (status, headers, Json(body)).into_response()
    }
}

/// A system prompt or `tool_result` content: a string, or text blocks.
fn text_of(v: &Value, at: &str) -> Result<String, Error> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(blocks) => {
            let mut out = String::new();
            for (i, b) in blocks.iter().enumerate() {
                match (b.get("type").and_then(Value::as_str), b.get("text")) {
                    (Some("text"), Some(Value::String(t))) => out.push_str(t),
                    (kind, _) => {
                        return Err(param_error(
                            format!(
                                "content blocks of type {:?} are not supported here; only text",
                                kind.unwrap_or("")
                            ),
                            &format!("{at}[{i}]"),
                        ));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(param_error("must be a string or text blocks", at)),
    }
}

/// Anthropic turns → chat messages: `tool_use` blocks become an assistant's
/// calls, `tool_result` blocks become `tool` messages (before the user's
/// text in the same turn).
fn messages(req: &MessagesRequest) -> Result<Vec<ChatMessage>, Error> {
    let mut out = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        let text = text_of(system, "system")?;
        if !text.is_empty() {
            out.push(ChatMessage::new("system", text));
        }
    }
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "user" | "assistant" => m.role.as_str(),
            other => {
                return Err(param_error(
                    format!("role {other:?} is not supported (user, assistant)"),
                    &format!("messages[{i}].role"),
                ));
            }
        };
        let blocks = match &m.content {
            Value::String(s) => {
                out.push(ChatMessage::new(role, s.clone()));
                continue;
            }
            Value::Array(b) => b,
            _ => {
                return Err(param_error(
                    "content must be a string or content blocks",
                    &format!("messages[{i}].content"),
                ));
            }
        };
        let mut text = String::new();
        let mut calls = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let at = format!("messages[{i}].content[{j}]");
            match b.get("type").and_then(Value::as_str) {
                Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                Some("tool_use") if role == "assistant" => {
                    let name = b.get("name").and_then(Value::as_str).unwrap_or("");
                    let id = b.get("id").and_then(Value::as_str).unwrap_or("");
                    if !sharenet_proto::valid_tool_name(name) || id.is_empty() {
                        return Err(param_error(
                            "a tool_use block needs an id and a valid name",
                            &at,
                        ));
                    }
                    calls.push(ToolCall {
                        id: id.to_owned(),
                        name: name.to_owned(),
                        arguments: b.get("input").cloned().unwrap_or(json!({})).to_string(),
                    });
                }
                Some("tool_result") if role == "user" => {
                    let Some(id) = b.get("tool_use_id").and_then(Value::as_str) else {
                        return Err(param_error("a tool_result block needs tool_use_id", &at));
                    };
                    let content = text_of(
                        b.get("content").unwrap_or(&Value::Null),
                        &format!("{at}.content"),
                    )?;
                    let mut result = ChatMessage::new("tool", content);
                    result.tool_call_id = Some(id.to_owned());
                    out.push(result);
                }
                kind => {
                    return Err(param_error(
                        format!(
                            "content blocks of type {:?} are not supported in a {role} turn",
                            kind.unwrap_or("")
                        ),
                        &at,
                    ));
                }
            }
        }
        if !text.is_empty() || !calls.is_empty() {
            let mut message = ChatMessage::new(role, text);
            message.tool_calls = calls;
            out.push(message);
        }
    }
    if out.iter().all(|m| m.role == "system") {
        return Err(param_error("messages must not be empty", "messages"));
    }
    Ok(out)
}

/// `tools` and `tool_choice` in Anthropic's shapes (read by
/// `sharenet_api::anthropic_tools`): a wrong field is a 400 naming it.
/// A `tool_choice` without tools is refused; with an empty list of tools
/// it is not read at all.
fn tools(req: &MessagesRequest) -> Result<Option<Tools>, Error> {
    let Some(tools) = &req.tools else {
        if req.tool_choice.is_some() {
            return Err(param_error(
                "tool_choice needs tools to choose from",
                "tool_choice",
            ));
        }
        return Ok(None);
    };
    let tools = tools.get().map_err(field_error)?;
    if tools.is_empty() {
        return Ok(None);
    }
    let choice = req.tool_choice.as_ref().map(Checked::get).transpose();
    validated_tools(anthropic_tools::to_job(tools, choice.map_err(field_error)?))
}

/// A field that refused itself, as the same 400 as OpenAI's.
fn field_error(e: FieldError) -> Error {
    param_error(e.message, &e.param)
}

/// The request as a chat job, or a 400 naming the field.
fn job(req: &MessagesRequest) -> Result<Job, Error> {
    if req.model.trim().is_empty() {
        return Err(param_error("model must not be empty", "model"));
    }
    if let Some(field) = req.other.keys().next() {
        return Err(param_error(format!("{field} is not supported"), field));
    }
    let Some(max_tokens) = req.max_tokens else {
        return Err(param_error("max_tokens is required", "max_tokens"));
    };
    let params = SamplingParams {
        max_tokens: if max_tokens == 0 {
            DEFAULT_MAX_TOKENS
        } else {
            max_tokens
        },
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        top_k: req.top_k.unwrap_or(0),
        stop: req.stop_sequences.clone(),
        ..SamplingParams::default()
    };
    if max_tokens == 0 {
        return Err(param_error("max_tokens must be at least 1", "max_tokens"));
    }
    params.validate().map_err(|e| {
        let param = match &e {
            sharenet_proto::ProtoError::Invalid { field, .. } => match *field {
                "stop" => "stop_sequences",
                f => f,
            },
            _ => "",
        };
        param_error(e.to_string(), param)
    })?;
    Ok(Job {
        kind: JobKind::Chat,
        models: vec![req.model.clone()],
        input: JobInput::Chat {
            messages: messages(req)?,
        },
        params,
        prefs: provider_prefs(req.provider.as_ref())?,
        tools: tools(req)?,
        response_format: None,
        input_tokens: Default::default(),
    })
}

pub(super) async fn messages_endpoint(
    State(core): State<Arc<Core>>,
    Extension(principal): Extension<Principal>,
    started: Option<Extension<access::Started>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AnthropicError> {
    core.metrics.requests.inc();
    let req: MessagesRequest = parse_body(&body)?;
    let customer = end_customer(
        &headers,
        req.metadata.as_ref().and_then(|m| m.user_id.as_deref()),
    )?;
    let stream = req.stream;
    let job = job(&req)?;
    let mut active = start_job(&core, Arc::new(job), &principal, customer.as_deref()).await?;
    let id = format!("msg_{}", active.job_id());
    let receipt_id = active.job_id().to_hex();
    let headers = receipt_header(&receipt_id);
    let model = active.model().to_owned();
    let provider = active.peer().to_string();
    if stream {
        let started = started.map(|s| access::Started {
            app: Some(principal.app.clone()),
            ..s.0
        });
        let events = Events::new(Head {
            id,
            model,
            provider,
            receipt_id,
        });
        let sse = relay::stream(core, vec![(active, events)], started, |_| Vec::new());
        let mut response = (headers, sse).into_response();
        response.extensions_mut().insert(access::Deferred);
        return Ok(response);
    }
    let finished = active.run_to_end(&core).await?;
    let access = access_of(&active, &finished);
    let charge = finished.charge;
    let body = message(
        &finished,
        Head {
            id,
            model,
            provider,
            receipt_id,
        },
    );
    let mut response = (headers, cost_header(&charge), Json(body)).into_response();
    response.extensions_mut().insert(access);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use sharenet_proto::ToolChoice;

    use super::*;

    fn req(v: Value) -> MessagesRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn turns_tools_and_results_become_a_chat_job() {
        let j = job(&req(json!({
            "model": "m", "max_tokens": 64, "system": [{"type": "text", "text": "be brief"}],
            "stop_sequences": ["END"], "metadata": {"user_id": "cust-1"},
            "tools": [{"name": "get_weather", "description": "d",
                       "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "text", "text": "and tomorrow?"}]}
            ]
        })))
        .unwrap();
        let JobInput::Chat { messages } = &j.input else {
            unreachable!()
        };
        let roles: Vec<&str> = messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
        assert_eq!(messages[2].tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(messages[3].tool_call_id.as_deref(), Some("toolu_1"));
        let tools = j.tools.unwrap();
        assert_eq!(tools.choice, ToolChoice::Function("get_weather".into()));
        assert!(!tools.parallel);
        assert_eq!(j.params.stop, vec!["END".to_string()]);
    }

    #[test]
    fn refusals_name_the_field() {
        let base = || json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            b
        };
        let mut no_max = base();
        no_max.as_object_mut().unwrap().remove("max_tokens");
        let cases = [
            (no_max, "max_tokens"),
            (with("thinking", json!({"type": "enabled"})), "thinking"),
            (
                with(
                    "messages",
                    json!([{"role": "user", "content": [{"type": "image"}]}]),
                ),
                "messages[0].content[0]",
            ),
            (
                with("tools", json!([{"name": "f"}])),
                "tools[0].input_schema",
            ),
            (
                with(
                    "tools",
                    json!([{"type": "web_search_20250305", "name": "w"}]),
                ),
                "tools[0].type",
            ),
            (with("tool_choice", json!({"type": "any"})), "tool_choice"),
            (
                {
                    let mut b = with("tool_choice", json!({"type": "sometimes"}));
                    b["tools"] = json!([{"name": "f", "input_schema": {"type": "object"}}]);
                    b
                },
                "tool_choice.type",
            ),
            (
                with("messages", json!([{"role": "system", "content": "x"}])),
                "messages[0].role",
            ),
        ];
        for (body, param) in cases {
            match job(&req(body.clone())) {
                Err(Error::BadRequest { param: Some(p), .. }) => assert_eq!(p, param, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    /// The order of the tool checks, and their messages, as before the
    /// fields were typed.
    #[test]
    fn tool_fields_are_checked_in_order() {
        let body = |tools: Value, choice: Value| {
            req(
                json!({"model": "m", "max_tokens": 8, "tools": tools, "tool_choice": choice,
                "messages": [{"role": "user", "content": "x"}]}),
            )
        };
        let refusal = |tools: Value, choice: Value| match job(&body(tools, choice)) {
            Err(Error::BadRequest {
                message,
                param: Some(p),
                ..
            }) => (message, p),
            other => panic!("{other:?}"),
        };
        let f = || json!([{"name": "f", "input_schema": {"type": "object"}}]);
        // Null is absent; an empty list reads no choice at all.
        assert!(
            job(&body(Value::Null, Value::Null))
                .unwrap()
                .tools
                .is_none()
        );
        assert!(job(&body(json!([]), json!(3))).unwrap().tools.is_none());
        assert_eq!(
            refusal(Value::Null, json!({"type": "none"})),
            (
                "tool_choice needs tools to choose from".into(),
                "tool_choice".into()
            )
        );
        // The tools are read before the choice.
        assert_eq!(refusal(json!("f"), json!(3)).1, "tools");
        assert_eq!(
            refusal(json!([{"name": "f"}]), json!(3)).1,
            "tools[0].input_schema"
        );
        assert_eq!(
            refusal(f(), json!({"type": "tool"})),
            (
                "a tool choice of type tool needs a name".into(),
                "tool_choice.name".into()
            )
        );
        // Names and the forced tool are the job's own checks, after reading.
        let bad_name = json!([{"name": "a b", "input_schema": {}}, {"name": "g"}]);
        assert_eq!(refusal(bad_name, Value::Null).1, "tools[1].input_schema");
        let (message, param) = refusal(json!([{"name": "a b", "input_schema": {}}]), Value::Null);
        assert_eq!(param, "tools");
        assert!(
            message.contains("tools[0].function.name \"a b\""),
            "{message}"
        );
        let j = job(&body(f(), json!({"type": "any"}))).unwrap();
        let tools = j.tools.unwrap();
        assert_eq!(tools.choice, ToolChoice::Required);
        assert!(tools.parallel);
    }
}
