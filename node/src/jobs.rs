//! Serving job streams: admission, generation, streaming, receipts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use sharenet_engine::{
    Embedder, EngineError, Grammar, JobHandle, Scheduler, SeqEvent, SubmitError, ToolCallParser,
    tool_calls::forces_call,
};
use sharenet_ledger::StoredReceipt;
use sharenet_p2p::{FrameError, PeerId, Stream, peer_id_of, read_frame, write_frame};
use sharenet_proto::{
    CountersignedReceipt, FinishReason, JobErrorCode, JobEvent, JobInput, JobRequest,
    MAX_FRAME_BYTES, Receipt, ResponseHasher, SamplingParams, SignedReceipt, ToolCall, Usage,
    job_cost, sha256,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::NodeMetrics;
use crate::now_ms;
use crate::state::{Backend, NodeCtx, Prices, ServedModel};
use crate::tally::Tally;
use crate::upstream::{Upstream, UpstreamEvent};

/// Time the opener has to send the request frame.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the coordinator has to send back the countersigned receipt.
const COUNTERSIGN_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams handled at once, whatever their model; more are refused as
/// `saturated`.
const MAX_OPEN_STREAMS: usize = 8192;
/// Streams one peer may have open at once (all of a coordinator's
/// concurrent jobs to this node: one connection carries at most
/// `sharenet_p2p::MAX_STREAMS_PER_CONNECTION`); more are refused as
/// `saturated`.
const MAX_STREAMS_PER_PEER: usize = sharenet_p2p::MAX_STREAMS_PER_CONNECTION as usize;
/// Refusals being written at once; beyond this a stream is dropped unread
/// (reset), so strangers cannot pile up refusal tasks.
const MAX_REFUSALS: usize = 256;
/// Longest one frame may take to write: a reader that stops reading
/// cannot hold a slot.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a refusal to a stranger may take to write.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Upstream pieces buffered between the forwarding task and the stream.
const PIECE_BUFFER: usize = 32;

pub(crate) async fn accept(
    ctx: Arc<NodeCtx>,
    mut incoming: sharenet_p2p::IncomingStreams,
    cancel: CancellationToken,
) {
    let open = Arc::new(Semaphore::new(MAX_OPEN_STREAMS));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let mut handlers = tokio::task::JoinSet::new();
    let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(done) = handlers.join_next(), if !handlers.is_empty() => {
                if let Ok(Some(peer)) = done
                    && let Some(n) = per_peer.get_mut(&peer)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        per_peer.remove(&peer);
                    }
                }
            }
            next = incoming.next() => {
                let Some((peer, mut stream)) = next else { break };
                // Never wait here: libp2p drops streams that arrive while
                // this loop is not taking them, so a full node refuses at
                // once instead.
                let permit = open.clone().try_acquire_owned().ok();
                // Only the node's coordinators get inference; anyone else
                // is refused before a byte of its request is read.
                let refusal = if !ctx.coordinators.contains(&peer) {
                    Some((
                        JobErrorCode::WrongCoordinator,
                        "this node serves jobs only for the coordinators in its config",
                    ))
                } else if per_peer.get(&peer).copied().unwrap_or(0) >= MAX_STREAMS_PER_PEER {
                    Some((JobErrorCode::Saturated, "too many open streams from this peer"))
                } else if permit.is_none() {
                    Some((JobErrorCode::Saturated, "this node has too many open streams"))
                } else if ctx.draining.load(Ordering::SeqCst) {
                    Some((JobErrorCode::Saturated, "this node is shutting down"))
                } else {
                    None
                };
                let (None, Some(permit)) = (refusal, permit) else {
                    let (code, message) = refusal.unwrap_or((JobErrorCode::Saturated, "busy"));
                    tracing::debug!(%peer, ?code, "job stream refused before reading");
                    // Dropping the stream resets it when refusals are
                    // already being written at the limit.
                    if let Ok(refusing) = refusals.clone().try_acquire_owned() {
                        handlers.spawn(async move {
                            let _ = tokio::time::timeout(
                                REFUSAL_TIMEOUT,
                                refuse(&mut stream, code, message),
                            )
                            .await;
                            drop(refusing);
                            None
                        });
                    }
                    continue;
                };
                *per_peer.entry(peer).or_default() += 1;
                let ctx = ctx.clone();
                ctx.serving.fetch_add(1, Ordering::SeqCst);
                handlers.spawn(async move {
                    // Counted until the receipt round trip is over (a drain
                    // waits for it), even if the task is aborted.
                    let _serving = Serving(ctx.clone());
                    serve(ctx, peer, stream).await;
                    drop(permit);
                    Some(peer)
                });
            }
        }
    }
    handlers.shutdown().await;
}

