//! Anthropic's answers to a chat job: the whole message, or its event
//! stream as a [`WireFormat`] for the relay (`message_start`, content
//! blocks, `message_delta`, `message_stop`; a failure ends it with an
//! `error` event in Anthropic's shape).

use axum::response::sse::Event;
use serde_json::{Value, json};
use sharenet_api::Cost;
use sharenet_api::anthropic::{Block, Message, MessageUsage};
use sharenet_proto::FinishReason;

use super::error::anthropic_error_body;
use super::relay::{Frames, WireFormat};
use crate::core::dispatch::{Finished, Step};
use crate::core::error::Error;

fn stop_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
    }
}

/// A call's arguments as the `input` object Anthropic's clients expect.
fn input_of(arguments: &str) -> Value {
    serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// What a reply repeats.
pub(super) struct Head {
    pub id: String,
    pub model: String,
    pub provider: String,
    pub receipt_id: String,
}

/// The whole message of a finished job.
pub(super) fn message(f: &Finished, head: Head) -> Message {
    let mut content = Vec::with_capacity(1 + f.tool_calls.len());
    if !f.text.is_empty() || f.tool_calls.is_empty() {
        content.push(Block::Text {
            text: f.text.clone(),
        });
    }
    for c in &f.tool_calls {
        content.push(Block::ToolUse {
            id: c.id.clone(),
            name: c.name.clone(),
            input: input_of(&c.arguments),
        });
    }
    Message {
        id: head.id,
        kind: "message".into(),
        role: "assistant".into(),
        model: head.model,
        content,
        stop_reason: Some(stop_reason(f.finish_reason).into()),
        stop_sequence: None,
        usage: MessageUsage::new(
            f.usage.input_tokens,
            f.usage.output_tokens,
            Some(Cost::from(&f.charge)),
        )
        .counted_by(f.counted_by),
        receipt_id: head.receipt_id,
        provider: head.provider,
    }
}

/// One named event.
fn event(name: &str, data: Value) -> Option<Event> {
    Some(Event::default().event(name).data(data.to_string()))
}

/// A job's event stream: the index of the next content block, and
/// whether a text block is open.
pub(super) struct Events {
    head: Head,
    block: u32,
    text_open: bool,
}

impl Events {
    pub(super) fn new(head: Head) -> Self {
        Self {
            head,
            block: 0,
            text_open: false,
        }
    }

    fn block_stop(&self) -> Option<Event> {
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": self.block}),
        )
    }
}

impl WireFormat for Events {
    fn opening(&mut self) -> Frames {
        let head = &self.head;
        let start = json!({"type": "message_start", "message": {
            "id": head.id, "type": "message", "role": "assistant", "model": head.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
            "receipt_id": head.receipt_id, "provider": head.provider}});
        vec![event("message_start", start)]
    }

    fn step(&mut self, step: Step) -> Frames {
        let mut frames = Vec::new();
        match step {
            Step::Delta(text, _) => {
                if text.is_empty() {
                    return frames;
                }
                if !self.text_open {
                    frames.push(event(
                        "content_block_start",
                        json!({"type": "content_block_start",
                        "index": self.block, "content_block": {"type": "text", "text": ""}}),
                    ));
                    self.text_open = true;
                }
                frames.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta",
                    "index": self.block, "delta": {"type": "text_delta", "text": text}}),
                ));
            }
            Step::ToolCalls(calls) => {
                if self.text_open {
                    frames.push(self.block_stop());
                    self.text_open = false;
                    self.block += 1;
                }
                for c in calls {
                    frames.push(event("content_block_start", json!({"type": "content_block_start",
                        "index": self.block, "content_block": {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}})));
                    frames.push(event("content_block_delta", json!({"type": "content_block_delta",
                        "index": self.block, "delta": {"type": "input_json_delta", "partial_json": input_of(&c.arguments).to_string()}})));
                    frames.push(self.block_stop());
                    self.block += 1;
                }
            }
            Step::Done(_) => {}
        }
        frames
    }

    fn finished(&mut self, f: &Finished) -> Frames {
        let mut frames = Vec::with_capacity(3);
        if self.text_open {
            frames.push(self.block_stop());
        }
        let cost = Cost::from(&f.charge);
        let usage = MessageUsage::new(f.usage.input_tokens, f.usage.output_tokens, Some(cost))
            .counted_by(f.counted_by);
        frames.push(event(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(f.finish_reason), "stop_sequence": null},
            "usage": usage}),
        ));
        frames.push(event("message_stop", json!({"type": "message_stop"})));
        frames
    }

    fn failed(&mut self, e: &Error, _partial: Option<&Finished>) -> Frames {
        vec![event("error", anthropic_error_body(e))]
    }
}
