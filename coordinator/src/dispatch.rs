//! Sending a job to a node: pick candidates, open a stream, fall back on
//! failure before the first token, then relay events and settle the receipt.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::AsyncWriteExt;
use sharenet_ledger::StoreError;
use sharenet_market::Charge;
use sharenet_p2p::{PeerId, Stream, read_frame, write_frame};
use sharenet_proto::{
    CountersignedReceipt, FinishReason, JobErrorCode, JobEvent, JobId, JobRequest, MAX_FRAME_BYTES,
    ModelKind, TokenLogprob, Usage, embeddings_digest, sha256,
};
use sharenet_router::rank_cheapest;

use crate::accounts::{Admission, CommitError, Hold, Principal};
use crate::error::ApiError;
use crate::openai::{Job, JobKind};
use crate::receipts::{Expected, check_receipt};
use crate::registry::{Lookup, Offer};
use crate::{Shared, now_ms};

/// Per-phase time limits for a job.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Opening the stream to the node.
    pub connect: Duration,
    /// From sending the request to the first event.
    pub first_token: Duration,
    /// Longest gap between two events after the first.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            first_token: Duration::from_secs(30),
            idle: Duration::from_secs(30),
        }
    }
}

/// A job that has produced its first event on some node. From here on the
/// coordinator never switches nodes.
pub struct ActiveJob {
    stream: Option<Stream>,
    first: Option<JobEvent>,
    pub job_id: JobId,
    pub peer: PeerId,
    pub model: String,
    offer: Offer,
    request_digest: [u8; 32],
    max_tokens: u32,
    streamed_tokens: u32,
    text: String,
    logprobs: Vec<TokenLogprob>,
    embeddings: Option<Vec<Vec<f32>>>,
    want_logprobs: bool,
    /// The worst-case amount held for this job; turned into the real
    /// charge when the receipt is recorded, released if it never is.
    hold: Option<Hold>,
}

/// What the next event amounted to.
pub enum Step {
    /// New text and, when asked for, its tokens' logprobs.
    Delta(String, Vec<TokenLogprob>),
    Done(Box<Finished>),
}

/// A completed, verified, countersigned and stored job.
pub struct Finished {
    /// What the builder was charged, and its parts.
    pub charge: Charge,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    /// The vectors of an embeddings job.
    pub embeddings: Option<Vec<Vec<f32>>>,
    pub usage: Usage,
    pub finish_reason: FinishReason,
    pub receipt: CountersignedReceipt,
}

/// Rough prompt size for ranking (about four bytes per token).
fn estimate_input_tokens(job: &Job) -> u32 {
    let bytes: usize = match &job.input {
        sharenet_proto::JobInput::Chat { messages } => {
            messages.iter().map(|m| m.content.len() + 8).sum()
        }
        sharenet_proto::JobInput::Prompt { prompt } => prompt.len(),
        sharenet_proto::JobInput::Embed { inputs } => inputs.iter().map(String::len).sum(),
    };
    u32::try_from(bytes / 4 + 1).unwrap_or(u32::MAX)
}

/// Why one candidate did not work out.
enum AttemptError {
    /// Try the next node.
    Retry(String),
    /// The stream was dropped before the node read the request (libp2p-stream
    /// drops inbound streams when a burst outpaces the node's acceptor):
    /// the node never saw the job, so the same node may be tried again.
    Dropped(String),
    /// The request itself is at fault; every node would say the same.
    Client(ApiError),
}

/// Times a node that dropped the stream unread is tried again.
const DROPPED_RETRIES: u32 = 4;