/// One job stream being served (see `NodeCtx::serving`).
struct Serving(Arc<NodeCtx>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.serving.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes one event frame.
async fn send(stream: &mut Stream, event: &JobEvent) -> Result<(), FrameError> {
    let bytes = serde_json::to_vec(event).map_err(|e| FrameError::Io(e.into()))?;
    tokio::time::timeout(WRITE_TIMEOUT, write_frame(stream, &bytes))
        .await
        .map_err(|_| {
            FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the reader took more than 30 s to take a frame",
            ))
        })?
}

async fn refuse(stream: &mut Stream, code: JobErrorCode, message: impl Into<String>) {
    let message = message.into();
    tracing::debug!(?code, %message, "job refused");
    let _ = send(stream, &JobEvent::Error { code, message }).await;
    let _ = stream.close().await;
}

/// Holds a generation slot; keeps the advertised load current.
struct Slot {
    model: Arc<ServedModel>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.model.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A slot now, or a place in the bounded queue, or `None` (saturated).
async fn admit(ctx: &NodeCtx, model: &Arc<ServedModel>) -> Option<Slot> {
    let permit = match model.slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            let waiting = model.waiting.fetch_add(1, Ordering::Relaxed);
            if waiting >= model.config.max_queue {
                model.waiting.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
            ctx.load_changed.notify_one();
            let permit = model.slots.clone().acquire_owned().await;
            model.waiting.fetch_sub(1, Ordering::Relaxed);
            permit.ok()?
        }
    };
    model.running.fetch_add(1, Ordering::Relaxed);
    ctx.load_changed.notify_one();
    Some(Slot {
        model: model.clone(),
        _permit: permit,
    })
}

async fn serve(ctx: Arc<NodeCtx>, peer: PeerId, mut stream: Stream) {
    let bytes =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut stream, MAX_FRAME_BYTES)).await
        {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                refuse(
                    &mut stream,
                    JobErrorCode::InvalidRequest,
                    format!("read request: {e}"),
                )
                .await;
                return;
            }
            Err(_) => {
                refuse(
                    &mut stream,
                    JobErrorCode::InvalidRequest,
                    "no request within 10 s",
                )
                .await;
                return;
            }
        };
    let started_at_ms = now_ms();
    let request_digest = sha256(&bytes);
    let request: JobRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            refuse(
                &mut stream,
                JobErrorCode::InvalidRequest,
                format!("parse request: {e}"),
            )
            .await;
            return;
        }
    };
    if let Err(e) = request.validate() {
        refuse(&mut stream, JobErrorCode::InvalidRequest, e.to_string()).await;
        return;
    }
    // The job's span, a child of the coordinator's when it sent its trace
    // context.
    let span = tracing::info_span!(
        "job",
        "otel.kind" = "server",
        model = %request.model,
        job_id = %request.job_id,
    );
    if let Some(parent) = &request.traceparent {
        sharenet_daemon::trace::set_remote_parent(&span, parent);
    }
    serve_request(ctx, peer, stream, request, started_at_ms, request_digest)
        .instrument(span)
        .await;
}

