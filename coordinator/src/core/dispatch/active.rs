//! A job that has produced its first event on a node. From here on the
//! coordinator never switches nodes: it relays events, checks them against
//! the job's bounds, and books the receipt at the end (or the last running
//! receipt if the stream breaks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use sharenet_market::{Charge, CountedBy};
use sharenet_p2p::{PeerId, read_frame, write_frame};
use sharenet_proto::{
    CountersignedReceipt, FinishReason, JobEvent, JobId, JobInput, MAX_FRAME_BYTES, SignedReceipt,
    TokenLogprob, ToolCall, Usage, embeddings_digest, response_digest,
};

use crate::core::accounts::Hold;
use crate::core::error::Error;
use crate::core::job::{Job, JobKind};
use crate::core::routing::{InFlight, Outcome};
use crate::core::transport::JobStream;
use crate::core::{Core, now_ms, untrusted};

use super::attempt::{Started, decode_event};
use super::book::{Claim, Terms, check_and_book};
use super::budget::Budget;
use super::count::OutputCounter;
use crate::core::job::{CompletedJob, Notice};

/// Events a job may have beyond one per token (token-less deltas).
pub const EXTRA_EVENTS: u32 = 64;

/// What the next event amounted to.
pub enum Step {
    /// New text and, when asked for, its tokens' logprobs.
    Delta(String, Vec<TokenLogprob>),
    /// Tool calls the model made, whole.
    ToolCalls(Vec<ToolCall>),
    Done(Box<Finished>),
}

/// A completed, verified, countersigned and stored job.
pub struct Finished {
    /// What the builder was charged, and its parts.
    pub charge: Charge,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    /// The calls the model made (finish reason `tool_calls`).
    pub tool_calls: Vec<ToolCall>,
    /// The vectors of an embeddings job.
    pub embeddings: Option<Vec<Vec<f32>>>,
    pub usage: Usage,
    pub finish_reason: FinishReason,
    pub receipt: CountersignedReceipt,
    /// Who counted `usage`: the coordinator exactly when it had the
    /// model's tokenizer (and the node's signed counts had to match).
    pub counted_by: CountedBy,
}

/// The last running receipt the node sent, with the output tokens and
/// text length it covers.
struct Checkpoint {
    receipt: Vec<u8>,
    tokens: u32,
    text_len: usize,
    calls: usize,
    /// Ids received by then (the coordinator's count covers these).
    ids: usize,
}

/// See the module docs.
pub struct ActiveJob {
    stream: Option<JobStream>,
    first: Option<JobEvent>,
    terms: Terms,
    job: Arc<Job>,
    /// Who pays and whether the prompt must stay private (for the
    /// completion notice).
    notice: Notice,
    streamed_tokens: u32,
    /// The job's byte budget: text, tool calls and logprobs together.
    budget: Budget,
    /// Events read so far (bounded: a node cannot stall a job with
    /// endless empty deltas).
    events: u32,
    text: String,
    logprobs: Vec<TokenLogprob>,
    tool_calls: Vec<ToolCall>,
    /// Calls that came with text, handed out as the step after it.
    pending_calls: Vec<ToolCall>,
    embeddings: Option<Vec<Vec<f32>>>,
    /// Booked if the job breaks after its first token
    /// ([`ActiveJob::book_partial`]).
    checkpoint: Option<Checkpoint>,
    /// The coordinator's own count of the output, for a model it can
    /// count (`count.rs`).
    counter: Option<OutputCounter>,
    /// The worst-case amount held for this job; turned into the real
    /// charge when the receipt is booked, released if it never is.
    hold: Option<Hold>,
    /// When the request went to the node, and when its first event came.
    sent_at: Instant,
    first_at: Instant,
    /// The job counts towards the node's load until it ends.
    in_flight: Option<InFlight>,
}

