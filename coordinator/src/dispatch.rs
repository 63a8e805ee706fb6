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

use crate::accounts::{Admission, CommitError, Hold, Principal};
use crate::error::ApiError;
use crate::openai::{Job, JobKind};
use crate::receipts::{Expected, check_receipt};
use crate::registry::Offer;
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
    /// The last running receipt the node sent, with the output tokens and
    /// text length it covers: booked if the job breaks after its first
    /// token (see [`ActiveJob::book_partial`]).
    checkpoint: Option<(Vec<u8>, u32, usize)>,
    /// Most input tokens the job can have (the hold's bound).
    max_input_tokens: u64,
    /// The worst-case amount held for this job; turned into the real
    /// charge when the receipt is recorded, released if it never is.
    hold: Option<Hold>,
    /// When the request went to the node, and when its first event came.
    started: std::time::Instant,
    first_at: std::time::Instant,
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

/// Orders the nodes to try with the pure router over the routing index
/// (`sharenet_router::route_table` on the model's candidate table): the
/// request's filters and preferences and the app's rules, then price,
/// predicted latency and trust, load-aware. When a filter empties the list
/// the 503 names it.
fn route(
    state: &Shared,
    model: &str,
    kind: ModelKind,
    job: &Job,
    rules: &sharenet_ledger::AppRouting,
) -> Result<Vec<[u8; 32]>, ApiError> {
    use sharenet_router as r;
    let p = &job.prefs;
    let sensitive = p.sensitive || rules.sensitive;
    if sensitive && rules.private_pool.is_empty() {
        return Err(ApiError::bad_request(
            "a sensitive request needs a private pool of the app's own nodes, and this app has none",
            Some("provider.sensitive"),
        ));
    }
    let private_pool = (!rules.private_pool.is_empty()).then(|| r::PrivatePool {
        nodes: rules.private_pool.clone(),
        sensitive,
        spill_to_public: rules.spill_to_public,
    });
    let prefs = r::Preferences {
        sort: p.sort.map(|s| match s {
            crate::prefs::SortKey::Price => r::Sort::Price,
            crate::prefs::SortKey::Latency => r::Sort::Latency,
            crate::prefs::SortKey::Throughput => r::Sort::Throughput,
        }),
        order: p.order.clone(),
        only: p.only.clone(),
        ignore: p.ignore.clone(),
        allow_fallbacks: p.allow_fallbacks,
        max_price_in: p.max_price.prompt,
        max_price_out: p.max_price.completion,
        min_trust: p.min_trust,
        region: p.region.clone(),
        quantizations: p.quantizations.clone(),
        weights_sha256: p.weights_sha256,
        private_pool,
    };
    let request = r::Request {
        input_tokens: estimate_input_tokens(job),
        max_output_tokens: job.params.max_tokens,
        prefs,
    };
    let mut rng = state
        .rng
        .lock()
        .map_err(|_| ApiError::Internal("routing rng lock poisoned".into()))?;
    // Adverts lag the node's load, and a full node refuses (`saturated`)
    // and is skipped anyway, so "full" here is generous: as many waiting as
    // the node's default queue allows (4 × its concurrency).
    //
    // A node never measured is assumed fast (a short first token, quick
    // decoding), so it gets tried and measured rather than starved behind
    // nodes whose real numbers beat a pessimistic guess; the probation share
    // caps what new nodes get while established ones are available.
    let params = r::RouteParams {
        max_queue_factor: 5,
        unknown_ttft_ms: 20.0,
        unknown_tokens_per_sec: 500.0,
        ..r::RouteParams::default()
    };
    state
        .routing
        .route(
            model,
            kind,
            &request,
            &r::Weights::default(),
            &params,
            &mut *rng,
        )
        .map_err(|e| ApiError::NoCapacity(format!("{e}")))
}

/// A node whose breaker is half-open gets one probe: mark it taken, so
/// concurrent requests do not all probe at once.
fn begin_probe_if_half_open(state: &Shared, node: [u8; 32]) {
    let now = now_ms();
    if let Ok(mut health) = state.health.lock()
        && let Some(h) = health.get_mut(&node)
        && h.breaker.allow(now) == sharenet_router::Admit::Probe
    {
        h.breaker.begin_probe(now);
        state.routing.update(&node, h, now, &Default::default());
    }
}

/// What a node's attempt or job did, for its routing health.
pub(crate) enum Outcome {
    /// Refused or failed before the first token.
    Failed,
    /// Served: time to first token, tokens, total time.
    Served {
        ttft_ms: f64,
        tokens: u32,
        duration_ms: f64,
    },
    /// Its receipt did not check out.
    RejectedReceipt,
    /// A spot check of its output agreed with the reference.
    SpotCheckPassed,
    /// A spot check caught it serving something else than it advertises.
    SpotCheckFailed,
}