/// Picks nodes for `job` and starts it on the first that answers.
/// Most input tokens a job can have: every byte a token, plus room for
/// the chat template's own tokens. Used for the worst-case hold.
fn max_input_tokens(job: &Job) -> u64 {
    let (bytes, pieces) = match &job.input {
        sharenet_proto::JobInput::Chat { messages } => (
            messages
                .iter()
                .map(|m| m.content.len() + m.role.len())
                .sum::<usize>(),
            messages.len(),
        ),
        sharenet_proto::JobInput::Prompt { prompt } => (prompt.len(), 1),
        sharenet_proto::JobInput::Embed { inputs } => {
            (inputs.iter().map(String::len).sum(), inputs.len())
        }
    };
    (bytes as u64) + 16 * (pieces as u64) + 256
}

/// The request's filters (`provider` preferences and what the job needs),
/// in order; when one empties the list the 503 says which.
fn select(mut offers: Vec<Offer>, job: &Job) -> Result<Vec<Offer>, ApiError> {
    let p = &job.prefs;
    let need = u64::from(estimate_input_tokens(job)) + u64::from(job.params.max_tokens);
    let mut apply = |name: &str, keep: &dyn Fn(&Offer) -> bool| -> Result<(), ApiError> {
        let before = offers.len();
        offers.retain(|o| keep(o));
        if offers.is_empty() {
            return Err(ApiError::NoCapacity(format!(
                "no node left after the `{name}` constraint ({before} node(s) serve the model before it)"
            )));
        }
        Ok(())
    };
    if !p.only.is_empty() {
        apply("provider.only", &|o| p.only.contains(&o.advert.node))?;
    }
    if !p.ignore.is_empty() {
        apply("provider.ignore", &|o| !p.ignore.contains(&o.advert.node))?;
    }
    if let Some(max) = p.max_price.prompt {
        apply("provider.max_price.prompt", &|o| o.offer.price_in <= max)?;
    }
    if let Some(max) = p.max_price.completion {
        apply("provider.max_price.completion", &|o| {
            o.offer.price_out <= max
        })?;
    }
    if let Some(region) = &p.region {
        apply("provider.region", &|o| &o.advert.region == region)?;
    }
    if !p.quantizations.is_empty() {
        apply("provider.quantizations", &|o| {
            p.quantizations
                .iter()
                .any(|q| q.eq_ignore_ascii_case(&o.offer.quantization))
        })?;
    }
    if job.kind != JobKind::Embedding {
        apply("context length", &|o| {
            u64::from(o.offer.context_length) >= need
        })?;
    }
    if let Some(min) = p.min_trust {
        // Trust scores are not computed yet: every node counts as neutral (0.5).
        apply("provider.min_trust", &|_| min <= 0.5)?;
    }
    Ok(offers)
}

/// `provider.sort` and `provider.order` on top of the price ranking.
fn apply_order(candidates: &mut [sharenet_router::Candidate], job: &Job) {
    if let Some(crate::prefs::SortKey::Throughput | crate::prefs::SortKey::Latency) = job.prefs.sort
    {
        // Without measured latencies yet, the emptiest queue is the fastest.
        candidates.sort_by_key(|c| (c.queue_depth, c.node));
    }
    let order = &job.prefs.order;
    if !order.is_empty() {
        candidates.sort_by_key(|c| {
            order
                .iter()
                .position(|n| *n == c.node)
                .unwrap_or(usize::MAX)
        });
    }
}

