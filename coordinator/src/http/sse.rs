//! Streaming a job as server-sent events, OpenAI's way: chunks as tokens
//! arrive, a final chunk with the finish reason, an optional usage chunk,
//! then `[DONE]`. After the first token a failure never switches nodes:
//! the stream ends with an OpenAI error event, and the builder pays for
//! what it received (the node's last running receipt), nothing more. A
//! client that hangs up is charged the same way, and so is one that stops
//! reading: an event that cannot be handed over within the idle timeout
//! ends the job (its hold and the node's slot are never pinned by a slow
//! reader). The relay runs as a tracked task that ends on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Serialize;
use sharenet_api::openai::{
    ChatCompletionChunk, ChunkChoice, Delta, DeltaFunction, DeltaToolCall, TextChoice,
    TextCompletionChunk, Usage,
};
use sharenet_proto::{FinishReason, TokenLogprob, ToolCall};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::body;
use super::openai::{access_of, chat_logprobs, completion_logprobs, usage};
use crate::core::Core;
use crate::core::dispatch::{ActiveJob, Step};
use crate::core::error::Error;
use crate::core::job::JobKind;

/// SSE events buffered per streaming response.
const SSE_BUFFER: usize = 64;

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
    /// For the access-log line written when the stream ends.
    pub started: Option<super::access::Started>,
}

type Events = ReceiverStream<Result<Event, Infallible>>;

/// The SSE body of one streamed response.
pub(super) type SseBody = Sse<axum::response::sse::KeepAliveStream<Events>>;

/// Starts relaying `actives` (one job per choice, `n` of them) and returns
/// the SSE response body. Each choice streams under its own `index`; the
/// usage chunk (summed over the choices) and `[DONE]` come once every
/// choice has finished.
pub(super) fn stream(core: Arc<Core>, actives: Vec<ActiveJob>, meta: Meta) -> SseBody {
    let (tx, rx) = mpsc::channel(SSE_BUFFER);
    let meta = Arc::new(meta);
    let mut relays = Vec::with_capacity(actives.len());
    for (index, active) in actives.into_iter().enumerate() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (relay_core, meta, tx) = (core.clone(), meta.clone(), tx.clone());
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        core.spawn(async move {
            let finished = relay(relay_core, active, &meta, index, tx).await;
            let _ = done_tx.send(finished);
        });
        relays.push(done_rx);
    }
    let timeout = core.timeouts.idle;
    core.spawn(async move {
        let out = Sender { tx, timeout };
        let mut all = Vec::with_capacity(relays.len());
        for r in relays {
            match r.await {
                Ok(Some(f)) => all.push(f),
                // A choice failed: its error event ended the stream's
                // meaning; no usage, no [DONE].
                _ => return,
            }
        }
        if meta.include_usage
            && let Some((usage, receipt_id)) = summed(&all)
        {
            let _ = out
                .json(&meta.usage_chunk(&meta.model, usage, receipt_id))
                .await;
        }
        out.done().await;
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

/// The usage of all choices together, and the first choice's receipt id.
fn summed(all: &[Box<crate::core::dispatch::Finished>]) -> Option<(Usage, String)> {
    let first = all.first()?;
    let (total, _) = super::openai::totals(all);
    Some((total, first.receipt.receipt().job_id.to_hex()))
}

struct Sender {
    tx: mpsc::Sender<Result<Event, Infallible>>,
    /// How long a client may leave an event unread.
    timeout: Duration,
}

impl Sender {
    /// False when the client has gone away or stopped reading.
    async fn json(&self, v: &impl Serialize) -> bool {
        match serde_json::to_string(v) {
            Ok(data) => self.event(Event::default().data(data)).await,
            Err(_) => false,
        }
    }

    async fn event(&self, event: Event) -> bool {
        self.tx.send_timeout(Ok(event), self.timeout).await.is_ok()
    }

    async fn done(&self) {
        let _ = self.event(Event::default().data("[DONE]")).await;
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

/// Relays one choice; what it finished with, or `None` when it failed or
/// the client went away (then what was delivered is booked and logged).
async fn relay(
    core: Arc<Core>,
    mut active: ActiveJob,
    meta: &Meta,
    index: u32,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) -> Option<Box<crate::core::dispatch::Finished>> {
    let out = Sender {
        tx,
        timeout: core.timeouts.idle,
    };
    let model = active.model().to_owned();
    // The headers leave with the first event: time to first token.
    let ttft_ms = meta
        .started
        .as_ref()
        .map(|s| s.at.elapsed().as_secs_f64() * 1e3);
    let log = |status: StatusCode, access: Option<&super::access::Access>| {
        if let Some(s) = &meta.started {
            super::access::line(s, status, access, ttft_ms);
        }
    };
    if meta.kind == JobKind::Chat
        && !out
            .json(&meta.chunk(&model, index, None, None, 0, None))
            .await
    {
        log(StatusCode::OK, None);
        return None;
    }
    let mut offset = 0usize;
    let mut calls_sent = 0usize;
    loop {
        let step = tokio::select! {
            step = active.next(&core) => step,
            _ = core.shutdown().cancelled() => {
                Err(Error::ShuttingDown("the coordinator is shutting down".into()))
            }
        };
        match step {
            Ok(step @ (Step::Delta(..) | Step::ToolCalls(_))) => {
                let delivered = match step {
                    Step::Delta(text, logprobs) => {
                        if text.is_empty() && logprobs.is_empty() {
                            continue;
                        }
                        let lps = meta.want_logprobs.then_some(logprobs.as_slice());
                        let chunk = meta.chunk(&model, index, Some(&text), lps, offset, None);
                        offset += text.len();
                        out.json(&chunk).await
                    }
                    Step::ToolCalls(calls) => {
                        let chunk = meta.calls_chunk(&model, index, &calls, calls_sent);
                        calls_sent += calls.len();
                        out.json(&chunk).await
                    }
                    Step::Done(_) => continue,
                };
                if !delivered {
                    // The client went away or stopped reading: dropping the
                    // job closes the node's stream, which stops generation
                    // there. What was generated until then is charged (the
                    // node's last running receipt), as hosted APIs do.
                    let partial = active.book_partial(&core).await;
                    log(
                        StatusCode::OK,
                        partial.map(|p| access_of(&active, &p)).as_ref(),
                    );
                    return None;
                }
            }
            Ok(Step::Done(finished)) => {
                let _ = out
                    .json(&meta.chunk(
                        &model,
                        index,
                        None,
                        None,
                        offset,
                        Some(finished.finish_reason),
                    ))
                    .await;
                log(StatusCode::OK, Some(&access_of(&active, &finished)));
                return Some(finished);
            }
            Err(e) => {
                tracing::warn!(job = %active.job_id(), error = %e, "stream failed after the first token");
                let mut event = body(&e);
                let partial = active.book_partial(&core).await;
                if let Some(partial) = &partial {
                    event.usage = Some(usage(partial));
                    event.receipt_id = Some(partial.receipt.receipt().job_id.to_hex());
                }
                let _ = out.json(&event).await;
                // The status line said 200; the stream ended in an error.
                log(
                    super::error::status(&e),
                    partial.map(|p| access_of(&active, &p)).as_ref(),
                );
                return None;
            }
        }
    }
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
            started: None,
        };
        // The client holds the stream open and never reads it.
        let (tx, _unread) = mpsc::channel(4);
        let started = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(10),
            relay(core.clone(), active, &meta, 0, tx),
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