pub(crate) fn record(state: &Shared, node: [u8; 32], outcome: Outcome) {
    use sharenet_router as r;
    let now = now_ms();
    let Ok(mut health) = state.health.lock() else {
        return;
    };
    let h = health
        .entry(node)
        .or_insert_with(|| r::NodeHealth::new(now, r::BreakerParams::default()));
    let p = r::TrustParams::default();
    match outcome {
        Outcome::Failed => {
            h.breaker.record_failure(now);
            h.trust.record(r::Evidence::Failed, now, &p);
        }
        Outcome::Served {
            ttft_ms,
            tokens,
            duration_ms,
        } => {
            h.breaker.record_success(now);
            h.trust.record(r::Evidence::Completed, now, &p);
            // A first token that came after half the first-token timeout
            // nearly failed the job: late is not broken, but it counts.
            if ttft_ms > state.timeouts.first_token.as_secs_f64() * 500.0 {
                h.trust.record(r::Evidence::SlowFirstToken, now, &p);
            }
            h.observed.record_job(ttft_ms, tokens, duration_ms, now);
        }
        Outcome::RejectedReceipt => {
            h.breaker.record_failure(now);
            h.trust.record(r::Evidence::RejectedReceipt, now, &p);
        }
        Outcome::SpotCheckPassed => h.trust.record(r::Evidence::SpotCheckPassed, now, &p),
        Outcome::SpotCheckFailed => h.trust.record(r::Evidence::SpotCheckFailed, now, &p),
    }
    state.routing.update(&node, h, now, &p);
}