/// Serves a parsed, valid request: checks it is ours to serve, generates,
/// then signs, stores and sends the receipt.
async fn serve_request(
    ctx: Arc<NodeCtx>,
    peer: PeerId,
    mut stream: Stream,
    request: JobRequest,
    started_at_ms: u64,
    request_digest: [u8; 32],
) {
    if peer_id_of(&request.coordinator).ok() != Some(peer) {
        refuse(
            &mut stream,
            JobErrorCode::WrongCoordinator,
            "the request names a coordinator other than the peer that sent it",
        )
        .await;
        return;
    }
    let Some(model) = ctx.model(&request.model) else {
        refuse(
            &mut stream,
            JobErrorCode::UnknownModel,
            format!("this node does not serve {:?}", request.model),
        )
        .await;
        return;
    };
    let missing = request.needs().bits() & !model.capabilities.bits();
    if missing != 0 {
        refuse(
            &mut stream,
            JobErrorCode::UnsupportedInput,
            format!(
                "{:?} on this node does not support {}",
                request.model,
                sharenet_proto::Capabilities::from_bits(missing)
                    .names()
                    .join(" or ")
            ),
        )
        .await;
        return;
    }
    let prices = model.job_prices();
    let served = match &model.backend {
        Backend::Text(scheduler) => {
            let running = RunningReceipt {
                ctx: &ctx,
                request: &request,
                prices,
                started_at_ms,
                request_digest,
            };
            serve_text(&mut stream, &request, &model, scheduler, &running).await
        }
        Backend::Embed(embedder) => {
            serve_embed(&ctx, &mut stream, &request, &model, embedder).await
        }
        Backend::Upstream(upstream) => {
            let running = RunningReceipt {
                ctx: &ctx,
                request: &request,
                prices,
                started_at_ms,
                request_digest,
            };
            serve_upstream(&ctx, &mut stream, &request, &model, upstream, &running).await
        }
    };
    let (usage, finish_reason, response_digest) = match served {
        Served::Done {
            usage,
            finish_reason,
            response_digest,
        } => (usage, finish_reason, response_digest),
        Served::Gone(running) => {
            if let Some(r) = running {
                let store = ctx.store.clone();
                let record = StoredReceipt::NodeSigned(*r);
                let stored = tokio::task::spawn_blocking(move || store.insert_new(&record)).await;
                if !matches!(stored, Ok(Ok(()))) {
                    tracing::warn!(job = %request.job_id, "store the running receipt of an abandoned job");
                }
            }
            return;
        }
        Served::Failed(code, message) => {
            refuse(&mut stream, code, message).await;
            return;
        }
    };

    let signed = match sign_receipt(
        &ctx,
        &request,
        prices,
        usage,
        started_at_ms,
        request_digest,
        response_digest,
    ) {
        Ok(s) => s,
        Err(e) => {
            refuse(&mut stream, JobErrorCode::Internal, e).await;
            return;
        }
    };
    // The receipt is durable in our own store before anyone sees it.
    let store = ctx.store.clone();
    let record = StoredReceipt::NodeSigned(signed.clone());
    match tokio::task::spawn_blocking(move || store.insert_new(&record)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(job = %request.job_id, error = %e, "store receipt");
            refuse(
                &mut stream,
                JobErrorCode::Internal,
                format!("store receipt: {e}"),
            )
            .await;
            return;
        }
        Err(e) => {
            tracing::error!(job = %request.job_id, error = %e, "store receipt task");
            return;
        }
    }
    ctx.metrics
        .served(&model.config.id, finish_reason.as_str(), signed.receipt());
    let done = JobEvent::Done {
        finish_reason,
        usage,
        receipt: signed.to_bytes(),
    };
    if send(&mut stream, &done).await.is_err() {
        return;
    }
    collect_countersignature(&ctx, &mut stream, &signed).await;
    let _ = stream.close().await;
}

/// How serving a job ended, before the receipt.
enum Served {
    Done {
        usage: Usage,
        finish_reason: FinishReason,
        /// SHA-256 of the response (the text, or the embedding bytes).
        response_digest: [u8; 32],
    },
    /// The coordinator went away; nothing more to send. With the last
    /// running receipt sent, which the coordinator may book (it charges
    /// builders for what was generated before they hung up), so the node
    /// keeps it for its own accounts.
    Gone(Option<Box<SignedReceipt>>),
    Failed(JobErrorCode, String),
}

fn engine_failure(e: EngineError) -> Served {
    match e {
        EngineError::ContextLengthExceeded { .. } => {
            Served::Failed(JobErrorCode::ContextLengthExceeded, e.to_string())
        }
        EngineError::InvalidInput(_) | EngineError::Tokenizer(_) => {
            Served::Failed(JobErrorCode::InvalidRequest, e.to_string())
        }
        EngineError::Unsupported(_) => {
            Served::Failed(JobErrorCode::UnsupportedInput, e.to_string())
        }
        other => {
            tracing::warn!(error = %other, "generation failed");
            Served::Failed(JobErrorCode::Internal, other.to_string())
        }
    }
}

/// Signs running receipts for a job in progress (see `JobEvent::Delta`).
struct RunningReceipt<'a> {
    ctx: &'a NodeCtx,
    request: &'a JobRequest,
    /// Fixed when the job started (a reload does not change them).
    prices: Prices,
    started_at_ms: u64,
    request_digest: [u8; 32],
}

impl RunningReceipt<'_> {
    /// The signed bytes of a receipt for `usage` and the response hashed
    /// so far; `None` (logged) if it cannot be made, which only costs the
    /// node its claim should the job break later.
    fn sign(&self, usage: Usage, so_far: &ResponseHasher) -> Option<SignedReceipt> {
        let digest = so_far.digest();
        sign_receipt(
            self.ctx,
            self.request,
            self.prices,
            usage,
            self.started_at_ms,
            self.request_digest,
            digest,
        )
        .inspect_err(
            |e| tracing::warn!(job = %self.request.job_id, error = %e, "sign running receipt"),
        )
        .ok()
    }
}