impl ActiveJob {
    pub(super) fn new(
        started: Started,
        terms: Terms,
        job: Arc<Job>,
        notice: Notice,
        hold: Hold,
    ) -> Self {
        let counter = terms
            .prompt
            .clone()
            .map(|p| OutputCounter::new(p, job.needs().tools));
        Self {
            stream: Some(started.stream),
            first: Some(started.first),
            terms,
            budget: Budget::for_job(&job.params),
            job,
            notice,
            streamed_tokens: 0,
            events: 0,
            text: String::new(),
            logprobs: Vec::new(),
            tool_calls: Vec::new(),
            pending_calls: Vec::new(),
            embeddings: None,
            checkpoint: None,
            counter,
            hold: Some(hold),
            sent_at: started.sent_at,
            first_at: Instant::now(),
            in_flight: Some(started.in_flight),
        }
    }

    pub fn job_id(&self) -> JobId {
        self.terms.job_id
    }

    /// The serving node's peer id.
    pub fn peer(&self) -> PeerId {
        self.terms.peer
    }

    /// The serving node's public key.
    pub fn node(&self) -> [u8; 32] {
        self.terms.node
    }

    /// From sending the request to the node to its first event, ms.
    pub fn ttft_ms(&self) -> f64 {
        (self.first_at - self.sent_at).as_secs_f64() * 1e3
    }

    /// The model being served (the requested one or a fallback).
    pub fn model(&self) -> &str {
        &self.terms.model
    }

    /// Reads the job to its end (its text and calls are in the result).
    pub async fn run_to_end(&mut self, core: &Core) -> Result<Box<Finished>, Error> {
        loop {
            if let Step::Done(f) = self.next(core).await? {
                return Ok(f);
            }
        }
    }

    /// The next step of the job. Errors after the first token are final.
    pub async fn next(&mut self, core: &Core) -> Result<Step, Error> {
        if !self.pending_calls.is_empty() {
            return Ok(Step::ToolCalls(std::mem::take(&mut self.pending_calls)));
        }
        let event = match self.first.take() {
            Some(e) => e,
            None => self.read_event(core).await?,
        };
        match event {
            JobEvent::Delta {
                text,
                tokens,
                ids,
                logprobs,
                tool_calls,
                receipt,
            } => {
                self.streamed_tokens = self.streamed_tokens.saturating_add(tokens);
                self.events = self.events.saturating_add(1);
                if self.streamed_tokens > self.job.params.max_tokens {
                    return Err(
                        self.node_failed(core, "the node streamed more tokens than max_tokens")
                    );
                }
                if self.job.kind == JobKind::Embedding {
                    return Err(
                        self.node_failed(core, "the node streamed text for an embeddings job")
                    );
                }
                if self.events > self.job.params.max_tokens.saturating_add(EXTRA_EVENTS) {
                    return Err(self.node_failed(core, "the node sent more events than tokens"));
                }
                // Bounded memory per job, whatever the node sends.
                if let Err(why) =
                    self.budget
                        .charge(&self.job.params, tokens, &text, &logprobs, &tool_calls)
                {
                    return Err(self.node_failed(core, &why));
                }
                if let Some(why) = self.bad_calls(&tool_calls) {
                    return Err(self.node_failed(core, why));
                }
                self.text.push_str(&text);
                self.logprobs.extend(logprobs.iter().cloned());
                self.tool_calls.extend(tool_calls.iter().cloned());
                if let Some(counter) = &mut self.counter
                    && let Err(why) = counter.push(&ids, tokens, &self.text)
                {
                    return Err(self.node_failed(core, &why));
                }
                if let Some(receipt) = receipt {
                    self.checkpoint = Some(Checkpoint {
                        receipt,
                        tokens: self.streamed_tokens,
                        text_len: self.text.len(),
                        calls: self.tool_calls.len(),
                        ids: self.counter.as_ref().map_or(0, OutputCounter::ids),
                    });
                }
                if tool_calls.is_empty() {
                    return Ok(Step::Delta(text, logprobs));
                }
                if text.is_empty() && logprobs.is_empty() {
                    return Ok(Step::ToolCalls(tool_calls));
                }
                // Text first, then the calls as the next step.
                self.pending_calls = tool_calls;
                Ok(Step::Delta(text, logprobs))
            }
            JobEvent::Embeddings { data } => {
                if let Some(why) = self.bad_embeddings(&data) {
                    return Err(self.node_failed(core, why));
                }
                self.embeddings = Some(data);
                Ok(Step::Delta(String::new(), Vec::new()))
            }
            JobEvent::Done {
                finish_reason,
                usage,
                receipt,
            } => self
                .finish(core, finish_reason, usage, &receipt)
                .await
                .map(|f| Step::Done(Box::new(f))),
            JobEvent::Error { code, message } => {
                core.routing
                    .record(self.terms.node, Outcome::Failed, now_ms());
                Err(Error::BadGateway(format!(
                    "the node failed mid-stream ({code:?}): {}",
                    untrusted(&message)
                )))
            }
            JobEvent::Countersigned { .. } => {
                Err(self.node_failed(core, "the node sent an unexpected frame"))
            }
        }
    }