pub async fn start_job(
    state: &Arc<Shared>,
    job: &Job,
    principal: &Principal,
    end_customer: Option<&str>,
) -> Result<ActiveJob, ApiError> {
    // The first model of the list that has live nodes (the `models`
    // fallback list); an unknown first model with no fallback is a 404.
    let mut found = None;
    let mut any_live = false;
    for model in &job.models {
        match state.registry.lookup(model, now_ms()) {
            Lookup::NoNodes => {}
            Lookup::UnknownModel => any_live = true,
            Lookup::Found(offers) => {
                found = Some((model.clone(), offers));
                break;
            }
        }
    }
    let (model, offers) = match found {
        Some(f) => f,
        None if any_live => return Err(ApiError::ModelNotFound(job.model.clone())),
        None => {
            return Err(ApiError::NoCapacity(
                "no live nodes on the network right now".into(),
            ));
        }
    };
    let want = if job.kind == JobKind::Embedding {
        ModelKind::Embedding
    } else {
        ModelKind::Text
    };
    let (offers, other): (Vec<_>, Vec<_>) = offers.into_iter().partition(|o| o.offer.kind == want);
    if offers.is_empty() && !other.is_empty() {
        let what = match want {
            ModelKind::Embedding => {
                "a text generation model; use /v1/chat/completions or /v1/completions"
            }
            ModelKind::Text => "an embedding model; use /v1/embeddings",
        };
        return Err(ApiError::bad_request(
            format!("`{model}` is {what}"),
            Some("model"),
        ));
    }
    let offers = select(offers, job)?;
    let mut candidates: Vec<_> = offers.iter().map(Offer::candidate).collect();
    rank_cheapest(
        &mut candidates,
        estimate_input_tokens(job),
        job.params.max_tokens,
    );
    apply_order(&mut candidates, job);
    let attempts = if job.prefs.allow_fallbacks {
        state.max_attempts
    } else {
        1
    };
    candidates.truncate(attempts);
    let mut by_node: HashMap<_, _> = offers.into_iter().map(|o| (o.advert.node, o)).collect();

    // Hold the worst case at the highest price among the nodes we may try.
    let tried: Vec<_> = candidates
        .iter()
        .filter_map(|c| by_node.get(&c.node))
        .collect();
    let max_price_in = tried.iter().map(|o| o.offer.price_in).max().unwrap_or(0);
    let max_price_out = tried.iter().map(|o| o.offer.price_out).max().unwrap_or(0);
    let max_output = match job.kind {
        JobKind::Embedding => 0,
        _ => u64::from(job.params.max_tokens),
    };
    let hold = state.accounts.admit(&Admission {
        principal,
        end_customer,
        max_input_tokens: max_input_tokens(job),
        max_output_tokens: max_output,
        max_price_in,
        max_price_out,
        now_ms: now_ms(),
    })?;
    let mut hold = Some(hold);

    let job_id = JobId(rand::random());
    let request = JobRequest {
        job_id,
        coordinator: state.identity.public_key(),
        model: model.clone(),
        input: job.input.clone(),
        params: job.params.clone(),
    };
    let bytes = serde_json::to_vec(&request)
        .map_err(|e| ApiError::Internal(format!("encode job request: {e}")))?;
    let request_digest = sha256(&bytes);

    let mut failures = Vec::new();
    for candidate in candidates.iter() {
        let Some(offer) = by_node.remove(&candidate.node) else {
            continue;
        };
        if !failures.is_empty() {
            state.metrics.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        let mut outcome = attempt(state, offer.peer, &bytes).await;
        for retry in 0..DROPPED_RETRIES {
            let Err(AttemptError::Dropped(reason)) = &outcome else {
                break;
            };
            tracing::debug!(job = %job_id, node = %offer.peer, %reason, retry, "stream dropped unread; retrying the same node");
            let backoff = 10u64 << retry;
            tokio::time::sleep(Duration::from_millis(
                backoff + rand::random::<u64>() % backoff,
            ))
            .await;
            outcome = attempt(state, offer.peer, &bytes).await;
        }
        match outcome {
            Ok((stream, first)) => {
                return Ok(ActiveJob {
                    stream: Some(stream),
                    first: Some(first),
                    job_id,
                    peer: offer.peer,
                    model: model.clone(),
                    offer,
                    request_digest,
                    max_tokens: job.params.max_tokens,
                    streamed_tokens: 0,
                    text: String::new(),
                    logprobs: Vec::new(),
                    embeddings: None,
                    want_logprobs: job.params.logprobs,
                    hold: hold.take(),
                });
            }
            Err(AttemptError::Client(e)) => return Err(e),
            Err(AttemptError::Retry(reason) | AttemptError::Dropped(reason)) => {
                tracing::warn!(job = %job_id, node = %offer.peer, %reason, "node failed before the first token");
                failures.push(format!("{}: {reason}", offer.peer));
            }
        }
    }
    Err(ApiError::NoCapacity(format!(
        "every node tried for `{}` failed before the first token ({})",
        model,
        failures.join("; ")
    )))
}

fn decode_event(frame: &[u8]) -> Result<JobEvent, String> {
    serde_json::from_slice(frame).map_err(|e| format!("undecodable event: {e}"))
}

async fn attempt(
    state: &Shared,
    peer: PeerId,
    request: &[u8],
) -> Result<(Stream, JobEvent), AttemptError> {
    let t = state.timeouts;
    let mut stream = tokio::time::timeout(t.connect, state.client.open_job_stream(peer))
        .await
        .map_err(|_| AttemptError::Retry("timed out opening a stream".into()))?
        .map_err(|e| AttemptError::Retry(e.to_string()))?;
    write_frame(&mut stream, request)
        .await
        .map_err(|e| AttemptError::Dropped(format!("send request: {e}")))?;
    let frame = tokio::time::timeout(t.first_token, read_frame(&mut stream, MAX_FRAME_BYTES))
        .await
        .map_err(|_| AttemptError::Retry("no first token in time".into()))?
        .map_err(|e| AttemptError::Retry(format!("read first event: {e}")))?;
    match decode_event(&frame).map_err(AttemptError::Retry)? {
        JobEvent::Error {
            code: JobErrorCode::ContextLengthExceeded,
            message,
        } => Err(AttemptError::Client(ApiError::BadRequest {
            message,
            param: Some("messages".into()),
        })),
        JobEvent::Error {
            code: JobErrorCode::InvalidRequest | JobErrorCode::UnsupportedInput,
            message,
        } => Err(AttemptError::Client(ApiError::bad_request(message, None))),
        JobEvent::Error { code, message } => Err(AttemptError::Retry(format!(
            "refused ({code:?}): {message}"
        ))),
        JobEvent::Countersigned { .. } => Err(AttemptError::Retry("unexpected frame".into())),
        event => Ok((stream, event)),
    }
}

impl ActiveJob {
    /// The next step of the job. Errors after the first token are final.
    pub async fn next(&mut self, state: &Shared) -> Result<Step, ApiError> {
        let event =
            match self.first.take() {
                Some(e) => e,
                None => {
                    let stream = self
                        .stream
                        .as_mut()
                        .ok_or_else(|| ApiError::Internal("job already finished".into()))?;
                    let frame = tokio::time::timeout(
                        state.timeouts.idle,
                        read_frame(stream, MAX_FRAME_BYTES),
                    )
                    .await
                    .map_err(|_| ApiError::BadGateway("the node stopped sending tokens".into()))?
                    .map_err(|e| ApiError::BadGateway(format!("the node's stream broke: {e}")))?;
                    decode_event(&frame).map_err(ApiError::BadGateway)?
                }
            };
        match event {
            JobEvent::Delta {
                text,
                tokens,
                logprobs,
            } => {
                self.streamed_tokens = self.streamed_tokens.saturating_add(tokens);
                if self.streamed_tokens > self.max_tokens {
                    return Err(ApiError::BadGateway(
                        "the node streamed more tokens than max_tokens".into(),
                    ));
                }
                if logprobs.len() > tokens as usize || (!logprobs.is_empty() && !self.want_logprobs)
                {
                    return Err(ApiError::BadGateway(
                        "the node sent logprobs that do not match its tokens".into(),
                    ));
                }
                self.text.push_str(&text);
                self.logprobs.extend(logprobs.iter().cloned());
                Ok(Step::Delta(text, logprobs))
            }
            JobEvent::Embeddings { data } => {
                if self.embeddings.is_some() || !self.text.is_empty() {
                    return Err(ApiError::BadGateway(
                        "the node sent an unexpected embeddings frame".into(),
                    ));
                }
                self.embeddings = Some(data);
                Ok(Step::Delta(String::new(), Vec::new()))
            }
            JobEvent::Done {
                finish_reason,
                usage,
                receipt,
            } => self
                .finish(state, finish_reason, usage, &receipt)
                .await
                .map(|f| Step::Done(Box::new(f))),
            JobEvent::Error { code, message } => Err(ApiError::BadGateway(format!(
                "the node failed mid-stream ({code:?}): {message}"
            ))),
            JobEvent::Countersigned { .. } => Err(ApiError::BadGateway(
                "the node sent an unexpected frame".into(),
            )),
        }
    }

    async fn finish(
        &mut self,
        state: &Shared,
        finish_reason: FinishReason,
        usage: Usage,
        receipt: &[u8],
    ) -> Result<Finished, ApiError> {
        let expected = Expected {
            job_id: self.job_id,
            node: self.offer.advert.node,
            coordinator: state.identity.public_key(),
            model: self.model.clone(),
            price_in: self.offer.offer.price_in,
            price_out: self.offer.offer.price_out,
            streamed_tokens: self.streamed_tokens,
            reported_input_tokens: usage.input_tokens,
            request_digest: self.request_digest,
            response_digest: match &self.embeddings {
                Some(v) => embeddings_digest(v),
                None => sha256(self.text.as_bytes()),
            },
        };
        let checked = check_receipt(receipt, &expected).and_then(|signed| {
            if usage.output_tokens == self.streamed_tokens {
                Ok(signed)
            } else {
                Err(crate::receipts::ReceiptRejection::OutputTokens {
                    claimed: usage.output_tokens,
                    streamed: self.streamed_tokens,
                })
            }
        });
        let signed = match checked {
            Ok(s) => s,
            Err(rejection) => {
                state
                    .metrics
                    .receipts_rejected
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    job = %self.job_id, node = %self.peer, %rejection,
                    receipt = %hex::encode(receipt), "receipt rejected"
                );
                return Err(ApiError::BadGateway(format!(
                    "the node's receipt was rejected: {rejection}"
                )));
            }
        };
        let countersigned = CountersignedReceipt::countersign(signed, state.identity.signing_key())
            .map_err(|e| ApiError::Internal(format!("countersign receipt: {e}")))?;
        // Durable before anyone is told about it, and charged.
        let hold = self
            .hold
            .take()
            .ok_or_else(|| ApiError::Internal("job finished twice".into()))?;
        let record = countersigned.clone();
        let entry = match tokio::task::spawn_blocking(move || hold.commit(record, now_ms())).await {
            Ok(Ok(entry)) => entry,
            Ok(Err(CommitError::Store(StoreError::Duplicate(id)))) => {
                state
                    .metrics
                    .receipts_rejected
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::BadGateway(format!(
                    "receipt {id} was already recorded"
                )));
            }
            Ok(Err(CommitError::Store(e))) => {
                return Err(ApiError::Internal(format!("store receipt: {e}")));
            }
            Ok(Err(CommitError::Api(e))) => return Err(e),
            Err(e) => return Err(ApiError::Internal(format!("store receipt task: {e}"))),
        };
        state
            .metrics
            .receipts_accepted
            .fetch_add(1, Ordering::Relaxed);
        if let Some(mut stream) = self.stream.take() {
            let frame = serde_json::to_vec(&JobEvent::Countersigned {
                receipt: countersigned.to_bytes(),
            });
            tokio::spawn(async move {
                if let Ok(frame) = frame {
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        let _ = write_frame(&mut stream, &frame).await;
                        let _ = stream.close().await;
                    })
                    .await;
                }
            });
        }
        Ok(Finished {
            charge: entry.charge,
            text: std::mem::take(&mut self.text),
            logprobs: std::mem::take(&mut self.logprobs),
            embeddings: self.embeddings.take(),
            usage,
            finish_reason,
            receipt: countersigned,
        })
    }
}