/// The grammar a job's output must match: a forced tool call (in the
/// model's own format) or the `response_format` schema.
fn job_grammar(
    request: &JobRequest,
    format: Option<sharenet_engine::ToolFormat>,
) -> Result<Option<Grammar>, EngineError> {
    if let Some(tools) = request.tools.as_ref().filter(|t| forces_call(t)) {
        let format = format.ok_or_else(|| {
            EngineError::Unsupported("this model's chat template does not take tools".into())
        })?;
        // The Lark grammar embeds these schemas: their properties are
        // bounded here, its bytes when it is compiled.
        Grammar::check_properties(tools.callable().map(|t| &t.parameters), "tools")?;
        return Ok(Some(Grammar::Lark(format.forced_call_grammar(tools))));
    }
    Ok(request
        .response_format
        .as_ref()
        .map(|f| Grammar::JsonSchema(f.schema())))
}

/// Content and tool calls out of generated text: through the model's
/// tool-call parser when the job offered tools, else as is.
struct Output {
    parser: Option<ToolCallParser>,
    hasher: ResponseHasher,
    calls: usize,
}

impl Output {
    fn new(request: &JobRequest, format: Option<sharenet_engine::ToolFormat>) -> Self {
        let parser = format
            .filter(|_| request.needs().tools)
            .map(|f| ToolCallParser::new(f, &request.job_id.to_hex()[..12]));
        Self {
            parser,
            hasher: ResponseHasher::default(),
            calls: 0,
        }
    }

    fn take(&mut self, text: String, end: bool) -> (String, Vec<ToolCall>) {
        let (text, calls) = match &mut self.parser {
            None => (text, Vec::new()),
            Some(p) => {
                let mut out = p.push(&text);
                if end {
                    let rest = p.finish();
                    out.text.push_str(&rest.text);
                    out.calls.extend(rest.calls);
                }
                (out.text, out.calls)
            }
        };
        self.hasher.text(&text);
        for c in &calls {
            self.hasher.call(c);
        }
        self.calls += calls.len();
        (text, calls)
    }
}

/// Starts text jobs on a model's scheduler: the cheap checks and the
/// admission first, the grammar compile only for a job there is room for.
struct TextIntake<'a> {
    metrics: &'a NodeMetrics,
    model_id: &'a str,
    /// One permit per compile running: the model's slots, which its
    /// scheduler does not use, so compiles at once are bounded by the
    /// model's `max_concurrency`.
    compiles: &'a Arc<Semaphore>,
    scheduler: &'a Scheduler,
}

impl TextIntake<'_> {
    /// The job's handle on the scheduler and its prompt's size, or the
    /// refusal. A grammar is compiled (CPU: milliseconds to seconds,
    /// bounded by the engine's limits on its bytes and properties and by
    /// llguidance's own) only after the scheduler's admission rules say
    /// there is room,
    /// and while one of the model's slots is held: a full node refuses a
    /// flood of expensive schemas as `saturated` without compiling any.
    async fn start(&self, request: &JobRequest) -> Result<(JobHandle, u32), Served> {
        let model = self.scheduler.model();
        let prompt = model
            .encode_request(&request.input, request.tools.as_ref())
            .map_err(engine_failure)?;
        let input_tokens = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        let constraint = match job_grammar(request, model.tool_format()).map_err(engine_failure)? {
            None => None,
            Some(grammar) => {
                grammar.check_size().map_err(engine_failure)?;
                self.room_for(prompt.len(), &request.params)?;
                let Ok(permit) = self.compiles.clone().acquire_owned().await else {
                    return Err(Served::Failed(
                        JobErrorCode::Saturated,
                        "this model is not taking jobs".into(),
                    ));
                };
                // Waiting for the permit took time: look again.
                self.room_for(prompt.len(), &request.params)?;
                self.metrics.schema_compile(self.model_id);
                let model = model.clone();
                // Off the async threads; the permit goes with the compile,
                // which runs to its end even if this job is dropped.
                let compiled = tokio::task::spawn_blocking(move || {
                    let c = model.constraint(&grammar);
                    drop(permit);
                    c
                })
                .await;
                match compiled {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(e)) => return Err(engine_failure(e)),
                    Err(e) => {
                        tracing::error!(error = %e, "constraint compile task failed");
                        return Err(Served::Failed(
                            JobErrorCode::Internal,
                            "constraint compile failed".into(),
                        ));
                    }
                }
            }
        };
        // The scheduler decides: a place in the batch, a place in its
        // bounded queue, or a refusal. Dropping the handle cancels the job
        // at the next step.
        self.scheduler
            .submit_constrained(prompt, request.params.clone(), constraint)
            .map(|handle| (handle, input_tokens))
            .map_err(submit_failure)
    }

    /// The scheduler's own admission rules (`Scheduler::submit_constrained`
    /// applies them again when the job is submitted), checked before a
    /// compile: the prompt fits the context and the KV budget, and a slot
    /// or queue place is free now.
    fn room_for(&self, prompt_len: usize, params: &SamplingParams) -> Result<(), Served> {
        let context = self.scheduler.model().context_length();
        if prompt_len == 0 || prompt_len >= context {
            return Err(engine_failure(EngineError::ContextLengthExceeded {
                prompt: prompt_len,
                context,
            }));
        }
        let config = self.scheduler.config();
        let need = self.scheduler.kv_bytes_for(prompt_len, params);
        if need > config.kv_cache_bytes {
            return Err(submit_failure(SubmitError::TooLarge {
                need,
                budget: config.kv_cache_bytes,
            }));
        }
        let load = self.scheduler.load();
        let free_slots = config.max_concurrency.saturating_sub(load.running);
        if load.waiting >= config.max_queue + free_slots {
            return Err(submit_failure(SubmitError::Saturated {
                slots: config.max_concurrency,
                queue: config.max_queue,
            }));
        }
        Ok(())
    }
}

