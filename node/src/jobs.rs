//! Serving job streams: admission, generation, streaming, receipts.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use sharenet_engine::{EngineError, Piece};
use sharenet_ledger::StoredReceipt;
use sharenet_p2p::{FrameError, PeerId, Stream, peer_id_of, read_frame, write_frame};
use sharenet_proto::{
    CountersignedReceipt, JobErrorCode, JobEvent, JobRequest, MAX_FRAME_BYTES, Receipt,
    SignedReceipt, Usage, job_cost, sha256,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::now_ms;
use crate::service::{NodeCtx, ServedModel};

/// Time the opener has to send the request frame.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the coordinator has to send back the countersigned receipt.
const COUNTERSIGN_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams handled at once, whatever their model; beyond this they wait in libp2p.
const MAX_OPEN_STREAMS: usize = 1024;
/// Generated pieces buffered between the model thread and the stream.
const PIECE_BUFFER: usize = 32;

pub(crate) async fn accept(
    ctx: Arc<NodeCtx>,
    mut incoming: sharenet_p2p::IncomingStreams,
    cancel: CancellationToken,
) {
    let open = Arc::new(Semaphore::new(MAX_OPEN_STREAMS));
    let mut handlers = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                let Ok(permit) = open.clone().acquire_owned().await else { break };
                let ctx = ctx.clone();
                handlers.spawn(async move {
                    serve(ctx, peer, stream).await;
                    drop(permit);
                });
            }
        }
    }
    handlers.shutdown().await;
}

/// Writes one event frame.
async fn send(stream: &mut Stream, event: &JobEvent) -> Result<(), FrameError> {
    let bytes = serde_json::to_vec(event).map_err(|e| FrameError::Io(e.into()))?;
    write_frame(stream, &bytes).await
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
    if peer_id_of(&request.coordinator).ok() != Some(peer) {
        refuse(
            &mut stream,
            JobErrorCode::WrongCoordinator,
            "the request names a coordinator other than the peer that sent it",
        )
        .await;
        return;
    }
    let Some(model) = ctx.model(&request.model).cloned() else {
        refuse(
            &mut stream,
            JobErrorCode::UnknownModel,
            format!("this node does not serve {:?}", request.model),
        )
        .await;
        return;
    };
    let prompt = match model.model.encode_input(&request.input) {
        Ok(p) if p.len() < model.model.context_length() => p,
        Ok(p) => {
            refuse(
                &mut stream,
                JobErrorCode::ContextLengthExceeded,
                format!(
                    "prompt of {} tokens does not fit the context window of {}",
                    p.len(),
                    model.model.context_length()
                ),
            )
            .await;
            return;
        }
        Err(e) => {
            refuse(&mut stream, JobErrorCode::InvalidRequest, e.to_string()).await;
            return;
        }
    };
    let Some(slot) = admit(&ctx, &model).await else {
        refuse(
            &mut stream,
            JobErrorCode::Saturated,
            format!(
                "all {} slots and {} queue places are taken",
                model.config.max_concurrency, model.config.max_queue
            ),
        )
        .await;
        return;
    };

    // Generate on a blocking thread; pieces come back through a bounded
    // channel. If the stream breaks we drop the receiver, the model's next
    // send fails, and generation stops before its next step.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(PIECE_BUFFER);
    let text_model = model.model.clone();
    let params = request.params.clone();
    let prompt_for_gen = prompt.clone();
    let generation = tokio::task::spawn_blocking(move || {
        text_model.generate(&prompt_for_gen, &params, |piece| {
            tx.blocking_send(piece).is_ok()
        })
    });
    let mut text = String::new();
    while let Some(piece) = rx.recv().await {
        text.push_str(&piece.text);
        let event = JobEvent::Delta {
            text: piece.text,
            tokens: piece.tokens,
        };
        if let Err(e) = send(&mut stream, &event).await {
            tracing::debug!(job = %request.job_id, error = %e, "client went away; cancelling");
            drop(rx);
            let _ = generation.await;
            return;
        }
    }
    let outcome = generation.await;
    drop(slot);
    let generation = match outcome {
        Ok(Ok(g)) => g,
        Ok(Err(EngineError::Cancelled)) => return,
        Ok(Err(e)) => {
            tracing::warn!(job = %request.job_id, error = %e, "generation failed");
            refuse(&mut stream, JobErrorCode::Internal, e.to_string()).await;
            return;
        }
        Err(e) => {
            tracing::error!(job = %request.job_id, error = %e, "generation task panicked");
            refuse(&mut stream, JobErrorCode::Internal, "generation failed").await;
            return;
        }
    };

    let usage = Usage {
        input_tokens: generation.prompt_tokens,
        output_tokens: generation.completion_tokens,
    };
    let signed = match sign_receipt(
        &ctx,
        &request,
        &model,
        usage,
        started_at_ms,
        request_digest,
        &text,
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
    let done = JobEvent::Done {
        finish_reason: generation.finish_reason,
        usage,
        receipt: signed.to_bytes(),
    };
    if send(&mut stream, &done).await.is_err() {
        return;
    }
    collect_countersignature(&ctx, &mut stream, &signed).await;
    let _ = stream.close().await;
}

fn sign_receipt(
    ctx: &NodeCtx,
    request: &JobRequest,
    model: &ServedModel,
    usage: Usage,
    started_at_ms: u64,
    request_digest: [u8; 32],
    text: &str,
) -> Result<SignedReceipt, String> {
    let amount = job_cost(
        usage.input_tokens,
        usage.output_tokens,
        model.config.price_in,
        model.config.price_out,
    )
    .map_err(|e| e.to_string())?;
    let receipt = Receipt {
        job_id: request.job_id,
        node: ctx.identity.public_key(),
        coordinator: request.coordinator,
        model: request.model.clone(),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        price_in: model.config.price_in,
        price_out: model.config.price_out,
        amount,
        started_at_ms,
        finished_at_ms: now_ms().max(started_at_ms),
        request_digest,
        response_digest: sha256(text.as_bytes()),
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
    let countersigned = match serde_json::from_slice::<JobEvent>(&frame) {
        Ok(JobEvent::Countersigned { receipt }) => CountersignedReceipt::from_bytes(&receipt),
        _ => {
            tracing::warn!(job = %signed.receipt().job_id, "unexpected frame instead of a countersignature");
            return;
        }
    };
    match countersigned {
        Ok(c) if c.signed() == signed => {
            let store = ctx.store.clone();
            let record = StoredReceipt::Countersigned(c);
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.upsert(&record)).await {
                tracing::error!(error = %e, "store countersigned receipt");
            }
        }
        Ok(_) => {
            tracing::warn!(job = %signed.receipt().job_id, "countersignature covers a different receipt")
        }
        Err(e) => {
            tracing::warn!(job = %signed.receipt().job_id, error = %e, "invalid countersignature")
        }
    }
}