    /// Why an embeddings frame from the node is not acceptable, if it is
    /// not: only an embeddings job takes one, once, with one vector per
    /// input, all of one non-zero dimension.
    fn bad_embeddings(&self, data: &[Vec<f32>]) -> Option<&'static str> {
        let JobInput::Embed { inputs } = &self.job.input else {
            return Some(
                "the node sent an embeddings frame for a job that is not an embeddings job",
            );
        };
        if self.embeddings.is_some() {
            return Some("the node sent a second embeddings frame");
        }
        if data.len() != inputs.len() {
            return Some("the node sent a number of vectors other than the job's inputs");
        }
        let dims = data.first().map_or(0, Vec::len);
        if dims == 0 || data.iter().any(|v| v.len() != dims) {
            return Some("the node sent vectors of inconsistent dimensions");
        }
        None
    }

    /// Why tool calls from the node are not acceptable, if they are not:
    /// the job must have offered tools, each call must name one it may
    /// call, ids must be unique, and no more calls than tools allow.
    fn bad_calls(&self, calls: &[ToolCall]) -> Option<&'static str> {
        if calls.is_empty() {
            return None;
        }
        let Some(tools) = self.job.tools.as_ref().filter(|_| self.job.needs().tools) else {
            return Some("the node sent tool calls for a job that offered no tools");
        };
        let total = self.tool_calls.len() + calls.len();
        if total > sharenet_proto::MAX_TOOLS || (!tools.parallel && total > 1) {
            return Some("the node sent more tool calls than the job allows");
        }
        for (i, c) in calls.iter().enumerate() {
            if !tools.callable().any(|t| t.name == c.name) {
                return Some("the node called a function the job did not offer");
            }
            if c.id.is_empty()
                || c.id.len() > 64
                || self
                    .tool_calls
                    .iter()
                    .chain(&calls[..i])
                    .any(|o| o.id == c.id)
            {
                return Some("the node sent a tool call without a unique id");
            }
        }
        None
    }

    /// Keeps the job's facts for `GET /v1/generation` (best effort: a
    /// failure is logged; the money is already in the books).
    fn remember(
        &self,
        core: &Core,
        charge: &Charge,
        usage: Usage,
        finish: Option<FinishReason>,
        cancelled: bool,
    ) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let latency = self.sent_at.elapsed();
        let cost = sharenet_ledger::CostFacts::from(charge);
        let g = sharenet_ledger::GenerationFacts {
            id: self.terms.job_id.to_hex(),
            model: self.terms.model.clone(),
            provider_name: self.terms.peer.to_string(),
            app_id: self.notice.app.clone(),
            created_at_ms: now_ms().saturating_sub(ms(latency)),
            tokens_prompt: usage.input_tokens,
            tokens_completion: usage.output_tokens,
            total_cost: cost.usd(),
            cost_details: cost,
            latency: ms(latency),
            time_to_first_token: ms(self.first_at - self.sent_at),
            generation_time: ms(self.first_at.elapsed()),
            finish_reason: finish.map(|f| f.as_str().to_owned()),
            cancelled,
            counted_by: Some(self.terms.counted_by()),
        };
        if let Err(e) = core.accounts.books().put_generation(&self.terms.job_id, &g) {
            tracing::warn!(job = %self.terms.job_id, error = %e, "keep the generation's facts");
        }
        // Replicas: any of them may be asked for it.
        if let Some(pg) = core.accounts.shared()
            && let Err(e) = pg.put_generation(&self.terms.job_id, &g)
        {
            tracing::warn!(job = %self.terms.job_id, error = %e, "share the generation's facts");
        }
    }

    /// A protocol violation by the node: recorded against it, final.
    fn node_failed(&self, core: &Core, why: &str) -> Error {
        core.routing
            .record(self.terms.node, Outcome::Failed, now_ms());
        Error::BadGateway(why.into())
    }

    async fn read_event(&mut self, core: &Core) -> Result<JobEvent, Error> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| Error::Internal("job already finished".into()))?;
        let frame = tokio::time::timeout(core.timeouts.idle, read_frame(stream, MAX_FRAME_BYTES))
            .await
            .map_err(|_| Error::BadGateway("the node stopped sending tokens".into()))
            .and_then(|r| r.map_err(|e| Error::BadGateway(format!("the node's stream broke: {e}"))))
            .inspect_err(|_| {
                core.routing
                    .record(self.terms.node, Outcome::Failed, now_ms())
            })?;
        decode_event(&frame).map_err(|e| self.node_failed(core, &e))
    }

    async fn finish(
        &mut self,
        core: &Core,
        finish_reason: FinishReason,
        usage: Usage,
        receipt: &[u8],
    ) -> Result<Finished, Error> {
        if self.job.kind == JobKind::Embedding && self.embeddings.is_none() {
            return Err(
                self.node_failed(core, "the node finished an embeddings job without vectors")
            );
        }
        let hold = self
            .hold
            .take()
            .ok_or_else(|| Error::Internal("job finished twice".into()))?;
        let response_digest = match &self.embeddings {
            Some(v) => embeddings_digest(v),
            None => response_digest(&self.text, &self.tool_calls),
        };
        let stopped = finish_reason == FinishReason::Stop;
        let counted_output_tokens = match &mut self.counter {
            Some(c) => {
                match c.finish(&self.text, &self.tool_calls, &self.job.params.stop, stopped) {
                    Ok(n) => Some(n),
                    Err(why) => {
                        // Nothing is booked: the hold goes back.
                        drop(hold);
                        return Err(self.node_failed(core, &why));
                    }
                }
            }
            None => None,
        };
        let (entry, countersigned) = check_and_book(
            core,
            &self.terms,
            hold,
            Claim {
                receipt,
                streamed_tokens: self.streamed_tokens,
                reported_input_tokens: usage.input_tokens,
                reported_output_tokens: usage.output_tokens,
                response_digest,
                counted_output_tokens,
            },
        )
        .await?;
        let (ttft_ms, duration_ms) = (
            (self.first_at - self.sent_at).as_secs_f64() * 1000.0,
            self.sent_at.elapsed().as_secs_f64() * 1000.0,
        );
        match self.in_flight.take() {
            // Speed is what the node generated (its ids), not what was billed.
            Some(f) => f.served(ttft_ms, self.streamed_tokens, duration_ms, now_ms()),
            None => core.routing.record(
                self.terms.node,
                Outcome::Served {
                    ttft_ms,
                    tokens: self.streamed_tokens,
                    duration_ms,
                },
                now_ms(),
            ),
        }
        if let Some(stream) = self.stream.take() {
            send_countersignature(core, stream, &countersigned);
        }
        self.remember(core, &entry.charge, usage, Some(finish_reason), false);
        core.job_completed(CompletedJob {
            job: self.job.clone(),
            app: self.notice.app.clone(),
            private: self.notice.private,
            node: self.terms.node,
            model: self.terms.model.clone(),
            prefs: self.notice.prefs.clone(),
        });
        Ok(Finished {
            charge: entry.charge,
            text: std::mem::take(&mut self.text),
            logprobs: std::mem::take(&mut self.logprobs),
            tool_calls: std::mem::take(&mut self.tool_calls),
            embeddings: self.embeddings.take(),
            usage,
            finish_reason,
            receipt: countersigned,
            counted_by: self.terms.counted_by(),
        })
    }

    /// The job broke after its first token (stream only): books the node's
    /// last running receipt, which covers exactly the tokens the builder
    /// received, so the builder pays for those and the provider is paid for
    /// them. Returns what was charged, or `None` when there is nothing
    /// valid to book (no running receipt, or one that does not check out,
    /// which also counts against the node); the hold is released then.
    pub async fn book_partial(&mut self, core: &Core) -> Option<Finished> {
        let Checkpoint {
            receipt,
            tokens,
            text_len,
            calls,
            ids,
        } = self.checkpoint.take()?;
        let hold = self.hold.take()?;
        let text = self.text.get(..text_len)?.to_owned();
        let tool_calls = self.tool_calls.get(..calls)?.to_vec();
        // A running receipt carries its own input count (there is no
        // `Done`); one that does not decode is rejected by the check.
        let (claimed_input, claimed_output) = SignedReceipt::from_bytes(&receipt)
            .map(|s| (s.receipt().input_tokens, s.receipt().output_tokens))
            .unwrap_or((0, tokens));
        // The coordinator's own count of the ids the receipt covers.
        let counted_output_tokens = match &self.counter {
            Some(c) => match c.billable_prefix(ids, calls) {
                Ok(n) => Some(n),
                Err(why) => {
                    tracing::warn!(job = %self.terms.job_id, %why, "count a broken job's output");
                    drop(hold);
                    return None;
                }
            },
            None => None,
        };
        let output_tokens = counted_output_tokens.unwrap_or(claimed_output.min(tokens));
        let booked = check_and_book(
            core,
            &self.terms,
            hold,
            Claim {
                receipt: &receipt,
                streamed_tokens: tokens,
                reported_input_tokens: claimed_input,
                reported_output_tokens: claimed_output,
                response_digest: response_digest(&text, &tool_calls),
                counted_output_tokens,
            },
        )
        .await;
        match booked {
            Ok((entry, receipt)) => {
                tracing::info!(job = %self.terms.job_id, node = %self.terms.peer, output_tokens,
                    charge = entry.charge.total, "booked the part of a broken job the builder received");
                let usage = Usage {
                    input_tokens: claimed_input,
                    output_tokens,
                };
                self.remember(core, &entry.charge, usage, None, true);
                Some(Finished {
                    charge: entry.charge,
                    text,
                    logprobs: Vec::new(),
                    tool_calls,
                    embeddings: None,
                    usage: Usage {
                        input_tokens: claimed_input,
                        output_tokens,
                    },
                    finish_reason: FinishReason::Length,
                    receipt,
                    counted_by: self.terms.counted_by(),
                })
            }
            Err(e) => {
                tracing::warn!(job = %self.terms.job_id, error = %e, "could not book the running receipt of a broken job");
                None
            }
        }
    }
}

/// Sends the countersigned receipt back to the node (which upgrades its
/// stored copy) and closes the stream, in a tracked background task with
/// a time limit.
fn send_countersignature(core: &Core, mut stream: JobStream, receipt: &CountersignedReceipt) {
    let Ok(frame) = serde_json::to_vec(&JobEvent::Countersigned {
        receipt: receipt.to_bytes(),
    }) else {
        return;
    };
    core.spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = write_frame(&mut stream, &frame).await;
            let _ = stream.close().await;
        })
        .await;
    });
}