fn submit_failure(e: SubmitError) -> Served {
    match e {
        e @ SubmitError::Saturated { .. } => Served::Failed(JobErrorCode::Saturated, e.to_string()),
        e @ SubmitError::TooLarge { .. } => {
            Served::Failed(JobErrorCode::ContextLengthExceeded, e.to_string())
        }
        SubmitError::Invalid(e) => engine_failure(e),
    }
}

async fn serve_text(
    stream: &mut Stream,
    request: &JobRequest,
    served: &ServedModel,
    scheduler: &Scheduler,
    running: &RunningReceipt<'_>,
) -> Served {
    let intake = TextIntake {
        metrics: &running.ctx.metrics,
        model_id: &served.config.id,
        compiles: &served.slots,
        scheduler,
    };
    let (mut handle, input_tokens) = match intake.start(request).await {
        Ok(started) => started,
        Err(refused) => return refused,
    };
    let model = scheduler.model();
    let tokenizer = model.prompt().tokenizer();
    // The output as the coordinator counts it (`tally.rs`).
    let mut tally = Tally::new(tokenizer);
    // The last running receipt that reached the coordinator.
    let mut last_sent: Option<SignedReceipt> = None;
    let mut output = Output::new(request, model.tool_format());
    while let Some(event) = handle.events.recv().await {
        let (text, tokens, ids, logprobs, done) = match event {
            SeqEvent::Piece(p) => (p.text, p.tokens, p.ids, p.logprobs, None),
            SeqEvent::Done(g) => (String::new(), 0, Vec::new(), Vec::new(), Some(g)),
            SeqEvent::Failed(e) => return engine_failure(e),
        };
        let (text, tool_calls) = output.take(text, done.is_some());
        tally.push(tokenizer, &ids, tool_calls.len());
        // The end flushes what the tool-call parser held back.
        if done.is_none() || !text.is_empty() || !tool_calls.is_empty() {
            let signed = tally.running(tokenizer).and_then(|output_tokens| {
                running.sign(
                    Usage {
                        input_tokens,
                        output_tokens,
                    },
                    &output.hasher,
                )
            });
            let event = JobEvent::Delta {
                text,
                tokens,
                ids,
                logprobs,
                tool_calls,
                receipt: signed.as_ref().map(SignedReceipt::to_bytes),
            };
            if let Err(e) = send(stream, &event).await {
                tracing::debug!(job = %request.job_id, error = %e, "client went away; cancelling");
                return Served::Gone(last_sent.map(Box::new));
            }
            if signed.is_some() {
                last_sent = signed;
            }
        }
        if let Some(g) = done {
            let finish_reason = if output.calls > 0 && g.finish_reason == FinishReason::Stop {
                FinishReason::ToolCalls
            } else {
                g.finish_reason
            };
            return Served::Done {
                usage: Usage {
                    input_tokens: g.prompt_tokens,
                    output_tokens: tally.finish(tokenizer),
                },
                finish_reason,
                response_digest: output.hasher.digest(),
            };
        }
    }
    Served::Failed(
        JobErrorCode::Internal,
        "the model's scheduler stopped".into(),
    )
}

