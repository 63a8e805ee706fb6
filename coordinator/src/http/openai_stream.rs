//! OpenAI's streamed answer as a [`WireFormat`] for the relay: chunks as
//! tokens arrive (for chat, a role-only chunk first), tool calls whole, a
//! final chunk with the finish reason; once every choice has finished an
//! optional usage chunk (summed over the choices) and `[DONE]`. A failure
//! ends the stream with an OpenAI error event that carries what was
//! charged (usage and receipt id) when the partial was booked.

use std::sync::Arc;

use serde::Serialize;
use sharenet_api::openai::{
    ChatCompletionChunk, ChunkChoice, Delta, DeltaFunction, DeltaToolCall, TextChoice,
    TextCompletionChunk, Usage,
};
use sharenet_proto::{FinishReason, TokenLogprob, ToolCall};

use super::access::Started;
use super::error::body;
use super::openai_parts::{chat_logprobs, completion_logprobs, totals, usage};
use super::relay::{Frames, SseBody, WireFormat, json};
use crate::core::Core;
use crate::core::dispatch::{ActiveJob, Finished, Step};
use crate::core::error::Error;
use crate::core::job::JobKind;

/// What every chunk of one response repeats.
pub(super) struct Meta {
    pub kind: JobKind,
    pub id: String,
    pub created: u64,
    pub include_usage: bool,
    pub want_logprobs: bool,
    /// The serving node's peer id (`provider` on every chunk).
    pub provider: String,
    /// The model served (the requested one or a fallback).
    pub model: String,
}

/// Starts relaying `actives` (one job per choice, `n` of them) and returns
/// the SSE response body. Each choice streams under its own `index`; the
/// usage chunk (summed over the choices) and `[DONE]` come once every
/// choice has finished.
pub(super) fn stream(
    core: Arc<Core>,
    actives: Vec<ActiveJob>,
    meta: Meta,
    started: Option<Started>,
) -> SseBody {
    let meta = Arc::new(meta);
    let choices = actives
        .into_iter()
        .enumerate()
        .map(|(index, active)| {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let chunks = Chunks::new(meta.clone(), index, active.model());
            (active, chunks)
        })
        .collect();
    super::relay::stream(core, choices, started, move |all| {
        let mut frames = Vec::with_capacity(2);
        if meta.include_usage
            && let Some((usage, receipt_id)) = summed(all)
        {
            frames.push(json(&meta.usage_chunk(&meta.model, usage, receipt_id)));
        }
        frames.push(Some(axum::response::sse::Event::default().data("[DONE]")));
        frames
    })
}

/// The usage of all choices together, and the first choice's receipt id.
fn summed(all: &[Box<Finished>]) -> Option<(Usage, String)> {
    let first = all.first()?;
    let (total, _) = totals(all);
    Some((total, first.receipt.receipt().job_id.to_hex()))
}

/// One choice's chunks: its index, the model that serves it, where its
/// text has got to (for legacy logprobs' offsets) and the tool calls sent
/// so far (their indexes in the reply).
pub(super) struct Chunks {
    meta: Arc<Meta>,
    index: u32,
    model: String,
    offset: usize,
    calls_sent: usize,
}

impl Chunks {
    /// Choice `index`'s chunks, served by `model`.
    pub(super) fn new(meta: Arc<Meta>, index: u32, model: &str) -> Self {
        Self {
            meta,
            index,
            model: model.to_owned(),
            offset: 0,
            calls_sent: 0,
        }
    }
}

impl WireFormat for Chunks {
    fn opening(&mut self) -> Frames {
        match self.meta.kind {
            JobKind::Chat => vec![json(&self.meta.chunk(
                &self.model,
                self.index,
                None,
                None,
                0,
                None,
            ))],
            _ => Vec::new(),
        }
    }

    fn step(&mut self, step: Step) -> Frames {
        match step {
            Step::Delta(text, logprobs) => {
                if text.is_empty() && logprobs.is_empty() {
                    return Vec::new();
                }
                let lps = self.meta.want_logprobs.then_some(logprobs.as_slice());
                let chunk =
                    self.meta
                        .chunk(&self.model, self.index, Some(&text), lps, self.offset, None);
                self.offset += text.len();
                vec![json(&chunk)]
            }
            Step::ToolCalls(calls) => {
                let chunk = self
                    .meta
                    .calls_chunk(&self.model, self.index, &calls, self.calls_sent);
                self.calls_sent += calls.len();
                vec![json(&chunk)]
            }
            Step::Done(_) => Vec::new(),
        }
    }

    fn finished(&mut self, f: &Finished) -> Frames {
        vec![json(&self.meta.chunk(
            &self.model,
            self.index,
            None,
            None,
            self.offset,
            Some(f.finish_reason),
        ))]
    }

    fn failed(&mut self, e: &Error, partial: Option<&Finished>) -> Frames {
        let mut event = body(e);
        if let Some(partial) = partial {
            event.usage = Some(usage(partial));
            event.receipt_id = Some(partial.receipt.receipt().job_id.to_hex());
        }
        vec![json(&event)]
    }
}

