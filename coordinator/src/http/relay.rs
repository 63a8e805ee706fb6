//! The one streaming relay: a job's steps as server-sent events, generic
//! over the wire format ([`WireFormat`]: OpenAI's chunks in
//! `openai_stream.rs`, Anthropic's events in `anthropic_reply.rs`).
//!
//! After the first token a failure never switches nodes: the stream ends
//! with the format's error event. A client that hangs up, or stops
//! reading (an event that cannot be handed over within the idle timeout),
//! ends the job; either way the builder pays what the core's
//! partial-charge policy says ([`Cut`]), so a hold and a node's slot are
//! never pinned by a slow reader. Shutdown ends the stream like a
//! failure. Each relay runs as a tracked task and writes the request's
//! access-log line when its stream ends.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, KeepAliveStream, Sse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::access::{Started, access_of, line};
use super::error::status;
use crate::core::Core;
use crate::core::dispatch::{ActiveJob, Cut, Finished, Step};
use crate::core::error::Error;

/// SSE events buffered per streamed response.
const SSE_BUFFER: usize = 64;

/// Events to send in order; `None` is one that could not be encoded,
/// which counts as not delivered.
pub(super) type Frames = Vec<Option<Event>>;

/// How one stream's steps look on the wire. The relay calls `opening`
/// once, `step` for each delta or batch of tool calls, then either
/// `finished` or `failed`.
pub(super) trait WireFormat: Send + 'static {
    /// Events before the first step.
    fn opening(&mut self) -> Frames;
    /// The events of one step ([`Step::Delta`] or [`Step::ToolCalls`]);
    /// none for a step with nothing to show.
    fn step(&mut self, step: Step) -> Frames;
    /// The events that end a finished job.
    fn finished(&mut self, f: &Finished) -> Frames;
    /// The event that ends a failed job, with what was charged for it.
    fn failed(&mut self, e: &Error, partial: Option<&Finished>) -> Frames;
}

/// One event as JSON data, or `None` when it cannot be encoded.
pub(super) fn json(v: &impl serde::Serialize) -> Option<Event> {
    serde_json::to_string(v)
        .ok()
        .map(|data| Event::default().data(data))
}

pub(super) type Tx = mpsc::Sender<Result<Event, Infallible>>;

/// The SSE body of one streamed response.
pub(super) type SseBody = Sse<KeepAliveStream<ReceiverStream<Result<Event, Infallible>>>>;

/// Starts relaying `choices` (one job each, with its format) under one
/// response and returns its body. Once every choice has finished, the
/// events `closing` makes of them all end the stream; when a choice
/// fails, its error event ends the stream's meaning and `closing` is
/// skipped.
pub(super) fn stream<F: WireFormat>(
    core: Arc<Core>,
    choices: Vec<(ActiveJob, F)>,
    started: Option<Started>,
    closing: impl FnOnce(&[Box<Finished>]) -> Frames + Send + 'static,
) -> SseBody {
    let (tx, rx) = mpsc::channel(SSE_BUFFER);
    let mut relays = Vec::with_capacity(choices.len());
    for (active, format) in choices {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (relay_core, started, tx) = (core.clone(), started.clone(), tx.clone());
        core.spawn(async move {
            let finished = relay(relay_core, active, format, started.as_ref(), tx).await;
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
                _ => return,
            }
        }
        out.offer(closing(&all)).await;
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

struct Sender {
    tx: Tx,
    /// How long a client may leave an event unread.
    timeout: Duration,
}

impl Sender {
    /// Sends the events in order until one is not delivered; false when
    /// the client has gone away or stopped reading.
    async fn deliver(&self, frames: Frames) -> bool {
        for frame in frames {
            if !self.send(frame).await {
                return false;
            }
        }
        true
    }

    /// Tries every event whatever became of the ones before (the stream
    /// ends after them anyway).
    async fn offer(&self, frames: Frames) {
        for frame in frames {
            let _ = self.send(frame).await;
        }
    }

    async fn send(&self, frame: Option<Event>) -> bool {
        match frame {
            Some(event) => self.tx.send_timeout(Ok(event), self.timeout).await.is_ok(),
            None => false,
        }
    }
}

/// Relays one job; what it finished with, or `None` when it failed or
/// the client went away (then what was delivered is charged and logged).
pub(super) async fn relay<F: WireFormat>(
    core: Arc<Core>,
    mut active: ActiveJob,
    mut format: F,
    started: Option<&Started>,
    tx: Tx,
) -> Option<Box<Finished>> {
    let out = Sender {
        tx,
        timeout: core.timeouts.idle,
    };
    // The headers leave with the first event: time to first token.
    let ttft_ms = started.map(|s| s.at.elapsed().as_secs_f64() * 1e3);
    let log = |status: StatusCode, access: Option<&super::access::Access>| {
        if let Some(s) = started {
            line(s, status, access, ttft_ms);
        }
    };
    if !out.deliver(format.opening()).await {
        log(StatusCode::OK, None);
        return None;
    }
    loop {
        match active.next_streamed(&core).await {
            Ok(Step::Done(finished)) => {
                out.offer(format.finished(&finished)).await;
                log(StatusCode::OK, Some(&access_of(&active, &finished)));
                return Some(finished);
            }
            Ok(step) => {
                if !out.deliver(format.step(step)).await {
                    let partial = active.cut_short(&core, Cut::HungUp).await;
                    log(
                        StatusCode::OK,
                        partial.map(|p| access_of(&active, &p)).as_ref(),
                    );
                    return None;
                }
            }
            Err(e) => {
                let partial = active.cut_short(&core, Cut::Failed(&e)).await;
                out.offer(format.failed(&e, partial.as_ref())).await;
                // The status line said 200; the stream ended in an error.
                log(status(&e), partial.map(|p| access_of(&active, &p)).as_ref());
                return None;
            }
        }
    }
}