async fn serve_embed(
    ctx: &NodeCtx,
    stream: &mut Stream,
    request: &JobRequest,
    model: &Arc<ServedModel>,
    embedder: &Arc<Embedder>,
) -> Served {
    let JobInput::Embed { inputs } = &request.input else {
        return Served::Failed(
            JobErrorCode::UnsupportedInput,
            format!(
                "{:?} is an embedding model; it does not generate text",
                request.model
            ),
        );
    };
    let Some(slot) = admit(ctx, model).await else {
        return saturated(model);
    };
    let embedder = embedder.clone();
    let texts = inputs.clone();
    let result = tokio::task::spawn_blocking(move || embedder.embed(&texts)).await;
    drop(slot);
    let out = match result {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return engine_failure(e),
        Err(e) => {
            tracing::error!(error = %e, "embedding task panicked");
            return Served::Failed(JobErrorCode::Internal, "embedding failed".into());
        }
    };
    let digest = sharenet_proto::embeddings_digest(&out.vectors);
    if send(stream, &JobEvent::Embeddings { data: out.vectors })
        .await
        .is_err()
    {
        return Served::Gone(None);
    }
    Served::Done {
        usage: Usage {
            input_tokens: out.tokens,
            output_tokens: 0,
        },
        finish_reason: FinishReason::Stop,
        response_digest: digest,
    }
}