impl Meta {
    /// One chunk: `text` (None for the role-only first chat chunk), its
    /// logprobs, and the finish reason on the last.
    #[allow(clippy::too_many_arguments)]
    fn chunk(
        &self,
        model: &str,
        index: u32,
        text: Option<&str>,
        logprobs: Option<&[TokenLogprob]>,
        offset: usize,
        finish: Option<FinishReason>,
    ) -> Chunk {
        let finish_reason = finish.map(|f| f.as_str().to_owned());
        match self.kind {
            JobKind::Completion => Chunk::Text(TextCompletionChunk {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: model.to_owned(),
                provider: self.provider.clone(),
                choices: vec![TextChoice {
                    index,
                    text: text.unwrap_or("").to_owned(),
                    logprobs: logprobs.map(|l| completion_logprobs(l, offset)),
                    finish_reason,
                }],
                usage: None,
                receipt_id: None,
            }),
            _ => {
                let delta = match (text, finish) {
                    (_, Some(_)) => Delta::default(),
                    (None, None) => Delta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                        tool_calls: None,
                    },
                    (Some(t), None) => Delta {
                        role: None,
                        content: Some(t.to_owned()),
                        tool_calls: None,
                    },
                };
                self.chat_chunk(
                    model,
                    index,
                    delta,
                    logprobs.map(chat_logprobs),
                    finish_reason,
                )
            }
        }
    }

    fn chat_chunk(
        &self,
        model: &str,
        index: u32,
        delta: Delta,
        logprobs: Option<sharenet_api::openai::ChatLogprobs>,
        finish_reason: Option<String>,
    ) -> Chunk {
        Chunk::Chat(ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: model.to_owned(),
            provider: self.provider.clone(),
            choices: vec![ChunkChoice {
                index,
                delta,
                logprobs,
                finish_reason,
            }],
            usage: None,
            receipt_id: None,
        })
    }

    /// Whole tool calls as one chunk: each with its index in the reply,
    /// id, name and all its arguments (the SDKs accumulate by index).
    fn calls_chunk(
        &self,
        model: &str,
        index: u32,
        calls: &[ToolCall],
        first_index: usize,
    ) -> Chunk {
        let tool_calls = calls
            .iter()
            .enumerate()
            .map(|(i, c)| DeltaToolCall {
                index: u32::try_from(first_index + i).unwrap_or(u32::MAX),
                id: Some(c.id.clone()),
                kind: Some("function".into()),
                function: DeltaFunction {
                    name: Some(c.name.clone()),
                    arguments: c.arguments.clone(),
                },
            })
            .collect();
        let delta = Delta {
            role: None,
            content: None,
            tool_calls: Some(tool_calls),
        };
        self.chat_chunk(model, index, delta, None, None)
    }

    /// The usage chunk (`stream_options.include_usage`): no choices.
    fn usage_chunk(&self, model: &str, usage: Usage, receipt_id: String) -> Chunk {
        match self.kind {
            JobKind::Completion => Chunk::Text(TextCompletionChunk {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: model.to_owned(),
                provider: self.provider.clone(),
                choices: Vec::new(),
                usage: Some(usage),
                receipt_id: Some(receipt_id),
            }),
            _ => Chunk::Chat(ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: model.to_owned(),
                provider: self.provider.clone(),
                choices: Vec::new(),
                usage: Some(usage),
                receipt_id: Some(receipt_id),
            }),
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum Chunk {
    Chat(ChatCompletionChunk),
    Text(TextCompletionChunk),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::core::dispatch::start_job;
    use crate::core::dispatch::tests::{BALANCE, Script, setup};
    use crate::core::job::{Job, ProviderPrefs};
    use sharenet_proto::{ChatMessage, JobInput, SamplingParams};
    use tokio::sync::mpsc;

    /// Issue 12, item 16: a client that stops reading used to pin its
    /// hold and the node's slot forever.
    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_off_and_charged_for_what_it_got() {
        let s = setup(vec![Script::Trickle(3_000, Duration::ZERO)]);
        let (core, principal) = (s.core.clone(), s.principal.clone());
        let job = Arc::new(Job {
            kind: JobKind::Chat,
            models: vec!["m".into()],
            input: JobInput::Chat {
                messages: vec![ChatMessage::new("user", "hi")],
            },
            params: SamplingParams {
                max_tokens: 3_000,
                ..SamplingParams::default()
            },
            prefs: ProviderPrefs::any(),
            tools: None,
            response_format: None,
            input_tokens: Default::default(),
        });
        let active = start_job(&core, job, &principal, None).await.unwrap();
        let meta = Meta {
            kind: JobKind::Chat,
            id: "chatcmpl-test".into(),
            created: 0,
            include_usage: false,
            want_logprobs: false,
            provider: String::new(),
            model: "m".into(),
        };
        // The client holds the stream open and never reads it.
        let (tx, _unread) = mpsc::channel(4);
        let started = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(10),
            super::super::relay::relay(
                core.clone(),
                active,
                Chunks::new(Arc::new(meta), 0, "m"),
                None,
                tx,
            ),
        )
        .await
        .expect("the relay gives up on a reader that stopped");
        assert!(started.elapsed() >= core.timeouts.idle);
        let entries = core
            .accounts
            .books()
            .entries()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(entries.len(), 1, "what was generated is booked");
        let out = entries[0].receipt.receipt().output_tokens;
        assert!(out > 0 && out < 3_000, "only part of the job: {out} tokens");
        assert_eq!(
            core.accounts.balance(&principal.app),
            i128::from(BALANCE) - i128::from(entries[0].charge.total),
            "the hold is gone, the part is charged"
        );
    }
}