pub async fn start_job(
    state: &Arc<Shared>,
    job: &Job,
    principal: &Principal,
    end_customer: Option<&str>,
) -> Result<ActiveJob, ApiError> {
    // The first model of the list that some node serves (the `models`
    // fallback list); a model served only for the other endpoint is a 400,
    // an unknown first model with no fallback a 404.
    let want = if job.kind == JobKind::Embedding {
        ModelKind::Embedding
    } else {
        ModelKind::Text
    };
    let other = match want {
        ModelKind::Embedding => ModelKind::Text,
        ModelKind::Text => ModelKind::Embedding,
    };
    let mut found = None;
    for model in &job.models {
        if state.routing.serves(model, want) {
            found = Some(model.clone());
            break;
        }
        if state.routing.serves(model, other) {
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
    }
    let Some(model) = found else {
        return Err(if state.registry.live_nodes(now_ms()) > 0 {
            ApiError::ModelNotFound(job.model.clone())
        } else {
            ApiError::NoCapacity("no live nodes on the network right now".into())
        });
    };
    let rules = state
        .accounts
        .app(&principal.app)?
        .map(|a| a.routing)
        .unwrap_or_default();
    let ranked = route(state, &model, want, job, &rules)?;
    // The index can lag an expiry by up to a second: keep live nodes only.
    let now = now_ms();
    let mut live: Vec<Offer> = ranked
        .iter()
        .filter_map(|k| state.registry.offer_of(k, &model, now))
        .collect();
    if live.is_empty() {
        for node in state.registry.prune(now) {
            state.routing.remove(&node);
        }
        live = route(state, &model, want, job, &rules)?
            .iter()
            .filter_map(|k| state.registry.offer_of(k, &model, now))
            .collect();
    }
    if live.is_empty() {
        return Err(ApiError::NoCapacity(format!(
            "no live node serves `{model}` right now"
        )));
    }
    let ranked: Vec<[u8; 32]> = live.iter().map(|o| o.advert.node).collect();
    let offers = live;
    let attempts = if job.prefs.allow_fallbacks {
        state.max_attempts
    } else {
        ranked.len()
    };
    let candidates: Vec<[u8; 32]> = ranked.into_iter().take(attempts.max(1)).collect();
    let mut by_node: HashMap<_, _> = offers.into_iter().map(|o| (o.advert.node, o)).collect();

    // Hold the worst case at the highest price among the nodes we may try.
    let tried: Vec<_> = candidates.iter().filter_map(|c| by_node.get(c)).collect();
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
        let Some(offer) = by_node.remove(candidate) else {
            continue;
        };
        if !failures.is_empty() {
            state.metrics.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        begin_probe_if_half_open(state, offer.advert.node);
        let started = std::time::Instant::now();
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
                    checkpoint: None,
                    max_input_tokens: max_input_tokens(job),
                    hold: hold.take(),
                    started,
                    first_at: std::time::Instant::now(),
                });
            }
            Err(AttemptError::Client(e)) => return Err(e),
            Err(AttemptError::Retry(reason) | AttemptError::Dropped(reason)) => {
                record(state, offer.advert.node, Outcome::Failed);
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
    /// The serving node's public key.
    pub fn node(&self) -> [u8; 32] {
        self.offer.advert.node
    }

    /// The next step of the job. Errors after the first token are final.
    pub async fn next(&mut self, state: &Shared) -> Result<Step, ApiError> {
        let event = match self.first.take() {
            Some(e) => e,
            None => {
                let stream = self
                    .stream
                    .as_mut()
                    .ok_or_else(|| ApiError::Internal("job already finished".into()))?;
                let frame =
                    tokio::time::timeout(state.timeouts.idle, read_frame(stream, MAX_FRAME_BYTES))
                        .await
                        .map_err(|_| ApiError::BadGateway("the node stopped sending tokens".into()))
                        .and_then(|r| {
                            r.map_err(|e| {
                                ApiError::BadGateway(format!("the node's stream broke: {e}"))
                            })
                        })
                        .inspect_err(|_| record(state, self.offer.advert.node, Outcome::Failed))?;
                decode_event(&frame).map_err(ApiError::BadGateway)?
            }
        };
        match event {
            JobEvent::Delta {
                text,
                tokens,
                logprobs,
                receipt,
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
                if let Some(r) = receipt {
                    self.checkpoint = Some((r, self.streamed_tokens, self.text.len()));
                }
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
            JobEvent::Error { code, message } => {
                record(state, self.offer.advert.node, Outcome::Failed);
                Err(ApiError::BadGateway(format!(
                    "the node failed mid-stream ({code:?}): {message}"
                )))
            }
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
                record(state, self.offer.advert.node, Outcome::RejectedReceipt);
                tracing::warn!(
                    job = %self.job_id, node = %self.peer, %rejection,
                    receipt = %hex::encode(receipt), "receipt rejected"
                );
                return Err(ApiError::BadGateway(format!(
                    "the node's receipt was rejected: {rejection}"
                )));
            }
        };
        let (entry, countersigned) = self.book(state, signed).await?;
        state
            .metrics
            .receipts_accepted
            .fetch_add(1, Ordering::Relaxed);
        record(
            state,
            self.offer.advert.node,
            Outcome::Served {
                ttft_ms: (self.first_at - self.started).as_secs_f64() * 1000.0,
                tokens: usage.output_tokens,
                duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            },
        );
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

    /// Countersigns a checked receipt and books it: durable in the ledger
    /// and charged (the hold becomes the real charge) before anyone is told.
    async fn book(
        &mut self,
        state: &Shared,
        signed: sharenet_proto::SignedReceipt,
    ) -> Result<(sharenet_ledger::LedgerEntry, CountersignedReceipt), ApiError> {
        let countersigned = CountersignedReceipt::countersign(signed, state.identity.signing_key())
            .map_err(|e| ApiError::Internal(format!("countersign receipt: {e}")))?;
        // Durable before anyone is told about it, and charged.
        let hold = self
            .hold
            .take()
            .ok_or_else(|| ApiError::Internal("job finished twice".into()))?;
        let to_book = countersigned.clone();
        let entry = match tokio::task::spawn_blocking(move || hold.commit(to_book, now_ms())).await
        {
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
        Ok((entry, countersigned))
    }

    /// The job broke after its first token (stream only): books the node's
    /// last running receipt, which covers exactly the tokens the builder
    /// received, so the builder pays for those and the provider is paid for
    /// them. Returns what was charged, or `None` when there is nothing
    /// valid to book (no running receipt, or one that does not check out,
    /// which also counts against the node); the hold is released then.
    pub async fn book_partial(&mut self, state: &Shared) -> Option<Finished> {
        let (bytes, tokens, text_len) = self.checkpoint.take()?;
        let text = self.text.get(..text_len)?.to_owned();
        let claimed_input = sharenet_proto::SignedReceipt::from_bytes(&bytes)
            .ok()
            .map(|s| s.receipt().input_tokens)?;
        let expected = Expected {
            job_id: self.job_id,
            node: self.offer.advert.node,
            coordinator: state.identity.public_key(),
            model: self.model.clone(),
            price_in: self.offer.offer.price_in,
            price_out: self.offer.offer.price_out,
            streamed_tokens: tokens,
            reported_input_tokens: claimed_input,
            request_digest: self.request_digest,
            response_digest: sha256(text.as_bytes()),
        };
        let checked = if u64::from(claimed_input) > self.max_input_tokens {
            Err(crate::receipts::ReceiptRejection::InputTokens {
                claimed: claimed_input,
                reported: u32::try_from(self.max_input_tokens).unwrap_or(u32::MAX),
            })
        } else {
            check_receipt(&bytes, &expected)
        };
        let signed = match checked {
            Ok(s) => s,
            Err(rejection) => {
                state
                    .metrics
                    .receipts_rejected
                    .fetch_add(1, Ordering::Relaxed);
                record(state, self.offer.advert.node, Outcome::RejectedReceipt);
                tracing::warn!(job = %self.job_id, node = %self.peer, %rejection, "running receipt rejected");
                return None;
            }
        };
        let usage = Usage {
            input_tokens: claimed_input,
            output_tokens: tokens,
        };
        match self.book(state, signed).await {
            Ok((entry, receipt)) => {
                tracing::info!(job = %self.job_id, node = %self.peer, output_tokens = tokens, charge = entry.charge.total, "booked the part of a broken job the builder received");
                Some(Finished {
                    charge: entry.charge,
                    text,
                    logprobs: Vec::new(),
                    embeddings: None,
                    usage,
                    finish_reason: FinishReason::Length,
                    receipt,
                })
            }
            Err(e) => {
                tracing::error!(job = %self.job_id, error = %e, "book the running receipt of a broken job");
                None
            }
        }
    }
}