async fn serve_upstream(
    ctx: &NodeCtx,
    stream: &mut Stream,
    request: &JobRequest,
    model: &Arc<ServedModel>,
    upstream: &Upstream,
    running: &RunningReceipt<'_>,
) -> Served {
    let Some(slot) = admit(ctx, model).await else {
        return saturated(model);
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(PIECE_BUFFER);
    let forward = upstream.run(request, tx);
    tokio::pin!(forward);
    let mut hasher = ResponseHasher::default();
    let mut forwarding = true;
    // Running receipts once the prompt's size is known (an upstream tells
    // it in its stream, or the upstream client probes it alongside).
    // With the model's files the node counts the prompt itself, as the
    // coordinator does; else it takes the server's count.
    let own_input = upstream.count_prompt(request);
    let mut input_tokens: Option<u32> = own_input;
    let mut output_tokens = 0u32;
    // The output as the coordinator counts it, with the model's tokenizer.
    let tokenizer = upstream.tokenizer().cloned();
    let mut tally = tokenizer.as_deref().map(Tally::new);
    let mut last_sent: Option<SignedReceipt> = None;
    let served = loop {
        let event = tokio::select! {
            _ = &mut forward, if forwarding => { forwarding = false; continue; }
            ev = rx.recv() => ev,
        };
        match event {
            Some(UpstreamEvent::PromptTokens(n)) => {
                if own_input.is_none() {
                    input_tokens = Some(n);
                }
            }
            // Text and whole calls alike: into the response's digest, out
            // as a delta with a running receipt once the prompt's size is
            // known.
            Some(ev @ (UpstreamEvent::ToolCalls { .. } | UpstreamEvent::Piece { .. })) => {
                let (text, tokens, ids, tool_calls) = match ev {
                    UpstreamEvent::Piece { text, tokens, ids } => (text, tokens, ids, Vec::new()),
                    UpstreamEvent::ToolCalls { calls, tokens, ids } => {
                        (String::new(), tokens, ids, calls)
                    }
                    _ => continue,
                };
                hasher.text(&text);
                for c in &tool_calls {
                    hasher.call(c);
                }
                output_tokens = output_tokens.saturating_add(tokens);
                let counted = match (&mut tally, tokenizer.as_deref()) {
                    (Some(t), Some(tok)) => {
                        t.push(tok, &ids, tool_calls.len());
                        t.running(tok)
                    }
                    _ => Some(output_tokens),
                };
                let signed = input_tokens
                    .zip(counted)
                    .and_then(|(input_tokens, output_tokens)| {
                        running.sign(
                            Usage {
                                input_tokens,
                                output_tokens,
                            },
                            &hasher,
                        )
                    });
                let ev = JobEvent::Delta {
                    text,
                    tokens,
                    ids,
                    logprobs: Vec::new(),
                    tool_calls,
                    receipt: signed.as_ref().map(SignedReceipt::to_bytes),
                };
                if send(stream, &ev).await.is_err() {
                    // Dropping `forward` closes the upstream request; the
                    // last running receipt sent is the node's claim.
                    break Served::Gone(last_sent.map(Box::new));
                }
                if signed.is_some() {
                    last_sent = signed;
                }
            }
            Some(UpstreamEvent::Done {
                usage,
                finish_reason,
            }) => {
                // The output is what was streamed, as the node counted it.
                let output_tokens = match (&mut tally, tokenizer.as_deref()) {
                    (Some(t), Some(tok)) => t.finish(tok),
                    _ => output_tokens,
                };
                break Served::Done {
                    usage: Usage {
                        input_tokens: own_input.unwrap_or(usage.input_tokens),
                        output_tokens,
                    },
                    finish_reason,
                    response_digest: hasher.digest(),
                };
            }
            Some(UpstreamEvent::Failed { code, message }) => break Served::Failed(code, message),
            None => break Served::Failed(JobErrorCode::Upstream, "upstream task ended".into()),
        }
    };
    drop(slot);
    served
}

fn saturated(model: &ServedModel) -> Served {
    Served::Failed(
        JobErrorCode::Saturated,
        format!(
            "all {} slots and {} queue places are taken",
            model.config.max_concurrency, model.config.max_queue
        ),
    )
}

fn sign_receipt(
    ctx: &NodeCtx,
    request: &JobRequest,
    (price_in, price_out): Prices,
    usage: Usage,
    started_at_ms: u64,
    request_digest: [u8; 32],
    response_digest: [u8; 32],
) -> Result<SignedReceipt, String> {
    let amount = job_cost(usage.input_tokens, usage.output_tokens, price_in, price_out)
        .map_err(|e| e.to_string())?;
    let receipt = Receipt {
        job_id: request.job_id,
        node: ctx.identity.public_key(),
        coordinator: request.coordinator,
        model: request.model.clone(),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        price_in,
        price_out,
        amount,
        started_at_ms,
        finished_at_ms: now_ms().max(started_at_ms),
        request_digest,
        response_digest,
    };
    SignedReceipt::sign(receipt, ctx.identity.signing_key()).map_err(|e| e.to_string())
}

/// Waits briefly for the coordinator's countersignature and, if it is valid
/// and covers our receipt, upgrades the stored copy.
async fn collect_countersignature(ctx: &NodeCtx, stream: &mut Stream, signed: &SignedReceipt) {
    let frame = match tokio::time::timeout(COUNTERSIGN_TIMEOUT, read_frame(stream, MAX_FRAME_BYTES))
        .await
    {
        Ok(Ok(f)) => f,
        _ => {
            tracing::debug!(job = %signed.receipt().job_id, "no countersignature received");
            return;
        }
    };
    // Our own signature needs no second check: only the coordinator's.
    let countersigned = match serde_json::from_slice::<JobEvent>(&frame) {
        Ok(JobEvent::Countersigned { receipt }) => {
            CountersignedReceipt::countersignature_of(signed, &receipt)
        }
        _ => {
            tracing::warn!(job = %signed.receipt().job_id, "unexpected frame instead of a countersignature");
            return;
        }
    };
    match countersigned {
        Ok(c) => {
            // The node-signed receipt is already durable; the upgrade
            // rides on the next flush (at most half a second): a crash in
            // between leaves the node-signed copy, which `reconcile` counts
            // as pending and the coordinator's books hold countersigned.
            if let Err(e) = ctx.store.upsert_soon(&StoredReceipt::Countersigned(c)) {
                tracing::error!(error = %e, "store countersigned receipt");
            }
        }
        Err(e) => {
            tracing::warn!(job = %signed.receipt().job_id, error = %e, "invalid countersignature")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    // `EOS + 2`: the tiny ChatML model's `<|im_end|>`.
    use sharenet_engine::tiny::{EOS, TinyConfig, write_tiny_model};
    use sharenet_engine::{Arch, SchedulerConfig, TextModel};
    use sharenet_proto::{ChatMessage, JobId, ResponseFormat};

    /// A schema llguidance takes about 0.4 s to compile unoptimized: many
    /// properties, each with its own pattern.
    fn expensive_schema() -> Value {
        let properties: serde_json::Map<String, Value> = (0..400)
            .map(|i| {
                let pattern = format!("^[a-z]{{1,{}}}(x|y)[0-9]{{3,{}}}$", 10 + i % 20, 4 + i % 9);
                (
                    format!("p{i}"),
                    json!({"type": "string", "pattern": pattern}),
                )
            })
            .collect();
        let required: Vec<&String> = properties.keys().collect();
        json!({"type": "object", "properties": properties, "required": required})
    }

    fn request(max_tokens: u32, schema: Option<Value>) -> JobRequest {
        JobRequest {
            job_id: JobId([7; 16]),
            coordinator: [2; 32],
            model: "tiny".into(),
            input: JobInput::Chat {
                messages: vec![ChatMessage::new("user", "hello")],
            },
            params: SamplingParams {
                max_tokens,
                ..SamplingParams::default()
            },
            tools: None,
            response_format: schema.map(|schema| ResponseFormat::JsonSchema {
                name: "shape".into(),
                schema,
                strict: true,
            }),
            traceparent: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_node_refuses_schema_jobs_as_saturated_without_compiling_them() {
        let dir = tempfile::tempdir().unwrap();
        let shape = TinyConfig {
            arch: Arch::Qwen2,
            max_position_embeddings: 32_768,
            ..TinyConfig::default()
        };
        write_tiny_model(dir.path(), 3, shape).unwrap();
        let model = Arc::new(TextModel::load(dir.path()).unwrap());
        // One slot, no queue.
        let config = SchedulerConfig {
            max_concurrency: 1,
            max_queue: 0,
            kv_cache_bytes: 1 << 30,
        };
        let scheduler = Scheduler::start(model, config, Box::new(|| {})).unwrap();
        let metrics = NodeMetrics::new().unwrap();
        let compiles = Arc::new(Semaphore::new(config.max_concurrency));
        let intake = TextIntake {
            metrics: &metrics,
            model_id: "tiny",
            compiles: &compiles,
            scheduler: &scheduler,
        };

        // The node is full: a long job holds its only slot (its end
        // tokens banned, so it runs its 30,000 tokens).
        let mut long = request(30_000, None);
        long.params.logit_bias = vec![(EOS, -100.0), (EOS + 2, -100.0)];
        let (blocker, _) = intake.start(&long).await.ok().unwrap();
        // Running as the scheduler publishes it (after its first step).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while scheduler.load().running == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the blocker never ran"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let attack = request(16, Some(expensive_schema()));
        let started = std::time::Instant::now();
        for _ in 0..20 {
            match intake.start(&attack).await {
                Err(Served::Failed(code, message)) => {
                    assert_eq!(code, JobErrorCode::Saturated, "{message}")
                }
                Err(_) => panic!("refused otherwise than as a job error"),
                Ok(_) => panic!("admitted on a full node"),
            }
        }
        let refusing = started.elapsed();
        assert_eq!(scheduler.load().running, 1, "the blocker ran throughout");
        assert_eq!(
            metrics.schema_compiles("tiny"),
            0,
            "schemas compiled for refused jobs (20 refusals took {refusing:?})"
        );

        // With room again, the same job is admitted and its schema compiled.
        drop(blocker);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while scheduler.load().running + scheduler.load().waiting > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the blocker never left"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let admitted = intake.start(&attack).await;
        assert!(admitted.is_ok(), "an admitted schema job starts");
        assert_eq!(metrics.schema_compiles("tiny"), 1);
        assert_eq!(
            compiles.available_permits(),
            1,
            "the compile's slot is back"
        );
    }

    #[tokio::test]
    async fn a_schema_over_the_size_limit_is_an_invalid_request_before_admission() {
        let dir = tempfile::tempdir().unwrap();
        let shape = TinyConfig {
            arch: Arch::Qwen2,
            ..TinyConfig::default()
        };
        write_tiny_model(dir.path(), 3, shape).unwrap();
        let model = Arc::new(TextModel::load(dir.path()).unwrap());
        let config = SchedulerConfig {
            max_concurrency: 1,
            max_queue: 0,
            kv_cache_bytes: 1 << 30,
        };
        let scheduler = Scheduler::start(model, config, Box::new(|| {})).unwrap();
        let metrics = NodeMetrics::new().unwrap();
        let compiles = Arc::new(Semaphore::new(1));
        let intake = TextIntake {
            metrics: &metrics,
            model_id: "tiny",
            compiles: &compiles,
            scheduler: &scheduler,
        };
        let huge = json!({"enum": ["a".repeat(300 * 1024)]});
        match intake.start(&request(16, Some(huge))).await {
            Err(Served::Failed(code, message)) => {
                assert_eq!(code, JobErrorCode::InvalidRequest);
                assert!(message.contains("over 262144 bytes"), "{message}");
            }
            _ => panic!("a huge schema was not refused"),
        }
        assert_eq!(metrics.schema_compiles("tiny"), 0);
    }
}
